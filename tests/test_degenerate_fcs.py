"""Degenerate and odd input data (issue 17): blank, offset and huge/tiny-valued stacks, colour and
one-pixel TIFFs, damaged files, bad frame intervals and impossible optics. Each is either refused
with one line (exit 2, nothing written) or analysed with finite maps and honest pixel statuses.

Stacks are tiny (4 x 4 to 5 x 5 pixels, 2,400-2,500 frames: the correlator needs 2,304) and
``--bleach`` is always given explicitly.
"""

import numpy as np
import pytest
import tifffile

from fluojax import io
from fluojax.cli import main
from fluojax.fcs import models, pipeline

pytestmark = pytest.mark.xdist_group("degenerate_fcs")  # its session fixtures are built once, on one worker

FRAME_S = 1.06e-3
NO_SIGNAL, NON_POSITIVE = pipeline.PixelStatus.NO_SIGNAL, pipeline.PixelStatus.NON_POSITIVE_MEAN
# statuses of pixels that fluctuate with a positive mean: fitted (0-6), or with no measurable
# correlation at these 2,400 frames (a weak pixel of the simulation may be one)
USABLE = (0, 1, 2, 3, 4, 5, 6, pipeline.PixelStatus.NO_CORRELATION)


@pytest.fixture(scope="session")
def counts(tmp_path_factory):
    """A simulated 2,400 x 4 x 4 stack of camera counts (D = 1 um^2/s, 2D defaults)."""
    path = tmp_path_factory.mktemp("data") / "sim.tif"
    assert (
        main(["fcs", "simulate", "--frames", "2400", "--size", "4", "--density", "0.3", "--seed", "1", "-o", str(path)])
        == 0
    )
    return tifffile.imread(path)


def _write(folder, data, name="stack.tif", finterval=FRAME_S):
    path = folder / name
    meta = {"axes": "TYX"} if finterval is None else {"axes": "TYX", "finterval": finterval}
    tifffile.imwrite(path, data, imagej=True, metadata=meta)
    return path


def _refused(tmp_path, capsys, argv):
    """Run the command with -o; assert exit 2, one stderr line without a traceback, nothing written."""
    out = tmp_path / "out"
    before = set(tmp_path.iterdir())
    code = main(argv + ["-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("fluojax: error:") and "\n" not in err and "Traceback" not in err, err
    assert set(tmp_path.iterdir()) == before  # no output folder, no staging folder
    return err


def _fit_maps(tmp_path, path, *options):
    out = tmp_path / "res"
    assert main(["fcs", "fit", str(path), *options, "-o", str(out)]) == 0
    return tifffile.imread(out / "D.tif"), tifffile.imread(out / "status.tif")


# ------------------------------------------------------------------------------------------------
# 1. pixels and stacks without fluctuations


@pytest.mark.parametrize("bleach", ["none", "poly4"])
def test_constant_pixels_get_no_signal_status_with_or_without_bleach_correction(counts, tmp_path, bleach):
    data = counts.astype(np.uint16)
    data[:, 0, 0] = 0
    data[:, 0, 1] = 7
    d, status = _fit_maps(tmp_path, _write(tmp_path, data), "--bleach", bleach)
    assert status[0, 0] == NO_SIGNAL and status[0, 1] == NO_SIGNAL
    assert np.all(np.isnan(d[0, :2]))
    rest = np.ones((4, 4), bool)
    rest[0, :2] = False
    assert np.all(status[rest] != NO_SIGNAL) and np.all(np.isfinite(d[rest & (status == 0)]))


def test_varies_in_time_finds_a_single_changed_frame_between_the_sampled_ones():
    band = np.full((2400, 3, 4), 9, np.uint16)
    band[1201, 1, 2] = 10  # not a multiple of the 16-frame sampling stride
    band[:, 0, 0] = np.arange(2400)
    expected = np.zeros((3, 4), bool)
    expected[1, 2] = expected[0, 0] = True
    np.testing.assert_array_equal(pipeline.varies_in_time(band), expected)


def test_a_binned_pixel_is_without_signal_only_when_all_its_raw_pixels_are_constant(counts):
    data = counts.astype(np.float32)
    data[:, :2, :2] = 5.0  # the whole top-left 2 x 2 bin
    data[:, 2, 2] = 5.0  # one raw pixel of the bottom-right bin
    settings = pipeline.AnalysisSettings(FRAME_S, models.Optics(binning=2), bleach_order=4)
    corr = pipeline.correlate_stack(data, settings, progress=False)
    np.testing.assert_array_equal(corr.fluctuates, [False, True, True, True])
    np.testing.assert_array_equal(pipeline.signal_status(corr), [NO_SIGNAL, 0, 0, 0])


@pytest.mark.parametrize("value, dtype", [(0, np.uint16), (0, np.float32), (100, np.uint16), (3.5, np.float32)])
@pytest.mark.parametrize("bleach", ["none", "poly4"])
def test_a_stack_where_no_pixel_fluctuates_is_refused(tmp_path, capsys, value, dtype, bleach):
    path = _write(tmp_path, np.full((2400, 4, 4), value, dtype))
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(path), "--bleach", bleach])
    assert "no pixel of the stack fluctuates" in err


