"""``fluojax frap``: simulate -> fit round trips, outputs, exit code 3 for a failed fit, and one clear
error line (exit 2, nothing written) for each bad input.

All fits share one geometry (64 x 64 image, pad 32, R = 8 px, 5/2/30 frames, dt 0.265 s) and
``--starts 4``, so the least-squares fit compiles once per session (the dominant cost on a CPU).
"""

import json

import numpy as np
import pytest
import tifffile

from fluojax.cli import main

pytestmark = pytest.mark.xdist_group("cli_frap")  # its session fixtures are built once, on one worker

D_TRUE = 5.0  # um^2/s = 8.66 px^2/s at 0.7598 um pixels: recovery time R^2/(4D) ~ 1.8 s ~ 7 frames
C0, ALPHA, NOISE_A = 0.75, 0.7, 1e-3
GEOMETRY = ["--size", "64", "--pad", "32", "--radius", "8", "--prebleach", "5", "--bleach", "2", "--postbleach", "30"]
FIT = ["--roi", "circle:32,32,8", "--prebleach", "5", "--bleach", "2", "--starts", "4"]


@pytest.fixture(scope="session")
def stacks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frap")
    paths = {}
    for name, noise in (("clean", "0"), ("noisy", str(NOISE_A))):
        paths[name] = folder / f"{name}.tif"
        argv = [
            "frap",
            "simulate",
            "--d",
            str(D_TRUE),
            "--c0",
            str(C0),
            "--alpha",
            str(ALPHA),
            "--noise-a",
            noise,
            "--seed",
            "3",
        ]
        assert main(argv + GEOMETRY + ["-o", str(paths[name])]) == 0
    return paths


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_simulate_writes_a_float32_stack_with_frame_interval_and_pixel_size(stacks):
    with tifffile.TiffFile(stacks["clean"]) as tif:
        data = tif.asarray()
        assert tif.imagej_metadata["finterval"] == pytest.approx(0.265)
    assert data.dtype == np.float32 and data.shape == (35, 64, 64)
    np.testing.assert_allclose(data[:5], C0, rtol=1e-6)  # prebleach frames: uniform c0


def test_fit_recovers_d_of_a_noise_free_simulation(stacks, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["frap", "fit", str(stacks["clean"])] + FIT + ["-o", str(out)]) == 0
    assert "D = 5" in capsys.readouterr().out
    for name in ("summary.json", "fit.png", "curve.csv"):
        assert (out / name).is_file(), name
    s = _summary(out)
    fit = s["fit"]
    assert fit["status"] == "CONVERGED" and fit["ok"]
    # the simulation is the float32 image solver (~1e-5 relative), the fit the tabulated curve
    # (error estimate < 1e-6 of c0): D comes back to well within 1e-3
    assert fit["D_um2_s"]["value"] == pytest.approx(D_TRUE, rel=1e-3)
    assert fit["D_px2_s"]["value"] == pytest.approx(D_TRUE / 0.7598**2, rel=1e-3)
    lo, hi = fit["D_um2_s"]["ci95"]
    assert lo <= fit["D_um2_s"]["value"] <= hi
    assert fit["c0"]["value"] == pytest.approx(C0, rel=1e-4)
    assert fit["alpha"]["value"] == pytest.approx(ALPHA, rel=1e-4)
    assert s["settings"]["dt_s"] == pytest.approx(0.265) and s["settings"]["pixel_size_um"] == pytest.approx(
        0.7598
    )  # from the TIFF
    assert s["settings"]["n_postbleach"] == 30 and s["settings"]["window_px"]["size"] == 64
    assert set(s["timings_s"]) >= {"read", "table", "fit", "total"}
    curve = np.genfromtxt(out / "curve.csv", delimiter=",", names=True)
    assert curve.dtype.names == ("time_s", "data", "model") and curve.shape == (35,)
    # time axis: prebleach frame i at i dt, postbleach frame j at (5 + 2 + j) dt
    assert curve["time_s"][4] == pytest.approx(5 * 0.265) and curve["time_s"][5] == pytest.approx(8 * 0.265)
    np.testing.assert_allclose(curve["model"], curve["data"], atol=1e-5)


