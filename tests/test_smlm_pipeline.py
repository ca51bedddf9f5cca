"""fluojax.smlm.pipeline: the camera of ThunderSTORM's set-up, multi-plane stacks, refusals,
simulated stacks with their truth, and the library path stack -> MLE localizations -> metrics."""

import math

import jax
import numpy as np
import pytest
import tifffile

from fluojax.io import InputError
from fluojax.noise import EMCCD, SCMOS, GaussianReadNoise
from fluojax.smlm import pipeline
from fluojax.smlm.models import PSFS, Gaussian2D

# ------------------------------------------------------------------------------------------------
# camera set-up


def test_camera_settings_invert_thunderstorms_photon_conversion():
    # ThunderSTORM (Ovesny et al. 2014): photons = (ADU - base level) * e_per_adu / (EM gain * QE).
    # Noise-free counts made by that formula's inverse must come back as the photons exactly
    # (float32 arithmetic: 1e-5 relative)
    photons = np.array([[0.0, 1.0], [250.0, 4000.0]], np.float32)
    for em_gain, kind in ((None, GaussianReadNoise), (300.0, EMCCD)):
        camera = pipeline.camera_from_settings(
            e_per_adu=45.0, baseline_adu=100.0, em_gain=em_gain, quantum_efficiency=0.9
        )
        assert isinstance(camera, kind)
        adu = 100.0 + photons * 0.9 * (em_gain or 1.0) / 45.0
        np.testing.assert_allclose(pipeline.frames_to_photons(adu, camera), photons, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"e_per_adu": 0.0}, "photoelectrons per A/D count 0.0 e-/ADU: must be > 0"),
        ({"quantum_efficiency": 1.5}, "quantum efficiency 1.5: must be in (0, 1]"),
        ({"em_gain": 0.5}, "EM gain 0.5: must be >= 1"),
        ({"baseline_adu": math.inf}, "base level inf ADU: must be a finite number"),
        ({"read_noise_e": -1.0}, "read noise -1.0 e-: must be >= 0"),
    ],
)
def test_bad_camera_values_are_refused_with_their_value_and_unit(settings, message):
    with pytest.raises(InputError) as err:
        pipeline.camera_from_settings(**settings)
    assert str(err.value).startswith(message)


def test_scmos_maps_give_per_pixel_cameras_with_the_variance_in_electrons():
    # calibration maps measure the read variance in ADU^2; the camera model takes e-^2 = ADU^2 / gain^2
    gain = np.full((3, 4), 0.5)
    variance = np.arange(12.0).reshape(3, 4)
    camera = pipeline.camera_from_settings(
        scmos_offset_adu=np.full((3, 4), 100.0),
        scmos_variance_adu2=variance,
        scmos_gain_adu_per_e=gain,
        frame_shape=(1, 3, 4),
    )
    assert isinstance(camera, SCMOS)
    np.testing.assert_allclose(camera.read_variance_e2, variance / 0.25, rtol=1e-6)
    with pytest.raises(InputError, match="sCMOS gain map of 3 x 5 pixels: the frames are 3 x 4"):
        pipeline.camera_from_settings(scmos_gain_adu_per_e=np.ones((3, 5)), frame_shape=(1, 3, 4))
    with pytest.raises(InputError, match="an sCMOS camera has no EM register"):
        pipeline.camera_from_settings(em_gain=100.0, scmos_offset_adu=np.zeros((3, 4)))


# ------------------------------------------------------------------------------------------------
# stacks


def test_multi_plane_stacks_interleave_planes_plane_index_fastest(tmp_path):
    # image i holds the value i: frame t, plane k must be image 4 t + k
    images = np.broadcast_to(np.arange(12, dtype=np.float32)[:, None, None], (12, 5, 6))
    tifffile.imwrite(tmp_path / "s.tif", np.ascontiguousarray(images))
    frames, _ = pipeline.read_frames(tmp_path / "s.tif", planes=4)
    assert frames.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(frames[:, :, 0, 0], np.arange(12).reshape(3, 4))


