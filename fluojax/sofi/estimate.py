"""The exact SOFI estimator after the cumulants: flattening, Richardson-Lucy deconvolution,
linearization (n-th root and adaptive), and balanced SOFI with its molecular-parameter maps.

An order-n cross-cumulant comes as ``n x n`` sub-lattices ``(n, n, h, w)`` from
:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices` (entry ``[i, j]``: the virtual pixel
at ``(+i/n, +j/n)`` camera pixels). :func:`flatten` equalises the sub-lattices (their pixel
combinations carry different distance factors, Dertinger et al. 2010), interleaves them into one
image and applies a 2 x 2 median filter, as sofipackage (Leutenegger, Geissbuehler, Lukes,
Grussmayer et al.) does; everything after works on images ``(y, x)`` whose pixels are ``1/n``
camera pixel. :func:`richardson_lucy` deconvolves with the order-scaled Gaussian PSF,
:func:`linearize` is sofipackage's standard SOFI (``|x|/max`` -> RL -> ``x max`` -> ``^(1/n)``;
Komen 2024, eq. 3.7), :func:`adaptive_linearize` replaces ``1/n`` by the exponent that divides
the brightest pixels by the Bernoulli cumulant ``f_n(rho_on)`` (Geissbuehler et al. 2012; Komen
2024, eq. 3.8-3.9) with ``rho_on`` from :func:`estimate_on_ratio`, and :func:`bsofi_parameters` /
:func:`balanced_sofi` are the on-ratio, brightness and density maps and the balanced image of
Geissbuehler et al. 2012. All functions are pure JAX (jit-able; the order, the FWHM that sizes a
kernel, iteration and point counts are static).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from fluojax import optics
from fluojax.io import require
from fluojax.sofi import cumulants, models

__all__ = [
    "BALANCE_THRESHOLDS",
    "LINEARIZATIONS",
    "PEAK_POINTS",
    "BsofiMaps",
    "adaptive_exponent",
    "adaptive_linearize",
    "balanced_sofi",
    "bsofi_parameters",
    "deconvolve",
    "estimate_fwhm",
    "estimate_on_ratio",
    "flatten",
    "fwhm_at_bound",
    "gaussian_blur",
    "gaussian_kernel",
    "linearize",
    "median_filter_2x2",
    "order_psf_sigma",
    "resample_to",
    "richardson_lucy",
]

_FOUR_LN2 = 4.0 * math.log(2.0)
FWHM_BOUNDS_PX = (1.0, 7.0)
"""Bounds of the FWHM estimated from the sub-lattice means (camera pixels), as sofipackage."""
PEAK_POINTS = 10
"""Brightest physical pixels the adaptive linearization averages over (sofipackage's 10)."""
#: The linearizations of an order-n image: the n-th root (sofipackage's standard SOFI) or adaptive.
LINEARIZATIONS = ("root", "adaptive")
BALANCE_THRESHOLDS = (0.128, 0.278, 0.722, 0.872)
"""On-ratio limits of balanced SOFI: order n where rho is in (0.278, 0.722), below 0.128 or above
0.872, order n-1 elsewhere (around the roots 0.211 and 0.789 of f_4; Geissbuehler et al. 2012)."""
BALANCE_SIGMA_PX = 1.5
"""Gaussian smoothing (sigma, output pixels) of the balanced-SOFI mask (Geissbuehler et al. 2012)."""


def _order_of(sub) -> int:
    require(
        sub.ndim == 4 and sub.shape[0] == sub.shape[1] and sub.shape[0] >= 1,
        f"cross-cumulant sub-lattices of shape {tuple(sub.shape)}: expected (n, n, rows, columns)",
    )
    return int(sub.shape[0])


def _require_image(image, what: str) -> None:
    require(image.ndim == 2, f"{what} of shape {tuple(image.shape)}: expected an image (rows, columns)")


# --------------------------------------------------------------------------------------------
# Flattening
# --------------------------------------------------------------------------------------------


def median_filter_2x2(image: Float[ArrayLike, "y x"]) -> Float[Array, "y x"]:
    """2 x 2 median filter as MATLAB's ``medfilt2(image, [2 2])`` (its default zero padding).

    For an even neighbourhood MATLAB anchors the window at its top-left element: output pixel
    ``(i, j)`` is the median of ``image[i:i+2, j:j+2]``, i.e. of the pixel, its lower, right and
    lower-right neighbours; the last row and column see zeros beyond the image (so the content
    moves by half a pixel towards the first row and column). The median of four values is the
    mean of the two middle ones. (sofipackage applies this to every flattened
    cumulant; MATLAB's own example ``medfilt2([1 2 3; 4 5 6; 7 8 9], [2 2])`` gives
    ``[3 4 1.5; 6 7 3; 3.5 4 0]``.)

    Arguments:
        image: (y, x) image.
    """
    x = jnp.asarray(image)
    _require_image(x, "median filter input")
    p = jnp.pad(x, ((0, 1), (0, 1)))
    four = jnp.sort(jnp.stack([p[:-1, :-1], p[1:, :-1], p[:-1, 1:], p[1:, 1:]]), axis=0)
    return 0.5 * (four[1] + four[2])


def _sum_sq(order: int, grid: str | cumulants.Grid) -> np.ndarray:
    """(n, n) sum of squared pairwise distances (camera pixels^2) of each sub-lattice's pixels."""
    return np.asarray(cumulants.combinations(order, grid).sum_sq, dtype=np.float64).reshape(order, order)


def _distance_factors(order: int, fwhm_px, grid: str | cumulants.Grid) -> Float[Array, "n n"]:
    """(n, n) Gaussian distance factors of the sub-lattices (:func:`models.distance_factor`)."""
    s = jnp.asarray(_sum_sq(order, grid), jnp.float32)
    return models.distance_factor(s, order, jnp.asarray(fwhm_px, jnp.float32))


def estimate_fwhm(sub: Float[ArrayLike, "n n h w"], grid: str | cumulants.Grid = "sofipackage") -> Float[Array, ""]:
    """PSF FWHM (camera pixels) from how the sub-lattice means fall with the distance factor.

    Each sub-lattice mean is ``m_ij = C D_ij`` (the same structure seen through a different
    distance factor ``D_ij = exp(-4 ln2 S_ij / (n w^2))``, :func:`fluojax.sofi.models.distance_factor`,
    ``S_ij`` the sum over pairs of the combination's squared pixel distances), so ``ln m_ij = ln C - a S_ij`` with
    ``a = 4 ln2 / (n w^2)``. ``a`` is the closed-form least-squares slope of ``ln m_ij`` on
    ``S_ij`` and ``w = sqrt(4 ln2 / (n a))``, clipped to [1, 7] px (sofipackage fits the mean
    ratios by nonlinear least squares within the same bounds; on exact Gaussian data both give
    the same ``w``). Order 1 has one sub-lattice and no information: it returns NaN.

    ``m_ij`` is the absolute value of the mean of the signed cumulants, ``|mean kappa_ij|``, not
    the mean of ``|kappa_ij|`` that the flattening equalises: cross-cumulants of distinct pixels
    are unbiased, so the estimation noise of background pixels averages out of the signed mean,
    while in the mean of absolute values it adds the same floor to every sub-lattice and
    flattens the slope, towards the upper bound on noisy stacks (docs/sofi.md, section 3).
    The PSF measured is the camera's: a Gaussian of FWHM ``w0`` integrated over unit pixels
    reads about ``sqrt(w0^2 + 8 ln2 / 12)``.

    Arguments:
        sub: (n, n, h, w) cross-cumulant sub-lattices of order n >= 2.
        grid: the virtual-pixel grid they come from (:data:`fluojax.sofi.cumulants.GRIDS`; static).
    """
    s = jnp.asarray(sub)
    n = _order_of(s)
    if n < 2:
        return jnp.asarray(jnp.nan, jnp.float32)
    log_m = jnp.log(jnp.maximum(jnp.abs(jnp.mean(s, axis=(2, 3))), jnp.finfo(jnp.float32).tiny)).ravel()
    d = jnp.asarray(_sum_sq(n, grid), jnp.float32).ravel()
    dc = d - jnp.mean(d)
    slope = jnp.sum(dc * (log_m - jnp.mean(log_m))) / jnp.sum(dc**2)
    a = -slope
    lo, hi = FWHM_BOUNDS_PX
    w = jnp.sqrt(_FOUR_LN2 / (n * jnp.maximum(a, _FOUR_LN2 / (n * hi**2))))
    return jnp.clip(w, lo, hi)


def fwhm_at_bound(fwhm_px: float) -> bool:
    """Whether a FWHM from :func:`estimate_fwhm` sits at one of its bounds
    (:data:`FWHM_BOUNDS_PX`, to 1e-3 px): then the sub-lattice means did not determine it."""
    return any(abs(float(fwhm_px) - bound) < 1e-3 for bound in FWHM_BOUNDS_PX)


def flatten(
    sub: Float[ArrayLike, "n n h w"],
    fwhm_px: float | Float[ArrayLike, ""] | None = None,
    *,
    median: bool = True,
    grid: str | cumulants.Grid = "sofipackage",
) -> Float[Array, "y x"]:
    """Flattened order-n SOFI image from the ``n x n`` cross-cumulant sub-lattices.

    Default (sofipackage's empirical flattening): ``|kappa|`` of every sub-lattice is multiplied
    by ``mean_kl(m_kl) / m_ij`` (``m_ij`` its mean), so all sub-lattices share the mean of the
    sub-lattice means. With ``fwhm_px`` it is the distance-factor flattening instead:
    ``|kappa_ij| / D_ij = |kappa_ij| exp(4 ln2 S_ij / (n w^2))``, with ``S_ij`` the sum over pairs
    of the combination's squared pixel distances (camera pixels^2,
    :func:`fluojax.sofi.cumulants.combinations`): the cross-cumulant of pixels ``r_1..r_n`` is
    ``prod_{j<l} U((r_j - r_l)/sqrt(n))`` times the cumulant at their centroid for a Gaussian PSF
    (Dertinger et al. 2010; :func:`fluojax.sofi.models.distance_factor`). ``fwhm_px`` may come
    from :func:`estimate_fwhm`. The sub-lattices are then interleaved
    (:func:`fluojax.sofi.cumulants.interleave`, ``n (H - 4) + 1`` pixels per side for an H-pixel
    stack on the sofipackage grid) and 2 x 2 median filtered (:func:`median_filter_2x2`).

    Arguments:
        sub: (n, n, h, w) sub-lattices; entry [i, j] is the virtual pixel at (+i/n, +j/n).
        fwhm_px: PSF FWHM in camera pixels for the distance-factor flattening; None for the
            mean equalisation.
        median: apply the 2 x 2 median filter (static).
        grid: the virtual-pixel grid of ``sub`` (its combinations' S; static).

    Returns:
        The (y, x) flattened cumulant image, non-negative, in the cumulant's units.
    """
    s = jnp.abs(jnp.asarray(sub))
    n = _order_of(s)
    if fwhm_px is None:
        means = jnp.mean(s, axis=(2, 3))
        scale = jnp.mean(means) / jnp.where(means > 0, means, 1.0)
        scale = jnp.where(means > 0, scale, 1.0)
    else:
        scale = 1.0 / _distance_factors(n, fwhm_px, grid)
    image = cumulants.interleave(s * scale[:, :, None, None])
    return median_filter_2x2(image) if median else image


# --------------------------------------------------------------------------------------------
# Deconvolution and linearization
# --------------------------------------------------------------------------------------------


def order_psf_sigma(order: int, fwhm_px: float) -> float:
    """Gaussian sigma, in output pixels (1/n camera pixel), of the order-n PSF ``U^n``.

    ``U^n`` has FWHM ``w / sqrt(n)`` camera pixels, i.e. ``w sqrt(n)`` output pixels, so
    ``sigma = w sqrt(n) / sqrt(8 ln2)`` (as sofipackage's linearization).

    Arguments:
        order: cumulant order n.
        fwhm_px: FWHM of the camera PSF U in camera pixels.
    """
    require(order >= 1, f"order {order}: must be >= 1")
    require(np.isfinite(fwhm_px) and fwhm_px > 0, f"PSF FWHM {fwhm_px} px: must be > 0")
    return float(fwhm_px) * math.sqrt(order) / optics.FWHM_PER_SIGMA


def gaussian_kernel(sigma_px: float) -> np.ndarray:
    """Normalised 1D Gaussian ``exp(-x^2 / (2 sigma^2))`` on ``x = -r..r``, ``r = ceil(3 sigma)``.

    Arguments:
        sigma_px: standard deviation in pixels (> 0).
    """
    require(np.isfinite(sigma_px) and sigma_px > 0, f"Gaussian sigma {sigma_px} px: must be > 0")
    r = math.ceil(3.0 * sigma_px)
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-(x**2) / (2.0 * sigma_px**2))
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: Float[ArrayLike, "y x"], sigma_px: float) -> Float[Array, "y x"]:
    """Separable Gaussian blur (:func:`gaussian_kernel`) with symmetric edge extension.

    The image is extended by ``r = ceil(3 sigma)`` pixels mirrored about its edges (NumPy's
    'symmetric': the edge pixel repeats), so a flat image stays flat and nothing wraps round from
    the opposite side.

    Arguments:
        image: (y, x) image.
        sigma_px: Gaussian sigma in pixels (static).
    """
    x = jnp.asarray(image)
    _require_image(x, "image to blur")
    k = jnp.asarray(gaussian_kernel(sigma_px), x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32)
    r = (k.shape[0] - 1) // 2
    p = jnp.pad(x.astype(k.dtype), r, mode="symmetric")
    p = jax.scipy.signal.convolve2d(p, k[:, None], mode="valid")
    return jax.scipy.signal.convolve2d(p, k[None, :], mode="valid")


