"""Image-formation helpers shared by every technique: the Gaussian point-spread function integrated
over square pixels, and the conversion between its full width at half maximum and its standard
deviation.

A Gaussian PSF centred at ``(x0, y0)`` with s.d. ``s`` separates into an x factor and a y factor,
so the fraction of its light that falls into pixel ``(i, j)`` is ``E(y_i; y0) E(x_j; x0)``, each
factor the fraction of a 1D Gaussian inside a pixel of side ``a`` centred at ``c``:

    E(c; x0) = 1/2 [erf((c - x0 + a/2) / (sqrt(2) s)) - erf((c - x0 - a/2) / (sqrt(2) s))]

(the standard pixel-integrated model, Smith et al. 2010, eq. 3; Mortensen et al. 2010), or its
point-sampled approximation ``a / (sqrt(2 pi) s) exp(-(c - x0)^2 / (2 s^2))``. Any length unit
works as long as centres, positions, widths and the pixel side share it. Pure JAX: jit, vmap
and grad (in positions and widths) pass through.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax.scipy.special import erf
from jaxtyping import Array, ArrayLike, Float

__all__ = ["FWHM_PER_SIGMA", "fwhm_to_sigma", "pixel_fractions", "sigma_to_fwhm"]

#: FWHM of a Gaussian in units of its s.d.: 2 sqrt(2 ln 2) = 2.35482...
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def fwhm_to_sigma(fwhm: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """Standard deviation ``s = FWHM / (2 sqrt(2 ln 2))`` of a Gaussian of full width at half maximum ``fwhm``.

    Arguments:
        fwhm: full width at half maximum, any length unit (the result is in the same unit).
    """
    return jnp.asarray(fwhm) / FWHM_PER_SIGMA


def sigma_to_fwhm(sigma: Float[ArrayLike, "*s"]) -> Float[Array, "*s"]:
    """Full width at half maximum ``FWHM = 2 sqrt(2 ln 2) s`` of a Gaussian of s.d. ``sigma``.

    Arguments:
        sigma: standard deviation, any length unit (the result is in the same unit).
    """
    return jnp.asarray(sigma) * FWHM_PER_SIGMA


def pixel_fractions(
    centres: Float[ArrayLike, " n"],
    position: Float[ArrayLike, "*s"],
    sigma: Float[ArrayLike, "*s"],
    pixel: Float[ArrayLike, ""],
    integrated: bool = True,
) -> Float[Array, "*s n"]:
    """Fraction of a 1D Gaussian (mean ``position``, s.d. ``sigma``) that falls into each pixel.

    Integrated (default): ``E = 1/2 [erf((c - x0 + a/2) / (sqrt(2) s)) - erf((c - x0 - a/2) / (sqrt(2) s))]``
    for a pixel of side ``a`` centred at ``c``; point-sampled: ``E = a / (sqrt(2 pi) s)
    exp(-(c - x0)^2 / (2 s^2))``. The product of a row factor and a column factor is the 2D
    fraction of a separable Gaussian PSF in a pixel (see the module docstring).

    Arguments:
        centres: (n,) pixel centres.
        position: Gaussian means, shape S (broadcast against ``sigma``).
        sigma: Gaussian s.d.s (> 0), shape S.
        pixel: pixel side ``a``.
        integrated: True for the pixel integral (erf), False for point sampling at the centres.

    Returns:
        array S + (n,): the fraction in every pixel for every Gaussian (same unit-free values
        whatever the length unit).
    """
    d = jnp.asarray(centres) - jnp.asarray(position)[..., None]
    s = jnp.asarray(sigma)[..., None]
    if integrated:
        scale = 1.0 / (math.sqrt(2.0) * s)
        return 0.5 * (erf((d + 0.5 * pixel) * scale) - erf((d - 0.5 * pixel) * scale))
    return jnp.asarray(pixel) / (math.sqrt(2.0 * math.pi) * s) * jnp.exp(-0.5 * (d / s) ** 2)
