"""Simulator: determinism, mean intensity and agreement with the ACF models (camera models: test_noise.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax.fcs import pipeline, simulate


def test_simulator_is_deterministic_for_a_key(optics_2d):
    geo = simulate.StackGeometry(frames=50, size_px=4, frame_time_s=1e-3, n_particles=20)
    sample = simulate.DiffusionSample(1.0, 5.0)
    a = simulate.simulate_stack(jax.random.key(3), sample, optics_2d, geo)
    b = simulate.simulate_stack(jax.random.key(3), sample, optics_2d, geo)
    c = simulate.simulate_stack(jax.random.key(4), sample, optics_2d, geo)
    assert a.shape == (50, 4, 4)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_simulated_mean_intensity_matches_density_and_brightness(optics_2d):
    # every photon of a particle lands somewhere: mean counts/pixel = density * a^2 * brightness
    geo = simulate.StackGeometry(frames=400, size_px=8, frame_time_s=1e-3, n_particles=500, margin_px=8)
    stack = simulate.simulate_stack(jax.random.key(0), simulate.DiffusionSample(1.0, 4.0), optics_2d, geo)
    density_px = 500 / (8 + 16) ** 2
    assert float(stack.mean()) == pytest.approx(density_px * 4.0, rel=0.05)


def _recovered_d(optics, three_d, frame_time_s, seeds):
    geo = simulate.StackGeometry(
        frames=30000,
        size_px=12,
        frame_time_s=frame_time_s,
        margin_px=8,
        three_d=three_d,
        n_particles=simulate.particles_for_density(3.0, 12, optics, 8),
        # 5 sub-steps: the in-frame motion (46 nm r.m.s. per axis at D = 1 um^2/s) is far below
        # the PSF and pixel either way; 50 frames per scan step changes the speed, not the stack
        substeps=5,
        frames_per_step=50,
    )
    settings = pipeline.AnalysisSettings(
        frame_time_s=frame_time_s, optics=optics, model="3d" if three_d else "2d", bleach_order=0
    )
    fitted = []
    for seed in seeds:
        stack = np.asarray(
            simulate.simulate_stack(jax.random.key(seed), simulate.DiffusionSample(1.0, 8.0), optics, geo)
        )
        maps = pipeline.analyse_stack(stack, settings, progress=False)
        assert np.mean(maps.status == 0) > 0.95
        fitted.append(maps.d_um2_s.ravel())
    return float(np.nanmedian(np.concatenate(fitted)))


@pytest.mark.slow
def test_fitting_simulated_2d_stacks_recovers_d_within_5_percent(optics_2d):
    # 4 independent 12 x 12 x 30,000 stacks; per-stack medians scatter by ~5 %, their pool by ~2.5 %
    assert _recovered_d(optics_2d, False, 1.06e-3, range(4)) == pytest.approx(1.0, rel=0.05)


@pytest.mark.slow
def test_fitting_simulated_3d_stacks_recovers_d_within_5_percent(optics_3d):
    assert _recovered_d(optics_3d, True, 2.04e-3, range(4)) == pytest.approx(1.0, rel=0.05)


# ---------------------------------------------------------------------------------------------
# On-the-fly training batches (TrainingPrior / sample_training_params / simulate_training_batch)
# ---------------------------------------------------------------------------------------------


def test_training_priors_carry_the_imfcsnet_settings():
    p2, p3 = simulate.TrainingPrior.itir_2d(), simulate.TrainingPrior.spim_3d()
    hash(p2), hash(p3)  # static arguments of jit
    assert (p2.frames, p2.size_px, p2.margin_px, p2.substeps, p2.box_side_px) == (2500, 3, 6, 10, 15)
    assert not p2.three_d and p3.three_d
    # Tang et al. 2024, Methods: a = 24 um / 100x = 240 nm (2D), 24 um / 60x = 400 nm (3D); brightness ranges;
    # density 0.48374 x/÷ 4.47214 px^-2 -> 24-486 particles in 15 x 15 px
    assert p2.camera_pixel_um / p2.magnification == pytest.approx(0.24)
    assert p3.camera_pixel_um / p3.magnification == pytest.approx(0.4)
    assert (p2.brightness_min, p2.brightness_max) == pytest.approx((1.06, 10.6))
    assert (p3.brightness_min, p3.brightness_max) == pytest.approx((2.04, 20.4))
    assert int(np.floor(p2.density_min_per_px2 * 225)) == 24 and int(np.floor(p2.density_max_per_px2 * 225)) == 486
    # PhotonSig = sigma0 lambda / NA / 2a: 0.67012 px at sigma0 0.8 (2D), 0.708125 px at 1.1 (3D)
    assert 0.8 * 0.583 / 1.45 / 2 / 0.24 == pytest.approx(0.67012, rel=1e-3)
    assert 1.1 * 0.515 / 1.0 / 2 / 0.4 == pytest.approx(0.708125, rel=1e-4)
    with pytest.raises(ValueError):
        simulate.TrainingPrior.itir_2d(max_particles=100)  # fewer than the 486 of the top density
    with pytest.raises(ValueError):
        simulate.TrainingPrior.itir_2d(brightness_min=5.0, brightness_max=1.0)


def test_sampled_training_params_follow_the_prior():
    from scipy import stats

    prior = simulate.TrainingPrior.itir_2d()
    m = 4000
    p = jax.jit(simulate.sample_training_params, static_argnums=(1, 2))(jax.random.key(11), prior, m)
    p = jax.tree.map(np.asarray, p)
    assert all(v.shape == (m,) for v in p)
    assert p.n_particles.dtype == np.int32
    for v, lo, hi in [
        (p.d_um2_s, 0.02, 50.0),
        (p.n_particles, 24, 486),
        (p.brightness, 1.06, 10.6),
        (p.sigma0, 0.75, 0.85),
        (p.noise_sd, np.sqrt(0.09), np.sqrt(0.11)),
    ]:
        assert lo * (1 - 1e-6) <= v.min() and v.max() <= hi * (1 + 1e-6)
    # ln D uniform on [ln 0.02, ln 50]; brightness uniform: KS with 4000 draws (a fixed key; a
    # correct sampler fails p > 1e-3 one time in a thousand keys)
    assert stats.kstest(np.log(p.d_um2_s), stats.uniform(np.log(0.02), np.log(50 / 0.02)).cdf).pvalue > 1e-3
    assert stats.kstest(p.brightness, stats.uniform(1.06, 10.6 - 1.06).cdf).pvalue > 1e-3
    # n = floor(density * 225) with ln density uniform: exact CDF P(n <= k) of that discrete law;
    # KS distance below the 0.1 % critical value 1.95 / sqrt(m) (conservative for a discrete law)
    lo, hi = np.log(prior.density_min_per_px2), np.log(prior.density_max_per_px2)
    k = np.arange(24, 487)
    cdf = np.clip((np.log((k + 1) / 225.0) - lo) / (hi - lo), 0.0, 1.0)
    emp = np.searchsorted(np.sort(p.n_particles), k, side="right") / m
    assert np.max(np.abs(emp - cdf)) < 1.95 / np.sqrt(m)


def test_training_batch_is_deterministic_with_static_shapes():
    prior = simulate.TrainingPrior.itir_2d(frames=30, density_max_per_px2=0.3, max_particles=67)
    stacks, params = simulate.simulate_training_batch(jax.random.key(0), prior, 4)
    again, params_again = simulate.simulate_training_batch(jax.random.key(0), prior, 4)
    other, params_other = simulate.simulate_training_batch(jax.random.key(1), prior, 4)
    assert stacks.shape == (4, 30, 3, 3) and stacks.dtype == jnp.float32
    assert all(v.shape == (4,) for v in params)
    np.testing.assert_array_equal(np.asarray(stacks), np.asarray(again))
    for a, b in zip(params, params_again):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(stacks), np.asarray(other))
    assert not np.array_equal(np.asarray(params.d_um2_s), np.asarray(params_other.d_um2_s))
    # the samples of a batch differ from each other (own keys, own parameters)
    assert len({np.asarray(s).tobytes() for s in stacks}) == 4


def _mean_intensity_ratios(three_d, batch):
    """Observed / expected mean counts per sample for a prior whose particle number varies
    (45-202 of max_particles 202), fixed D = 50 um^2/s (fast mixing) and brightness 5."""
    ctor = simulate.TrainingPrior.spim_3d if three_d else simulate.TrainingPrior.itir_2d
    prior = ctor(
        frames=400,
        d_min_um2_s=50.0,
        d_max_um2_s=50.0,
        density_min_per_px2=0.2,
        density_max_per_px2=0.9,
        brightness_min=5.0,
        brightness_max=5.0,
        max_particles=202,
    )
    stacks, params = simulate.simulate_training_batch(jax.random.key(3), prior, batch)
    n = np.asarray(params.n_particles)
    # Uniform density over a box much wider than the PSF: every photon lands somewhere in the
    # plane, so by translation invariance a pixel collects density * a^2 * brightness per frame
    # (photons lost past the 6 px margin: < 1e-15 in 2D, 0.1 % in 3D by quadrature over the
    # defocused PSF). In 3D the particles fill z in [-H, H], H = depth_factor w_z / 2, and emit
    # exp(-2 z^2 / w_z^2): mean weight = sqrt(pi/2) w_z erf(sqrt2 H / w_z) / (2 H). The Gaussian
    # camera noise has zero mean.
    weight = 1.0
    if three_d:
        h = prior.depth_factor / 2  # in units of w_z
        weight = np.sqrt(np.pi / 2) * float(jax.scipy.special.erf(np.sqrt(2) * h)) / (2 * h)
    expected = n / prior.box_side_px**2 * 5.0 * weight
    observed = np.asarray(stacks, np.float64).mean(axis=(1, 2, 3))
    return n, observed, expected


def test_training_batch_mean_intensity_is_density_times_brightness_and_masks_particles_2d():
    n, observed, expected = _mean_intensity_ratios(False, 32)
    assert n.min() < 70 and n.max() > 150  # the batch spans a 2-3x range of particle numbers
    # Sampling error of the pooled ratio (particle-number fluctuations in the 3x3 window, which
    # decorrelate in ~3 frames at D = 50, plus shot noise): ~0.8 % (s.d. over seeds); 3 % ~ 4 s.d.
    assert observed.sum() / expected.sum() == pytest.approx(1.0, abs=0.03)
    # linear in the number of *active* particles: the low-n and high-n halves agree with the
    # closed form separately (each half ~1.4 % s.d.). Were masked particles emitting, every
    # sample would show 202 particles' worth and the low half would read ~2.5x too high.
    low = n < np.median(n)
    assert observed[low].sum() / expected[low].sum() == pytest.approx(1.0, abs=0.06)
    assert observed[~low].sum() / expected[~low].sum() == pytest.approx(1.0, abs=0.06)
    slope = np.sum(observed * n) / np.sum(n * n)  # least squares through the origin
    assert slope == pytest.approx(5.0 / 225, rel=0.03)


def test_training_batch_mean_intensity_matches_the_light_sheet_average_3d():
    _n, observed, expected = _mean_intensity_ratios(True, 64)
    # fewer photons (mean sheet weight 0.125) and slow mixing across the 11 um deep box: the
    # pooled ratio scatters by ~1.3 % over seeds at batch 64; 5 % ~ 4 s.d.
    assert observed.sum() / expected.sum() == pytest.approx(1.0, abs=0.05)


def test_frames_per_step_changes_speed_not_results(optics_3d):
    # Each frame draws from its own key whatever the chunking; positions differ only by float
    # rounding, which flips a Poisson draw with probability ~1e-6 per pixel-frame.
    geo = simulate.StackGeometry(
        frames=53, size_px=4, frame_time_s=2e-3, n_particles=80, three_d=True, frames_per_step=1
    )
    sample = simulate.DiffusionSample(2.0, 6.0)
    a = np.asarray(simulate.simulate_stack(jax.random.key(5), sample, optics_3d, geo))
    b = np.asarray(
        simulate.simulate_stack(jax.random.key(5), sample, optics_3d, dataclasses.replace(geo, frames_per_step=7))
    )
    assert a.shape == b.shape == (53, 4, 4)
    assert np.mean(a == b) > 0.999
