"""Estimator comparison harness: statistics against closed forms, CRLB helpers, timing, rendering."""

import csv
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fluojax import compare, fit, plotting

KEY = jax.random.key(0)
N_DRAWS = 16  # Gaussian draws per sample
SIGMA = 1.0  # their s.d.


def _gaussian_draws(key, theta):
    """(N, 16) draws of Normal(theta, 1): the sample mean has s.d. 1/4."""
    return theta[:, :1] + SIGMA * jax.random.normal(key, (theta.shape[0], N_DRAWS))


def _sample_mean(data):
    return jnp.mean(data, axis=1)


def _identity_data(key, theta):
    """Noise-free 'data' that are the truth itself: lets an estimator be exact or distort it."""
    return theta


def _run(estimators, simulate, grid, n=200, **kw):
    kw.setdefault("param_names", ["theta"])
    return compare.compare_estimators(estimators, simulate, grid, n, KEY, progress=False, **kw)


def test_reports_known_bias_of_biased_estimator():
    n = 2000
    rep = _run({"mean": _sample_mean, "mean+0.3": lambda d: _sample_mean(d) + 0.3}, _gaussian_draws, [1.0, 2.0, 5.0], n)
    # the bias estimate has standard error (sigma / sqrt(16)) / sqrt(N) = 0.0056; allow 4 of them
    se = SIGMA / math.sqrt(N_DRAWS) / math.sqrt(n)
    np.testing.assert_allclose(rep.bias[1, :, 0], 0.3, atol=4 * se)
    np.testing.assert_allclose(rep.bias[0, :, 0], 0.0, atol=4 * se)
    # a constant shift changes the bias, not the scatter: std identical to the unbiased estimator's
    np.testing.assert_allclose(rep.std[1], rep.std[0], rtol=1e-4)


