"""Nothing at the output path is lost: ``-o`` only creates a new result, fills an empty folder, or
replaces an earlier fluojax result of the same kind when ``--overwrite`` is given (docs/refusals.md, "The output path").

Every refusal is checked the same way: exit code 2, one line on stderr, and every file that
existed before byte-identical afterwards (and no file added). The output checks run before the
analysis, so most tests use inputs that are never read; the two FCS fits share one tiny stack.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fluojax import io
from fluojax import train as training
from fluojax.cli import main

pytestmark = pytest.mark.xdist_group("output_safety")  # its session fixtures are built once, on one worker

ROOT = Path(__file__).resolve().parents[1]
FRAP_FIT = ["--roi", "circle:16,16,6", "--prebleach", "10", "--bleach", "4"]


def _env() -> dict:
    """Environment for a subprocess that imports this checkout's fluojax."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
    }


def _snapshot(root: Path) -> dict:
    """Every file under ``root`` (hidden ones included) -> its bytes; every folder -> None."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _refused(root: Path, capsys, argv: list[str]) -> str:
    """Run the command; assert exit 2, one stderr line, and nothing under ``root`` changed."""
    before = _snapshot(root)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fluojax: error:") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert _snapshot(root) == before
    return err


@pytest.fixture(scope="session")
def fcs_stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("fcs") / "stack.tif"
    assert main(["fcs", "simulate", "--frames", "2400", "--size", "4", "-o", str(path)]) == 0
    return path


@pytest.fixture(scope="session")
def fcs_result(fcs_stack, tmp_path_factory):
    """A real earlier ``fcs fit`` result folder (copy it before changing anything)."""
    out = tmp_path_factory.mktemp("earlier") / "results"
    assert main(["fcs", "fit", str(fcs_stack), "--bleach", "none", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def frap_stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("frap") / "f.tif"
    assert main(["frap", "simulate", "--size", "32", "--radius", "6", "--postbleach", "10", "-o", str(path)]) == 0
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst) if src.is_file() else shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------------
# the cases of docs/refusals.md, "The output path"


def test_output_that_is_the_input_stack_is_refused(fcs_stack, tmp_path, capsys):
    stack = _copy(fcs_stack, tmp_path / "stack.tif")
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(stack), "-o", str(stack)])
    assert "existing file" in err and "nothing was touched" in err


def test_output_that_is_the_inputs_folder_is_refused(fcs_stack, tmp_path, capsys):
    proj = tmp_path / "proj"
    proj.mkdir()
    raw = _copy(fcs_stack, proj / "raw.tif")
    (proj / "notes.txt").write_text("my notes\n")
    (proj / "sub").mkdir()
    (proj / "sub" / "other.tif").write_bytes(b"data")
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(raw), "-o", str(proj)])
    assert "not a fluojax result" in err and "raw.tif" in err


def test_output_dot_in_a_working_folder_is_refused(fcs_stack, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    _copy(fcs_stack, work / "m.tif")
    (work / "analysis.py").write_text("print('mine')\n")
    monkeypatch.chdir(work)
    err = _refused(tmp_path, capsys, ["fcs", "fit", "m.tif", "-o", "."])
    assert err.startswith("fluojax: error: -o .: a folder that is not a fluojax result")


def test_output_that_is_an_unrelated_file_is_refused(fcs_stack, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("do not lose me\n")
    _refused(tmp_path, capsys, ["fcs", "fit", str(fcs_stack), "-o", str(tmp_path / "notes.txt"), "--overwrite"])


def test_earlier_result_holding_a_users_file_is_refused_even_with_overwrite(fcs_stack, fcs_result, tmp_path, capsys):
    old = _copy(fcs_result, tmp_path / "old_results")
    (old / "my_analysis.txt").write_text("D looks bimodal\n")
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(fcs_stack), "-o", str(old), "--overwrite"])
    assert "my_analysis.txt" in err and "did not write" in err


def test_frap_fit_output_that_is_a_csv_file_is_refused(frap_stack, tmp_path, capsys):
    (tmp_path / "results.csv").write_text("cell,D\n1,3.2\n")
    _refused(tmp_path, capsys, ["frap", "fit", str(frap_stack), *FRAP_FIT, "-o", str(tmp_path / "results.csv")])


def test_failing_run_leaves_an_earlier_result_byte_identical(fcs_result, tmp_path, capsys):
    good = _copy(fcs_result, tmp_path / "good")
    data = np.random.default_rng(0).poisson(50, (2400, 4, 4)).astype(np.float32)
    data[10, 1, 1] = np.nan  # passes the output check, then the analysis refuses it
    tifffile.imwrite(tmp_path / "bad.tif", data, photometric="minisblack")
    err = _refused(
        tmp_path,
        capsys,
        ["fcs", "fit", str(tmp_path / "bad.tif"), "--frame-time", "0.001", "-o", str(good), "--overwrite"],
    )
    assert "NaN" in err


def test_exception_inside_the_staging_block_leaves_the_earlier_result_and_no_sibling(fcs_result, tmp_path):
    good = _copy(fcs_result, tmp_path / "good")
    before = _snapshot(tmp_path)
    with pytest.raises(io.InputError, match="half way"):
        with io.result_folder(good, "fcs-fit", overwrite=True) as folder:
            (folder / "D.tif").write_bytes(b"half")
            raise io.InputError("failed half way")
    assert _snapshot(tmp_path) == before


def test_overwrite_replaces_an_earlier_result_of_the_same_kind(fcs_stack, fcs_result, tmp_path):
    old = _copy(fcs_result, tmp_path / "res")
    (old / "summary.json").write_text('{"stale": true}\n')
    assert main(["fcs", "fit", str(fcs_stack), "--bleach", "none", "-o", str(old), "--overwrite"]) == 0
    summary = json.loads((old / "summary.json").read_text())
    assert "stale" not in summary and summary["input"] == str(fcs_stack)
    marker = json.loads((old / io.RESULT_MARKER).read_text())
    assert marker["kind"] == "fcs-fit" and sorted(os.listdir(old)) == sorted([*marker["files"], io.RESULT_MARKER])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no staging or old folder left


def test_earlier_result_of_the_same_kind_needs_overwrite(fcs_stack, fcs_result, tmp_path, capsys):
    old = _copy(fcs_result, tmp_path / "res")
    err = _refused(tmp_path, capsys, ["fcs", "fit", str(fcs_stack), "-o", str(old)])
    assert err == f"fluojax: error: -o {old}: holds an earlier fluojax fcs-fit result; pass --overwrite to replace it"


def test_default_output_folder_follows_the_same_rules(fcs_stack, fcs_result, tmp_path, capsys):
    stack = _copy(fcs_stack, tmp_path / "stack.tif")
    _copy(fcs_result, tmp_path / "stack_fcs")
    assert "the default" in _refused(tmp_path, capsys, ["fcs", "fit", str(stack)])


def test_another_kinds_result_is_refused_even_with_overwrite(frap_stack, fcs_result, tmp_path, capsys):
    other = _copy(fcs_result, tmp_path / "res")
    err = _refused(tmp_path, capsys, ["frap", "fit", str(frap_stack), *FRAP_FIT, "-o", str(other), "--overwrite"])
    assert "fcs-fit result, not frap-fit" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["fcs", "fit", "in.tif"],
        ["fcs", "predict", "in.tif", "--net", "run"],
        ["fcs", "compare"],
        ["demo"],
        ["frap", "fit", "in.tif", "--roi", "circle:5,5,2"],
        ["frap", "predict", "in.tif", "--net", "run", "--roi", "circle:5,5,2"],
    ],
    ids=lambda argv: "-".join(a for a in argv[:2] if not a.endswith(".tif")),
)
def test_every_result_command_refuses_a_foreign_folder_before_reading_anything(argv, tmp_path, capsys):
    # in.tif and run do not exist: the output check must come first for this to say "not a fluojax result"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.docx").write_bytes(b"years of work")
    assert "not a fluojax result" in _refused(tmp_path, capsys, [*argv, "-o", str(mine), "--overwrite"])


# ------------------------------------------------------------------------------------------------
# the staging machinery


_SIGTERM_CHILD = """
import sys, time
from fluojax import io
kind = sys.argv[2]
stage = io.result_folder(sys.argv[1], "fcs-fit", overwrite=True) if kind == "folder" else io.result_file(sys.argv[1], overwrite=True)
with stage as target:
    (target / "D.tif").write_bytes(b"half") if kind == "folder" else target.write_bytes(b"half")
    print("ready", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_sigterm_while_staging_leaves_no_hidden_sibling_and_the_destination_untouched(tmp_path, kind):
    if kind == "folder":
        dest = tmp_path / "res"
        with io.result_folder(dest, "fcs-fit") as folder:
            (folder / "D.tif").write_bytes(b"earlier")
    else:
        dest = tmp_path / "stack.tif"
        dest.write_bytes(b"earlier")
    before = _snapshot(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_CHILD, str(dest), kind], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        assert any(p.name.startswith(f".{dest.name}.fluojax-") for p in tmp_path.iterdir())  # it was staging
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        child.kill()
        child.stdout.close()
    assert _snapshot(tmp_path) == before  # no .res.fluojax-staging-*, earlier result as it was


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def test_stale_staging_folder_of_a_dead_process_is_removed_by_the_next_run(tmp_path):
    dest = tmp_path / "res"
    stale = io._sibling(dest, "staging").name.split("-")
    stale[2] = str(_dead_pid())  # .res.fluojax-staging-<pid>-<host>-<random>
    stale = tmp_path / "-".join(stale)
    stale.mkdir()
    (stale / "D.tif").write_bytes(b"half")
    with io.result_folder(dest, "fcs-fit") as folder:
        (folder / "D.tif").write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_earlier_result_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    dest = tmp_path / "res"
    with io.result_folder(dest, "fcs-fit") as folder:
        (folder / "D.tif").write_bytes(b"earlier")
    aside = io._sibling(dest, "old").name.split("-")
    aside[2] = str(_dead_pid())
    dest.rename(tmp_path / "-".join(aside))  # killed between "move aside" and "move into place"
    with pytest.raises(io.InputError, match="pass --overwrite"):
        with io.result_folder(dest, "fcs-fit"):
            pass
    assert (dest / "D.tif").read_bytes() == b"earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["res"]


def test_result_folder_has_normal_permissions(tmp_path):
    old_mask = os.umask(0o022)
    try:
        with io.result_folder(tmp_path / "a" / "res", "demo") as folder:
            (folder / "x.txt").write_text("x")
    finally:
        os.umask(old_mask)
    assert (tmp_path / "a" / "res").stat().st_mode & 0o777 == 0o755  # 0o777 less the umask, not mkdtemp's 0o700
    assert (tmp_path / "a" / "res" / io.RESULT_MARKER).stat().st_mode & 0o777 == 0o644


def test_empty_folder_is_filled(tmp_path):
    (tmp_path / "res").mkdir()
    with io.result_folder(tmp_path / "res", "demo") as folder:
        (folder / "x.txt").write_text("x")
    assert sorted(os.listdir(tmp_path / "res")) == sorted([io.RESULT_MARKER, "x.txt"])


# ------------------------------------------------------------------------------------------------
# simulate -o FILE.tif and train -o RUN


def test_simulate_replaces_an_existing_tif_only_with_overwrite(frap_stack, tmp_path, capsys):
    target = tmp_path / "sim.tif"
    target.write_bytes(b"an older stack")
    argv = ["frap", "simulate", "--size", "32", "--radius", "6", "--postbleach", "10", "-o", str(target)]
    assert "--overwrite" in _refused(tmp_path, capsys, argv)
    assert main([*argv, "--overwrite"]) == 0
    np.testing.assert_array_equal(
        tifffile.imread(target), tifffile.imread(frap_stack)
    )  # same settings and seed as the fixture
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.tif"]


def test_simulate_never_replaces_a_folder(tmp_path, capsys):
    (tmp_path / "folder.tif").mkdir()
    (tmp_path / "folder.tif" / "inside.txt").write_text("mine\n")
    err = _refused(
        tmp_path,
        capsys,
        ["fcs", "simulate", "--frames", "2400", "--size", "4", "-o", str(tmp_path / "folder.tif"), "--overwrite"],
    )
    assert "is a folder" in err


def test_simulate_never_replaces_a_file_that_is_not_a_tif(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("notes\n")
    _refused(
        tmp_path,
        capsys,
        ["fcs", "simulate", "--frames", "2400", "--size", "4", "-o", str(tmp_path / "notes.txt"), "--overwrite"],
    )


def test_train_refuses_a_non_empty_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "raw.tif").write_bytes(b"raw")
    err = _refused(
        tmp_path,
        capsys,
        ["fcs", "train", "--config", "imfcsnet-2d-small", "--steps", "1", "-o", str(tmp_path / "data")],
    )
    assert "not a fluojax training run" in err
    assert "not a fluojax training run" in _refused(
        tmp_path, capsys, ["frap", "train", "--config", "deepfrap-small", "-o", str(tmp_path / "data")]
    )


def test_a_folder_with_training_metrics_is_a_run_to_resume(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")  # a run stopped before its first checkpoint
    (tmp_path / "loss.png").write_bytes(b"png")
    training.check_run_folder(tmp_path)  # no error: train() resumes here
    assert training.is_run_folder(tmp_path) and not training.is_run_folder(tmp_path / "missing")


# ------------------------------------------------------------------------------------------------
# argparse


def test_argparse_errors_are_one_line_with_exit_code_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fluojax.cli", "fcs", "fit", "x.tif", "--na", "abc"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "fluojax: error: argument --na: 'abc' is not a number (see 'fluojax fcs fit --help')\n"
