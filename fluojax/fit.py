"""One fitting engine for every technique: bounded least squares and Poisson maximum likelihood, vmapped.

A model is any pure function ``model(theta, args) -> prediction`` of a flat parameter vector
``theta`` (P,) returning an array like the data. :func:`least_squares` minimises

    chi^2(theta) = sum_i ((model(theta, args)_i - y_i) / sigma_i)^2

over the free entries of ``theta`` within box bounds, for one dataset; :func:`least_squares_batch`
runs it over many datasets (pixels, curves) as one jitted, vmapped solve whose slots are refilled
with the next dataset as soon as a fit stops, so a whole image compiles once, costs the total of
its fits' iterations, and a failing pixel never stops the map. The engine knows nothing of FCS,
FRAP or SMLM: techniques supply the model, data, weights, start values and bounds.

:func:`least_squares_multistart` (and ``_batch``) refines K starts per dataset and keeps the lowest
chi^2.

Poisson maximum likelihood, for counts (photons of a spot, Poisson-equivalent camera data from
``fluojax.noise``): :func:`poisson_mle` minimises the Poisson deviance of
``mu = scale model(theta, args) + shift`` with a Levenberg-Marquardt loop whose curvature is the
Fisher information (:class:`PoissonLevenbergMarquardt`), under the same bounds;
:func:`poisson_mle_batch` runs it over many datasets in compiled, vmapped chunks.

Uncertainty, through one path: a Fisher information matrix, Gaussian (:func:`fisher_information`,
``J^T W J`` with ``W = diag(1/sigma^2)``, also the weighted least-squares information) or Poisson
(:func:`poisson_fisher_information`, ``J^T diag(1/(mu + s)) J``, s an optional known shift), is
inverted by :func:`covariance_from_fisher`; that gives the linearised covariance of a fit
(:func:`parameter_covariance`, ``s^2 (J^T W J)^{-1}``), the Cramer-Rao bounds (:func:`crlb`,
:func:`poisson_crlb`: the covariance at the truth) and, through :func:`wald_intervals`, the
confidence intervals (:func:`confidence_intervals`).

Bounds are handled by the MINUIT/lmfit change of variables: a parameter bounded on both sides
is ``lo + (hi - lo)(sin u + 1)/2``, on one side ``lo - 1 + sqrt(u^2 + 1)``; optionally the
bounded quantity is ``log(theta)`` (``log_scale``), which suits positive scale parameters such
as D. Data points with non-finite value or non-positive/non-finite sigma get zero weight.

Backends (:class:`LeastSquaresBackend`, chosen in :class:`LevenbergMarquardt`, by name in
:data:`BACKENDS`): :class:`OptimistixBackend` (``optimistix.LevenbergMarquardt``, default;
maintained; steppable, so batches refill slots) and :class:`JaxoptBackend`
(``jaxopt.LevenbergMarquardt``, unmaintained upstream). A new backend is a new subclass.

Per-dataset status (:class:`Status`): converged, max steps, non-finite, at a bound, solver
failure, invalid data. Anything but converged/at-bound returns NaN parameters.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from fluojax.batching import local_devices, map_padded
from fluojax.cache import compiled_call

if TYPE_CHECKING:  # imported where a solve is traced: a warm run's cached fit never needs them (~0.25 s)
    import optimistix as optx

__all__ = [
    "BACKENDS",
    "FIRST_TECHNIQUE_CODE",
    "FitResult",
    "JaxoptBackend",
    "LeastSquaresBackend",
    "LevenbergMarquardt",
    "Model",
    "OptimistixBackend",
    "PoissonLevenbergMarquardt",
    "Status",
    "confidence_intervals",
    "covariance_from_fisher",
    "crlb",
    "fisher_information",
    "least_squares",
    "least_squares_batch",
    "least_squares_multistart",
    "least_squares_multistart_batch",
    "normal_quantile",
    "parameter_covariance",
    "poisson_crlb",
    "poisson_fisher_information",
    "poisson_mle",
    "poisson_mle_batch",
    "status_name",
    "succeeded",
    "wald_intervals",
]


Model = Callable[[Float[Array, " p"], Any], Float[Array, "*shape"]]
"""A model ``model(theta (P,), args) -> prediction`` shaped like the data."""


class Status(enum.IntEnum):
    """Outcome of one fit (stored as uint8 in status maps). A technique that marks more outcomes
    (data without signal, a fit that means nothing) keeps them in its own ``IntEnum`` with codes
    from :data:`FIRST_TECHNIQUE_CODE` up, so a status map holds either kind of code;
    :func:`status_name` names both."""

    CONVERGED = 0
    MAX_STEPS = 1
    NON_FINITE = 2
    AT_BOUND = 3
    SOLVER_FAILED = 4
    INVALID_DATA = 5


FIRST_TECHNIQUE_CODE = 6
"""The first status code free for a technique's own outcomes (see :class:`Status`)."""


def status_name(code: int, technique: type[enum.IntEnum] | None = None) -> str:
    """The name of a status code: :class:`Status`'s, else the technique's enum's, else the code
    as text.

    Arguments:
        code: a status code (int or enum member).
        technique: the technique's ``IntEnum`` of codes from :data:`FIRST_TECHNIQUE_CODE` up.
    """
    for codes in (Status, technique):
        if codes is not None and int(code) in codes._value2member_map_:
            return codes(int(code)).name
    return str(int(code))


class LeastSquaresBackend(abc.ABC):
    """A Levenberg-Marquardt implementation the engine can run (a frozen dataclass, so settings
    holding it stay hashable static arguments of jitted functions).

    A backend solves one problem (:meth:`solve`); one that can also be driven step by step
    returns its stepping solver from :meth:`stepper`, and batches are then solved by slot
    refilling (see :func:`least_squares_batch`); otherwise they are solved as vmapped chunks of
    :meth:`solve`.
    """

    name: ClassVar[str]
    #: whether :meth:`stepper` gives a solver (then batches refill slots).
    steppable: ClassVar[bool] = False

    @abc.abstractmethod
    def solve(
        self,
        residual: Callable[[Float[Array, " f"], Any], Float[Array, "*shape"]],
        u0: Float[Array, " f"],
        args: Any,
        settings: LevenbergMarquardt,
    ) -> tuple[Float[Array, " f"], Int[Array, ""], Int[Array, ""]]:
        """Minimise ``sum(residual(u, args)^2)`` from ``u0``.

        Arguments:
            residual: ``residual(u, args) -> (M,)`` weighted residuals of the free internal
                parameters u.
            u0: (F,) start.
            args: passed to ``residual``.
            settings: tolerances and step limit.

        Returns:
            ``(u (F,), status code (int32 :class:`Status`), number of steps (int32))``.
        """

    def stepper(self, settings: LevenbergMarquardt) -> optx.AbstractLeastSquaresSolver | None:
        """The optimistix solver whose ``init/step/terminate`` the slot-refilling loop drives, or
        None when this backend cannot be stepped (batches then run as vmapped chunks)."""
        return None


@dataclasses.dataclass(frozen=True)
class OptimistixBackend(LeastSquaresBackend):
    """``optimistix.LevenbergMarquardt`` (maintained; steppable, so batches refill slots).

    From a vmapped solve only values, status and step counts are returned, with ``throw=False``
    (optimistix issues #63 and #66)."""

    name: ClassVar[str] = "optimistix"
    steppable: ClassVar[bool] = True

    def stepper(self, settings: LevenbergMarquardt) -> optx.AbstractLeastSquaresSolver:
        """optimistix's solver for these settings (QR or Cholesky linear solves)."""
        import lineax as lx
        import optimistix as optx

        linear = lx.QR() if settings.linear_solver == "qr" else lx.Normal(lx.Cholesky())
        return optx.LevenbergMarquardt(rtol=settings.rtol, atol=settings.atol, linear_solver=linear)

    def solve(self, residual, u0, args, settings):
        import optimistix as optx

        lm = self.stepper(settings)
        sol = optx.least_squares(residual, lm, u0, args, max_steps=settings.max_steps, throw=False)
        ok = sol.result == optx.RESULTS.successful
        max_steps = (sol.result == optx.RESULTS.nonlinear_max_steps_reached) | (
            sol.result == optx.RESULTS.max_steps_reached
        )
        code = jnp.where(ok, Status.CONVERGED, jnp.where(max_steps, Status.MAX_STEPS, Status.SOLVER_FAILED))
        return sol.value, code.astype(jnp.int32), sol.stats["num_steps"].astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class JaxoptBackend(LeastSquaresBackend):
    """``jaxopt.LevenbergMarquardt`` (unmaintained upstream; its DeprecationWarning is silenced
    here): Madsen-Nielsen stopping with ``xtol = rtol``, ``gtol = atol``, Cholesky steps."""

    name: ClassVar[str] = "jaxopt"

    def solve(self, residual, u0, args, settings):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import jaxopt
        lm = jaxopt.LevenbergMarquardt(
            residual_fun=residual,
            maxiter=settings.max_steps,
            stop_criterion="madsen-nielsen",
            xtol=settings.rtol,
            gtol=settings.atol,
            solver="cholesky",
            materialize_jac=True,
        )
        value, state = lm.run(u0, args)
        steps = state.iter_num.astype(jnp.int32)
        code = jnp.where(steps < settings.max_steps, Status.CONVERGED, Status.MAX_STEPS)
        return value, code.astype(jnp.int32), steps


