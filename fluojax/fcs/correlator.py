"""Multi-tau autocorrelation of every pixel at once, with blocking standard errors.

This is the Imaging FCS plugin's correlator (multiple tau with blocking errors, Wohland et al. 2001; docs/fcs.md, 'Correlator'), vectorised over pixels:

* **Lag grid** (P, Q): lags 1..P at bin width 1, then Q-1 groups of P/2 lags with bin widths
  2, 4, ..., 2^(Q-1). For P=16, Q=8: 1..16, 18..32/2, 36..64/4, ..., 1152..2048/128 frames, 72
  non-zero lags (the same grid as ``multipletau.autocorrelate(m=16)`` on 2,500 frames).
  Whenever the bin width doubles, the trace is re-binned by summing adjacent pairs (an odd
  trailing sample is dropped).
* **Symmetric ("monitor") normalisation**: for delay d (in bins) over n = T_bin - d products,
  ``G = sum_t (I_t - M1)(I_{t+d} - M2) / (n M1 M2)`` where M1 is the mean of the first n samples
  and M2 the mean of samples d..d+n-1. G tends to 0 at long lags.
* **Blocking (Flyvbjerg-Petersen)**: the lag-1 products are averaged in blocks of 2^i for
  i = 0 .. L-1 (L = floor(log2(T-1)) - 2); the block index is the start of the plateau of the
  block-variance curve (the plugin's rule: after the last pair of rising points with
  non-overlapping error bars, the first pair of overlapping ones), else "maximal blocking" L-3;
  at least Q-1. Every lag's products are then averaged in blocks of 2^index frames, truncated to
  a common count, and the variance of their mean gives the SEM of G used as the fit weight.

The work is split in two: a data reduction (:func:`lag_sums` -> :class:`LagSums`: per-lag sums,
monitors, blocking moments) and a small finish (:func:`acf_from_lag_sums`) that applies the
normalisation and the blocking rule. :func:`correlate` is both, in XLA;
:func:`correlate_on_devices` deals the pixels out to every local device in per-device chunks; on
a CPU the pipeline reduces with the numba kernel of :mod:`fluojax.fcs.correlator_cpu` and shares
the finish.

Data enter as ``(T, pixels)`` (time-major, as frames come off a TIFF); internally the trace is
centred on its mean before any product is formed, so float32 sums stay accurate. The only
Python loops are over the Q binning levels and the blocking levels, whose array shapes change.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from fluojax.batching import local_devices, map_padded
from fluojax.fcs.lags import BlockingPlan as BlockingPlan
from fluojax.fcs.lags import GroupLayout as GroupLayout
from fluojax.fcs.lags import LagGrid as LagGrid
from fluojax.fcs.lags import LagSums as LagSums
from fluojax.fcs.lags import blocking_plan as blocking_plan
from fluojax.fcs.lags import check_frame_count as check_frame_count
from fluojax.fcs.lags import group_layouts as group_layouts
from fluojax.fcs.lags import lag_grid as lag_grid
from fluojax.fcs.lags import min_frames as min_frames

__all__ = [
    "ACFResult",
    "BlockingPlan",
    "GroupLayout",
    "LagGrid",
    "LagSums",
    "acf_from_lag_sums",
    "blocking_plan",
    "check_frame_count",
    "correlate",
    "correlate_on_devices",
    "group_layouts",
    "lag_grid",
    "lag_sums",
    "min_frames",
]


class ACFResult(NamedTuple):
    """Per-pixel autocorrelation estimate.

    Attributes:
        acf: (C, pixels) G at each non-zero lag.
        sem: (C, pixels) blocking standard error of G (the fit's sigma).
        mean: (pixels,) mean intensity (counts/frame).
        blocked: (pixels,) bool, True where the blocking curve showed a plateau.
        block_index: (pixels,) int, the blocking level used (block of 2^index frames).
    """

    acf: jax.Array
    sem: jax.Array
    mean: jax.Array
    blocked: jax.Array
    block_index: jax.Array


def _lag1_curve_moments(fine: jax.Array, base_sums: jax.Array, count: int, block: int, levels: int) -> jax.Array:
    """Moments of the lag-1 blocking curve: at each level i, the sum of the complete
    2^i-product blocks' sums and the sum of their squares (Flyvbjerg-Petersen keeps the
    floor(count / 2^i) complete blocks).

    Levels below log2(block) come from the per-block statistics gathered during the
    correlation scan (``fine``); the coarser ones from the base-block sums, pair-summed level
    by level.

    Arguments:
        fine: (K, F, 2, pixels) per base block, for each fine level i < F: the sum of the
            complete 2^i-blocks' sums and the sum of their squares.
        base_sums: (K, pixels) sums of the products in each base block of ``block`` products.
        count: int, number of lag-1 products.
        block: int, products per base block (2^F).
        levels: int, number of blocking levels.

    Returns:
        (levels, 2, pixels).
    """
    out = list(jnp.sum(fine, axis=0)[:levels])  # (2, pixels) per fine level
    blocks = base_sums[: count // block]
    for i in range(fine.shape[1], levels):
        n = count // 2**i
        if i > fine.shape[1]:
            blocks = blocks[: 2 * n].reshape(n, 2, -1).sum(axis=1)
        out.append(jnp.stack([jnp.sum(blocks, axis=0), jnp.sum(blocks * blocks, axis=0)]))
    return jnp.stack(out)


def _lag1_curve(moments: jax.Array, count: int, monitor_sq: jax.Array):
    """Blocking curve of the lag-1 channel from its moments: s.d. of the mean and its error.

    At level i with n = floor(count / 2^i) blocks of 2^i products, block sums b_k:
    ``var = (sum b_k^2 / (n 4^i) - mean^2) / (n (M1 M2)^2)``, ``mean = sum b_k / (n 2^i)``;
    the error of the s.d. is ``sd / sqrt(2 (n - 1))``.

    Arguments:
        moments: (levels, 2, pixels) from :func:`_lag1_curve_moments`.
        count: int, number of lag-1 products.
        monitor_sq: (pixels,) (M1 M2)^2 of the lag-1 channel.

    Returns:
        (sd, err): (levels, pixels) each.
    """
    levels = moments.shape[0]
    size = 2.0 ** np.arange(levels)
    n = (count // 2 ** np.arange(levels)).astype(np.float64)
    mean = moments[:, 0] / (n * size)[:, None]
    var = (moments[:, 1] / (n * size * size)[:, None] - mean**2) / (n[:, None] * monitor_sq)
    sd = jnp.sqrt(jnp.maximum(var, 0.0))
    return sd, sd / np.sqrt(2.0 * (n - 1))[:, None]


def _plateau_index(sd: jax.Array, err: jax.Array, q: int):
    """The plugin's block-index rule, for all pixels at once.

    Arguments:
        sd, err: (L, pixels) blocking curve and its error bars.
        q: int, correlator Q (the index is at least Q - 1).

    Returns:
        (index, blocked): int (pixels,) and bool (pixels,).
    """
    levels = sd.shape[0]
    upper, lower = sd + err, sd - err
    overlap = (upper[:-1] > lower[1:]) & (upper[1:] > lower[:-1])  # (L-1,)
    rising = sd[1:] - sd[:-1] > 0  # (L-1,)
    both_overlap = overlap[:-1] & overlap[1:]  # (L-2,) at i: points i, i+1, i+2
    criterion = ~both_overlap & rising[:-1] & rising[1:]
    idx = jnp.arange(levels - 2)[:, None]
    last = jnp.max(jnp.where(criterion, idx, -1), axis=0)
    plateau = both_overlap & (idx > last) & (idx < levels - 4) & (last >= 0)
    found = jnp.any(plateau, axis=0)
    index = jnp.where(found, jnp.argmax(plateau, axis=0) + 1, levels - 3 if levels > 3 else levels - 1)
    return jnp.maximum(index, q - 1), found


def _block_lag_sums(y, delays, counts, m1, m2, block, n_blocks, fine_levels=0):
    """Per-block sums of centred lag products, one pass over the trace in cache-sized blocks.

    For every delay d_j (in bins) and block k of ``block`` bins,
    ``R[k, j] = sum_{t in block k, t < count_j} (y_t - m1_j)(y_{t+d_j} - m2_j)``.

    The trace is cut into blocks and scanned; each step holds one block plus a halo of
    ``max(d)`` bins, so all delays are formed from data already in cache (on a 2-core CPU about
    3x faster than one full-length product per delay, and nothing of size (delays, T, pixels)
    is ever stored). Products past ``count_j`` are masked.

    Arguments:
        y: (n_bins, pixels) float32 centred trace.
        delays: tuple of int, static delays in bins; the first one feeds ``fine_levels``.
        counts: tuple of int, products per delay (n_bins - d).
        m1, m2: (n_delays, pixels) means of the leading / lagged product factor.
        block: int, static, bins per block (a power of two when ``fine_levels`` > 0).
        n_blocks: int, static, blocks to cover (``ceil(max(counts) / block)``).
        fine_levels: int, static; for the first delay also return, for each level
            i < fine_levels, the sum of its complete 2^i-product blocks' sums and the sum of
            their squares (the blocking curve below the block size).

    Returns:
        (n_blocks, n_delays, pixels) block sums, and (n_blocks, fine_levels, 2, pixels).
    """
    d_max = max(delays)
    halo_blocks = -(-d_max // block)
    rows = (n_blocks + halo_blocks) * block
    y_pad = jnp.pad(y, ((0, max(rows - y.shape[0], 0)), (0, 0)))[:rows]
    lead = y_pad[: n_blocks * block].reshape(n_blocks, block, -1)
    ahead = [
        y_pad[(i + 1) * block : (n_blocks + i + 1) * block].reshape(n_blocks, block, -1) for i in range(halo_blocks)
    ]
    halo = jnp.concatenate(ahead, axis=1)[:, :d_max]

    def step(_, xs):
        k, cur, nxt = xs
        window = jnp.concatenate([cur, nxt], axis=0)
        t = k * block + jnp.arange(block)
        sums, fine = [], []
        for j, d in enumerate(delays):
            valid = (t < counts[j])[:, None]
            prod = jnp.where(valid, (cur - m1[j]) * (window[d : d + block] - m2[j]), 0.0)
            sums.append(jnp.sum(prod, axis=0))
            if j == 0:
                sub = prod
                for i in range(fine_levels):
                    if i > 0:
                        sub = sub.reshape(-1, 2, sub.shape[-1]).sum(axis=1)
                    ends = k * block + (jnp.arange(sub.shape[0]) + 1) * 2**i
                    complete = (ends <= counts[0])[:, None]
                    sub_c = jnp.where(complete, sub, 0.0)
                    fine.append(jnp.stack([jnp.sum(sub_c, axis=0), jnp.sum(sub_c * sub_c, axis=0)]))
        fine = jnp.stack(fine) if fine else jnp.zeros((0, 2, y.shape[1]), y.dtype)
        return None, (jnp.stack(sums), fine)

    _, (out, fine) = jax.lax.scan(step, None, (jnp.arange(n_blocks), lead, halo))
    return out, fine


def _block_moments(sums: jax.Array, block: int, plan: BlockingPlan) -> jax.Array:
    """Sums of block means and of their squares at each candidate level from base-block sums.

    Arguments:
        sums: (K, channels, pixels) sums over base blocks of ``block`` bins (2^first frames).
        block: int, bins per base block.
        plan: ``BlockingPlan``.

    Returns:
        (levels first..last, 2, channels, pixels).
    """
    n_blk = plan.min_blocks[0]
    blocks = sums[:n_blk] / block
    out = []
    for i, n_blk in enumerate(plan.min_blocks):
        if i > 0:
            blocks = 0.5 * (blocks[: 2 * n_blk : 2] + blocks[1 : 2 * n_blk : 2])
        out.append(jnp.stack([jnp.sum(blocks, axis=0), jnp.sum(blocks**2, axis=0)]))
    return jnp.stack(out)


def lag_sums(frames: Float[Array, "t pixels"], p: int = 16, q: int = 8) -> LagSums:
    """The correlator's data reduction in XLA (any backend; jit/vmap-able).

    The trace is cut into base blocks and scanned (:func:`_block_lag_sums`); per-block sums
    give the totals and blocking moments.

    Arguments:
        frames: (T, pixels) array of intensities (computed in float32).
        p, q: int, correlator layout (static).

    Returns:
        ``LagSums``.
    """
    grid = lag_grid(p, q)
    n_frames = frames.shape[0]
    check_frame_count(grid, n_frames)
    plan = blocking_plan(grid, n_frames)
    x = jnp.asarray(frames, jnp.float32)
    mean = jnp.mean(x, axis=0)
    binned = x - mean  # centred trace; raw monitors are centred ones + width * mean
    m1s, m2s, totals, moments, curve = [], [], [], [], None
    for g, lay in enumerate(group_layouts(grid, n_frames)):
        if g > 0:
            half = binned.shape[0] // 2
            binned = binned[: 2 * half : 2] + binned[1 : 2 * half : 2]
        counts_f = jnp.asarray(lay.counts, jnp.float32)[:, None]
        total = jnp.sum(binned, axis=0)
        m1 = jnp.stack([total - jnp.sum(binned[c:], axis=0) for c in lay.counts]) / counts_f
        m2 = jnp.stack([total - jnp.sum(binned[:d], axis=0) for d in lay.delays]) / counts_f
        sums, fine = _block_lag_sums(
            binned, lay.delays, lay.counts, m1, m2, lay.block, lay.n_blocks, plan.fine if g == 0 else 0
        )
        if g == 0:
            curve = _lag1_curve_moments(fine, sums[:, 0], lay.counts[0], lay.block, plan.levels)
        m1s.append(m1)
        m2s.append(m2)
        totals.append(jnp.sum(sums, axis=0))
        moments.append(_block_moments(sums, lay.block, plan))
    cat = lambda parts, axis=0: jnp.concatenate(parts, axis=axis)  # noqa: E731
    assert curve is not None  # group 0 always exists (q >= 1)
    return LagSums(mean, cat(m1s), cat(m2s), cat(totals), cat(moments, axis=2), curve)


def acf_from_lag_sums(reduced: LagSums, n_frames: int, p: int = 16, q: int = 8) -> ACFResult:
    """ACF with the plugin's monitor normalisation and blocking SEM from a ``LagSums``.

    ``G_c = total_c / (n_c M1_c M2_c)`` with the raw monitors ``M = m + width_c * mean``. The
    block index b comes from the lag-1 blocking curve (:func:`_plateau_index`); each channel's
    SEM is the standard error of the mean of its ``min_blocks[b]`` block means,
    ``var = (S2/n - (S1/n)^2) / ((n - 1) (M1 M2)^2)``.

    Arguments:
        reduced: ``LagSums`` of ``n_frames`` frames.
        n_frames: int, static, number of frames T.
        p, q: int, static, correlator layout.

    Returns:
        ``ACFResult``.
    """
    grid = lag_grid(p, q)
    plan = blocking_plan(grid, n_frames)
    counts = np.concatenate([lay.counts for lay in group_layouts(grid, n_frames)]).astype(np.float32)[:, None]
    width = grid.bin_widths.astype(np.float32)[:, None]
    raw_m1m2 = (reduced.m1 + width * reduced.mean) * (reduced.m2 + width * reduced.mean)
    acf = reduced.total / (counts * raw_m1m2)

    sd, err = _lag1_curve(reduced.curve, int(counts[0, 0]), raw_m1m2[0] ** 2)
    index, blocked = _plateau_index(sd, err, grid.q)

    n = np.asarray(plan.min_blocks, np.float32)[:, None, None]
    mean_b = reduced.block_moments[:, 0] / n
    variance = (reduced.block_moments[:, 1] / n - mean_b**2) / ((n - 1) * raw_m1m2**2)  # (levels, C, pixels)
    choose = jnp.broadcast_to((index - plan.first)[None, None, :], (1,) + variance.shape[1:])
    sem = jnp.sqrt(jnp.maximum(jnp.take_along_axis(variance, choose, axis=0)[0], 0.0))
    return ACFResult(acf, sem, reduced.mean, blocked, index)


@functools.partial(jax.jit, static_argnames=("p", "q"))
def correlate(frames: Float[Array, "t pixels"], p: int = 16, q: int = 8) -> ACFResult:
    """Autocorrelation and blocking SEM of every pixel of a (T, pixels) block of frames.

    The XLA path: :func:`lag_sums` then :func:`acf_from_lag_sums` (jit/vmap-able, CPU or GPU).

    Arguments:
        frames: (T, pixels) array of intensities (any real dtype; computed in float32).
            T must be at least :func:`min_frames` of the grid.
        p, q: int, correlator layout (static); lags as in :func:`lag_grid`.

    Returns:
        ``ACFResult`` with arrays of shape (C, pixels) / (pixels,). Pixels with zero mean or
        zero variance give non-finite values (reported per pixel by the caller).
    """
    return acf_from_lag_sums(lag_sums(frames, p, q), frames.shape[0], p, q)


@functools.partial(jax.jit, static_argnames=("p", "q"))
def _correlate_pixels_first(traces, p, q):
    """:func:`correlate` of (pixels, T) traces, its (C, pixels) arrays turned to (pixels, C)."""
    r = correlate(traces.T, p, q)
    return ACFResult(r.acf.T, r.sem.T, r.mean, r.blocked, r.block_index)


def correlate_on_devices(frames: Float[Array, "t pixels"], p: int = 16, q: int = 8, devices=None) -> ACFResult:
    """:func:`correlate` with the pixels split into one chunk per device (equal to it: every
    pixel's correlation is computed alone, by the same program).

    The pixels are cut into ``ceil(pixels / D)`` columns per device and run through
    :func:`fluojax.batching.map_padded` (the last chunk padded with copies of its last pixel).

    Arguments:
        frames: (T, pixels) array of intensities, as for :func:`correlate`.
        p, q: int, correlator layout.
        devices: devices to use (None: all local devices, :func:`fluojax.batching.local_devices`).

    Returns:
        ``ACFResult`` of NumPy arrays, shapes as :func:`correlate`'s.
    """
    chosen = local_devices(devices)
    traces = np.asarray(frames).T  # (pixels, T): map_padded cuts rows
    per_device = -(-traces.shape[0] // len(chosen))
    r = map_padded(lambda x, _count: _correlate_pixels_first(x, p, q), traces, per_device, devices=chosen)
    return ACFResult(r.acf.T, r.sem.T, r.mean, r.blocked, r.block_index)
