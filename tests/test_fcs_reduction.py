"""The correlator's NumPy side in a helper process (fluojax.fcs.reduction): the same numbers as in
one process, and every way the helper can fail falls back to reading the stack in the command.

Each scenario runs in a new Python process, because the helper must be forked before JAX is
imported (as ``fluojax fcs fit`` does): the script starts the helper, asks it for the stack,
imports JAX and then correlates the stack with the helper's sums and without them.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fluojax import io
from fluojax.fcs import correlator_cpu

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="the helper is forked (Linux)"),
    pytest.mark.skipif(not correlator_cpu.available(), reason="numba missing"),
]

SCRIPT = r"""
import json, sys
from fluojax.fcs import reduction  # no JAX yet: the helper is forked before it is imported
scenario, path, band_pixels = sys.argv[1], sys.argv[2], int(sys.argv[3])
helper = reduction.start_reduction_process(False, "auto", band_pixels)
out = {"started": helper is not None}
if scenario == "cancel":  # a job given up on: its messages must not be taken for the next one's
    helper.submit(path + ".first")
    helper.cancel(path + ".first")
if scenario == "expect":  # as fcs fit with two stacks: the second is asked for once the first is in
    helper.expect([path, path + ".next"])
helper.submit(path)  # as fcs fit asks for its first stack, before it imports JAX
prepared = helper.prepared(path)
if scenario == "gone":
    helper._process.kill()
    helper._process.join()
import numpy as np
from fluojax import io
from fluojax.fcs import pipeline
stack, _ = io.read_stack(path)
settings = pipeline.AnalysisSettings(frame_time_s=1e-3)
fields = ("acf", "sem", "mean_intensity", "saturated", "fluctuates")
results = []
for use in (prepared, None):
    try:
        corr = pipeline.correlate_stack(stack, settings, progress=False, prepared=use)
        results.append({"arrays": [getattr(corr, k) for k in fields], "bleach": corr.bleach.order})
    except Exception as err:
        results.append({"error": f"{type(err).__name__}: {err}"})
out["helper_running"] = helper.running
out["stacks_reduced"] = helper.stacks_reduced
out["pending"] = list(helper.pending)
if "error" in results[0] or "error" in results[1]:
    out["errors"] = [r.get("error") for r in results]
else:
    out["same"] = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(results[0]["arrays"], results[1]["arrays"]))
    out["bleach"] = [r["bleach"] for r in results]
print(json.dumps(out))
"""


def _stack(
    path: Path, frames: int = 2400, rows: int = 32, cols: int = 16, nan: bool = False, zlib: bool = False
) -> Path:
    """A bleaching camera stack (photon counts of a decaying, fluctuating intensity): 4 bands of 128 pixels."""
    rng = np.random.default_rng(11)
    decay = np.exp(-np.arange(frames) / 3000.0)[:, None, None]
    slow = np.cumsum(rng.normal(0, 1, (frames, rows, cols)), axis=0) * 0.2
    counts = rng.poisson(np.clip(150.0 * decay + slow - slow.mean(axis=0), 1, None))
    stack = counts.astype(np.float32 if nan else np.uint16)
    if nan:
        stack[100, 20, 3] = np.nan
    if zlib:
        tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX", "finterval": 1e-3}, compression="zlib")
    else:
        io.write_stack(path, stack, 1e-3)
    return path


@pytest.fixture(scope="module", autouse=True)
def _kernel_in_numbas_cache():
    """The kernel compiled into numba's cache first, so that the helper and the command both load
    it: a kernel numba has just compiled sums in another order than the same kernel loaded from
    its cache (float32 rounding, ~1e-4 relative in the blocking moments), and the scenarios compare
    bit for bit."""
    code = "import numpy as np; from fluojax.fcs import correlator_cpu as k; k.load_kernel(np.uint16); k.load_kernel(np.float32)"
    subprocess.run([sys.executable, "-c", code], check=True, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})


def _run(scenario: str, path: Path, band_pixels: int = 128) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, scenario, str(path), str(band_pixels)],
        capture_output=True,
        text=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_helper_sums_give_the_same_correlation_as_one_process(tmp_path):
    # the helper reduced the stack (it is still in use: nothing failed) and every array the
    # pipeline makes from its sums equals the one-process result exactly (the same arithmetic);
    # the stack bleaches by 55 %, so the bleach correction ran in the kernel on both sides
    out = _run("same", _stack(tmp_path / "s.tif"))
    assert out["started"] and out["helper_running"] and out["stacks_reduced"] == 1
    assert out["same"]
    assert out["bleach"][0] == out["bleach"][1] > 0


def test_the_next_expected_stack_is_asked_for_when_the_one_before_is_in(tmp_path):
    # the helper reduces stack 2 while the command fits stack 1: it is asked for as soon as
    # stack 1 has come back whole, before the command reaches it (here never); stack 1 as before
    path = _stack(tmp_path / "s.tif")
    (tmp_path / "s.tif.next").write_bytes(path.read_bytes())
    out = _run("expect", path)
    assert out["stacks_reduced"] == 1 and out["same"]
    assert out["pending"] == [str(path) + ".next"]
    assert _run("same", path)["pending"] == []  # nothing expected: nothing asked for


def test_a_stack_the_helper_reduced_in_another_layout_is_read_here(tmp_path):
    # asked for bands of 64 pixels where the pipeline uses 128: the layouts differ, the job is
    # cancelled and the command reads the stack itself, with the same result
    out = _run("layout", _stack(tmp_path / "s.tif"), band_pixels=64)
    assert out["started"] and out["stacks_reduced"] == 0
    assert out["same"]


def test_a_cancelled_job_does_not_mix_with_the_next(tmp_path):
    path = _stack(tmp_path / "s.tif")
    (tmp_path / "s.tif.first").write_bytes(path.read_bytes())
    out = _run("cancel", path)
    assert out["stacks_reduced"] == 1 and out["same"]


def test_a_compressed_stack_is_not_read_a_second_time_by_the_helper(tmp_path):
    # a compressed TIFF cannot be memory-mapped: the command has read it whole already, and the
    # helper leaves it to the command instead of decompressing it a second time
    out = _run("zlib", _stack(tmp_path / "s.tif", zlib=True))
    assert out["stacks_reduced"] == 0 and out["helper_running"]
    assert out["same"]


def test_a_helper_that_is_gone_leaves_the_command_to_read_the_stack(tmp_path):
    out = _run("gone", _stack(tmp_path / "s.tif"))
    assert not out["helper_running"] and out["stacks_reduced"] == 0
    assert out["same"]


def test_bad_data_found_by_the_helper_is_the_same_one_line_error(tmp_path):
    # a NaN in the stack: the helper's refusal reaches the command as the InputError that
    # reading the stack in the command gives
    out = _run("nan", _stack(tmp_path / "s.tif", nan=True))
    assert out["errors"][0] == out["errors"][1] == "InputError: the stack contains NaN or Inf intensities"
    assert out["helper_running"] and out["stacks_reduced"] == 0  # refusing bad data: not a failure


def test_the_helper_side_imports_no_jax():
    code = (
        "import sys; from fluojax.fcs import correlator_cpu, lags, reduction; from fluojax import io, forked; "
        "print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


CLI_SCRIPT = r"""
import json, sys
from fluojax import cli
from fluojax.fcs import reduction
started = []
start = reduction.start_reduction_process
reduction.start_reduction_process = lambda *a, **k: started.append(start(*a, **k)) or started[-1]
code = cli.main(["fcs", "fit", *sys.argv[1:]])
print(json.dumps({"code": code, "started": [h is not None for h in started],
                  "stacks_reduced": [h.stacks_reduced for h in started if h is not None]}))