#: The backends by the name the command line gives (``--backend``).
BACKENDS: dict[str, LeastSquaresBackend] = {b.name: b for b in (OptimistixBackend(), JaxoptBackend())}


@dataclasses.dataclass(frozen=True)
class LevenbergMarquardt:
    """Settings of the Levenberg-Marquardt solve (immutable).

    Attributes:
        rtol, atol: float, relative/absolute tolerances on the step and on chi^2 changes
            (optimistix's Cauchy termination; for jaxopt, ``atol`` is its gradient tolerance).
        max_steps: int, iteration limit per dataset.
        backend: the :class:`LeastSquaresBackend` that runs the solve (default
            :class:`OptimistixBackend`; by name: :data:`BACKENDS`).
        linear_solver: how the optimistix backend solves each damped step
            ``[J; sqrt(lambda) I] delta = [r; 0]`` in the least-squares sense: ``"qr"`` (default,
            QR of the stacked matrix) or ``"cholesky"`` (Cholesky of the normal equations
            ``(J^T J + lambda I) delta = J^T r``; squares J's condition number, but on a CPU
            avoids one small LAPACK QR per dataset and step). jaxopt always uses Cholesky.
    """

    rtol: float = 1e-4
    atol: float = 1e-6
    max_steps: int = 100
    backend: LeastSquaresBackend = OptimistixBackend()
    linear_solver: str = "qr"

    def __post_init__(self):
        if not isinstance(self.backend, LeastSquaresBackend):
            raise ValueError(
                f"unknown LM backend {self.backend!r}; give a LeastSquaresBackend, e.g. BACKENDS[name] "
                f"for a name in {sorted(BACKENDS)}"
            )
        if self.linear_solver not in ("qr", "cholesky"):
            raise ValueError(f"unknown linear solver {self.linear_solver!r}; use 'qr' or 'cholesky'")
        if self.max_steps < 1:
            raise ValueError("max_steps must be positive")


class FitResult(NamedTuple):
    """Result of one or many fits.

    Attributes:
        params: (..., P) fitted parameters (NaN where the fit failed).
        status: (...) int32 :class:`Status` codes.
        num_steps: (...) int32 iterations taken.
        chi2_reduced: (...) chi^2 / (valid points - free parameters).
    """

    params: Float[Array, "*batch p"]
    status: Int[Array, "*batch"]
    num_steps: Int[Array, "*batch"]
    chi2_reduced: Float[Array, "*batch"]


class _Box(NamedTuple):
    lo: np.ndarray  # bounds in the (possibly log) coordinate
    hi: np.ndarray
    log: np.ndarray


def _make_box(n_params, lower, upper, log_scale) -> _Box:
    lo = np.full(n_params, -np.inf) if lower is None else np.asarray(lower, np.float64).copy()
    hi = np.full(n_params, np.inf) if upper is None else np.asarray(upper, np.float64).copy()
    log = np.zeros(n_params, bool) if log_scale is None else np.asarray(log_scale, bool)
    if lo.shape != (n_params,) or hi.shape != (n_params,) or log.shape != (n_params,):
        raise ValueError(f"bounds and log_scale must each have {n_params} entries")
    if np.any(lo >= hi):
        raise ValueError("every lower bound must be below its upper bound")
    if np.any(log & (lo < 0)):
        raise ValueError("log-scale parameters need a lower bound >= 0")
    with np.errstate(divide="ignore"):
        lo = np.where(log, np.log(np.maximum(lo, 0.0)), lo)
        hi = np.where(log, np.log(hi), hi)
    return _Box(lo, hi, log)


def _to_internal(theta, box: _Box):
    phi = jnp.where(box.log, jnp.log(jnp.where(box.log, theta, 1.0)), theta)
    lo_f, hi_f = np.isfinite(box.lo), np.isfinite(box.hi)
    lo, hi = np.where(lo_f, box.lo, 0.0), np.where(hi_f, box.hi, 1.0)
    both = jnp.arcsin(jnp.clip(2.0 * (phi - lo) / (hi - lo) - 1.0, -1.0, 1.0))
    lower_only = jnp.sqrt(jnp.maximum((phi - lo + 1.0) ** 2 - 1.0, 0.0))
    upper_only = jnp.sqrt(jnp.maximum((hi - phi + 1.0) ** 2 - 1.0, 0.0))
    return jnp.where(lo_f & hi_f, both, jnp.where(lo_f, lower_only, jnp.where(hi_f, upper_only, phi)))


def _from_internal(u, box: _Box):
    lo_f, hi_f = np.isfinite(box.lo), np.isfinite(box.hi)
    lo, hi = np.where(lo_f, box.lo, 0.0), np.where(hi_f, box.hi, 1.0)
    both = lo + (hi - lo) * (jnp.sin(u) + 1.0) / 2.0
    lower_only = lo - 1.0 + jnp.sqrt(u**2 + 1.0)
    upper_only = hi + 1.0 - jnp.sqrt(u**2 + 1.0)
    phi = jnp.where(lo_f & hi_f, both, jnp.where(lo_f, lower_only, jnp.where(hi_f, upper_only, u)))
    return jnp.where(box.log, jnp.exp(phi), phi)


def _at_bound(u, box: _Box):
    lo_f, hi_f = np.isfinite(box.lo), np.isfinite(box.hi)
    both = (jnp.sin(u) + 1.0) / 2.0
    near_both = (both < 1e-5) | (both > 1.0 - 1e-5)
    near_one = jnp.sqrt(u**2 + 1.0) - 1.0 < 1e-6
    return jnp.where(lo_f & hi_f, near_both, jnp.where(lo_f | hi_f, near_one, False))


def least_squares(
    model: Model,
    data: Float[ArrayLike, "*shape"],
    sigma: Float[ArrayLike, "*shape"],
    init: Float[ArrayLike, " p"],
    args: Any = None,
    *,
    free: tuple[bool, ...] | None = None,
    lower: Float[ArrayLike, " p"] | None = None,
    upper: Float[ArrayLike, " p"] | None = None,
    log_scale: Bool[ArrayLike, " p"] | None = None,
    solver: LevenbergMarquardt = LevenbergMarquardt(),
) -> FitResult:
    """Weighted, bounded Levenberg-Marquardt fit of one dataset.

    Minimises ``sum_i ((model(theta, args)_i - data_i) / sigma_i)^2`` over the free entries of
    ``theta``; fixed entries keep their ``init`` values. Pure and jit/vmap-able (vmap it, or use
    :func:`least_squares_batch`, for many datasets).

    Arguments:
        model: ``model(theta, args) -> array`` shaped like ``data``; theta is (P,).
        data: array, the measurements.
        sigma: array like ``data``, standard errors (weights 1/sigma^2). Points with
            non-positive or non-finite sigma, or non-finite data, are ignored.
        init: (P,) start values (clipped into the bounds).
        args: pytree passed through to ``model`` (e.g. lag times, optics).
        free: static tuple of P bools (default: all free).
        lower, upper: (P,) static bounds (None or +-inf for unbounded).
        log_scale: (P,) static bools; bound/transform those parameters in log space (need
            lower >= 0).
        solver: ``LevenbergMarquardt`` settings.

    Returns:
        ``FitResult`` with ``params`` (P,), scalar ``status``, ``num_steps``, ``chi2_reduced``.
    """
    return _mask_failed(
        _least_squares_unmasked(
            model, data, sigma, init, args, free=free, lower=lower, upper=upper, log_scale=log_scale, solver=solver
        )
    )


def _least_squares_unmasked(
    model,
    data,
    sigma,
    init,
    args=None,
    *,
    free=None,
    lower=None,
    upper=None,
    log_scale=None,
    solver=LevenbergMarquardt(),
) -> FitResult:
    """:func:`least_squares` without the NaN masking of failed fits."""
    layout = _layout(jnp.shape(init)[-1], free, lower, upper, log_scale)
    problem = _prepare(model, data, sigma, init, args, layout)
    u, code, steps = solver.backend.solve(
        lambda u, a: _residual(model, layout, u, problem, a), problem.u0, args, solver
    )
    return _finish(model, layout, u, code, steps, problem, args)


class _Layout(NamedTuple):
    """Static description of the parameter vector: which entries are free, their box."""

    free_idx: np.ndarray
    box: _Box  # all parameters
    sub: _Box  # the free ones


class _Problem(NamedTuple):
    """One dataset, ready to fit (a pytree, so batches of problems vmap and gather)."""

    theta0: jax.Array  # (P,) start, clipped into the bounds; fixed entries keep these values
    u0: jax.Array  # (F,) the free entries of theta0 in internal coordinates
    target: jax.Array  # the data (invalid points 0; an unusable dataset: the model at theta0)
    weight: jax.Array  # 1/sigma on valid points, else 0
    n_valid: jax.Array  # number of valid points
    usable: jax.Array  # more valid points than free parameters


def _free_indices(n_params: int, free) -> np.ndarray:
    """Indices of the free parameters (``free``: None = all, or a tuple of P bools)."""
    free_mask = np.ones(n_params, bool) if free is None else np.asarray(free, bool)
    if free_mask.shape != (n_params,):
        raise ValueError(f"free must have {n_params} entries")
    return np.nonzero(free_mask)[0]


