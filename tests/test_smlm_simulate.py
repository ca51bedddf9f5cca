"""Simulated SMLM frames: the paper's preset and the physical preset against their defining distributions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax.io import InputError
from fluojax.smlm.models import frame_expected, pixel_grid
from fluojax.smlm.simulate import (
    Scene,
    gaussian_2d,
    quadplane_paper,
    quadplane_physical,
    simulate_frames,
    structured_background,
)


def test_paper_preset_matches_tables_2_and_3():
    scene = quadplane_paper()
    assert scene.shape == (64, 64) and scene.pixel_nm == 192.0 and scene.emitters == 50
    assert scene.psf.planes == 4 and not scene.psf.integrated
    # photons of a weight-1 molecule: a' / a^2 = 5e7 / 192^2
    np.testing.assert_allclose(scene.photons_range, (0.3 * 5e7 / 192**2, 5e7 / 192**2), rtol=1e-6)


def test_emitters_fill_the_field_and_ranges():
    sim = simulate_frames(jax.random.key(0), quadplane_paper(), 40)
    em = sim.emitters
    assert sim.images.shape == (40, 4, 64, 64) and em.x_nm.shape == (40, 50)
    assert float(em.x_nm.min()) >= 0 and float(em.x_nm.max()) < 64 * 192
    assert float(em.z_nm.min()) >= -200 and float(em.z_nm.max()) < 1350
    # uniform on [0, 12288): mean 6144, s.e. of the mean of 2000 draws 12288/sqrt(12*2000) = 79 nm
    assert abs(float(em.x_nm.mean()) - 6144.0) < 4 * 79


def test_paper_drift_is_from_the_released_code_steps_and_spares_plane_3():
    drift = np.asarray(simulate_frames(jax.random.key(1), quadplane_paper(), 200).drift_nm)
    assert np.all(drift[:, 2] == 0)
    assert set(np.unique(drift[:, [0, 1, 3]])) == {-24.0, 0.0, 24.0, 48.0}


def test_paper_noise_is_poisson_background_plus_gaussian_without_shot_noise_on_the_signal():
    # no emitters: y = Poisson(10) + N(0, 9): mean 10, variance 19 (s.e. of the variance of 409600 draws ~ 0.05)
    scene = dataclasses.replace(quadplane_paper(), emitters=0, drift=None)
    y = np.asarray(simulate_frames(jax.random.key(2), scene, 25).images)
    assert abs(y.mean() - 10.0) < 0.05 and abs(y.var() - 19.0) < 0.3
    # with emitters the signal adds to the mean only: residual from the expected frame has variance 19
    sim = simulate_frames(jax.random.key(3), quadplane_paper(), 8)
    grid = pixel_grid((64, 64), 192.0)
    expected = jax.vmap(lambda e, d: frame_expected(quadplane_paper().psf, e, grid, 10.0, d))(
        sim.emitters, sim.drift_nm
    )
    residual = np.asarray(sim.images - expected)
    assert abs(residual.var() - 19.0) < 0.5


def test_physical_preset_has_poisson_noise_on_signal_and_background():
    sim = simulate_frames(jax.random.key(4), quadplane_physical(), 8)
    grid = pixel_grid((64, 64), 192.0)
    psf = quadplane_physical().psf
    mu = np.asarray(jax.vmap(lambda e, d: frame_expected(psf, e, grid, 10.0, d))(sim.emitters, sim.drift_nm))
    z = (np.asarray(sim.images) - mu) / np.sqrt(mu)
    # Pearson residuals of Poisson counts: mean 0, variance 1 (131072 values: s.e. ~0.004)
    assert abs(z.mean()) < 0.02 and abs(z.var() - 1.0) < 0.03


def test_structured_background_is_standardised_and_smooth():
    field = np.asarray(structured_background(jax.random.key(5), (64, 64), 100.0, 800.0))
    np.testing.assert_allclose([field.mean(), field.std()], [0.0, 1.0], atol=1e-5)
    # correlation length 800 nm = 8 px: neighbouring pixels are strongly correlated
    assert np.corrcoef(field[:, :-1].ravel(), field[:, 1:].ravel())[0, 1] > 0.9


def test_two_d_scene_puts_emitters_in_focus():
    sim = simulate_frames(jax.random.key(6), gaussian_2d(), 3)
    assert sim.images.shape == (3, 1, 64, 64) and float(jnp.abs(sim.emitters.z_nm).max()) == 0.0


def test_same_key_same_frames():
    a = simulate_frames(jax.random.key(7), gaussian_2d(), 2).images
    b = simulate_frames(jax.random.key(7), gaussian_2d(), 2).images
    np.testing.assert_array_equal(a, b)


def test_bad_scene_is_one_line_input_error():
    with pytest.raises(InputError, match="pixel size -1"):
        Scene(psf=gaussian_2d().psf, pixel_nm=-1.0)