def test_shot_noise_without_correlation_gets_its_own_status():
    # white Poisson noise: G(tau) = 0 at every lag, so no pixel may be reported as a fitted D
    noise = np.random.default_rng(5).poisson(30, (2400, 8, 8)).astype(np.uint16)
    maps = pipeline.analyse_stack(noise, pipeline.AnalysisSettings(FRAME_S, bleach_order=0), progress=False)
    assert np.all(maps.status == pipeline.PixelStatus.NO_CORRELATION) and np.all(np.isnan(maps.d_um2_s))


def test_correlation_z_is_near_standard_normal_without_correlation_and_large_with_it(counts):
    settings = pipeline.AnalysisSettings(FRAME_S, bleach_order=0)
    noise = np.random.default_rng(6).poisson(30, (2400, 16, 16)).astype(np.uint16)
    white = pipeline.correlate_stack(noise, settings, progress=False)
    z = pipeline.correlation_z(white.acf, white.sem)
    # null: the max of two sums that are each ~N(0, 1) or narrower (blocking SEMs of 2,400 frames
    # overestimate the noise); 256 pixels stay far below the threshold of 3
    assert abs(np.median(z)) < 0.5 and np.all(z < pipeline.CORRELATION_Z)
    diffusion = pipeline.correlate_stack(counts, settings, progress=False)
    # the simulation's pixels (D = 1 um^2/s, ~6 photons per particle and frame) are correlated
    assert np.median(pipeline.correlation_z(diffusion.acf, diffusion.sem)) > 2 * pipeline.CORRELATION_Z


# ------------------------------------------------------------------------------------------------
# 2. non-positive mean intensity


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_a_stack_offset_below_zero_is_refused_with_a_hint_at_the_offset(counts, tmp_path, capsys, dtype):
    path = _write(tmp_path, (counts.astype(np.int32) - 1000).astype(dtype))
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(path), "--bleach", "none"])
    assert "positive mean" in err and "offset" in err


def test_pixels_with_a_negative_mean_get_their_own_status(counts, tmp_path):
    data = counts.astype(np.float32)
    data[:, 3, :] -= 1000.0  # the last row: fluctuating, mean far below zero
    d, status = _fit_maps(tmp_path, _write(tmp_path, data), "--bleach", "none")
    assert np.all(status[3] == NON_POSITIVE) and np.all(np.isnan(d[3]))
    assert np.all(np.isin(status[:3], USABLE)) and np.all(np.isfinite(d[:3][status[:3] == 0]))
    assert "offset" in NON_POSITIVE.description


# ------------------------------------------------------------------------------------------------
# 3. float data whose squares overflow (or underflow) float32


@pytest.fixture(scope="session")
def acf_reference(counts):
    settings = pipeline.AnalysisSettings(FRAME_S, bleach_order=0)
    return settings, pipeline.correlate_stack(counts.astype(np.float32), settings, progress=False)


@pytest.mark.parametrize("factor", [1e19, 1e-20])
def test_correlation_does_not_depend_on_the_intensity_scale(counts, acf_reference, factor):
    settings, ref = acf_reference
    scaled = (counts.astype(np.float64) * factor).astype(np.float32)
    corr = pipeline.correlate_stack(scaled, settings, progress=False)
    # G is scale-free; the only difference is the float32 rounding of the scaled input (6e-8
    # relative per value), amplified by mean^2/variance (~10) in G: 1e-5 of G's amplitude bounds it
    amplitude = np.max(np.abs(ref.acf), axis=1, keepdims=True)
    assert np.all(np.isfinite(corr.acf)) and np.all(np.isfinite(corr.sem))
    np.testing.assert_allclose(corr.acf, ref.acf, rtol=0, atol=1e-5 * amplitude.max())
    np.testing.assert_allclose(corr.mean_intensity, ref.mean_intensity * factor, rtol=1e-5)  # original units


