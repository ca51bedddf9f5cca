"""Batched mapping with one compilation, on every local device: the engine every batched computation goes through.

A jitted function compiles once per input shape. :func:`map_padded` cuts any number of rows into
calls of exactly ``batch`` rows, padding the last call, so a network's predictions
(:func:`fluojax.networks.predict`) and the chunks of a batched fit
(:func:`fluojax.fit.least_squares_batch`) compile once however many samples there are. With
more than one local device (several GPUs, a TPU host, or forced CPU devices), the calls are
dealt out to the devices, one chunk per device at a time (explicit per-device chunks: each
device runs the same single-device program on its own rows, so no computation is partitioned
across devices and no collective runs inside it). Nothing here names a technique.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["local_devices", "map_padded"]


def local_devices(devices: Sequence[Any] | None = None) -> list:
    """The devices :func:`map_padded` deals its calls out to: ``devices``, or all of this
    process's devices (``jax.local_devices()``) when None.

    Arguments:
        devices: optional sequence of ``jax.Device`` (non-empty).

    Returns:
        list of ``jax.Device``.
    """
    chosen = list(jax.local_devices() if devices is None else devices)
    if not chosen:
        raise ValueError("no device to compute on")
    return chosen


def map_padded(
    fn: Callable[[Any, int], Any],
    inputs: Any,
    batch: int,
    *,
    on_batch: Callable[[Any], None] | None = None,
    devices: Sequence[Any] | None = None,
) -> Any:
    """Apply ``fn`` to ``inputs`` in batches of exactly ``batch`` rows, the last padded.

    Every call sees arrays of the same shape, so a compiled ``fn`` compiles once however many
    rows there are. The last batch is padded by repeating its final row (a real sample: padding
    cannot produce NaNs or failures that a zero row might), and the padding rows are dropped
    from the results. For a row-wise ``fn`` the result equals ``fn`` applied to all n rows at once.

    On D > 1 devices, batch k runs on device ``k mod D``: its rows are placed there
    (``jax.device_put``, committed) and ``fn`` is called under ``jax.default_device`` of that
    device, from one of D threads, so D batches compute at once and each compiled program
    compiles once per device (on GPUs the persistent compilation cache shares it between
    devices). The rows, their batches and so the results are those of one device. ``fn`` must
    not close over arrays committed to another device (pass them uncommitted, or place a copy
    per device as :func:`fluojax.networks.predict` does with a network's weights).

    Arguments:
        fn: ``fn(chunk, count) -> outputs``: ``chunk`` is ``inputs`` (a pytree of arrays) cut to
            ``batch`` rows (NumPy on one device, jax arrays on their device otherwise),
            ``count`` the number of real rows in it (int); ``outputs`` a pytree of arrays
            whose leading axis has ``batch`` rows.
        inputs: pytree of arrays sharing their leading axis (n rows, n >= 1).
        batch: int >= 1, rows per call.
        on_batch: optional ``on_batch(outputs)`` with each batch's results (NumPy, padding
            removed) as it finishes, in order, e.g. to report progress.
        devices: the devices to use (:func:`local_devices`: None is all local devices).

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
    starts = list(range(0, n, batch))
    chosen = local_devices(devices)[: len(starts)]

    def cut(start):
        stop = min(start + batch, n)
        pad = batch - (stop - start)
        return jax.tree.map(
            lambda x: np.pad(x[start:stop], ((0, pad),) + ((0, 0),) * (np.ndim(x) - 1), mode="edge"), inputs
        ), stop - start

    def run(k):
        chunk, count = cut(starts[k])
        if len(chosen) == 1:
            out = fn(chunk, count)
        else:
            device = chosen[k % len(chosen)]
            with jax.default_device(device):
                out = fn(jax.device_put(chunk, device), count)
        return jax.tree.map(lambda x: np.asarray(x)[:count], jax.device_get(out))

    parts = []
    if len(chosen) == 1:
        results: Any = map(run, range(len(starts)))
    else:
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(chosen))
        results = pool.map(run, range(len(starts)))
    try:
        for part in results:
            parts.append(part)
            if on_batch is not None:
                on_batch(part)
    finally:
        if len(chosen) > 1:
            pool.shutdown(cancel_futures=True)
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)
