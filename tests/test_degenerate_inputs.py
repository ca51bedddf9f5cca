"""Property-style specification: whatever stack a user feeds ``fcs fit`` or ``frap fit``, the command
either succeeds honestly or refuses in one line, and never touches a file outside its new results
folder.

The stacks are generated from a seeded list of degenerate cases (zeros, constants, negative
offsets, NaN/Inf, huge and tiny floats, tiny and huge frame times, odd shapes and dtypes, colour
images). For every case the command must end in one of:

* exit 0 with finite maps (FCS: every pixel whose status says "converged" has a finite, positive
  D; every pixel without fluctuations, with a mean <= 0 or without correlation has its own
  status and no D) or a converged FRAP fit whose 95 % interval is finite and within a decade;
* exit 2 with exactly one ``fluojax: error:`` line on stderr and no results folder;
* exit 3 with the results written: FRAP with a status in summary.json that is not "ok", FCS
  when no pixel could be fitted;

and in every case no traceback, and every file that existed before the run is byte-identical
afterwards.
"""

import json

import numpy as np
import pytest
import tifffile

from fluojax.cli import main

pytestmark = pytest.mark.xdist_group("degenerate_inputs")  # its session fixtures are built once, on one worker

FCS_FRAMES = 2400  # just above the correlator's 2304-frame minimum (P = 16, Q = 8)
FRAP_ROI = "circle:16,16,6"


@pytest.fixture(scope="session")
def fcs_base(tmp_path_factory):
    """A 2400 x 4 x 4 Imaging FCS stack (2D, D = 1 um^2/s, 1.06 ms frames) as float64 counts."""
    path = tmp_path_factory.mktemp("fcs") / "base.tif"
    assert (
        main(["fcs", "simulate", "--frames", str(FCS_FRAMES), "--size", "4", "--density", "0.3", "-o", str(path)]) == 0
    )
    return tifffile.imread(path).astype(np.float64)


def _fcs_cases(base):
    """name -> (array, extra argv, rgb); the frame time is passed as 1 ms unless the case sets it."""
    rng = np.random.default_rng(17)
    t = base.shape[0]
    one_flat = base.copy()
    one_flat[:, 1, 2] = 7.0
    white = rng.poisson(50, base.shape).astype(np.float64)  # shot noise only: no correlation in time
    return {
        "zeros_uint16": (np.zeros_like(base, np.uint16), [], False),
        "constant_uint16": (np.full_like(base, 100, np.uint16), [], False),
        "constant_float32": (np.full_like(base, 3.5, np.float32), [], False),
        "one_constant_pixel": (one_flat.astype(np.uint16), [], False),
        "white_noise": (white.astype(np.uint16), [], False),
        "negative_offset_int16": ((base - base.max() - 5).astype(np.int16), [], False),
        "negative_offset_float32": ((base - base.max() - 5).astype(np.float32), [], False),
        "nan_frame": (np.where(np.arange(t)[:, None, None] == 5, np.nan, base).astype(np.float32), [], False),
        "inf_value": (np.where(base == base.max(), np.inf, base).astype(np.float32), [], False),
        "huge_float32": ((base * 1e19).astype(np.float32), [], False),
        "tiny_float32": ((base * 1e-25).astype(np.float32), [], False),
        "float64": (base, [], False),
        "uint8": (np.minimum(base, 255).astype(np.uint8), [], False),
        "int32": (base.astype(np.int32), [], False),
        "one_pixel": (base[:, :1, :1].astype(np.uint16), [], False),
        "one_row": (base[:, :1, :].astype(np.uint16), [], False),
        "single_image": (base[0].astype(np.uint16), [], False),
        "too_few_frames": (base[:100].astype(np.uint16), [], False),
        "tiny_frame_time": (base.astype(np.uint16), ["--frame-time", "1e-9"], False),
        "huge_frame_time": (base.astype(np.uint16), ["--frame-time", "1e6"], False),
        "rgb": (np.minimum(base[:, :, :3], 255).astype(np.uint8), [], True),  # a 2400 x 4 RGB image
    }


FCS_CASES = (
    "zeros_uint16",
    "constant_uint16",
    "constant_float32",
    "one_constant_pixel",
    "white_noise",
    "negative_offset_int16",
    "negative_offset_float32",
    "nan_frame",
    "inf_value",
    "huge_float32",
    "tiny_float32",
    "float64",
    "uint8",
    "int32",
    "one_pixel",
    "one_row",
    "single_image",
    "too_few_frames",
    "tiny_frame_time",
    "huge_frame_time",
    "rgb",
)


def _write(path, data, rgb=False):
    if rgb:
        tifffile.imwrite(path, data, photometric="rgb")
    else:
        tifffile.imwrite(path, data, photometric="minisblack")


def _snapshot(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _run_touching_nothing_else(argv, out, root, capsys):
    """Run the command; assert no traceback, exit 0, 2 or 3, every file outside ``out`` unchanged,
    and for exit 2 one error line and no results or staging folder. Returns (code, stderr)."""
    before = _snapshot(root)
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2, 3), (code, err)
    after = _snapshot(root)
    assert {p: b for p, b in after.items() if out not in p.parents} == before, (
        "a file outside the results folder changed"
    )
    if code == 2:
        lines = [line for line in err.strip().splitlines() if line]
        assert len(lines) == 1 and lines[0].startswith("fluojax: error:"), err
        assert not out.exists()
        assert not [p for p in root.iterdir() if p.name.startswith(f".{out.name}")], (
            "a hidden staging folder was left behind"
        )
    return code, err


