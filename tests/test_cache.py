"""The persistent compilation cache of the command line (fluojax.cache): where it goes, that the
``fluojax`` entry point turns it on, that the environment variables move and disable it, that
compiled code lands in the folder, and that an unusable folder only costs a warning."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from fluojax import cache
from fluojax.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"XDG_CACHE_HOME": "/x/cache"}, Path("/x/cache/fluojax/jax")),
        ({"XDG_CACHE_HOME": "/x/cache", "FLUOJAX_CACHE_DIR": "/y/c"}, Path("/y/c")),
        ({"XDG_CACHE_HOME": "/x/cache", "FLUOJAX_CACHE_DIR": ""}, None),
        ({"FLUOJAX_CACHE_DIR": "/y/c", "FLUOJAX_NO_CACHE": "1"}, None),
        ({"FLUOJAX_CACHE_DIR": "/y/c", "FLUOJAX_NO_CACHE": "0"}, Path("/y/c")),
        ({}, Path.home() / ".cache" / "fluojax" / "jax"),
    ],
    ids=["xdg", "moved", "empty-disables", "no-cache", "no-cache-0", "home"],
)
def test_cache_dir_follows_the_environment(environ, expected):
    assert cache.cache_dir(environ) == expected


@pytest.fixture
def jax_cache_config():
    """Restores jax.config's cache options after a test that lets the CLI set them."""
    names = cache.jax_cache_settings(Path("/unused")).keys()
    before = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in before.items():
        jax.config.update(name, value)


