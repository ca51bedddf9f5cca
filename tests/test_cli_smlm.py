"""``fluojax smlm``: simulate -> localize -> evaluate on tiny stacks, the outputs' formats, and one
clear error line (exit 2, nothing written) for each bad input (issue 19, item 9)."""

import json

import numpy as np
import pytest
import tifffile

from fluojax.cli import main

pytestmark = pytest.mark.xdist_group("cli_smlm")  # its session fixtures are built once, on one worker

SIM_2D = ["smlm", "simulate", "--preset", "2d", "--frames", "6", "--size", "24", "--emitters", "2", "--seed", "4"]


@pytest.fixture(scope="session")
def sim(tmp_path_factory):
    """A 2D simulation (6 frames, 24 x 24 pixels of 100 nm, 2 emitters each) and a quad-plane one."""
    folder = tmp_path_factory.mktemp("smlm")
    assert main([*SIM_2D, "-o", str(folder / "sim2d")]) == 0
    quad = ["smlm", "simulate", "--preset", "quadplane-paper", "--frames", "2", "--size", "16", "--emitters", "3"]
    assert main([*quad, "-o", str(folder / "simquad")]) == 0
    return folder


def test_simulate_writes_the_stack_with_its_pixel_size_and_the_truth(sim):
    with tifffile.TiffFile(sim / "sim2d" / "stack.tif") as tif:
        assert tif.asarray().shape == (6, 24, 24)
        assert tif.pages[0].tags["XResolution"].value == (10, 1)  # 10 pixels per um: 100 nm pixels
    header = (sim / "sim2d" / "truth.csv").read_text().splitlines()[0]
    assert header.startswith('"id","frame","x [nm]","y [nm]"')
    assert len((sim / "sim2d" / "truth.csv").read_text().splitlines()) == 1 + 12  # 6 frames x 2 emitters
    summary = json.loads((sim / "sim2d" / "summary.json").read_text())
    assert (summary["frames"], summary["planes"], summary["molecules"]) == (6, 1, 12)


def test_a_quad_plane_simulation_interleaves_its_planes_and_has_z(sim):
    with tifffile.TiffFile(sim / "simquad" / "stack.tif") as tif:
        assert tif.asarray().shape == (8, 16, 16)  # 2 frames x 4 planes, plane index fastest
    assert '"z [nm]"' in (sim / "simquad" / "truth.csv").read_text().splitlines()[0]


