"""The fast path of the Poisson MLE: its small linear algebra against NumPy, a model's own Jacobian
(``value_and_jacobian``) against finite differences, and the engine's fit with and without it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax import fit
from fluojax.smlm import estimate
from fluojax.smlm.models import Astigmatic3D, Gaussian2D, QuadPlane


def _spd(rng, size):
    """A random symmetric positive-definite matrix with a condition number of a few hundred, like
    a unit-diagonal Fisher information of correlated parameters plus Marquardt damping."""
    a = rng.normal(size=(size, size))
    m = a @ a.T + 0.05 * np.eye(size)
    d = 1.0 / np.sqrt(np.diag(m))
    return m * d[:, None] * d[None, :]


@pytest.mark.parametrize("size", [1, 4, 6])
def test_unrolled_cholesky_solve_and_quadratic_form_equal_numpy(size):
    rng = np.random.default_rng(size)
    with jax.enable_x64(True):
        for _ in range(5):
            a, b = _spd(rng, size), rng.normal(size=size)
            x = np.linalg.solve(a, b)
            # float64 elimination of a matrix of condition <= 1e4: agreement to ~1e-12 relative
            np.testing.assert_allclose(np.asarray(fit._spd_solve(jnp.asarray(a), jnp.asarray(b))), x, rtol=1e-9)
            np.testing.assert_allclose(float(fit._spd_quadratic(jnp.asarray(a), jnp.asarray(b))), b @ x, rtol=1e-9)


def test_unrolled_cholesky_under_vmap_equals_float64_numpy_in_float32():
    rng = np.random.default_rng(0)
    a = np.stack([_spd(rng, 4) for _ in range(64)]).astype(np.float32)
    b = rng.normal(size=(64, 4)).astype(np.float32)
    ours = np.asarray(jax.jit(jax.vmap(fit._spd_solve))(a, b))
    ref = np.linalg.solve(a.astype(np.float64), b.astype(np.float64)[..., None])[..., 0]
    # float32 elimination: error ~ condition number (< 1e3 here) x eps (1.2e-7) x |x|
    scale = np.abs(ref).max(axis=1, keepdims=True)
    assert np.all(np.abs(ours - ref) <= 1e-3 * scale)


PSFS = [
    (Gaussian2D(130.0), [470.0, 420.0, 2000.0, 10.0]),
    (Astigmatic3D(), [470.0, 420.0, 150.0, 2000.0, 10.0]),
    (QuadPlane.table_2(), [470.0, 420.0, 500.0, 2000.0, 10.0]),
    (QuadPlane.table_2(integrated=True), [430.0, 480.0, 700.0, 1500.0, 5.0]),
]


@pytest.mark.parametrize("psf, theta", PSFS, ids=lambda v: type(v).__name__ if not isinstance(v, list) else "")
def test_spot_model_jacobian_equals_central_differences(psf, theta):
    with jax.enable_x64(True):
        model = estimate.SpotModel(psf)
        drift = np.tile([[12.0, -7.0]], (psf.planes, 1))
        args = estimate._spot_args(psf, 9, 100.0, drift)
        args = estimate.SpotArgs(
            args.grid._replace(
                x_nm=jnp.asarray(args.grid.x_nm, jnp.float64), y_nm=jnp.asarray(args.grid.y_nm, jnp.float64)
            ),
            jnp.asarray(drift, jnp.float64),
        )
        t = jnp.asarray(theta, jnp.float64)
        value, jac = model.value_and_jacobian(t, args)
        np.testing.assert_array_equal(np.asarray(value), np.asarray(model(t, args)))
        assert jac.shape == value.shape + (t.size,)
        for p in range(t.size):
            # central differences, step 1e-4 of the parameter's scale: truncation ~h^2 f''' and
            # rounding ~eps f / h, both below 1e-7 of the largest derivative
            h = 1e-4 * max(abs(theta[p]), 1.0)
            e = jnp.zeros_like(t).at[p].set(h)
            fd = (np.asarray(model(t + e, args)) - np.asarray(model(t - e, args))) / (2 * h)
            np.testing.assert_allclose(np.asarray(jac[..., p]), fd, atol=1e-7 * np.abs(fd).max() + 1e-12)


@dataclasses.dataclass(frozen=True)
class _Autodiff:
    """The same spot model without ``value_and_jacobian``: the engine differentiates it."""

    inner: estimate.SpotModel

    def __call__(self, theta, args):
        return self.inner(theta, args)


def test_engine_fit_with_the_model_jacobian_equals_the_autodiff_fit():
    psf = Gaussian2D(130.0)
    model = estimate.SpotModel(psf)
    args = estimate._spot_args(psf, 9, 100.0, None)
    truth = jnp.asarray([470.0, 420.0, 2000.0, 10.0])
    rng = np.random.default_rng(3)
    counts = rng.poisson(np.asarray(model(truth, args)), size=(16, 1, 9, 9)).astype(np.float32)
    init = np.tile([450.0, 450.0, 1500.0, 8.0], (16, 1)).astype(np.float32)
    bounds = dict(lower=[0.0, 0.0, 1.0, 0.0], upper=[900.0, 900.0, 1e6, 1e4])
    ours = fit.poisson_mle_batch(model, counts, init, args, **bounds)
    ref = fit.poisson_mle_batch(_Autodiff(model), counts, init, args, **bounds)
    np.testing.assert_array_equal(ours.status, ref.status)
    # the two Jacobians agree to float32 rounding (1e-7 relative), so the fits end within the
    # stopping tolerance (1e-3 standard errors, ~4e-3 nm, 0.06 photons) of each other
    np.testing.assert_allclose(ours.params, ref.params, rtol=1e-4, atol=1e-2)