def test_cli_entry_sets_the_cache_folder_from_the_environment(tmp_path, monkeypatch, jax_cache_config):
    folder = tmp_path / "compiled"
    monkeypatch.delenv("FLUOJAX_NO_CACHE", raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("FLUOJAX_CACHE_DIR", str(folder))
    assert main(["fcs", "fit", str(tmp_path / "missing.tif")]) == 2  # refused after the setup, before any work
    assert jax.config.jax_compilation_cache_dir == str(folder)
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert folder.is_dir()


@pytest.mark.parametrize("variable", [("FLUOJAX_NO_CACHE", "1"), ("FLUOJAX_CACHE_DIR", "")], ids=["no-cache", "empty"])
def test_cli_entry_leaves_the_cache_off_when_disabled(tmp_path, monkeypatch, jax_cache_config, variable):
    monkeypatch.delenv("FLUOJAX_NO_CACHE", raising=False)
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv(*variable)
    jax.config.update("jax_compilation_cache_dir", None)
    assert main(["fcs", "fit", str(tmp_path / "missing.tif")]) == 2
    assert jax.config.jax_compilation_cache_dir is None


# the level XLA's C++ logging will use, recorded when `import jax` starts
_LEVEL_AT_JAX_IMPORT = """
import os, sys
seen = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "jax" and not seen:
            seen.append(os.environ.get("TF_CPP_MIN_LOG_LEVEL"))
        return None

sys.meta_path.insert(0, Watch())
from fluojax.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(seen)
"""


@pytest.mark.parametrize(
    ("environ", "level"),
    [({"FLUOJAX_CACHE_DIR": "{tmp}"}, "'3'"), ({"FLUOJAX_NO_CACHE": "1"}, "None")],
    ids=["cache", "no-cache"],
)
def test_xla_error_lines_are_quieted_before_a_train_command_imports_jax(tmp_path, environ, level):
    # a warm `train` command loads its executables from the cache, and XLA:CPU logs an error line
    # per executable on some CPUs (openxla/xla issue 44565); the level must be set before JAX
    # loads, and the train commands import JAX while their options are parsed
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FLUOJAX_NO_CACHE")}
    env.update({k: v.format(tmp=tmp_path) for k, v in environ.items()})
    args = [sys.executable, "-c", _LEVEL_AT_JAX_IMPORT, "frap", "train", "--help"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == f"[{level}]"


def test_unwritable_folder_warns_once_and_leaves_the_cache_off(tmp_path, capsys, jax_cache_config):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    jax.config.update("jax_compilation_cache_dir", None)
    assert cache.enable_compilation_cache({"FLUOJAX_CACHE_DIR": str(blocker / "jax")}) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fluojax: warning: compilation cache" in err
    assert jax.config.jax_compilation_cache_dir is None


def test_compiled_code_is_written_to_the_folder(tmp_path):
    """A fresh process (jax not yet imported: the settings go through the environment) that
    compiles one function leaves a cache entry named after it in FLUOJAX_CACHE_DIR."""
    folder = tmp_path / "compiled"
    code = (
        "from fluojax.cache import enable_compilation_cache; enable_compilation_cache();"
        "import jax, jax.numpy as jnp;"
        "jax.jit(lambda x: jnp.sin(x) * 2.0 + 1.0)(jnp.arange(3.0)).block_until_ready()"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FLUOJAX_NO_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env.update(FLUOJAX_CACHE_DIR=str(folder), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert any(p.name.startswith("jit__lambda") for p in folder.iterdir())


@pytest.fixture
def executables(tmp_path, jax_cache_config):
    """A compilation cache folder in jax.config for compiled_call (JAX's own cache, set up once
    per process, is not touched), and no executables loaded before the test."""
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    cache._LOADED.clear()
    yield tmp_path / "fluojax-executables"
    cache._LOADED.clear()


def _scaled_sum(x, power, scale):
    return jax.numpy.sum(x**power) * scale


_scaled_sum_jit = jax.jit(_scaled_sum, static_argnames=("power",))
_scaled_sum_jit.__module__ = "fluojax.tests_fixture"  # compiled_call keys only fluojax functions


def test_compiled_call_stores_the_executable_and_loads_it_back(executables):
    """The result equals the jitted function's; a second call after forgetting the loaded
    executable reads the stored file (one file: the same key) and gives the same result."""
    x = jax.numpy.arange(5.0)
    direct = float(_scaled_sum_jit(x, power=3, scale=0.5))
    first = float(cache.compiled_call(_scaled_sum_jit, {"power": 3}, {"x": x, "scale": 0.5}))
    stored = list(executables.iterdir())
    assert len(stored) == 1 and stored[0].name.startswith("_scaled_sum-")
    cache._LOADED.clear()
    again = float(cache.compiled_call(_scaled_sum_jit, {"power": 3}, {"x": x, "scale": 0.5}))
    assert first == direct == again == 0.5 * float(sum(v**3 for v in range(5)))
    assert list(executables.iterdir()) == stored
    cache.compiled_call(_scaled_sum_jit, {"power": 2}, {"x": x, "scale": 0.5})  # another static: another key
    assert len(list(executables.iterdir())) == 2


def test_compiled_call_leaves_undescribed_statics_to_jit(executables):
    """A static argument without a fingerprint (a closure: its captured values are not in its
    name) is not keyed: the function runs through jit and nothing is stored."""
    captured = 2.0
    f = jax.jit(lambda x, g: g(x), static_argnames=("g",))
    f.__module__ = "fluojax.tests_fixture"
    out = cache.compiled_call(f, {"g": lambda v: v * captured}, {"x": jax.numpy.ones(3)})
    assert float(out.sum()) == 6.0
    assert not executables.exists()


def test_compiled_call_leaves_functions_outside_fluojax_to_jit(executables):
    """Only fluojax's own functions are keyed (their source is in the key)."""
    f = jax.jit(_scaled_sum, static_argnames=("power",))
    assert float(cache.compiled_call(f, {"power": 1}, {"x": jax.numpy.ones(4), "scale": 2.0})) == 8.0
    assert not executables.exists()


def test_prune_keeps_the_most_recently_used_executables_of_a_function(tmp_path):
    files = []
    for k in range(cache._KEEP_PER_FUNCTION + 2):
        f = tmp_path / f"_fit_streaming-{k:032x}.bin"
        f.write_bytes(b"")
        os.utime(f, (1000 + k, 1000 + k))
        files.append(f)
    other = tmp_path / "acf_from_lag_sums-0.bin"
    other.write_bytes(b"")
    os.utime(other, (1, 1))
    cache._prune(files[-1])
    assert sorted(tmp_path.iterdir()) == sorted([other, *files[2:]])


def test_console_entry_runs_exit_handlers_and_keeps_the_exit_code(tmp_path):
    """``fluojax.cli.run`` leaves without the interpreter's teardown, but only after the atexit
    handlers ran and the output was flushed, with main's return code (2: a refused input)."""
    code = (
        "import atexit, sys; atexit.register(lambda: print('handler ran'));"
        f"sys.argv = ['fluojax', 'fcs', 'fit', {str(tmp_path / 'missing.tif')!r}];"
        "from fluojax.cli import run; print('started'); run()"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == ["started", "handler ran"]
    assert proc.stderr.startswith("fluojax: error:") and proc.stderr.count("\n") == 1


def test_a_stored_batched_fit_runs_without_importing_the_solver_library(tmp_path):
    """Two fresh processes fit the same 2D ITIR-FCS curves (``fcs.estimate.fit_acfs``, as
    ``fluojax fcs fit`` does) with the compilation cache on: the first compiles and stores the
    fit, the second loads it, gets the same numbers bit for bit, and never imports optimistix or
    equinox (their import is ~0.25 s of every warm command)."""
    code = (
        "import sys, numpy as np; from fluojax.cache import enable_compilation_cache;"
        "enable_compilation_cache(); from fluojax.fcs import estimate, models, pipeline;"
        "settings = pipeline.AnalysisSettings(frame_time_s=1e-3);"
        "lag = np.geomspace(1e-3, 1.0, 30).astype(np.float32);"
        "acf = np.stack([np.asarray(models.acf_2d_itir(lag, models.ACFParams(2.0, d), settings.optics))"
        " for d in (0.5, 1.0, 2.0)]);"
        "r = estimate.fit_acfs(acf, np.full_like(acf, 1e-3), lag, settings);"
        "print(repr(r.params.tolist()), 'optimistix' in sys.modules or 'equinox' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("FLUOJAX_NO_CACHE", "JAX_COMPILATION_CACHE_DIR")}
    env.update(FLUOJAX_CACHE_DIR=str(tmp_path), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), [run.stderr[-2000:] for run in runs]
    (cold_params, cold_imported), (warm_params, warm_imported) = (run.stdout.rsplit(" ", 1) for run in runs)
    assert (cold_imported.strip(), warm_imported.strip()) == ("True", "False")
    assert warm_params == cold_params
    # noise-free curves: the fit returns the parameters they were made with (float32 LM)
    assert np.allclose(eval(cold_params), [[2.0, d, 0.0] for d in (0.5, 1.0, 2.0)], rtol=1e-3, atol=1e-5)
