"""The correlator's NumPy side in a helper process (fluojax.fcs.reduction): the same numbers as in
one process, and every way the helper can fail falls back to reading the stack in the command.

Each scenario runs in a new Python process, because the helper must be forked before JAX is
imported (as ``fluojax fcs fit`` does): the script starts the helper, asks it for the stack,
imports JAX and then correlates the stack with the helper's sums and without them.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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
prepared = helper.prepared(path)
if scenario == "gone":
    helper._process.kill()
    helper._process.join()
import numpy as np
from fluojax import io
from fluojax.fcs import pipeline
out["jax_in_helper_imports"] = False
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
if "error" in results[0] or "error" in results[1]:
    out["errors"] = [r.get("error") for r in results]
else:
    out["same"] = all(np.array_equal(a, b, equal_nan=True) for a, b in zip(results[0]["arrays"], results[1]["arrays"]))
    out["bleach"] = [r["bleach"] for r in results]
print(json.dumps(out))
"""


def _stack(path: Path, frames: int = 2400, rows: int = 32, cols: int = 16, nan: bool = False) -> Path:
    """A bleaching camera stack (photon counts of a decaying, fluctuating intensity): 4 bands of 128 pixels."""
    rng = np.random.default_rng(11)
    decay = np.exp(-np.arange(frames) / 3000.0)[:, None, None]
    slow = np.cumsum(rng.normal(0, 1, (frames, rows, cols)), axis=0) * 0.2
    counts = rng.poisson(np.clip(150.0 * decay + slow - slow.mean(axis=0), 1, None))
    stack = counts.astype(np.float32 if nan else np.uint16)
    if nan:
        stack[100, 20, 3] = np.nan
    io.write_stack(path, stack, 1e-3)
    return path


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
    assert out["started"] and out["helper_running"]
    assert out["same"]
    assert out["bleach"][0] == out["bleach"][1] > 0


def test_a_helper_that_used_another_layout_is_stopped_and_the_stack_read_here(tmp_path):
    # asked for bands of 64 pixels where the pipeline uses 128: the layouts differ, the helper
    # is stopped and the command reads the stack itself, with the same result
    out = _run("layout", _stack(tmp_path / "s.tif"), band_pixels=64)
    assert out["started"] and not out["helper_running"]
    assert out["same"]


def test_a_helper_that_is_gone_leaves_the_command_to_read_the_stack(tmp_path):
    out = _run("gone", _stack(tmp_path / "s.tif"))
    assert not out["helper_running"]
    assert out["same"]


def test_bad_data_found_by_the_helper_is_the_same_one_line_error(tmp_path):
    # a NaN in the stack: the helper's refusal reaches the command as the InputError that
    # reading the stack in the command gives
    out = _run("nan", _stack(tmp_path / "s.tif", nan=True))
    assert out["errors"][0] == out["errors"][1] == "InputError: the stack contains NaN or Inf intensities"
    assert out["helper_running"]  # refusing bad data is not a failure of the helper


def test_the_helper_side_imports_no_jax():
    code = (
        "import sys; from fluojax.fcs import correlator_cpu, lags, reduction; from fluojax import io, forked; "
        "print('jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
