"""The fluojax command end to end, and one clear error line (exit 2, nothing written) for each bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from fluojax.cli import main

pytestmark = pytest.mark.xdist_group("cli")  # its session fixtures are built once, on one worker


@pytest.fixture(scope="session")
def small_stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "stack.tif"
    assert main(["fcs", "simulate", "--frames", "6000", "--size", "6", "--density", "0.2", "-o", str(path)]) == 0
    return path


def test_cli_fit_end_to_end_writes_maps_plot_and_summary(small_stack, tmp_path):
    out = tmp_path / "res"
    assert main(["fcs", "fit", str(small_stack), "--bleach", "none", "-o", str(out)]) == 0
    for name in ("D.tif", "N.tif", "Ginf.tif", "chi2.tif", "status.tif", "maps.png", "summary.json"):
        assert (out / name).is_file(), name
    d = tifffile.imread(out / "D.tif")
    assert d.dtype == np.float32 and d.shape == (6, 6)
    with tifffile.TiffFile(out / "D.tif") as tif:
        assert "um^2/s" in tif.imagej_metadata["Info"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["frame_time_s"] == pytest.approx(1.06e-3)  # taken from the TIFF
    # 6,000 frames of a 6 x 6 patch: the median is within a factor 1.5 of the simulated 1 um^2/s
    assert 0.67 < summary["medians"]["D_um2_s"] < 1.5


def test_cli_reports_constant_and_saturated_pixels_per_pixel(small_stack, tmp_path):
    counts = tifffile.imread(small_stack)
    assert counts.max() < 255
    stack = counts.astype(np.uint8)  # saturation at 255: a spike that leaves the ACF measurable
    stack[:, 0, 0] = 0
    stack[:, 0, 1] = 7
    stack[100, 1, 1] = 255
    path = tmp_path / "bad_pixels.tif"
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX", "finterval": 1.06e-3})
    out = tmp_path / "res"
    assert main(["fcs", "fit", str(path), "--bleach", "none", "-o", str(out)]) == 0
    status = tifffile.imread(out / "status.tif")
    assert status[0, 0] == 7 and status[0, 1] == 7 and status[1, 1] == 6
    assert np.isnan(tifffile.imread(out / "D.tif")[0, 0])


def _bad(tmp_path, capsys, argv):
    out = tmp_path / "out"
    code = main(argv + ["-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fluojax: error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    return err


def test_single_2d_image_is_rejected(tmp_path, capsys):
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.uint16))
    assert "single" in _bad(tmp_path, capsys, ["fcs", "fit", str(path), "--frame-time", "0.001"])


def test_fewer_frames_than_largest_lag_is_rejected(tmp_path, capsys):
    path = tmp_path / "short.tif"
    tifffile.imwrite(
        path, np.random.default_rng(0).poisson(50, (1000, 4, 4)).astype(np.uint16), photometric="minisblack"
    )
    assert "2048" in _bad(tmp_path, capsys, ["fcs", "fit", str(path), "--frame-time", "0.001"])


def test_nan_values_are_rejected(tmp_path, capsys):
    data = np.random.default_rng(0).poisson(50, (2400, 4, 4)).astype(np.float32)
    data[10, 1, 1] = np.nan
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    assert "NaN" in _bad(tmp_path, capsys, ["fcs", "fit", str(path), "--frame-time", "0.001"])


@pytest.mark.parametrize("content", [b"", b"this is not a tiff", b"II*\x00\x08\x00\x00\x00garbage"])
def test_corrupt_or_non_tiff_file_is_rejected(tmp_path, capsys, content):
    path = tmp_path / "broken.tif"
    path.write_bytes(content)
    assert "TIFF" in _bad(tmp_path, capsys, ["fcs", "fit", str(path), "--frame-time", "0.001"])


def test_missing_frame_time_is_rejected(tmp_path, capsys):
    path = tmp_path / "nometa.tif"
    tifffile.imwrite(
        path, np.random.default_rng(0).poisson(50, (2400, 3, 3)).astype(np.uint16), photometric="minisblack"
    )
    assert "frame time" in _bad(tmp_path, capsys, ["fcs", "fit", str(path)])


def test_invalid_optics_exit_with_code_2(tmp_path, small_stack):
    # argparse rejects a negative NA with its usage line and exit status 2, never a traceback
    proc = subprocess.run(
        [sys.executable, "-m", "fluojax.cli", "fcs", "fit", str(small_stack), "--na", "-1", "-o", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--na" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_3d_na_above_refractive_index_is_rejected(tmp_path, capsys, small_stack):
    assert "refractive index" in _bad(
        tmp_path, capsys, ["fcs", "fit", str(small_stack), "--model", "3d", "--na", "1.4"]
    )
