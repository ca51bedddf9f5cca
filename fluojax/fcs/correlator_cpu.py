"""The correlator's data reduction as a compiled CPU kernel (numba), pixel by pixel in cache.

:func:`fluojax.fcs.correlator.lag_sums` expresses the multi-tau reduction in XLA, which on a
GPU correlates a 128 x 128 x 50,000 stack in half a second. On a CPU, XLA materialises every
lag's product array and reduces it in a separate pass (a 2-core CPU spends ~1 s per 1,024
pixels x 50,000 frames). This module computes the same ``LagSums`` with the loop order a CPU
wants: pixels are taken 16 at a time, transposed into a pixel-major buffer, and each pixel's
trace (200 kB for 50,000 frames, inside the L2 cache) is bleach-corrected, centred, pair-binned
group by group and correlated at every lag of every group before the next pixel is touched.
Blocks of 32 or more bins are summed eight lags per pass over the trace (one vector loop with
17 accumulators, centred afterwards); for the coarse groups, whose blocks hold a few bins, and
for lag 1, the products are formed in one pass and pair-summed into block sums, the lag-1 pair
sums also giving the blocking curve's fine levels.

Every hot loop must be one LLVM vectorises. What kept numba's loops scalar here: an index such
as ``row[t + d]`` (numba tests it for a negative value; slices or unsigned indices avoid that),
a loop writing the array it reads (pair sums go to a second array), and two array variables
swapped between calls (each call site names its arrays: ``next_level``).

The arithmetic is the XLA path's: float32 centred products summed per base block (and the
lag-1 curve's fine levels in float32), float64 for the trace totals behind the monitors.
``fluojax.fcs.correlator.acf_from_lag_sums`` turns the result into ACFs and blocking SEMs, so
normalisation and blocking exist once. A test checks the
two paths against each other; the pipeline uses this kernel when JAX runs on the CPU.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from fluojax.fcs import lags

__all__ = ["available", "lag_sums_cpu", "load_kernel"]

_PIXELS_PER_CHUNK = 16  # pixels transposed together (16 write streams; measured best of 8-64)
_PAIR_SUM_MAX_BLOCK = 16  # blocks of at most this many bins are summed by pair-summing products
_TREND_COEFS = 9  # power-series coefficients of the bleach trend (degree <= 8, the CLI's limit)


# numba's OpenMP workers busy-wait after each kernel call by default; the kernel shares the
# cores with the pipeline's band reader and XLA's finish, which the spinning slowed (correlate_stack
# of a 128 x 128 x 50,000 stack on 2 cores, alternating processes: median 1.50 s passive against
# 1.53-1.62 s). Only a default: a value the user set is kept, and it takes effect only if no
# OpenMP runtime in the process has started yet.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:  # the kernel needs numba; without it (absent, or broken) the pipeline uses the XLA reduction
    from numba import njit, prange
except ImportError:  # pragma: no cover - numba is a runtime dependency
    njit = None  # type: ignore[assignment]  # (numba absent or broken: available() says so)


def available() -> bool:
    """Whether the numba kernel can be used (numba importable)."""
    return njit is not None


if njit is not None:

    @njit(fastmath=True, inline="always")
    def centred_dot(a, b, ma, mb):
        """sum_i (a_i - ma)(b_i - mb) in float32 (vectorised by LLVM under fastmath)."""
        s = np.float32(0.0)
        for i in range(a.shape[0]):
            s += (a[i] - ma) * (b[i] - mb)
        return s

    @njit(fastmath=True, inline="always")
    def total(a):
        """sum_i a_i accumulated in float64."""
        s = 0.0
        for i in range(a.shape[0]):
            s += a[i]
        return s

    @njit(fastmath=True, inline="always")
    def sum_and_squares(a, zero):
        """(sum_i a_i, sum_i a_i^2) accumulated in the type of ``zero``: 0.0 (float64) for the
        blocking moments, np.float32(0) for the lag-1 curve's fine levels (the XLA path sums
        those in float32; twice the vector lanes of float64 and no conversions)."""
        s1 = zero
        s2 = zero
        for i in range(a.shape[0]):
            s1 += a[i]
            s2 += a[i] * a[i]
        return s1, s2

    @njit(fastmath=True, inline="always")
    def block_dots_of_eight(y, d, n_full, blk, out):
        """Per block k < n_full of ``blk`` bins, sums over its bins t for eight delays d_j,
        in float32: out[0, k] = sum y_t, out[1 + j, k] = sum y_t y_{t+d_j}, out[9 + j, k] = sum y_{t+d_j}.

        Eight lags share one pass over a block: the loop vectorizer widens the 17 sums into
        vector accumulators, so a block costs 17 horizontal sums instead of eight dot products'
        set-ups and sums. The slices are made once for all blocks and the bin index is unsigned:
        a signed index gets numba's wrap-around test (together 2.5x faster than eight dots per
        block, 46 -> 30 us per pixel for the 16 lags of 50,000 frames).
        """
        n = n_full * blk
        a = y[:n]
        b0, b1, b2, b3 = y[d[0] : d[0] + n], y[d[1] : d[1] + n], y[d[2] : d[2] + n], y[d[3] : d[3] + n]
        b4, b5, b6, b7 = y[d[4] : d[4] + n], y[d[5] : d[5] + n], y[d[6] : d[6] + n], y[d[7] : d[7] + n]
        ublk = np.uint64(blk)
        for k in range(n_full):
            sa = s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = np.float32(0.0)
            r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = np.float32(0.0)
            t0 = np.uint64(k) * ublk
            for t in range(t0, t0 + ublk):
                x = a[t]
                sa += x
                s0 += x * b0[t]
                s1 += x * b1[t]
                s2 += x * b2[t]
                s3 += x * b3[t]
                s4 += x * b4[t]
                s5 += x * b5[t]
                s6 += x * b6[t]
                s7 += x * b7[t]
                r0 += b0[t]
                r1 += b1[t]
                r2 += b2[t]
                r3 += b3[t]
                r4 += b4[t]
                r5 += b5[t]
                r6 += b6[t]
                r7 += b7[t]
            out[0, k], out[1, k], out[2, k], out[3, k], out[4, k], out[5, k] = sa, s0, s1, s2, s3, s4
            out[6, k], out[7, k], out[8, k], out[9, k], out[10, k], out[11, k] = s5, s6, s7, r0, r1, r2
            out[12, k], out[13, k], out[14, k], out[15, k], out[16, k] = r3, r4, r5, r6, r7

    @njit(fastmath=True, inline="always")
    def block_sums_by_dots(y, delays, counts, blk, n_blk, m1, m2, bases, sums):
        """bases[j, k] = sum_{t in block k, t < counts[j]} (y_t - m1[j])(y_{t + delays[j]} - m2[j]).

        Blocks that every lag fills are summed eight lags at a time by ``block_dots_of_eight``
        (``sums``: a (17, >= n_blk) float32 scratch array) and centred afterwards:
        sum (a - m1)(b - m2) = sum ab - m2 sum a - m1 sum b + n m1 m2. The last blocks, which
        lags fill to different counts, are summed lag by lag.
        """
        nl = delays.shape[0]
        n_full = min(counts[nl - 1] // blk, n_blk)  # the largest delay has the smallest count
        d8 = np.empty(8, np.int64)
        for j0 in range(0, nl, 8):
            for u in range(8):
                d8[u] = delays[min(j0 + u, nl - 1)]  # a short last chunk repeats its last lag
            block_dots_of_eight(y, d8, n_full, blk, sums)
            for jj in range(min(8, nl - j0)):
                j = j0 + jj
                ma, mb = m1[j], m2[j]
                off = blk * ma * mb
                out, sab, sa, sb = bases[j], sums[1 + jj], sums[0], sums[9 + jj]
                for k in range(n_full):
                    out[k] = sab[k] - mb * sa[k] - ma * sb[k] + off
        for j in range(nl):
            d = delays[j]
            for k in range(n_full, n_blk):
                t0 = k * blk
                m = min(blk, counts[j] - t0)
                bases[j, k] = centred_dot(y[t0 : t0 + m], y[t0 + d : t0 + d + m], m1[j], m2[j]) if m > 0 else 0.0

    @njit(fastmath=True, inline="always")
    def pair_sums(src, dst, n):
        """dst[u] = src[2u] + src[2u+1] for u < n, into a separate array (in place, LLVM cannot
        prove the loop free of dependences and leaves it scalar: 3-5x slower)."""
        for u in range(n):
            dst[u] = src[2 * u] + src[2 * u + 1]

    @njit(fastmath=True, inline="always")
    def next_level(a, b, lv, n):
        """Pair-sum level lv - 1 into level lv, the even levels living in ``a``, the odd in ``b``.

        Each call site names its source and destination: swapping two array variables between
        calls instead leaves ``pair_sums`` unvectorized (5x slower).
        """
        if lv % 2 == 1:
            pair_sums(a, b, n)
        else:
            pair_sums(b, a, n)

    @njit(fastmath=True, inline="always")
    def block_sums_by_pairs(row, d, cnt, blk, n_blk, m1, m2, prod, spare, base, curve, pix, n_curve):
        """base[k] = sum_{t in block k, t < cnt} (row_t - m1)(row_{t+d} - m2), by pair sums.

        The products are formed in one vectorised pass, zero-padded to whole blocks and
        pair-summed log2(blk) times: for blocks of a few bins this avoids a dot product's set-up
        and horizontal sum per block. On the way, for each level lv < n_curve, the sum and sum
        of squares of the cnt >> lv complete 2^lv-product sub-blocks go to curve[lv, :, pix]
        (the lag-1 blocking curve's fine levels; blk is a multiple of 2^lv there, so no
        sub-block straddles two base blocks).
        """
        a, b = row[:cnt], row[d : d + cnt]  # slices: an index like row[t + d] may be negative
        for t in range(cnt):  # to numba, and its wrap-around test keeps the loop scalar (8x slower)
            prod[t] = (a[t] - m1) * (b[t] - m2)
        n = n_blk * blk
        prod[cnt:n] = 0.0
        lv = 0
        while True:
            if lv < n_curve:
                curve[lv, 0, pix], curve[lv, 1, pix] = sum_and_squares(
                    (prod if lv % 2 == 0 else spare)[: cnt >> lv], np.float32(0.0)
                )
            if n == n_blk:
                break
            n //= 2
            lv += 1
            next_level(prod, spare, lv, n)
        base[:n_blk] = (prod if lv % 2 == 0 else spare)[:n_blk]

    @njit(fastmath=True, inline="always")
    def power_series(coef, s):
        """sum_o coef[o] s^o by Horner's rule (a fixed trip count, so LLVM unrolls it)."""
        f = coef[_TREND_COEFS - 1]
        for o in range(_TREND_COEFS - 2, -1, -1):
            f = f * s + coef[o]
        return f

    @njit(fastmath=True, inline="always")
    def detrend(row, stride, fit_matrix, scaled_index):
        """I' = I / sqrt(f/f0) + f0 (1 - sqrt(f/f0)), f the fitted trend, in one pass over the row.

        ``fit_matrix`` maps the ``stride``-frame block means to the trend's power-series
        coefficients c_o in the scaled frame index s (``scaled_index``), padded to
        ``_TREND_COEFS``; f(s) = sum_o c_o s^o is evaluated by Horner's rule in registers.
        """
        n_means = fit_matrix.shape[1]
        means = np.empty(n_means, np.float32)
        for b in range(n_means):  # float32 sums of `stride` frames (~50): exact enough for a trend
            block = row[b * stride : (b + 1) * stride]
            acc = np.float32(0.0)
            for u in range(stride):
                acc += block[u]
            means[b] = acc / stride
        coef = np.empty(_TREND_COEFS, np.float32)
        for o in range(_TREND_COEFS):  # a local sum vectorises; summing into coef[o] did not (2x)
            weights = fit_matrix[o]
            acc = np.float32(0.0)
            for b in range(n_means):
                acc += weights[b] * means[b]
            coef[o] = acc
        f0 = power_series(coef, scaled_index[0])
        inv0 = np.float32(1.0) / f0
        for t in range(row.shape[0]):
            ratio = np.sqrt(max(power_series(coef, scaled_index[t]) * inv0, np.float32(1e-12)))
            row[t] = row[t] / ratio + f0 * (np.float32(1.0) - ratio)

    @njit(parallel=True, fastmath=True, cache=True)
    def _lag_sums_kernel(
        frames,
        do_detrend,
        stride,
        fit_matrix,
        scaled_index,
        delays,
        counts,
        group_start,
        group_size,
        blocks,
        n_blocks,
        n_fine,
        min_blocks,
        mean_out,
        m1_out,
        m2_out,
        total_out,
        moments_out,
        curve_out,
    ):
        n_frames, n_pix = frames.shape
        n_groups = group_start.shape[0]
        n_levels = curve_out.shape[0]
        n_chunks = (n_pix + _PIXELS_PER_CHUNK - 1) // _PIXELS_PER_CHUNK
        for chunk in prange(n_chunks):
            p0 = chunk * _PIXELS_PER_CHUNK
            width = min(_PIXELS_PER_CHUNK, n_pix - p0)
            buf = np.empty((width, n_frames), np.float32)
            chunk_frames = frames[:, p0 : p0 + width]
            # transpose the chunk four frames at a time: the four stores to one pixel's row go to
            # one cache line (frame by frame the copy is 1.9x slower); the rest frame by frame
            t_end = 0
            if width == _PIXELS_PER_CHUNK:
                t_end = n_frames - n_frames % 4
                for t in range(0, t_end, 4):
                    f0, f1, f2, f3 = chunk_frames[t], chunk_frames[t + 1], chunk_frames[t + 2], chunk_frames[t + 3]
                    for i in range(_PIXELS_PER_CHUNK):
                        dst = buf[i, t : t + 4]
                        dst[0], dst[1], dst[2], dst[3] = f0[i], f1[i], f2[i], f3[i]
            for t in range(t_end, n_frames):
                for i in range(width):
                    buf[i, t] = chunk_frames[t, i]
            bases = np.empty((group_size.max(), n_blocks.max()), np.float32)  # a group's base-block sums
            dot_sums = np.empty((17, n_blocks.max()), np.float32)  # see block_sums_by_dots
            m1 = np.empty(group_size.max(), np.float32)  # a group's monitors (centred)
            m2 = np.empty(group_size.max(), np.float32)
            level_means = np.empty(n_blocks.max())
            prod = np.empty(n_frames + blocks[0], np.float32)  # products, padded to whole blocks
            spare = np.empty_like(prod)  # pair sums go to a second array (see pair_sums)
            trace_a = np.empty(n_frames // 2, np.float32)  # the pair-summed trace, alternately
            trace_b = np.empty(n_frames // 2, np.float32)
            level_spare = np.empty(n_blocks.max())
            for i in range(width):
                pix = p0 + i
                row = buf[i]
                if do_detrend:
                    detrend(row, stride, fit_matrix, scaled_index)
                mean = total(row) / n_frames
                mean_out[pix] = mean
                for t in range(n_frames):
                    row[t] -= np.float32(mean)
                length = n_frames
                for g in range(n_groups):
                    if g > 0:  # pair-sum the trace: bin width 2^g
                        length //= 2
                        if g == 1:
                            pair_sums(row, trace_a, length)
                        else:
                            next_level(trace_b, trace_a, g, length)  # odd groups in trace_a
                        row = trace_a if g % 2 == 1 else trace_b
                    grand = total(row[:length])
                    blk = blocks[g]
                    c0, nl = group_start[g], group_size[g]
                    for jj in range(nl):
                        c = c0 + jj
                        d, cnt = delays[c], counts[c]
                        m1[jj] = np.float32((grand - total(row[cnt:length])) / cnt)
                        m2[jj] = np.float32((grand - total(row[:d])) / cnt)
                        m1_out[c, pix] = m1[jj]
                        m2_out[c, pix] = m2[jj]
                    if blk > _PAIR_SUM_MAX_BLOCK:  # blocks long enough for vector loops
                        block_sums_by_dots(
                            row, delays[c0 : c0 + nl], counts[c0 : c0 + nl], blk, n_blocks[g], m1, m2, bases, dot_sums
                        )
                    # short blocks by pair sums; lag 1 too, whose pair-sum levels are the blocking
                    # curve's fine levels (its base sums, computed again there, replace the dot
                    # pass's: dropping lag 1 from that pass would still cost two eight-lag passes)
                    for jj in range(nl):
                        c = c0 + jj
                        if blk <= _PAIR_SUM_MAX_BLOCK or c == 0:
                            block_sums_by_pairs(
                                row,
                                delays[c],
                                counts[c],
                                blk,
                                n_blocks[g],
                                m1[jj],
                                m2[jj],
                                prod,
                                spare,
                                bases[jj],
                                curve_out,
                                pix,
                                n_fine if c == 0 else 0,
                            )
                    for jj in range(nl):
                        c = c0 + jj
                        cnt = counts[c]
                        base = bases[jj]
                        total_out[c, pix] = total(base[: n_blocks[g]])
                        # blocking moments: block means of 2^first frames, then of pairs of blocks
                        # (pair sums scaled by 2^-lv: the same floats as averaging level by level)
                        for k in range(min_blocks[0]):
                            level_means[k] = base[k] / blk
                        for lv in range(min_blocks.shape[0]):
                            nb = min_blocks[lv]
                            if lv > 0:
                                next_level(level_means, level_spare, lv, nb)
                            s1, s2 = sum_and_squares((level_means if lv % 2 == 0 else level_spare)[:nb], 0.0)
                            scale = 0.5**lv
                            moments_out[lv, 0, c, pix] = s1 * scale
                            moments_out[lv, 1, c, pix] = s2 * scale * scale
                        if c == 0:  # lag 1: the blocking curve's coarse levels
                            nb = cnt // blk  # coarse levels from the complete base blocks
                            for k in range(nb):
                                level_means[k] = base[k]
                            for lv in range(n_fine, n_levels):
                                if lv > n_fine:
                                    nb = cnt // 2**lv
                                    next_level(level_means, level_spare, lv - n_fine, nb)
                                even = (lv - n_fine) % 2 == 0
                                curve_out[lv, 0, pix], curve_out[lv, 1, pix] = sum_and_squares(
                                    (level_means if even else level_spare)[:nb], 0.0
                                )


@functools.lru_cache(maxsize=4)
def _scaled_frame_index(n_frames: int) -> np.ndarray:
    """s = 2 t / (T - 1) - 1 for t = 0..T-1: the frame index scaled to [-1, 1], float32 (read-only;
    cached, as every band of a stack has the same T)."""
    s = (2.0 * np.arange(n_frames) / max(n_frames - 1, 1) - 1.0).astype(np.float32)
    s.flags.writeable = False
    return s


def _power_series_fit(fit_matrix: np.ndarray, vander: np.ndarray) -> np.ndarray:
    """The map from block means to the trend's power-series coefficients in s, padded to ``_TREND_COEFS``.

    ``vander``'s columns must be polynomials of degree <= order in the scaled frame index s
    (``bleach_design``'s Legendre columns are); their power-series coefficients are solved
    by least squares from 4 (order + 1) Chebyshev-spaced rows and checked on 64 others.
    """
    n_frames, n_coef = vander.shape
    if n_coef > _TREND_COEFS:
        raise ValueError(f"bleach trend of degree {n_coef - 1}: the CPU kernel supports degree <= {_TREND_COEFS - 1}")
    scaled = _scaled_frame_index(n_frames)
    nodes = np.unique(
        np.round((np.cos(np.pi * (np.arange(4 * n_coef) + 0.5) / (4 * n_coef)) + 1) * (n_frames - 1) / 2).astype(int)
    )
    to_power = np.linalg.lstsq(
        np.vander(scaled[nodes].astype(np.float64), n_coef, increasing=True), vander[nodes], rcond=None
    )[0]
    check = np.linspace(0, n_frames - 1, 64).astype(int)
    if not np.allclose(
        np.vander(scaled[check].astype(np.float64), n_coef, increasing=True) @ to_power,
        vander[check],
        rtol=1e-4,
        atol=1e-4,
    ):
        raise ValueError("the bleach trend's basis is not a polynomial in the scaled frame index")
    out = np.zeros((_TREND_COEFS, fit_matrix.shape[1]), np.float32)
    out[:n_coef] = to_power @ fit_matrix
    return out


def load_kernel(dtype, p: int = 16, q: int = 8) -> None:
    """Load the kernel for frames of ``dtype`` now (from numba's on-disk cache, a few tenths of a
    second; compiled on its first use after installing), by running it on one zero trace of the
    fewest frames the lag grid allows.

    ``fluojax.fcs.pipeline.correlate_stack`` calls this while its reader thread reads the first
    band, so the load and the read overlap.

    Arguments:
        dtype: the frames' dtype (uint16 and float32 have a kernel each; others are read as float32).
        p, q: int, correlator layout.
    """
    frames = np.zeros((lags.min_frames(lags.lag_grid(p, q)), 1), dtype)
    lag_sums_cpu(frames, p, q)


def lag_sums_cpu(frames: np.ndarray, p: int = 16, q: int = 8, trend: tuple | None = None) -> lags.LagSums:
    """``correlator.lag_sums`` of a (T, pixels) host array, computed by the numba CPU kernel.

    Arguments:
        frames: (T, pixels) array of intensities (uint16, float32, ...; read as float32).
        p, q: int, correlator layout.
        trend: optional bleach correction applied to each trace first, as
            ``(stride, fit_matrix, vander)``: the trend is ``vander @ (fit_matrix @ m)`` with
            ``m`` the means of consecutive ``stride``-frame blocks (``fit_matrix``:
            (order + 1, blocks), ``vander``: (T, order + 1), columns polynomials of degree
            <= 8 in the scaled frame index 2 t / (T - 1) - 1); see
            ``fluojax.fcs.pipeline.bleach_design``. The kernel evaluates the trend as a power
            series in registers instead of reading ``vander``.

    Returns:
        ``LagSums`` of NumPy arrays, equal to ``correlator.lag_sums`` of the (corrected)
        frames up to float32 rounding.
    """
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 2:
        raise ValueError(f"expected (T, pixels) frames, got shape {frames.shape}")
    if not available():  # pragma: no cover
        raise RuntimeError("the CPU correlator kernel needs numba (pip install numba)")
    if frames.dtype not in (np.uint16, np.float32):  # one compiled kernel per dtype: camera counts or floats
        frames = frames.astype(np.float32)
    grid = lags.lag_grid(p, q)
    n_frames, n_pix = frames.shape
    lags.check_frame_count(grid, n_frames)
    layouts = lags.group_layouts(grid, n_frames)
    plan = lags.blocking_plan(grid, n_frames)

    delays = np.concatenate([lay.delays for lay in layouts]).astype(np.int64)
    counts = np.concatenate([lay.counts for lay in layouts]).astype(np.int64)
    group_size = np.array([len(lay.delays) for lay in layouts], np.int64)
    group_start = np.concatenate([[0], np.cumsum(group_size)[:-1]]).astype(np.int64)
    blocks = np.array([lay.block for lay in layouts], np.int64)
    n_blocks = np.array([lay.n_blocks for lay in layouts], np.int64)

    if trend is None:
        stride, power_fit = 1, np.zeros((_TREND_COEFS, 1), np.float32)
    else:
        stride, fit_matrix, vander = trend
        power_fit = _power_series_fit(np.asarray(fit_matrix, np.float64), np.asarray(vander, np.float64))
    scaled_index = _scaled_frame_index(n_frames)

    n_ch = len(delays)
    mean = np.empty(n_pix, np.float64)
    m1 = np.empty((n_ch, n_pix), np.float32)
    m2 = np.empty_like(m1)
    total_sums = np.empty((n_ch, n_pix), np.float64)
    moments = np.empty((len(plan.min_blocks), 2, n_ch, n_pix), np.float64)
    curve = np.empty((plan.levels, 2, n_pix), np.float64)
    _lag_sums_kernel(
        frames,
        trend is not None,
        int(stride),
        power_fit,
        scaled_index,
        delays,
        counts,
        group_start,
        group_size,
        blocks,
        n_blocks,
        plan.fine,
        np.asarray(plan.min_blocks, np.int64),
        mean,
        m1,
        m2,
        total_sums,
        moments,
        curve,
    )
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    # NumPy arrays where the XLA path has jax arrays: acf_from_lag_sums takes either
    return lags.LagSums(f32(mean), m1, m2, f32(total_sums), f32(moments), f32(curve))  # type: ignore[arg-type]
