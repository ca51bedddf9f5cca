"""Multi-tau autocorrelation of every pixel at once, with blocking standard errors.

This is the Imaging FCS plugin's correlator (fcs.md §2.2-2.3), vectorised over pixels:

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

__all__ = ["LagGrid", "ACFResult", "lag_grid", "min_frames", "correlate"]


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


def lag_grid(p: int = 16, q: int = 8) -> LagGrid:
    """Lags and bin widths of the (P, Q) multi-tau correlator, lag 0 excluded.

    Arguments:
        p: int, even, channels in the first group (16 or 32 in the plugin).
        q: int, number of groups including the first.

    Returns:
        ``LagGrid`` with ``p + (q - 1) * p // 2`` lags.
    """
    if p < 4 or p % 4:
        raise ValueError(f"correlator P must be a multiple of 4 (got {p})")
    if q < 1:
        raise ValueError(f"correlator Q must be >= 1 (got {q})")
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


def _block_curve(fine: jax.Array, base_sums: jax.Array, count: int, block: int, monitor_sq: jax.Array, levels: int):
    """Blocking curve of the lag-1 products: s.d. of the mean and its error at each level.

    Level i averages the products in blocks of 2^i and keeps the floor(count / 2^i) complete
    blocks (Flyvbjerg-Petersen). Levels below log2(block) come from the per-block statistics
    gathered during the correlation scan (``fine``); the coarser ones from the base-block sums,
    pair-summed level by level.

    Arguments:
        fine: (K, F, 2, pixels) per base block, for each fine level i < F: the sum of the
            complete 2^i-blocks' sums and the sum of their squares.
        base_sums: (K, pixels) sums of the products in each base block of ``block`` products.
        count: int, number of lag-1 products.
        block: int, products per base block (2^F).
        monitor_sq: (pixels,) (M1 M2)^2 of the lag-1 channel.
        levels: int, number of blocking levels.

    Returns:
        (sd, err): (levels, pixels) each.
    """
    sds, errs = [], []
    totals = jnp.sum(fine, axis=0)  # (F, 2, pixels)
    blocks = base_sums[: count // block]
    for i in range(levels):
        size = 2**i
        n = count // size
        if i < fine.shape[1]:
            sum_, sum_sq = totals[i, 0], totals[i, 1]
        else:
            if i > fine.shape[1]:
                blocks = blocks[: 2 * n].reshape(n, 2, -1).sum(axis=1)
            sum_, sum_sq = jnp.sum(blocks, axis=0), jnp.sum(blocks * blocks, axis=0)
        mean = sum_ / (n * size)
        var = (sum_sq / (n * size * size) - mean**2) / (n * monitor_sq)
        sd = jnp.sqrt(jnp.maximum(var, 0.0))
        sds.append(sd)
        errs.append(sd / np.sqrt(2.0 * (n - 1)))
    return jnp.stack(sds), jnp.stack(errs)


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
    ahead = [y_pad[(i + 1) * block : (n_blocks + i + 1) * block].reshape(n_blocks, block, -1) for i in range(halo_blocks)]
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


@functools.partial(jax.jit, static_argnames=("p", "q"))
def correlate(frames: jax.Array, p: int = 16, q: int = 8) -> ACFResult:
    """Autocorrelation and blocking SEM of every pixel of a (T, pixels) block of frames.

    Arguments:
        frames: (T, pixels) array of intensities (any real dtype; computed in float32).
            T must be at least :func:`min_frames` of the grid.
        p, q: int, correlator layout (static); lags as in :func:`lag_grid`.

    Returns:
        ``ACFResult`` with arrays of shape (C, pixels) / (pixels,). Pixels with zero mean or
        zero variance give non-finite values (reported per pixel by the caller).
    """
    grid = lag_grid(p, q)
    n_frames = frames.shape[0]
    if n_frames < min_frames(grid):
        raise ValueError(
            f"{n_frames} frames is too few for the correlator (P={grid.p}, Q={grid.q}): "
            f"its largest lag is {int(grid.lags[-1])} frames and it needs at least {min_frames(grid)}"
        )
    x = jnp.asarray(frames, jnp.float32)
    mean = jnp.mean(x, axis=0)
    x = x - mean  # centred trace; raw monitors are centred ones + width * mean

    levels = int(np.floor(np.log2(n_frames - 1))) - 2
    width_last = int(grid.bin_widths[-1])
    samples_last = (n_frames - int(grid.lags[-1])) // width_last
    first_level = grid.q - 1
    last_level = max(levels - 3 if levels > 3 else levels - 1, first_level)
    min_blocks = {b: samples_last // 2 ** max(b - int(np.log2(width_last)), 0) for b in range(first_level, last_level + 1)}

    acfs, variances = [], []
    index = blocked = None
    binned, width = x, 1
    for g in range(grid.q):
        group = np.nonzero(grid.bin_widths == 2**g)[0]
        if 2**g != width:
            half = binned.shape[0] // 2
            binned = binned[: 2 * half : 2] + binned[1 : 2 * half : 2]
            width = 2**g
        n_bins = binned.shape[0]
        delays = tuple(int(v) for v in grid.lags[group] // width)
        counts = tuple(n_bins - d for d in delays)
        counts_f = jnp.asarray(counts, jnp.float32)[:, None]
        total = jnp.sum(binned, axis=0)
        # centred monitors: mean of the first `count` bins and of bins d .. d + count - 1
        m1 = jnp.stack([total - jnp.sum(binned[c:], axis=0) for c in counts]) / counts_f
        m2 = jnp.stack([total - jnp.sum(binned[:d], axis=0) for d in delays]) / counts_f
        raw_m1m2 = (m1 + width * mean) * (m2 + width * mean)

        block = 2 ** max(first_level - g, 0)  # one base block (2^first_level frames) in bins
        n_blocks = -(-max(counts) // block)
        fine_levels = min(levels, first_level) if g == 0 else 0
        if g == 0:  # lag 1 first: the scan also gathers its blocking curve below the block size
            order = np.array([delays.index(1)] + [j for j in range(len(delays)) if delays[j] != 1])
            delays, counts = tuple(delays[j] for j in order), tuple(counts[j] for j in order)
            m1, m2, raw_m1m2, counts_f = m1[order], m2[order], raw_m1m2[order], counts_f[order]
        sums, fine = _block_lag_sums(binned, delays, counts, m1, m2, block, n_blocks, fine_levels)
        if g == 0:
            sd, err = _block_curve(fine, sums[:, 0], counts[0], block, raw_m1m2[0] ** 2, levels)
            index, blocked = _plateau_index(sd, err, grid.q)
            inverse = np.argsort(order)
            sums, raw_m1m2, counts_f = sums[:, inverse], raw_m1m2[inverse], counts_f[inverse]
        acfs.append(jnp.sum(sums, axis=0) / (counts_f * raw_m1m2))

        # block means of 2^first_level frames, then pairwise up to the last candidate level
        n_blk = min_blocks[first_level]
        blocks = sums[:n_blk] / block
        level_vars = []
        for b in range(first_level, last_level + 1):
            if b > first_level:
                n_blk = min_blocks[b]
                blocks = 0.5 * (blocks[: 2 * n_blk : 2] + blocks[1 : 2 * n_blk : 2])
            bm = jnp.mean(blocks, axis=0)
            var = (jnp.mean(blocks**2, axis=0) - bm**2) / ((n_blk - 1) * raw_m1m2**2)
            level_vars.append(var)
        level_vars = jnp.stack(level_vars)  # (levels, channels, pixels)
        choose = (index - first_level)[None, None, :]
        variances.append(jnp.take_along_axis(level_vars, jnp.broadcast_to(choose, (1,) + level_vars.shape[1:]), axis=0)[0])

    acf = jnp.concatenate(acfs, axis=0)
    sem = jnp.sqrt(jnp.maximum(jnp.concatenate(variances, axis=0), 0.0))
    return ACFResult(acf, sem, mean, blocked, index)
