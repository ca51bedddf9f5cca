"""SOFI image metrics against independent references: nanopyx (decorrelation, Pearson, SQUIRREL
error map), NumPy, scikit-image (Li threshold) and closed-form constructions."""

import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.filters import threshold_li

from fluojax.io import InputError
from fluojax.sofi import metrics

with warnings.catch_warnings():  # nanopyx warns at import that OpenCL/CuPy/Dask are absent
    warnings.simplefilter("ignore")
    from nanopyx.core.analysis.decorr import DecorrAnalysis
    from nanopyx.core.analysis.pearson_correlation import pearson_correlation
    from nanopyx.core.transform.edges import apodize_edges as nanopyx_apodize
    from nanopyx.methods.squirrel import calculate_error_map


def _points(n: int, sigma: float, noise: float, seed: int = 0, peak: float = 100.0) -> np.ndarray:
    """Random point emitters (1 per 40 pixels) blurred by a Gaussian of sigma px, plus white
    Gaussian noise of sd ``noise``; float32 (n, n)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((n, n))
    p = rng.integers(0, n, (n * n // 40, 2))
    img[p[:, 0], p[:, 1]] = 1.0
    img = gaussian_filter(img, sigma) * peak
    return (img + rng.normal(0.0, noise, img.shape)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Pearson
# ----------------------------------------------------------------------------------------------


def test_pearson_matches_numpy_and_nanopyx():
    rng = np.random.default_rng(1)
    a = rng.random((48, 40)).astype(np.float32)
    b = (0.6 * a + 0.4 * rng.random((48, 40))).astype(np.float32)
    ours = float(metrics.pearson(a, b))
    # float32 sums over 1920 pixels: relative rounding ~1e-6
    assert ours == pytest.approx(np.corrcoef(a.ravel().astype(np.float64), b.ravel())[0, 1], abs=1e-5)
    assert ours == pytest.approx(float(pearson_correlation(a, b)), abs=1e-5)


# ----------------------------------------------------------------------------------------------
# Decorrelation analysis
# ----------------------------------------------------------------------------------------------


def test_apodization_matches_nanopyx():
    img = _points(70, 2.0, 1.0)[:50, :]  # non-square
    ours = np.asarray(metrics.apodize_edges(img))
    # same float32 formula; differences are single-precision rounding of values ~30
    np.testing.assert_allclose(ours, np.asarray(nanopyx_apodize(img)), atol=1e-5 * np.abs(img).max())


@pytest.mark.parametrize(("n", "sigma"), [(100, 1.0), (249, 2.0)])
def test_decorrelation_matches_nanopyx_on_noisy_images(n, sigma):
    # nanopyx's own rules (kc from the refinement pass, no amplitude threshold); 100 px is
    # padded to 128, 249 (an order-2 SOFI image of 128 px) to 256. On images with noise the high-pass curves are far above float32 rounding
    # and the peaks fall on the same radius bins: the resolutions agree to float rounding
    # (the tolerance 1e-3 is far below one radius bin, 1/49 of the range, ~5-10%).
    img = _points(n, sigma, noise=1.0, seed=n)
    ref = DecorrAnalysis(pixel_size=1, n_r=50, n_g=10)
    ref.run_analysis(img)
    ours = metrics.decorrelation_resolution(img, pixel_nm=1.0, refined_only=True, min_amplitude=0.0)
    assert ours.resolution_nm == pytest.approx(ref.resolution, rel=1e-3)


def test_decorrelation_on_clean_images_differs_from_nanopyx_by_its_rounding():
    # nearly noise-free: nanopyx's single-precision high-pass of sigma < ~0.2 px is rounding
    # noise whose spurious peak can raise kc by a few bins (measured: 0-10% smaller resolution
    # than ours on 12 such images; a float64 replica of nanopyx gives ours); never larger
    img = _points(128, 2.0, noise=0.1)
    ref = DecorrAnalysis(pixel_size=1, n_r=50, n_g=10)
    ref.run_analysis(img)
    ours = metrics.decorrelation_resolution(img, refined_only=True, min_amplitude=0.0)
    assert 1.0 - 1e-3 < ours.resolution_nm / ref.resolution < 1.12


def test_decorrelation_resolution_tracks_blur_width():
    # the same emitters blurred by sigma 1 and 2 px: the resolution doubles (within 15%: the
    # cut-off moves by whole radius bins), and pixel_nm only sets the unit
    narrow = metrics.decorrelation_resolution(_points(128, 1.0, 1.0), pixel_nm=100.0)
    wide = metrics.decorrelation_resolution(_points(128, 2.0, 1.0), pixel_nm=100.0)
    assert wide.resolution_nm / narrow.resolution_nm == pytest.approx(2.0, rel=0.15)
    assert 150.0 < narrow.resolution_nm < 400.0  # ~FWHM 235 nm
    assert narrow.resolution_nm == pytest.approx(2 * 100.0 / narrow.kc)


# ----------------------------------------------------------------------------------------------
# SQUIRREL
# ----------------------------------------------------------------------------------------------


def _sr_pair(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An m-fold super-resolved image of point emitters and a blurred, m x m binned, offset
    widefield reference of the same emitters (with noise)."""
    rng = np.random.default_rng(seed)
    f = n * m
    truth = np.zeros((f, f))
    p = rng.integers(0, f, (f * f // 30, 2))
    truth[p[:, 0], p[:, 1]] = 1.0
    sr = gaussian_filter(truth, 0.4 * m) * 100 + rng.normal(0, 0.5, (f, f))
    ref = gaussian_filter(truth, 1.5 * m).reshape(n, m, n, m).mean((1, 3)) * 50 + 10 + rng.normal(0, 0.2, (n, n))
    return ref.astype(np.float32), sr.astype(np.float32)


@pytest.mark.parametrize("m", [2, 4])
def test_squirrel_matches_nanopyx_error_map(m):
    ref, sr = _sr_pair(32, m, seed=m)
    emap, rse, rsp = calculate_error_map(ref, sr)
    # nanopyx's geometry: SR pixel i at reference position i/m, comparison on the SR grid
    ours = metrics.squirrel(ref, sr, grid=metrics.SRGrid(m, 0.0), at="sr")
    # same model and least squares; sigma by Brent vs a grid refined to ~5e-4 ref px: RSP is
    # flat at the optimum (measured |difference| 3e-6 and 2e-5)
    assert float(ours.rsp) == pytest.approx(rsp, abs=1e-4)
    # nanopyx rescales its Fourier-interpolated reference to the reference's min..max; that
    # affine map scales RSE and the error map (not RSP) by the ratio k of the ranges. Its
    # interpolation differs slightly at the Nyquist frequency: RSE agrees to 1e-4 relative,
    # the error maps to ~1.5% of RSE (RMS)
    up = np.asarray(ours.reference)
    k = (ref.max() - ref.min()) / (up.max() - up.min())
    assert float(ours.rse) * k == pytest.approx(rse, rel=1e-3)
    assert np.sqrt(np.mean((emap - k * np.asarray(ours.error_map)) ** 2)) < 0.03 * rse


def test_squirrel_recovers_rsf_on_magnified_grid():
    # closed form on the NanoJ geometry (m = 2, reference resolution): the reference is exactly
    # alpha (SR * G) + beta binned 2 x 2, which linear sampling at the block centres reproduces
    rng = np.random.default_rng(3)
    sr = gaussian_filter(rng.random((64, 64)), 1.0).astype(np.float32) * 10
    alpha, beta, sigma = 3.0, 5.0, 1.2  # sigma in reference pixels = 2.4 SR pixels
    ref = alpha * gaussian_filter(sr.astype(np.float64), 2 * sigma).reshape(32, 2, 32, 2).mean((1, 3)) + beta
    out = metrics.squirrel(ref.astype(np.float32), sr)
    assert float(out.sigma) == pytest.approx(sigma, abs=2e-3)  # grid step ~3e-4 ref px
    assert float(out.alpha) == pytest.approx(alpha, rel=1e-3)
    assert float(out.beta) == pytest.approx(beta, rel=1e-3)
    assert float(out.rsp) > 0.99999


def test_squirrel_recovers_rsf_on_sofipackage_grid():
    # the case: a 128 x 128 reference and an order-2 SOFI image of 2 (128 - 4) + 1 = 249
    # pixels, SOFI pixel i at camera position 1 + i/2. Reference pixels 1..125 are exactly
    # SOFI pixels 0, 2, ..., 248 of alpha (SR * G) + beta; the rest is unrelated noise that the
    # crop must drop.
    rng = np.random.default_rng(4)
    sr = gaussian_filter(rng.random((249, 249)), 1.5).astype(np.float32) * 10
    alpha, beta, sigma = 0.5, 2.0, 0.8
    ref = rng.random((128, 128)) * 100
    ref[1:126, 1:126] = alpha * gaussian_filter(sr.astype(np.float64), 2 * sigma)[::2, ::2] + beta
    out = metrics.squirrel(ref.astype(np.float32), sr)
    assert out.reference.shape == (125, 125)
    assert float(out.sigma) == pytest.approx(sigma, abs=2e-3)
    assert float(out.alpha) == pytest.approx(alpha, rel=1e-3)
    assert float(out.beta) == pytest.approx(beta, rel=1e-3)
    assert float(out.rsp) > 0.99999
    assert float(out.rse) < 1e-3 * float(np.std(ref[1:126, 1:126]))


def test_squirrel_on_sr_grid_handles_non_integer_ratio():
    # the same pair compared on the 249 x 249 grid: the reference is Fourier-interpolated to
    # the SOFI pixel positions; a smooth reference interpolates well away from its periodic
    # wrap, so sigma and RSP stay close to the reference-grid answer
    rng = np.random.default_rng(5)
    sr = gaussian_filter(rng.random((249, 249)), 3.0).astype(np.float32) * 10
    ref = np.zeros((128, 128))
    ref[1:126, 1:126] = gaussian_filter(sr.astype(np.float64), 2.0)[::2, ::2]
    ref = np.pad(ref[1:126, 1:126], ((1, 2), (1, 2)), mode="edge")
    out = metrics.squirrel(ref.astype(np.float32), sr, at="sr")
    assert out.error_map.shape == (249, 249)
    assert float(out.sigma) == pytest.approx(1.0, abs=0.1)
    assert float(out.rsp) > 0.99


def test_srgrid_from_shapes():
    assert metrics.SRGrid.infer((128, 128), (249, 249)) == metrics.SRGrid(2.0, 1.0)
    assert metrics.SRGrid.infer((128, 128), (373, 373)) == metrics.SRGrid.sofipackage(3)
    assert metrics.SRGrid.infer((64, 64), (127, 127)) == metrics.SRGrid.full(2)
    assert metrics.SRGrid.infer((32, 32), (64, 64)) == metrics.SRGrid(2.0, -0.25)
    with pytest.raises(InputError, match="give the grid"):
        metrics.SRGrid.infer((32, 32), (70, 70))


# ----------------------------------------------------------------------------------------------
# Li threshold, TPR/TNR
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_li_threshold_matches_skimage(seed):
    rng = np.random.default_rng(seed)
    img = (rng.gamma(2.0, 1.0, (64, 64)) * (1 + 5 * (rng.random((64, 64)) < 0.2))).astype(np.float32)
    # both iterate in float32 with the same rule; thresholds agree to single-precision rounding
    assert float(metrics.li_threshold(img)) == pytest.approx(float(threshold_li(img)), rel=1e-5)


def test_li_threshold_matches_skimage_on_integer_images():
    img = (np.random.default_rng(7).random((64, 64)) * 1000).astype(np.uint16)
    assert float(metrics.li_threshold(img)) == pytest.approx(float(threshold_li(img)), rel=1e-5)


def test_binary_rates_count_li_binarised_pixels():
    rng = np.random.default_rng(8)
    truth = gaussian_filter(rng.random((64, 64)), 2.0).astype(np.float32)
    pred = (truth + 0.02 * rng.normal(size=truth.shape)).astype(np.float32)
    out = metrics.binary_rates(pred, truth)
    bp, bt = pred > threshold_li(pred), truth > threshold_li(truth)
    tp, fp = np.sum(bp & bt), np.sum(bp & ~bt)
    tn, fn = np.sum(~bp & ~bt), np.sum(~bp & bt)
    assert (float(out.tp), float(out.fp), float(out.tn), float(out.fn)) == (tp, fp, tn, fn)
    assert float(out.tpr) == pytest.approx(tp / (tp + fn))
    assert float(out.tnr) == pytest.approx(tn / (tn + fp))


# ----------------------------------------------------------------------------------------------
# Summary and bad input
# ----------------------------------------------------------------------------------------------


def test_image_metrics_collects_the_metrics():
    ref, sr = _sr_pair(32, 2, seed=9)
    truth = gaussian_filter(sr, 0.5)
    out = metrics.image_metrics(sr, truth, reference=ref, pixel_nm=50.0)
    assert out.resolution_nm == metrics.decorrelation_resolution(sr, 50.0).resolution_nm
    assert out.pearson == pytest.approx(float(metrics.pearson(sr, truth)))
    assert out.rsp == pytest.approx(float(metrics.squirrel(ref, sr).rsp))
    assert out.tpr == pytest.approx(float(metrics.binary_rates(sr, truth).tpr))
    assert np.isnan(metrics.image_metrics(sr, truth, pixel_nm=50.0).rsp)  # no reference


def test_metrics_refuse_mismatched_shapes():
    a = np.ones((8, 8), np.float32)
    with pytest.raises(InputError, match="equal shapes"):
        metrics.pearson(a, np.ones((8, 9), np.float32))
    with pytest.raises(InputError, match="equal shapes"):
        metrics.binary_rates(a, np.ones((9, 8), np.float32))