def test_a_stack_that_does_not_divide_into_planes_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((30, 5, 6), np.float32))
    with pytest.raises(InputError, match="a stack of 30 images does not divide into frames of 4 planes"):
        pipeline.read_frames(tmp_path / "s.tif", planes=4)


def test_check_frames_refuses_a_constant_stack_and_counts_empty_frames():
    psf = PSFS["gaussian"]
    with pytest.raises(InputError, match="every one of the 3 frames holds the single value 0"):
        pipeline.check_frames(np.zeros((3, 1, 4, 4)), psf)
    frames = np.zeros((3, 1, 4, 4))
    frames[1, 0, 2, 2] = 5.0  # one frame with signal, two blank ones: fine, two empty
    assert pipeline.check_frames(frames, psf)["empty_frames"] == 2
    with pytest.raises(InputError, match="1 plane\\(s\\) per frame, but the QuadPlane PSF has 4"):
        pipeline.check_frames(frames, PSFS["quadplane"])


def test_simulated_truth_lists_every_emitter_with_z_only_in_3d():
    stack, truth, scene = pipeline.simulate_stack("2d", 3, jax.random.key(0), emitters=4, shape=(16, 16))
    assert stack.shape == (3, 1, 16, 16) and truth.n == 12
    assert np.all(np.isnan(truth.z_nm)) and np.array_equal(truth.frame, np.repeat(np.arange(3), 4))
    assert np.all((truth.x_nm >= 0) & (truth.x_nm < 16 * scene.pixel_nm))
    stack, truth, _ = pipeline.simulate_stack("quadplane-paper", 2, jax.random.key(0), emitters=5, shape=(16, 16))
    assert stack.shape == (2, 4, 16, 16) and truth.n == 10
    assert np.all((truth.z_nm >= -200) & (truth.z_nm < 1350))  # the paper's z range


def test_emccd_counts_read_back_with_the_same_settings_give_the_photons():
    # the challenge's EMCCD (QE 0.9, EM gain 300, 45 e-/ADU, base level 100 ADU) entered as
    # ThunderSTORM's settings: each frame's total converted photons must equal the truth's photons
    # inside the field (a Gaussian's mass in [0, W) x [0, H), scipy's normal CDF) plus the
    # 10-photon background over the 32 x 32 pixels. The EM register's excess noise gives
    # the total a s.d. of sqrt(2 total / QE) ~ 0.4 % (~20,000 photons); spurious charge (not a
    # ThunderSTORM setting) adds 0.002 / 0.9 photons per pixel, 0.01 %. So 2 % per frame.
    camera = EMCCD.challenge_2016()
    stack, truth, scene = pipeline.simulate_stack("2d", 4, jax.random.key(1), camera=camera, emitters=4, shape=(32, 32))
    settings = pipeline.camera_from_settings(e_per_adu=45.0, baseline_adu=100.0, em_gain=300.0, quantum_efficiency=0.9)
    totals = pipeline.frames_to_photons(stack, settings).sum(axis=(1, 2, 3))
    from scipy.stats import norm

    side, s = 32 * scene.pixel_nm, scene.psf.sigma_nm
    inside = [norm.cdf(side, v, s) - norm.cdf(0.0, v, s) for v in (truth.x_nm, truth.y_nm)]
    expected = np.bincount(truth.frame, truth.photons * inside[0] * inside[1]) + scene.background * 32 * 32
    np.testing.assert_allclose(totals, expected, rtol=0.02)


# ------------------------------------------------------------------------------------------------
# the library path: stack -> MLE -> metrics


