"""FRAP noisy-data simulation: DeepFRAP's Table 1 prior, the a + a'c noise model at pixel and curve
level, determinism for a key, and agreement of curve-level and image-level simulation.

Statistical tolerances: with n independent Gaussian draws, a sample mean has standard error
sigma / sqrt(n) and a sample variance relative standard error sqrt(2 / (n - 1)). Checks allow 5
standard errors (two-sided false-alarm probability 6e-7 per check; the keys are fixed, so the
tests are deterministic anyway) — tight enough that a wrong factor (e.g. sum w instead of sum w^2,
a 200-fold change, or dropping the a'-term, 40 % here) fails by a wide margin.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fluojax.frap import models as fm
from fluojax.frap import simulate as fs
from fluojax.noise import AffineGaussianNoise

pytestmark = pytest.mark.xdist_group("frap_simulate")  # its session fixtures are built once, on one worker

SMALL = fm.FrapSettings(n_pixels=32, pad=16, n_prebleach=3, n_bleach=2, n_postbleach=10)
RADIUS = 6.0
NOISE = AffineGaussianNoise(a=2e-3, a_prime=1e-2)  # a'-term 40 % of the prebleach variance at c0 = 0.8
PARAMS = fm.FrapParams(d_px2_s=20.0, c0=0.8, alpha=0.6)


@pytest.fixture(scope="session")
def small_setup():
    geometry = fm.circular_region(SMALL, radius_px=RADIUS)
    table = fm.build_fast_curve_table(geometry, SMALL, n_nodes=32)
    variance_table = fm.build_fast_curve_table(fs.squared_weight_geometry(geometry), SMALL, n_nodes=32)
    return geometry, table, variance_table


def _batch(params: fm.FrapParams, n: int) -> fm.FrapParams:
    return fm.FrapParams(*(jnp.full((n,), float(v)) for v in params))


def _exact_curve_variance(geometry, settings, params, noise):
    """sum_xy w^2 (a + a' c(x, y, t)) from float64 noise-free images (Wåhlstrand Skärström et al. 2021, eqs. 5-6)."""
    with jax.enable_x64(True):
        images = np.asarray(fm.simulate_images(params, geometry, settings))
    w = np.asarray(geometry.roi_weights)
    clean = np.einsum("tij,ij->t", images, w)
    return clean, np.einsum("tij,ij->t", noise.a + noise.a_prime * images, w * w)


# ----------------------------------------------------------------------------------------------
# Prior
# ----------------------------------------------------------------------------------------------


def test_deepfrap_prior_is_table_1():
    prior = fs.FrapPrior.deepfrap()
    assert prior.d_um2_s_range == (1.0, 1000.0)  # 1e-12 .. 1e-9 m^2/s
    assert (prior.c0_range, prior.alpha_range, prior.noise_a_range) == ((0.5, 1.0), (0.45, 0.95), (1e-4, 1e-2))
    assert prior.noise_a_prime_range == (0.0, 0.0)  # Wåhlstrand Skärström et al. 2021: a' = 0
    lo, hi = prior.d_px2_s_range
    assert lo == pytest.approx(1.7322, rel=1e-4) and hi == pytest.approx(1732.2, rel=1e-4)
    np.testing.assert_allclose(
        prior.log10_d_px2_s_range, (0.2386, 3.2386), atol=1e-4
    )  # D*, Wåhlstrand Skärström et al. 2021
    hash(prior)  # usable as a static argument


def test_samples_lie_in_table_1_ranges_and_follow_its_distributions():
    prior = fs.FrapPrior.deepfrap()
    n = 20000
    sample = fs.sample_frap_params(jax.random.key(7), n, prior)
    p, noise = sample.params, sample.noise
    log10_d, d_um = np.log10(np.asarray(p.d_px2_s)), np.asarray(fs.sample_d_um2_s(sample, prior))
    c0, alpha, a = (np.asarray(x, np.float64) for x in (p.c0, p.alpha, noise.a))
    lo, hi = prior.log10_d_px2_s_range
    eps = 1e-5  # float32 rounding of 10**x and exp(x)
    assert lo - eps <= log10_d.min() and log10_d.max() <= hi + eps
    assert 1.0 - 1e-4 <= d_um.min() and d_um.max() <= 1000.0 * (1 + 1e-5)
    assert 0.5 <= c0.min() and c0.max() <= 1.0 and 0.45 <= alpha.min() and alpha.max() <= 0.95
    assert 1e-4 * (1 - eps) <= a.min() and a.max() <= 1e-2 * (1 + eps)
    assert np.all(np.asarray(noise.a_prime) == 0.0)
    assert (
        np.all(np.asarray(p.mobile_fraction) == 1)
        and np.all(np.asarray(p.beta) == 1)
        and np.all(np.asarray(p.gamma_px) == 0)
    )
    # shapes: log-uniform D and a (log10 uniform), uniform c0 and alpha
    assert stats.kstest(log10_d, stats.uniform(lo, hi - lo).cdf).pvalue > 1e-3
    assert stats.kstest(np.log10(a), stats.uniform(-4.0, 2.0).cdf).pvalue > 1e-3
    assert stats.kstest(c0, stats.uniform(0.5, 0.5).cdf).pvalue > 1e-3
    assert stats.kstest(alpha, stats.uniform(0.45, 0.5).cdf).pvalue > 1e-3
    # ... and a wrong shape is detected: D is not uniform in linear scale
    assert stats.kstest(d_um, stats.uniform(1.0, 999.0).cdf).pvalue < 1e-10
    # independent draws (no shared key): negligible rank correlation between parameters
    rho = stats.spearmanr(np.stack([log10_d, c0, alpha, a], axis=1)).statistic
    assert np.max(np.abs(rho - np.eye(4))) < 5 / math.sqrt(n)


def test_positive_a_prime_range_is_log_uniform():
    prior = fs.FrapPrior(noise_a_prime_range=(1e-3, 1e-1))
    a_prime = np.asarray(fs.sample_frap_params(jax.random.key(3), 5000, prior).noise.a_prime, np.float64)
    assert stats.kstest(np.log10(a_prime), stats.uniform(-3.0, 2.0).cdf).pvalue > 1e-3
    with pytest.raises(ValueError):
        fs.FrapPrior(noise_a_range=(0.0, 1e-2))


# ----------------------------------------------------------------------------------------------
# Noise model
# ----------------------------------------------------------------------------------------------


def test_deepfrap_roi_has_1247_effective_pixels():
    # curve noise s.d. sqrt(a / 1247) for DeepFRAP's area-fraction disk (docs/frap.md, "1. Model and units")
    geometry = fm.circular_region(fm.FrapSettings())
    assert fs.roi_effective_pixels(geometry) == pytest.approx(1247.0, abs=0.05)


def test_simulated_curve_noise_variance_is_sum_w2_times_a_plus_a_prime_c(small_setup):
    geometry, table, variance_table = small_setup
    n = 20000
    curves = np.asarray(
        fs.simulate_curves(
            jax.random.key(11),
            _batch(PARAMS, n),
            table,
            _batch_noise(NOISE, n),
            fs.roi_effective_pixels(geometry),
            variance_table,
        ),
        np.float64,
    )
    clean, variance = _exact_curve_variance(geometry, SMALL, PARAMS, NOISE)
    z = (curves - clean) / np.sqrt(variance)
    assert z.shape == (n, SMALL.n_frames)
    # per frame: mean 0 (SE 1/sqrt(n)) and variance 1 (SE sqrt(2/(n - 1)))
    assert np.max(np.abs(z.mean(axis=0))) < 5 / math.sqrt(n)
    assert np.max(np.abs(z.var(axis=0, ddof=1) - 1.0)) < 5 * math.sqrt(2 / (n - 1))
    # pooled over frames (independent): SE sqrt(2 / (n T))
    assert abs(np.mean(z**2) - 1.0) < 5 * math.sqrt(2 / z.size)
    # noise is independent between frames
    corr = np.corrcoef(z.T)
    assert np.max(np.abs(corr - np.eye(SMALL.n_frames))) < 5 / math.sqrt(n)
    # the a'-term is really there: prebleach variance (a + a' c0) / n_eff, 40 % above a / n_eff
    n_eff = fs.roi_effective_pixels(geometry)
    np.testing.assert_allclose(variance[: SMALL.n_prebleach], (NOISE.a + NOISE.a_prime * 0.8) / n_eff, rtol=1e-6)


def _batch_noise(noise: AffineGaussianNoise, n: int) -> AffineGaussianNoise:
    return AffineGaussianNoise(jnp.full((n,), noise.a), jnp.full((n,), noise.a_prime))


def test_approximate_a_prime_term_is_exact_before_the_bleach_and_unused_when_a_prime_is_0(small_setup):
    geometry, table, variance_table = small_setup
    n_eff = fs.roi_effective_pixels(geometry)
    clean, variance = _exact_curve_variance(geometry, SMALL, PARAMS, NOISE)
    approx = np.asarray(fs.curve_noise_variance(jnp.asarray(clean, jnp.float32), NOISE, n_eff))
    np.testing.assert_allclose(approx[: SMALL.n_prebleach], variance[: SMALL.n_prebleach], rtol=1e-5)
    # after the bleach c is not uniform over the ROI: F/S differs from c~ by at most a few %
    np.testing.assert_allclose(approx, variance, rtol=0.05)
    # unnormalised weights k w: F -> k F, S -> k, var -> k^2 var
    k = 1224.5
    scaled = fs.curve_noise_variance(jnp.asarray(k * clean, jnp.float32), NOISE, n_eff, roi_sum=k)
    np.testing.assert_allclose(scaled, k * k * approx, rtol=1e-5)
    key, params, noise = jax.random.key(2), _batch(PARAMS, 8), AffineGaussianNoise(jnp.full((8,), 1e-3))
    np.testing.assert_array_equal(
        fs.simulate_curves(key, params, table, noise, n_eff),
        fs.simulate_curves(key, params, table, noise, n_eff, variance_table),
    )


# ----------------------------------------------------------------------------------------------
# Determinism, shapes, jit
# ----------------------------------------------------------------------------------------------


def test_simulation_is_deterministic_for_a_key_and_jittable(small_setup):
    geometry, table, _ = small_setup
    prior = fs.FrapPrior.deepfrap()
    key = jax.random.key(5)
    s1, s2 = fs.sample_frap_params(key, 64, prior), fs.sample_frap_params(key, 64, prior)
    jax.tree.map(np.testing.assert_array_equal, s1, s2)
    other = fs.sample_frap_params(jax.random.key(6), 64, prior)
    assert not np.any(np.asarray(other.params.c0) == np.asarray(s1.params.c0))

    n_eff = fs.roi_effective_pixels(geometry)

    @jax.jit
    def curves(k):
        sample = fs.sample_frap_params(k, 64, prior)
        return fs.simulate_curves(jax.random.fold_in(k, 1), sample.params, table, sample.noise, n_eff)

    c1, c2, c3 = curves(key), curves(key), curves(jax.random.key(6))
    assert c1.shape == (64, SMALL.n_frames) and c1.dtype == jnp.float32
    np.testing.assert_array_equal(c1, c2)
    assert not np.allclose(c1, c3)
    eager = fs.simulate_curves(jax.random.fold_in(key, 1), s1.params, table, s1.noise, n_eff)
    np.testing.assert_allclose(c1, eager, rtol=1e-5, atol=1e-6)

    params, noise = _batch(PARAMS, 2), _batch_noise(NOISE, 2)
    i1 = fs.simulate_image_sequences(key, params, geometry, SMALL, noise)
    i2 = fs.simulate_image_sequences(key, params, geometry, SMALL, noise)
    assert i1.shape == (2, SMALL.n_frames, SMALL.n_pixels, SMALL.n_pixels)
    np.testing.assert_array_equal(i1, i2)
    assert not np.array_equal(i1[0], i1[1])  # same parameters, independent noise
    # scalar parameters give one unbatched sequence
    single = fs.simulate_image_sequences(key, PARAMS, geometry, SMALL, NOISE)
    assert single.shape == (SMALL.n_frames, SMALL.n_pixels, SMALL.n_pixels)


def test_fast_curves_refuse_parameters_the_table_cannot_represent(small_setup):
    geometry, table, _ = small_setup
    params = PARAMS._replace(beta=0.99)
    with pytest.raises(ValueError, match="beta"):
        fs.simulate_curves(jax.random.key(0), params, table, NOISE, fs.roi_effective_pixels(geometry))


# ----------------------------------------------------------------------------------------------
# Curve level = image level
# ----------------------------------------------------------------------------------------------


def test_curve_level_and_image_level_roi_curves_agree_in_mean_and_variance(small_setup):
    geometry, table, variance_table = small_setup
    n_eff = fs.roi_effective_pixels(geometry)
    chunk, chunks = 2000, 4
    n = chunk * chunks

    @jax.jit
    def image_curves(key):
        images = fs.simulate_image_sequences(key, _batch(PARAMS, chunk), geometry, SMALL, _batch_noise(NOISE, chunk))
        return fs.recovery_curve_from_images(images, geometry)

    from_images = np.concatenate([np.asarray(image_curves(jax.random.key(100 + i)), np.float64) for i in range(chunks)])
    from_curves = np.asarray(
        fs.simulate_curves(
            jax.random.key(200), _batch(PARAMS, n), table, _batch_noise(NOISE, n), n_eff, variance_table
        ),
        np.float64,
    )
    clean, variance = _exact_curve_variance(geometry, SMALL, PARAMS, NOISE)
    for curves in (from_images, from_curves):
        # each level against the closed form sum w^2 (a + a' c)
        assert np.max(np.abs(curves.mean(axis=0) - clean) / np.sqrt(variance / n)) < 5
        assert np.max(np.abs(curves.var(axis=0, ddof=1) / variance - 1.0)) < 5 * math.sqrt(2 / (n - 1))
    # and against each other: difference of means (SE sqrt(2 var / n)), ratio of variances
    # (relative SE sqrt(4 / n) per frame, sqrt(4 / (n T)) averaged over the T independent frames)
    mean_gap = (from_images.mean(axis=0) - from_curves.mean(axis=0)) / np.sqrt(2 * variance / n)
    assert np.max(np.abs(mean_gap)) < 5
    ratio = from_images.var(axis=0, ddof=1) / from_curves.var(axis=0, ddof=1)
    assert np.max(np.abs(ratio - 1.0)) < 5 * math.sqrt(4 / n)
    assert abs(ratio.mean() - 1.0) < 5 * math.sqrt(4 / (n * SMALL.n_frames))
