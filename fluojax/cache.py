"""Compiled code kept between runs: JAX's persistent compilation cache, set up for the command line.

A ``fluojax`` command compiles its jitted functions (the batched least-squares loop, the
correlator's finish, the networks) with XLA, which takes seconds; the persistent compilation
cache writes each compiled executable to a folder and later processes load it instead of
compiling again, so a command compiles once per machine rather than once per run.
:func:`enable_compilation_cache` is called once by the ``fluojax`` entry point (``fluojax.cli.main``);
library users call it themselves if they want the same. The folder is :func:`cache_dir`:
``$FLUOJAX_CACHE_DIR`` when set (an empty value disables the cache), else
``$XDG_CACHE_HOME/fluojax/jax`` (``~/.cache/fluojax/jax`` without XDG); ``FLUOJAX_NO_CACHE=1``
disables it too, and a ``JAX_COMPILATION_CACHE_DIR`` the user set is left to JAX. Importing
this module does not import jax: before jax is imported the settings go into the environment,
where JAX reads its configuration defaults; after, into ``jax.config``. JAX's cache still
traces and lowers every function to find its entry; :func:`compiled_call` keeps whole compiled
executables in the same folder, so a warm run of the engines' big jitted steps (the batched fit,
the correlator) skips that too.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_DIR_VARIABLE",
    "NO_CACHE_VARIABLE",
    "cache_dir",
    "compiled_call",
    "enable_compilation_cache",
    "jax_cache_settings",
    "quiet_cache_load_errors",
]

CACHE_DIR_VARIABLE = "FLUOJAX_CACHE_DIR"
"""Environment variable: the compilation cache folder; an empty value disables the cache."""
NO_CACHE_VARIABLE = "FLUOJAX_NO_CACHE"
"""Environment variable: any value but empty or ``0`` disables the compilation cache."""


def cache_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of the persistent compilation cache, or None when it is disabled.

    In order: ``FLUOJAX_NO_CACHE`` set (not empty, not ``0``) -> None; ``FLUOJAX_CACHE_DIR``
    set -> that folder (``~`` expanded), or None when empty; else ``$XDG_CACHE_HOME/fluojax/jax``,
    else ``~/.cache/fluojax/jax``.

    Arguments:
        environ: the environment to read (default ``os.environ``).

    Returns:
        ``Path`` or None.
    """
    env = os.environ if environ is None else environ
    if env.get(NO_CACHE_VARIABLE, "") not in ("", "0"):
        return None
    if CACHE_DIR_VARIABLE in env:
        value = env[CACHE_DIR_VARIABLE].strip()
        return Path(value).expanduser() if value else None
    base = env.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "fluojax" / "jax"


def jax_cache_settings(folder: Path) -> dict[str, str | float | int]:
    """The ``jax.config`` options that send every compiled executable to ``folder``.

    ``jax_persistent_cache_min_compile_time_secs`` is 0 (JAX's default, 1 s, would skip the
    correlator's finish and other sub-second compilations, which together still cost seconds
    per run) and ``jax_persistent_cache_min_entry_size_bytes`` -1 (no size limit).

    Arguments:
        folder: the cache folder.

    Returns:
        dict of option name -> value.
    """
    return {
        "jax_compilation_cache_dir": str(folder),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": -1,
    }


def _writable(folder: Path) -> str | None:
    """None when ``folder`` exists (created if needed) and a file can be written in it, else why not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return err.strerror or type(err).__name__
    return None


def enable_compilation_cache(environ: Mapping[str, str] | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in :func:`cache_dir`'s folder.

    Does nothing (returns None) when the cache is disabled or the user set JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` (then JAX uses that). A folder that cannot be created or
    written leaves the cache off with one warning line on stderr; the command runs as without
    a cache. Before jax is imported the options (:func:`jax_cache_settings`) are put in
    ``os.environ`` (upper-cased names, which JAX reads as its defaults when imported), after
    that into ``jax.config``; call it before the first compilation of the process.

    Arguments:
        environ: the environment to read (default ``os.environ``); the settings always go to
            ``os.environ`` or ``jax.config``.

    Returns:
        the cache folder, or None when the cache stays off.
    """
    env = os.environ if environ is None else environ
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    folder = cache_dir(env)
    if folder is None:
        return None
    problem = _writable(folder)
    if problem is not None:
        print(
            f"fluojax: warning: compilation cache {folder} is not writable ({problem}); compiling afresh "
            f"(set {CACHE_DIR_VARIABLE} to another folder, or {NO_CACHE_VARIABLE}=1)",
            file=sys.stderr,
        )
        return None
    settings = jax_cache_settings(folder)
    if "jax" in sys.modules:
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    else:
        for name, value in settings.items():
            os.environ[name.upper()] = str(value)
        quiet_cache_load_errors(env)
    return folder


