"""``fluojax fcs fit`` and ``frap fit`` of many stacks in one command: one result folder per stack,
equal to a one-stack run of the same file, a bad stack reported in one line while the others are
fitted, the exit code rule, a folder argument, the outputs checked before any stack is read, and
no compilation for a second stack of the same shape.

The FCS stacks are Gaussian processes with the ACF 1 / (1 + tau / 20 frames), drawn by circulant
embedding (no simulator to compile) and Poisson-sampled: 8 x 8 pixels x 2,400 frames, the
shortest record the correlator takes. The FRAP stacks share ``tests/test_cli_frap.py``'s geometry.
"""

import contextlib
import io as text_io
import json
import shutil

import jax
import numpy as np
import pytest
import tifffile

from fluojax import io
from fluojax.cli import main

pytestmark = pytest.mark.xdist_group("cli_many")  # its session fixtures are built once, on one worker

FRAMES, SIDE = 2400, 8
FCS = ["--bleach", "none"]
MAPS = ("D.tif", "N.tif", "Ginf.tif", "chi2.tif", "status.tif")
COMPILE = "/jax/core/compile/backend_compile_duration"  # recorded for every XLA compilation


def _fcs_stack(path, seed, tau_frames=20.0, mean=40.0, amplitude=0.3):
    """A stack whose pixels are independent stationary processes with ACF 1 / (1 + tau / tau_frames)."""
    rng = np.random.default_rng(seed)
    n = 2 * FRAMES
    lag = np.minimum(np.arange(n), n - np.arange(n))
    spectrum = np.clip(np.fft.rfft(1.0 / (1.0 + lag / tau_frames)).real, 0, None)
    white = rng.standard_normal((SIDE * SIDE, n))
    x = np.fft.irfft(np.sqrt(spectrum) * np.fft.rfft(white, axis=1), n, axis=1)[:, :FRAMES]
    x /= x.std(axis=1, keepdims=True)
    counts = rng.poisson(mean * np.clip(1 + amplitude * x, 0, None)).astype(np.uint16)
    frames = counts.T.reshape(FRAMES, SIDE, SIDE)
    tifffile.imwrite(path, frames, imagej=True, metadata={"axes": "TYX", "finterval": 1e-3})


class _Events:
    """The XLA compilations and stack reads of a run, in order."""

    def __init__(self):
        self.log: list[str] = []

    def compiled(self, event, duration, **kwargs):
        if event == COMPILE:
            self.log.append("compile")

    def compiles_after_read(self, k: int) -> int:
        """Compilations after the k-th stack read (1-based), to the end of the run."""
        reads = [i for i, e in enumerate(self.log) if e.startswith("read ")]
        return self.log[reads[k - 1] :].count("compile")


@contextlib.contextmanager
def _recorded():
    """Record compilations and stack reads (``io.read_stack``) while the block runs."""
    events = _Events()
    read = io.read_stack

    def reading(path, *args, **kwargs):
        events.log.append(f"read {path}")
        return read(path, *args, **kwargs)

    jax.monitoring.register_event_duration_secs_listener(events.compiled)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(io, "read_stack", reading)
            yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(events.compiled)


