"""Least-squares FRAP estimation (fluojax.frap.estimate): recovery of simulated parameters,
Wald-interval coverage and the residual noise-variance estimate.

A small geometry (64 px image, r = 10 px, 5 + 40 frames) keeps the test fast. D is drawn from
1-100 um^2/s (1.7-173 px^2/s): above that, r^2 / 4D falls below one frame and the curve after the
bleach is almost flat, so D and alpha trade off (alpha -> 1, any large D) and Wald intervals are
meaningless — a property of the data, not of the fit.

Tolerances: 160 curves; a coverage estimate has SE sqrt(0.95 * 0.05 / 160) = 0.017, allowed
0.95 +- 0.06 (3.5 SE, plus a little for the linearisation and z vs t_42). The noise-variance
estimate s^2 = RSS / (n - 3) has relative SE sqrt(2 / 42) = 0.22 per curve, 0.017 for the mean
of 160; allowed 0.08 (5 SE).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax import fit
from fluojax.frap import estimate as fe
from fluojax.frap import models as fm
from fluojax.frap import simulate as fs
from fluojax.noise import AffineGaussianNoise

# every test here shares one expensive module fixture: one xdist worker runs them all, so the
# fixture is built once (make test uses --dist loadgroup; without xdist the mark does nothing)
pytestmark = [pytest.mark.xdist_group("frap_estimate"), pytest.mark.slow]

SETTINGS = fm.FrapSettings(n_pixels=64, pad=32, n_prebleach=5, n_bleach=2, n_postbleach=40)
PRIOR = fs.FrapPrior.from_um2_s((1.0, 100.0))
A = 1e-2  # per-pixel variance (top of Table 1's range)
B = 160


@pytest.fixture(scope="session")
def fitted():
    geometry = fm.circular_region(SETTINGS, radius_px=10.0)
    table = fm.build_fast_curve_table(geometry, SETTINGS, n_nodes=32)
    n_eff = fs.roi_effective_pixels(geometry)
    sample = fs.sample_frap_params(jax.random.key(11), B, PRIOR)
    curves = fs.simulate_curves(jax.random.key(12), sample.params, table, AffineGaussianNoise(jnp.full((B,), A)), n_eff)
    truth = np.stack(
        [np.asarray(sample.params.d_px2_s), np.asarray(sample.params.c0), np.asarray(sample.params.alpha)], 1
    )
    true_var = float(table.roi_sum) ** 2 / n_eff * A
    res = fe.fit_recovery_curves(np.asarray(curves), table, key=jax.random.key(13), prior=PRIOR)  # 30 starts
    return table, curves, truth, true_var, res


def test_parameters_are_recovered_within_a_few_interval_widths(fitted):
    _, _, truth, _, res = fitted
    ok = res.status == fit.Status.CONVERGED
    assert ok.mean() > 0.97
    width = res.ci_upper - res.ci_lower
    assert np.all(np.abs(res.params[ok] - truth[ok]) < 1.5 * width[ok])  # ~6 sd: never by chance here
    assert np.all(res.ci_lower[ok] < res.params[ok]) and np.all(res.params[ok] < res.ci_upper[ok])
    lo, hi = fe.frap_bounds(fitted[0], PRIOR)
    assert np.all(res.params[ok] >= lo) and np.all(res.params[ok] <= hi)


def test_intervals_cover_the_truth_about_95_percent(fitted):
    _, _, truth, _, res = fitted
    ok = res.status == fit.Status.CONVERGED
    covered = (res.ci_lower[ok] <= truth[ok]) & (truth[ok] <= res.ci_upper[ok])
    np.testing.assert_allclose(covered.mean(axis=0), 0.95, atol=0.06)


def test_noise_variance_estimate_matches_the_simulated_one(fitted):
    _, _, _, true_var, res = fitted
    ok = res.status == fit.Status.CONVERGED
    ratio = res.noise_variance[ok] / true_var
    assert np.mean(ratio) == pytest.approx(1.0, abs=0.08)
    assert np.std(ratio) == pytest.approx(np.sqrt(2 / 42), rel=0.3)  # chi^2_42 / 42 scatter


def test_known_noise_variance_gives_unit_reduced_chi2_and_same_fit(fitted):
    table, curves, _truth, true_var, res = fitted
    sub = np.asarray(curves[:24])
    known = fe.fit_recovery_curves(sub, table, key=jax.random.key(13), prior=PRIOR, noise_variance=true_var)
    ok = (known.status == fit.Status.CONVERGED) & (res.status[:24] == fit.Status.CONVERGED)
    # same minimum (constant weights do not move it), up to the LM stopping tolerance: << 1 sd
    assert np.all(np.abs(known.params[ok] - res.params[:24][ok]) < 0.1 * res.stderr[:24][ok])
    assert np.mean(known.chi2_reduced[ok]) == pytest.approx(1.0, abs=0.25)  # 24 x 42 dof: SE 0.045
    np.testing.assert_allclose(known.noise_variance, known.chi2_reduced * true_var, rtol=1e-5)


def test_single_curve_and_wrong_length_input(fitted):
    table, curves, _truth, _, _ = fitted
    one = fe.fit_recovery_curves(np.asarray(curves[0]), table, key=jax.random.key(0), n_starts=5, prior=PRIOR)
    assert one.params.shape == (1, 3) and one.d_px2_s.shape == (1,)
    with pytest.raises(ValueError, match="values"):
        fe.fit_recovery_curves(np.zeros((2, 7)), table, key=jax.random.key(0))


def test_crlb_fisher_matches_finite_difference_jacobian(fitted):
    table, _, truth, true_var, _ = fitted
    theta = jnp.asarray(truth[:4])
    bound = np.asarray(
        fe.recovery_curve_crlb(
            theta, table, AffineGaussianNoise(jnp.full((4,), A)), float(table.roi_sum) ** 2 * A / true_var
        )
    )
    for i in range(4):
        # central differences, relative step 1e-3: truncation ~1e-6, float32 rounding ~1e-7 / 1e-3
        # = 1e-4 of the derivative, so the bounds agree to well under 1 %
        steps = 1e-3 * np.abs(truth[i])
        jac = np.stack(
            [
                (
                    np.asarray(fe.frap_curve_model(theta[i] + h * e, table), np.float64)
                    - np.asarray(fe.frap_curve_model(theta[i] - h * e, table), np.float64)
                )
                / (2 * h)
                for h, e in zip(steps, np.eye(3, dtype=np.float32))
            ],
            axis=1,
        )
        reference = np.sqrt(np.diag(np.linalg.inv(jac.T @ jac / true_var)))
        np.testing.assert_allclose(bound[i], reference, rtol=1e-2)


def test_least_squares_errors_are_about_one_crlb(fitted):
    # LS is asymptotically efficient for Gaussian noise: (estimate - truth) / CRLB has s.d. ~1.
    # 160 curves: the s.d. of a sample s.d. is 1 / sqrt(2 * 160) = 0.056 relative; allowed 0.25
    # for curvature at the fastest D (the bound is a local, linearised one).
    table, _, truth, true_var, res = fitted
    ok = res.status == fit.Status.CONVERGED
    n_eff = float(table.roi_sum) ** 2 * A / true_var
    bound = np.asarray(
        fe.recovery_curve_crlb(jnp.asarray(truth[ok]), table, AffineGaussianNoise(jnp.full((ok.sum(),), A)), n_eff)
    )
    z = (res.params[ok] - truth[ok]) / bound
    np.testing.assert_allclose(np.std(z, axis=0), 1.0, atol=0.25)
