"""smlm.estimate: spot detection, ROI extraction, per-spot Poisson MLE at the Cramér-Rao bound."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from fluojax.io import InputError
from fluojax.noise import EMCCD, IdealCamera
from fluojax.smlm import estimate as E
from fluojax.smlm.models import Emitters, Gaussian2D, QuadPlane, frame_expected, pixel_grid, spot_expected

PSF2D = Gaussian2D(130.0)
QUAD = QuadPlane.table_2()


def _lattice(n_side: int, spacing_px: float, first_px: float, pixel_nm: float, rng, jitter_px: float = 0.5):
    """Emitters on a square lattice (well separated), each moved by up to ``jitter_px`` pixels."""
    g = (first_px + spacing_px * np.arange(n_side)) * pixel_nm
    x, y = (v.ravel() for v in np.meshgrid(g, g))
    x = x + rng.uniform(-jitter_px, jitter_px, x.size) * pixel_nm
    y = y + rng.uniform(-jitter_px, jitter_px, y.size) * pixel_nm
    return x, y


def _frame(psf, x, y, z, photons, background, shape, pixel_nm):
    em = Emitters(*(jnp.asarray(v, jnp.float32) for v in (x, y, z, np.full(len(x), photons))))
    return frame_expected(psf, em, pixel_grid(shape, pixel_nm), background)


def _match(found_x, found_y, x, y):
    """Index of the nearest found position for every truth, and its distance."""
    d = np.hypot(found_x[None, :] - x[:, None], found_y[None, :] - y[:, None])
    return d.argmin(axis=1), d.min(axis=1)


def test_detector_finds_every_isolated_spot_and_nothing_else():
    rng = np.random.default_rng(0)
    x, y = _lattice(4, 14.0, 10.0, 100.0, rng)  # 16 spots, 14 px apart, >= 9 px from the border
    mu = _frame(PSF2D, x, y, 0 * x, 1500.0, 10.0, (64, 64), 100.0)
    photons = jax.random.poisson(jax.random.key(0), mu).astype(jnp.float32)[None]
    cand = E.detect_spots(photons, 1.3, threshold=5.0, max_spots=32)
    valid = np.asarray(cand.valid[0])
    assert valid.sum() == 16  # recall 1 and no false positive
    cx = (np.asarray(cand.col[0])[valid] + 0.5) * 100.0
    cy = (np.asarray(cand.row[0])[valid] + 0.5) * 100.0
    index, dist = _match(cx, cy, x, y)
    assert len(set(index)) == 16  # one candidate per emitter
    assert dist.max() < 100.0  # the local maximum is the pixel holding the emitter or a neighbour


def test_rois_equal_numpy_slices_with_the_origin_clamped_into_the_frame():
    rng = np.random.default_rng(1)
    stack = rng.normal(size=(3, 2, 20, 24)).astype(np.float32)
    frame = np.array([0, 2, 1, 1, 2])
    row = np.array([10, 0, 19, 5, 3])
    col = np.array([12, 23, 0, 1, 22])
    size = 7
    rois = E.extract_rois(stack, frame, row, col, size)
    for i in range(len(frame)):
        r0 = min(max(row[i] - 3, 0), 20 - size)
        c0 = min(max(col[i] - 3, 0), 24 - size)
        np.testing.assert_array_equal(np.asarray(rois.data[i]), stack[frame[i], :, r0 : r0 + size, c0 : c0 + size])
        assert tuple(np.asarray(rois.origin[i])) == (r0, c0)
    np.testing.assert_array_equal(np.asarray(rois.frame), frame)


def test_localize_recovers_noise_free_2d_spots_exactly():
    rng = np.random.default_rng(2)
    x, y = _lattice(3, 16.0, 8.0, 100.0, rng)
    frame = _frame(PSF2D, x, y, 0 * x, 2000.0, 10.0, (48, 48), 100.0)
    fits = E.localize(frame, PSF2D, 100.0)
    assert fits.x_nm.size == 9 and np.all(fits.status == 0)
    index, dist = _match(fits.x_nm, fits.y_nm, x, y)
    # converged to 1e-3 standard errors (~4 nm CRLB): 0.05 nm allows float32 rounding of ~3000 nm
    assert dist.max() < 0.05
    np.testing.assert_allclose(fits.photons[index], 2000.0, rtol=1e-3)
    np.testing.assert_allclose(fits.background[index], 10.0, rtol=1e-3)
    assert np.all(np.isnan(fits.z_nm))


def test_refine_recovers_noise_free_quadplane_spots_from_rough_starts():
    rng = np.random.default_rng(3)
    x, y = _lattice(3, 12.0, 6.0, 192.0, rng)
    z = rng.uniform(0.0, 1200.0, x.size)
    frame = _frame(QUAD, x, y, z, 1000.0, 10.0, (36, 36), 192.0)
    # starts 60 nm off laterally, z unknown (found by the start grid)
    fits = E.refine(frame, np.zeros(x.size, int), x + 60.0, y - 60.0, QUAD, 192.0)
    assert np.all(fits.status == 0)
    # the solver accepts steps while the float32 deviance (~4000 counts, rounding ~1e-2) falls:
    # that resolves a parameter to ~0.1 of its CRLB (~4 nm lateral, ~9 nm axial), so 0.5 and 1 nm
    np.testing.assert_allclose(fits.x_nm, x, atol=0.5)
    np.testing.assert_allclose(fits.y_nm, y, atol=0.5)
    np.testing.assert_allclose(fits.z_nm, z, atol=1.0)
    np.testing.assert_allclose(fits.photons, 1000.0, rtol=1e-3)


def _noisy_rois(psf, k, pixel_nm, theta, key):
    grid = pixel_grid((k, k), pixel_nm)
    pos = theta[:, :3] if psf.three_d else np.concatenate([theta[:, :2], 0 * theta[:, :1]], axis=1)
    mu = jax.vmap(lambda p, n, b: spot_expected(psf, p, n, b, grid))(
        jnp.asarray(pos, jnp.float32), jnp.asarray(theta[:, -2], jnp.float32), jnp.asarray(theta[:, -1], jnp.float32)
    )
    return np.asarray(jax.random.poisson(key, mu), np.float32)


def _precision_ratio(psf, k, pixel_nm, theta, key):
    """Empirical s.d. of the MLE's errors over the root-mean-square CRLB at the truth, per parameter."""
    counts = _noisy_rois(psf, k, pixel_nm, theta, key)
    fitted, _, _ = E.fit_rois(counts, psf, pixel_nm)
    ok = np.all(np.isfinite(fitted), axis=1)
    assert ok.mean() > 0.99
    bound = np.asarray(E.spot_crlb(psf, theta, k, pixel_nm))
    return (fitted - theta)[ok].std(axis=0) / np.sqrt(np.mean(bound[ok] ** 2, axis=0))


