"""The optics engine against scipy quadrature and the Gaussian's closed-form half maximum."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from fluojax.optics import fwhm_to_sigma, pixel_fractions, sigma_to_fwhm


def _quad_fraction(lo, hi, x0, s):
    """The 1D Gaussian density integrated over [lo, hi] by scipy's adaptive quadrature."""
    value, _ = integrate.quad(lambda x: math.exp(-0.5 * ((x - x0) / s) ** 2) / (math.sqrt(2 * math.pi) * s), lo, hi)
    return value


def test_integrated_fractions_equal_quadrature_over_each_pixel():
    a, x0, s = 100.0, 437.3, 93.4
    centres = (np.arange(12) + 0.5) * a
    got = np.asarray(pixel_fractions(jnp.asarray(centres, jnp.float32), jnp.float32(x0), jnp.float32(s), a))
    ref = np.array([_quad_fraction(c - a / 2, c + a / 2, x0, s) for c in centres])
    # float32 erf is good to ~1e-7 absolute; half a difference of two erfs to ~2e-7
    np.testing.assert_allclose(got, ref, rtol=0, atol=3e-7)


def test_fractions_broadcast_over_several_gaussians():
    # shape S + (n,): every row is the same computation for its own (position, sigma)
    a = 1.0
    centres = jnp.arange(5.0) + 0.5
    pos, sig = jnp.array([[1.2, 3.7]]), jnp.array([[0.6, 1.3]])
    got = np.asarray(pixel_fractions(centres, pos, sig, a))
    assert got.shape == (1, 2, 5)
    for k in range(2):
        ref = [_quad_fraction(c - 0.5, c + 0.5, float(pos[0, k]), float(sig[0, k])) for c in np.asarray(centres)]
        np.testing.assert_allclose(got[0, k], ref, atol=3e-7)


def test_point_sampled_fractions_are_density_times_pixel():
    a, x0, s = 50.0, 210.0, 80.0
    centres = (np.arange(10) + 0.5) * a
    got = np.asarray(pixel_fractions(jnp.asarray(centres), x0, s, a, integrated=False))
    ref = a * np.exp(-0.5 * ((centres - x0) / s) ** 2) / (np.sqrt(2 * np.pi) * s)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_fwhm_is_where_the_gaussian_falls_to_half():
    s = 93.4
    fwhm = float(sigma_to_fwhm(s))
    # exp(-(w/2)^2 / (2 s^2)) = 1/2 at the half width; w is float32 (relative error ~6e-8)
    np.testing.assert_allclose(math.exp(-((fwhm / 2) ** 2) / (2 * s**2)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(fwhm_to_sigma(fwhm)), s, rtol=1e-6)
    np.testing.assert_allclose(float(fwhm_to_sigma(220.0)), 220.0 / 2.3548200450309493, rtol=1e-7)


def test_gradient_in_position_matches_finite_differences():
    a, s = 1.0, 0.9
    centres = jnp.arange(6.0) + 0.5
    f = lambda x0: pixel_fractions(centres, x0, s, a)[2]  # noqa: E731
    g = float(jax.grad(f)(jnp.float32(2.3)))
    with jax.enable_x64(True):
        h = 1e-5
        c64 = jnp.arange(6.0, dtype=jnp.float64) + 0.5
        fd = float((pixel_fractions(c64, 2.3 + h, s, a)[2] - pixel_fractions(c64, 2.3 - h, s, a)[2]) / (2 * h))
    # float32 gradient of erf differences: ~1e-6 relative
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)