def richardson_lucy(image: Float[ArrayLike, "y x"], sigma_px: float, iterations: int = 10) -> Float[Array, "y x"]:
    """Richardson-Lucy deconvolution with a Gaussian PSF (Richardson 1972; Lucy 1974).

    ``o_{k+1} = o_k (K * (g / (K * o_k)))`` from ``o_0 = g``, with ``K`` the normalised
    separable Gaussian of :func:`gaussian_kernel` (symmetric, so it is its own mirror image) and
    ``*`` the convolution of :func:`gaussian_blur` (symmetric edge extension). Where ``K * o_k``
    is 0 the ratio is taken as 0. Negative input values are clipped to 0 (RL needs g >= 0).
    MATLAB's ``deconvlucy``, which sofipackage calls, convolves by FFTs (a periodic image) and
    accelerates the iterations (Biggs and Andrews 1997), so its edges and its per-iteration
    progress differ from this plain form.

    Arguments:
        image: (y, x) non-negative image g.
        sigma_px: PSF sigma in the image's pixels (static; :func:`order_psf_sigma`).
        iterations: number of RL iterations (static, >= 0).
    """
    g = jnp.maximum(jnp.asarray(image, jnp.float32), 0.0)
    _require_image(g, "image to deconvolve")
    require(iterations >= 0, f"{iterations} Richardson-Lucy iterations: must be >= 0")
    tiny = jnp.finfo(jnp.float32).tiny

    def step(_, o):
        blurred = gaussian_blur(o, sigma_px)
        ratio = jnp.where(blurred > tiny, g / jnp.where(blurred > tiny, blurred, 1.0), 0.0)
        return o * gaussian_blur(ratio, sigma_px)

    return jax.lax.fori_loop(0, int(iterations), step, g)


