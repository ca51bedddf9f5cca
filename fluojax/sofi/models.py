"""The cumulant forward model of SOFI: independent on/off blinkers seen through a Gaussian PSF.

A movie of K independent emitters is ``I(r, t) = sum_k eps_k U(r - r_k) s_k(t) + b(r) + noise``
with ``s_k(t)`` in {0, 1} on with probability ``rho_k`` (Dertinger et al. 2009). Cumulants are
additive over independent emitters and blind to a constant background, and the joint cumulant of
n pixels ``r_1..r_n`` (distinct or not) at zero lag is

    kappa(r_1, ..., r_n) = sum_k eps_k^n f_n(rho_k) prod_j U(r_j - r_k),

with ``f_n`` the n-th cumulant of a Bernoulli variable (Komen 2024, eq. 3.6; Geissbuehler et al.
2012). For a Gaussian U of peak 1 the product is ``prod_{j<l} U((r_j - r_l)/sqrt n) U^n(c - r_k)``
with ``c`` the centroid of the pixels (Dertinger et al. 2010): the signal sits at the centroid
(a virtual pixel) and is damped by the distance factor :func:`distance_factor`. Everything here
is pure JAX (jit/vmap/grad-able); positions are in camera pixels with the origin at the outer
corner of the first pixel (pixel (i, j) spans rows [i, i+1), columns [j, j+1), its centre is at
(i + 1/2, j + 1/2)), i.e. the nm positions of fluojax divided by ``pixel_nm``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jaxtyping import Array, ArrayLike, Float

from fluojax.io import require
from fluojax.sofi.cumulants import GRIDS, Grid

__all__ = [
    "bernoulli_cumulant",
    "distance_factor",
    "expected_auto_cumulant",
    "expected_cross_cumulant",
    "expected_sublattices",
    "fwhm_to_sigma",
    "on_ratio",
    "psf_factors",
]

#: f_n / (rho (1 - rho)) as coefficients of 1, rho, rho^2, ... (f_5: (1 - 2 rho)(1 - 12 rho + 12 rho^2) expanded).
_INNER = {
    2: (1.0,),
    3: (1.0, -2.0),
    4: (1.0, -6.0, 6.0),
    5: (1.0, -14.0, 36.0, -24.0),
    6: (1.0, -30.0, 150.0, -240.0, 120.0),
}

#: FWHM / sigma of a Gaussian, sqrt(8 ln 2).
FWHM_PER_SIGMA = math.sqrt(8.0 * math.log(2.0))


def on_ratio(on_time: Float[ArrayLike, "*s"], off_time: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """On-time ratio ``rho = tau_on / (tau_on + tau_off)`` of a two-state blinker (Komen 2024, ch. 3).

    Arguments:
        on_time: mean on time tau_on (any time unit, frames by default).
        off_time: mean off time tau_off (same unit).
    """
    on = jnp.asarray(on_time)
    return on / (on + jnp.asarray(off_time))


def bernoulli_cumulant(order: int, rho_on: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """``f_n(rho)``: the n-th cumulant of a Bernoulli variable that is 1 with probability ``rho``.

    The polynomials follow from the recursion ``f_1 = rho``, ``f_n = rho (1 - rho) d f_{n-1} / d rho``
    (Komen 2024, eq. 3.6; Geissbuehler et al. 2012):

        f_1 = rho,                    f_2 = rho (1 - rho),
        f_3 = f_2 (1 - 2 rho),        f_4 = f_2 (1 - 6 rho + 6 rho^2),
        f_5 = f_2 (1 - 2 rho) (1 - 12 rho + 12 rho^2),
        f_6 = f_2 (1 - 30 rho + 150 rho^2 - 240 rho^3 + 120 rho^4).

    They scale the n-th order SOFI signal of an emitter, ``eps^n f_n(rho) U^n``; f_3 vanishes at
    rho = 1/2, f_4 at (3 +- sqrt 3)/6, which is why odd orders and order 4 change sign.

    Arguments:
        order: n, 1..6 (static).
        rho_on: on-time ratio(s) in [0, 1].
    """
    require(1 <= order <= 6, f"order {order}: Bernoulli cumulants are given for orders 1-6")
    p = jnp.asarray(rho_on)
    if order == 1:
        return p
    f2 = p * (1.0 - p)
    inner = sum(c * p**k for k, c in enumerate(_INNER[order]))
    return f2 * inner


def fwhm_to_sigma(fwhm_px: Float[ArrayLike, ""]) -> Float[Array, ""]:
    """Gaussian s.d. ``sigma = FWHM / sqrt(8 ln 2)`` (same unit as the FWHM)."""
    return jnp.asarray(fwhm_px) / FWHM_PER_SIGMA


def distance_factor(sum_sq_px: Float[ArrayLike, "*s"], order: int, fwhm_px: Float[ArrayLike, ""]) -> Float[Array, "*s"]:
    """Distance factor of a cross-cumulant: ``exp(-4 ln 2 S / (n w^2))`` (Dertinger et al. 2010).

    ``S = sum_{j<l} |r_j - r_l|^2`` of the n pixels of a combination (px^2), ``w`` the PSF FWHM in
    px. It equals ``prod_{j<l} U((r_j - r_l)/sqrt n)`` for a Gaussian U of peak 1, the factor by
    which the virtual pixel of that combination is dimmer than an auto-cumulant at its centroid
    (point-sampled PSF). Dividing by it is the distance-factor flattening.

    Arguments:
        sum_sq_px: S, px^2 (e.g. ``cumulants.combinations(n).sum_sq``).
        order: n.
        fwhm_px: PSF FWHM w, camera pixels.
    """
    w = jnp.asarray(fwhm_px)
    return jnp.exp(-4.0 * math.log(2.0) * jnp.asarray(sum_sq_px) / (order * w**2))


def psf_factors(
    centres_px: Float[ArrayLike, " m"],
    positions_px: Float[ArrayLike, " k"],
    fwhm_px: Float[ArrayLike, ""],
    pixel_integrated: bool = False,
) -> Float[Array, "k m"]:
    """1D factor of the separable Gaussian PSF: ``U(y, x) = E(y) E(x)``, a fraction of the photons.

    Point-sampled: ``E(c) = exp(-(c - p)^2 / (2 s^2)) / (sqrt(2 pi) s)`` (density at the pixel
    centre times a 1-px width); pixel-integrated: ``E(c) = [erf((c + 1/2 - p) / (sqrt 2 s)) -
    erf((c - 1/2 - p) / (sqrt 2 s))] / 2``. ``s`` = FWHM / sqrt(8 ln 2).

    Arguments:
        centres_px: pixel centres c (px; pixel i has its centre at i + 1/2).
        positions_px: emitter coordinates p along the same axis (px).
        fwhm_px: PSF FWHM, px.
        pixel_integrated: integrate over the pixel instead of point sampling.
    """
    s = fwhm_to_sigma(fwhm_px)
    d = jnp.asarray(centres_px)[None, :] - jnp.asarray(positions_px)[:, None]
    if pixel_integrated:
        scale = 1.0 / (math.sqrt(2.0) * s)
        return 0.5 * (erf((d + 0.5) * scale) - erf((d - 0.5) * scale))
    return jnp.exp(-0.5 * (d / s) ** 2) / (math.sqrt(2.0 * math.pi) * s)


@functools.partial(jax.jit, static_argnames=("pixel_integrated",))
def expected_cross_cumulant(
    pixels: Float[ArrayLike, "*p n 2"],
    positions_px: Float[ArrayLike, "k 2"],
    brightness: Float[ArrayLike, " k"],
    rho_on: Float[ArrayLike, " k"],
    fwhm_px: Float[ArrayLike, ""],
    pixel_integrated: bool = False,
) -> Float[Array, "*p"]:
    """Zero-lag joint cumulant of n pixel values: ``sum_k eps_k^n f_n(rho_k) prod_j U(r_j - r_k)``.

    The pixels may repeat (all equal: the auto-cumulant). Independent emitters, a constant
    background and noise independent between pixels and frames add nothing when the pixels are
    distinct (Dertinger et al. 2010).

    Arguments:
        pixels: integer (row, column) indices of the n pixels of each combination, ``(..., n, 2)``.
        positions_px: (K, 2) emitter (y, x), px, origin at the first pixel's outer corner.
        brightness: (K,) eps_k, photons per frame while on.
        rho_on: (K,) on-time ratios (or a scalar).
        fwhm_px: PSF FWHM, px.
        pixel_integrated: the PSF integrated over each pixel instead of point-sampled.
    """
    pix = jnp.asarray(pixels)
    n = pix.shape[-2]
    pos = jnp.asarray(positions_px)
    centres = pix + 0.5  # (..., n, 2)
    flat = centres.reshape(-1, 2)
    ey = psf_factors(flat[:, 0], pos[:, 0], fwhm_px, pixel_integrated)  # (K, P n)
    ex = psf_factors(flat[:, 1], pos[:, 1], fwhm_px, pixel_integrated)
    u = (ey * ex).reshape((pos.shape[0], *pix.shape[:-1]))  # (K, ..., n)
    weight = jnp.asarray(brightness) ** n * bernoulli_cumulant(n, jnp.broadcast_to(rho_on, pos.shape[:1]))
    return jnp.einsum("k,k...->...", weight, jnp.prod(u, axis=-1))


@functools.partial(jax.jit, static_argnames=("order", "shape", "pixel_integrated"))
def expected_auto_cumulant(
    order: int,
    positions_px: Float[ArrayLike, "k 2"],
    brightness: Float[ArrayLike, " k"],
    rho_on: Float[ArrayLike, " k"],
    fwhm_px: Float[ArrayLike, ""],
    shape: tuple[int, int],
    pixel_integrated: bool = False,
) -> Float[Array, "y x"]:
    """Zero-lag n-th auto-cumulant image ``kappa_n(r) = sum_k eps_k^n f_n(rho_k) U(r - r_k)^n``.

    Komen 2024, eq. 3.2 with ``w_n = f_n(rho)``. Noise adds its own cumulants to this one (e.g.
    the read-noise variance at n = 2); the model has none.

    Arguments:
        order: n, 1..6.
        positions_px, brightness, rho_on, fwhm_px, pixel_integrated: as :func:`expected_cross_cumulant`.
        shape: (H, W) pixels of the image.
    """
    h, w = shape
    pos = jnp.asarray(positions_px)
    ey = psf_factors(jnp.arange(h) + 0.5, pos[:, 0], fwhm_px, pixel_integrated)  # (K, H)
    ex = psf_factors(jnp.arange(w) + 0.5, pos[:, 1], fwhm_px, pixel_integrated)  # (K, W)
    weight = jnp.asarray(brightness) ** order * bernoulli_cumulant(order, jnp.broadcast_to(rho_on, pos.shape[:1]))
    return jnp.einsum("k,ky,kx->yx", weight, ey**order, ex**order)


@functools.partial(jax.jit, static_argnames=("shape", "order", "grid", "pixel_integrated"))
def expected_sublattices(
    positions_px: Float[ArrayLike, "k 2"],
    brightness: Float[ArrayLike, " k"],
    rho_on: Float[ArrayLike, " k"],
    fwhm_px: Float[ArrayLike, ""],
    shape: tuple[int, int],
    order: int,
    grid: str | Grid = "sofipackage",
    pixel_integrated: bool = False,
) -> Float[Array, "n n h w"]:
    """The expected ``(n, n, h, w)`` cross-cumulant sub-lattices of an ``shape = (H, W)`` movie.

    Entry ``[i, j, a, b]`` is :func:`expected_cross_cumulant` of the pixel combination that the
    grid (``cumulants.GRIDS``) assigns to the virtual pixel ``(i/n, j/n)`` of reference pixel
    ``(a, b)`` of its sub-lattice: the same layout as ``cumulants.cross_cumulant_sublattices``
    (for the sofipackage grid the reference pixel is camera pixel ``(a + 1, b + 1)``; pixels that
    would lie beyond the image give 0, as there). Point-sampled PSF unless ``pixel_integrated``.

    Arguments:
        positions_px: (K, 2) emitter (y, x), px, origin at the first pixel's outer corner.
        brightness: (K,) photons per frame while on.
        rho_on: (K,) on-time ratios (or a scalar).
        fwhm_px: PSF FWHM, px.
        shape: (H, W) camera pixels.
        order: n, 2..4.
        grid: a grid name of ``cumulants.GRIDS`` or a grid object.
        pixel_integrated: integrate the PSF over each pixel.
    """
    g = GRIDS[grid] if isinstance(grid, str) else grid
    combos = g.combinations(order)
    h, w = g.sublattice_shape(shape)
    first = np.asarray(g.first_reference)
    rows = np.arange(h)[:, None] + first[0]
    cols = np.arange(w)[None, :] + first[1]
    ref = np.stack(np.broadcast_arrays(rows, cols), axis=-1)  # (h, w, 2)
    offsets = np.asarray(combos.offsets).reshape(order, order, order, 2)  # (n, n, n pixels, 2)
    pixels = ref[None, None, :, :, None, :] + offsets[:, :, None, None, :, :]  # (n, n, h, w, n, 2)
    inside = np.all((pixels >= 0) & (pixels < np.asarray(shape)), axis=(-1, -2))
    value = expected_cross_cumulant(pixels, positions_px, brightness, rho_on, fwhm_px, pixel_integrated)
    return jnp.where(inside, value, 0.0)
