"""Least-squares estimation of (N, D um^2/s, G_inf) from Imaging FCS autocorrelation functions.

Every ACF is fitted by the shared engine (:func:`fluojax.fit.least_squares_batch`, slot refilling)
with weights 1/SEM^2: the 2D ITIR model (closed form) or the 3D SPIM model (tabulated quadrature)
of :mod:`fluojax.fcs.models` on the flat vector ``theta = (N, D um^2/s, G_inf)``, N and D fitted in
log space, from data-driven start values (:func:`start_values`) or a given start for D (the hybrid
network + fit estimator). :mod:`fluojax.fcs.pipeline` calls :func:`fit_acfs` on a whole stack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from fluojax import fit
from fluojax.fcs import models
from fluojax.io import InputError

if TYPE_CHECKING:
    from fluojax.fcs.pipeline import AnalysisSettings

__all__ = [
    "FCS_BOUNDS",
    "FCS_SOLVER",
    "GeometryModel",
    "acf_model_2d",
    "acf_model_3d",
    "fcs_solver",
    "fit_acfs",
    "model_and_shape",
    "start_values",
]


FCS_SOLVER = fit.LevenbergMarquardt(rtol=1e-3, atol=1e-3, linear_solver="cholesky")
"""The default Levenberg-Marquardt settings of the FCS fits.

Damped steps by Cholesky of the normal equations rather than QR: three parameters, so the normal
equations are well conditioned, and the fits still end on scipy's float64 minimum
(tests/test_fit.py).