def deconvolve(image: Float[ArrayLike, "y x"], order: int, fwhm_px: float, iterations: int = 10) -> Float[Array, "y x"]:
    """sofipackage's deconvolution of a flattened order-n image: ``|x|/max`` -> RL -> ``x max``.

    RL (:func:`richardson_lucy`) with the order-n PSF ``sigma = w sqrt(n)/sqrt(8 ln2)`` output
    pixels (:func:`order_psf_sigma`). An all-zero image returns zeros.

    Arguments:
        image: (y, x) flattened cumulant image (pixels of 1/n camera pixel).
        order: cumulant order n (static).
        fwhm_px: PSF FWHM in camera pixels (static).
        iterations: RL iterations (static; sofipackage's default 10).
    """
    x = jnp.abs(jnp.asarray(image, jnp.float32))
    _require_image(x, f"order-{order} image")
    peak = jnp.max(x)
    safe = jnp.where(peak > 0, peak, 1.0)
    return richardson_lucy(x / safe, order_psf_sigma(order, fwhm_px), iterations) * safe


def linearize(
    image: Float[ArrayLike, "y x"],
    order: int,
    fwhm_px: float,
    iterations: int = 10,
    exponent: float | Float[ArrayLike, ""] | None = None,
) -> Float[Array, "y x"]:
    """sofipackage's standard SOFI image: :func:`deconvolve`, then ``^exponent`` (default 1/n).

    ``g_bar = g_hat^(1/n)`` turns the n-th power brightness response of an order-n cumulant back
    into a linear one (Komen 2024, eq. 3.7; Dertinger et al. 2009).

    Arguments:
        image: (y, x) flattened order-n cumulant image.
        order: cumulant order n (static).
        fwhm_px: PSF FWHM in camera pixels (static).
        iterations: RL iterations (static).
        exponent: linearization exponent (None: 1/n); may be traced.
    """
    g = deconvolve(image, order, fwhm_px, iterations)
    gamma = 1.0 / order if exponent is None else exponent
    return g**gamma