def test_mle_localizations_of_a_sparse_2d_stack_match_the_truth_at_the_crlb():
    pytest.importorskip("fluojax.smlm.estimate")
    from fluojax.smlm import metrics

    # one emitter per 24 x 24 frame of 100 nm pixels (no overlaps), 1000-5000 photons, 10
    # background photons per pixel, sigma 130 nm; molecules within 300 nm (2.3 sigma) of the border
    # are left out (the challenge's border rule), as their PSF is cut by the field's edge.
    stack, truth, scene = pipeline.simulate_stack("2d", 40, jax.random.key(2), emitters=1, shape=(24, 24))
    locs, summary = pipeline.localize_stack(stack, scene.psf, scene.pixel_nm, progress=False)
    assert summary["frames"] == 40 and summary["localizations"] == locs.n
    field = (24 * scene.pixel_nm, 24 * scene.pixel_nm)
    result = pipeline.evaluate_tables(locs, truth, border_nm=300.0, field_nm=field)
    # every isolated molecule of >= 1000 photons is found (SNR > 20), and nothing else
    assert result.jaccard >= 90.0
    # the radial RMSE against the Cramer-Rao bound at the fitted values: E[dx^2 + dy^2] =
    # crlb_x^2 + crlb_y^2 = 2 uncertainty_xy^2. With ~20 matches (~40 squared errors) the ratio of
    # RMSEs has a relative s.d. of ~1/sqrt(2 * 40) = 11 %, so 1.4 allows 10 % above the bound
    # (MLE reaches it asymptotically) plus 3 s.d.
    match = metrics.match(truth, locs, border_nm=300.0, field_nm=field)
    bound = np.sqrt(np.mean(2.0 * locs.uncertainty_xy_nm[match.estimate_index] ** 2))
    assert result.tp >= 12
    assert result.rmse_lateral_nm < 1.4 * bound
    # and the bound itself is Mortensen et al. 2010's scale: 2.5-9 nm radial for 5000-1000 photons
    assert 2.0 < bound < 10.0


def test_localize_stack_refuses_unknown_methods_and_a_missing_network():
    frames = np.zeros((2, 1, 8, 8))
    frames[0, 0, 4, 4] = 1.0
    with pytest.raises(InputError, match="localization method 'gpu'"):
        pipeline.localize_stack(frames, Gaussian2D(), 100.0, method="gpu")
    with pytest.raises(InputError, match="needs a trained network"):
        pipeline.localize_stack(frames, Gaussian2D(), 100.0, method="net")
    with pytest.raises(InputError, match=r"pixel size 0\.0 nm: must be > 0"):
        pipeline.localize_stack(frames, Gaussian2D(), 0.0)


def test_mle_photons_of_an_emccd_stack_read_with_thunderstorms_settings_match_the_truth():
    pytest.importorskip("fluojax.smlm.estimate")
    from fluojax.smlm import metrics

    # the challenge's EMCCD, entered as ThunderSTORM's settings (45 e-/ADU, base level 100 ADU,
    # EM gain 300, QE 0.9): the fitted photons of isolated molecules are the simulated ones. With
    # the EM excess noise (F^2 = 2) a fit of N = 1000-5000 photons has a relative s.d. of about
    # sqrt(2 / (0.9 N)) x 1.3 (background) = 2-6 %; the median ratio of ~15 fits is known to ~2 %,
    # so 6 % is 3 s.d. (read noise and spurious charge, not ThunderSTORM settings, shift it < 0.1 %)
    camera = EMCCD.challenge_2016()
    stack, truth, scene = pipeline.simulate_stack(
        "2d", 32, jax.random.key(3), camera=camera, emitters=1, shape=(24, 24)
    )
    settings = pipeline.camera_from_settings(e_per_adu=45.0, baseline_adu=100.0, em_gain=300.0, quantum_efficiency=0.9)
    locs, _ = pipeline.localize_stack(stack, scene.psf, scene.pixel_nm, settings, progress=False)
    match = metrics.match(truth, locs, border_nm=300.0, field_nm=(2400.0, 2400.0))
    assert match.tp >= 10
    ratio = locs.photons[match.estimate_index] / truth.photons[match.truth_index]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.06)