def _layout(n_params, free, lower, upper, log_scale) -> _Layout:
    free_idx = _free_indices(n_params, free)
    box = _make_box(n_params, lower, upper, log_scale)
    return _Layout(free_idx, box, _Box(box.lo[free_idx], box.hi[free_idx], box.log[free_idx]))


def _start(init, layout: _Layout):
    """The start ``theta0`` clipped into the bounds (a hair inside, so the transform is
    invertible; non-finite entries moved to the lower bound or 0) and its free entries in internal
    coordinates ``u0``."""
    box = layout.box
    with np.errstate(over="ignore"):
        lo_t = np.where(box.log, np.exp(box.lo), box.lo)
        hi_t = np.where(box.log, np.exp(box.hi), box.hi)
    span = np.where(np.isfinite(hi_t - lo_t), hi_t - lo_t, 1.0)
    theta0 = jnp.clip(init, lo_t + 1e-6 * span, hi_t - 1e-6 * span)
    theta0 = jnp.where(jnp.isfinite(theta0), theta0, jnp.where(np.isfinite(lo_t), lo_t + 1e-6 * span, 0.0))
    return theta0, _to_internal(theta0[layout.free_idx], layout.sub)


def _prepare(model, data, sigma, init, args, layout: _Layout) -> _Problem:
    init = jnp.asarray(init)
    data = jnp.asarray(data)
    sigma = jnp.asarray(sigma, data.dtype)
    valid = jnp.isfinite(data) & jnp.isfinite(sigma) & (sigma > 0)
    inv_sigma = jnp.where(valid, 1.0 / jnp.where(valid, sigma, 1.0), 0.0)
    n_valid = jnp.sum(valid)
    usable = n_valid > layout.free_idx.size

    theta0, u0 = _start(init, layout)

    # invalid datasets are replaced by the model at the start, so they converge at once
    prediction0 = model(theta0, args)
    target = jnp.where(usable, jnp.where(valid, data, 0.0), prediction0)
    weight = jnp.where(usable, inv_sigma, 1.0)
    return _Problem(theta0, u0, target, weight, n_valid, usable)


def _full_theta(layout: _Layout, u, problem: _Problem):
    return problem.theta0.at[layout.free_idx].set(_from_internal(u, layout.sub))


def _residual(model, layout: _Layout, u, problem: _Problem, args):
    """Weighted residuals ``(model(theta(u)) - data) / sigma`` of the free internal parameters u."""
    return (model(_full_theta(layout, u, problem), args) - problem.target) * problem.weight


def _finish(model, layout: _Layout, u, code, steps, problem: _Problem, args) -> FitResult:
    """Parameters, status and reduced chi^2 of a finished solve."""
    theta = _full_theta(layout, u, problem)
    chi2 = jnp.sum(_residual(model, layout, u, problem, args) ** 2) / jnp.maximum(
        problem.n_valid - layout.free_idx.size, 1
    )
    finite = jnp.all(jnp.isfinite(theta)) & jnp.isfinite(chi2)
    code = jnp.where(finite, code, Status.NON_FINITE)
    code = jnp.where((code == Status.CONVERGED) & jnp.any(_at_bound(u, layout.sub)), Status.AT_BOUND, code)
    code = jnp.where(problem.usable, code, Status.INVALID_DATA).astype(jnp.int32)
    return FitResult(theta, code, steps, chi2)


def succeeded(
    status: Int[ArrayLike, "*batch"],
    theta: Float[ArrayLike, "*batch p"],
    xp: Any = jnp,
    *,
    chi2: Float[ArrayLike, "*batch"] | None = None,
) -> Bool[Array | np.ndarray, "*batch"]:
    """Whether each fit succeeded: the one definition of a usable fit.

    A fit succeeded when its status is :attr:`Status.CONVERGED` or :attr:`Status.AT_BOUND` and
    every parameter on the last axis of ``theta`` is finite (and, when ``chi2`` is given, its
    chi^2 is finite). Any other status (including a technique's own codes beyond
    :class:`Status`) is a failure.

    Arguments:
        status: (...) int status codes (array or Python int).
        theta: (..., P) parameters of each fit.
        xp: the array module, ``jnp`` (traceable) or ``np``.
        chi2: optional (...) chi^2 (e.g. ``FitResult.chi2_reduced``) that must be finite too.

    Returns:
        (...) bool mask (a bool scalar for one fit).
    """
    good = ((status == Status.CONVERGED) | (status == Status.AT_BOUND)) & xp.all(xp.isfinite(theta), axis=-1)
    if chi2 is not None:
        good = good & xp.isfinite(chi2)
    return good


def _mask_failed(result: FitResult, xp=jnp) -> FitResult:
    """NaN parameters and chi^2 for every fit that did not succeed (:func:`succeeded`)."""
    good = succeeded(result.status, result.params, xp)
    return result._replace(
        params=xp.where(good[..., None], result.params, np.nan),
        chi2_reduced=xp.where(good, result.chi2_reduced, np.nan),
    )


