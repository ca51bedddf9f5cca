"""Generic multistart fitting, parameter covariance and Wald confidence intervals (fluojax.fit).

Statistical tolerances: a coverage estimated from n independent datasets has standard error
sqrt(p (1 - p) / n) (0.0049 for p = 0.95, n = 2,000); checks allow 4 standard errors plus 0.01
for the first-order (linearised, z instead of Student t) nature of Wald intervals. Keys/seeds are
fixed, so the tests are deterministic.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax import fit

T = jnp.linspace(0.0, 10.0, 101)
SINE_BOUNDS = dict(lower=[-5.0, 0.1], upper=[5.0, 5.0])


def sine(theta, t):
    return theta[0] * jnp.sin(theta[1] * t)


def test_multistart_finds_the_global_minimum_a_single_bad_start_misses():
    # a frequency fit: chi^2(omega) oscillates, every wrong omega has its own local minimum
    truth = jnp.asarray([1.0, 2.0])
    rng = np.random.default_rng(0)
    sigma = np.full(T.size, 0.1, np.float32)
    y = np.asarray(sine(truth, T)) + sigma * rng.normal(size=T.size).astype(np.float32)
    single = fit.least_squares(sine, y, sigma, jnp.asarray([0.5, 0.7]), T, **SINE_BOUNDS)
    assert abs(float(single.params[1]) - 2.0) > 0.3  # stuck in a local minimum
    assert float(single.chi2_reduced) > 10.0
    starts = jnp.stack([jnp.full(16, 0.5), jnp.linspace(0.2, 4.5, 16)], axis=1)  # includes the bad start's omega region
    multi = jax.jit(lambda d: fit.least_squares_multistart(sine, d, sigma, starts, T, **SINE_BOUNDS))(y)
    assert int(multi.status) == fit.Status.CONVERGED
    np.testing.assert_allclose(np.asarray(multi.params), [1.0, 2.0], atol=0.05)
    assert float(multi.chi2_reduced) == pytest.approx(1.0, abs=0.3)  # 99 degrees of freedom: sd 0.14


def test_multistart_batch_matches_vmapped_multistart_and_handles_invalid_data():
    rng = np.random.default_rng(1)
    omegas = rng.uniform(0.5, 4.0, 5)
    sigma = np.full((5, T.size), 0.05, np.float32)
    data = np.stack([np.asarray(sine(jnp.asarray([1.0, w]), T)) for w in omegas]).astype(np.float32)
    data = data + sigma * rng.normal(size=data.shape).astype(np.float32)
    data[4] = np.nan  # no valid points
    starts = np.stack([np.ones(24), np.linspace(0.2, 4.8, 24)], axis=1).astype(np.float32)
    res = fit.least_squares_multistart_batch(sine, data, sigma, starts, T, chunk=2, **SINE_BOUNDS)
    assert res.params.shape == (5, 2) and isinstance(res.params, np.ndarray)
    assert np.all(res.status[:4] == fit.Status.CONVERGED)
    assert res.status[4] == fit.Status.INVALID_DATA and np.all(np.isnan(res.params[4]))
    np.testing.assert_allclose(np.abs(res.params[:4, 1]), omegas[:4], rtol=0.01)
    vm = jax.vmap(lambda d, s: fit.least_squares_multistart(sine, d, s, starts, T, **SINE_BOUNDS))(data[:4], sigma[:4])
    np.testing.assert_allclose(res.params[:4], np.asarray(vm.params), rtol=1e-5)


def linear(theta, x):
    return x @ theta


def test_covariance_of_a_linear_model_is_the_closed_form():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(40, 3))
    sigma = rng.uniform(0.5, 2.0, 40)
    theta = jnp.asarray([1.0, -2.0, 0.5])
    with jax.enable_x64(True):
        xj = jnp.asarray(x)
        cov = np.asarray(fit.parameter_covariance(linear, jnp.asarray(theta, jnp.float64), jnp.asarray(sigma), xj))
        expected = np.linalg.inv(x.T @ (x / sigma[:, None] ** 2))
        np.testing.assert_allclose(cov, expected, rtol=1e-10)
        # unknown noise level: scaled by the given residual variance (e.g. the reduced chi^2)
        scaled = np.asarray(
            fit.parameter_covariance(linear, jnp.asarray(theta, jnp.float64), jnp.asarray(sigma), xj, 2.5)
        )
        np.testing.assert_allclose(scaled, 2.5 * expected, rtol=1e-10)
        # a fixed parameter: zero row/column, the free block is the inverse of the free sub-block
        fixed = np.asarray(
            fit.parameter_covariance(
                linear, jnp.asarray(theta, jnp.float64), jnp.asarray(sigma), xj, free=(True, False, True)
            )
        )
        sub = x[:, [0, 2]]
        np.testing.assert_allclose(
            fixed[np.ix_([0, 2], [0, 2])], np.linalg.inv(sub.T @ (sub / sigma[:, None] ** 2)), rtol=1e-10
        )
        assert np.all(fixed[1] == 0) and np.all(fixed[:, 1] == 0)
        # zero / infinite sigma: the point is ignored
        s2 = sigma.copy()
        s2[:5] = 0.0
        s2[5] = np.inf
        cov2 = np.asarray(fit.parameter_covariance(linear, jnp.asarray(theta, jnp.float64), jnp.asarray(s2), xj))
        np.testing.assert_allclose(cov2, np.linalg.inv(x[6:].T @ (x[6:] / sigma[6:, None] ** 2)), rtol=1e-10)
    # float32: unit-diagonal scaling keeps it accurate for parameters of very different scale
    xs = x * np.array([1e3, 1.0, 1e-3])
    cov32 = np.asarray(
        fit.parameter_covariance(linear, theta, jnp.asarray(sigma, jnp.float32), jnp.asarray(xs, jnp.float32))
    )
    exp32 = np.linalg.inv(xs.T @ (xs / sigma[:, None] ** 2))
    np.testing.assert_allclose(np.diag(cov32), np.diag(exp32), rtol=1e-3)


def exp_decay(theta, t):
    return theta[0] * jnp.exp(-theta[1] * t)


@pytest.mark.parametrize("known_sigma", [True, False])
def test_confidence_intervals_cover_the_truth_95_percent(known_sigma):
    n, m = 2000, 40
    t = jnp.linspace(0.0, 4.0, m)
    truth = np.array([2.0, 1.3], np.float32)
    rng = np.random.default_rng(3 + known_sigma)
    clean = np.asarray(exp_decay(jnp.asarray(truth), t))
    noise_sd = 0.05
    data = (clean + noise_sd * rng.normal(size=(n, m))).astype(np.float32)
    sigma = np.full((n, m), noise_sd if known_sigma else 1.0, np.float32)
    bounds = dict(lower=[0.0, 0.0], upper=[10.0, 10.0])
    res = fit.least_squares_batch(exp_decay, data, sigma, [1.0, 1.0], t, **bounds)
    ok = res.status == fit.Status.CONVERGED
    assert ok.mean() > 0.99  # a few hit max_steps in float32; judged on the converged ones
    rv = None if known_sigma else jnp.asarray(res.chi2_reduced)

    @jax.jit
    def cis(theta, s, r):
        return jax.vmap(lambda a, b, c: fit.confidence_intervals(exp_decay, a, b, t, c if r is not None else None))(
            theta, s, r if r is not None else jnp.zeros(n)
        )

    lo, hi = cis(jnp.asarray(res.params), jnp.asarray(sigma), rv)
    covered = ((np.asarray(lo) <= truth) & (truth <= np.asarray(hi)))[ok]
    # 2,000 datasets: SE 0.0049; 4 SE + 0.01 for the linearisation (and z vs t_38 = 2.02 when s^2 is estimated: 0.944)
    np.testing.assert_allclose(covered.mean(axis=0), 0.95, atol=0.03)
    if not known_sigma:
        # the reduced chi^2 with unit sigma estimates the noise variance (relative SE sqrt(2/38)/sqrt(n))
        assert np.mean(res.chi2_reduced[ok]) == pytest.approx(noise_sd**2, rel=0.02)


def test_log_scale_intervals_are_positive_and_geometric():
    theta = jnp.asarray([2.0, 1.3])
    t = jnp.linspace(0.0, 4.0, 40)
    sigma = jnp.full(40, 0.5)
    lo, hi = fit.confidence_intervals(exp_decay, theta, sigma, t, level=0.99, log_scale=(False, True))
    sd = np.sqrt(np.diag(np.asarray(fit.parameter_covariance(exp_decay, theta, sigma, t))))
    z = 2.5758293
    np.testing.assert_allclose([float(lo[0]), float(hi[0])], [2.0 - z * sd[0], 2.0 + z * sd[0]], rtol=1e-5)
    np.testing.assert_allclose(float(lo[1] * hi[1]), 1.3**2, rtol=1e-5)
    np.testing.assert_allclose(float(hi[1] / lo[1]), np.exp(2 * z * sd[1] / 1.3), rtol=1e-4)
    assert float(lo[1]) > 0