def test_log_scale_parameter_reports_bias_of_ln_theta_and_mape():
    grid = [0.1, 1.0, 30.0]
    rep = _run({"x1.1": lambda d: 1.1 * d}, _identity_data, grid, n=50, param_names=["D"], log_scale=["D"])
    # deterministic estimator on float32 data: only float32 rounding (~1e-7 relative) remains
    np.testing.assert_allclose(rep.bias[0, :, 0], math.log(1.1), rtol=1e-5)
    np.testing.assert_allclose(rep.rmse[0, :, 0], math.log(1.1), rtol=1e-5)
    np.testing.assert_allclose(rep.std[0, :, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(rep.mape[0, :, 0], 10.0, rtol=1e-5)


def test_crlb_of_log_scale_parameter_is_relative():
    grid = np.array([0.5, 2.0, 8.0])
    rep = _run(
        {"id": lambda d: d},
        _identity_data,
        grid,
        n=4,
        param_names=["D"],
        log_scale=[True],
        crlb_fn=lambda th: 0.1 * th**2,
    )
    # delta method: sd(ln D) = sd(D) / D
    np.testing.assert_allclose(rep.crlb[:, 0], 0.1 * grid, rtol=1e-12)


def test_crlb_of_gaussian_mean_equals_closed_form():
    n, sigma = 25, 0.7
    crlb_fn = compare.gaussian_crlb_fn(lambda th, a: th[0] * jnp.ones(n), lambda th: jnp.full(n, sigma))
    # float32 Jacobian and inverse: ~1e-6 relative
    np.testing.assert_allclose(crlb_fn(np.array([3.0])), [sigma / math.sqrt(n)], rtol=1e-5)
    # a scalar sigma is broadcast to the model output
    np.testing.assert_allclose(
        compare.gaussian_crlb_fn(lambda th, a: th[0] * jnp.ones(n), sigma)(np.array([3.0])),
        [sigma / math.sqrt(n)],
        rtol=1e-5,
    )


def test_poisson_crlb_equals_closed_form():
    n, lam = 40, 7.5
    crlb_fn = compare.poisson_crlb_fn(lambda th, a: th[0] * jnp.ones(n))
    # Poisson mean over n bins: I = n / lambda
    np.testing.assert_allclose(crlb_fn(np.array([lam])), [math.sqrt(lam / n)], rtol=1e-5)
    # one-parameter exponential decay mu_i = A exp(-t_i / tau), A known:
    # I(tau) = sum_i (d mu_i / d tau)^2 / mu_i = sum_i A exp(-t_i/tau) t_i^2 / tau^4
    t = np.linspace(0.0, 5.0, 50)
    amp, tau = 200.0, 1.3
    decay = lambda th, a: amp * jnp.exp(-a / th[0])  # noqa: E731
    info = np.sum(amp * np.exp(-t / tau) * t**2 / tau**4)
    np.testing.assert_allclose(
        fit.poisson_crlb(decay, jnp.array([tau]), jnp.asarray(t)), [1 / math.sqrt(info)], rtol=1e-4
    )
    # crlb_from_fisher on the same Fisher information gives the same bound
    via_fisher = compare.crlb_from_fisher(
        lambda th: fit.poisson_fisher_information(decay, jnp.asarray(th), jnp.asarray(t))
    )
    np.testing.assert_allclose(via_fisher(np.array([tau])), [1 / math.sqrt(info)], rtol=1e-4)


def test_efficiency_of_sample_mean_is_one_and_of_half_sample_mean_is_half():
    n = 4000
    crlb_fn = compare.gaussian_crlb_fn(lambda th, a: th[0] * jnp.ones(N_DRAWS), SIGMA)
    estimators = {"mean": _sample_mean, "half": lambda d: jnp.mean(d[:, : N_DRAWS // 2], axis=1)}
    rep = _run(estimators, _gaussian_draws, [1.0, 2.0, 5.0], n, crlb_fn=crlb_fn)
    # MSE from N samples has relative s.e. sqrt(2 / N) = 2.2 %; tolerances are ~4.5 s.e.
    np.testing.assert_allclose(rep.efficiency[0, :, 0], 1.0, atol=0.1)
    np.testing.assert_allclose(rep.efficiency[1, :, 0], 0.5, atol=0.05)


def test_spearman_of_perfect_estimator_is_one_and_of_constant_is_nan():
    rep = _run(
        {"exact": lambda d: d, "constant": lambda d: jnp.full(d.shape, 2.0)}, _identity_data, [1.0, 3.0, 2.0, 7.0], n=10
    )
    assert rep.spearman[0, 0] == pytest.approx(1.0, abs=1e-12)
    # defined as NaN: a constant has no ranks to correlate (scipy says the same, with a warning)
    assert np.isnan(rep.spearman[1, 0])


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(3)
    x = np.repeat([1.0, 2.0, 3.0, 4.0], 25)
    y = x + rng.normal(size=x.size)
    y[:10] = y[0]  # ties in the estimates too
    assert compare.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)


def test_non_finite_and_non_positive_log_estimates_are_failures_excluded_from_stats():
    n = 40

    def flaky(d):
        out = np.array(d, np.float64) * 1.2
        out[0::4] = np.nan
        out[1::8] = np.inf
        out[2::8] = -1.0  # no logarithm: a failure for a log-scale parameter
        return out

    rep = _run({"flaky": flaky}, _identity_data, [1.0, 4.0], n, param_names=["D"], log_scale=True)
    failed = np.zeros(n, bool)
    failed[0::4] = failed[1::8] = failed[2::8] = True
    np.testing.assert_allclose(rep.failed_fraction[0], failed.mean(), rtol=1e-12)
    assert np.all(rep.n_valid[0] == n - failed.sum())
    # the survivors are exactly 1.2 x truth (float32 rounding only)
    np.testing.assert_allclose(rep.bias[0, :, 0], math.log(1.2), rtol=1e-5)
    np.testing.assert_allclose(rep.mape[0, :, 0], 20.0, rtol=1e-5)
    assert rep.spearman[0, 0] == pytest.approx(1.0)


def test_data_simulated_once_per_point_with_fold_in_key_and_shared_by_estimators():
    seen = {"sim": [], "a": [], "b": []}

    def simulate(key, theta):
        seen["sim"].append(jax.random.key_data(key))
        return _gaussian_draws(key, theta)

    def recorder(name):
        def est(d):
            seen[name].append(np.asarray(d))
            return _sample_mean(d)

        return est

    _run({"a": recorder("a"), "b": recorder("b")}, simulate, [1.0, 2.0, 3.0], n=8)
    assert len(seen["sim"]) == 3
    for g, k in enumerate(seen["sim"]):
        np.testing.assert_array_equal(k, jax.random.key_data(jax.random.fold_in(KEY, g)))
    # both estimators saw identical batches (one warm-up call + one timed call per point)
    assert len(seen["a"]) == len(seen["b"]) == 4
    for x, y in zip(seen["a"], seen["b"]):
        np.testing.assert_array_equal(x, y)


def test_throughput_excludes_the_warm_up_call():
    calls = []

    def slow_first(d):
        calls.append(None)
        if len(calls) == 1:
            time.sleep(0.5)  # stands in for JIT compilation
        return np.asarray(d)[:, 0]

    rep = _run({"slow_first": slow_first}, _identity_data, [1.0, 2.0], n=100)
    assert len(calls) == 3  # one warm-up on the shared shape, then one timed call per point
    # the timed calls take microseconds; a compile-polluted figure would be <= 100 / 0.5 = 200/s,
    # so 2,000/s (a call under 50 ms) separates the two with room for a loaded CI machine
    assert np.all(rep.samples_per_s[0] > 2e3) and rep.overall_samples_per_s[0] > 2e3


def test_markdown_csv_and_plot_have_expected_columns(tmp_path):
    sim = lambda k, th: _gaussian_draws(k, th[:, :1])  # noqa: E731
    est = lambda d: jnp.stack([jnp.mean(d, 1), jnp.mean(d, 1)], 1)  # noqa: E731
    rep = compare.compare_estimators(
        {"mean": est, "twice": lambda d: 2 * est(d)},
        sim,
        np.array([[1.0, 1.0], [2.0, 2.0]]),
        50,
        KEY,
        param_names=["mu", "D"],
        log_scale=["D"],
        crlb_fn=lambda th: np.array([0.25, 0.25]),
        progress=False,
    )
    md = compare.to_markdown(rep)
    header = md.splitlines()[0]
    for col in (
        "estimator",
        "parameter",
        "true",
        "bias",
        "std",
        "RMSE",
        "MAPE %",
        "CRLB",
        "efficiency",
        "samples/s",
        "failed %",
    ):
        assert f" {col} |" in header
    assert "Spearman" in md and "twice" in md
    assert (
        sum(line.startswith("| mean |") or line.startswith("| twice |") for line in md.splitlines())
        == 2 * 2 * 2 + 2 * 2
    )

    path = compare.to_csv(rep, tmp_path / "out" / "report.csv")
    with path.open() as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == compare.CSV_COLUMNS
    assert len(rows) == 2 * 2 * 2  # estimators x grid points x parameters
    assert {r["scale"] for r in rows if r["parameter"] == "D"} == {"ln"}

    png = plotting.plot_report(rep, tmp_path / "report.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _draw_scaled_truth(key, n):
    """Truth theta = (s, t): s log-uniform on [1, 100], t uniform; weights = 1 / t for t in (1, 2)."""
    k1, k2 = jax.random.split(key)
    s = jnp.exp(jax.random.uniform(k1, (n,), minval=0.0, maxval=math.log(100.0)))
    t = jax.random.uniform(k2, (n,), minval=1.0, maxval=2.0)
    theta = jnp.stack([s, t], axis=1)
    return theta, theta, 1.0 / t


def test_draws_report_weighted_mse_of_a_known_distortion():
    # estimator: s * e^0.1 (error exactly 0.1 in ln s) and t + t^2/10 (error t^2/10, weight 1/t)
    distort = lambda d: jnp.stack([d[:, 0] * math.exp(0.1), d[:, 1] + d[:, 1] ** 2 / 10], axis=1)  # noqa: E731
    n = 4000
    report = compare.compare_on_draws(
        {"distort": distort, "exact": lambda d: d}, _draw_scaled_truth, n, KEY, param_names=["s", "t"], log_scale=["s"]
    )
    t = report.truth[:, 1]
    w = (1 / t) / np.sum(1 / t)
    np.testing.assert_allclose(report.mse[0, 0], 0.01, rtol=1e-5)  # float32 logs
    np.testing.assert_allclose(report.mse[0, 1], np.sum(w * (t**2 / 10) ** 2), rtol=1e-5)
    np.testing.assert_allclose(report.bias[0, 0], 0.1, rtol=1e-5)
    np.testing.assert_allclose(report.mse_joint[0], report.mse[0].mean())
    np.testing.assert_allclose(report.mape[0, 0], 100 * (math.exp(0.1) - 1), rtol=1e-5)
    assert np.all(report.mse[1] < 1e-12) and report.failed_fraction.tolist() == [0.0, 0.0]
    assert report.spearman[0, 0] == pytest.approx(1.0)


def test_draws_report_leaves_out_failed_estimates_and_renormalises_weights():
    half_nan = lambda d: jnp.where(jnp.arange(d.shape[0])[:, None] % 2 == 0, jnp.nan, d * 1.0)  # noqa: E731
    report = compare.compare_on_draws({"half": half_nan}, _draw_scaled_truth, 100, KEY, param_names=["s", "t"])
    assert report.failed_fraction[0] == pytest.approx(0.5)
    assert report.mse[0, 1] == pytest.approx(0.0, abs=1e-12)


def _draw_with_gaussian_error(key, n, sd=0.1):
    """Truth t ~ U(1, 2); data = t + sd * z, so the identity estimator's error is N(0, sd^2)."""
    k1, k2 = jax.random.split(key)
    t = jax.random.uniform(k1, (n, 1), minval=1.0, maxval=2.0)
    return t, t + sd * jax.random.normal(k2, (n, 1)), None


def test_draws_report_mse_standard_error_matches_gaussian_closed_form():
    # e ~ N(0, s^2): var(e^2) = 2 s^4, so s.e.(MSE) = sqrt(2) s^2 / sqrt(N) = 1.0e-4 for s = 0.1,
    # N = 20,000. The sample estimate of var(e^2) has a relative s.d. of sqrt((kurtosis - 1) / N)
    # = sqrt(14 / N) = 2.6 % (e^2 / s^2 is chi-squared(1), kurtosis 15), so 10 % is ~4 s.d.
    n = 20_000
    report = compare.compare_on_draws({"identity": lambda d: d}, _draw_with_gaussian_error, n, KEY, param_names=["t"])
    assert report.mse[0, 0] == pytest.approx(0.01, rel=0.05)
    assert report.mse_sem[0, 0] == pytest.approx(math.sqrt(2) * 0.01 / math.sqrt(n), rel=0.10)