# --------------------------------------------------------------------------------------------
# Adaptive linearization
# --------------------------------------------------------------------------------------------


def _physical(image, order: int):
    """The physical-pixel sub-grid of an order-n image (every n-th pixel from the first)."""
    return jnp.asarray(image)[::order, ::order]


def estimate_on_ratio(
    k2: Float[ArrayLike, "y2 x2"],
    k3: Float[ArrayLike, "y3 x3"],
    emitters: float | Float[ArrayLike, ""] = 1.0,
    points: int = PEAK_POINTS,
) -> Float[Array, ""]:
    """On-time ratio rho_on from the 2nd- and 3rd-order flattened cumulants at their peaks.

    At a physical pixel the model is ``kappa_n = N eps^n f_n(rho) U^n`` (N emitters of
    brightness eps seen through the PSF value U; Dertinger et al. 2009), so brightness and PSF
    cancel in ``r = sqrt(N) kappa_3 / kappa_2^(3/2) = f_3 / f_2^(3/2)
    = (1 - 2 rho) / sqrt(rho (1 - rho))``. Squared, with ``q = rho (1 - rho)``:
    ``r^2 q = 1 - 4 q``, so ``q = 1 / (r^2 + 4)`` and ``rho = (1 - r / sqrt(r^2 + 4)) / 2``. The
    flattened cumulants are absolute values, so ``r >= 0`` and the root with rho <= 1/2 is taken
    (as sofipackage's smaller root). rho is averaged over the ``points`` brightest physical pixels
    of the order-2 image (order-n image sampled every n-th pixel; both grids then hold the same
    H - 3 camera pixels). sofipackage takes N per point from a fit of the raw trace's
    autocorrelation; here N is an input: 1 (isolated emitters, the default) or, e.g., the density
    map of :func:`bsofi_parameters` where order 4 is available. The values must be in the model's
    scale at the physical pixels: the distance-factor flattening (known FWHM or
    :func:`estimate_fwhm`) keeps it; the default mean equalisation multiplies order n by the mean
    distance factor of its sub-lattices, so r reads ``mean(D_3) / mean(D_2)^(3/2)`` times too small
    (0.82 at FWHM 2.7 px on the sofipackage grid: rho 0.2 comes out as 0.24).

    Arguments:
        k2: (2(H-4)+1, ...) flattened order-2 image.
        k3: (3(H-4)+1, ...) flattened order-3 image.
        emitters: N, emitters per bright point.
        points: number of brightest physical pixels averaged (static).

    Returns:
        Scalar rho_on in (0, 1/2].
    """
    p2 = jnp.abs(_physical(k2, 2))
    p3 = jnp.abs(_physical(k3, 3))
    require(
        p2.shape == p3.shape,
        f"order-2 image {tuple(jnp.shape(k2))} and order-3 image {tuple(jnp.shape(k3))}: "
        "not the grids of one stack (2(H-4)+1 and 3(H-4)+1 pixels per side)",
    )
    require(1 <= points <= p2.size, f"{points} peak points: must be 1-{p2.size}")
    v2, idx = jax.lax.top_k(p2.ravel(), points)
    v3 = p3.ravel()[idx]
    tiny = jnp.finfo(jnp.float32).tiny
    r = jnp.sqrt(jnp.asarray(emitters, jnp.float32)) * v3 / jnp.maximum(v2, tiny) ** 1.5
    rho = 0.5 * (1.0 - r / jnp.sqrt(r**2 + 4.0))
    return jnp.mean(rho)