def test_mle_precision_is_within_10_percent_of_the_crlb_2d():
    # 2000 spots, N = 2000, b = 10, a = 100 nm, s = 130 nm, anywhere in the central pixel. The
    # s.d. of n draws has a relative standard error ~1/sqrt(2n) = 1.6 %, so the 10 % band is
    # ~6 standard errors: a failure means the estimator is not efficient, not bad luck.
    rng = np.random.default_rng(4)
    n, k, a = 2000, 7, 100.0
    centre = k * a / 2
    theta = np.stack(
        [centre + rng.uniform(-50, 50, n), centre + rng.uniform(-50, 50, n), np.full(n, 2000.0), np.full(n, 10.0)], 1
    )
    ratio = _precision_ratio(PSF2D, k, a, theta, jax.random.key(4))
    np.testing.assert_allclose(ratio[:2], 1.0, atol=0.10)
    np.testing.assert_allclose(ratio[2], 1.0, atol=0.10)  # photons too


def test_mle_precision_is_within_10_percent_of_the_crlb_quadplane():
    # 1500 spots of 1000 photons per plane, b = 10, z in [100, 1100] nm between the outer planes:
    # relative s.e. of a s.d. ~1/sqrt(3000) = 1.8 %, so 10 % is > 5 s.e. (x, y and z).
    rng = np.random.default_rng(5)
    n, k, a = 1500, 9, 192.0
    centre = k * a / 2
    theta = np.stack(
        [
            centre + rng.uniform(-96, 96, n),
            centre + rng.uniform(-96, 96, n),
            rng.uniform(100.0, 1100.0, n),
            np.full(n, 1000.0),
            np.full(n, 10.0),
        ],
        1,
    )
    ratio = _precision_ratio(QUAD, k, a, theta, jax.random.key(5))
    np.testing.assert_allclose(ratio[:3], 1.0, atol=0.10)


@pytest.mark.parametrize(
    ("photons", "background"), [(2000.0, 1e-6), (2000.0, 1.0), (2000.0, 10.0), (500.0, 10.0), (5000.0, 50.0)]
)
def test_autodiff_crlb_equals_the_mortensen_mle_form(photons, background):
    # Mortensen et al. 2010, eq. 5 is the bound for a Gaussian of variance s^2 + a^2/12 on an
    # infinite detector. For a 15 x 15 ROI (+-5.8 s.d.) the pixel-integrated Gaussian's bound by
    # autodiff agrees to < 3e-4 (float64) over b = 0..50 and N = 500..5000: the a^2/12 term
    # captures pixelation to that order for a = 100 nm, s = 130 nm; 1e-3 leaves room for it.
    with jax.enable_x64(True):
        k, a = 15, 100.0
        theta = jnp.array([k * a / 2, k * a / 2, photons, background])
        bound = E.spot_crlb(PSF2D, theta, k, a)
        closed = np.sqrt(float(E.mortensen_mle_variance(130.0, a, photons, background)))
        np.testing.assert_allclose(float(bound[0]), closed, rtol=1e-3)
        np.testing.assert_allclose(float(bound[1]), closed, rtol=1e-3)