def test_a_stack_of_values_near_1e19_gives_finite_d(counts):
    settings = pipeline.AnalysisSettings(FRAME_S, bleach_order=0)
    maps = pipeline.analyse_stack((counts.astype(np.float64) * 1e19).astype(np.float32), settings, progress=False)
    assert np.all(np.isin(maps.status, USABLE)) and np.all(np.isfinite(maps.d_um2_s[maps.status == 0]))
    assert np.count_nonzero(maps.status == 0) >= 8  # most of the 16 pixels converge, as for the raw counts
    assert np.all(maps.mean_intensity > 1e19)


def test_intensity_scale_is_a_power_of_two_only_outside_the_safe_range():
    assert pipeline.intensity_scale(np.array([3.0, 1e5])) == 1.0
    assert pipeline.intensity_scale(np.zeros(3)) == 1.0
    for peak in (1e19, 1e-20, -3e9):
        scale = pipeline.intensity_scale(np.array([0.5 * peak, peak]))
        assert np.log2(scale) == np.round(np.log2(scale))  # exact in binary floating point
        assert 1024 <= abs(peak) * scale < 2048


# ------------------------------------------------------------------------------------------------
# 4. axes: colour and channels are never time; one-pixel stacks; single images


def test_an_rgb_image_is_refused_not_read_as_frames(tmp_path, capsys):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 255, (3000, 8, 3), dtype=np.uint8), photometric="rgb")
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(path), "--frame-time", "0.001", "--bleach", "none"])
    assert "RGB/multichannel" in err and "export one channel" in err


def test_a_two_channel_hyperstack_is_refused(tmp_path):
    path = tmp_path / "tc.tif"
    tifffile.imwrite(path, np.zeros((2400, 2, 4, 4), np.uint16), imagej=True, metadata={"axes": "TCYX"})
    with pytest.raises(io.InputError, match="2 channels"):
        io.read_stack(path)


@pytest.mark.parametrize("imagej", [True, False])
def test_a_t_by_1_by_1_file_is_a_one_pixel_stack(counts, tmp_path, imagej):
    pixel = counts[:, 1:2, 1:2]
    path = tmp_path / "one.tif"
    if imagej:  # tifffile stores it as one 2400 x 1 page with images=2400 in the ImageJ header
        tifffile.imwrite(path, pixel, imagej=True, metadata={"axes": "TYX", "finterval": FRAME_S})
    else:
        tifffile.imwrite(path, pixel, photometric="minisblack", metadata={"axes": "TYX"})
    data, _ = io.read_stack(path)
    assert data.shape == (2400, 1, 1)
    np.testing.assert_array_equal(data, pixel)


def test_a_one_pixel_stack_is_fitted(counts, tmp_path):
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, counts[:, 1:2, 1:2], imagej=True, metadata={"axes": "TYX", "finterval": FRAME_S})
    d, status = _fit_maps(tmp_path, path, "--bleach", "none")
    assert d.shape == (1, 1) and status[0, 0] <= 6
    assert status[0, 0] != 0 or np.isfinite(d[0, 0])


def test_a_single_image_is_named_by_its_size_in_neutral_words(tmp_path, capsys):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.ones((1, 8, 6), np.uint16))
    err = _refused(
        tmp_path, capsys, ["frap", "fit", str(path), "--roi", "circle:3,4,2", "--dt", "0.1", "--pixel-size", "1"]
    )
    assert "a single 8x6 image; needs a time stack (frames, Y, X)" in err and "FCS" not in err


# ------------------------------------------------------------------------------------------------
# 5-6. damaged files, folders


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_a_truncated_tiff_is_refused_in_one_line(counts, tmp_path, capsys, compression):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.tile(counts, (1, 2, 2)), compression=compression, photometric="minisblack")
    content = path.read_bytes()
    path.write_bytes(content[: int(0.6 * len(content))])
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(path), "--frame-time", "0.001", "--bleach", "none"])
    assert "truncated or damaged TIFF" in err  # and no tifffile warning printed: _refused allows one line only