def test_fit_recovers_d_with_pixel_noise_within_its_interval(stacks, tmp_path):
    out = tmp_path / "res"
    assert (
        main(["frap", "fit", str(stacks["noisy"]), "--dt", "0.265", "--pixel-size", "0.7598"] + FIT + ["-o", str(out)])
        == 0
    )
    fit = _summary(out)["fit"]
    # per-pixel variance 1e-3 over ~209 effective ROI pixels: curve noise sd ~2.2e-3 against a
    # bleach depth of ~0.4; D's standard error is then ~1 % (stderr in the JSON)
    d, sd = fit["D_um2_s"]["value"], fit["D_um2_s"]["stderr"]
    assert sd / d < 0.03
    assert abs(d - D_TRUE) < 4 * sd and abs(d / D_TRUE - 1) < 0.05
    lo, hi = fit["D_um2_s"]["ci95"]
    assert lo < d < hi and hi / lo < 1.2
    # the residual variance x effective pixels estimates the per-pixel variance a: 32 degrees of
    # freedom give a relative sd of sqrt(2/32) = 25 %
    assert 0.5 * NOISE_A < fit["noise_variance"]["pixel_equivalent"] < 1.6 * NOISE_A


def test_non_square_stack_is_cropped_to_a_square_around_the_roi(stacks, tmp_path):
    data = tifffile.imread(stacks["clean"])
    wide = np.full((35, 64, 96), C0, np.float32)
    wide[:, :, 17:81] = data  # the ROI centre moves to x = 49; the crop is columns 17..80
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, wide, imagej=True, metadata={"axes": "TYX", "finterval": 0.265})
    out = tmp_path / "res"
    argv = ["frap", "fit", str(path), "--pixel-size", "0.7598", "--roi", "circle:49,32,8"] + FIT[2:]
    assert main(argv + ["-o", str(out)]) == 0
    s = _summary(out)
    assert s["settings"]["window_px"] == {"x0": 17, "y0": 0, "size": 64, "what": s["settings"]["window_px"]["what"]}
    assert s["fit"]["D_um2_s"]["value"] == pytest.approx(D_TRUE, rel=1e-3)


def test_a_fit_that_does_not_converge_is_reported_with_exit_code_3(stacks, tmp_path, capsys, monkeypatch):
    from fluojax.frap import estimate, pipeline

    nan = np.full((1, 3), np.nan)
    failed = estimate.FrapFit(nan, nan, nan, nan, np.array([1]), np.array([np.nan]), np.array([np.nan]))
    monkeypatch.setattr(pipeline, "fit_prepared", lambda *a, **k: failed)
    out = tmp_path / "res"
    assert main(["frap", "fit", str(stacks["clean"])] + FIT + ["-o", str(out)]) == 3
    # progress lines ("fluojax: frap fit 2/3 stages ...") appear only when a run passes ~10 s
    err = "\n".join(line for line in capsys.readouterr().err.splitlines() if not line.startswith("fluojax: frap fit "))
    assert err.startswith("fluojax: error:") and "did not converge" in err and "MAX_STEPS" in err and "\n" not in err
    s = _summary(out)  # the results are written, with the status
    assert s["fit"]["status"] == "MAX_STEPS" and not s["fit"]["ok"] and s["fit"]["D_um2_s"]["value"] is None
    assert (out / "fit.png").is_file() and (out / "curve.csv").is_file()


# ------------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit code 2, nothing written