def test_simulate_refuses_to_replace_its_output_without_overwrite(sim, capsys):
    assert main([*SIM_2D, "-o", str(sim / "sim2d")]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err


def test_evaluate_of_the_truth_against_itself_is_perfect_and_writes_json(sim, tmp_path, capsys):
    truth = str(sim / "sim2d" / "truth.csv")
    out = tmp_path / "m.json"
    assert main(["smlm", "evaluate", truth, "--truth", truth, "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| truth.csv | 12 | 0 | 0 |" in printed and "Jaccard 100.0 %" in printed
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["jaccard"] == 100.0 and metrics["rmse_lateral_nm"] == 0.0


def test_localize_mle_writes_a_thunderstorm_csv_an_image_and_a_summary_that_evaluate_scores(sim, tmp_path, capsys):
    pytest.importorskip("fluojax.smlm.estimate")
    out = tmp_path / "locs.csv"
    assert main(["smlm", "localize", str(sim / "sim2d" / "stack.tif"), "-o", str(out)]) == 0
    assert capsys.readouterr().out.count("\n") == 1  # one summary line
    header = out.read_text().splitlines()[0]
    assert header.startswith('"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]"')
    assert (tmp_path / "locs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "locs.json").read_text())
    assert summary["method"] == "mle" and summary["settings"]["pixel_nm"] == pytest.approx(100.0)
    assert main(["smlm", "evaluate", str(out), "--truth", str(sim / "sim2d" / "truth.csv")]) == 0
    # 12 emitters of 1000-5000 photons: most are found (edge and overlapping ones may not be)
    assert float(capsys.readouterr().out.split("Jaccard ")[1].split(" %")[0]) > 60.0


def test_localize_mle_of_a_quad_plane_stack_writes_z(sim, tmp_path, capsys):
    pytest.importorskip("fluojax.smlm.estimate")
    out = tmp_path / "q.csv"
    assert main(["smlm", "localize", str(sim / "simquad" / "stack.tif"), "--psf", "quadplane", "-o", str(out)]) == 0
    header = out.read_text().splitlines()[0]
    assert '"z [nm]"' in header and '"uncertainty_z [nm]"' in header
    assert json.loads((tmp_path / "q.json").read_text())["planes"] == 4


def test_train_then_localize_with_the_network_writes_scores_and_refuses_other_pixel_sizes(sim, tmp_path, capsys):
    pytest.importorskip("fluojax.smlm.learned")
    # two steps of the 2D CPU recipe (100 nm pixels, as the 2d preset): the commands' plumbing, not
    # the network's accuracy (docs/smlm.md has that)
    run = tmp_path / "run"
    assert main(["smlm", "train", "--config", "voxelnet-2d-small", "--steps", "2", "-o", str(run)]) == 0
    assert (run / "loss.png").exists()
    out = tmp_path / "net.csv"
    stack = str(sim / "sim2d" / "stack.tif")
    assert main(["smlm", "localize", stack, "--method", "net", "--net", str(run), "-o", str(out)]) == 0
    assert out.read_text().splitlines()[0].endswith('"score"')  # the voxel probability
    assert json.loads((tmp_path / "net.json").read_text())["method"] == "net"
    capsys.readouterr()
    other = tmp_path / "other.csv"
    argv = ["smlm", "localize", stack, "--method", "net", "--net", str(run), "--pixel-size", "160", "-o", str(other)]
    _refused(argv, "pixel size 160 nm: the network was trained on 100 nm pixels", other, capsys)


# ------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 2, nothing written


def _refused(argv, message, out, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fluojax: error: ")
    assert message in err, err
    assert not out.exists() and not out.with_suffix(".png").exists() and not out.with_suffix(".json").exists()


def test_a_stack_that_does_not_divide_into_four_planes_is_refused(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.random.default_rng(0).poisson(10, (30, 8, 8)).astype(np.float32))
    out = tmp_path / "l.csv"
    argv = ["smlm", "localize", str(tmp_path / "s.tif"), "--psf", "quadplane", "--pixel-size", "192", "-o", str(out)]
    _refused(argv, "a stack of 30 images does not divide into frames of 4 planes", out, capsys)


def test_a_constant_stack_is_refused(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((5, 8, 8), np.uint16))
    out = tmp_path / "l.csv"
    argv = ["smlm", "localize", str(tmp_path / "s.tif"), "--pixel-size", "100", "-o", str(out)]
    _refused(argv, "every one of the 5 frames holds the single value 0: nothing to localize", out, capsys)


def test_a_missing_stack_is_refused(tmp_path, capsys):
    out = tmp_path / "l.csv"
    _refused(["smlm", "localize", str(tmp_path / "no.tif"), "-o", str(out)], "no.tif: no such file", out, capsys)


def test_a_stack_without_a_pixel_size_needs_one(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.random.default_rng(0).poisson(10, (6, 8, 8)).astype(np.float32))
    out = tmp_path / "l.csv"
    _refused(["smlm", "localize", str(tmp_path / "s.tif"), "-o", str(out)], "pass --pixel-size NM", out, capsys)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--qe", "1.5"], "quantum efficiency 1.5: must be in (0, 1]"),
        (["--em-gain", "0.5"], "EM gain 0.5: must be >= 1"),
        (["--baseline", "inf"], "base level inf ADU: must be a finite number"),
        (["--scmos-offset", "{map}"], "sCMOS offset map of 4 x 4 pixels: the frames are 8 x 8"),
        (["--psf-sigma", "100", "--psf", "quadplane"], "applies to the gaussian PSF"),
    ],
)
def test_bad_camera_and_psf_settings_are_refused(options, message, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "s.tif", np.random.default_rng(0).poisson(10, (6, 8, 8)).astype(np.float32))
    tifffile.imwrite(tmp_path / "map.tif", np.zeros((4, 4), np.float32))
    options = [o.format(map=tmp_path / "map.tif") for o in options]
    out = tmp_path / "l.csv"
    _refused(
        ["smlm", "localize", str(tmp_path / "s.tif"), "--pixel-size", "100", *options, "-o", str(out)],
        message,
        out,
        capsys,
    )


def test_a_localization_file_with_missing_columns_is_refused(sim, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text('"id","frame","x [nm]"\n1,1,100\n')
    out = tmp_path / "m.json"
    argv = ["smlm", "evaluate", str(bad), "--truth", str(sim / "sim2d" / "truth.csv"), "-o", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.csv: no y column" in err
    assert not out.exists()


def test_the_net_method_needs_a_network(sim, tmp_path, capsys):
    out = tmp_path / "l.csv"
    _refused(
        ["smlm", "localize", str(sim / "sim2d" / "stack.tif"), "--method", "net", "-o", str(out)],
        "--method net needs --net CKPT",
        out,
        capsys,
    )


# ------------------------------------------------------------------------------------------------
# the parser's lists are the library's


def test_the_psf_and_preset_choices_are_the_librarys():
    from fluojax.cli import smlm
    from fluojax.smlm import pipeline
    from fluojax.smlm.models import PSFS

    assert set(smlm.PSF_NAMES) == set(PSFS)
    assert tuple(smlm.PRESET_NAMES) == pipeline.PRESETS