def adaptive_exponent(
    image: Float[ArrayLike, "y x"], order: int, rho_on: float | Float[ArrayLike, ""], points: int = PEAK_POINTS
) -> Float[Array, ""]:
    """Adaptive linearization exponent gamma_n of an order-n (deconvolved) image.

    At the ``points`` brightest physical pixels (values ``i``, every n-th pixel),
    ``g_i = log10(i / f_n(rho)) / log10(i)``, the exponent with ``i^g_i = i / f_n(rho)``; then
    ``gamma_n = mean(g_i) / n`` (Komen 2024, eq. 3.8-3.9; Geissbuehler et al. 2012), and
    ``gamma_1 = 1``. ``i`` is in the image's own units (cumulants in counts^n): the exponent is
    not scale-free, and it diverges where the bright values approach 1.

    Arguments:
        image: (y, x) order-n image (deconvolved, in its cumulant units).
        order: cumulant order n (static).
        rho_on: on-time ratio (e.g. from :func:`estimate_on_ratio`).
        points: number of brightest physical pixels averaged (static).
    """
    if order == 1:
        return jnp.asarray(1.0, jnp.float32)
    p = jnp.abs(_physical(image, order)).ravel()
    require(1 <= points <= p.size, f"{points} peak points: must be 1-{p.size}")
    i, _ = jax.lax.top_k(p, points)
    f = jnp.abs(models.bernoulli_cumulant(order, jnp.asarray(rho_on, jnp.float32)))
    g = jnp.log10(i / f) / jnp.log10(i)
    return jnp.mean(g) / order