"""


@pytest.mark.parametrize(("options", "reduced"), [([], [1, 1]), (["--binning", "2"], [])])
def test_fcs_fit_reduces_every_stack_in_its_helper_unless_binned(tmp_path, options, reduced):
    # two stacks in one command: the helper reduces both (the first asked for before JAX is
    # imported); with binning (done in JAX) there is no helper
    a = _stack(tmp_path / "a.tif")
    (tmp_path / "b.tif").write_bytes(a.read_bytes())
    proc = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, str(a), str(tmp_path / "b.tif"), "-o", str(tmp_path / "out"), *options],
        capture_output=True,
        text=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "FLUOJAX_CACHE_DIR": ""},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["code"] == 0
    assert out["started"] == ([True] if reduced else [])
    assert out["stacks_reduced"] == ([sum(reduced)] if reduced else [])


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def test_the_helpers_end_with_a_killed_command(tmp_path):
    # a batch system's SIGKILL (or SIGTERM) reaches the command only; its two helpers (figures,
    # reduction) must not live on, blocked on their pipes
    stack = _stack(tmp_path / "s.tif")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluojax.cli", "fcs", "fit", str(stack), "-o", str(tmp_path / "out")],
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while len(helpers := _children(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(helpers) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{h}").exists() for h in helpers) and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = [
        h for h in helpers if Path(f"/proc/{h}").exists() and "Z" not in Path(f"/proc/{h}/stat").read_text().split()[2]
    ]
    assert alive == []


BROKEN_NUMBA = r"""
import json, sys
sys.path.insert(0, sys.argv[2])  # a numba that is installed but does not import
import numpy as np
from fluojax import io
from fluojax.fcs import pipeline
stack, _ = io.read_stack(sys.argv[1])
auto = pipeline.correlate_stack(stack, pipeline.AnalysisSettings(frame_time_s=1e-3), progress=False)
xla = pipeline.correlate_stack(
    stack, pipeline.AnalysisSettings(frame_time_s=1e-3, correlator_kernel="xla"), progress=False
)
print(json.dumps({"same_as_xla": bool(np.array_equal(auto.acf, xla.acf) and np.array_equal(auto.sem, xla.sem))}))
"""


def test_a_broken_numba_leaves_the_correlation_to_xla(tmp_path):
    # numba found but failing to import (as after a NumPy upgrade it does not support): the
    # pipeline correlates with XLA instead of stopping with an error
    fake = tmp_path / "fake"
    (fake / "numba").mkdir(parents=True)
    (fake / "numba" / "__init__.py").write_text("raise ImportError('Numba needs NumPy 1.x')\n")
    proc = subprocess.run(
        [sys.executable, "-c", BROKEN_NUMBA, str(_stack(tmp_path / "s.tif")), str(fake)],
        capture_output=True,
        text=True,
        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"same_as_xla": True}
