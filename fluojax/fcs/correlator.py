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


def _block_curve(prod: jax.Array, monitor_sq: jax.Array, levels: int):
    """Blocking curve of lag-1 products: s.d. of the mean and its error at each level."""
    sds, errs = [], []
    blocks = prod
    n = prod.shape[0]
    for i in range(levels):
        if i > 0:
            n //= 2
            blocks = 0.5 * (blocks[: 2 * n : 2] + blocks[1 : 2 * n : 2])
        mean = jnp.mean(blocks, axis=0)
        var = (jnp.mean(blocks**2, axis=0) - mean**2) / (n * monitor_sq)
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
    binned, width, bin_count = x, 1, 0
    for g in range(grid.q):
        group = np.nonzero(grid.bin_widths == 2**g)[0]
        if 2**g != width:
            half = binned.shape[0] // 2
            binned = binned[: 2 * half : 2] + binned[1 : 2 * half : 2]
            width, bin_count = 2**g, g
        n_bins = binned.shape[0]
        delays = grid.lags[group] // width
        d_min = int(delays.min())
        span = n_bins - d_min  # longest product series in the group
        counts = n_bins - delays  # products per channel

        lead = binned[:span]
        padded = jnp.pad(binned, ((0, span), (0, 0)))  # so every delay can slice `span` rows

        def products(delay, count):
            lagged = jax.lax.dynamic_slice_in_dim(padded, delay, span, axis=0)
            valid = (jnp.arange(span) < count)[:, None]
            m1 = jnp.sum(jnp.where(valid, lead, 0.0), axis=0) / count
            m2 = jnp.sum(jnp.where(valid, lagged, 0.0), axis=0) / count
            prod = jnp.where(valid, (lead - m1) * (lagged - m2), 0.0)
            raw_m1m2 = (m1 + width * mean) * (m2 + width * mean)
            return prod, raw_m1m2

        prod, m1m2 = jax.vmap(products)(jnp.asarray(delays), jnp.asarray(counts, jnp.float32))
        acfs.append(jnp.sum(prod, axis=1) / (jnp.asarray(counts, jnp.float32)[:, None] * m1m2))

        if g == 0:  # blocking curve on the lag-1 products fixes each pixel's block level
            lag1 = int(np.nonzero(grid.lags[group] == 1)[0][0])
            sd, err = _block_curve(prod[lag1, : int(counts[lag1])], m1m2[lag1] ** 2, levels)
            index, blocked = _plateau_index(sd, err, grid.q)

        # block means of 2^first_level frames, then pairwise up to the last candidate level
        per_block = 2 ** max(first_level - bin_count, 0)
        n_blk = min_blocks[first_level]
        blocks = prod[:, : n_blk * per_block].reshape(len(group), n_blk, per_block, -1).mean(axis=2)
        level_vars = []
        for b in range(first_level, last_level + 1):
            if b > first_level:
                n_blk = min_blocks[b]
                blocks = 0.5 * (blocks[:, : 2 * n_blk : 2] + blocks[:, 1 : 2 * n_blk : 2])
            bm = jnp.mean(blocks, axis=1)
            var = (jnp.mean(blocks**2, axis=1) - bm**2) / ((n_blk - 1) * m1m2**2)
            level_vars.append(var)
        level_vars = jnp.stack(level_vars)  # (levels, channels, pixels)
        choose = (index - first_level)[None, None, :]
        variances.append(jnp.take_along_axis(level_vars, jnp.broadcast_to(choose, (1,) + level_vars.shape[1:]), axis=0)[0])

    acf = jnp.concatenate(acfs, axis=0)
    sem = jnp.sqrt(jnp.maximum(jnp.concatenate(variances, axis=0), 0.0))
    return ACFResult(acf, sem, mean, blocked, index)