def adaptive_linearize(
    image: Float[ArrayLike, "y x"],
    order: int,
    fwhm_px: float,
    rho_on: float | Float[ArrayLike, ""],
    iterations: int = 10,
    points: int = PEAK_POINTS,
) -> Float[Array, "y x"]:
    """Adaptively linearized order-n image: :func:`deconvolve`, then ``^gamma_n``.

    ``gamma_n`` from :func:`adaptive_exponent` on the deconvolved image ``g_hat``, so that the
    brightest pixels become ``(g_hat / f_n(rho_on))^(1/n)`` (Komen 2024, eq. 3.9). At a root of
    f_n (rho = 1/2 for order 3; 0.211, 0.789 for order 4) the exponent is infinite: use another
    order there.

    Arguments:
        image: (y, x) flattened order-n cumulant image.
        order: cumulant order n (static).
        fwhm_px: PSF FWHM in camera pixels (static).
        rho_on: on-time ratio.
        iterations: RL iterations (static).
        points: brightest physical pixels for the exponent (static).
    """
    g = deconvolve(image, order, fwhm_px, iterations)
    return g ** adaptive_exponent(g, order, rho_on, points)


# --------------------------------------------------------------------------------------------
# Balanced SOFI
# --------------------------------------------------------------------------------------------


def resample_to(image: Float[ArrayLike, "y x"], shape: tuple[int, int]) -> Float[Array, "y x"]:
    """Bilinear resampling of an order-m image onto another order's grid of the same field.

    The grids share their first and last pixels (order n: ``n (H - 4) + 1`` pixels spanning the
    same ``H - 4`` camera pixels), so output pixel ``k`` samples input position
    ``k (S_in - 1) / (S_out - 1)``. sofipackage interpolates with a spline; bilinear keeps it
    non-negative and local.

    Arguments:
        image: (y, x) image.
        shape: (rows, columns) of the target grid (static).
    """
    x = jnp.asarray(image, jnp.float32)
    _require_image(x, "image to resample")
    if tuple(x.shape) == tuple(shape):
        return x
    rows = jnp.linspace(0.0, x.shape[0] - 1.0, shape[0])
    cols = jnp.linspace(0.0, x.shape[1] - 1.0, shape[1])
    yy, xx = jnp.meshgrid(rows, cols, indexing="ij")
    return jax.scipy.ndimage.map_coordinates(x, [yy, xx], order=1, mode="nearest")


class BsofiMaps(NamedTuple):
    """Molecular-parameter maps of balanced SOFI on the order-4 grid (Geissbuehler et al. 2012).

    Fields:
        on_ratio: rho_on, in [0, 1].
        brightness: ``eps U``: one emitter's counts per frame in that pixel while on (``eps``
            itself for a PSF of peak 1).
        density: N, emitters per point (per the PSF's effective area where the exponent
            convention of :func:`bsofi_parameters` is a layer's).
    """

    on_ratio: Float[Array, "y x"]
    brightness: Float[Array, "y x"]
    density: Float[Array, "y x"]


