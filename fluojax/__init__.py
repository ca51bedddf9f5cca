"""fluojax: differentiable physics models and estimators for fluorescence microscopy in JAX.

The techniques: Imaging FCS (:mod:`fluojax.fcs`), FRAP (:mod:`fluojax.frap`), SMLM (:mod:`fluojax.smlm`) and
SOFI (:mod:`fluojax.sofi`). The engines (:mod:`fluojax.io`, :mod:`fluojax.fit`, :mod:`fluojax.train`,
:mod:`fluojax.networks`, :mod:`fluojax.compare`, :mod:`fluojax.noise`, :mod:`fluojax.plotting`,
:mod:`fluojax.progress`, ...) and the techniques are imported on first access
(``fluojax.fcs``, ``fluojax.fit``, ...), so ``import fluojax`` -- and ``fluojax --help`` -- do not
import jax. ``fluojax.InputError`` is :class:`fluojax.io.InputError`, the one error raised for bad
input; ``fluojax.__version__`` is the installed version (read on first access).
"""

from __future__ import annotations

import importlib
import pkgutil

_MODULES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
"""The engines, techniques and the command line (``cli``): fluojax's subpackages and modules."""

__all__ = ["InputError", "__version__", *_MODULES]


def _version() -> str:
    """The installed distribution's version (``importlib.metadata``; "0.0.0" in a never-installed source tree)."""
    from importlib import metadata  # ~30 ms and more under load: read only when asked for

    try:
        return metadata.version("fluojax")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def __getattr__(name: str):
    """Import a module of fluojax (or ``InputError``, or read ``__version__``) on first access."""
    if name == "__version__":
        globals()["__version__"] = version = _version()
        return version
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "InputError":
        from fluojax.io import InputError

        return InputError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