Tolerances on the noise scale rather than the engine's defaults (1e-4, 1e-6): the residuals are
in units of the SEM, and optimistix stops when every residual changes by less than
``atol + rtol |r_i|``. With ``atol = 1e-6`` that is below float32 rounding of ``model/SEM``
(~50 x 6e-8), so a converged fit would keep shrinking its trust region without moving. At 1e-3,
D stays within a small fraction of its standard error of a solve at tolerances 1e-6/1e-8: LM
converges quadratically near the minimum, so the last step is much smaller than the tolerance.
For the optimistix backend only: jaxopt reads ``atol`` as a gradient tolerance. The measured
iteration counts, timings and D differences are in docs/benchmarks.md, "Moved from docstrings
(FCS)".
"""


def fcs_solver(backend: str) -> fit.LevenbergMarquardt:
    """The FCS fits' solver settings for a backend named in ``fluojax.fit.BACKENDS``:
    :data:`FCS_SOLVER` for its own backend (optimistix), the engine's defaults for another, since
    the noise-scale tolerances of :data:`FCS_SOLVER` mean something else there (jaxopt reads
    ``atol`` as a gradient tolerance).

    Raises:
        fluojax.io.InputError: an unknown backend name.
    """
    if backend not in fit.BACKENDS:
        raise InputError(f"unknown least-squares backend {backend!r}: known are {', '.join(fit.BACKENDS)}")
    if backend == FCS_SOLVER.backend.name:
        return FCS_SOLVER
    return fit.LevenbergMarquardt(backend=fit.BACKENDS[backend])


FCS_BOUNDS: dict[str, Any] = dict(
    lower=(0.0, 0.0, -1.0),
    upper=(float("inf"), float("inf"), 1.0),
    log_scale=(True, True, False),
)
"""Bounds of (N, D, G_inf) for :func:`fluojax.fit.least_squares` (keyword arguments): N and D > 0
through a plain log transform (a wide two-sided box in log space makes the first LM steps huge
and strands them on the flat G = G_inf plateau); |G_inf| <= 1."""


@dataclasses.dataclass(frozen=True)
class GeometryModel:
    """A geometry's ACF as a fitting model on ``theta = (N, D um^2/s, G_inf)``, ``args = (lag_s, model_args)``.

    Hashable (a static argument of the fitting engine's compiled functions). Called as
    ``model(theta, args)``, it evaluates ``geometry.acf`` with the constants of
    ``geometry.model_args`` (the optics in 2D, the shape table in 3D).
    """

    geometry: models.Geometry

    def __call__(self, theta: Float[Array, " 3"], args: tuple) -> Float[Array, " c"]:
        lag_s, model_args = args
        return self.geometry.acf(lag_s, models.ACFParams(theta[0], theta[1], theta[2]), model_args)


acf_model_2d = GeometryModel(models.ITIR_2D)
"""2D ITIR model on a flat vector ``theta = (N, D um^2/s, G_inf)``; ``args = (lag_s, optics)``."""
acf_model_3d = GeometryModel(models.SPIM_3D)
"""3D SPIM model on ``theta = (N, D um^2/s, G_inf)``; ``args = (lag_s, SpimShapeTable)``."""


def model_and_shape(settings: AnalysisSettings):
    """The fitting model of the settings' geometry, its args factory and its ACF shape.

    Arguments:
        settings: ``AnalysisSettings`` (only ``model``, a ``models.Geometry``, and ``optics`` are read).

    Returns:
        ``(model, make_args, shape)``: ``model(theta, args)`` (a :class:`GeometryModel`),
        ``make_args(lag_s) -> args``, and ``shape(D tau) -> S``, the normalised correlation shape
        as a vectorised NumPy function of D tau (um^2).
    """
    geometry = models.as_geometry(settings.model)
    optics = settings.optics
    model_args = geometry.model_args(optics)
    return GeometryModel(geometry), (lambda lag: (lag, model_args)), geometry.shape_function(optics)


def start_values(
    acf: Float[np.ndarray, "b c"], lag_s: Float[np.ndarray, " c"], shape: Callable[[np.ndarray], np.ndarray]
) -> Float[np.ndarray, "b 3"]:
    """Data-driven start values (N, D, G_inf) for each ACF.

    ``G_inf = 0``; the amplitude from the first two lags gives ``N = S(0) / G(tau_1)``; the first
    lag where G falls below half of that gives D through the optics' half-decay ``D tau_half``.

    Arguments:
        acf: (B, C) correlation functions.
        lag_s: (C,) lag times in s.
        shape: S(D tau) of the model, vectorised NumPy.

    Returns:
        (B, 3) float32 start values.
    """
    grid = np.logspace(-9, 5, 600)
    s = shape(grid)
    s0 = s[0]
    dtau_half = grid[np.argmax(s < 0.5 * s0)]
    with np.errstate(invalid="ignore"):
        amp = np.mean(acf[:, :2], axis=1)
    n0 = np.where(np.isfinite(amp) & (amp > 0), s0 / np.where(amp > 0, amp, 1.0), 1e3)
    below = acf < 0.5 * amp[:, None]
    tau_half = np.where(below.any(axis=1), lag_s[np.argmax(below, axis=1)], lag_s[-1])
    d0 = dtau_half / tau_half
    return np.stack([n0, d0, np.zeros_like(d0)], axis=1).astype(np.float32)


def fit_acfs(
    acf: Float[np.ndarray, "b c"],
    sem: Float[np.ndarray, "b c"],
    lag_s: Float[np.ndarray, " c"],
    settings: AnalysisSettings,
    progress: Callable[[int], None] | None = None,
    start_d_um2_s: Float[np.ndarray, " b"] | None = None,
) -> fit.FitResult:
    """Fit the chosen model to many ACFs, weights 1/SEM^2.

    Arguments:
        acf, sem: (B, C) correlation functions and standard errors.
        lag_s: (C,) lag times in s.
        settings: ``AnalysisSettings`` (model, optics, solver).
        progress: optional callback with the number of fits finished.
        start_d_um2_s: optional (B,) start values of D in um^2/s (e.g. a network's prediction:
            the hybrid estimator); N then starts at ``S(D tau_1) / G(tau_1)``. Default: the
            data-driven start values of :func:`start_values`.

    Returns:
        ``fit.FitResult`` of NumPy arrays; ``params[:, k]`` = N, D (um^2/s), G_inf.
    """
    model, make_args, shape = model_and_shape(settings)
    init = start_values(acf, lag_s, shape)
    if start_d_um2_s is not None:
        d0 = np.asarray(start_d_um2_s, np.float64).reshape(-1)
        good = np.isfinite(d0) & (d0 > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            n0 = shape(np.where(good, d0, 1.0) * lag_s[0]) / acf[:, 0]
        use_n = good & np.isfinite(n0) & (n0 > 0)
        init[:, 1] = np.where(good, d0, init[:, 1])
        init[:, 0] = np.where(use_n, n0, init[:, 0])
    lag = jnp.asarray(lag_s, jnp.float32)
    return fit.least_squares_batch(
        model, acf, sem, init, make_args(lag), solver=settings.solver, progress=progress, **FCS_BOUNDS
    )