def _run(argv):
    """``main(argv)`` with its stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = text_io.StringIO(), text_io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def fcs_run(tmp_path_factory):
    """Two good stacks and a file that is no TIFF, in one folder, fitted in one command (bad one in the middle)."""
    data = tmp_path_factory.mktemp("many")
    _fcs_stack(data / "a.tif", 0)
    _fcs_stack(data / "b.tif", 1)
    (data / "bad.tif").write_bytes(b"this is not a tiff")
    (data / "notes.txt").write_text("not a stack")
    out = data.parent / f"{data.name}_out"
    with _recorded() as events:
        code, stdout, stderr = _run(
            ["fcs", "fit", str(data / "a.tif"), str(data / "bad.tif"), str(data / "b.tif")] + FCS + ["-o", str(out)]
        )
    return {"data": data, "out": out, "code": code, "stdout": stdout, "stderr": stderr, "events": events}


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def test_each_stack_gets_the_result_folder_a_one_stack_run_writes(fcs_run, tmp_path):
    for name in ("a", "b"):
        single = tmp_path / name
        assert main(["fcs", "fit", str(fcs_run["data"] / f"{name}.tif")] + FCS + ["-o", str(single)]) == 0
        many = fcs_run["out"] / name
        assert sorted(p.name for p in many.iterdir()) == sorted(p.name for p in single.iterdir())
        # the same compiled functions on the same data on one CPU: the maps are bit for bit equal
        for map_name in MAPS:
            np.testing.assert_array_equal(tifffile.imread(many / map_name), tifffile.imread(single / map_name))
        s_many, s_single = _summary(many), _summary(single)
        for s in (s_many, s_single):
            s.pop("timings_s", None)
        assert s_many == s_single
        assert json.loads((many / io.RESULT_MARKER).read_text())["kind"] == "fcs-fit"


def test_a_bad_stack_is_one_line_and_the_others_are_fitted(fcs_run):
    assert fcs_run["code"] == 2  # a stack refused as bad input
    errors = [line for line in fcs_run["stderr"].splitlines() if line.startswith("fluojax: error:")]
    assert len(errors) == 1 and "bad.tif: not a readable TIFF file" in errors[0]
    assert "Traceback" not in fcs_run["stderr"]
    assert sorted(p.name for p in fcs_run["out"].iterdir()) == ["a", "b", "summary.json"]
    summary = _summary(fcs_run["out"])
    assert [(r["output"], r["status"], r["exit_code"]) for r in summary["results"]] == [
        ("a", "fitted", 0),
        (None, "refused", 2),
        ("b", "fitted", 0),
    ]
    assert summary["kind"] == "fcs-fit-batch" and summary["exit_code"] == 2
    assert (summary["fitted"], summary["failed"], summary["refused"]) == (2, 0, 1)
    # overall progress: one line per stack on stderr; the closing table on stdout
    progress = [line for line in fcs_run["stderr"].splitlines() if line.startswith("fluojax: stack ")]
    assert [line.split(",")[0] for line in progress] == [
        f"fluojax: stack {i}/3: {fcs_run['data'] / name}" for i, name in ((1, "a.tif"), (2, "bad.tif"), (3, "b.tif"))
    ]
    assert "3 stacks: 2 fitted, 0 failed, 1 refused" in fcs_run["stdout"]


def test_a_second_stack_of_the_same_shape_compiles_nothing(fcs_run):
    events = fcs_run["events"]
    assert [e for e in events.log if e.startswith("read ")] == [
        f"read {fcs_run['data'] / name}" for name in ("a.tif", "bad.tif", "b.tif")
    ]
    assert events.compiles_after_read(3) == 0  # b.tif: every jitted function of a.tif reused
    with _recorded() as probe:  # the counter counts: a new function compiles once
        jax.jit(lambda x: x * 3.0 + 1.0)(np.float32(2.0)).block_until_ready()
    assert probe.log.count("compile") == 1


def test_a_folder_is_its_tiff_files_sorted_and_defaults_go_beside_each_stack(fcs_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(fcs_run["data"], data)
    (data / ".hidden.tif").write_bytes(b"hidden files are skipped")
    (data / "sub").mkdir()
    with _recorded() as events:
        code, stdout, _stderr = _run(["fcs", "fit", str(data)] + FCS)  # no -o: STACK_fcs beside each stack
    assert code == 2
    assert [e for e in events.log if e.startswith("read ")] == [
        f"read {data / n}" for n in ("a.tif", "b.tif", "bad.tif")
    ]
    assert (data / "a_fcs" / io.RESULT_MARKER).is_file() and (data / "b_fcs" / io.RESULT_MARKER).is_file()
    assert not (data / "bad_fcs").exists() and not (data / "summary.json").exists()  # the summary is the table
    assert "  refused  " in stdout and str(data / "bad.tif") in stdout


def test_exit_code_3_when_a_fit_failed_and_no_stack_was_refused(fcs_run, tmp_path):
    # constant-rate Poisson noise: no pixel's ACF stands out from its noise, nothing is fitted
    noise = np.random.default_rng(5).poisson(40, (FRAMES, SIDE, SIDE)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "noise.tif", noise, imagej=True, metadata={"axes": "TYX", "finterval": 1e-3})
    out = tmp_path / "out"
    code, _, _stderr = _run(
        ["fcs", "fit", str(fcs_run["data"] / "a.tif"), str(tmp_path / "noise.tif")] + FCS + ["-o", str(out)]
    )
    assert code == 3
    assert [r["status"] for r in _summary(out)["results"]] == ["fitted", "failed"]
    assert (out / "noise" / "status.tif").is_file()  # a failed fit's results are written


def test_two_stacks_of_one_name_are_refused_before_anything_is_read(fcs_run, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(fcs_run["data"] / "a.tif", other / "a.tif")
    out = tmp_path / "out"
    with _recorded() as events:
        code, _, stderr = _run(["fcs", "fit", str(fcs_run["data"] / "a.tif"), str(other / "a.tif"), "-o", str(out)])
    assert code == 2 and stderr.count("\n") == 1 and "would both be written to" in stderr
    assert not out.exists() and not any(e.startswith("read ") for e in events.log)


@pytest.mark.parametrize(
    ("prepare", "message"),
    [
        (lambda out: (out.mkdir(), (out / "notes.txt").write_text("mine")), "not a fluojax fcs-fit result of several"),
        (lambda out: shutil.copytree(out.parent / "earlier", out), "pass --overwrite"),
    ],
    ids=["foreign-file", "earlier-results"],
)
def test_the_output_folder_is_checked_before_any_stack_is_read(fcs_run, tmp_path, prepare, message):
    shutil.copytree(fcs_run["out"], tmp_path / "earlier")
    out = tmp_path / "out"
    prepare(out)
    before = sorted(p.name for p in out.iterdir())
    stacks = [str(fcs_run["data"] / n) for n in ("a.tif", "b.tif")]
    with _recorded() as events:
        code, _, stderr = _run(["fcs", "fit", *stacks] + FCS + ["-o", str(out)])
    assert code == 2 and stderr.count("\n") == 1 and message in stderr
    assert sorted(p.name for p in out.iterdir()) == before and not any(e.startswith("read ") for e in events.log)


def test_overwrite_replaces_the_results_of_these_stacks(fcs_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fcs_run["out"], out)
    code, _, _ = _run(["fcs", "fit", str(fcs_run["data"] / "b.tif")] + FCS + ["-o", str(out / "b"), "--overwrite"])
    assert code == 0  # one stack: the single-stack command, its result folder replaced in OUT
    stacks = [str(fcs_run["data"] / n) for n in ("a.tif", "b.tif")]
    code, _, _ = _run(["fcs", "fit", *stacks] + FCS + ["-o", str(out), "--overwrite"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "summary.json"]
    assert [r["status"] for r in _summary(out)["results"]] == ["fitted", "fitted"]


# ------------------------------------------------------------------------------------------------
# frap fit: the same loop; the least-squares fit is replaced by a fixed converged answer (its
# compilation, ~10 s on 2 cores, is tested in tests/test_cli_frap.py), the curve table is real

FRAP_FIT = ["--roi", "circle:32,32,8", "--prebleach", "5", "--bleach", "2", "--starts", "4"]


def _frap_stack(path, seed):
    """64 x 64 px, 5 prebleach and 30 postbleach frames: a disk of radius 8 px recovering from 60 %."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:64, :64] + 0.5
    disk = (x - 32) ** 2 + (y - 32) ** 2 < 64
    depth = np.concatenate([np.zeros(5), 0.4 * np.exp(-np.arange(30) / 7.0)])
    frames = 0.75 * (1 - depth[:, None, None] * disk) + rng.normal(0, 0.01, (35, 64, 64))
    io.write_stack(path, frames.astype(np.float32), 0.265, 0.7598)


