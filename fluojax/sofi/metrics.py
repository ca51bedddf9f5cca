"""SOFI image-quality metrics: decorrelation resolution, Pearson, SQUIRREL, Li-threshold TPR/TNR.

:func:`decorrelation_resolution` estimates an image's resolution from the image alone
(Descloux et al. 2019), following the ImageJ plugin as nanopyx ports it (edge apodization,
power-of-two padding, ring-binned decorrelation curves, Gaussian high-pass series with a
refinement pass); :func:`pearson` is the 2D Pearson coefficient (Komen 2024, eq. B.8);
:func:`squirrel` is the SQUIRREL error map, resolution-scaled error (RSE) and resolution-scaled
Pearson (RSP) of a super-resolved image against a diffraction-limited reference (Culley et al.
2018), with the geometry of any sampling grid (:class:`SRGrid`: integer magnification or the
sofipackage n(N-4)+1 grid, e.g. 128 -> 249); :func:`li_threshold` is the iterative minimum
cross-entropy threshold (Li & Lee 1993, Li & Tam 1998) and :func:`binary_rates` the TPR/TNR and
confusion counts of two Li-binarised images (Komen 2024, eq. B.1); :func:`image_metrics` collects
them for one reconstruction. The array work is JAX (one FFT and two batched ring sums per
decorrelation analysis, the SQUIRREL sigma search over a grid, the Li iteration as a
``lax.while_loop``); the decorrelation peak search is a short serial NumPy loop over the 2 Ng + 1
curves, and the SQUIRREL sampling matrices are built in NumPy. Images are ``(y, x)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fluojax.io import InputError, require

if TYPE_CHECKING:  # annotations only (see fluojax/io.py)
    from jaxtyping import Array, Float

__all__ = [
    "APODIZATION_PX",
    "MIN_PEAK_AMPLITUDE",
    "SQUIRREL_AT",
    "BinaryRates",
    "Decorrelation",
    "ImageMetrics",
    "SRGrid",
    "Squirrel",
    "apodize_edges",
    "binary_rates",
    "decorrelation_resolution",
    "image_metrics",
    "li_threshold",
    "pearson",
    "squirrel",
]

APODIZATION_PX = 20
"""Width of the cosine edge taper of the decorrelation analysis (ImageJ plugin, nanopyx)."""
MIN_PEAK_AMPLITUDE = 0.05
"""Decorrelation peaks below this amplitude are discarded (Descloux et al. 2019, ImDecorr)."""
_PEAK_DROP = 0.001
"""A decorrelation maximum must exceed the minimum after it by more than this (ImageJ plugin)."""
_G_MIN = 0.14
"""Smallest high-pass Gaussian sigma, pixels (ImageJ plugin, nanopyx; ImDecorr: 0.15)."""


# ----------------------------------------------------------------------------------------------
# Pearson
# ----------------------------------------------------------------------------------------------


def pearson(a: Float[Array, "y x"], b: Float[Array, "y x"]) -> Float[Array, ""]:
    """Pearson correlation coefficient of two images (Komen 2024, eq. B.8).

    r = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 sum (b - mean b)^2), over all
    pixels; NaN where either image is constant. jit/vmap-able.

    Arguments:
        a, b: images of the same shape (any shape, flattened).
    """
    a = jnp.asarray(a, jnp.result_type(float))
    b = jnp.asarray(b, a.dtype)
    require(a.shape == b.shape, f"images of shapes {a.shape} and {b.shape}: Pearson needs equal shapes")
    return _pearson(a, b)


@jax.jit
def _pearson(a: Float[Array, "*s"], b: Float[Array, "*s"]) -> Float[Array, ""]:
    da = a - jnp.mean(a)
    db = b - jnp.mean(b)
    return jnp.sum(da * db) / jnp.sqrt(jnp.sum(da * da) * jnp.sum(db * db))


# ----------------------------------------------------------------------------------------------
# Decorrelation analysis
# ----------------------------------------------------------------------------------------------


class Decorrelation(NamedTuple):
    """The result of :func:`decorrelation_resolution`.

    Fields:
        resolution_nm: 2 pixel_nm / kc (Komen 2024, eq. B.10); NaN when no peak was found.
        kc: the cut-off, normalised frequency (1 = Nyquist) of the highest accepted peak.
        amplitude: that peak's decorrelation amplitude (an SNR proxy).
        kc0, amplitude0: the peak of the unfiltered curve d0.
        radii: (n_r,) the normalised radii of d0 and of the first-pass curves (0..1).
        d0: (n_r,) the unfiltered decorrelation curve.
        curves: (2 n_g, n_r) the high-pass curves: first pass, then refinement pass.
        refined_radii: (n_r,) the radii of the refinement-pass curves.
        sigmas: (2 n_g,) the high-pass Gaussian sigmas, pixels, of ``curves``.
        peaks_kc, peaks_amplitude: (2 n_g + 1,) the peak of each curve (d0 last); 0 = none.
    """

    resolution_nm: float
    kc: float
    amplitude: float
    kc0: float
    amplitude0: float
    radii: np.ndarray
    d0: np.ndarray
    curves: np.ndarray
    refined_radii: np.ndarray
    sigmas: np.ndarray
    peaks_kc: np.ndarray
    peaks_amplitude: np.ndarray


@functools.partial(jax.jit, static_argnames="width")
def apodize_edges(image: Float[Array, "y x"], width: int = APODIZATION_PX) -> Float[Array, "y x"]:
    """Cosine edge taper of the decorrelation analysis (ImageJ plugin, as nanopyx applies it).

    With m the mean of the pixels outside the centred circle of radius W/2 - width and d the
    distance (pixels) of a pixel to the nearest image edge (d = W/2 - |x - W/2| on x, likewise
    on y, coordinates from the first pixel), pixels with d <= width become
    m + c (I - m), c = (1 - cos(pi d / width)) / 2; the image fades smoothly into m at its border.

    Arguments:
        image: (y, x) image.
        width: taper width, pixels.
    """
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape
    y = jnp.arange(h, dtype=jnp.float32)[:, None]
    x = jnp.arange(w, dtype=jnp.float32)[None, :]
    outside = (y - h / 2) ** 2 + (x - w / 2) ** 2 > (w / 2 - width) ** 2
    m = jnp.sum(jnp.where(outside, image, 0.0)) / jnp.maximum(jnp.sum(outside), 1)
    dx = jnp.abs(jnp.abs(x - w / 2) - w / 2)
    dy = jnp.abs(jnp.abs(y - h / 2) - h / 2)
    d = jnp.minimum(dx, dy)
    c = (jnp.cos(d * jnp.pi / width - jnp.pi) + 1) / 2
    return jnp.where(d <= width, c * (image - m) + m, image)


def _f32(x: float) -> Float[Array, ""]:
    """A float32 scalar (not weakly typed: one compilation of the functions it enters)."""
    return jnp.asarray(x, jnp.float32)


def _sampled_gaussian_response(sigma: float, n: int) -> np.ndarray:
    """Frequency response on an n-point FFT grid (fftshifted) of the sampled Gaussian kernel
    truncated at 4 sigma and normalised to sum 1, the kernel of scipy.ndimage.gaussian_filter,
    in double precision (for sigma < ~0.2 pixels the high-pass gain is ~1e-7 or less)."""
    r = int(4.0 * sigma + 0.5)
    x = np.arange(1, r + 1, dtype=np.float64)
    wk = np.exp(-0.5 * (x / sigma) ** 2)
    f = np.fft.fftshift(np.fft.fftfreq(n))
    resp = 1.0 + 2.0 * np.sum(wk[None, :] * np.cos(2 * np.pi * f[:, None] * x[None, :]), axis=1)
    return resp / (1.0 + 2.0 * np.sum(wk))


@functools.partial(jax.jit, static_argnames="n_r")
def _ring_sums(
    magnitude: Float[Array, "p p"], gains: Float[Array, "c p p"], crmin: float, crmax: float, n_r: int
) -> Float[Array, "c r"]:
    """Decorrelation curves of the images |F| gains[c] (a batch of radial filters) on n_r radii
    from crmin to crmax: d(r_k) = sqrt(2) S_k / (||I|| sqrt(C_k)), S_k and C_k the sums of |I|
    and of the phase-only spectrum's |I_n|^2 = 1 over the half plane, pixels binned to the
    nearest radius (those below crmin into the first), ||I|| over the disk R < 1."""
    p = magnitude.shape[0]
    idx = jnp.arange(p)
    yy = idx[:, None].astype(jnp.float32)
    xx = idx[None, :].astype(jnp.float32)
    r2 = (xx - p / 2) ** 2 + (yy - p / 2) ** 2
    dist = jnp.sqrt(4 * r2 / p**2)
    disk = r2 < p * p / 4
    # the half plane the plugin visits (column-major scan up to the centre pixel), in the box
    # [int(p (1 - crmax) / 2), + int(p crmax)) on both axes, within radius crmax
    half = (xx < p / 2) | ((xx == p // 2) & (yy <= p / 2))
    lo = jnp.floor(p * (1 - crmax) / 2)
    hi = lo + jnp.floor(p * crmax)
    box = (xx >= lo) & (xx < hi) & (yy >= lo) & (yy < hi)
    keep = half & box & (dist <= crmax)
    b = jnp.round((dist - crmin) / (crmax - crmin) * (n_r - 1))
    b = jnp.clip(b, 0, n_r - 1).astype(jnp.int32)
    b = jnp.where(keep, b, n_r)  # an overflow bin, dropped

    def one(gain):
        mag = magnitude * jnp.abs(gain)
        cr = jnp.sqrt(jnp.sum(jnp.where(disk, mag * mag, 0.0)))
        nz = (mag > 0).astype(jnp.float32)
        s = jnp.zeros(n_r + 1, jnp.float32).at[b.ravel()].add(mag.ravel())[:n_r]
        c = jnp.zeros(n_r + 1, jnp.float32).at[b.ravel()].add(nz.ravel())[:n_r]
        s, c = jnp.cumsum(s), jnp.cumsum(c)
        d = jnp.where((cr > 0) & (c > 0), jnp.sqrt(2.0) * s / (cr * jnp.sqrt(c)), jnp.nan)
        return d.at[0].set(jnp.where(jnp.isnan(d[0]), 0.0, d[0]))

    return jax.vmap(one)(gains)


@jax.jit
def _padded_spectrum(image: Float[Array, "y x"]) -> Float[Array, "p p"]:
    """|FFT| (fftshifted) of the apodized image centred in a power-of-two square filled with its
    first pixel (the apodized border value)."""
    apod = apodize_edges(image)
    h, w = image.shape
    p = 1 << math.ceil(math.log2(max(h, w)))
    oy, ox = (p - h) // 2, (p - w) // 2
    padded = jnp.full((p, p), apod[0, 0]).at[oy : oy + h, ox : ox + w].set(apod)
    return jnp.abs(jnp.fft.fftshift(jnp.fft.fft2(padded))).astype(jnp.float32)


def _local_max(d: np.ndarray, r1: float, r2: float) -> tuple[float, float]:
    """The ImageJ plugin's peak rule on one curve: the global maximum if it is not the last
    point; otherwise drop the last point and take the maximum of the rest if it exceeds the
    minimum after it by more than 0.001 (else flatten it and go on). Returns (radius, amplitude),
    (0, 0) if no peak; the radius maps index k to r1 + (r2 - r1) k / (n - 1)."""
    n = d.shape[0]
    t = np.nan_to_num(np.asarray(d, np.float64), nan=-np.inf)
    k = int(np.argmax(t))
    length = n
    amp = float(t[k])
    while k == length - 1:
        t[length - 1] = 0.0
        length -= 1
        if length == 0:
            return 0.0, 0.0
        k = int(np.argmax(t))
        amp = float(t[k])
        low = float(np.min(t[k : max(length - 1, k + 1)]))
        if amp - low > _PEAK_DROP:
            break
        t[k] = low
        k = length - 1
    return r1 + (r2 - r1) * k / (n - 1), amp


def decorrelation_resolution(
    image: Float[Array, "y x"],
    pixel_nm: float = 1.0,
    n_r: int = 50,
    n_g: int = 10,
    min_amplitude: float = MIN_PEAK_AMPLITUDE,
    refined_only: bool = False,
) -> Decorrelation:
    """Image resolution by decorrelation analysis (Descloux et al. 2019; Komen 2024, eqs. B.9-B.11).

    Steps (the ImageJ plugin, as nanopyx 2.x ports it): apodize the edges
    (:func:`apodize_edges`), pad centred to a power-of-two square with the first pixel's value,
    F = FFT (DC set to 0 for d0); the decorrelation curve of an image with spectrum I is
    d(r) = sum_{R<=r} Re(I conj(I_n)) / (||I|| ||I_n 1[R<=r]||), I_n = I/|I|, R the normalised
    frequency (1 = Nyquist), on ``n_r`` radii. The peak of d0 gives k0; then ``n_g`` Gaussian
    high-pass images I - I * G_sigma with sigma = geomspace(0.14, 2/k0, n_g) pixels (sampled,
    4-sigma-truncated kernels as scipy.ndimage.gaussian_filter, applied in Fourier space) give
    one curve and one peak each; a refinement pass of ``n_g`` more sigmas between those of the
    best peaks (by max kc and by max kc A) re-samples radii from (their kc - 0.05) to (+0.3). The
    cut-off kc is the largest peak radius among d0 and all high-pass curves with amplitude
    >= ``min_amplitude`` (ImDecorr 1.1.8); resolution = 2 pixel_nm / kc.

    Differences from nanopyx 2.1 (``DecorrAnalysis``): it takes kc from the refinement pass
    only and applies no amplitude threshold (``refined_only=True, min_amplitude=0`` reproduces
    that); it puts the image at the top of the padded square (here centred; only the border
    handling of its filter sees this); it high-passes in single precision in real space, so for
    sigma below ~0.2 pixels the high-pass image of a nearly noise-free image is rounding noise,
    which can add a spurious peak (here the same sampled kernel is applied exactly, in Fourier
    space, periodic border). Resolutions agree to float rounding on noisy images and within
    ~10% on nearly noise-free ones (tests/test_sofi_metrics.py).

    The 20-pixel edge taper leaves little of images under ~64 pixels a side; an image without
    a peak (pure noise, constant) gives kc 0 and a NaN resolution.

    Arguments:
        image: (y, x) image, any size (>= 8 pixels a side).
        pixel_nm: pixel size, nm (resolution_nm is in the same unit; 1 gives pixels).
        n_r: radii per curve (ImageJ: 10-100; 50 by default).
        n_g: high-pass filters per pass (ImageJ: 5-40; 10 by default).
        min_amplitude: peaks with a lower amplitude are ignored.
        refined_only: take kc from the refinement pass only (nanopyx).
    """
    img = np.asarray(image, np.float32)
    require(img.ndim == 2, f"image of shape {img.shape}: decorrelation analysis needs a (y, x) image")
    require(min(img.shape) >= 8, f"image of {img.shape[0]}x{img.shape[1]} pixels: decorrelation needs >= 8 a side")
    require(bool(np.all(np.isfinite(img))), "image has NaN or infinite pixels: decorrelation needs finite values")
    require(n_r >= 10 and n_g >= 2, f"n_r {n_r}, n_g {n_g}: decorrelation needs n_r >= 10 and n_g >= 2")
    require(pixel_nm > 0, f"pixel size {pixel_nm} nm: must be > 0")
    magnitude = _padded_spectrum(jnp.asarray(img))
    p = magnitude.shape[0]
    # one batch size (n_g) for every call, so that _ring_sums compiles once per image size
    dc = jnp.ones((n_g, p, p), jnp.float32).at[:, p // 2, p // 2].set(0.0)
    d0 = np.asarray(_ring_sums(magnitude, dc, _f32(0.0), _f32(1.0), n_r)[0])
    kc0, a0 = _local_max(d0, 0.0, 1.0)

    def highpass(sigmas: np.ndarray) -> jnp.ndarray:
        resp = [_sampled_gaussian_response(float(s), p) for s in sigmas]
        return jnp.asarray(np.stack([1.0 - np.outer(g, g) for g in resp]), jnp.float32)

    g_max = p / 2 if kc0 == 0 else 2.0 / kc0
    g_min = _G_MIN
    sig1 = np.exp(np.linspace(math.log(g_min), math.log(g_max), n_g))
    c1 = np.asarray(_ring_sums(magnitude, highpass(sig1), _f32(0.0), _f32(1.0), n_r))
    peaks1 = [_local_max(c, 0.0, 1.0) for c in c1]
    kc1 = np.array([k for k, _ in peaks1] + [kc0])
    a1 = np.array([a for _, a in peaks1] + [a0])
    i_gm = int(np.argmax(kc1 * a1))
    i_max = int(np.argmax(kc1))
    crmin = max(min(kc1[i_gm], kc1[i_max]) - 0.05, 0.0)
    crmax = min(max(kc1[i_gm], kc1[i_max]) + 0.3, 1.0)
    ind1, ind2 = min(i_gm, i_max) - 1, max(i_gm, i_max)
    if ind2 < n_g:
        lg, lG = math.log(g_min), math.log(g_max)
        g_min, g_max = math.exp(lg + (lG - lg) * ind1 / (n_g - 1)), math.exp(lg + (lG - lg) * ind2 / (n_g - 1))
    else:
        g_min, g_max = 2.0 / p, g_min
    sig2 = np.exp(np.linspace(math.log(g_min), math.log(g_max), n_g))
    c2 = np.asarray(_ring_sums(magnitude, highpass(sig2), _f32(crmin), _f32(crmax), n_r))
    peaks2 = [_local_max(c, crmin, crmax) for c in c2]
    kc2 = np.array([k for k, _ in peaks2])
    a2 = np.array([a for _, a in peaks2])
    peaks_kc = np.concatenate([kc1[:n_g], kc2, kc1[n_g:]])
    peaks_a = np.concatenate([a1[:n_g], a2, a1[n_g:]])
    cand_kc, cand_a = (kc2, a2) if refined_only else (peaks_kc, peaks_a)
    ok = cand_a >= min_amplitude
    if np.any(ok & (cand_kc > 0)):
        j = int(np.argmax(np.where(ok, cand_kc, -1.0)))
        kc, amp = float(cand_kc[j]), float(cand_a[j])
        resolution = 2.0 * pixel_nm / kc
    else:
        kc, amp, resolution = 0.0, 0.0, math.nan
    return Decorrelation(
        resolution_nm=resolution,
        kc=kc,
        amplitude=amp,
        kc0=kc0,
        amplitude0=a0,
        radii=np.linspace(0.0, 1.0, n_r),
        d0=d0,
        curves=np.concatenate([c1, c2]),
        refined_radii=np.linspace(crmin, crmax, n_r),
        sigmas=np.concatenate([sig1, sig2]),
        peaks_kc=peaks_kc,
        peaks_amplitude=peaks_a,
    )


# ----------------------------------------------------------------------------------------------
# SQUIRREL
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SRGrid:
    """Where a super-resolved image's pixels lie on its reference (camera) grid.

    SR pixel (i, j) is centred at camera position (origin + i/scale, origin + j/scale), in
    camera pixels from the centre of the reference's first pixel (rows, columns).

    Fields:
        scale: SR pixels per camera pixel (the magnification; the SOFI order on its grids).
        origin: camera position of SR pixel 0, camera pixels.
    """

    scale: float
    origin: float = 0.0

    @classmethod
    def sofipackage(cls, order: int) -> SRGrid:
        """The sofipackage cross-cumulant grid: n(N-4)+1 pixels, pixel i at 1 + i/n."""
        return cls(float(order), 1.0)

    @classmethod
    def full(cls, order: int) -> SRGrid:
        """The classic virtual-pixel grid (Dertinger et al. 2010): n(N-1)+1 pixels, i at i/n."""
        return cls(float(order), 0.0)

    @classmethod
    def magnified(cls, magnification: int) -> SRGrid:
        """Each camera pixel split into m x m SR pixels (NanoJ, eSRRF): i at (i + 1/2)/m - 1/2."""
        return cls(float(magnification), -(magnification - 1) / (2 * magnification))

    @classmethod
    def infer(cls, reference_shape: tuple[int, ...], sr_shape: tuple[int, ...]) -> SRGrid:
        """The grid implied by two image shapes: m N (magnified), n(N-4)+1 (sofipackage) or
        n(N-1)+1 (full), the same factor on both axes; raises InputError otherwise."""
        (h, w), (sh, sw) = reference_shape[-2:], sr_shape[-2:]
        if sh % h == 0 and sw % w == 0 and sh // h == sw // w:
            return cls.magnified(sh // h)
        for shrink, make in ((4, cls.sofipackage), (1, cls.full)):
            if h > shrink and w > shrink:
                ny, ry = divmod(sh - 1, h - shrink)
                nx, rx = divmod(sw - 1, w - shrink)
                if ry == 0 and rx == 0 and ny == nx and ny >= 2:
                    return make(ny)
        raise InputError(
            f"SR image {sh}x{sw} on a {h}x{w} reference: neither m N, n(N-4)+1 nor n(N-1)+1 pixels; give the grid"
        )


class Squirrel(NamedTuple):
    """The result of :func:`squirrel`.

    Fields:
        error_map: |reference - model| per pixel, on the grid the comparison used (the cropped
            reference grid, or the SR grid with ``at="sr"``).
        rse: resolution-scaled error, the RMS of reference - model over that grid (reference
            intensity units).
        rsp: resolution-scaled Pearson, Pearson(model, reference) over that grid.
        alpha, beta: intensity scale and offset, model = alpha (SR * G_sigma) + beta.
        sigma: the resolution-scaling function's Gaussian sigma, reference (camera) pixels.
        reference: the reference the model was compared with (cropped to the region the SR image
            covers, or interpolated onto the SR grid).
        model: alpha (SR * G_sigma) + beta on the same grid.
    """

    error_map: Float[Array, "y x"]
    rse: Float[Array, ""]
    rsp: Float[Array, ""]
    alpha: Float[Array, ""]
    beta: Float[Array, ""]
    sigma: Float[Array, ""]
    reference: Float[Array, "y x"]
    model: Float[Array, "y x"]


def _linear_sampler(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) matrix of linear interpolation of n samples (at 0..n-1) at coords."""
    lo = np.clip(np.floor(coords).astype(int), 0, n - 1)
    hi = np.clip(lo + 1, 0, n - 1)
    t = coords - lo
    m = np.zeros((coords.size, n))
    np.add.at(m, (np.arange(coords.size), lo), 1.0 - t)
    np.add.at(m, (np.arange(coords.size), hi), t)
    return m