def test_a_folder_is_not_called_a_missing_file(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(folder), "--frame-time", "0.001", "--bleach", "none"])
    assert "a folder holding no .tif or .tiff stack" in err  # a folder is many stacks; this one holds none


# ------------------------------------------------------------------------------------------------
# 7. frame interval metadata


@pytest.mark.parametrize("finterval", ["abc", float("inf"), -1.0, 0.0])
def test_an_unusable_frame_interval_in_the_metadata_is_refused(counts, tmp_path, capsys, finterval):
    path = _write(tmp_path, counts, finterval=finterval)
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(path), "--bleach", "none"])
    assert "finterval" in err and "--frame-time" in err


def test_frap_reads_the_frame_interval_through_the_same_check(tmp_path, capsys):
    path = _write(tmp_path, np.ones((20, 16, 16), np.float32), finterval="abc")
    err = _refused(tmp_path, capsys, ["frap", "fit", str(path), "--roi", "circle:8,8,3", "--pixel-size", "1"])
    assert "finterval" in err and "--dt" in err


@pytest.mark.parametrize("option", ["1e-9", "1e6"])
def test_a_frame_time_in_the_wrong_units_is_refused(counts, tmp_path, capsys, option):
    # 1 ns and 11 days per frame: no camera records so; most likely ms or us passed as s
    path = _write(tmp_path, counts)
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(path), "--frame-time", option, "--bleach", "none"])
    assert "in seconds" in err


def test_the_frame_time_option_wins_over_broken_metadata():
    assert io.frame_interval_s(0.002, {"finterval": "abc"}, "--frame-time", "s.tif") == 0.002
    assert io.frame_interval_s(None, {"finterval": "0.5"}, "--dt", "s.tif") == 0.5


# ------------------------------------------------------------------------------------------------
# 8. optics that cannot exist


@pytest.mark.parametrize(
    "options, words",
    [
        (["--na", "5"], "immersion medium"),  # 2D: above oil (1.518)
        (["--na", "1.45", "--refractive-index", "1.33"], "immersion medium"),  # 2D water immersion
        (["--model", "3d", "--na", "1.4"], "sample refractive index"),
    ],
)
def test_impossible_optics_are_refused_by_fit_and_simulate(counts, tmp_path, capsys, options, words):
    path = _write(tmp_path, counts)
    assert words in _refused(tmp_path, capsys, ["fcs", "fit", str(path), "--bleach", "none", *options])
    sim = tmp_path / "sim.tif"
    assert main(["fcs", "simulate", "--frames", "100", "--size", "4", *options, "-o", str(sim)]) == 2
    assert words in capsys.readouterr().err and not sim.exists()


@pytest.mark.parametrize(
    "optics, geometry",
    [
        (models.Optics(na=1.6), models.ITIR_2D),
        (models.Optics(camera_pixel_um=float("nan")), models.ITIR_2D),
        (models.Optics(magnification=0.0), models.ITIR_2D),
        (models.Optics(binning=0), models.ITIR_2D),
        (models.Optics(24.0, 60.0, 1.34, 515.0, 1.1, 2.2, 1.333, 1), models.SPIM_3D),
        (models.Optics(24.0, 60.0, 1.0, 515.0, 1.1, None, 1.333, 1), models.SPIM_3D),  # 3D without a light sheet
    ],
)
def test_check_optics_refuses_what_cannot_exist(optics, geometry):
    with pytest.raises(io.InputError):
        models.check_optics(optics, geometry)


def test_check_optics_accepts_the_defaults_of_both_geometries(optics_2d, optics_3d):
    models.check_optics(models.Optics(), models.ITIR_2D)  # NA 1.45 through oil (1.518)
    models.check_optics(optics_2d, models.ITIR_2D)
    models.check_optics(optics_3d, models.SPIM_3D)  # NA 1.0 in water (1.333)


def test_analyse_stack_checks_the_optics_for_library_users(counts):
    settings = pipeline.AnalysisSettings(FRAME_S, models.Optics(na=5.0), bleach_order=0)
    with pytest.raises(ValueError, match="immersion"):
        pipeline.analyse_stack(counts, settings, progress=False)