def least_squares_batch(
    model: Model,
    data: Float[ArrayLike, "b m"],
    sigma: Float[ArrayLike, "b m"],
    init: Float[ArrayLike, "b p"] | Float[ArrayLike, " p"],
    args: Any = None,
    *,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
    devices: Sequence[Any] | None = None,
    **options,
) -> FitResult:
    """Fit many datasets: :func:`least_squares` for each, run as one batched, jitted solve.

    ``args`` is shared by all datasets. Results come back as NumPy arrays: the fits of
    ``jax.vmap(least_squares)``, up to rounding (identical in float64; in float32, rounding that
    differs between batch shapes can change which trust-region steps are accepted near a
    minimum, so step counts and last digits can differ, and at tolerances below float32
    resolution a fit can end at ``max_steps`` in one batch shape and converge in another).

    With the optimistix backend the batch is solved by *slot refilling*: ``chunk`` fits iterate
    together (one vmapped Levenberg-Marquardt step per loop turn), and each slot whose fit has
    stopped is refilled at once with the next dataset, so the batch costs the *total* of the
    iterations its fits need rather than ``chunk`` times its slowest fit's, as a plain vmapped
    solve would (iteration counts vary widely between datasets; see docs/benchmarks.md). The
    solver state (iterate, trust region) of a running fit is never reset: each fit runs
    optimistix's iterations as in :func:`least_squares`. A backend that cannot be stepped
    (:attr:`LeastSquaresBackend.steppable` false, e.g. jaxopt) solves the datasets in vmapped
    chunks of ``chunk``.

    Arguments:
        model, args, options: as for :func:`least_squares` (``free``, ``lower``, ``upper``,
            ``log_scale``, ``solver``).
        data, sigma: (B, M) arrays.
        init: (B, P) per-dataset or (P,) shared start values.
        chunk: int, fits iterating together. Default: 256 on CPU, 8192 on accelerators.
            Datasets go to the device in segments of at most ``64 * chunk``, padded to a power
            of two times the slot count (padding is never fitted), so batches of other sizes
            mostly reuse the compiled loop. With several local devices the segments are dealt
            out to them (:func:`fluojax.batching.map_padded`), about B / devices datasets each;
            the slot count does not depend on the device count, so each dataset's fit is the
            one-device fit.
        progress: optional callable receiving the number of datasets finished in each segment.
        devices: the devices to fit on (None: all local devices, :func:`fluojax.batching.local_devices`).

    Returns:
        ``FitResult`` of NumPy arrays with leading dimension B.
    """
    data = np.asarray(data)
    sigma = np.asarray(sigma)
    n = data.shape[0]
    starts = np.array(np.broadcast_to(np.asarray(init), (n, np.shape(init)[-1])))
    if chunk is None:
        chunk = _default_slots()
    solver = options.get("solver", LevenbergMarquardt())
    report = None if progress is None else (lambda out: progress(out.status.size))
    if not solver.backend.steppable:
        chunk_fn: Callable[..., Any] = _fit_chunk
        per_call = max(1, min(chunk, n))
    else:
        # slots and segment sizes from a few powers of two, so datasets of other counts reuse the
        # compiled loop; padding rows of a segment are never loaded into a slot. On D local
        # devices each segment holds about n / D datasets, so every device gets one
        slots = max(1, min(chunk, _next_power_of_two(n)))
        per_device = -(-n // len(local_devices(devices)))
        segment = slots * min(64, _next_power_of_two(-(-per_device // slots)))
        chunk_fn, per_call = functools.partial(_fit_streaming, slots=slots), segment
    return _mask_failed(
        _fit_in_chunks(chunk_fn, model, data, sigma, starts, args, options, per_call, report, devices), np
    )


def _next_power_of_two(k: int) -> int:
    return 1 << max(0, int(k) - 1).bit_length()


def _default_slots() -> int:
    """Fits iterating together by default: 256 on a CPU (every member costs time at every
    iteration), 8192 on an accelerator (wide batches are nearly free there)."""
    return 256 if jax.default_backend() == "cpu" else 8192


class _Slots(NamedTuple):
    """State of :func:`_fit_streaming`'s slot-refilling loop (the ``while_loop`` carry); S slots,
    B datasets, F free parameters. A slot holding index B is empty."""

    dataset: jax.Array  # (S,) dataset in each slot
    u: jax.Array  # (S, F) current iterate of each slot
    steps: jax.Array  # (S,) iterations taken by each slot's fit
    solver_state: Any  # array leaves of each slot's optimistix state (trust region, ...)
    next_index: jax.Array  # () next dataset to load
    out_u: jax.Array  # (B, F) final iterate of each dataset
    out_code: jax.Array  # (B,) its status
    out_steps: jax.Array  # (B,) its iterations


@functools.partial(jax.jit, static_argnames=("model", "options", "slots"))
def _fit_streaming(model, data, sigma, init, args, options, slots, count):
    """Slot-refilling optimistix Levenberg-Marquardt over a segment of B datasets, of which the
    first ``count`` (traced) are real and the rest padding that is never loaded (see
    :func:`least_squares_batch`); unmasked ``FitResult`` with leading dimension B."""
    import equinox as eqx
    import optimistix as optx

    opts = dict(options)
    solver = opts.pop("solver", LevenbergMarquardt())
    layout = _layout(init.shape[-1], opts.get("free"), opts.get("lower"), opts.get("upper"), opts.get("log_scale"))
    problems = jax.vmap(lambda d, s, i: _prepare(model, d, s, i, args, layout))(data, sigma, init)
    n = data.shape[0]

    lm = solver.backend.stepper(solver)
    tags = frozenset()
    f_struct = jax.ShapeDtypeStruct(problems.target.shape[1:], problems.target.dtype)

    def fn(u, problem):
        return _residual(model, layout, u, problem, args), None

    def init_one(u, problem):
        return lm.init(fn, u, problem, {}, f_struct, None, tags)

    def step_one(u, state, problem):
        new_u, new_state, _ = lm.step(fn, u, problem, {}, state, tags)
        stop, result = lm.terminate(fn, new_u, problem, {}, new_state, tags)
        return new_u, new_state, stop, result

    def gather(index):
        return jax.tree.map(lambda x: x[jnp.minimum(index, n - 1)], problems)

    def where_slot(mask, a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    count = jnp.asarray(count, jnp.int32)
    first = jnp.arange(slots)
    first = jnp.where(first < count, first, n)
    loaded = gather(first)
    dynamic0, static = eqx.partition(eqx.filter_vmap(init_one)(loaded.u0, loaded), eqx.is_array)
    carry0 = _Slots(
        dataset=first,
        u=loaded.u0,
        steps=jnp.zeros(slots, jnp.int32),
        solver_state=dynamic0,
        next_index=jnp.minimum(count, slots),
        out_u=jnp.zeros_like(problems.u0),
        out_code=jnp.zeros(n, jnp.int32),
        out_steps=jnp.zeros(n, jnp.int32),
    )

    def running(carry: _Slots):
        return jnp.any(carry.dataset < n)

    def turn(carry: _Slots) -> _Slots:
        index, u, steps, dynamic, next_index = carry.dataset, carry.u, carry.steps, carry.solver_state, carry.next_index
        out_u, out_code, out_steps = carry.out_u, carry.out_code, carry.out_steps
        active = index < n
        state = eqx.combine(dynamic, static)
        u, state, stop, result = eqx.filter_vmap(step_one)(u, state, gather(index))
        steps = steps + 1
        # optimistix's own loop also stops on a non-finite iterate; here u is always finite (it
        # starts finite and the trust region never accepts a step with a non-finite loss), so
        # the check is left out (it costs time at every turn; see docs/benchmarks.md)
        ok = result == optx.RESULTS.successful
        done = active & ((stop & ok) | ~ok | (steps >= solver.max_steps))
        code = jnp.where(stop & ok, Status.CONVERGED, jnp.where(ok, Status.MAX_STEPS, Status.SOLVER_FAILED)).astype(
            jnp.int32
        )
        where = jnp.where(done, index, n)  # n: dropped
        out_u = out_u.at[where].set(u, mode="drop")
        out_code = out_code.at[where].set(code, mode="drop")
        out_steps = out_steps.at[where].set(steps, mode="drop")
        # refill the finished slots with the next datasets, in slot order
        new_index = next_index + jnp.cumsum(done) - 1
        new_index = jnp.where(new_index < count, new_index, n)
        index = jnp.where(done, new_index, index)
        fresh = gather(index)
        fresh_dynamic, _ = eqx.partition(eqx.filter_vmap(init_one)(fresh.u0, fresh), eqx.is_array)
        dynamic = jax.tree.map(
            lambda a, b: where_slot(done, a, b), fresh_dynamic, eqx.partition(state, eqx.is_array)[0]
        )
        u = where_slot(done, fresh.u0, u)
        steps = jnp.where(done, 0, steps)
        next_index = next_index + jnp.sum(done).astype(jnp.int32)
        return _Slots(index, u, steps, dynamic, next_index, out_u, out_code, out_steps)

    final = jax.lax.while_loop(running, turn, carry0)
    return jax.vmap(lambda u, c, k, p: _finish(model, layout, u, c, k, p, args))(
        final.out_u, final.out_code, final.out_steps, problems
    )


def _fit_in_chunks(chunk_fn, model, data, sigma, starts, args, options, chunk, on_chunk, devices=None):
    """Run a compiled per-chunk fit over datasets in chunks of exactly ``chunk``
    (:func:`fluojax.batching.map_padded`: the last chunk padded, so every chunk compiles once;
    the chunk function also gets the number of real datasets, ``count``); NumPy results.
    ``on_chunk`` (optional) receives each chunk's ``FitResult`` as it finishes."""
    static = tuple(sorted((k, _hashable(v)) for k, v in options.items()))
    fn, extra = (chunk_fn.func, chunk_fn.keywords) if isinstance(chunk_fn, functools.partial) else (chunk_fn, {})

    def run(part, count):
        # the compiled executable is kept between processes when a compilation cache is set (fluojax.cache)
        dynamic = {"data": part[0], "sigma": part[1], "init": part[2], "args": args, "count": np.int32(count)}
        return compiled_call(fn, {"model": model, "options": static, **extra}, dynamic)

    return map_padded(run, (data, sigma, starts), chunk, on_batch=on_chunk, devices=devices)


def _hashable(value):
    if isinstance(value, (list, tuple, np.ndarray)):
        return tuple(_hashable(v) for v in np.asarray(value).tolist()) if np.ndim(value) else value.item()
    return value


@functools.partial(jax.jit, static_argnames=("model", "options"))
def _fit_chunk(model, data, sigma, init, args, options, count=None):
    """One compiled, vmapped chunk of unmasked :func:`least_squares` (cached per model and options;
    padding rows beyond ``count`` are fitted too: in a vmapped chunk they cost no extra time)."""
    opts = dict(options)
    return jax.vmap(lambda d, s, i: _least_squares_unmasked(model, d, s, i, args, **opts))(data, sigma, init)


# ----------------------------------------------------------------------------------------------
# Poisson maximum likelihood
# ----------------------------------------------------------------------------------------------

#: Expected counts are floored here in the likelihood, so a model that touches 0 stays finite.
_MU_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class PoissonLevenbergMarquardt:
    """Settings of the Poisson maximum-likelihood solve (:func:`poisson_mle`; immutable).

    Attributes:
        tol: float > 0, convergence when the remaining (undamped) Newton step is shorter than
            ``tol`` standard errors: ``g^T I^{-1} g <= tol^2``, g the gradient of the negative
            log-likelihood and I the Fisher information at the iterate (the Newton decrement; a
            statistical scale, the same for every parameterisation and unit).
        max_steps: int >= 1, iteration limit per dataset (accepted and rejected steps).
        damping: float > 0, initial Marquardt damping (multiplies diag(I)); divided by 10 after
            an accepted step, multiplied by 10 after a rejected one; above 1e12 the solve stops
            as :attr:`Status.SOLVER_FAILED`.
    """

    tol: float = 1e-3
    max_steps: int = 100
    damping: float = 1e-3

    def __post_init__(self):
        if not self.tol > 0:
            raise ValueError("tol must be positive")
        if self.max_steps < 1:
            raise ValueError("max_steps must be positive")
        if not self.damping > 0:
            raise ValueError("damping must be positive")


class _PoissonProblem(NamedTuple):
    """One dataset for :func:`poisson_mle` (a pytree, so batches vmap)."""

    theta0: jax.Array  # (P,) start in the bounds; fixed entries keep these values
    u0: jax.Array  # (F,) free entries of theta0, internal coordinates
    target: jax.Array  # d + s clipped at 0 on valid pixels (an unusable dataset: the model at theta0)
    shift: jax.Array  # s on valid pixels, else 0
    scale: jax.Array  # model scale per pixel
    valid: jax.Array  # bool per pixel
    n_valid: jax.Array
    usable: jax.Array  # more valid pixels than free parameters


def _prepare_poisson(model, counts, init, args, shift, scale, layout: _Layout) -> _PoissonProblem:
    init = jnp.asarray(init)
    counts = jnp.asarray(counts)
    dtype = jnp.result_type(init.dtype, counts.dtype, jnp.float32)
    counts = counts.astype(dtype)
    shift = jnp.zeros_like(counts) if shift is None else jnp.broadcast_to(jnp.asarray(shift, dtype), counts.shape)
    scale = jnp.ones_like(counts) if scale is None else jnp.broadcast_to(jnp.asarray(scale, dtype), counts.shape)
    theta0, u0 = _start(init.astype(dtype), layout)
    valid = jnp.isfinite(counts) & jnp.isfinite(shift) & jnp.isfinite(scale)
    n_valid = jnp.sum(valid)
    usable = n_valid > layout.free_idx.size
    shift = jnp.where(valid, shift, 0.0)
    scale = jnp.where(valid, scale, 0.0)
    target = jnp.where(valid, jnp.maximum(counts + shift, 0.0), 0.0)
    # an unusable dataset fits its own start (gradient 0: it stops at once, INVALID_DATA)
    start_mean = scale * model(theta0, args) + shift
    target = jnp.where(usable, target, jnp.maximum(start_mean, 0.0))
    return _PoissonProblem(theta0, u0, target, shift, scale, valid | ~usable, n_valid, usable)


def _poisson_deviance(mean, problem: _PoissonProblem):
    """Half the Poisson deviance ``sum mu - y + y ln(y / mu)`` over valid pixels (>= 0, zero at
    a perfect fit; ``0 ln 0 = 0``), mu floored at :data:`_MU_FLOOR`."""
    mu = jnp.maximum(mean, _MU_FLOOR)
    y = problem.target
    return jnp.sum(jnp.where(problem.valid, mu - y + xlogy(y, y / mu), 0.0))


class _PoissonState(NamedTuple):
    u: jax.Array
    deviance: jax.Array
    gradient: jax.Array
    information: jax.Array
    damping: jax.Array
    steps: jax.Array
    code: jax.Array  # -1 while running, then a Status


def _model_and_jacobian(model, theta, args):
    """``(model(theta, args), d model / d theta)``, the Jacobian shaped ``prediction.shape + (P,)``:
    the model's own ``value_and_jacobian`` where it has one (an analytic or structured Jacobian),
    else forward-mode autodiff."""
    own = getattr(model, "value_and_jacobian", None)
    if own is not None:
        return own(theta, args)

    def value(t):
        m = model(t, args)
        return m, m

    jac, value_ = jax.jacfwd(value, has_aux=True)(theta)
    return value_, jac


def _model_and_columns(model, theta, args, which: np.ndarray):
    """``(model(theta, args), [d model / d theta_p for p in which])``, each column flat (M,): from
    the model's own ``value_and_jacobian`` where it has one, else by forward-mode autodiff
    (:func:`_model_and_jacobian`). Separate columns keep every later sum over the data a plain
    elementwise pass on a CPU."""
    own = getattr(model, "value_and_jacobian", None)
    if own is not None:
        value, jac = own(theta, args)
        jac = jnp.reshape(jac, (-1, jac.shape[-1]))
        return value, [jac[:, int(p)] for p in which]
    value, jac = _model_and_jacobian(model, theta, args)
    # the columns taken by one gather (an index array), not by slices: measured on a CPU, XLA
    # then stores the autodiff Jacobian column by column, and the fit costs half as much as with
    # slices, a transpose or an optimization barrier; for a model's own Jacobian slices are faster
    jac = jnp.reshape(jac, (-1, jac.shape[-1]))[:, which]
    return value, [jac[:, p] for p in range(len(which))]


def _gradient_and_information(columns, residual, weight):
    """``J^T r`` and ``J^T diag(w) J`` of a Jacobian given as F columns over the M data, written
    as one sum over the data per entry (F + F (F + 1) / 2 of them; the information is
    symmetric): vmapped over many datasets this is several times faster on a CPU than a batched
    matrix product of small matrices or a sum over an (M, F, F) array of products."""
    n_free = len(columns)
    weighted = [c * weight for c in columns]
    gradient = jnp.stack([jnp.sum(c * residual) for c in columns])
    entries: list[list[Any]] = [[None] * n_free for _ in range(n_free)]
    for p in range(n_free):
        for q in range(p, n_free):
            entries[p][q] = entries[q][p] = jnp.sum(columns[p] * weighted[q])
    return gradient, jnp.stack([jnp.stack(row) for row in entries])


#: Largest system solved by the unrolled Cholesky of :func:`_spd_solve` (bigger ones: LU).
_UNROLLED_MAX = 8


def _cholesky_unrolled(a):
    """Lower Cholesky factor of a small symmetric positive-definite (P, P) matrix as a list of
    rows of scalars, written out element by element (P <= :data:`_UNROLLED_MAX`): vmapped over
    many datasets it is plain elementwise arithmetic, far cheaper on a CPU than one LAPACK call
    per dataset. A matrix that is not positive definite gives non-finite entries."""
    size = a.shape[-1]
    low: list[list[Any]] = [[None] * size for _ in range(size)]
    for j in range(size):
        diag = a[j, j]
        for k in range(j):
            diag = diag - low[j][k] * low[j][k]
        low[j][j] = jnp.sqrt(diag)
        for i in range(j + 1, size):
            off = a[i, j]
            for k in range(j):
                off = off - low[i][k] * low[j][k]
            low[i][j] = off / low[j][j]
    return low


def _forward_substitution(low, b):
    """``L^-1 b`` for the unrolled factor ``low`` of :func:`_cholesky_unrolled`; a list of scalars."""
    out: list[Any] = []
    for i in range(len(low)):
        v = b[i]
        for k in range(i):
            v = v - low[i][k] * out[k]
        out.append(v / low[i][i])
    return out


def _spd_solve(a, b):
    """``a^-1 b`` for a symmetric positive-definite (P, P) ``a``: unrolled Cholesky for
    P <= :data:`_UNROLLED_MAX`, else ``jnp.linalg.solve``."""
    size = a.shape[-1]
    if size > _UNROLLED_MAX:
        return jnp.linalg.solve(a, b)
    low = _cholesky_unrolled(a)
    z = _forward_substitution(low, b)
    x: list[Any] = [None] * size
    for i in reversed(range(size)):
        v = z[i]
        for k in range(i + 1, size):
            v = v - low[k][i] * x[k]
        x[i] = v / low[i][i]
    return jnp.stack(x)


def _spd_quadratic(a, b):
    """``b^T a^-1 b`` for a symmetric positive-definite (P, P) ``a`` (``|L^-1 b|^2`` by the
    unrolled Cholesky for P <= :data:`_UNROLLED_MAX`, else ``jnp.linalg.solve``)."""
    if a.shape[-1] > _UNROLLED_MAX:
        return b @ jnp.linalg.solve(a, b)
    z = _forward_substitution(_cholesky_unrolled(a), b)
    return functools.reduce(lambda acc, v: acc + v * v, z[1:], z[0] * z[0])


def _poisson_solve(model, layout: _Layout, problem: _PoissonProblem, args, settings: PoissonLevenbergMarquardt):
    """Levenberg-Marquardt on the Poisson likelihood with the Fisher information as the
    curvature (Fisher scoring with Marquardt damping); ``(u, code, steps, D(u))``."""
    valid, y = jnp.ravel(problem.valid), jnp.ravel(problem.target)
    scale, shift = jnp.ravel(problem.scale), jnp.ravel(problem.shift)

    def derivatives(u):
        # theta_free = T(u) elementwise (the bounds' change of variables): T', T'' by nested jvp
        def transform(v):
            return _from_internal(v, layout.sub)

        ones = jnp.ones_like(u)
        (theta_free, slope), (_, bend) = jax.jvp(lambda v: jax.jvp(transform, (v,), (ones,)), (u,), (ones,))
        # with every parameter free, theta is theta_free (no scatter)
        every = layout.free_idx.size == problem.theta0.shape[0]
        theta = theta_free if every else problem.theta0.at[layout.free_idx].set(theta_free)
        value, columns = _model_and_columns(model, theta, args, layout.free_idx)
        mu = scale * jnp.ravel(value) + shift
        m = jnp.maximum(mu, _MU_FLOOR)
        g_theta, info_theta = _gradient_and_information(
            [scale * jnp.ravel(c) for c in columns], jnp.where(valid, 1.0 - y / m, 0.0), jnp.where(valid, 1.0 / m, 0.0)
        )
        # in u: g = T' g_theta, I = T' I_theta T' + diag(max(g_theta T'', 0)): the curvature the
        # change of variables adds where the likelihood pushes a parameter against its bound (it
        # makes the minimum at the bound a proper one), kept only where positive
        gradient = slope * g_theta
        information = slope[:, None] * info_theta * slope[None, :] + jnp.diag(jnp.maximum(g_theta * bend, 0.0))
        return _poisson_deviance(mu, problem._replace(valid=valid, target=y)), gradient, information

    dtype = problem.u0.dtype
    eps = jnp.finfo(dtype).eps
    rounding = 16 * eps * jnp.sum(jnp.where(problem.valid, problem.target, 0.0))  # scale of the deviance's rounding
    n_free = problem.u0.shape[0]
    eye = jnp.eye(n_free, dtype=dtype)

    def scaled_system(information, gradient):
        diag = jnp.stack([information[i, i] for i in range(n_free)])  # slices, not a gather
        informative = jnp.isfinite(diag) & (diag > 0)
        d = jnp.where(informative, jnp.sqrt(jnp.where(informative, diag, 1.0)), 1.0)
        # a parameter without information (e.g. a position while the amplitude is 0) has no
        # gradient either: a unit diagonal keeps the system solvable and leaves it where it is
        scaled = information / d[:, None] / d[None, :]
        scaled = jnp.where(jnp.eye(n_free, dtype=bool) & ~informative[:, None], 1.0, scaled)
        return scaled, jnp.where(informative, gradient / d, 0.0), d

    def converged(information, gradient):
        # the Newton decrement g^T I^-1 g against tol^2
        scaled, g, _ = scaled_system(information, gradient)
        return _spd_quadratic(scaled, g) <= settings.tol**2

    def running(state):
        return state.code < 0

    def turn(state: _PoissonState) -> _PoissonState:
        # a running state has not converged: the test is made where a state is formed (below and
        # before the loop), so the loop ends one turn (one model evaluation) earlier
        scaled, g, d = scaled_system(state.information, state.gradient)
        step = -_spd_solve(scaled + state.damping * eye, g) / d
        u_new = state.u + step
        dev_new, g_new, info_new = derivatives(u_new)
        accept = jnp.isfinite(dev_new) & jnp.all(jnp.isfinite(u_new)) & (dev_new <= state.deviance + rounding)
        damping = jnp.where(accept, jnp.maximum(state.damping / 10.0, 1e-9), state.damping * 10.0)
        steps = state.steps + 1
        gradient = jnp.where(accept, g_new, state.gradient)
        information = jnp.where(accept, info_new, state.information)
        done = accept & converged(information, gradient)
        code = jnp.where(
            damping > 1e12,
            Status.SOLVER_FAILED,
            jnp.where(steps >= settings.max_steps, Status.MAX_STEPS, jnp.where(done, Status.CONVERGED, -1)),
        ).astype(jnp.int32)
        return _PoissonState(
            jnp.where(accept, u_new, state.u),
            jnp.where(accept, dev_new, state.deviance),
            gradient,
            information,
            damping.astype(dtype),
            steps.astype(jnp.int32),
            code,
        )

    dev0, g0, info0 = derivatives(problem.u0)
    code0 = jnp.where(converged(info0, g0), Status.CONVERGED, -1).astype(jnp.int32)
    state0 = _PoissonState(problem.u0, dev0, g0, info0, jnp.asarray(settings.damping, dtype), jnp.int32(0), code0)
    final = jax.lax.while_loop(running, turn, state0)
    return final.u, final.code, final.steps, final.deviance


def _poisson_finish(layout: _Layout, u, code, steps, half_deviance, problem: _PoissonProblem) -> FitResult:
    """Parameters, status and reduced deviance of a finished Poisson solve (``half_deviance``: D
    at ``u``, as the solve computed it)."""
    theta = _full_theta(layout, u, problem)  # type: ignore[arg-type]
    deviance = 2.0 * half_deviance
    reduced = deviance / jnp.maximum(problem.n_valid - layout.free_idx.size, 1)
    finite = jnp.all(jnp.isfinite(theta)) & jnp.isfinite(reduced)
    code = jnp.where(finite, code, Status.NON_FINITE)
    code = jnp.where((code == Status.CONVERGED) & jnp.any(_at_bound(u, layout.sub)), Status.AT_BOUND, code)
    code = jnp.where(problem.usable, code, Status.INVALID_DATA).astype(jnp.int32)
    return FitResult(theta, code, steps, reduced)


def _poisson_mle_unmasked(
    model,
    counts,
    init,
    args=None,
    *,
    shift=None,
    scale=None,
    free=None,
    lower=None,
    upper=None,
    log_scale=None,
    solver=PoissonLevenbergMarquardt(),
) -> FitResult:
    """:func:`poisson_mle` without the NaN masking of failed fits."""
    layout = _layout(jnp.shape(init)[-1], free, lower, upper, log_scale)
    problem = _prepare_poisson(model, counts, init, args, shift, scale, layout)
    u, code, steps, half_deviance = _poisson_solve(model, layout, problem, args, solver)
    return _poisson_finish(layout, u, code, steps, half_deviance, problem)


def poisson_mle(
    model: Model,
    counts: Float[ArrayLike, "*shape"],
    init: Float[ArrayLike, " p"],
    args: Any = None,
    *,
    shift: Float[ArrayLike, "*shape"] | None = None,
    scale: Float[ArrayLike, "*shape"] | None = None,
    free: tuple[bool, ...] | None = None,
    lower: Float[ArrayLike, " p"] | None = None,
    upper: Float[ArrayLike, " p"] | None = None,
    log_scale: Bool[ArrayLike, " p"] | None = None,
    solver: PoissonLevenbergMarquardt = PoissonLevenbergMarquardt(),
) -> FitResult:
    """Bounded Poisson maximum-likelihood fit of one dataset (e.g. photon counts of a spot).

    With expected counts ``mu_k = scale_k model(theta, args)_k + s_k`` and data ``y_k = d_k + s_k``
    (``s`` a known additive expectation, e.g. an sCMOS pixel's read variance, Huang et al. 2013),
    minimises the Poisson negative log-likelihood, written as half the deviance

        D(theta) = sum_k mu_k - y_k + y_k ln(y_k / mu_k)        (0 ln 0 = 0)

    over the free entries of ``theta`` in the box bounds (the change of variables of
    :func:`least_squares`). The gradient is ``J^T (1 - y / mu)`` and the curvature the Fisher
    information ``I = J^T diag(1 / mu) J`` (``J = d mu / d u`` by forward-mode autodiff, or from
    the model's own Jacobian, below): a
    Levenberg-Marquardt loop on the Poisson likelihood (Laurence & Chromy 2010; Gpufit's MLE uses
    the observed-curvature variant ``J^T diag(y / mu^2) J``), with Marquardt damping
    ``(I + lambda diag I) delta = -g``, steps accepted when D does not rise, in a
    ``lax.while_loop`` (:class:`PoissonLevenbergMarquardt`). The expected information is
    positive definite even where counts are 0, which the observed one is not, and costs nothing
    more; where the likelihood pushes a parameter against its bound, the curvature of the change
    of variables (``max(dD/dtheta T''(u), 0)``, ``theta = T(u)``) is added so that the minimum at
    the bound is a proper one. The loop stops when the Newton step is below ``tol`` standard
    errors. A general
    minimiser (BFGS) needs more iterations, and least squares on deviance residuals needs care
    where ``y = mu``; this loop has neither problem.

    A model may provide its Jacobian: a method ``model.value_and_jacobian(theta, args) ->
    (prediction, d prediction / d theta)``, the Jacobian shaped ``prediction.shape + (P,)``, is
    used instead of autodiff of the whole model (e.g. ``fluojax.smlm.estimate.SpotModel``, whose
    separable factors give the Jacobian at a fraction of the cost); it must equal the model's
    derivative. Each iteration solves its damped P x P system by an unrolled Cholesky
    factorisation (P <= 8; LU beyond), which vmaps into plain elementwise arithmetic.

    Data: zero counts are fine; ``d + s < 0`` (read noise below the offset) counts as 0;
    non-finite ``counts``, ``shift`` or ``scale`` mark a pixel invalid (ignored); expected
    counts below 1e-6 are floored at 1e-6. A dataset with no more valid pixels than free
    parameters is :attr:`Status.INVALID_DATA`. All-zero data drive amplitudes towards 0: the fit
    ends at a lower bound (:attr:`Status.AT_BOUND`) or converges there, never NaN.
    ``chi2_reduced`` is the deviance ``2 D`` per degree of freedom (``n_valid - free``),
    ~1 for a good model. Pure and jit/vmap-able; float32 unless the inputs are float64.

    Arguments:
        model: ``model(theta, args) -> array`` of expected counts (e.g. photons) shaped like
            ``counts``; theta is (P,).
        counts: array, the observed (or Poisson-equivalent, ``fluojax.noise.Camera.
            poisson_equivalent``) counts.
        init: (P,) start values (clipped into the bounds).
        args: pytree passed through to ``model``.
        shift: None (0) or array broadcast against ``counts``, known expected counts added to
            data and model.
        scale: None (1) or array broadcast against ``counts``, expected counts per model unit
            (e.g. a camera's quantum efficiency).
        free: static tuple of P bools (default: all free).
        lower, upper: (P,) static bounds (None or +-inf for unbounded).
        log_scale: (P,) static bools; bound/transform those parameters in log space (need
            lower >= 0).
        solver: :class:`PoissonLevenbergMarquardt` settings.

    Returns:
        ``FitResult`` with ``params`` (P,), scalar ``status``, ``num_steps``, ``chi2_reduced``
        (reduced deviance); NaN parameters unless the fit converged or ended at a bound.
    """
    return _mask_failed(
        _poisson_mle_unmasked(
            model,
            counts,
            init,
            args,
            shift=shift,
            scale=scale,
            free=free,
            lower=lower,
            upper=upper,
            log_scale=log_scale,
            solver=solver,
        )
    )


def poisson_mle_batch(
    model: Model,
    counts: Float[ArrayLike, "b ..."],
    init: Float[ArrayLike, "b p"] | Float[ArrayLike, " p"],
    args: Any = None,
    *,
    shift: Float[ArrayLike, "b ..."] | None = None,
    scale: Float[ArrayLike, "b ..."] | None = None,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> FitResult:
    """Fit many datasets (spots, pixels) by :func:`poisson_mle`, as compiled, vmapped chunks.

    ``args`` is shared by all datasets. The datasets run in chunks of ``chunk``
    (:func:`fluojax.batching.map_padded`: the last chunk padded, so any count compiles once per
    chunk size); a chunk iterates until its slowest fit stops (Poisson fits of a spot take a
    similar, small number of steps). Results equal ``jax.vmap(poisson_mle)`` up to rounding.

    Arguments:
        model, args, options: as for :func:`poisson_mle` (``free``, ``lower``, ``upper``,
            ``log_scale``, ``solver``).
        counts: (B, ...) array, one dataset per row, each shaped like the model's output.
        init: (B, P) per-dataset or (P,) shared start values.
        shift, scale: None or arrays broadcast against ``counts`` (per dataset and pixel).
        chunk: int, datasets per compiled call. Default: 256 on CPU, 8192 on accelerators.
        progress: optional callable receiving the number of datasets finished in each chunk.

    Returns:
        ``FitResult`` of NumPy arrays with leading dimension B.
    """
    counts = np.asarray(counts)
    # float32, float64 under x64 with float64 data
    dtype = jax.dtypes.canonicalize_dtype(np.result_type(counts.dtype, np.float32))
    counts = counts.astype(dtype)
    n = counts.shape[0]
    starts = np.array(np.broadcast_to(np.asarray(init), (n, np.shape(init)[-1])))
    # absent shift and scale stay None (0 and 1 inside the compiled chunk: nothing to pad or copy)
    shift = None if shift is None else np.broadcast_to(np.asarray(shift, dtype), counts.shape)
    scale = None if scale is None else np.broadcast_to(np.asarray(scale, dtype), counts.shape)
    per_call = max(1, min(_default_slots() if chunk is None else chunk, n))
    static = tuple(sorted((k, _hashable(v)) for k, v in options.items()))
    report = None if progress is None else (lambda out: progress(out.status.size))

    def run(part, _count):
        return _poisson_chunk(model, *part, args, static)

    return _mask_failed(map_padded(run, (counts, shift, scale, starts), per_call, on_batch=report), np)


@functools.partial(jax.jit, static_argnames=("model", "options"))
def _poisson_chunk(model, counts, shift, scale, init, args, options):
    """One compiled, vmapped chunk of unmasked :func:`poisson_mle` (cached per model and options)."""
    opts = dict(options)
    return jax.vmap(lambda d, s, c, i: _poisson_mle_unmasked(model, d, i, args, shift=s, scale=c, **opts))(
        counts, shift, scale, init
    )


def fisher_information(
    model: Model, theta: Float[ArrayLike, " p"], sigma: Float[ArrayLike, "*shape"], args: Any = None
) -> Float[Array, "p p"]:
    """Fisher information ``J^T diag(1/sigma^2) J`` for independent Gaussian errors of known s.d.

    ``J_ij = d model_i / d theta_j`` by forward-mode autodiff. This is also the weighted
    least-squares information whose inverse is the linearised covariance of the fit
    (:func:`parameter_covariance`).

    Arguments:
        model: ``model(theta, args) -> array``.
        theta: (P,) parameters at which to evaluate.
        sigma: array like the model output, standard deviations.
        args: passed to ``model``.

    Returns:
        (P, P) Fisher information matrix.
    """
    jac = jax.jacfwd(lambda t: jnp.ravel(model(t, args)))(theta)
    w = jnp.ravel(1.0 / jnp.asarray(sigma) ** 2)
    return jac.T @ (w[:, None] * jac)


def poisson_fisher_information(
    model: Model,
    theta: Float[ArrayLike, " p"],
    args: Any = None,
    *,
    shift: Float[ArrayLike, "*shape"] | None = None,
    scale: Float[ArrayLike, "*shape"] | None = None,
) -> Float[Array, "p p"]:
    """Fisher information of independent Poisson counts with means ``mu = scale model(theta, args) + s``.

        I(theta) = J^T diag(1 / mu) J,      J_ij = d mu_i / d theta_j

    (from log L = sum_i k_i ln mu_i - mu_i; E[k_i] = mu_i; J by forward-mode autodiff, or the
    model's own ``value_and_jacobian``, see :func:`poisson_mle`). ``shift`` s and ``scale`` are those
    of :func:`poisson_mle` (defaults 0 and 1): with an sCMOS read variance as shift, the
    information of Huang et al. 2013's likelihood. Bins with mu_i <= 0 carry no information and
    get zero weight.

    Arguments:
        model: ``model(theta, args) -> array`` of expected counts (photons, not ADU).
        theta: (P,) parameters at which to evaluate.
        args: passed to ``model``.
        shift: None or array broadcast against the model output, known expected counts.
        scale: None or array broadcast against the model output, counts per model unit.

    Returns:
        (P, P) Fisher information matrix.
    """
    theta = jnp.asarray(theta)
    mu, jac = _model_and_jacobian(model, theta, args)
    if scale is not None:
        c = jnp.broadcast_to(jnp.asarray(scale, mu.dtype), mu.shape)
        mu, jac = c * mu, c[..., None] * jac
    if shift is not None:
        mu = mu + jnp.asarray(shift, mu.dtype)
    mu, jac = jnp.ravel(mu), jnp.reshape(jac, (-1, theta.shape[-1]))
    w = jnp.where(mu > 0, 1.0 / jnp.where(mu > 0, mu, 1.0), 0.0)
    return jac.T @ (w[:, None] * jac)


def covariance_from_fisher(
    info: Float[Array, "p p"],
    residual_variance: Float[ArrayLike, ""] | None = None,
    *,
    free: tuple[bool, ...] | None = None,
) -> Float[Array, "p p"]:
    """The inverse of a Fisher information matrix: the one path to every covariance and CRLB here.

    ``Cov = s^2 I^{-1}`` over the free block; rows and columns of fixed parameters are zero. The
    block is inverted after scaling to unit diagonal (``D^-1/2 I D^-1/2``), which keeps float32
    accurate for parameters of very different scales, and symmetrised. A singular information
    matrix gives non-finite entries.

    Arguments:
        info: (P, P) Fisher information (:func:`fisher_information`, :func:`poisson_fisher_information`).
        residual_variance: None or scalar s^2 multiplying the covariance.
        free: static tuple of P bools (default: all free).

    Returns:
        (P, P) covariance matrix.
    """
    n_params = info.shape[-1]
    idx = _free_indices(n_params, free)
    info = info[np.ix_(idx, idx)]
    scale = 1.0 / jnp.sqrt(jnp.diag(info))
    sub = jnp.linalg.inv(info * scale[:, None] * scale[None, :]) * scale[:, None] * scale[None, :]
    sub = 0.5 * (sub + sub.T)
    if residual_variance is not None:
        sub = sub * jnp.asarray(residual_variance, sub.dtype)
    return jnp.zeros((n_params, n_params), sub.dtype).at[np.ix_(idx, idx)].set(sub)


def crlb(
    model: Model, theta: Float[ArrayLike, " p"], sigma: Float[ArrayLike, "*shape"], args: Any = None
) -> Float[Array, " p"]:
    """Cramer-Rao lower bound on the standard deviation of each parameter (Gaussian errors).

    ``sqrt(diag(I(theta)^-1))`` with ``I`` from :func:`fisher_information`: the square root of the
    diagonal of :func:`parameter_covariance` at the true parameters with absolute ``sigma``.

    Arguments:
        model, theta, sigma, args: as for :func:`fisher_information`.

    Returns:
        (P,) smallest achievable standard deviation of an unbiased estimator of each parameter.
    """
    return jnp.sqrt(jnp.diag(parameter_covariance(model, theta, sigma, args)))


def poisson_crlb(
    model: Model,
    theta: Float[ArrayLike, " p"],
    args: Any = None,
    *,
    shift: Float[ArrayLike, "*shape"] | None = None,
    scale: Float[ArrayLike, "*shape"] | None = None,
) -> Float[Array, " p"]:
    """Cramer-Rao bound on the s.d. of each parameter for Poisson counts.

    ``sqrt(diag(I(theta)^-1))`` with ``I`` from :func:`poisson_fisher_information` (inverted by
    :func:`covariance_from_fisher`); e.g. for counts of mean lambda in n bins, sqrt(lambda / n).

    Arguments:
        model, theta, args, shift, scale: as for :func:`poisson_fisher_information`.

    Returns:
        (P,) smallest achievable s.d. of an unbiased estimator of each parameter (units of theta).
    """
    info = poisson_fisher_information(model, theta, args, shift=shift, scale=scale)
    return jnp.sqrt(jnp.diag(covariance_from_fisher(info)))


# ----------------------------------------------------------------------------------------------
# Multiple starts, covariance and confidence intervals
# ----------------------------------------------------------------------------------------------


def least_squares_multistart(
    model: Model,
    data: Float[ArrayLike, "*shape"],
    sigma: Float[ArrayLike, "*shape"],
    starts: Float[ArrayLike, "k p"],
    args: Any = None,
    **options,
) -> FitResult:
    """Fit one dataset from K start vectors and keep the best fit (a global-search heuristic).

    A nonlinear chi^2 surface can have several local minima; Levenberg-Marquardt finds the one
    whose basin holds the start. With starts ``theta_0^(1..K)`` (e.g. drawn from a prior or
    uniformly in the bounds, as Röding et al. 2019's FRAP code does), each is refined by
    :func:`least_squares` (vmapped, so all K solves run together) and the result

        k* = argmin_k { chi^2(theta_hat^(k)) : status_k in (CONVERGED, AT_BOUND) }

    is returned. All starts see the same valid points, so comparing ``chi2_reduced`` is comparing
    chi^2. If no start succeeds, the result of the first start is returned (NaN parameters and
    its failure status). ``num_steps`` is the total over the K solves. Pure and jit/vmap-able:
    vmap it over datasets (or use :func:`least_squares_multistart_batch`).

    Arguments:
        model: ``model(theta, args) -> array`` shaped like ``data``; theta is (P,).
        data: array, the measurements.
        sigma: array like ``data``, standard errors (as in :func:`least_squares`).
        starts: (K, P) start vectors (each clipped into the bounds); fixed parameters
            (``free``) take their values from each start row.
        args: pytree passed through to ``model``.
        options: keyword options of :func:`least_squares` (``free``, ``lower``, ``upper``,
            ``log_scale``, ``solver``).

    Returns:
        ``FitResult`` of the best start: ``params`` (P,), scalar ``status``, ``num_steps``
        (summed over starts), ``chi2_reduced``.
    """
    starts = jnp.atleast_2d(jnp.asarray(starts))
    fits = jax.vmap(lambda s: least_squares(model, data, sigma, s, args, **options))(starts)
    return _best_start(fits, jnp)


def _best_start(fits: FitResult, xp) -> FitResult:
    """The fit of lowest chi^2 among the successful ones of K starts (the last axis of ``status``
    and ``chi2_reduced``, the one before the parameters' axis in ``params``; the first start if
    none succeeded), with ``num_steps`` summed over the starts. ``xp``: jnp or np."""
    good = succeeded(fits.status, fits.params, xp, chi2=fits.chi2_reduced)
    best = xp.argmin(xp.where(good, fits.chi2_reduced, xp.inf), axis=-1)
    best = xp.where(xp.any(good, axis=-1), best, 0)

    def pick(x):
        index = best.reshape(best.shape + (1,) * (x.ndim - best.ndim))
        return xp.take_along_axis(x, index, axis=best.ndim).squeeze(best.ndim)

    return FitResult(
        pick(fits.params), pick(fits.status), xp.sum(fits.num_steps, axis=-1).astype(xp.int32), pick(fits.chi2_reduced)
    )


def least_squares_multistart_batch(
    model: Model,
    data: Float[ArrayLike, "b m"],
    sigma: Float[ArrayLike, "b m"],
    starts: Float[ArrayLike, "k p"] | Float[ArrayLike, "b k p"],
    args: Any = None,
    *,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
    **options,
) -> FitResult:
    """:func:`least_squares_multistart` over many datasets: every (dataset, start) pair is one
    fit of :func:`least_squares_batch` (slot refilling), then each dataset keeps its best start.

    Arguments:
        model, args, options: as for :func:`least_squares`.
        data, sigma: (B, M) arrays.
        starts: (K, P) starts shared by all datasets, or (B, K, P) per dataset.
        chunk: datasets whose K fits iterate together. Default: 256 // K on CPU (at least 1),
            8192 // K on accelerators (at least 1).
        progress: optional callable receiving the number of datasets finished in each segment.

    Returns:
        ``FitResult`` of NumPy arrays with leading dimension B; ``num_steps`` summed over starts.
    """
    data = np.asarray(data)
    sigma = np.asarray(sigma)
    n = data.shape[0]
    starts = np.asarray(starts)
    if starts.ndim == 2:
        starts = starts[None]
    starts = np.broadcast_to(starts, (n,) + starts.shape[-2:])
    n_starts = starts.shape[1]
    if chunk is None:
        chunk = max(1, _default_slots() // n_starts)
    report = None if progress is None else (lambda fits: progress(fits // n_starts))
    fits = least_squares_batch(
        model,
        np.repeat(data, n_starts, axis=0),
        np.repeat(sigma, n_starts, axis=0),
        starts.reshape(n * n_starts, -1),
        args,
        chunk=max(1, chunk) * n_starts,
        progress=report,
        **options,
    )
    per_start = FitResult(*(x.reshape((n, n_starts) + x.shape[1:]) for x in fits))
    return _best_start(per_start, np)


def parameter_covariance(
    model: Model,
    theta: Float[ArrayLike, " p"],
    sigma: Float[ArrayLike, "*shape"],
    args: Any = None,
    residual_variance: Float[ArrayLike, ""] | None = None,
    *,
    free: tuple[bool, ...] | None = None,
) -> Float[Array, "p p"]:
    """Asymptotic covariance of the weighted least-squares estimate (linearised at ``theta``).

    With ``J = d model / d theta`` and ``W = diag(1 / sigma^2)``,

        Cov(theta_hat) = s^2 (J^T W J)^{-1},

    ``J^T W J`` being :func:`fisher_information`. When ``sigma`` are the true noise standard
    deviations, ``s^2 = 1`` (``residual_variance=None``). When the noise level is unknown and
    ``sigma`` are only relative weights (e.g. all ones), pass the fit's reduced chi^2,
    ``s^2 = chi^2 / (n - p)`` (``FitResult.chi2_reduced``): the residual-based estimate of the
    factor by which the assumed variances are off (scipy's ``curve_fit(absolute_sigma=False)``).
    With unit sigma, ``s^2`` is the estimated noise variance itself.

    The inverse is :func:`covariance_from_fisher`'s (free block only; fixed parameters get zero
    rows and columns). Points with non-finite or non-positive sigma get zero weight. A singular
    information matrix gives non-finite entries.

    Arguments:
        model: ``model(theta, args) -> array``.
        theta: (P,) parameters (usually the fitted ones).
        sigma: array like the model output, standard deviations (or relative weights).
        args: passed to ``model``.
        residual_variance: None (sigma absolute) or scalar s^2 multiplying the covariance.
        free: static tuple of P bools (default: all free).

    Returns:
        (P, P) covariance matrix.
    """
    theta = jnp.asarray(theta)
    sigma = jnp.asarray(sigma, theta.dtype)
    valid = jnp.isfinite(sigma) & (sigma > 0)
    sigma = jnp.where(valid, sigma, jnp.inf)  # weight 1/inf^2 = 0
    return covariance_from_fisher(fisher_information(model, theta, sigma, args), residual_variance, free=free)


def normal_quantile(level: float) -> float:
    """Two-sided standard-normal quantile ``z = Phi^-1((1 + level) / 2)`` (1.960 for 0.95).

    Arguments:
        level: float in (0, 1), coverage probability.

    Returns:
        z as a Python float.

    Raises:
        ValueError: ``level`` outside (0, 1).
    """
    import statistics

    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    return statistics.NormalDist().inv_cdf(0.5 + 0.5 * level)


def wald_intervals(
    theta: Float[ArrayLike, " p"],
    cov: Float[ArrayLike, "p p"],
    *,
    level: float = 0.95,
    log_scale: Bool[ArrayLike, " p"] | None = None,
) -> tuple[Float[Array, " p"], Float[Array, " p"]]:
    """Wald confidence intervals ``theta_j +- z sd_j`` from a covariance matrix.

    ``sd_j = sqrt(Cov_jj)`` and ``z`` = :func:`normal_quantile` (level). For ``log_scale``
    parameters (positive scale parameters such as D) the interval is built on ``log theta`` with
    ``sd(log theta) = sd / theta`` (delta method): ``theta exp(+-z sd / theta)``, which stays
    positive.

    Arguments:
        theta: (P,) parameters.
        cov: (P, P) their covariance (:func:`parameter_covariance`, :func:`covariance_from_fisher`).
        level: float in (0, 1), coverage probability (static).
        log_scale: optional (P,) static bools, parameters whose interval is built in log space.

    Returns:
        ``(lower, upper)``, each (P,).
    """
    theta = jnp.asarray(theta)
    sd = jnp.sqrt(jnp.diag(cov))
    half = normal_quantile(level) * sd
    lower, upper = theta - half, theta + half
    if log_scale is not None:
        log = np.asarray(log_scale, bool)
        factor = jnp.exp(half / jnp.abs(theta))
        lower = jnp.where(log, theta / factor, lower)
        upper = jnp.where(log, theta * factor, upper)
    return lower, upper


def confidence_intervals(
    model: Model,
    theta: Float[ArrayLike, " p"],
    sigma: Float[ArrayLike, "*shape"],
    args: Any = None,
    residual_variance: Float[ArrayLike, ""] | None = None,
    *,
    level: float = 0.95,
    free: tuple[bool, ...] | None = None,
    log_scale: Bool[ArrayLike, " p"] | None = None,
) -> tuple[Float[Array, " p"], Float[Array, " p"]]:
    """Wald confidence intervals (:func:`wald_intervals`) from :func:`parameter_covariance`.

    These are asymptotic (normal, linearised) intervals: with an estimated ``residual_variance``
    the exact small-sample quantile would be Student's t with n - p degrees of freedom (2.01
    instead of 1.96 at n - p = 50), which this ignores. Fixed parameters get zero-width intervals.

    Arguments:
        model, theta, sigma, args, residual_variance, free: as for :func:`parameter_covariance`.
        level: float in (0, 1), coverage probability (static).
        log_scale: optional (P,) static bools, parameters whose interval is built in log space.

    Returns:
        ``(lower, upper)``, each (P,).
    """
    theta = jnp.asarray(theta)
    cov = parameter_covariance(model, theta, sigma, args, residual_variance, free=free)
    return wald_intervals(theta, cov, level=level, log_scale=log_scale)
