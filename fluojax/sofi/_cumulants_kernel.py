"""The numba kernel of :mod:`fluojax.sofi.cumulants_cpu` (imported on first use: importing numba
takes a few tenths of a second, which commands that compute no cumulants do not pay)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["term_sums_kernel"]


@njit(parallel=True, fastmath={"nnan", "ninf", "nsz", "contract"}, cache=True)
def term_sums_kernel(frames, lags, offsets, counts, t_eff, width, strip_rows, halo, out, mean):  # pragma: no cover
    """out[k, p] = sum_{t < t_eff} prod_f d_f / t_eff for pixel p = y W + x of the flattened
    frames (T, H W): factor f of term k is d(p + offsets[k, f, 0], t + lags[offsets[k, f, 1]]),
    d a pixel's value less its mean over those t_eff frames. Per strip of rows the factors
    are read from a centred copy of the strip and its ``halo`` rows below (0 past the image),
    so every term is one loop over the strip's pixels at constant offsets; values of pixels
    whose factors wrap past a row's end are meaningless and cropped by the caller. mean[p]: the
    pixel's mean over the frames of the first lag, summed eight frames at a time as a float32
    tree and then in float64: a constant pixel's mean is exact (v + v, 2v + 2v, 4v + 4v are;
    so are camera counts, 8 x 65535 < 2^24), so it centres to exactly 0. Hence no
    reassociation among the fast-math flags (it could sum the tree as ((v + v) + v) + ...)."""
    n_pixels = frames.shape[1]
    height = n_pixels // width
    n_terms = offsets.shape[0]
    n_lags = lags.shape[0]
    n_strips = (height + strip_rows - 1) // strip_rows
    scale = np.float32(1.0 / t_eff)
    size = (strip_rows + halo) * width
    for s in prange(n_strips):
        p0 = s * strip_rows * width
        span = min((strip_rows + halo) * width, n_pixels - p0)  # pixels of the strip and its halo
        length = np.uint64(min(strip_rows * width, n_pixels - p0))  # the strip's own pixels
        means = np.zeros((n_lags, size), np.float32)
        total = np.zeros(span, np.float64)
        for slot in range(n_lags):
            total[:] = 0.0
            t = lags[slot]
            end = lags[slot] + t_eff
            while t + 8 <= end:  # 8 frames summed as a float32 tree, then added in float64
                f0, f1 = frames[t, p0 : p0 + span], frames[t + 1, p0 : p0 + span]
                f2, f3 = frames[t + 2, p0 : p0 + span], frames[t + 3, p0 : p0 + span]
                f4, f5 = frames[t + 4, p0 : p0 + span], frames[t + 5, p0 : p0 + span]
                f6, f7 = frames[t + 6, p0 : p0 + span], frames[t + 7, p0 : p0 + span]
                for i in range(span):
                    low = (np.float32(f0[i]) + np.float32(f1[i])) + (np.float32(f2[i]) + np.float32(f3[i]))
                    high = (np.float32(f4[i]) + np.float32(f5[i])) + (np.float32(f6[i]) + np.float32(f7[i]))
                    total[i] += low + high
                t += 8
            while t < end:
                src = frames[t, p0 : p0 + span]
                for i in range(span):
                    total[i] += src[i]
                t += 1
            dst = means[slot]
            for i in range(span):
                dst[i] = np.float32(total[i] / t_eff)
            if slot == 0:
                own = mean[p0 : p0 + length]
                for j in range(length):
                    own[j] = total[j] / t_eff
        buf = np.zeros(n_lags * size + width, np.float32)  # + a row of zeros read by wrapped pixels
        acc = np.zeros((n_terms, strip_rows * width), np.float32)
        for t in range(t_eff):
            for slot in range(n_lags):
                src = frames[t + lags[slot], p0 : p0 + span]
                m = means[slot]
                dst = buf[slot * size : slot * size + span]
                for i in range(span):
                    dst[i] = np.float32(src[i]) - m[i]
            for k in range(n_terms):
                row = acc[k]
                c = counts[k]
                o0 = np.uint64(offsets[k, 0, 1] * size + offsets[k, 0, 0])
                o1 = np.uint64(offsets[k, 1, 1] * size + offsets[k, 1, 0])
                if c == 2:
                    for j in range(length):
                        row[j] += buf[o0 + j] * buf[o1 + j]
                elif c == 3:
                    o2 = np.uint64(offsets[k, 2, 1] * size + offsets[k, 2, 0])
                    for j in range(length):
                        row[j] += buf[o0 + j] * buf[o1 + j] * buf[o2 + j]
                elif c == 4:
                    o2 = np.uint64(offsets[k, 2, 1] * size + offsets[k, 2, 0])
                    o3 = np.uint64(offsets[k, 3, 1] * size + offsets[k, 3, 0])
                    for j in range(length):
                        row[j] += buf[o0 + j] * buf[o1 + j] * buf[o2 + j] * buf[o3 + j]
                else:
                    for j in range(length):
                        v = buf[o0 + j] * buf[o1 + j]
                        for f in range(2, c):
                            v *= buf[np.uint64(offsets[k, f, 1] * size + offsets[k, f, 0]) + j]
                        row[j] += v
        for k in range(n_terms):
            dst = out[k, p0 : p0 + length]
            src = acc[k]
            for j in range(length):
                dst[j] = src[j] * scale