def _converged_fit(prepared, table, *, n_starts=30, seed=0):
    from fluojax.frap.estimate import FrapFit

    theta = np.array([[8.0, 1.0, 0.6]])
    return FrapFit(theta, 0.9 * theta, 1.1 * theta, 0.05 * theta, np.array([0]), np.array([1e-4]), np.array([1e-4]))


def test_frap_fit_of_many_stacks_matches_one_stack_runs_and_builds_the_table_once(tmp_path, monkeypatch):
    from fluojax.frap import pipeline

    monkeypatch.setattr(pipeline, "fit_prepared", _converged_fit)
    _frap_stack(tmp_path / "one.tif", 0)
    _frap_stack(tmp_path / "two.tif", 1)
    (tmp_path / "zero.tif").write_bytes(b"")
    out = tmp_path / "out"
    stacks = [str(tmp_path / n) for n in ("one.tif", "zero.tif", "two.tif")]
    with _recorded() as events:
        code, _, stderr = _run(["frap", "fit", *stacks] + FRAP_FIT + ["-o", str(out)])
    assert code == 2 and "zero.tif: not a readable TIFF file" in stderr
    assert events.compiles_after_read(3) == 0  # two.tif: the curve table's solver of one.tif reused
    assert [r["status"] for r in _summary(out)["results"]] == ["fitted", "refused", "fitted"]
    for name in ("one", "two"):
        single = tmp_path / f"single_{name}"
        assert main(["frap", "fit", str(tmp_path / f"{name}.tif")] + FRAP_FIT + ["-o", str(single)]) == 0
        s_many, s_single = _summary(out / name), _summary(single)
        for s in (s_many, s_single):
            s.pop("timings_s")
        assert s_many == s_single
        assert (out / name / "curve.csv").read_text() == (single / "curve.csv").read_text()
