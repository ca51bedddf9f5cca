"""The multi-tau correlator's static layout, in NumPy: the lag grid, its groups, the blocking plan
and the data reduction's fields (:class:`LagSums`).

Everything here is fixed by (P, Q) and the number of frames; :mod:`fluojax.fcs.correlator` (XLA)
and :mod:`fluojax.fcs.correlator_cpu` (numba) both reduce a stack to the same :class:`LagSums`.
This module imports neither JAX nor numba, so the CPU reduction can run in a process that has
not imported JAX (:mod:`fluojax.fcs.reduction`). The grid and normalisation are described in
:mod:`fluojax.fcs.correlator`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from fluojax.io import InputError

__all__ = [
    "BlockingPlan",
    "GroupLayout",
    "LagGrid",
    "LagSums",
    "blocking_plan",
    "check_frame_count",
    "group_layouts",
    "lag_grid",
    "min_frames",
]


class LagGrid(NamedTuple):
    """The multi-tau channel layout (host constants, numpy).

    Attributes:
        lags: int array (C,), non-zero lags in frames.
        bin_widths: int array (C,), bin width of each lag's channel in frames.
        p: int, channels in the first group.
        q: int, number of groups.
    """

    lags: np.ndarray
    bin_widths: np.ndarray
    p: int
    q: int


def lag_grid(p: int = 16, q: int = 8) -> LagGrid:
    """Lags and bin widths of the (P, Q) multi-tau correlator, lag 0 excluded.

    Arguments:
        p: int, even, channels in the first group (16 or 32 in the plugin).
        q: int, number of groups including the first.

    Returns:
        ``LagGrid`` with ``p + (q - 1) * p // 2`` lags.
    """
    if p < 4 or p % 4:
        raise InputError(f"correlator P = {p} lags per group: must be a positive multiple of 4")
    if q < 1:
        raise InputError(f"correlator Q = {q} groups: must be >= 1")
    lags = list(range(1, p + 1))
    widths = [1] * p
    for g in range(2, q + 1):
        for c in range(1, p // 2 + 1):
            lags.append(2 ** (g - 1) * c + (p // 4) * 2**g)
            widths.append(2 ** (g - 1))
    return LagGrid(np.asarray(lags), np.asarray(widths), p, q)


def min_frames(grid: LagGrid) -> int:
    """Fewest frames for which every lag has at least two blocks for its SEM."""
    last_lag, last_width = int(grid.lags[-1]), int(grid.bin_widths[-1])
    return last_lag + 2 * last_width


class GroupLayout(NamedTuple):
    """Static layout of one group of equal bin width (host constants).

    Attributes:
        width: int, bin width in frames (2^g for group g).
        delays: tuple of int, the lags in bins (lag / width).
        counts: tuple of int, products per delay (bins - delay).
        block: int, bins per base block of the blocking analysis (2^(Q-1) frames).
        n_blocks: int, base blocks covering the longest product series.
    """

    width: int
    delays: tuple
    counts: tuple
    block: int
    n_blocks: int


def group_layouts(grid: LagGrid, n_frames: int) -> tuple[GroupLayout, ...]:
    """The per-group layout of the correlator for ``n_frames`` frames (group g has T >> g bins)."""
    first_level = grid.q - 1
    out = []
    for g in range(grid.q):
        width = 2**g
        channels = np.nonzero(grid.bin_widths == width)[0]
        n_bins = n_frames >> g
        delays = tuple(int(v) for v in grid.lags[channels] // width)
        counts = tuple(n_bins - d for d in delays)
        block = 2 ** max(first_level - g, 0)
        out.append(GroupLayout(width, delays, counts, block, -(-max(counts) // block)))
    if out[0].delays[0] != 1:
        raise AssertionError("the first channel of the lag grid must be lag 1")
    return tuple(out)


class BlockingPlan(NamedTuple):
    """Levels of the blocking analysis for T frames (host constants).

    Attributes:
        levels: int, levels of the lag-1 blocking curve, floor(log2(T - 1)) - 2.
        fine: int, curve levels below the base block (gathered while lag-1 products are formed).
        first: int, lowest candidate block index, Q - 1 (base block of 2^first frames).
        last: int, highest candidate block index ("maximal blocking" L - 3).
        min_blocks: tuple of int, for each candidate level first..last, the number of blocks
            every channel keeps (the count of the last channel, so all channels use the same).
    """

    levels: int
    fine: int
    first: int
    last: int
    min_blocks: tuple


def blocking_plan(grid: LagGrid, n_frames: int) -> BlockingPlan:
    """The blocking levels and block counts used for ``n_frames`` frames (module docstring)."""
    levels = int(np.floor(np.log2(n_frames - 1))) - 2
    first = grid.q - 1
    last = max(levels - 3 if levels > 3 else levels - 1, first)
    width_last = int(grid.bin_widths[-1])
    samples_last = (n_frames - int(grid.lags[-1])) // width_last
    min_blocks = tuple(samples_last // 2 ** max(b - int(np.log2(width_last)), 0) for b in range(first, last + 1))
    return BlockingPlan(levels, min(levels, first), first, last, min_blocks)


class LagSums(NamedTuple):
    """The correlator's data reduction: everything the ACFs and SEMs are computed from.

    Made from (T, pixels) frames by :func:`fluojax.fcs.correlator.lag_sums` (XLA; jax arrays) or
    by the CPU kernel :func:`fluojax.fcs.correlator_cpu.lag_sums_cpu` (NumPy arrays); turned into
    an ``ACFResult`` by :func:`fluojax.fcs.correlator.acf_from_lag_sums`. For channel c of group g (:func:`group_layouts`), y is the trace
    centred on its mean and pair-summed g times, d the delay in bins and n the product count:

    Attributes:
        mean: (pixels,) mean intensity (counts/frame).
        m1: (C, pixels) centred mean of the leading factor, ``mean(y[:n])``.
        m2: (C, pixels) centred mean of the lagged factor, ``mean(y[d:d + n])``.
        total: (C, pixels) ``sum_{t<n} (y_t - m1)(y_{t+d} - m2)``.
        block_moments: (levels first..last, 2, C, pixels): with the products averaged over
            blocks of 2^b frames, the sum over the first ``min_blocks[b]`` block means, and the
            sum of their squares (:func:`blocking_plan`).
        curve: (levels, 2, pixels): the lag-1 blocking curve's moments, the sum of the complete
            2^i-product block sums and of their squares at each level i.
    """

    mean: Any  # jax or NumPy arrays, as made
    m1: Any
    m2: Any
    total: Any
    block_moments: Any
    curve: Any


def check_frame_count(grid: LagGrid, n_frames: int) -> None:
    """Raise ``fluojax.io.InputError`` when ``n_frames`` is below :func:`min_frames` of the grid."""
    if n_frames < min_frames(grid):
        raise InputError(
            f"{n_frames} frames is too few for the correlator (P={grid.p}, Q={grid.q}): "
            f"its largest lag is {int(grid.lags[-1])} frames and it needs at least {min_frames(grid)}"
        )
