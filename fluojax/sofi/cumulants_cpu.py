"""SOFI cross-cumulants with a compiled CPU kernel (numba) for the frame sums, strip by strip in cache.

:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices` sums every distinct product of centred
pixels ("term") over the frames in XLA; it is jit-, vmap- and grad-able and fast on a GPU, but on
a CPU XLA's loops cost about as much as one pass over the stack already does, which bounds it near
4x NumPy at order 2. This module computes the same term sums with the loop order a CPU wants:
strips of a few rows are taken in parallel; for each strip its pixels' means over the frames are
summed first (eight frames as a float32 tree, then float64), then frame by frame the strip's rows are centred into a small buffer and
every term's product is added to its row of running sums (float32, as the XLA path), everything
inside the core's cache. Integer frames (camera counts, a memory-mapped block) are read as they
are, without a float copy of the block. Several orders share one pass
(:func:`cross_cumulants_cpu`), and the partitions are assembled from the term images by the same
:func:`fluojax.sofi.cumulants.combine_terms` as the XLA path, so the maths exists once.

Values only (NumPy arrays): derivatives, ``vmap`` and other backends use the XLA path. The SOFI
pipeline uses this kernel when JAX runs on the CPU and numba imports; a test compares the two.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from fluojax.io import require
from fluojax.sofi import cumulants

__all__ = [
    "BlockCumulants",
    "available",
    "block_cumulants_cpu",
    "cross_cumulants_cpu",
    "load_kernel",
    "term_sums_cpu",
]

# OpenMP's default wait policy (workers spin briefly after a call, then sleep) is kept: a call
# on a 128 x 128 x 100 stack takes ~0.5 ms (order 2), and waking sleeping workers ("PASSIVE", which
# fluojax.fcs.correlator_cpu chooses for its long calls that share the cores with a reader
# thread) adds ~0.06 ms to each. Whichever module starts OpenMP first decides for the process.

MAX_FACTORS = 6
"""Most factors of a term (auto-cumulants of order 6 take the 6th power of one pixel)."""
STRIP_ROWS = 8
"""Output rows per strip (a task of the parallel loop; its running sums stay in the L1/L2 cache)."""


@functools.cache
def _kernel():
    """The compiled kernel (numba imported on first use), or None where numba does not import
    (absent, or broken, e.g. by a NumPy it does not support): then the pipeline uses XLA."""
    try:
        from fluojax.sofi import _cumulants_kernel
    except ImportError:
        return None
    return _cumulants_kernel.term_sums_kernel


def available() -> bool:
    """Whether the numba kernel can be used (numba imports; importing it is the first call's cost)."""
    return _kernel() is not None


def _kernel_input(stack) -> np.ndarray:
    """The frames as the kernel reads them: uint16 (camera counts) or float32, C-contiguous (other
    types are cast to float32: float64 values beyond its range become infinite)."""
    x = np.asarray(stack)
    if x.dtype not in (np.uint16, np.float32):
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


@functools.cache
def _tables(terms: tuple, width: int) -> tuple:
    """The kernel's static tables of ``terms`` for frames ``width`` pixels wide: lag values,
    (pixel offset dy W + dx, lag slot) per factor, factor counts, reach in rows and columns."""
    lag_values = sorted({lag for term in terms for (_, _, lag) in term})
    slot = {lag: i for i, lag in enumerate(lag_values)}
    counts = np.array([len(term) for term in terms], np.int64)
    if counts.min() < 2 or counts.max() > MAX_FACTORS:
        raise ValueError(f"terms of {counts.min()}-{counts.max()} factors: the kernel takes 2-{MAX_FACTORS}")
    offsets = np.zeros((len(terms), MAX_FACTORS, 2), np.int64)
    for k, term in enumerate(terms):
        for f, (dy, dx, lag) in enumerate(term):
            offsets[k, f] = (dy * width + dx, slot[lag])
    reach_y = tuple(max(p[0] for p in term) for term in terms)
    reach_x = tuple(max(p[1] for p in term) for term in terms)
    return np.array(lag_values, np.int64), offsets, counts, reach_y, reach_x


def _run(stack, terms: tuple, t_eff: int, pad: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(term images, per-pixel mean over the first lag's frames (float64, (H, W))) by the kernel."""
    kernel = _kernel()
    if kernel is None:  # pragma: no cover
        raise RuntimeError("the SOFI CPU kernel needs numba (pip install numba)")
    x = _kernel_input(stack)
    big_h, big_w = x.shape[1], x.shape[2]
    if pad:  # zeros after centring: a zero pixel has mean 0 and stays 0
        x = np.pad(x, ((0, 0), (0, pad), (0, pad)))
    t_frames, height, width = x.shape
    lag_values, offsets, counts, reach_y, reach_x = _tables(terms, width)
    # numba does not check indices: every factor must lie inside the (padded) frames
    if not 1 <= t_eff <= t_frames - int(lag_values[-1]) or lag_values[0] < 0:
        raise ValueError(f"t_eff {t_eff} frames with lags {tuple(lag_values)}: outside the {t_frames} frames")
    if min(min(min(p[0], p[1]) for p in term) for term in terms) < 0 or max(reach_y) >= height or max(reach_x) >= width:
        raise ValueError(f"term offsets must be >= 0 and inside the {height} x {width} (padded) image")
    out = np.empty((len(terms), height * width), np.float32)
    mean = np.empty(height * width, np.float64)
    rows = max(1, min(STRIP_ROWS, -(-height // 4)))  # at least four strips for two threads
    flat = x.reshape(t_frames, height * width)
    kernel(flat, lag_values, offsets, counts, int(t_eff), width, rows, max(reach_y), out, mean)
    images = out.reshape(len(terms), height, width)
    crops = [images[k, : height - reach_y[k], : width - reach_x[k]] for k in range(len(terms))]
    return crops, mean.reshape(height, width)[:big_h, :big_w]


def term_sums_cpu(stack, terms, t_eff: int, pad: int = 0) -> list[np.ndarray]:
    """``<prod_(dy, dx, lag) d(y + dy, x + dx, t + lag)>_t`` over t < t_eff, an image per term: the
    frame sums of ``fluojax.sofi.cumulants`` (its ``_term_sums``), by the numba kernel.

    Arguments:
        stack: (T, H, W) frames (uint16 and float32 are read as they are; others as float32).
        terms: the terms, each a tuple of 2..6 ``(dy, dx, lag)`` factors with offsets >= 0.
        t_eff: frames summed (T - the largest lag).
        pad: zero rows/columns appended after centring (the full grid's).

    Returns:
        float32 images, term k of shape (H + pad - max dy, W + pad - max dx).
    """
    return _run(stack, tuple(terms), t_eff, pad)[0]


VARIANCE_TERM = ((0, 0, 0), (0, 0, 0))
"""The term of each pixel's own variance (its order-2 auto-cumulant at zero lag)."""


@functools.cache
def _plans(lags: tuple[tuple[int, tuple[int, ...]], ...], grid: cumulants.Grid, variance: bool) -> tuple:
    """Per (order, its lags) the :class:`~fluojax.sofi.cumulants.CumulantPlan`; the terms of all
    orders (and the variance, last); per order the indices of its plan's terms in that list."""
    plans = {order: cumulants.cumulant_plan(cumulants.cross_sets(order, tau, grid)) for order, tau in lags}
    shared = dict.fromkeys(term for plan in plans.values() for term in plan.terms)
    terms = (*(t for t in shared if t != VARIANCE_TERM), VARIANCE_TERM) if variance else tuple(shared)
    index = {term: k for k, term in enumerate(terms)}
    picks = {order: [index[term] for term in plan.terms] for order, plan in plans.items()}
    return plans, terms, picks


class BlockCumulants(NamedTuple):
    """What one pass of the kernel gives of a block of frames.

    Attributes:
        sublattices: order n -> (n, n, h, w) float32 cross-cumulant sub-lattices.
        mean: (H, W) float64 mean of each pixel over the block's frames (with ``lags``: over the
            T - max(lags) frames from the smallest lag, or from frame 0 with ``variance``).
        variance: (H, W) float32 variance of each pixel over the frames (zero lag; with ``lags``
            over the first T - max(lags) frames), exactly 0 where the pixel is constant (its mean
            is exact, so it centres to 0); None when not asked for.
    """

    sublattices: dict[int, np.ndarray]
    mean: np.ndarray
    variance: np.ndarray | None


def block_cumulants_cpu(
    stack,
    orders=(2,),
    *,
    lags: tuple[int, ...] | None = None,
    grid: str | cumulants.Grid = "sofipackage",
    variance: bool = True,
) -> BlockCumulants:
    """Cross-cumulant sub-lattices of several orders, each pixel's mean and variance, in one pass
    over the frames (numba kernel).

    The sub-lattices are the values of :func:`fluojax.sofi.cumulants.cross_cumulant_sublattices`
    (same definition, centring and grids; float32 rounding apart) as NumPy arrays. The terms of
    all orders are summed together, so orders 2-4 read the stack once.

    Arguments:
        stack: (T, H, W) frames (NumPy or a memory map; uint16 and float32 read as they are).
        orders: cumulant orders, each 2..4.
        lags: n lags in frames (only with a single order); None = zero lag.
        grid: a name in :data:`fluojax.sofi.cumulants.GRIDS` or a :class:`~fluojax.sofi.cumulants.Grid`.
        variance: also sum the pixels' own variance (one more term; else ``variance`` is None).
    """
    orders = tuple(sorted({int(o) for o in orders}))
    require(len(orders) > 0, "no cumulant order given: choose among 2-4")
    require(lags is None or len(orders) == 1, "lags are given for one order at a time")
    shape = np.shape(stack)
    checked = [cumulants.check_cross_input(shape, order, lags, grid) for order in orders]
    g = checked[0][0]
    plans, terms, picks = _plans(tuple(zip(orders, (tau for _, tau in checked))), g, variance)
    t, big_h, big_w = shape
    t_eff = t - max(max(tau) for _, tau in checked)
    images, mean = _run(stack, terms, t_eff, g.pad)
    h, w = g.sublattice_shape((big_h, big_w))
    sub = {}
    for order, plan in plans.items():
        value = cumulants.combine_terms(plan, [images[k] for k in picks[order]], g.first_reference, (h, w), xp=np)
        sub[order] = value.reshape(order, order, h, w)
    return BlockCumulants(sub, mean, images[-1][:big_h, :big_w].copy() if variance else None)


def cross_cumulants_cpu(
    stack,
    orders=(2,),
    *,
    lags: tuple[int, ...] | None = None,
    grid: str | cumulants.Grid = "sofipackage",
) -> dict[int, np.ndarray]:
    """Cross-cumulant sub-lattices of several orders in one pass over the frames (numba kernel):
    order n -> ``(n, n, h, w)`` float32, the values of
    :func:`fluojax.sofi.cumulants.cross_cumulant_sublattices` (arguments as
    :func:`block_cumulants_cpu`)."""
    return block_cumulants_cpu(stack, orders, lags=lags, grid=grid, variance=False).sublattices


def load_kernel(dtype=np.float32) -> None:
    """Load (or, on first use after installing, compile) the kernel for frames of ``dtype`` now,
    on a small zero stack, writable and read-only (numba compiles each separately; a memory-mapped
    TIFF and a JAX array are read-only)."""
    frames = np.zeros((4, 4, 4), dtype)
    block_cumulants_cpu(frames, (2,))
    frames.setflags(write=False)
    block_cumulants_cpu(frames, (2,))