def bsofi_parameters(
    k2: Float[ArrayLike, "y2 x2"],
    k3: Float[ArrayLike, "y3 x3"],
    k4: Float[ArrayLike, "y4 x4"],
    exponent: float = 0.0,
) -> BsofiMaps:
    """On-ratio, brightness and density maps from the flattened cumulants of orders 2-4.

    With ``kappa_n = N eps^n f_n(rho) U^n``: ``K1 = c1 kappa_3 / kappa_2 = eps (1 - 2 rho)``,
    ``K2 = c2 kappa_4 / kappa_2 = eps^2 (1 - 6 rho + 6 rho^2)``, so
    ``eps = sqrt(3 K1^2 - 2 K2)``, ``rho = 1/2 - K1 / (2 eps)`` (clamped to [0, 1]) and
    ``N = kappa_2 / (eps^2 rho (1 - rho))`` (Geissbuehler et al. 2012). The constants are
    ``c1 = (3/2)^e``, ``c2 = 2^e``: for a structure extended in d dimensions the cumulant sums
    ``U^n`` over it, and a Gaussian gives ``integral U^n ~ n^(-d/2)``, so ``e = d/2``: 0 for
    points (exact at an emitter's position; the default here), 0.5 for filaments, 1 for a
    uniform layer, 1.5 for a volume (sofipackage's default 1.5, 2 with its TIRF flag). The
    orders 2 and 3 are resampled onto the order-4 grid (:func:`resample_to`). Flattened
    cumulants are absolute values, so ``K1 >= 0`` and rho <= 1/2 unless signed cumulants are
    passed. Where ``3 K1^2 < 2 K2`` (noise) eps is 0 and rho, N are NaN.

    Arguments:
        k2, k3, k4: flattened cumulant images of orders 2, 3, 4 of one stack.
        exponent: e of the constants c1, c2 (static).
    """
    k4 = jnp.asarray(k4, jnp.float32)
    _require_image(k4, "order-4 image")
    shape = (int(k4.shape[0]), int(k4.shape[1]))
    k2r = resample_to(k2, shape)
    k3r = resample_to(k3, shape)
    c1 = 1.5**exponent
    c2 = 2.0**exponent
    safe2 = jnp.where(k2r != 0, k2r, jnp.nan)
    big1 = c1 * k3r / safe2
    big2 = c2 * k4 / safe2
    eps = jnp.sqrt(jnp.maximum(3.0 * big1**2 - 2.0 * big2, 0.0))
    safe_eps = jnp.where(eps > 0, eps, jnp.nan)
    rho = jnp.clip(0.5 - 0.5 * big1 / safe_eps, 0.0, 1.0)
    density = k2r / (safe_eps**2 * rho * (1.0 - rho))
    return BsofiMaps(on_ratio=rho, brightness=eps, density=density)


def balanced_sofi(
    lin3: Float[ArrayLike, "y3 x3"],
    lin4: Float[ArrayLike, "y4 x4"],
    on_ratio: Float[ArrayLike, "y4 x4"],
) -> Float[Array, "y4 x4"]:
    """Balanced SOFI image from the linearized orders 3 and 4 and the on-ratio map.

    ``mask = 1`` where rho is in (0.278, 0.722), below 0.128 or above 0.872 (away from the roots
    of f_4, where order 4 carries signal), else 0; NaN counts as 0. The mask is blurred by a
    Gaussian of sigma 1.5 output pixels (:func:`gaussian_blur`) and
    ``balanced = mask lin4 / max(lin4) + (1 - mask) lin3 / max(lin3)``, with ``lin3`` resampled
    onto the order-4 grid (:func:`resample_to`; Geissbuehler et al. 2012).

    Arguments:
        lin3: linearized order-3 image.
        lin4: linearized order-4 image.
        on_ratio: rho map on the order-4 grid (:class:`BsofiMaps`).
    """
    l4 = jnp.asarray(lin4, jnp.float32)
    _require_image(l4, "order-4 image")
    rho = jnp.asarray(on_ratio, jnp.float32)
    require(rho.shape == l4.shape, f"on-ratio map {tuple(rho.shape)}: expected the order-4 grid {tuple(l4.shape)}")
    l3 = resample_to(lin3, (int(l4.shape[0]), int(l4.shape[1])))
    a, b, c, d = BALANCE_THRESHOLDS
    keep = ((rho > b) & (rho < c)) | (rho < a) | (rho > d)
    mask = gaussian_blur(keep.astype(jnp.float32), BALANCE_SIGMA_PX)

    def unit(x):
        m = jnp.max(x)
        return x / jnp.where(m > 0, m, 1.0)

    return mask * unit(l4) + (1.0 - mask) * unit(l3)
