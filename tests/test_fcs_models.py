"""FCS forward models against hand-computed values, closed-form limits and adaptive quadrature."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from fluojax.fcs import models as m

FRAME_3D_S = 2.04e-3


def _bracket(p):
    """Seed eq. 2 bracket, written out with the math module."""
    return math.erf(p) + (math.exp(-p * p) - 1.0) / (math.sqrt(math.pi) * p)


@pytest.mark.parametrize("p", [1e-2, 0.3, 1.0, 2.5, 8.0])
def test_pixel_overlap_factor_matches_hand_formula(p):
    # float32 evaluation vs double-precision formula: 1e-6 relative covers float32 rounding
    assert float(m.pixel_overlap_factor(jnp.float32(p))) == pytest.approx(_bracket(p), rel=2e-6)


def test_pixel_overlap_factor_small_p_series_and_gradient_are_finite():
    # below p = 1e-3 the series p/sqrt(pi) (1 - p^2/6) is used; its error there is O(p^4) ~ 1e-12
    p = jnp.float32(2e-4)
    assert float(m.pixel_overlap_factor(p)) == pytest.approx(2e-4 / math.sqrt(math.pi), rel=1e-6)
    grad = jax.grad(lambda q: m.pixel_overlap_factor(q))(p)
    assert np.isfinite(float(grad)) and float(grad) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-4)


def test_acf_2d_itir_matches_hand_computed_values(optics_2d):
    a = 24.0 / 100.0
    w = 0.8 * 0.583 / 1.45
    lags = np.array([1e-3, 1e-2, 0.1, 2.0])
    n, d, ginf = 3.0, 1.7, 0.002
    expected = [_bracket(a / math.sqrt(w * w + 4 * d * t)) ** 2 / n + ginf for t in lags]
    got = m.acf_2d_itir(jnp.asarray(lags), m.ACFParams(n, d, ginf), optics_2d)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=5e-6)


def test_acf_2d_itir_is_safe_for_tiny_and_huge_d_tau(optics_2d):
    # D tau -> 0 gives the tau = 0 amplitude; D tau -> inf gives G ~ a^2 / (pi N s^2) -> 0
    params = lambda d: m.ACFParams(1.0, d, 0.0)  # noqa: E731
    g0 = float(m.acf_2d_itir(0.0, params(1.0), optics_2d))
    assert float(m.acf_2d_itir(1e-12, params(1e-6), optics_2d)) == pytest.approx(g0, rel=1e-6)
    big = m.acf_2d_itir(10.0, params(1e6), optics_2d)
    s2 = (0.8 * 0.583 / 1.45) ** 2 + 4e7
    assert float(big) == pytest.approx(0.24**2 / (math.pi * s2), rel=1e-4)
    grads = jax.grad(lambda d: m.acf_2d_itir(10.0, params(d), optics_2d))(1e6)
    assert np.isfinite(float(grads))


def _spim_shape_reference(dtau, a=0.4, w=1.1 * 0.515, wz=2.2 * 0.515, n=1.333, na=1.0):
    """Seed eq. 4 / (C a^2 sqrt(pi) w_z) by nested adaptive quadrature in the original (z, z')."""
    ta = na / math.sqrt(n * n - na * na)
    lim = 7 * wz

    def inner(z):
        def g(zp):
            big_a = math.sqrt(0.5 * (8 * dtau + (w + abs(z) * ta) ** 2 + (w + abs(zp) * ta) ** 2))
            kern = math.exp(-((z - zp) ** 2) / (4 * dtau)) / math.sqrt(4 * math.pi * dtau)
            return kern * math.exp(-2 * (z * z + zp * zp) / wz**2) * _bracket(a / big_a) ** 2

        s = math.sqrt(2 * dtau)
        pts = sorted({0.0, z, max(-lim, z - 6 * s), min(lim, z + 6 * s)})
        return integrate.quad(g, -lim, lim, points=pts, limit=400, epsabs=0, epsrel=1e-11)[0]

    total = integrate.quad(inner, -lim, lim, points=[0.0], limit=400, epsabs=0, epsrel=1e-10)[0]
    return 2 / (math.sqrt(math.pi) * wz) * total


SPIM_GRID = [(d, lag) for d in (0.02, 1.0, 50.0) for lag in (1, 64, 2048)]


@pytest.mark.parametrize("d,lag", SPIM_GRID)
def test_spim_quadrature_matches_adaptive_reference(optics_3d, d, lag):
    # issue requirement: relative error <= 1e-4 over D 0.02-50 um^2/s and lags 1-2048 frames
    dtau = d * lag * FRAME_3D_S
    ref = _spim_shape_reference(dtau)
    got = float(m.spim_shape(jnp.float32(dtau), optics_3d))
    assert abs(got / ref - 1) <= 1e-4
    with jax.enable_x64(True):  # in float64 the rule itself is good to ~3e-7 (order 12)
        got64 = float(m.spim_shape(jnp.float64(dtau), optics_3d))
    assert abs(got64 / ref - 1) <= 1e-6


def test_plugin_rectangle_rule_is_far_off_for_narrow_diffusion_kernels(optics_3d):
    # the plugin's 80 x 80 rule (step w_z/20 = 57 nm) cannot resolve a 9 nm-wide kernel
    dtau = 0.02 * 1 * FRAME_3D_S
    ref = _spim_shape_reference(dtau)
    rect = float(m.spim_shape_plugin_rectangle(jnp.float32(dtau), optics_3d))
    ours = float(m.spim_shape(jnp.float32(dtau), optics_3d))
    assert abs(rect / ref - 1) > 0.1
    assert abs(ours / ref - 1) < 1e-5


def test_spim_shape_reduces_to_thin_sheet_closed_form_without_defocus(optics_3d):
    # tan(alpha) -> 0 (huge refractive index): S = b(a / sqrt(w^2 + 4 D tau))^2 / sqrt(1 + 4 D tau / w_z^2)
    flat = optics_3d._replace(refractive_index=1e7)
    a, w, wz = 0.4, 1.1 * 0.515, 2.2 * 0.515
    for dtau in (1e-5, 1e-2, 1.0, 30.0):
        closed = _bracket(a / math.sqrt(w * w + 4 * dtau)) ** 2 / math.sqrt(1 + 4 * dtau / wz**2)
        assert float(m.spim_shape(jnp.float32(dtau), flat)) == pytest.approx(closed, rel=1e-5)


def test_spim_table_interpolates_quadrature(optics_3d):
    table = m.spim_shape_table(optics_3d)
    dtau = jnp.asarray(np.logspace(-8, 4, 97), jnp.float32)
    exact = m.spim_shape(dtau, optics_3d)
    interp = m.spim_shape_interpolated(dtau, table)
    # cubic Hermite on a 0.084-step log grid: ~1e-7; float32 logs/exps add ~1e-6
    np.testing.assert_allclose(np.asarray(interp), np.asarray(exact), rtol=5e-6)


def test_acf_3d_gradient_in_d_matches_finite_differences(optics_3d):
    with jax.enable_x64(True):
        lag = jnp.asarray(np.array([1, 16, 256, 2048]) * FRAME_3D_S, jnp.float64)
        g = lambda d: m.acf_3d_spim(lag, m.ACFParams(2.0, d, 0.0), optics_3d)  # noqa: E731
        d0, h = 1.3, 1e-5
        fd = (g(d0 + h) - g(d0 - h)) / (2 * h)
        ad = jax.jacfwd(g)(jnp.float64(d0))
        np.testing.assert_allclose(np.asarray(ad), np.asarray(fd), rtol=1e-6)