def quiet_cache_load_errors(environ: Mapping[str, str] | None = None) -> None:
    """Only fatal C++ log lines from XLA (``TF_CPP_MIN_LOG_LEVEL=3``) when a compilation cache is on,
    unless the user chose a level. Effective only before jax is imported (XLA reads the level
    when it loads): the ``fluojax`` entry point calls it before parsing its options, which for the
    ``train`` commands imports JAX (their recipe lists).

    XLA:CPU logs an error line for every executable it loads from the cache on CPUs whose LLVM
    tuning flags (+prefer-no-gather/-scatter) it wrongly takes for missing instruction sets
    (openxla/xla issue 44565): a hundred lines on a warm ``fluojax frap train``, while the
    executables load and run.

    Arguments:
        environ: the environment to read (default ``os.environ``); the level is set in ``os.environ``.
    """
    env = os.environ if environ is None else environ
    if cache_dir(env) is not None or env.get("JAX_COMPILATION_CACHE_DIR"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


# ------------------------------------------------------------------------------------------------
# Compiled executables kept whole: no tracing, no lowering on a warm run


def compiled_call(fn: Any, static: dict[str, Any], dynamic: dict[str, Any]) -> Any:
    """``fn(**static, **dynamic)`` through a compiled executable kept beside JAX's compilation cache.

    JAX's persistent cache saves the XLA compilation, but every process still traces and lowers
    the function to look it up (for the batched Levenberg-Marquardt loop of
    ``fluojax.fit.least_squares_batch`` about 0.5-1 s on a 2-core CPU, most of a warm
    ``fluojax fcs fit``). Here the compiled executable itself is stored
    (``jax.experimental.serialize_executable``) in ``fluojax-executables/`` inside
    ``jax.config.jax_compilation_cache_dir`` and loaded by a key made of: the function's
    name, a digest of fluojax's own source files, the versions of jax, jaxlib and the solver
    libraries, the backend, devices and XLA flags, the static arguments and the shapes, dtypes
    and shardings of the dynamic ones. A static argument enters the key only when it is fully
    described by fluojax's source and its ``repr`` (a plain value, a tuple of them, a module-level
    fluojax function, or a fluojax object whose ``repr`` has no memory address); anything else,
    like no cache folder or a backend other than the CPU (not yet checked there), calls ``fn``
    as it is (jit's own caching, and JAX's persistent cache). Loaded executables are kept for the
    process. A file that cannot be read or written is ignored (compiled afresh). Of ``fn``'s
    ``jax.jit`` options only the static arguments are carried over.

    Arguments:
        fn: a ``jax.jit``-ed function of fluojax (another module's is called as it is) whose
            static arguments are exactly ``static``.
        static: static arguments by name.
        dynamic: the other arguments by name (arrays or pytrees of arrays and scalars).

    Returns:
        what ``fn`` returns.
    """
    import jax

    folder = _config("jax_compilation_cache_dir")
    statics = {name: _fingerprint(value) for name, value in static.items()}
    own = getattr(fn, "__module__", "").startswith("fluojax.")  # its source is in the key
    # only where it was tested: on accelerators a loaded executable may need runtime
    # registrations (like LAPACK's below) that were not checked
    cpu = jax.default_backend() == "cpu"
    if not folder or not own or not cpu or any(v is None for v in statics.values()):
        return fn(**static, **dynamic)
    key = _executable_key(fn, statics, dynamic)
    executable = _LOADED.get(key)
    if executable is None:
        path = Path(folder) / "fluojax-executables" / f"{fn.__name__}-{key}.bin"
        executable = _load_executable(path)
        if executable is None:
            # An executable JAX loaded from its own cache re-serializes without its kernels (it
            # then fails to run), so this one must be compiled afresh: under a name of its own
            # (the function's and the key's), which JAX's cache cannot already hold unless this
            # key's file was lost; then nothing is stored.
            lowered = jax.jit(_renamed(fn, key[:12]), static_argnames=tuple(static)).lower(**static, **dynamic)
            hits = _jax_cache_hits()
            executable = lowered.compile()
            if _jax_cache_hits() == hits:
                _store_executable(path, executable)
        _LOADED[key] = executable
    return executable(**dynamic)


def _config(name: str) -> Any:
    """The value of the ``jax.config`` option ``name``."""
    import jax

    return getattr(jax.config, name)


def _renamed(fn: Any, suffix: str) -> Any:
    """The Python function behind the jitted ``fn``, named ``NAME_SUFFIX`` (its compiled module's name)."""
    inner = fn.__wrapped__

    def renamed(*args, **kwargs):
        return inner(*args, **kwargs)

    functools.update_wrapper(renamed, inner)  # the signature too: static arguments by name
    renamed.__name__ = renamed.__qualname__ = f"{inner.__name__}_{suffix}"
    return renamed


def _jax_cache_hits() -> int:
    """Hits of JAX's persistent compilation cache in this process so far (counted from the first call)."""
    return _cache_hit_counter()[0]


@functools.lru_cache(maxsize=1)
def _cache_hit_counter() -> list[int]:
    """A one-element counter of ``/jax/compilation_cache/cache_hits`` events (the listener is
    registered once per process)."""
    import jax

    count = [0]

    def listener(event: str, **_: Any) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            count[0] += 1

    jax.monitoring.register_event_listener(listener)
    return count


_LOADED: dict[str, Any] = {}
"""Executables loaded or compiled by :func:`compiled_call` in this process, by key."""

_KEY_PACKAGES = ("jax", "jaxlib", "numpy", "optimistix", "equinox", "lineax", "jaxopt", "jaxtyping")
"""Packages whose versions enter :func:`compiled_call`'s key (those installed)."""


def _fingerprint(value: Any) -> str | None:
    """A string that fully determines a static argument, or None when there is none (see
    :func:`compiled_call`)."""
    import types

    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        parts = [_fingerprint(v) for v in value]
        return None if any(p is None for p in parts) else f"{type(value).__name__}({', '.join(parts)})"  # type: ignore[arg-type]
    if isinstance(value, types.FunctionType):
        own = value.__module__.startswith("fluojax.") and "<locals>" not in value.__qualname__
        return f"{value.__module__}.{value.__qualname__}" if own and value.__closure__ is None else None
    if type(value).__module__.startswith("fluojax."):
        text = repr(value)
        return None if " at 0x" in text else f"{type(value).__module__}.{text}"
    return None


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """SHA-256 of fluojax's source files and the versions of :data:`_KEY_PACKAGES` (once per process)."""
    import hashlib
    from importlib import metadata

    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for name in _KEY_PACKAGES:
        version = getattr(sys.modules.get(name), "__version__", None)  # imported: no metadata scan
        if not isinstance(version, str):
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = "-"
        h.update(f"{name}={version}".encode())
    return h.hexdigest()


def _executable_key(fn: Any, statics: dict[str, str | None], dynamic: dict[str, Any]) -> str:
    """The key of :func:`compiled_call`'s executable (hex digest)."""
    import hashlib

    import jax

    def describe(x):
        sharding = getattr(x, "sharding", None)
        return f"{jax.typeof(x)}@{sharding}" if isinstance(x, jax.Array) else str(jax.typeof(x))

    leaves, tree = jax.tree.flatten(dynamic)
    devices = jax.devices()
    parts = [
        f"{fn.__module__}.{fn.__qualname__}",
        _source_digest(),
        f"{jax.default_backend()} {len(devices)} {devices[0].device_kind} {os.environ.get('XLA_FLAGS', '')}",
        f"x64={_config('jax_enable_x64')} precision={_config('jax_default_matmul_precision')}",
        repr(sorted(statics.items())),
        str(tree),
        ";".join(describe(x) for x in leaves),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _load_executable(path: Path) -> Any:
    """The executable stored at ``path``, or None (absent, unreadable, or from another build)."""
    import pickle

    from jax.experimental.serialize_executable import deserialize_and_load

    try:
        payload, in_tree, out_tree = pickle.loads(path.read_bytes())
        # LAPACK's kernels (the solvers' Cholesky and QR) are registered with XLA when a
        # linear-algebra op is first lowered; a loaded executable skips lowering, so register
        # them first, as jax.export does when it deserializes (the executable would crash on a
        # null kernel otherwise)
        from jax._src.lax import linalg

        linalg.initialize_lapack()
        executable = deserialize_and_load(payload, in_tree, out_tree)
    except Exception:  # any failure to load only means compiling afresh
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # last use, for _prune
    return executable


def _store_executable(path: Path, executable: Any) -> None:
    """Write ``executable`` to ``path`` (a temporary file renamed: readers never see half a file);
    failures are ignored (the next run compiles again)."""
    import pickle

    from jax.experimental.serialize_executable import serialize

    tmp = None
    try:
        blob = pickle.dumps(serialize(executable))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            tmp = f.name
            f.write(blob)
        os.replace(tmp, path)
    except Exception:  # a cache that cannot be written only costs the next run a compilation
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return
    _prune(path)


_KEEP_PER_FUNCTION = 32
"""Executables kept per function name in ``fluojax-executables/`` (the most recently used)."""


def _prune(path: Path) -> None:
    """Delete all but the :data:`_KEEP_PER_FUNCTION` most recently used executables of the function
    ``path`` holds (other shapes, or other fluojax versions, accumulate otherwise)."""
    name = path.name.rsplit("-", 1)[0]
    with contextlib.suppress(OSError):
        files = sorted(path.parent.glob(f"{name}-*.bin"), key=lambda f: f.stat().st_mtime, reverse=True)
        for old in files[_KEEP_PER_FUNCTION:]:
            old.unlink()
