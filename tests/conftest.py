"""Shared fixtures: the dtypes and jit modes of engine tests; the 2D (TIRF) and 3D (SPIM) optics of
Tang et al. 2024 (Methods)."""

import os

import jax
import jax.numpy as jnp
import pytest

# Tests leave the user's compilation cache alone: the `fluojax` entry point (cli.main, called in
# process by the CLI tests and in their subprocesses) runs without it unless a test turns it on.
os.environ.setdefault("FLUOJAX_NO_CACHE", "1")

from fluojax.fcs.models import Optics


def pytest_configure(config):
    """Refuse ``--dist loadgroup`` where it would not group: pytest >= 9.2 with pytest-xdist
    <= 3.8 (xdist groups a test by appending ``@group`` to its node id, which pytest 9.2 ignores:
    pytest-xdist#1386). The tests of a group were then dealt to both workers and every session
    fixture built twice (minutes of this suite), silently."""
    if getattr(config.option, "dist", "no") != "loadgroup":
        return
    import xdist

    xdist_version = tuple(int(part) for part in xdist.__version__.split(".")[:2])
    if pytest.version_tuple[:2] >= (9, 2) and xdist_version <= (3, 8):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__}: --dist loadgroup "
            "does not group tests (pytest-xdist#1386); install what pyproject.toml asks for (make install)"
        )


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` first, everything else in collection order: under
    ``pytest -n 2 --dist loadgroup`` the workers take the long units first and end on short ones,
    instead of one worker running a long test alone at the end (longest-first scheduling)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """The dtype under test; float64 runs inside ``jax.enable_x64(True)``, left when the test ends,
    so x64 never leaks into other tests."""
    with jax.enable_x64(request.param == "float64"):
        yield jnp.dtype(request.param)
    assert jnp.zeros(1).dtype == jnp.float32  # x64 did not leak out of the test


@pytest.fixture(params=[True, False], ids=["jit", "nojit"])
def maybe_jit(request):
    """The function under test jitted, or as it is."""
    return jax.jit if request.param else (lambda f: f)


@pytest.fixture
def optics_2d():
    """24 um pixels at 100x (240 nm), NA 1.45, 583 nm, sigma0 0.8."""
    return Optics(camera_pixel_um=24.0, magnification=100.0, na=1.45, wavelength_nm=583.0, sigma0=0.8)


@pytest.fixture
def optics_3d():
    """24 um pixels at 60x (400 nm), NA 1.0, 515 nm, sigma0 1.1, sigmaz 2.2, n = 1.333."""
    return Optics(24.0, 60.0, 1.0, 515.0, 1.1, 2.2, 1.333, 1)
