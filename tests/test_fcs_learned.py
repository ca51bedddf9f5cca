"""Specification of the learned-FCS glue (fluojax.fcs.learned): physics check, hybrid start, nets."""

import jax
import numpy as np

from fluojax.fcs import correlator, models, pipeline
from fluojax.fcs.learned import physics_check_chi2

FRAME_TIME_S = 1.06e-3
SETTINGS = pipeline.AnalysisSettings(FRAME_TIME_S, models.Optics())
LAG_S = correlator.lag_grid(16, 8).lags * FRAME_TIME_S


def noisy_model_acfs(d, n=20.0, g_inf=1e-4, rel_sem=0.02, seed=0):
    """Model ACFs (closed-form 2D ITIR) with Gaussian noise of known s.d. -> (acf, sem)."""
    theta = np.stack([np.full_like(d, n), d, np.full_like(d, g_inf)], axis=1)
    clean = np.asarray(jax.vmap(lambda t: pipeline.acf_model_2d(t, (LAG_S, SETTINGS.optics)))(theta))
    sem = np.broadcast_to(rel_sem * clean[:, :1], clean.shape)
    rng = np.random.default_rng(seed)
    return clean + sem * rng.standard_normal(clean.shape), sem


def test_physics_check_at_true_d_gives_reduced_chi2_near_one():
    d = np.geomspace(0.1, 10, 400)
    acf, sem = noisy_model_acfs(d)
    _, _, shape = pipeline._shape_fn(SETTINGS)
    chi2, n, g_inf = physics_check_chi2(acf, sem, LAG_S, d, shape)
    # chi^2 with 72 - 3 degrees of freedom: mean 1, s.d. of the mean over 400 curves sqrt(2/69/400)
    # ~ 0.009; 2 of the 3 numbers are fitted here, so the mean is a hair above 1 -> 0.05 window
    assert abs(np.mean(chi2) - 1.0) < 0.05
    np.testing.assert_allclose(np.median(n), 20.0, rtol=0.02)  # amplitude to 2 % SEM -> N to ~0.1 %


def test_physics_check_flags_a_wrong_d():
    d = np.geomspace(0.1, 10, 50)
    acf, sem = noisy_model_acfs(d)
    _, _, shape = pipeline._shape_fn(SETTINGS)
    chi2, _, _ = physics_check_chi2(acf, sem, LAG_S, 10.0 * d, shape)
    assert np.all(chi2 > 10.0)


def test_physics_check_returns_nan_for_unusable_d():
    acf, sem = noisy_model_acfs(np.array([1.0, 1.0]))
    _, _, shape = pipeline._shape_fn(SETTINGS)
    chi2, _, _ = physics_check_chi2(acf, sem, LAG_S, np.array([np.nan, -1.0]), shape)
    assert np.all(np.isnan(chi2))


def test_hybrid_start_from_true_d_converges_in_fewer_steps():
    d = np.geomspace(0.1, 10, 256)
    acf, sem = noisy_model_acfs(d, seed=3)
    plain = pipeline.fit_acfs(acf, sem, LAG_S, SETTINGS)
    hybrid = pipeline.fit_acfs(acf, sem, LAG_S, SETTINGS, start_d_um2_s=d)
    # both reach the same least-squares optimum (same data, same objective) ...
    np.testing.assert_allclose(hybrid.params[:, 1], plain.params[:, 1], rtol=1e-3)
    # ... but starting at the right D needs fewer LM iterations on average
    assert np.mean(hybrid.num_steps) < np.mean(plain.num_steps)
