"""Fitting engine: convergence to the truth, statistics against the Cramer-Rao bound, backends, status."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax import fit
from fluojax.fcs.correlator import lag_grid
from fluojax.fcs.estimate import FCS_BOUNDS, acf_model_2d

LAG = jnp.asarray(lag_grid().lags * 1.06e-3, jnp.float32)


def _noisy_acfs(optics, n, rel_noise, seed):
    rng = np.random.default_rng(seed)
    truth = np.stack([np.full(n, 4.0), np.exp(rng.uniform(np.log(0.2), np.log(5.0), n)), np.zeros(n)], 1).astype(
        np.float32
    )
    clean = np.asarray(jax.vmap(lambda t: acf_model_2d(t, (LAG, optics)))(jnp.asarray(truth)))
    sigma = np.broadcast_to(rel_noise * clean[:, :1], clean.shape).astype(np.float32)
    return truth, clean, sigma, clean + sigma * rng.normal(size=clean.shape).astype(np.float32)


def test_fit_converges_to_exact_parameters_on_noise_free_data(optics_2d):
    truth, clean, sigma, _ = _noisy_acfs(optics_2d, 64, 0.01, 0)
    res = fit.least_squares_batch(acf_model_2d, clean, sigma, [1.0, 1.0, 0.0], (LAG, optics_2d), **FCS_BOUNDS)
    assert np.all(res.status == fit.Status.CONVERGED)
    np.testing.assert_allclose(res.params[:, :2], truth[:, :2], rtol=2e-3)


def test_fit_recovers_d_from_noisy_acfs_at_the_cramer_rao_bound(optics_2d):
    # one true D, 1,500 noise realisations: unbiased, reduced chi^2 ~ 1, scatter ~ CRLB
    rng = np.random.default_rng(5)
    theta = jnp.asarray([4.0, 1.0, 0.0], jnp.float32)
    clean = np.asarray(acf_model_2d(theta, (LAG, optics_2d)))
    sigma = np.full_like(clean, 0.02 * clean[0])
    data = clean + sigma * rng.normal(size=(1500, clean.size)).astype(np.float32)
    res = fit.least_squares_batch(
        acf_model_2d, data, np.broadcast_to(sigma, data.shape), theta, (LAG, optics_2d), **FCS_BOUNDS
    )
    assert np.mean(res.status == fit.Status.CONVERGED) > 0.99
    d = res.params[res.status == fit.Status.CONVERGED, 1]
    bound = float(fit.crlb(acf_model_2d, theta, sigma, (LAG, optics_2d))[1])
    # 1,500 samples: the mean is known to ~bound/39, the s.d. to ~2 %; allow for LM's O(sigma^2) bias
    assert abs(np.mean(d) - 1.0) < 4 * bound / np.sqrt(len(d)) + 0.2 * bound**2
    assert np.std(d) == pytest.approx(bound, rel=0.1)
    assert np.nanmean(res.chi2_reduced) == pytest.approx(1.0, abs=0.03)


def test_optimistix_and_jaxopt_backends_give_the_same_parameters(optics_2d):
    _, _, sigma, data = _noisy_acfs(optics_2d, 200, 0.03, 6)
    args = (LAG, optics_2d)
    a = fit.least_squares_batch(acf_model_2d, data, sigma, [1.0, 1.0, 0.0], args, **FCS_BOUNDS)
    b = fit.least_squares_batch(
        acf_model_2d,
        data,
        sigma,
        [1.0, 1.0, 0.0],
        args,
        solver=fit.LevenbergMarquardt(backend=fit.JaxoptBackend()),
        **FCS_BOUNDS,
    )
    ok = (a.status == 0) & (b.status == 0)
    assert ok.mean() > 0.98
    # both stop within tolerance 1e-4 of the same minimum; D is compared relative to its fit error
    np.testing.assert_allclose(a.params[ok, 1], b.params[ok, 1], rtol=2e-3)


def test_optimistix_cholesky_of_the_normal_equations_reaches_the_scipy_minimum(optics_2d):
    # the normal equations square J's condition number; in float32 the fits must still end on
    # scipy's float64 minimum (within the float32 floor, ~2e-4 here: see the FCS tolerance test)
    _, _, sigma, data = _noisy_acfs(optics_2d, 12, 0.03, 14)
    solver = fit.LevenbergMarquardt(linear_solver="cholesky")
    res = fit.least_squares_batch(
        acf_model_2d, data, sigma, [1.0, 1.0, 0.0], (LAG, optics_2d), solver=solver, **FCS_BOUNDS
    )
    assert np.all(res.status == fit.Status.CONVERGED)
    np.testing.assert_allclose(res.params[:, 1], _scipy_minima(data, sigma, optics_2d)[:, 1], rtol=5e-4)


def test_unknown_linear_solver_is_rejected():
    with pytest.raises(ValueError, match="linear solver"):
        fit.LevenbergMarquardt(linear_solver="lu")


def test_fixed_parameters_keep_their_start_value(optics_2d):
    _, _, sigma, data = _noisy_acfs(optics_2d, 8, 0.01, 7)
    res = fit.least_squares_batch(
        acf_model_2d, data, sigma, [4.0, 1.0, 0.0], (LAG, optics_2d), free=(True, True, False), **FCS_BOUNDS
    )
    assert np.all(res.params[:, 2] == 0.0)


def test_invalid_dataset_gives_nan_and_status_without_stopping_the_batch(optics_2d):
    truth, clean, sigma, _ = _noisy_acfs(optics_2d, 4, 0.01, 8)
    data = clean.copy()
    data[1] = np.nan
    res = fit.least_squares_batch(acf_model_2d, data, sigma, [1.0, 1.0, 0.0], (LAG, optics_2d), **FCS_BOUNDS)
    assert res.status[1] == fit.Status.INVALID_DATA and np.all(np.isnan(res.params[1]))
    assert np.all(res.status[[0, 2, 3]] == fit.Status.CONVERGED)
    np.testing.assert_allclose(res.params[[0, 2, 3], 1], truth[[0, 2, 3], 1], rtol=2e-3)


def test_optimum_outside_the_box_is_reported_at_bound():
    # straight line y = 2 x with the slope bounded to [0, 1]: the fit must sit at 1 and say so
    x = jnp.linspace(0.0, 1.0, 20)
    line = lambda th, a: th[0] * a  # noqa: E731
    res = fit.least_squares(line, 2.0 * x, jnp.full(20, 0.1), jnp.array([0.5]), x, lower=[0.0], upper=[1.0])
    assert int(res.status) == fit.Status.AT_BOUND
    assert float(res.params[0]) == pytest.approx(1.0, abs=1e-4)


def test_crlb_of_straight_line_equals_closed_form():
    # y = a + b x, sigma_i: Var = (X^T W X)^-1 in closed form
    x = jnp.linspace(-1.0, 2.0, 15)
    sigma = 0.1 + 0.05 * jnp.abs(x)
    line = lambda th, a: th[0] + th[1] * a  # noqa: E731
    w = 1 / sigma**2
    s, sx, sxx = w.sum(), (w * x).sum(), (w * x * x).sum()
    det = s * sxx - sx**2
    expected = np.sqrt([sxx / det, s / det])
    np.testing.assert_allclose(np.asarray(fit.crlb(line, jnp.array([1.0, 0.5]), sigma, x)), expected, rtol=1e-5)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        fit.LevenbergMarquardt(backend="scipy")


def _scipy_acf_2d_fit(acf, sigma, lag_s, a_um, w_um, start):
    """Independent float64 reference: scipy's least_squares on the 2D model written with NumPy."""
    from scipy.optimize import least_squares as scipy_least_squares
    from scipy.special import erf

    def model(theta):
        n, d, g_inf = theta
        p = a_um / np.sqrt(w_um**2 + 4.0 * d * lag_s)
        b = erf(p) + np.expm1(-(p**2)) / (np.sqrt(np.pi) * p)
        return b**2 / n + g_inf

    sol = scipy_least_squares(
        lambda th: (model(th) - acf) / sigma,
        start,
        bounds=([1e-6, 1e-6, -1.0], [np.inf, np.inf, 1.0]),
        x_scale="jac",
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
    )
    return sol.x


