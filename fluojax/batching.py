"""Batched mapping with one compilation: the engine every batched computation goes through.

A jitted function compiles once per input shape. :func:`map_padded` cuts any number of rows into
calls of exactly ``batch`` rows, padding the last call, so a network's predictions
(:func:`fluojax.networks.predict`) and the chunks of a batched fit
(:func:`fluojax.fit.least_squares_batch`) compile once however many samples there are.
Nothing here names a technique.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

__all__ = ["map_padded"]


def map_padded(
    fn: Callable[[Any, int], Any], inputs: Any, batch: int, *, on_batch: Callable[[Any], None] | None = None
) -> Any:
    """Apply ``fn`` to ``inputs`` in batches of exactly ``batch`` rows, the last padded.

    Every call sees arrays of the same shape, so a compiled ``fn`` compiles once however many
    rows there are. The last batch is padded by repeating its final row (a real sample: padding
    cannot produce NaNs or failures that a zero row might), and the padding rows are dropped
    from the results. For a row-wise ``fn`` the result equals ``fn`` applied to all n rows at once.

    Arguments:
        fn: ``fn(chunk, count) -> outputs``: ``chunk`` is ``inputs`` (a pytree of arrays) cut to
            ``batch`` rows, ``count`` the number of real rows in it (int); ``outputs`` a pytree
            of arrays whose leading axis has ``batch`` rows.
        inputs: pytree of arrays sharing their leading axis (n rows, n >= 1).
        batch: int >= 1, rows per call.
        on_batch: optional ``on_batch(outputs)`` with each batch's results (NumPy, padding
            removed) as it finishes, e.g. to report progress.

    Returns:
        pytree like ``fn``'s outputs of NumPy arrays with n rows.

    Raises:
        ValueError: no rows, rows of different counts, or ``batch`` < 1.
    """
    counts = {int(np.shape(x)[0]) for x in jax.tree.leaves(inputs)}
    if len(counts) != 1:
        raise ValueError(f"the inputs must share their first axis, got lengths {sorted(counts)}")
    (n,) = counts
    if n < 1:
        raise ValueError("nothing to compute: 0 samples")
    if batch < 1:
        raise ValueError(f"the batch size must be >= 1, got {batch}")
    parts = []
    for start in range(0, n, batch):
        stop = min(start + batch, n)
        pad = batch - (stop - start)
        chunk = jax.tree.map(
            lambda x: np.pad(x[start:stop], ((0, pad),) + ((0, 0),) * (np.ndim(x) - 1), mode="edge"),  # noqa: B023
            inputs,
        )
        out = jax.device_get(fn(chunk, stop - start))
        parts.append(jax.tree.map(lambda x: np.asarray(x)[: stop - start], out))  # noqa: B023
        if on_batch is not None:
            on_batch(parts[-1])
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
