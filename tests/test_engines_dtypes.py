"""The fitting and batching engines in float32 and float64, compiled and eager, against closed forms.

Every test runs four times: float32 / float64 (float64 inside ``jax.enable_x64(True)``, entered
by the ``dtype`` fixture and left when the test ends, so x64 never leaks into other tests) and
jitted / not jitted. Tolerances are per dtype (``TOL``), each justified where it is used.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import batching, fit

Z95 = 1.959963984540054  # Phi^-1(0.975)


def _line(theta, x):
    return theta[0] + theta[1] * x


def _weighted_line_fit(x, y, sigma):
    """Closed-form weighted least squares of y = a + b x (normal equations, float64 NumPy) and
    the covariance (J^T W J)^-1 of (a, b)."""
    w = 1.0 / sigma**2
    s, sx, sxx, sy, sxy = w.sum(), (w * x).sum(), (w * x * x).sum(), (w * y).sum(), (w * x * y).sum()
    det = s * sxx - sx**2
    theta = np.array([(sxx * sy - sx * sxy) / det, (s * sxy - sx * sy) / det])
    cov = np.array([[sxx, -sx], [-sx, s]]) / det
    return theta, cov


def test_least_squares_matches_the_closed_form_weighted_line_fit(dtype, maybe_jit):
    rng = np.random.default_rng(0)
    x = np.linspace(-1.0, 2.0, 40)
    sigma = 0.1 + 0.05 * np.abs(x)
    y = 0.7 - 1.3 * x + sigma * rng.normal(size=x.size)
    expected, cov = _weighted_line_fit(x, y, sigma)
    # a linear model: LM's first full step lands on the minimum; the tolerances only decide when
    # it stops, so tighten them to each dtype's resolution
    solver = (
        fit.LevenbergMarquardt(rtol=1e-6, atol=1e-7) if dtype == jnp.float32 else fit.LevenbergMarquardt(1e-12, 1e-14)
    )
    run = maybe_jit(
        lambda y_, s_: fit.least_squares(_line, y_, s_, jnp.zeros(2, dtype), jnp.asarray(x, dtype), solver=solver)
    )
    res = run(jnp.asarray(y, dtype), jnp.asarray(sigma, dtype))
    assert res.params.dtype == dtype
    assert int(res.status) == fit.Status.CONVERGED
    # error in units of the parameters' standard errors: float32 rounding of 40 residuals
    # (~1e-7 relative) moves the minimum by ~1e-6 sd (1e-4: a margin of 100); float64 by ~1e-14 sd
    sd = np.sqrt(np.diag(cov))
    tol = {jnp.float32: 1e-4, jnp.float64: 1e-8}[dtype.type]
    np.testing.assert_array_less(np.abs(np.asarray(res.params, np.float64) - expected) / sd, tol)
    # chi^2 / (n - 2) at the closed-form minimum
    chi2 = np.sum(((expected[0] + expected[1] * x - y) / sigma) ** 2) / (x.size - 2)
    np.testing.assert_allclose(float(res.chi2_reduced), chi2, rtol={jnp.float32: 1e-5, jnp.float64: 1e-10}[dtype.type])


# relative tolerances of the information matrices and bounds below: a float32 sum of ~50 terms
# and one small inverse carries ~1e-7 of rounding (1e-5: a margin of ~100); float64 ~1e-15
TOL = {jnp.float32: 1e-5, jnp.float64: 1e-12}


def test_gaussian_fisher_information_and_crlb_of_a_mean_are_n_over_sigma_squared(dtype, maybe_jit):
    n, sigma = 50, 0.3
    mean_model = lambda theta, _: jnp.full(n, theta[0])  # noqa: E731
    theta = jnp.asarray([2.0], dtype)
    info = maybe_jit(lambda t: fit.fisher_information(mean_model, t, jnp.full(n, sigma, dtype)))(theta)
    bound = maybe_jit(lambda t: fit.crlb(mean_model, t, jnp.full(n, sigma, dtype)))(theta)
    assert info.dtype == dtype and bound.dtype == dtype
    np.testing.assert_allclose(np.asarray(info), [[n / sigma**2]], rtol=TOL[dtype.type])
    # Var(mean) >= sigma^2 / n
    np.testing.assert_allclose(np.asarray(bound), [sigma / np.sqrt(n)], rtol=TOL[dtype.type])


def test_parameter_covariance_of_a_weighted_line_is_the_normal_equations_inverse(dtype, maybe_jit):
    x = np.linspace(-1.0, 2.0, 30)
    sigma = 0.1 + 0.05 * np.abs(x)
    _, expected = _weighted_line_fit(x, np.zeros_like(x), sigma)
    cov = maybe_jit(lambda t: fit.parameter_covariance(_line, t, jnp.asarray(sigma, dtype), jnp.asarray(x, dtype)))(
        jnp.asarray([0.7, -1.3], dtype)
    )
    assert cov.dtype == dtype
    np.testing.assert_allclose(np.asarray(cov, np.float64), expected, rtol=TOL[dtype.type], atol=0)


def test_poisson_fisher_information_matches_the_hand_derived_decay(dtype, maybe_jit):
    # mu_i = A exp(-x_i / tau): dmu/dA = e_i, dmu/dtau = A x_i e_i / tau^2; I = sum_i J_i J_i^T / mu_i
    x = np.linspace(0.0, 5.0, 40)
    a, tau = 30.0, 1.7
    e = np.exp(-x / tau)
    jac = np.stack([e, a * x * e / tau**2], 1)
    expected = jac.T @ (jac / (a * e)[:, None])
    decay = lambda theta, xs: theta[0] * jnp.exp(-xs / theta[1])  # noqa: E731
    theta = jnp.asarray([a, tau], dtype)
    info = maybe_jit(lambda t: fit.poisson_fisher_information(decay, t, jnp.asarray(x, dtype)))(theta)
    assert info.dtype == dtype
    np.testing.assert_allclose(np.asarray(info, np.float64), expected, rtol=TOL[dtype.type])
    # one parameter, counts of mean lambda in n bins: CRLB = sqrt(lambda / n)
    flat = lambda theta, _: jnp.full(25, theta[0])  # noqa: E731
    bound = maybe_jit(lambda t: fit.poisson_crlb(flat, t))(jnp.asarray([9.0], dtype))
    np.testing.assert_allclose(np.asarray(bound), [np.sqrt(9.0 / 25)], rtol=TOL[dtype.type])


def test_wald_intervals_of_a_gaussian_mean_cover_it_at_their_level(dtype, maybe_jit):
    # 4,000 samples of n = 20 points: the mean's interval mean +- 1.96 sigma / sqrt(n) covers the
    # truth with probability 0.95; the observed rate has s.d. sqrt(0.95 * 0.05 / 4000) = 0.0034
    rng = np.random.default_rng(1)
    n, sigma, mu, reps = 20, 0.5, 1.5, 4000
    means = (mu + sigma * rng.normal(size=(reps, n))).mean(axis=1)
    cov = jnp.asarray([[sigma**2 / n]], dtype)
    intervals = maybe_jit(jax.vmap(lambda m: fit.wald_intervals(m[None], cov)))
    lower, upper = intervals(jnp.asarray(means, dtype))
    assert lower.dtype == dtype
    half = Z95 * sigma / np.sqrt(n)
    np.testing.assert_allclose(np.asarray(upper[:, 0] - lower[:, 0]), 2 * half, rtol=TOL[dtype.type])
    coverage = np.mean((np.asarray(lower[:, 0]) <= mu) & (mu <= np.asarray(upper[:, 0])))
    assert abs(coverage - 0.95) < 4 * 0.0034
    # log-scale parameters: theta exp(+-z sd / theta), so the limits' ratio is exp(2 z sd / theta)
    lo, hi = maybe_jit(lambda t: fit.wald_intervals(t, jnp.asarray([[0.04]], dtype), log_scale=(True,)))(
        jnp.asarray([2.0], dtype)
    )
    np.testing.assert_allclose(float(hi[0] / lo[0]), np.exp(2 * Z95 * 0.2 / 2.0), rtol=TOL[dtype.type])


def test_map_padded_equals_one_plain_vmap(dtype, maybe_jit):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(23, 6)), dtype)
    w = jnp.asarray(rng.normal(size=6), dtype)
    row = jax.vmap(lambda r, s: jnp.sum(jnp.sin(r) * w) + s)
    f = maybe_jit(row)
    out = batching.map_padded(lambda chunk, _count: f(*chunk), (x, x[:, 0]), 5)
    expected = row(x, x[:, 0])
    assert out.dtype == dtype and out.shape == (23,)
    # the same per-row arithmetic in batches of 5 and of 23: equal up to a few ulp (XLA may
    # vectorise a reduction differently for another batch shape)
    np.testing.assert_allclose(out, np.asarray(expected), rtol=8 * np.finfo(dtype).eps, atol=8 * np.finfo(dtype).eps)


def test_float64_does_not_leak_out_of_the_dtype_fixture():
    assert jnp.asarray(1.0).dtype == jnp.float32