def _scipy_minima(data, sigma, optics):
    """(B, 3) scipy float64 minima of each dataset's 2D ACF fit, all from the start (1, 1, 0)."""
    from fluojax.fcs import models

    lag_s = np.asarray(LAG, np.float64)
    a_um, w_um = float(models.pixel_side_um(optics)), float(models.psf_radius_um(optics))
    return np.stack(
        [
            _scipy_acf_2d_fit(y.astype(np.float64), s.astype(np.float64), lag_s, a_um, w_um, [1.0, 1.0, 0.0])
            for y, s in zip(data, sigma)
        ]
    )


def test_batch_fit_with_slot_refilling_reaches_the_scipy_minimum(optics_2d):
    # 16 datasets through 4 slots: every slot is refilled several times mid-run, and every fit
    # must still end on the minimum scipy finds in float64 (1e-3, far inside D's ~5 % error)
    _, _, sigma, data = _noisy_acfs(optics_2d, 16, 0.03, 11)
    res = fit.least_squares_batch(acf_model_2d, data, sigma, [1.0, 1.0, 0.0], (LAG, optics_2d), chunk=4, **FCS_BOUNDS)
    assert np.all(res.status == fit.Status.CONVERGED)
    assert len(np.unique(res.num_steps)) > 3  # fits of different lengths shared the slots
    ref = _scipy_minima(data, sigma, optics_2d)
    np.testing.assert_allclose(res.params[:, :2], ref[:, :2], rtol=1e-3)  # N and D


