"""Multi-host runs on JAX's multi-controller runtime: start-up from the environment, bands, gathers.

The same command runs as N processes (one per host, or one per accelerator), each with its own
devices. :func:`initialize_from_env` joins them through ``jax.distributed.initialize`` when the
environment asks for it (see :data:`ENV_NUM_PROCESSES`, :data:`ENV_PROCESS_ID`,
:data:`ENV_AUTO` and JAX's own ``JAX_COORDINATOR_ADDRESS``), before any JAX computation. A
per-pixel job then splits its rows: :func:`band` is this process's contiguous band of n rows
(process i of N takes rows ``floor(i n / N)`` to ``floor((i + 1) n / N)``), and
:func:`gather_rows` assembles every process's band into all n rows on every process
(``jax.experimental.multihost_utils.process_allgather``, byte-exact for any dtype), of which
only the writer (:func:`is_writer`, process 0) writes files. Training needs nothing here:
:func:`fluojax.train.train` is data-parallel over ``jax.devices()``, which after
initialisation are the devices of all processes. Nothing here names a technique; jax is
imported only when a function needs it, so the command line can call
:func:`initialize_from_env` without slowing ``--help``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from fluojax.io import InputError

__all__ = [
    "ENV_AUTO",
    "ENV_NUM_PROCESSES",
    "ENV_PROCESS_ID",
    "band",
    "gather_rows",
    "initialize_from_env",
    "is_writer",
    "process_count",
    "process_index",
    "requested",
    "sum_over_processes",
]

ENV_NUM_PROCESSES = "FLUOJAX_NUM_PROCESSES"
"""Number of processes of the run; with :data:`ENV_PROCESS_ID` and ``JAX_COORDINATOR_ADDRESS``
(``host:port`` of process 0, JAX's own variable) it starts the multi-controller runtime."""
ENV_PROCESS_ID = "FLUOJAX_PROCESS_ID"
"""This process's index, 0 .. N-1 (0 writes the outputs)."""
ENV_AUTO = "FLUOJAX_DISTRIBUTED"
"""Set to 1 to let ``jax.distributed.initialize`` detect everything itself (SLURM, Open MPI,
Cloud TPU pods, Kubernetes with the ``kubernetes`` package); explicit variables override it."""


def requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for a multi-process run (:data:`ENV_NUM_PROCESSES` or
    :data:`ENV_AUTO` set to anything but ``""``/``0``).

    Arguments:
        environ: mapping of environment variables (None: ``os.environ``).

    Returns:
        bool.
    """
    env = os.environ if environ is None else environ
    return bool(env.get(ENV_NUM_PROCESSES)) or env.get(ENV_AUTO, "") not in ("", "0")


def initialize_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Join the processes of a multi-host run, if the environment asks for one (:func:`requested`).

    Calls ``jax.distributed.initialize(coordinator_address, num_processes, process_id)`` with
    ``JAX_COORDINATOR_ADDRESS``, :data:`ENV_NUM_PROCESSES` and :data:`ENV_PROCESS_ID` (None where
    unset: JAX then detects them on SLURM, Open MPI and TPU pods). On CPUs the collectives run
    over gloo (``jax_cpu_collectives_implementation``). Must run before any JAX computation.

    Arguments:
        environ: mapping of environment variables (None: ``os.environ``).

    Returns:
        True if the runtime was started, False for a single-process run (nothing done).

    Raises:
        fluojax.io.InputError: a process count or index that is not an integer in range.
    """
    env = os.environ if environ is None else environ
    if not requested(env):
        return False
    count = _integer(env, ENV_NUM_PROCESSES, 1)
    index = _integer(env, ENV_PROCESS_ID, 0)
    if count is not None and index is not None and not 0 <= index < count:
        raise InputError(f"{ENV_PROCESS_ID}={index}: must be in 0..{count - 1}")
    if count is not None and index is None:
        raise InputError(f"{ENV_NUM_PROCESSES} is set: {ENV_PROCESS_ID} must be set too")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=env.get("JAX_COORDINATOR_ADDRESS") or None, num_processes=count, process_id=index
    )
    return True


def _integer(env: Mapping[str, str], name: str, low: int) -> int | None:
    text = env.get(name)
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{name}={text!r}: must be an integer") from None
    if value < low:
        raise InputError(f"{name}={value}: must be >= {low}")
    return value


def process_count() -> int:
    """Number of processes of the run (1 unless :func:`initialize_from_env` joined several)."""
    import jax

    return jax.process_count()


def process_index() -> int:
    """This process's index, 0 .. :func:`process_count` - 1."""
    import jax

    return jax.process_index()


def is_writer() -> bool:
    """Whether this process writes the run's outputs (process 0; always true in a single process)."""
    return process_index() == 0


def band(n: int, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous band of ``n`` rows: ``floor(i n / N)`` to ``floor((i + 1) n / N)``.

    The bands of the N processes tile ``0 .. n`` in order; they differ in size by at most one row.

    Arguments:
        n: int >= 0, rows to share.
        index, count: process index i and count N (None: this process's, :func:`process_index`,
            :func:`process_count`).

    Returns:
        slice of rows.
    """
    i = process_index() if index is None else index
    c = process_count() if count is None else count
    return slice(i * n // c, (i + 1) * n // c)


def _allgather(x: np.ndarray) -> np.ndarray:
    """(N, ...) stack of every process's ``x`` (same shape and dtype on all), byte-exact."""
    from jax.experimental import multihost_utils

    x = np.ascontiguousarray(x)
    raw = x.reshape(-1).view(np.uint8) if x.size else np.zeros(0, np.uint8)
    stacked = np.asarray(multihost_utils.process_allgather(raw))
    return stacked.view(x.dtype).reshape((stacked.shape[0],) + x.shape)


def gather_rows(tree: Any, n: int) -> Any:
    """Every process's :func:`band` of rows, assembled into all ``n`` rows on every process.

    Each leaf holds this process's band (its leading axis the band's length; the other axes
    and the dtype the same on all processes); the result's leaf holds the bands in process
    order. Bytes are gathered, so values are exact. A single process returns ``tree`` as NumPy.
    Every process must call this, with the same tree structure.

    Arguments:
        tree: pytree of arrays, leading axis = this process's band of ``n`` rows.
        n: int, rows in all.

    Returns:
        pytree of NumPy arrays with ``n`` rows.
    """
    import jax

    count = process_count()
    if count == 1:
        return jax.tree.map(np.asarray, tree)
    bands = [band(n, i, count) for i in range(count)]
    longest = max(b.stop - b.start for b in bands)

    def gather(x):
        x = np.asarray(x)
        padded = np.zeros((longest,) + x.shape[1:], x.dtype)
        padded[: x.shape[0]] = x
        stacked = _allgather(padded)
        return np.concatenate([stacked[i, : b.stop - b.start] for i, b in enumerate(bands)])

    return jax.tree.map(gather, tree)


def sum_over_processes(x: Any) -> np.ndarray:
    """The sum over processes of an array of the same shape on each (float64 sums of the gathered
    values, added in process order, so every process gets the same result).

    Arguments:
        x: array-like.

    Returns:
        NumPy array (``x`` itself, as NumPy, in a single process).
    """
    x = np.asarray(x)
    if process_count() == 1:
        return x
    return np.asarray(np.sum(_allgather(x), axis=0, dtype=np.float64 if np.issubdtype(x.dtype, np.floating) else None))
