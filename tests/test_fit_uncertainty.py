"""Uncertainty in the fitting engine: Gaussian and Poisson Fisher information, the one inversion
(covariance_from_fisher) behind covariance and CRLB, Wald intervals. References are closed forms
and float64 NumPy finite differences, never the code under test.

Parametrised over float32/float64 (and jit/no-jit where a function is meant to be traced).
Tolerances per dtype: float32 arithmetic has a unit roundoff of 6e-8; sums of ~50 terms and a
3 x 3 or 4 x 4 inverse of a well-conditioned (unit-diagonal-scaled) matrix lose at most a few
hundred ulps -> 1e-5 relative; float64 -> 1e-10 (1e-7 where the reference itself is a central
difference, whose truncation error is ~h^2 = 1e-10 relative at h = 1e-5 times the scale).
"""

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax import fit

DTYPES = [jnp.float32, jnp.float64]
RTOL = {jnp.float32: 1e-5, jnp.float64: 1e-10}
RTOL_FD = {jnp.float32: 1e-5, jnp.float64: 1e-7}


def _precision(dtype):
    """float64 needs JAX's x64 mode for the duration of the test."""
    return jax.enable_x64(True) if dtype == jnp.float64 else contextlib.nullcontext()


def _maybe_jit(fn, use_jit):
    return jax.jit(fn) if use_jit else fn


def exp_decay(theta, t):
    """Expected counts A exp(-t / tau); theta = (A, tau)."""
    return theta[0] * jnp.exp(-t / theta[1])


def gaussian_spot(theta, xy):
    """A Gaussian spot of N photons at (x0, y0), width s = 1.3 px, on background b photons/px.

    theta = (x0, y0, N, b); xy = (2, M) pixel centres. (Point-sampled PSF, as in the SMLM CRLB of
    Ober et al. 2004 without pixel integration: enough for a check of the Fisher machinery.)"""
    s = 1.3
    r2 = (xy[0] - theta[0]) ** 2 + (xy[1] - theta[1]) ** 2
    return theta[2] / (2 * math.pi * s**2) * jnp.exp(-r2 / (2 * s**2)) + theta[3]


def _spot_grid():
    g = np.arange(9.0) - 4.0
    x, y = np.meshgrid(g, g)
    return np.stack([x.ravel(), y.ravel()])


def _fd_jacobian(f, theta, rel=1e-5):
    """Central-difference Jacobian of a float64 NumPy function (step ``rel`` times |theta_j| or 1)."""
    theta = np.asarray(theta, np.float64)
    cols = []
    for j in range(theta.size):
        h = rel * max(abs(theta[j]), 1.0)
        e = np.zeros_like(theta)
        e[j] = h
        cols.append((f(theta + e) - f(theta - e)) / (2 * h))
    return np.stack(cols, axis=1)


def _spot_numpy(theta, xy):
    s = 1.3
    r2 = (xy[0] - theta[0]) ** 2 + (xy[1] - theta[1]) ** 2
    return theta[2] / (2 * math.pi * s**2) * np.exp(-r2 / (2 * s**2)) + theta[3]


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_fisher_of_an_exponential_decay_is_the_closed_form(dtype, use_jit):
    # I = sum_i (1/mu_i) g_i g_i^T, g_i = (e_i, A t_i e_i / tau^2), e_i = exp(-t_i / tau)
    t = np.linspace(0.0, 5.0, 50)
    amp, tau = 200.0, 1.3
    e = np.exp(-t / tau)
    g = np.stack([e, amp * t * e / tau**2], axis=1)
    expected = g.T @ (g / (amp * e)[:, None])
    with _precision(dtype):
        info = _maybe_jit(lambda th, tt: fit.poisson_fisher_information(exp_decay, th, tt), use_jit)(
            jnp.asarray([amp, tau], dtype), jnp.asarray(t, dtype)
        )
        assert info.dtype == dtype
        np.testing.assert_allclose(np.asarray(info, np.float64), expected, rtol=RTOL[dtype])