def test_batches_of_other_sizes_reuse_the_compiled_slot_loop(optics_2d):
    # 20 and 27 datasets both go into one padded segment of 32 (8 slots x 4): the second batch
    # must not compile again, and the padding must not leak into the results
    _, clean, sigma, _ = _noisy_acfs(optics_2d, 27, 0.01, 15)
    args = (LAG, optics_2d)
    first = fit.least_squares_batch(acf_model_2d, clean[:20], sigma[:20], [1.0, 1.0, 0.0], args, chunk=8, **FCS_BOUNDS)
    compiled = fit._fit_streaming._cache_size()
    second = fit.least_squares_batch(acf_model_2d, clean, sigma, [1.0, 1.0, 0.0], args, chunk=8, **FCS_BOUNDS)
    assert fit._fit_streaming._cache_size() == compiled
    assert second.params.shape == (27, 3) and np.all(second.status == fit.Status.CONVERGED)
    np.testing.assert_allclose(second.params[:20], first.params, rtol=1e-4)


def test_fcs_default_tolerances_stop_within_a_hundredth_of_the_standard_error_of_the_scipy_minimum(optics_2d):
    # estimate.FCS_SOLVER stops at tolerances 1e-3 (noise scale) instead of the engine's 1e-6. LM
    # converges fast near the minimum, so it still ends within the float32 floor (~2e-4 here, the
    # same with tolerances 1e-4) of scipy's float64 minimum; 5e-4 is a hundredth of D's >= 5 %
    # standard error at 3 % ACF noise (tolerances of 0.3 already miss it: 7e-4)
    from fluojax.fcs import estimate, pipeline

    _, _, sigma, data = _noisy_acfs(optics_2d, 24, 0.03, 13)
    settings = pipeline.AnalysisSettings(1.06e-3, optics_2d)
    res = estimate.fit_acfs(data, sigma, np.asarray(LAG, np.float64), settings)
    assert np.all(res.status == fit.Status.CONVERGED)
    ref = _scipy_minima(data, sigma, optics_2d)
    np.testing.assert_allclose(res.params[:, :2], ref[:, :2], rtol=5e-4)  # N and D


def test_batch_fits_stop_at_max_steps_and_report_each_dataset_once(optics_2d):
    # far from the optimum, 4 iterations cannot converge (the first fits stop after 6): every fit,
    # in 4 slots, must end after exactly 4 iterations with NaN results, and progress must count
    # each fit once
    _, clean, sigma, _ = _noisy_acfs(optics_2d, 8, 0.01, 12)
    seen = []
    res = fit.least_squares_batch(
        acf_model_2d,
        clean,
        sigma,
        [40.0, 0.01, 0.0],
        (LAG, optics_2d),
        chunk=4,
        progress=seen.append,
        solver=fit.LevenbergMarquardt(max_steps=4),
        **FCS_BOUNDS,
    )
    assert sum(seen) == 8
    assert np.all(res.status == fit.Status.MAX_STEPS) and np.all(res.num_steps == 4)
    assert np.all(np.isnan(res.params)) and np.all(np.isnan(res.chi2_reduced))


def test_succeeded_needs_a_good_status_and_finite_parameters_and_chi2():
    status = np.array([fit.Status.CONVERGED, fit.Status.AT_BOUND, fit.Status.MAX_STEPS, fit.Status.CONVERGED, 0, 7])
    theta = np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, np.nan], [1.0, 2.0], [1.0, 2.0]])
    chi2 = np.array([1.0, 1.0, 1.0, 1.0, np.inf, 1.0])
    np.testing.assert_array_equal(fit.succeeded(status, theta, np), [1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(fit.succeeded(status, theta, np, chi2=chi2), [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(fit.succeeded(jnp.asarray(status), jnp.asarray(theta), chi2=chi2), [1, 1, 0, 0, 0, 0])
    assert fit.succeeded(3, [0.5, 1.0], np) and not fit.succeeded(7, [0.5, 1.0], np)  # one fit: a bool


def test_backend_registry_maps_command_line_names_to_backends():
    assert set(fit.BACKENDS) == {"optimistix", "jaxopt"}
    assert isinstance(fit.BACKENDS["jaxopt"], fit.JaxoptBackend) and fit.BACKENDS["jaxopt"].name == "jaxopt"
    assert fit.LevenbergMarquardt().backend == fit.BACKENDS["optimistix"]
    # settings stay hashable (they are static arguments of the jitted batch solves)
    assert hash(fit.LevenbergMarquardt(backend=fit.JaxoptBackend())) == hash(
        fit.LevenbergMarquardt(backend=fit.BACKENDS["jaxopt"])
    )


def test_status_name_names_engine_and_technique_codes_once():
    """A status map holds the engine's codes 0-5 and a technique's own from FIRST_TECHNIQUE_CODE
    up; one lookup names both, and an unknown code is its number."""
    import enum

    from fluojax.fit import FIRST_TECHNIQUE_CODE, Status, status_name

    class Extra(enum.IntEnum):
        DARK = FIRST_TECHNIQUE_CODE

    assert FIRST_TECHNIQUE_CODE == max(Status) + 1
    assert [status_name(s) for s in Status] == [s.name for s in Status]
    assert status_name(FIRST_TECHNIQUE_CODE, Extra) == "DARK"
    assert status_name(FIRST_TECHNIQUE_CODE) == str(FIRST_TECHNIQUE_CODE)
