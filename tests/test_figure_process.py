"""fluojax.plotting.FigureProcess: figures drawn in a forked process that imported matplotlib
while the command imported JAX — the same file as drawn in the process itself, errors reported
with their message, and a process that is gone replaced by drawing in place."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fluojax import plotting

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the figure process forks (Linux only)")


def _run(tmp_path, body: str) -> subprocess.CompletedProcess:
    """``body`` in a fresh Python (JAX not imported, as at the start of a command) with
    ``figures`` a started FigureProcess and ``maps`` a 16 x 16 D map with a NaN."""
    code = (
        "import sys, types, numpy as np; from pathlib import Path; from fluojax import plotting;"
        "figures = plotting.start_figure_process(); assert figures is not None;"
        "d = np.random.default_rng(0).lognormal(0.0, 0.3, (16, 16)); d[3, 4] = np.nan;"
        "maps = types.SimpleNamespace(d_um2_s=d); out = Path(sys.argv[1])\n" + body
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_figure_drawn_in_the_process_equals_one_drawn_in_place(tmp_path):
    import matplotlib.image

    done = _run(
        tmp_path,
        "figures.draw('plot_d_map', out / 'child.png', maps, 'D'); plotting.plot_d_map(out / 'here.png', maps, 'D');"
        "print('jax' in sys.modules)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # the figure process never needed JAX
    child, here = (matplotlib.image.imread(tmp_path / name) for name in ("child.png", "here.png"))
    assert child.shape == here.shape and np.array_equal(child, here)


def test_a_failing_figure_raises_with_its_message(tmp_path):
    done = _run(
        tmp_path,
        "try:\n figures.draw('plot_d_map', out / 'missing' / 'x.png', maps, 'D')\n"
        "except RuntimeError as err:\n print(err)",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("plot_d_map: FileNotFoundError:") and "missing" in done.stdout


def test_a_figure_is_drawn_in_place_when_the_process_is_gone(tmp_path):
    done = _run(
        tmp_path,
        "figures._process.kill(); figures._process.join(); figures.draw('plot_d_map', out / 'x.png', maps, 'D')",
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "x.png").stat().st_size > 1000


def test_no_figure_process_once_jax_is_imported():
    import jax  # noqa: F401  (forking JAX's threads is unsafe)

    assert plotting.start_figure_process() is None