def test_small_roi_bound_exceeds_the_infinite_detector_form_by_a_few_percent():
    # a 7 x 7 ROI truncates the PSF (+-2.7 s.d.) and the fitted background takes information:
    # the exact bound is 0.5-1 % above the closed form at b = 10 (computed: 0.58 %)
    with jax.enable_x64(True):
        bound = float(E.spot_crlb(PSF2D, jnp.array([350.0, 350.0, 2000.0, 10.0]), 7, 100.0)[0])
        closed = np.sqrt(float(E.mortensen_mle_variance(130.0, 100.0, 2000.0, 10.0)))
        assert 1.0 < bound / closed < 1.01


def test_mortensen_integral_matches_quadrature():
    for tau in (1e-3, 0.05, 0.3, 2.0, 50.0):
        ref = integrate.quad(lambda t, tau=tau: np.log(t) / (1 + t / tau), 0, 1, limit=200)[0]
        with jax.enable_x64(True):
            got = float(E._mortensen_integral(jnp.asarray(tau)))
        # 64-point Gauss-Legendre: 2e-6 relative at tau = 1e-3, where the integrand bends sharply
        # near t = 0; 1e-5 is far below any effect on a bound
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-9)


def test_mortensen_lsq_form_is_16_9_of_the_mle_form_without_background():
    # eq. 4 at b = 0 is (16/9) s_a^2 / N; eq. 5 tends to s_a^2 / N; EMCCD doubles both
    lsq = float(E.mortensen_lsq_variance(130.0, 100.0, 1000.0, 0.0))
    mle = float(E.mortensen_mle_variance(130.0, 100.0, 1000.0, 1e-9))
    np.testing.assert_allclose(lsq, (130.0**2 + 100.0**2 / 12) / 1000.0 * 16 / 9, rtol=1e-6)
    np.testing.assert_allclose(lsq / mle, 16 / 9, rtol=1e-4)
    np.testing.assert_allclose(
        float(E.mortensen_lsq_variance(130.0, 100.0, 1000.0, 5.0, emccd=True)),
        2 * float(E.mortensen_lsq_variance(130.0, 100.0, 1000.0, 5.0)),
        rtol=1e-6,
    )


def test_emccd_bound_is_sqrt2_times_the_ideal_one():
    # an EMCCD without read noise or spurious charge: Poisson-equivalent scale 1/2, no shift, so
    # the Fisher information halves exactly (excess noise factor 2; Mortensen et al. 2010)
    theta = jnp.array([350.0, 350.0, 2000.0, 10.0])
    ideal = np.asarray(E.spot_crlb(PSF2D, theta, 7, 100.0))
    em = np.asarray(E.spot_crlb(PSF2D, theta, 7, 100.0, camera=EMCCD(em_gain=300.0)))
    np.testing.assert_allclose(em / ideal, np.sqrt(2.0), rtol=1e-4)


def test_emccd_frames_are_localized_at_their_bound():
    # 20 frames x 9 spots read out by the SMLM Challenge 2016 EMCCD (ADU), fitted through its
    # Poisson-equivalent data: the errors over the CRLB (which includes the excess noise) should
    # have unit r.m.s.; with 360 normalised errors its s.e. is ~4 %, and the equivalent-Poisson
    # treatment is approximate, so [0.85, 1.2].
    camera = EMCCD.challenge_2016()
    rng = np.random.default_rng(6)
    n_frames = 20
    xs, ys, frames = [], [], []
    for i in range(n_frames):
        x, y = _lattice(3, 14.0, 7.0, 100.0, rng)
        mu = _frame(PSF2D, x, y, 0 * x, 3000.0, 20.0, (40, 40), 100.0)
        frames.append(camera.counts(jax.random.key(100 + i), mu))
        xs.append(x)
        ys.append(y)
    fits = E.localize(jnp.stack(frames), PSF2D, 100.0, camera=camera)
    errors = []
    for i in range(n_frames):
        sel = fits.frame == i
        index, dist = _match(fits.x_nm[sel], fits.y_nm[sel], xs[i], ys[i])
        assert sel.sum() == 9 and dist.max() < 60.0
        errors.append((fits.x_nm[sel][index] - xs[i]) / fits.crlb_x_nm[sel][index])
        errors.append((fits.y_nm[sel][index] - ys[i]) / fits.crlb_y_nm[sel][index])
    rms = np.sqrt(np.mean(np.concatenate(errors) ** 2))
    assert 0.85 < rms < 1.2
    # photons are reported as photons (QE and gains undone): 3000 within the bound's spread
    assert abs(np.median(fits.photons) - 3000.0) < 150.0


def test_wrong_plane_count_is_an_input_error():
    with pytest.raises(InputError, match="planes"):
        E.localize(np.zeros((2, 3, 32, 32)), QUAD, 192.0)
    with pytest.raises(InputError, match="ROI"):
        E.localize(np.zeros((1, 5, 5)), PSF2D, 100.0, camera=IdealCamera())