def _bad(tmp_path, capsys, argv, argparse_error=False):
    out = tmp_path / "out"
    if argparse_error:
        with pytest.raises(SystemExit) as exc:
            main(argv + ["-o", str(out)])
        code = exc.value.code
    else:
        code = main(argv + ["-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    if not argparse_error:
        assert err.startswith("fluojax: error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    return err


def _write(tmp_path, data, name="bad.tif", finterval=0.1):
    path = tmp_path / name
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX", "finterval": finterval})
    return path


def _good_data(dtype=np.float32):
    return (1000.0 + np.random.default_rng(0).normal(0, 5, (12, 32, 32))).astype(dtype)


OPTS = ["--roi", "circle:16,16,6", "--prebleach", "5", "--bleach", "2", "--pixel-size", "0.5"]


def test_roi_outside_the_image(stacks, tmp_path, capsys):
    err = _bad(tmp_path, capsys, ["frap", "fit", str(stacks["clean"]), "--roi", "circle:60,32,8", "--prebleach", "5"])
    assert "not fully inside" in err


def test_malformed_roi(stacks, tmp_path, capsys):
    assert "circle:X,Y,R" in _bad(tmp_path, capsys, ["frap", "fit", str(stacks["clean"]), "--roi", "rect:1,2,3,4"])


def test_fewer_frames_than_declared(stacks, tmp_path, capsys):
    err = _bad(tmp_path, capsys, ["frap", "fit", str(stacks["clean"]), "--roi", "circle:32,32,8", "--prebleach", "33"])
    assert "35 frames" in err and "at least 36" in err


@pytest.mark.parametrize(
    "option", [["--dt", "0"], ["--dt", "-0.1"], ["--pixel-size", "0"], ["--pixel-size", "nan"], ["--starts", "0"]]
)
def test_non_positive_numbers_are_argparse_errors(stacks, tmp_path, capsys, option):
    err = _bad(
        tmp_path, capsys, ["frap", "fit", str(stacks["clean"]), "--roi", "circle:32,32,8"] + option, argparse_error=True
    )
    assert "must be positive" in err


def test_missing_frame_interval(tmp_path, capsys):
    path = tmp_path / "nodt.tif"
    tifffile.imwrite(path, _good_data())
    assert "--dt" in _bad(tmp_path, capsys, ["frap", "fit", str(path)] + OPTS)


def test_missing_pixel_size(tmp_path, capsys):
    path = _write(tmp_path, _good_data())
    assert "--pixel-size" in _bad(
        tmp_path, capsys, ["frap", "fit", str(path), "--roi", "circle:16,16,6", "--prebleach", "5"]
    )


def test_saturated_stack(tmp_path, capsys):
    data = _good_data(np.uint16)
    data[6:, 12:20, 12:20] = 65535
    assert "saturated" in _bad(tmp_path, capsys, ["frap", "fit", str(_write(tmp_path, data))] + OPTS)


def test_saturated_uint8_stack(tmp_path, capsys):
    data = np.full((12, 32, 32), 100, np.uint8)
    data[:5] = 255  # every ROI pixel saturated before the bleach
    assert "255" in _bad(tmp_path, capsys, ["frap", "fit", str(_write(tmp_path, data))] + OPTS)


def test_constant_stack(tmp_path, capsys):
    data = np.full((12, 32, 32), 500, np.uint16)
    assert "constant" in _bad(tmp_path, capsys, ["frap", "fit", str(_write(tmp_path, data))] + OPTS)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values(tmp_path, capsys, value):
    data = _good_data()
    data[7, 16, 15] = value
    assert "non-finite" in _bad(tmp_path, capsys, ["frap", "fit", str(_write(tmp_path, data))] + OPTS)


@pytest.mark.parametrize("content", [b"", b"this is not a tiff", b"II*\x00\x08\x00\x00\x00garbage"])
def test_not_a_tiff(tmp_path, capsys, content):
    path = tmp_path / "junk.tif"
    path.write_bytes(content)
    assert "TIFF" in _bad(tmp_path, capsys, ["frap", "fit", str(path)] + OPTS)


def test_missing_file(tmp_path, capsys):
    assert "no such file" in _bad(tmp_path, capsys, ["frap", "fit", str(tmp_path / "nope.tif")] + OPTS)


def test_inverted_d_range(stacks, tmp_path, capsys):
    err = _bad(tmp_path, capsys, ["frap", "fit", str(stacks["clean"])] + FIT + ["--d-range", "10", "1"])
    assert "--d-range" in err


@pytest.mark.parametrize(
    ("option", "message"),
    [(["--alpha", "1.5"], "--alpha"), (["--size", "16"], "--radius"), (["--postbleach", "2"], "--postbleach")],
)
def test_simulate_bad_settings_write_nothing(tmp_path, capsys, option, message):
    out = tmp_path / "s.tif"
    assert main(["frap", "simulate", "--size", "32", "--radius", "10"] + option + ["-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fluojax: error:") and message in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_simulate_needs_a_tif_output(tmp_path, capsys):
    assert main(["frap", "simulate", "-o", str(tmp_path / "s.png")]) == 2
    assert ".tif" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Networks: train (a tiny recipe of this geometry) and predict + refine


def test_train_then_predict_refines_to_the_simulated_d(stacks, tmp_path, capsys, monkeypatch):
    learned = pytest.importorskip("fluojax.frap.learned")
    import dataclasses

    from fluojax.frap.models import FrapSettings

    small = learned.RECIPES["deepfrap-small"]
    tiny = dataclasses.replace(
        small,
        settings=FrapSettings(n_pixels=64, pad=32, n_prebleach=5, n_bleach=2, n_postbleach=30),
        radius_px=8.0,
        net=dataclasses.replace(small.net, inputs=35),
        train=dataclasses.replace(small.train, eval_every=10, eval_batches=2, batch_size=64),
    )
    monkeypatch.setitem(learned.RECIPES, "deepfrap-small", tiny)
    ckpt = tmp_path / "ckpt"
    train = ["frap", "train", "--config", "deepfrap-small", "--steps", "20", "-o", str(ckpt)]
    # a time limit spent by the first step: a checkpoint there, and the run stops
    assert main([*train, "--time-limit", "1e-6"]) == 0
    assert "deepfrap-small: 1 step (of 20: time limit; the same command resumes)" in capsys.readouterr().out
    assert [p.name for p in sorted((ckpt / "checkpoints").iterdir())] == ["step_000000001"]
    assert main(train) == 0  # resumes from step 1
    assert "deepfrap-small: 20 steps," in capsys.readouterr().out
    assert (ckpt / "loss.png").is_file()

    out = tmp_path / "pred"
    code = main(
        ["frap", "predict", str(stacks["clean"]), "--net", str(ckpt), "--roi", "circle:32,32,8", "-o", str(out)]
    )
    assert code == 0
    s = _summary(out)
    assert s["network"]["prediction"]["D_um2_s"] > 0
    # the LM fit started at the (barely trained) network's answer finds the simulated D
    assert s["refined"]["D_um2_s"]["value"] == pytest.approx(D_TRUE, rel=1e-3)
    assert s["residual_ratio"] >= 1 - 1e-3
    warned = any("physics check" in w for w in s["warnings"])
    assert warned == (s["residual_ratio"] > 2)
    assert ("physics check" in capsys.readouterr().err) == warned
    curve = np.genfromtxt(out / "curve.csv", delimiter=",", names=True)
    assert curve.dtype.names == ("time_s", "data", "model", "network")

    # a folder that is not a DeepFRAP checkpoint
    (tmp_path / "empty").mkdir()
    err = _bad(
        tmp_path,
        capsys,
        ["frap", "predict", str(stacks["clean"]), "--net", str(tmp_path / "empty"), "--roi", "circle:32,32,8"],
    )
    assert "--net" in err
    # a stack of another length than the network's input
    err = _bad(
        tmp_path,
        capsys,
        ["frap", "predict", str(stacks["clean"]), "--net", str(ckpt), "--roi", "circle:32,32,8", "--prebleach", "4"],
    )
    assert "trained for 5 prebleach" in err


# ------------------------------------------------------------------------------------------------
# Fits that converge but mean nothing: exit code 3, results written, the reason on stderr


@pytest.fixture(scope="session")
def meaningless(tmp_path_factory):
    """A simulated stack without a bleach (alpha = 1, pixel noise) and a stack of pure noise
    (FCS-like fluctuations around a constant), both in the fits' shared geometry."""
    folder = tmp_path_factory.mktemp("meaningless")
    paths = {"no_bleach": folder / "no_bleach.tif", "noise": folder / "noise.tif"}
    argv = ["frap", "simulate", "--d", str(D_TRUE), "--alpha", "1", "--noise-a", str(NOISE_A), "--seed", "4"]
    assert main(argv + GEOMETRY + ["-o", str(paths["no_bleach"])]) == 0
    noise = 1000.0 + np.random.default_rng(5).normal(0.0, 5.0, (35, 64, 64))
    tifffile.imwrite(
        paths["noise"],
        noise.astype(np.float32),
        imagej=True,
        metadata={"axes": "TYX", "finterval": 0.265, "unit": "um"},
        resolution=(1 / 0.7598, 1 / 0.7598),
    )
    return paths


def _meaningless_fit(path, out, capsys):
    code = main(["frap", "fit", str(path), "--pixel-size", "0.7598"] + FIT + ["-o", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("fluojax: error:")]
    return code, errors, _summary(out)


def test_a_stack_without_a_bleach_is_no_bleach_with_exit_code_3(meaningless, tmp_path, capsys):
    code, errors, s = _meaningless_fit(meaningless["no_bleach"], tmp_path / "res", capsys)
    assert code == 3 and len(errors) == 1
    assert "no bleach in the data" in errors[0] and "alpha" in errors[0] and "summary.json" in errors[0]
    fit = s["fit"]
    assert fit["status"] == "NO_BLEACH" and fit["status_code"] == 6 and not fit["ok"]
    assert fit["alpha"]["ci95"][1] >= 1.0  # the criterion, as reported
    assert fit["status_reason"].startswith("no bleach") and fit["engine_status"] in ("CONVERGED", "AT_BOUND")
    assert (tmp_path / "res" / "fit.png").is_file() and (tmp_path / "res" / "curve.csv").is_file()


def test_a_stack_of_pure_noise_is_not_reported_as_a_fit(meaningless, tmp_path, capsys):
    code, errors, s = _meaningless_fit(meaningless["noise"], tmp_path / "res", capsys)
    assert code == 3 and len(errors) == 1
    assert s["fit"]["status"] in ("NO_BLEACH", "UNDETERMINED") and not s["fit"]["ok"]
    assert s["fit"]["status_reason"] in errors[0]


def test_a_normal_noisy_fit_stays_converged_with_an_interval_within_a_decade(stacks, tmp_path):
    out = tmp_path / "res"
    assert main(["frap", "fit", str(stacks["noisy"])] + FIT + ["-o", str(out)]) == 0
    fit = _summary(out)["fit"]
    lo, hi = fit["D_um2_s"]["ci95"]
    assert fit["status"] == "CONVERGED" and fit["ok"] and fit["status_reason"] is None and hi / lo < 10


def test_a_pad_beyond_four_times_the_image_is_refused_at_once(tmp_path, capsys):
    err = _bad(tmp_path, capsys, ["frap", "fit", str(_write(tmp_path, _good_data()))] + OPTS + ["--pad", "3000"])
    assert "padding 3000 px" in err and "128 px" in err


def test_simulate_refuses_a_pad_beyond_four_times_the_image(tmp_path, capsys):
    out = tmp_path / "s.tif"
    assert main(["frap", "simulate", "--size", "32", "--radius", "6", "--pad", "3000", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("fluojax: error: solver padding 3000 px") and "\n" not in err and list(tmp_path.iterdir()) == []
    )
