"""Simulator and camera models: determinism, camera moments in closed form, and agreement with the ACF models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax.fcs import pipeline, simulate
from fluojax.noise import Camera, camera_counts


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


@pytest.mark.parametrize("kind", ["gaussian", "emccd"])
def test_camera_counts_have_closed_form_moments(kind):
    lam, gain, offset, read, em = 30.0, 2.0, 100.0, 3.0, 50.0
    cam = Camera(kind, read_noise_e=read, gain_adu_per_e=gain, offset_adu=offset, em_gain=em)
    x = np.asarray(camera_counts(jax.random.key(1), jnp.full((400_000,), lam), cam), np.float64)
    if kind == "gaussian":  # (Poisson + read) * gain + offset
        mean, var = gain * lam + offset, gain**2 * (lam + read**2)
    else:  # Gamma(n, g) amplification: mean g lam, variance 2 g^2 lam (excess noise factor 2)
        mean, var = gain * em * lam + offset, gain**2 * (2 * em**2 * lam + read**2)
    # 4e5 samples: the mean to 0.1 %, the variance to ~0.5 %
    assert x.mean() == pytest.approx(mean, rel=3e-3)
    assert x.var() == pytest.approx(var, rel=2e-2)


def _recovered_d(optics, three_d, frame_time_s, seeds):
    geo = simulate.StackGeometry(
        frames=30000, size_px=12, frame_time_s=frame_time_s, margin_px=8, three_d=three_d,
        n_particles=simulate.particles_for_density(3.0, 12, optics, 8),
    )
    settings = pipeline.AnalysisSettings(frame_time_s=frame_time_s, optics=optics, model="3d" if three_d else "2d", bleach_order=0)
    fitted = []
    for seed in seeds:
        stack = np.asarray(simulate.simulate_stack(jax.random.key(seed), simulate.DiffusionSample(1.0, 8.0), optics, geo))
        maps = pipeline.analyse_stack(stack, settings, progress=False)
        assert np.mean(maps.status == 0) > 0.95
        fitted.append(maps.d_um2_s.ravel())
    return float(np.nanmedian(np.concatenate(fitted)))


def test_fitting_simulated_2d_stacks_recovers_d_within_5_percent(optics_2d):
    # 4 independent 12 x 12 x 30,000 stacks; per-stack medians scatter by ~5 %, their pool by ~2.5 %
    assert _recovered_d(optics_2d, False, 1.06e-3, range(4)) == pytest.approx(1.0, rel=0.05)


def test_fitting_simulated_3d_stacks_recovers_d_within_5_percent(optics_3d):
    assert _recovered_d(optics_3d, True, 2.04e-3, range(4)) == pytest.approx(1.0, rel=0.05)