def _fourier_sampler(coords: np.ndarray, n: int) -> np.ndarray:
    """(len(coords), n) complex matrix E with Re(E_y F E_x^T), F = fft2(image), the trigonometric
    (band-limited, periodic) interpolation of n samples at coords; the Nyquist term of even n
    enters as a cosine so that the interpolant is real and passes through the samples."""
    k = np.fft.fftfreq(n) * n
    e = np.exp(2j * np.pi * coords[:, None] * k[None, :] / n) / n
    if n % 2 == 0:
        e[:, n // 2] = np.cos(np.pi * coords) / n
    return e


def _reflect_index(n: int, radius: int) -> np.ndarray:
    """(n, 2 radius + 1) source index of pixel i + k - radius under scipy's "reflect" border
    (d c b a | a b c d | d c b a)."""
    j = np.mod(np.arange(n)[:, None] + np.arange(-radius, radius + 1)[None, :], 2 * n)
    return np.where(j >= n, 2 * n - 1 - j, j)


def _blur_matrix(sigma: Float[Array, ""], index: np.ndarray) -> Float[Array, "n n"]:
    """(n, n) matrix of scipy.ndimage.gaussian_filter along one axis: sampled Gaussian of sigma
    pixels truncated at int(4 sigma + 0.5), normalised, reflecting border; identity at sigma 0."""
    n, taps = index.shape
    radius = (taps - 1) // 2
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    safe = jnp.maximum(sigma, 1e-6)
    w = jnp.where((jnp.abs(x) <= jnp.floor(4 * sigma + 0.5)), jnp.exp(-0.5 * (x / safe) ** 2), 0.0)
    w = w / jnp.sum(w)
    rows = np.repeat(np.arange(n), taps)
    return jnp.zeros((n, n), jnp.float32).at[rows, index.ravel()].add(jnp.tile(w, n))


@functools.partial(jax.jit, static_argnames=("n_sigma", "stages", "scale", "radius"))
def _fit_rsf(
    target: Float[Array, "a b"],
    sr: Float[Array, "y x"],
    sample_y: Float[Array, "a y"],
    sample_x: Float[Array, "b x"],
    sigma_max: float,
    n_sigma: int,
    stages: int,
    scale: float,
    radius: int,
):
    """sigma (reference pixels) minimising the RMS of target - (alpha S_y (sr * G) S_x^T + beta),
    alpha and beta by linear least squares for each sigma; a grid search of n_sigma values,
    refined ``stages - 1`` times around the best."""
    iy = _reflect_index(sr.shape[0], radius)
    ix = _reflect_index(sr.shape[1], radius)
    t = target - jnp.mean(target)

    def predict(sigma_ref):
        s = sigma_ref * scale
        return (sample_y @ _blur_matrix(s, iy)) @ sr @ (sample_x @ _blur_matrix(s, ix)).T

    def score(sigma_ref):
        dm = predict(sigma_ref)
        dm = dm - jnp.mean(dm)
        alpha = jnp.sum(dm * t) / jnp.sum(dm * dm)
        return jnp.mean((t - alpha * dm) ** 2)

    def stage(_, bounds):
        lo, hi, _best = bounds
        grid = jnp.linspace(lo, hi, n_sigma)
        best = grid[jnp.argmin(jax.lax.map(score, grid))]
        step = (hi - lo) / (n_sigma - 1)
        return jnp.maximum(best - step, 0.0), best + step, best

    zero = jnp.zeros((), jnp.float32)
    _, _, best = jax.lax.fori_loop(0, stages, stage, (zero, zero + sigma_max, zero))
    m = predict(best)
    dm = m - jnp.mean(m)
    alpha = jnp.sum(dm * t) / jnp.sum(dm * dm)
    beta = jnp.mean(target) - alpha * jnp.mean(m)
    model = alpha * m + beta
    resid = target - model
    return Squirrel(
        error_map=jnp.abs(resid),
        rse=jnp.sqrt(jnp.mean(resid**2)),
        rsp=_pearson(model, target),
        alpha=alpha,
        beta=beta,
        sigma=best,
        reference=target,
        model=model,
    )


SQUIRREL_AT = ("reference", "sr")
"""Where :func:`squirrel` compares: on the reference grid (NanoJ-SQUIRREL) or the SR grid (nanopyx)."""


def squirrel(
    reference: Float[Array, "y x"],
    sr: Float[Array, "Y X"],
    grid: SRGrid | None = None,
    at: str = "reference",
    sigma_max: float = 5.0,
    n_sigma: int = 17,
) -> Squirrel:
    """SQUIRREL error map, RSE and RSP of a super-resolved image (Culley et al. 2018).

    The reference (a diffraction-limited image: widefield mean or standard deviation) is modelled
    as alpha (SR * G_sigma) + beta, G_sigma the resolution-scaling function (a Gaussian; sigma
    in reference pixels, convolved on the SR grid with sigma*scale SR pixels as
    scipy.ndimage.gaussian_filter does: sampled kernel truncated at 4 sigma, reflecting border).
    sigma minimises the RMS residual with alpha, beta fitted by linear least squares for each
    sigma (as nanopyx; NanoJ optimises the three jointly), by a grid search of ``n_sigma``
    values in [0, sigma_max], refined three times around the best (final step sigma_max/8192;
    vmapped over the grid, jit-compiled once per pair of image shapes).

    ``at="reference"`` (NanoJ-SQUIRREL): the blurred SR image is sampled (linear interpolation)
    at the reference pixel centres it covers (on the :meth:`SRGrid.magnified` grid with m = 2
    that is exactly 2 x 2 binning; for larger m, the mean of the central 2 x 2 SR pixels of each
    block, the rest of the pixel integration being absorbed by sigma), and the reference is
    cropped to those pixels; on the
    sofipackage grid (128 -> 249 for order 2) the camera pixels 1..N-3 fall exactly on SR pixels
    0, n, 2n, ..., so no interpolation happens and the comparison is on (N-3) x (N-3) pixels.
    ``at="sr"`` (nanopyx): the reference is Fourier-interpolated onto the SR pixel positions
    and the comparison is on the SR grid. RSE = RMS(reference - model), RSP =
    Pearson(model, reference), error map = |reference - model| on that grid.

    Differences from nanopyx ``calculate_error_map`` (integer magnification m only): nanopyx
    places SR pixel i at reference position i/m (``grid=SRGrid(m, 0.0)`` reproduces that;
    :meth:`SRGrid.magnified` centres the m x m SR pixels in their camera pixel instead), finds
    sigma by Brent's method and reports it in SR pixels.

    Arguments:
        reference: (y, x) diffraction-limited reference image.
        sr: (Y, X) super-resolved image.
        grid: where SR pixels lie on the reference grid; by default from the shapes
            (:meth:`SRGrid.infer`).
        at: "reference" or "sr", the grid of the comparison.
        sigma_max: largest RSF sigma searched, reference pixels.
        n_sigma: sigma values per search stage.
    """
    ref = np.asarray(reference, np.float32)
    img = np.asarray(sr, np.float32)
    require(ref.ndim == 2 and img.ndim == 2, f"images of shapes {ref.shape} and {img.shape}: SQUIRREL needs (y, x)")
    require(at in SQUIRREL_AT, f"comparison grid {at!r}: one of {', '.join(SQUIRREL_AT)}")
    require(sigma_max > 0 and n_sigma >= 3, f"sigma_max {sigma_max}, n_sigma {n_sigma}: need > 0 and >= 3")
    require(
        bool(np.all(np.isfinite(ref))) and bool(np.all(np.isfinite(img))),
        "images have NaN or infinite pixels: SQUIRREL needs finite values",
    )
    g = grid if grid is not None else SRGrid.infer(ref.shape, img.shape)
    (h, w), (sh, sw) = ref.shape, img.shape
    if at == "reference":
        axes = []
        for n_ref, n_sr in ((h, sh), (w, sw)):
            c = np.arange(n_ref, dtype=np.float64)
            u = (c - g.origin) * g.scale
            ok = (u >= -1e-6) & (u <= n_sr - 1 + 1e-6)
            require(bool(ok.any()), f"the SR image covers no reference pixel centre on grid {g}")
            axes.append((np.flatnonzero(ok), np.clip(u[ok], 0, n_sr - 1)))
        (ry, uy), (rx, ux) = axes
        target = ref[ry[0] : ry[-1] + 1, rx[0] : rx[-1] + 1]
        sample_y, sample_x = _linear_sampler(uy, sh), _linear_sampler(ux, sw)
    else:
        ey = _fourier_sampler(g.origin + np.arange(sh) / g.scale, h)
        ex = _fourier_sampler(g.origin + np.arange(sw) / g.scale, w)
        target = np.real(ey @ np.fft.fft2(ref.astype(np.float64)) @ ex.T).astype(np.float32)
        sample_y, sample_x = np.eye(sh), np.eye(sw)
    return _fit_rsf(
        jnp.asarray(target),
        jnp.asarray(img),
        jnp.asarray(sample_y, jnp.float32),
        jnp.asarray(sample_x, jnp.float32),
        float(sigma_max),
        n_sigma=n_sigma,
        stages=4,
        scale=float(g.scale),
        radius=int(4 * sigma_max * g.scale + 0.5),
    )


# ----------------------------------------------------------------------------------------------
# Li threshold, TPR/TNR
# ----------------------------------------------------------------------------------------------


class BinaryRates(NamedTuple):
    """The result of :func:`binary_rates` (Komen 2024, eq. B.1).

    Fields:
        tpr: TP / (TP + FN), the fraction of the truth's foreground found.
        tnr: TN / (TN + FP), the fraction of the truth's background kept dark.
        tp, fp, tn, fn: the confusion counts, pixels.
        threshold_prediction, threshold_truth: the Li thresholds used (image units).
    """

    tpr: Float[Array, ""]
    tnr: Float[Array, ""]
    tp: Float[Array, ""]
    fp: Float[Array, ""]
    tn: Float[Array, ""]
    fn: Float[Array, ""]
    threshold_prediction: Float[Array, ""]
    threshold_truth: Float[Array, ""]


def li_threshold(image: Float[Array, "y x"], tolerance: float | None = None, max_iter: int = 1000) -> Float[Array, ""]:
    """Iterative minimum cross-entropy threshold (Li & Lee 1993, Li & Tam 1998; Komen 2024, eq. B.7).

    With the image shifted to a zero minimum, t <- (mu_b - mu_f) / (ln mu_b - ln mu_f), mu_b and
    mu_f the means of the pixels <= t and > t, from t = mean, until t changes by less than the
    tolerance (or mu_b = 0); the shift is added back. The foreground is ``image > threshold``.
    The continuous form of the thesis's rounded histogram iteration; it is scikit-image's
    ``threshold_li`` (same start, update, stop rule and tolerance).

    Arguments:
        image: image (any shape), finite values.
        tolerance: stop when the threshold moves less than this; default half the smallest
            difference between distinct pixel values (0.5 for integer images).
        max_iter: iteration cap.
    """
    raw = np.asarray(image)
    require(raw.size > 0 and bool(np.all(np.isfinite(raw))), "image is empty or has NaN/inf pixels: no Li threshold")
    x = raw.astype(np.float32).ravel()
    lowest = x.min()
    x = x - lowest
    if tolerance is not None:
        tol = float(tolerance)
    elif raw.dtype.kind in "iu":
        tol = 0.5
    else:
        steps = np.diff(np.unique(x))
        tol = float(steps.min()) / 2 if steps.size else math.inf
    return _li_iterate(jnp.asarray(x), _f32(tol), max_iter) + lowest


@functools.partial(jax.jit, static_argnames="max_iter")
def _li_iterate(x: Float[Array, " n"], tol: Float[Array, ""], max_iter: int) -> Float[Array, ""]:
    def cond(state):
        t_curr, t_next, done, i = state
        return (~done) & (jnp.abs(t_next - t_curr) > tol) & (i < max_iter)

    def body(state):
        _t_curr, t_next, _done, i = state
        fg = x > t_next
        mean_f = jnp.sum(jnp.where(fg, x, 0.0)) / jnp.sum(fg)
        mean_b = jnp.sum(jnp.where(fg, 0.0, x)) / jnp.sum(~fg)
        stop = mean_b == 0
        t_new = (mean_b - mean_f) / (jnp.log(mean_b) - jnp.log(mean_f))
        return t_next, jnp.where(stop, t_next, t_new), stop, i + 1

    constant = ~jnp.isfinite(tol)  # one distinct value: the threshold is that value
    start = jnp.mean(x)
    state = (jnp.where(constant, start, -2 * tol), start, constant, 0)
    return jax.lax.while_loop(cond, body, state)[1]


def binary_rates(prediction: Float[Array, "y x"], truth: Float[Array, "y x"]) -> BinaryRates:
    """TPR and TNR of a prediction against a truth, each binarised by its own Li threshold.

    Positive = pixel > :func:`li_threshold` of its image; TP, FP, TN, FN count prediction vs
    truth; TPR = TP/(TP+FN), TNR = TN/(TN+FP) (Komen 2024, eqs. B.1a-b; NaN if the truth has no
    foreground or no background).

    Arguments:
        prediction: (y, x) reconstructed image (SOFI or network).
        truth: (y, x) ground truth on the same grid.
    """
    p = jnp.asarray(prediction)
    t = jnp.asarray(truth)
    require(p.shape == t.shape, f"images of shapes {p.shape} and {t.shape}: TPR/TNR need equal shapes")
    tp_, tt_ = li_threshold(prediction), li_threshold(truth)
    bp = p > tp_
    bt = t > tt_
    tp = jnp.sum(bp & bt).astype(jnp.float32)
    fp = jnp.sum(bp & ~bt).astype(jnp.float32)
    tn = jnp.sum(~bp & ~bt).astype(jnp.float32)
    fn = jnp.sum(~bp & bt).astype(jnp.float32)
    return BinaryRates(tp / (tp + fn), tn / (tn + fp), tp, fp, tn, fn, tp_, tt_)


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------


class ImageMetrics(NamedTuple):
    """The metrics of one reconstruction (:func:`image_metrics`); NaN where not computed.

    Fields:
        resolution_nm: decorrelation resolution of the reconstruction, nm.
        pearson: Pearson(reconstruction, truth).
        rsp, rse: SQUIRREL against the reference (NaN without one).
        tpr, tnr: Li-binarised reconstruction vs Li-binarised truth.
    """

    resolution_nm: float
    pearson: float
    rsp: float
    rse: float
    tpr: float
    tnr: float


def image_metrics(
    sr: Float[Array, "y x"],
    truth: Float[Array, "y x"] | None = None,
    reference: Float[Array, "h w"] | None = None,
    pixel_nm: float = 1.0,
    grid: SRGrid | None = None,
    at: str = "reference",
) -> ImageMetrics:
    """Resolution, Pearson, RSP, RSE, TPR and TNR of one reconstruction (Komen 2024, appendix B).

    Arguments:
        sr: (y, x) reconstruction (SOFI image or network prediction).
        truth: (y, x) ground truth on the same grid (None: Pearson, TPR, TNR are NaN).
        reference: diffraction-limited reference for SQUIRREL (None: RSP, RSE are NaN).
        pixel_nm: pixel size of ``sr``, nm.
        grid: where ``sr``'s pixels lie on the reference's (default from the shapes).
        at: SQUIRREL comparison grid, "reference" or "sr".
    """
    nan = math.nan
    resolution = decorrelation_resolution(sr, pixel_nm).resolution_nm
    r = rates = None
    if truth is not None:
        r = float(pearson(sr, truth))
        rates = binary_rates(sr, truth)
    sq = squirrel(reference, sr, grid=grid, at=at) if reference is not None else None
    return ImageMetrics(
        resolution_nm=float(resolution),
        pearson=nan if r is None else r,
        rsp=nan if sq is None else float(sq.rsp),
        rse=nan if sq is None else float(sq.rse),
        tpr=nan if rates is None else float(rates.tpr),
        tnr=nan if rates is None else float(rates.tnr),
    )
