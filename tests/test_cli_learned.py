"""`fluojax fcs train` and `fluojax fcs predict` end to end, and their errors (exit 2, one line)."""

import json

import numpy as np
import pytest
import tifffile

from fluojax.cli import main

# every test here shares one expensive module fixture: one xdist worker runs them all, so the
# fixture is built once (make test uses --dist loadgroup; without xdist the mark does nothing)
pytestmark = [pytest.mark.xdist_group("cli_learned"), pytest.mark.slow]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("net") / "imfcsnet"
    # 3 steps of the CPU-sized ImFCSNet: exercises the command, not the learning (tests elsewhere)
    assert main(["fcs", "train", "--config", "imfcsnet-2d-small", "--steps", "3", "-o", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def stack_2500(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "stack.tif"
    assert main(["fcs", "simulate", "--frames", "2500", "--size", "5", "--density", "0.2", "-o", str(path)]) == 0
    return path


def test_train_writes_checkpoint_metrics_and_loss_plot(trained_run):
    assert (trained_run / "checkpoints" / "step_000000003" / "meta.json").is_file()
    assert (trained_run / "metrics.csv").is_file() and (trained_run / "loss.png").is_file()
    meta = json.loads((trained_run / "checkpoints" / "step_000000003" / "meta.json").read_text())
    assert meta["fluojax_network"] == "imfcsnet" and meta["step"] == 3


def test_predict_overlap_writes_maps_with_marked_border(trained_run, stack_2500, tmp_path):
    out = tmp_path / "pred"
    assert main(["fcs", "predict", str(stack_2500), "--net", str(trained_run), "--overlap", "-o", str(out)]) == 0
    for name in ("D.tif", "chi2.tif", "status.tif", "maps.png", "summary.json"):
        assert (out / name).is_file(), name
    status = tifffile.imread(out / "status.tif")
    d = tifffile.imread(out / "D.tif")
    assert status.shape == (5, 5)
    assert np.all(status[0] == 8) and np.all(status[:, -1] == 8)  # border: no centred 3x3 window
    assert np.all(np.isfinite(d[1:-1, 1:-1])) and np.all(np.isnan(d[0]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["network"] == "imfcsnet-2d-small" and "physics_check" in summary


def test_predict_refuses_a_folder_without_checkpoint(stack_2500, tmp_path, capsys):
    assert main(["fcs", "predict", str(stack_2500), "--net", str(tmp_path), "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not a fluojax network checkpoint" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_predict_refuses_another_frame_time(trained_run, stack_2500, tmp_path, capsys):
    assert (
        main(
            [
                "fcs",
                "predict",
                str(stack_2500),
                "--net",
                str(trained_run),
                "--frame-time",
                "0.002",
                "-o",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "trained for a frame time of 0.00106 s" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_predict_refuses_a_stack_too_short_for_the_network(trained_run, tmp_path, capsys):
    short = tmp_path / "short.tif"
    assert main(["fcs", "simulate", "--frames", "800", "--size", "4", "-o", str(short)]) == 0
    assert main(["fcs", "predict", str(short), "--net", str(trained_run), "-o", str(tmp_path / "x")]) == 2
    assert "800 frames" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compare_writes_report_of_networks_and_least_squares(trained_run, tmp_path):
    out = tmp_path / "rep"
    args = [
        "fcs",
        "compare",
        "--imfcsnet",
        str(trained_run),
        "--long",
        "5000",
        "--short",
        "2500",
        "--d",
        "0.5",
        "5",
        "--samples",
        "2",
        "-o",
        str(out),
    ]
    assert main(args) == 0
    table = (out / "report.md").read_text()
    for name in ("NLS 1x1 @ long", "NLS 3x3 @ short", "ImFCSNet @ short", "hybrid"):
        assert name in table
    assert (out / "report.csv").is_file() and (out / "report.png").is_file()


def test_compare_refuses_a_network_of_the_other_kind(trained_run, tmp_path, capsys):
    assert main(["fcs", "compare", "--fcsnet", str(trained_run), "-o", str(tmp_path / "x")]) == 2
    assert "imfcsnet checkpoint, not a fcsnet" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# degenerate input (issue 17; the rest of those tests are in test_degenerate_fcs.py, but they
# need this module's trained network)


def _write_like(path, data):
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TYX", "finterval": 1.06e-3})
    return path


def _refused_line(capsys, out):
    err = capsys.readouterr().err.strip()
    assert err.startswith("fluojax: error:") and "\n" not in err and "Traceback" not in err
    assert not out.exists()
    return err


@pytest.mark.parametrize("kind, words", [("zeros", "no pixel of the stack fluctuates"), ("offset", "positive mean")])
def test_predict_refuses_a_blank_or_negative_stack(trained_run, stack_2500, tmp_path, capsys, kind, words):
    counts = tifffile.imread(stack_2500).astype(np.float32)
    data = np.zeros_like(counts) if kind == "zeros" else counts - 1000.0
    path = _write_like(tmp_path / f"{kind}.tif", data)
    out = tmp_path / "x"
    assert main(["fcs", "predict", str(path), "--net", str(trained_run), "--bleach", "none", "-o", str(out)]) == 2
    assert words in _refused_line(capsys, out)


def test_predict_marks_windows_without_fluctuations(trained_run, stack_2500, tmp_path):
    data = tifffile.imread(stack_2500).astype(np.float32)
    data[:, :3, :3] = 4.0  # the 3 x 3 window centred on (1, 1) is constant
    data[:, 4, 4] = 4.0  # one constant pixel in the window of (3, 3): it still fluctuates
    path = _write_like(tmp_path / "flat.tif", data)
    out = tmp_path / "pred"
    assert (
        main(["fcs", "predict", str(path), "--net", str(trained_run), "--overlap", "--bleach", "none", "-o", str(out)])
        == 0
    )
    status, d = tifffile.imread(out / "status.tif"), tifffile.imread(out / "D.tif")
    assert status[1, 1] == 7 and np.isnan(d[1, 1]) and np.isnan(tifffile.imread(out / "chi2.tif")[1, 1])
    inner = np.zeros((5, 5), bool)
    inner[1:4, 1:4] = True
    inner[1, 1] = False
    assert np.all(status[inner] == 0) and np.all(np.isfinite(d[inner]))


def _run_state(run):
    return (run / "metrics.csv").read_text(), sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.fixture
def nothing_built(monkeypatch):
    """Make building a network or simulating a pool fail: a refusal must come before either."""
    from fluojax.fcs import learned

    def fail(*args, **kwargs):
        raise AssertionError("built before the run folder was checked")

    monkeypatch.setattr(learned.nets, "build_network", fail)
    monkeypatch.setattr(learned, "_acf_pool", fail)


def test_train_refuses_a_run_folder_of_another_config_before_building_anything(trained_run, nothing_built, capsys):
    state = _run_state(trained_run)
    assert main(["fcs", "train", "--config", "fcsnet-2d-small", "-o", str(trained_run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fluojax: error: -o {trained_run} holds a imfcsnet-2d-small run (step 3); "
        "use --config imfcsnet-2d-small to resume it, or another folder"
    )
    assert _run_state(trained_run) == state  # no step ran, nothing was written


def test_train_refuses_other_steps_for_a_run_folder_and_names_its_own(trained_run, nothing_built, capsys):
    state = _run_state(trained_run)
    assert main(["fcs", "train", "--config", "imfcsnet-2d-small", "--steps", "5", "-o", str(trained_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"fluojax: error: -o {trained_run} holds a imfcsnet-2d-small run (step 3) with --steps 3; "
        "use --steps 3 to resume it, or another folder"
    )
    assert _run_state(trained_run) == state