@pytest.mark.parametrize("likelihood", ["poisson", "gaussian"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fisher_of_a_gaussian_spot_matches_finite_differences(dtype, likelihood):
    # the autodiff Jacobian inside the Fisher information against a float64 central difference
    xy = _spot_grid()
    theta = np.array([0.3, -0.4, 2000.0, 10.0])
    jac = _fd_jacobian(lambda th: _spot_numpy(th, xy), theta)
    mu = _spot_numpy(theta, xy)
    sigma = np.sqrt(mu + 4.0)  # Gaussian case: an EMCCD-like variance, known (not a function of theta)
    weight = 1.0 / mu if likelihood == "poisson" else 1.0 / sigma**2
    expected = jac.T @ (jac * weight[:, None])
    with _precision(dtype):
        th, grid = jnp.asarray(theta, dtype), jnp.asarray(xy, dtype)
        if likelihood == "poisson":
            info = fit.poisson_fisher_information(gaussian_spot, th, grid)
        else:
            info = fit.fisher_information(gaussian_spot, th, jnp.asarray(sigma, dtype), grid)
        # entries span 1e-4 (N, N) to 1e3 (x0, x0): compare relative to each diagonal scale
        scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
        np.testing.assert_allclose(np.asarray(info, np.float64) / scale, expected / scale, atol=RTOL_FD[dtype])


@pytest.mark.parametrize("use_jit", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gaussian_crlb_of_a_linear_model_is_the_inverse_information(dtype, use_jit):
    # y = X theta + noise(sigma): the Fisher information is exactly X^T W X, the CRLB its inverse
    rng = np.random.default_rng(5)
    x = rng.normal(size=(30, 3)) * np.array([10.0, 1.0, 0.1])
    sigma = rng.uniform(0.5, 2.0, 30)
    expected_cov = np.linalg.inv(x.T @ (x / sigma[:, None] ** 2))
    with _precision(dtype):
        theta, xs, sg = jnp.asarray([1.0, -2.0, 0.5], dtype), jnp.asarray(x, dtype), jnp.asarray(sigma, dtype)
        bound = _maybe_jit(lambda th, s, a: fit.crlb(lambda t, xx: xx @ t, th, s, a), use_jit)(theta, sg, xs)
        cov = _maybe_jit(lambda th, s, a: fit.parameter_covariance(lambda t, xx: xx @ t, th, s, a), use_jit)(
            theta, sg, xs
        )
        np.testing.assert_allclose(np.asarray(bound, np.float64), np.sqrt(np.diag(expected_cov)), rtol=RTOL[dtype])
        np.testing.assert_allclose(
            np.asarray(cov, np.float64), expected_cov, rtol=RTOL[dtype], atol=RTOL[dtype] * np.abs(expected_cov).max()
        )


@pytest.mark.parametrize("dtype", DTYPES)
def test_poisson_crlb_of_a_linear_intensity_is_the_inverse_information(dtype):
    # mu = X theta > 0 (two positive components mixed in 40 bins): I = X^T diag(1/mu) X exactly
    rng = np.random.default_rng(6)
    x = rng.uniform(0.1, 1.0, size=(40, 2))
    theta = np.array([300.0, 50.0])
    mu = x @ theta
    expected = np.sqrt(np.diag(np.linalg.inv(x.T @ (x / mu[:, None]))))
    with _precision(dtype):
        bound = fit.poisson_crlb(lambda t, xx: xx @ t, jnp.asarray(theta, dtype), jnp.asarray(x, dtype))
        np.testing.assert_allclose(np.asarray(bound, np.float64), expected, rtol=RTOL[dtype])


def test_covariance_from_fisher_inverts_the_free_block_and_scales():
    info = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]])
    with jax.enable_x64(True):
        cov = np.asarray(fit.covariance_from_fisher(jnp.asarray(info), 2.0, free=(True, False, True)))
    np.testing.assert_allclose(
        cov[np.ix_([0, 2], [0, 2])], 2.0 * np.linalg.inv(info[np.ix_([0, 2], [0, 2])]), rtol=1e-12
    )
    assert np.all(cov[1] == 0) and np.all(cov[:, 1] == 0)


def test_wald_intervals_are_the_closed_form():
    # z(0.95) = 1.959963984540054 (Phi^-1(0.975)); log-scale: theta exp(+-z sd / theta)
    z = 1.959963984540054
    assert fit.normal_quantile(0.95) == pytest.approx(z, rel=1e-15)
    with jax.enable_x64(True):
        lo, hi = fit.wald_intervals(
            jnp.asarray([2.0, 5.0]), jnp.diag(jnp.asarray([0.04, 0.25])), log_scale=(False, True)
        )
    np.testing.assert_allclose(np.asarray(lo), [2.0 - z * 0.2, 5.0 * math.exp(-z * 0.5 / 5.0)], rtol=1e-14)
    np.testing.assert_allclose(np.asarray(hi), [2.0 + z * 0.2, 5.0 * math.exp(z * 0.5 / 5.0)], rtol=1e-14)


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5])
def test_levels_outside_the_open_unit_interval_are_refused(level):
    with pytest.raises(ValueError, match="level"):
        fit.normal_quantile(level)