@pytest.mark.parametrize("case", FCS_CASES)
def test_fcs_fit_on_degenerate_stacks_succeeds_honestly_or_refuses_in_one_line(case, fcs_base, tmp_path, capsys):
    data, extra, rgb = _fcs_cases(fcs_base)[case]
    stack = tmp_path / "data" / f"{case}.tif"
    stack.parent.mkdir()
    _write(stack, data, rgb)
    out = tmp_path / "res"
    argv = ["fcs", "fit", str(stack), "-o", str(out)] + ([] if "--frame-time" in extra else ["--frame-time", "0.001"])
    code, _err = _run_touching_nothing_else(argv + extra, out, tmp_path, capsys)
    if code == 2:
        return
    status = tifffile.imread(out / "status.tif")
    d = tifffile.imread(out / "D.tif")
    summary = json.loads((out / "summary.json").read_text())
    codes = summary["status_codes"]
    fitted = (status == 0) | (status == 6)  # converged, or converged on a saturated pixel
    assert np.all(np.isfinite(d[fitted]) & (d[fitted] > 0))
    no_data = [k for k, text in codes.items() if text.startswith(("no signal", "no correlation", "mean intensity"))]
    assert np.all(np.isnan(d[np.isin(status, [int(k) for k in no_data])]))
    assert summary["fitted"] == int(np.isfinite(d).sum())
    assert (code == 3) == (summary["fitted"] == 0)  # exit 3 exactly when nothing could be fitted
    if case == "one_constant_pixel":
        assert codes[str(status[1, 2])].startswith("no signal")
    if case == "white_noise":
        assert code == 3 and all(codes[str(v)].startswith("no correlation") for v in status.ravel())
    if case in ("float64", "huge_float32", "tiny_float32", "int32", "uint8"):
        assert code == 0 and summary["fitted"] >= 12  # scale and type of a good recording do not matter


@pytest.fixture(scope="session")
def frap_base(tmp_path_factory):
    """A 32 x 32 FRAP stack of the DeepFRAP model (5 prebleach, 2 bleach, 15 postbleach frames,
    R = 6 px, D = 1 um^2/s at 0.2 um pixels, per-pixel noise variance 1e-4)."""
    path = tmp_path_factory.mktemp("frap") / "base.tif"
    argv = [
        "frap",
        "simulate",
        "--size",
        "32",
        "--radius",
        "6",
        "--prebleach",
        "5",
        "--bleach",
        "2",
        "--postbleach",
        "15",
        "--dt",
        "0.5",
        "--pixel-size",
        "0.2",
        "--d",
        "1",
        "--noise-a",
        "1e-4",
        "-o",
        str(path),
    ]
    assert main(argv) == 0
    return tifffile.imread(path).astype(np.float64)


def _frap_cases(frap):
    rng = np.random.default_rng(23)
    t, n = frap.shape[0], frap.shape[1]
    return {
        "zeros": np.zeros((t, n, n), np.uint16),
        "constant": np.full((t, n, n), 100, np.uint16),
        "no_bleach": 0.75 + rng.normal(0, 0.01, (t, n, n)),
        "fcs_like": rng.poisson(50, (t, n, n)).astype(np.uint16),
        "negative_offset": frap - 3.0,
        "nan_frame": np.where(np.arange(t)[:, None, None] == 7, np.nan, frap).astype(np.float32),
        "huge_float32": (frap * 1e19).astype(np.float32),
        "tiny_float32": (frap * 1e-25).astype(np.float32),
        "uint8": np.clip(frap * 200, 0, 255).astype(np.uint8),
        "one_frame": frap[:1].astype(np.float32),
        "too_few_frames": frap[:6].astype(np.float32),
        "roi_outside": frap[:, :10, :10].astype(np.float32),
        "plain": frap.astype(np.float32),
    }


FRAP_CASES = (
    "zeros",
    "constant",
    "no_bleach",
    "fcs_like",
    "negative_offset",
    "nan_frame",
    "huge_float32",
    "tiny_float32",
    "uint8",
    "one_frame",
    "too_few_frames",
    "roi_outside",
    "plain",
)


@pytest.mark.parametrize("case", FRAP_CASES)
def test_frap_fit_on_degenerate_stacks_succeeds_honestly_or_refuses_in_one_line(case, frap_base, tmp_path, capsys):
    data = _frap_cases(frap_base)[case]
    stack = tmp_path / "data" / f"{case}.tif"
    stack.parent.mkdir()
    _write(stack, data)
    out = tmp_path / "res"
    argv = [
        "frap",
        "fit",
        str(stack),
        "--roi",
        FRAP_ROI,
        "--prebleach",
        "5",
        "--bleach",
        "2",
        "--dt",
        "0.5",
        "--pixel-size",
        "0.2",
        "--starts",
        "4",
        "-o",
        str(out),
    ]
    code, err = _run_touching_nothing_else(argv, out, tmp_path, capsys)
    if code == 2:
        return
    fit = json.loads((out / "summary.json").read_text())["fit"]
    if code == 0:
        lo, hi = fit["D_um2_s"]["ci95"]
        assert fit["ok"] and lo is not None and hi is not None and 0 < lo <= fit["D_um2_s"]["value"] <= hi
        assert hi / lo <= 10
    else:
        assert not fit["ok"]
        assert err.strip().count("\n") == 0 or all(line.startswith("fluojax:") for line in err.strip().splitlines())
    if case in ("no_bleach", "fcs_like"):
        assert code in (2, 3)  # never a confident D from data without a bleach
    if case in ("plain", "huge_float32", "tiny_float32", "uint8"):
        assert code == 0  # the intensity scale and type of a good recording do not matter
