"""Compare estimators on the same simulated data: bias, scatter, RMSE, CRLB efficiency, speed.

A technique supplies a simulator ``simulate(key, theta) -> data`` over a batch of true parameter
vectors ``theta`` (N, P), and any number of estimators ``estimate(data) -> theta_hat`` (N, P)
(jitted JAX functions, networks, NLS fits through :func:`fluojax.fit.least_squares_batch`, plain
NumPy: nothing here is jitted or traced). :func:`compare_estimators` then runs

    for every grid point g (true parameters theta_g, shape (P,)):
        data_g = simulate(fold_in(key, g), broadcast(theta_g, (N, P)))   # simulated once
        for every estimator e:   theta_hat[e, g] = estimate_e(data_g)    # same data for all

and reports, per estimator, grid point and parameter, in the *compared coordinate*
``u = ln(theta)`` for log-scale parameters (e.g. D: errors are then relative) and ``u = theta``
otherwise, over the ``n`` valid estimates:

    bias       = mean(u(theta_hat) - u(theta))
    std        = sqrt( sum (u(theta_hat) - mean u(theta_hat))^2 / (n - 1) )
    RMSE       = sqrt( mean (u(theta_hat) - u(theta))^2 )
    MAPE       = 100 % * mean |theta_hat - theta| / |theta|          (natural units)
    CRLB_u     = CRLB(theta)            (linear)    or   CRLB(theta) / theta   (log scale)
    efficiency = CRLB_u^2 / RMSE^2

plus the Spearman rank correlation of estimate and truth pooled over the whole grid, the
fraction of failed estimates and the throughput (samples/s). The CRLB bounds the variance of
*unbiased* estimators, so efficiency <= 1 for them (up to sampling error); a biased estimator
(a shrinking network, a bounded fit) can trade bias for variance and exceed 1.

CRLB helpers: :func:`gaussian_crlb_fn` builds a ``crlb_fn`` from :func:`fluojax.fit.crlb`
(independent Gaussian errors of known s.d.), :func:`poisson_crlb_fn` from
:func:`fluojax.fit.poisson_crlb` (photon counts, Fisher information ``J^T diag(1/mu) J``),
:func:`crlb_from_fisher` from any Fisher matrix (inverted on the host in float64).

Results are a :class:`ComparisonReport` of NumPy arrays; :func:`to_markdown`, :func:`to_csv` and
:func:`fluojax.plotting.plot_report` render it.

Where the truth is not a parameter vector per sample (frames holding a varying number of objects,
scored by matching), :func:`compare_on_frames` runs every estimator on the same data and hands
each result to a technique's ``score(result)`` (any named scalars), timing each estimator; its
:class:`FramesReport` renders with :func:`to_markdown` too.

This module is an engine: it imports no technique package.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from fluojax import fit

__all__ = [
    "CSV_COLUMNS",
    "ComparisonReport",
    "DrawsReport",
    "FramesReport",
    "compare_estimators",
    "compare_on_draws",
    "compare_on_frames",
    "crlb_from_fisher",
    "frames_markdown",
    "gaussian_crlb_fn",
    "poisson_crlb_fn",
    "spearman",
    "to_csv",
    "to_markdown",
]

#: Columns of :func:`to_csv` (and keys of :meth:`ComparisonReport.rows`), in order.
CSV_COLUMNS = (
    "estimator",
    "grid_index",
    "parameter",
    "scale",
    "true",
    "n_samples",
    "n_valid",
    "failed_fraction",
    "bias",
    "std",
    "rmse",
    "mape_percent",
    "crlb",
    "efficiency",
    "median",
    "q16",
    "q84",
    "spearman",
    "seconds",
    "samples_per_s",
)


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


class ComparisonReport(NamedTuple):
    """Everything :func:`compare_estimators` measured (a result: NumPy arrays, float64).

    Shapes use E estimators, G grid points, N samples per point, P parameters. "Compared
    coordinate": ln(theta) for log-scale parameters, theta otherwise.

    Attributes:
        estimator_names: (E,) names, in the order of the ``estimators`` mapping.
        param_names: (P,) parameter names.
        log_scale: (P,) bools, whether each parameter is compared as ln(theta).
        grid: (G, P) true parameters, natural units.
        n_samples: int, N, simulated samples per grid point.
        estimates: (E, G, N, P) raw estimates, natural units (failed ones included as returned).
        valid: (E, G, N) bools, sample used in the statistics (all P estimates finite, and
            positive for log-scale parameters).
        n_valid: (E, G) number of valid samples.
        failed_fraction: (E, G) 1 - n_valid / N.
        bias: (E, G, P) mean error, compared coordinate.
        std: (E, G, P) standard deviation (ddof = 1), compared coordinate.
        rmse: (E, G, P) root-mean-square error, compared coordinate.
        mape: (E, G, P) mean absolute percentage error, %, natural units (NaN where theta = 0).
        median, q16, q84: (E, G, P) median and 16th/84th percentiles of the estimates, natural units.
        crlb: (G, P) Cramer-Rao bound on the s.d., compared coordinate (CRLB / theta for log
            scale); NaN where no bound was given.
        efficiency: (E, G, P) crlb^2 / rmse^2; NaN without a bound.
        spearman: (E, P) Spearman rank correlation of valid estimates with the truth, pooled over
            the grid; NaN where either is constant (see :func:`spearman`).
        seconds: (E, G) median wall time (s) of the timed estimator calls at each grid point
            (compilation excluded, see :func:`compare_estimators`).
        samples_per_s: (E, G) N / seconds.
        overall_samples_per_s: (E,) N / median of all timed calls of the estimator.
    """

    estimator_names: tuple[str, ...]
    param_names: tuple[str, ...]
    log_scale: tuple[bool, ...]
    grid: Float[np.ndarray, "g p"]
    n_samples: int
    estimates: Float[np.ndarray, "e g n p"]
    valid: Bool[np.ndarray, "e g n"]
    n_valid: Int[np.ndarray, "e g"]
    failed_fraction: Float[np.ndarray, "e g"]
    bias: Float[np.ndarray, "e g p"]
    std: Float[np.ndarray, "e g p"]
    rmse: Float[np.ndarray, "e g p"]
    mape: Float[np.ndarray, "e g p"]
    median: Float[np.ndarray, "e g p"]
    q16: Float[np.ndarray, "e g p"]
    q84: Float[np.ndarray, "e g p"]
    crlb: Float[np.ndarray, "g p"]
    efficiency: Float[np.ndarray, "e g p"]
    spearman: Float[np.ndarray, "e p"]
    seconds: Float[np.ndarray, "e g"]
    samples_per_s: Float[np.ndarray, "e g"]
    overall_samples_per_s: Float[np.ndarray, " e"]

    @property
    def has_crlb(self) -> bool:
        """Whether a Cramer-Rao bound was computed (anywhere on the grid)."""
        return bool(np.any(np.isfinite(self.crlb)))

    def rows(self) -> list[dict[str, Any]]:
        """Tidy rows, one per (estimator, grid point, parameter), keyed by :data:`CSV_COLUMNS`.

        ``scale`` is ``"ln"`` or ``"linear"`` (the coordinate of bias/std/rmse/crlb).
        """
        out = []
        for e, name in enumerate(self.estimator_names):
            for g in range(self.grid.shape[0]):
                for p, pname in enumerate(self.param_names):
                    out.append(
                        {
                            "estimator": name,
                            "grid_index": g,
                            "parameter": pname,
                            "scale": "ln" if self.log_scale[p] else "linear",
                            "true": float(self.grid[g, p]),
                            "n_samples": int(self.n_samples),
                            "n_valid": int(self.n_valid[e, g]),
                            "failed_fraction": float(self.failed_fraction[e, g]),
                            "bias": float(self.bias[e, g, p]),
                            "std": float(self.std[e, g, p]),
                            "rmse": float(self.rmse[e, g, p]),
                            "mape_percent": float(self.mape[e, g, p]),
                            "crlb": float(self.crlb[g, p]),
                            "efficiency": float(self.efficiency[e, g, p]),
                            "median": float(self.median[e, g, p]),
                            "q16": float(self.q16[e, g, p]),
                            "q84": float(self.q84[e, g, p]),
                            "spearman": float(self.spearman[e, p]),
                            "seconds": float(self.seconds[e, g]),
                            "samples_per_s": float(self.samples_per_s[e, g]),
                        }
                    )
        return out


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each tie group
    return (last - (counts - 1) / 2.0)[inverse.ravel()]


def spearman(x: Float[ArrayLike, " n"], y: Float[ArrayLike, " n"]) -> float:
    """Spearman rank correlation: the Pearson correlation of the (tie-averaged) ranks.

        rho = cov(R(x), R(y)) / (sd(R(x)) sd(R(y)))

    Ties get the mean of the ranks they span (as ``scipy.stats.spearmanr``), so an estimator
    that reproduces the truth exactly has rho = 1 even though a grid truth repeats N times.

    Arguments:
        x, y: (n,) finite values.

    Returns:
        rho in [-1, 1]; NaN when n < 2 or either input is constant (undefined: a constant
        estimator carries no ranking information, and NaN keeps it from passing as "0 =
        uncorrelated").
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal lengths, got {x.size} and {y.size}")
    if x.size < 2:
        return math.nan
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(np.dot(rx, rx)) * float(np.dot(ry, ry)))
    if denom == 0.0:
        return math.nan
    return float(np.clip(np.dot(rx, ry) / denom, -1.0, 1.0))


def _point_stats(est: np.ndarray, truth: np.ndarray, log: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics of valid estimates ``est`` (n, P) of one grid point ``truth`` (P,)."""
    n, n_params = est.shape
    nan = np.full(n_params, np.nan)
    if n == 0:
        return dict(bias=nan, std=nan, rmse=nan, mape=nan, median=nan, q16=nan, q84=nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        u_hat = np.where(log, np.log(np.where(log, est, 1.0)), est)
        u_true = np.where(log, np.log(np.where(log, truth, 1.0)), truth)
        err = u_hat - u_true
        abs_true = np.abs(truth)
        mape = np.where(abs_true > 0, 100.0 * np.mean(np.abs(est - truth), axis=0) / abs_true, np.nan)
    q16, median, q84 = np.percentile(est, [16.0, 50.0, 84.0], axis=0)
    return dict(
        bias=err.mean(axis=0),
        std=u_hat.std(axis=0, ddof=1) if n > 1 else nan,
        rmse=np.sqrt(np.mean(err**2, axis=0)),
        mape=mape,
        median=median,
        q16=q16,
        q84=q84,
    )


# --------------------------------------------------------------------------------------------
# Cramer-Rao bounds
# --------------------------------------------------------------------------------------------


def crlb_from_fisher(
    fisher_fn: Callable[[Float[np.ndarray, " p"]], Float[ArrayLike, "p p"]],
) -> Callable[[Float[np.ndarray, " p"]], Float[np.ndarray, " p"]]:
    """Turn ``fisher_fn(theta) -> (P, P)`` Fisher information into ``crlb_fn(theta) -> (P,)``.

    Arguments:
        fisher_fn: Fisher information of one sample's data at theta (P,).

    Returns:
        ``crlb_fn(theta) = sqrt(diag(fisher_fn(theta)^-1))`` as a float64 NumPy array.
    """

    def crlb_fn(theta):
        info = np.asarray(fisher_fn(theta), np.float64)
        return np.sqrt(np.diag(np.linalg.inv(info)))

    return crlb_fn


def gaussian_crlb_fn(
    model: fit.Model,
    sigma_fn: Callable[[Float[Array, " p"]], Float[ArrayLike, "*shape"]] | Float[ArrayLike, "*shape"],
    args: Any = None,
) -> Callable[[Float[ArrayLike, " p"]], Float[np.ndarray, " p"]]:
    """``crlb_fn`` for one dataset ``y ~ Normal(model(theta, args), sigma^2)`` via :func:`fluojax.fit.crlb`.

    The bound is ``sqrt(diag((J^T diag(1/sigma^2) J)^-1))``. ``sigma`` is evaluated at theta but
    treated as known: where the noise itself depends on theta (shot noise), the full Gaussian
    information has an extra ``1/2 tr(S^-1 dS S^-1 dS)`` term, so this bound is then slightly
    loose (an efficient estimator can beat it); use :func:`poisson_crlb_fn` for pure counts.

    Arguments:
        model: ``model(theta, args) -> array``, the noise-free data of one sample.
        sigma_fn: ``sigma_fn(theta) -> array`` like the model output (s.d., data units), or a
            fixed array / scalar.
        args: passed to ``model``.

    Returns:
        ``crlb_fn(theta) -> (P,)`` NumPy float64, units of theta.
    """

    def crlb_fn(theta):
        theta = jnp.asarray(theta)
        sigma = sigma_fn(theta) if callable(sigma_fn) else sigma_fn
        shape = jnp.shape(model(theta, args))
        return np.asarray(fit.crlb(model, theta, jnp.broadcast_to(jnp.asarray(sigma), shape), args), np.float64)

    return crlb_fn


def poisson_crlb_fn(model: fit.Model, args: Any = None) -> Callable[[Float[ArrayLike, " p"]], Float[np.ndarray, " p"]]:
    """``crlb_fn`` for one dataset of independent Poisson counts of mean ``model(theta, args)``.

    Arguments:
        model: ``model(theta, args) -> array`` of expected counts per bin/pixel/frame.
        args: passed to ``model``.

    Returns:
        ``crlb_fn(theta) -> (P,)`` NumPy float64 from :func:`fluojax.fit.poisson_crlb`, units of theta.
    """

    def crlb_fn(theta):
        return np.asarray(fit.poisson_crlb(model, jnp.asarray(theta), args), np.float64)

    return crlb_fn


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------


def _signature(data) -> tuple:
    """Tree structure, shapes and dtypes of a data batch (what a jitted estimator compiles on)."""
    leaves, treedef = jax.tree.flatten(data)
    return (str(treedef),) + tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__))) for x in leaves)


def _call_timed(estimate: Callable, data) -> tuple[Any, float]:
    start = time.perf_counter()
    out = jax.block_until_ready(estimate(data))
    return out, time.perf_counter() - start


def _as_estimates(out, name: str, n: int, n_params: int) -> np.ndarray:
    est = np.asarray(jax.device_get(out), np.float64)
    if est.ndim == 1 and n_params == 1:
        est = est[:, None]
    if est.shape != (n, n_params):
        raise ValueError(
            f"estimator {name!r} returned shape {est.shape}; expected ({n}, {n_params})"
            + (" or (N,)" if n_params == 1 else "")
        )
    return est


def _log_mask(log_scale, param_names: tuple[str, ...]) -> np.ndarray:
    n_params = len(param_names)
    if log_scale is None or isinstance(log_scale, bool):
        return np.full(n_params, bool(log_scale))
    items = list(log_scale)
    if all(isinstance(x, str) for x in items) and items:
        unknown = set(items) - set(param_names)
        if unknown:
            raise ValueError(f"log_scale names {sorted(unknown)} are not in param_names {list(param_names)}")
        return np.array([p in items for p in param_names])
    if not items:
        return np.zeros(n_params, bool)
    mask = np.asarray(items, bool)
    if mask.shape != (n_params,):
        raise ValueError(f"log_scale needs {n_params} bools (or parameter names), got {items}")
    return mask


def _run_estimators(
    estimators: Mapping[str, Callable[[Any], Any]],
    data,
    n: int,
    n_params: int,
    timing_repeats: int,
    warm_up: Callable[[str], Any],
) -> tuple[np.ndarray, list[list[float]]]:
    """The one core of both harnesses: every estimator on the same ``data``, warmed up, then timed.

    For each estimator in order: ``warm_up(name)`` gives the data of its untimed warm-up call (or
    None: no warm-up), then ``timing_repeats`` timed calls on ``data``; the estimates come from
    the first.

    Returns:
        ``(estimates (E, n, P) float64, times)``, ``times[e]`` the wall times (s) of estimator e's
        timed calls.
    """
    estimates = np.full((len(estimators), n, n_params), np.nan)
    times: list[list[float]] = []
    for e, (name, estimate) in enumerate(estimators.items()):
        warm = warm_up(name)
        if warm is not None:
            jax.block_until_ready(estimate(warm))
        out, dt = _call_timed(estimate, data)
        times.append([dt] + [_call_timed(estimate, data)[1] for _ in range(int(timing_repeats) - 1)])
        estimates[e] = _as_estimates(out, name, n, n_params)
    return estimates, times


def _valid(estimates: np.ndarray, log: np.ndarray) -> np.ndarray:
    """Usable estimates: all P finite, and positive for log-scale parameters (a logarithm exists)."""
    with np.errstate(invalid="ignore"):
        return np.all(np.isfinite(estimates) & (~log | (estimates > 0)), axis=-1)


def _rank_correlations(estimates: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(E, P) Spearman correlation of each estimator's valid estimates with the truth.

    ``estimates`` (E, ..., P), ``truth`` (..., P), ``valid`` (E, ...); pooled over the middle axes.
    """
    n_est, n_params = estimates.shape[0], estimates.shape[-1]
    rho = np.full((n_est, n_params), np.nan)
    for e in range(n_est):
        ok = valid[e]
        for p in range(n_params):
            rho[e, p] = spearman(estimates[e][..., p][ok], truth[..., p][ok])
    return rho


def compare_estimators(
    estimators: Mapping[str, Callable[[Any], Any]],
    simulate: Callable[[jax.Array, Float[Array, "n p"]], Any],
    grid: Float[ArrayLike, "g p"] | Float[ArrayLike, " g"],
    n_samples: int,
    key: jax.Array,
    *,
    param_names: Sequence[str],
    log_scale: Sequence[bool] | Sequence[str] | bool = (),
    crlb_fn: Callable[[Float[np.ndarray, " p"]], Float[ArrayLike, " p"]] | None = None,
    fisher_fn: Callable[[Float[np.ndarray, " p"]], Float[ArrayLike, "p p"]] | None = None,
    timing_repeats: int = 1,
    progress: bool | None = None,
) -> ComparisonReport:
    """Run every estimator on the same simulated data over a grid of true parameters.

    For grid point g the data are simulated once, ``simulate(jax.random.fold_in(key, g),
    theta_batch)`` with ``theta_batch`` the grid point repeated N times, and every estimator is
    given that same batch. A sample is *failed* for an estimator when any of its P estimates is
    non-finite, or a log-scale estimate is <= 0 (no logarithm); failed samples are counted in
    ``failed_fraction`` and left out of every statistic. The statistics (bias, std, RMSE in ln
    theta for log-scale parameters, MAPE, CRLB, efficiency = CRLB^2/MSE, Spearman) are defined in
    the module docstring and :class:`ComparisonReport`.

    Timing: the first time an estimator meets a data batch of a given structure/shape/dtype it
    is called once untimed (warm-up: JIT compilation, caches); then each grid point's call is
    timed with ``time.perf_counter`` around ``jax.block_until_ready(estimate(data))``, repeated
    ``timing_repeats`` times (estimates come from the first). Simulation time is not counted.
    Estimators are only ever called, never traced, so NumPy code, networks and NLS loops work.
    An exception raised by an estimator propagates.

    Arguments:
        estimators: mapping name -> ``estimate(data) -> (N, P)`` (or (N,) when P = 1) estimated
            parameters, natural units.
        simulate: ``simulate(key, theta_batch) -> data`` (array or pytree, leading axis N);
            ``theta_batch`` is a (N, P) JAX array (default float dtype). Must be deterministic
            for a given key.
        grid: (G, P) true parameter points, natural units ((G,) when P = 1).
        n_samples: int, N, samples simulated per grid point.
        key: JAX PRNG key.
        param_names: (P,) names.
        log_scale: parameters compared as ln(theta): P bools, a collection of names, or one bool
            for all (default: none). Their grid values must be > 0.
        crlb_fn: optional ``crlb_fn(theta (P,)) -> (P,)``, Cramer-Rao bound on the s.d. of each
            parameter (natural units) for one sample's data; see :func:`gaussian_crlb_fn`,
            :func:`poisson_crlb_fn`.
        fisher_fn: optional ``fisher_fn(theta) -> (P, P)`` Fisher information, used via
            :func:`crlb_from_fisher` when ``crlb_fn`` is not given (give at most one).
        timing_repeats: int >= 1, timed calls per estimator and grid point.
        progress: progress over grid points (:func:`fluojax.progress.progress`: None or True, a
            bar on a terminal and a line every ~10 s in logs; False: nothing).

    Returns:
        :class:`ComparisonReport`.
    """
    from fluojax.progress import progress as progress_counter

    if not estimators:
        raise ValueError("give at least one estimator")
    names = tuple(str(k) for k in estimators)
    param_names = tuple(str(p) for p in param_names)
    n_params = len(param_names)
    grid = np.asarray(grid, np.float64)
    if grid.ndim == 1 and n_params == 1:
        grid = grid[:, None]
    if grid.ndim != 2 or grid.shape[1] != n_params or grid.shape[0] == 0:
        raise ValueError(f"grid must be (G, {n_params}) for parameters {list(param_names)}, got shape {grid.shape}")
    n_samples = int(n_samples)
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    if int(timing_repeats) < 1:
        raise ValueError("timing_repeats must be >= 1")
    log = _log_mask(log_scale, param_names)
    if np.any(grid[:, log] <= 0) or not np.all(np.isfinite(grid)):
        raise ValueError("grid values must be finite, and > 0 for log-scale parameters")
    if crlb_fn is not None and fisher_fn is not None:
        raise ValueError("give crlb_fn or fisher_fn, not both")
    if fisher_fn is not None:
        crlb_fn = crlb_from_fisher(fisher_fn)

    n_est, n_grid = len(names), grid.shape[0]
    estimates = np.full((n_est, n_grid, n_samples, n_params), np.nan)
    seconds = np.full((n_est, n_grid), np.nan)
    all_times: list[list[float]] = [[] for _ in names]
    warmed: dict[str, set] = {name: set() for name in estimators}
    crlb = np.full((n_grid, n_params), np.nan)
    dtype = jnp.asarray(0.0).dtype

    with progress_counter(n_grid, "compare", "grid points", enabled=progress) as bar:
        for g in range(n_grid):
            theta_batch = jnp.asarray(np.broadcast_to(grid[g], (n_samples, n_params)), dtype)
            data = jax.block_until_ready(simulate(jax.random.fold_in(key, g), theta_batch))
            sig = _signature(data)

            def warm_up(name, data=data, sig=sig):  # once per data structure/shape/dtype
                if sig in warmed[name]:
                    return None
                warmed[name].add(sig)
                return data

            estimates[:, g], times = _run_estimators(estimators, data, n_samples, n_params, timing_repeats, warm_up)
            for e in range(n_est):
                all_times[e].extend(times[e])
                seconds[e, g] = float(np.median(times[e]))
            if crlb_fn is not None:
                bound = np.asarray(crlb_fn(grid[g]), np.float64).reshape(n_params)
                crlb[g] = np.where(log, bound / grid[g], bound)
            bar.update(1)

    valid = _valid(estimates, log)
    n_valid = valid.sum(axis=-1)

    keys = ("bias", "std", "rmse", "mape", "median", "q16", "q84")
    stats = {k: np.full((n_est, n_grid, n_params), np.nan) for k in keys}
    for e in range(n_est):
        for g in range(n_grid):
            point = _point_stats(estimates[e, g][valid[e, g]], grid[g], log)
            for k in keys:
                stats[k][e, g] = point[k]
    with np.errstate(divide="ignore", invalid="ignore"):
        efficiency = crlb[None] ** 2 / stats["rmse"] ** 2

    rho = _rank_correlations(estimates, np.broadcast_to(grid[:, None, :], (n_grid, n_samples, n_params)), valid)

    overall = np.array([n_samples / np.median(t) if np.median(t) > 0 else np.inf for t in all_times])
    with np.errstate(divide="ignore"):
        samples_per_s = n_samples / seconds
    return ComparisonReport(
        estimator_names=names,
        param_names=param_names,
        log_scale=tuple(bool(x) for x in log),
        grid=grid,
        n_samples=n_samples,
        estimates=estimates,
        valid=valid,
        n_valid=n_valid,
        failed_fraction=1.0 - n_valid / n_samples,
        crlb=crlb,
        efficiency=efficiency,
        spearman=rho,
        seconds=seconds,
        samples_per_s=samples_per_s,
        overall_samples_per_s=overall,
        **stats,
    )


class DrawsReport(NamedTuple):
    """What :func:`compare_on_draws` measured (a result: NumPy float64).

    Shapes: E estimators, N draws, P parameters. Compared coordinate as in
    :class:`ComparisonReport` (ln theta for log-scale parameters). ``w_i`` are the per-draw
    weights normalised to sum 1 over the valid draws of each estimator (uniform by default).

    Attributes:
        estimator_names, param_names, log_scale: as in :class:`ComparisonReport`.
        truth: (N, P) drawn true parameters, natural units.
        weights: (N,) the raw weights given by ``draw`` (ones if none).
        estimates: (E, N, P) raw estimates, natural units.
        valid: (E, N) bools (finite, and positive for log-scale parameters).
        failed_fraction: (E,) fraction of invalid draws.
        mse: (E, P) weighted mean squared error ``sum_i w_i (u_hat_i - u_i)^2``, compared coordinate.
        mse_sem: (E, P) standard error of ``mse`` from the spread of the squared errors,
            ``sqrt(sum_i w_i^2 (e_i^2 - mse)^2)`` (the linearised s.e. of a ratio estimator; for
            uniform weights ``sd(e^2) / sqrt(N)``). Use it before reading meaning into a
            difference of MSEs: a few large errors make the MSE of a finite draw noisy.
        mse_joint: (E,) mean of ``mse`` over the parameters (the "All" of Wåhlstrand Skärström et al. 2021, eq. 9).
        bias: (E, P) weighted mean error, compared coordinate.
        mape: (E, P) unweighted mean absolute percentage error, %, natural units.
        spearman: (E, P) rank correlation of estimate with truth.
        seconds: (E,) median wall time of the timed calls (all N draws at once).
        samples_per_s: (E,) N / seconds.
    """

    estimator_names: tuple[str, ...]
    param_names: tuple[str, ...]
    log_scale: tuple[bool, ...]
    truth: Float[np.ndarray, "n p"]
    weights: Float[np.ndarray, " n"]
    estimates: Float[np.ndarray, "e n p"]
    valid: Bool[np.ndarray, "e n"]
    failed_fraction: Float[np.ndarray, " e"]
    mse: Float[np.ndarray, "e p"]
    mse_joint: Float[np.ndarray, " e"]
    bias: Float[np.ndarray, "e p"]
    mape: Float[np.ndarray, "e p"]
    spearman: Float[np.ndarray, "e p"]
    seconds: Float[np.ndarray, " e"]
    samples_per_s: Float[np.ndarray, " e"]
    mse_sem: Float[np.ndarray, "e p"]


def _head(data, k: int):
    """The first ``k`` samples of every leaf of a data pytree."""
    return jax.tree.map(lambda x: x[:k], data)


def compare_on_draws(
    estimators: Mapping[str, Callable[[Any], Any]],
    draw: Callable[[jax.Array, int], tuple[Any, Any, Any]],
    n_samples: int,
    key: jax.Array,
    *,
    param_names: Sequence[str],
    log_scale: Sequence[bool] | Sequence[str] | bool = (),
    warmup_samples: int | Mapping[str, int] | None = None,
    timing_repeats: int = 1,
) -> DrawsReport:
    """Run every estimator on the same N draws from a prior (every sample has its own truth).

    The complement of :func:`compare_estimators` (fixed grid points): ``draw(key, N)`` returns
    ``(theta (N, P), data, weights (N,) or None)``, every estimator gets the same ``data``, and
    the errors are pooled over the draws with the weights ``w_i`` (normalised over the valid
    draws): ``MSE_p = sum_i w_i (u(theta_hat_ip) - u(theta_ip))^2``. With ``w_i ~ 1 / a_i`` (the
    noise variance of draw i) this is the weighted MSE of Wåhlstrand Skärström et al. 2021 (eq. 9,
    Tables 2-4).

    Timing: each estimator is called once untimed on the first ``warmup_samples`` draws (None:
    on all of them) to compile, then timed on all N, ``timing_repeats`` times (median).

    Arguments:
        estimators: mapping name -> ``estimate(data) -> (N, P)`` estimates, natural units.
        draw: ``draw(key, N) -> (theta, data, weights)``; deterministic for a key.
        n_samples: int, N.
        key: JAX PRNG key.
        param_names: (P,) names.
        log_scale: parameters compared as ln(theta) (as for :func:`compare_estimators`).
        warmup_samples: size of the untimed warm-up call (None: all N), or a mapping
            estimator name -> size. When a full extra call is expensive, give each estimator its
            compiled batch or chunk size, so that the timed call reuses the compilation.
        timing_repeats: int >= 1.

    Returns:
        :class:`DrawsReport`.
    """
    if not estimators:
        raise ValueError("give at least one estimator")
    names = tuple(str(k) for k in estimators)
    param_names = tuple(str(p) for p in param_names)
    n_params, n = len(param_names), int(n_samples)
    log = _log_mask(log_scale, param_names)
    theta, data, weights = draw(key, n)
    truth = np.asarray(jax.device_get(theta), np.float64).reshape(n, n_params)
    raw_w = np.ones(n) if weights is None else np.asarray(jax.device_get(weights), np.float64).reshape(n)
    if np.any(raw_w < 0) or not np.all(np.isfinite(raw_w)):
        raise ValueError("weights must be finite and non-negative")

    def warm_up(name):
        size = warmup_samples.get(name) if isinstance(warmup_samples, Mapping) else warmup_samples
        return data if size is None else _head(data, min(int(size), n))

    estimates, times = _run_estimators(estimators, data, n, n_params, timing_repeats, warm_up)
    seconds = np.array([float(np.median(t)) for t in times])
    valid = _valid(estimates, log)
    with np.errstate(invalid="ignore", divide="ignore"):
        u_true = np.where(log, np.log(np.where(log, truth, 1.0)), truth)
        u_est = np.where(log, np.log(np.where(log, estimates, 1.0)), estimates)
    err = u_est - u_true[None]
    mse = np.full((len(names), n_params), np.nan)
    mse_sem = np.full_like(mse, np.nan)
    bias = np.full_like(mse, np.nan)
    mape = np.full_like(mse, np.nan)
    rho = np.full_like(mse, np.nan)
    for e in range(len(names)):
        ok = valid[e]
        if not ok.any() or raw_w[ok].sum() <= 0:
            continue
        rho[e] = _rank_correlations(estimates[e : e + 1], truth, valid[e : e + 1])[0]
        w = raw_w[ok] / raw_w[ok].sum()
        mse[e] = w @ err[e, ok] ** 2
        mse_sem[e] = np.sqrt((w**2) @ (err[e, ok] ** 2 - mse[e]) ** 2)
        bias[e] = w @ err[e, ok]
        with np.errstate(divide="ignore", invalid="ignore"):
            mape[e] = 100.0 * np.mean(np.abs(estimates[e, ok] - truth[ok]) / np.abs(truth[ok]), axis=0)
    with np.errstate(divide="ignore"):
        rate = n / seconds
    return DrawsReport(
        names,
        param_names,
        tuple(bool(x) for x in log),
        truth,
        raw_w,
        estimates,
        valid,
        1.0 - valid.mean(axis=1),
        mse,
        mse.mean(axis=1),
        bias,
        mape,
        rho,
        seconds,
        rate,
        mse_sem,
    )


class FramesReport(NamedTuple):
    """What :func:`compare_on_frames` measured (a result: NumPy float64 and the raw outputs).

    Shapes: E estimators, S score fields.

    Attributes:
        estimator_names: (E,) names, in the order given.
        score_names: (S,) the fields of the score, in the order the score function returned them.
        scores: (E, S) the score of each estimator's result (NaN where a field is missing for one).
        seconds: (E,) median wall time of the timed calls on the whole data.
        items_per_s: (E,) ``n_items / seconds``.
        n_items: the number of items (e.g. frames) in the data.
        results: (E,) each estimator's output of its first timed call, unchanged.
    """

    estimator_names: tuple[str, ...]
    score_names: tuple[str, ...]
    scores: Float[np.ndarray, "e s"]
    seconds: Float[np.ndarray, " e"]
    items_per_s: Float[np.ndarray, " e"]
    n_items: int
    results: tuple[Any, ...]

    def score(self, estimator: str, field: str) -> float:
        """One entry of :attr:`scores` by estimator name and score field."""
        return float(self.scores[self.estimator_names.index(estimator), self.score_names.index(field)])


def _score_fields(value, name: str) -> dict[str, float]:
    """A score (NamedTuple or mapping of scalars) as an ordered dict name -> float."""
    if isinstance(value, Mapping):
        fields = dict(value)
    elif hasattr(value, "_asdict"):
        fields = value._asdict()
    else:
        raise ValueError(f"the score of estimator {name!r} is a {type(value).__name__}; return a NamedTuple or a dict")
    out = {}
    for key, x in fields.items():
        arr = np.asarray(jax.device_get(x), np.float64)
        if arr.size != 1:
            raise ValueError(f"score field {key!r} of estimator {name!r} has shape {arr.shape}; expected a scalar")
        out[str(key)] = float(arr.reshape(()))
    return out


def _leading_size(data) -> int:
    leaves = jax.tree.leaves(data)
    if not leaves or np.ndim(leaves[0]) == 0:
        raise ValueError("cannot count items in data without a leading axis; give n_items")
    return int(np.shape(leaves[0])[0])


def compare_on_frames(
    estimators: Mapping[str, Callable[[Any], Any]],
    data: Any,
    score: Callable[[Any], Any],
    *,
    warmup: Any = True,
    timing_repeats: int = 1,
    n_items: int | None = None,
) -> FramesReport:
    """Run every estimator on the same data and score each result with the same function.

    For each estimator ``e``: an untimed warm-up call (compilation), then ``timing_repeats``
    timed calls ``result_e = estimate_e(data)`` (the median time is reported; the result of the
    first timed call is kept), then ``score(result_e)``, a NamedTuple or dict of scalars (any
    metric: the harness only tabulates the fields, in the order of the first score returned;
    a field one score lacks is NaN for it). Throughput is ``n_items / seconds``.

    Arguments:
        estimators: mapping name -> ``estimate(data) -> result`` (any pytree or object).
        data: the input every estimator receives (e.g. a stack of frames).
        score: ``score(result) -> NamedTuple | dict`` of scalars; it sees only the result, so the
            truth is closed over by the caller.
        warmup: True (default): one untimed call on ``data``; False: none (compilation is then
            timed); anything else: the data of the untimed call (e.g. the first few frames, when
            the estimator compiles for any batch size or pads to a fixed one).
        timing_repeats: int >= 1, timed calls per estimator.
        n_items: items in ``data`` for the throughput (default: the leading size of its first leaf).

    Returns:
        :class:`FramesReport`.
    """
    if not estimators:
        raise ValueError("give at least one estimator")
    if int(timing_repeats) < 1:
        raise ValueError(f"timing_repeats {timing_repeats}: must be >= 1")
    n = _leading_size(data) if n_items is None else int(n_items)
    names = tuple(str(k) for k in estimators)
    results, seconds, scored = [], [], []
    for name, estimate in estimators.items():
        if warmup is True:
            jax.block_until_ready(estimate(data))
        elif warmup is not False and warmup is not None:
            jax.block_until_ready(estimate(warmup))
        out, dt = _call_timed(estimate, data)
        times = [dt] + [_call_timed(estimate, data)[1] for _ in range(int(timing_repeats) - 1)]
        results.append(out)
        seconds.append(float(np.median(times)))
        scored.append(_score_fields(score(out), str(name)))
    fields: list[str] = []
    for s in scored:
        fields += [k for k in s if k not in fields]
    table = np.array([[s.get(k, np.nan) for k in fields] for s in scored], np.float64).reshape(len(names), len(fields))
    secs = np.asarray(seconds, np.float64)
    with np.errstate(divide="ignore"):
        rate = n / secs
    return FramesReport(names, tuple(fields), table, secs, rate, n, tuple(results))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


def _fmt(x: float, digits: int) -> str:
    return "—" if not np.isfinite(x) else f"{x:.{digits}g}"


def frames_markdown(report: FramesReport, *, digits: int = 4) -> str:
    """A Markdown table of a :class:`FramesReport`: one row per estimator, its score fields,
    seconds and items/s (missing values print as an em dash).

    Arguments:
        report: from :func:`compare_on_frames`.
        digits: significant digits.

    Returns:
        The Markdown text.
    """
    head = ["estimator", *report.score_names, "seconds", "items/s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for e, name in enumerate(report.estimator_names):
        cells = [name, *(_fmt(float(v), digits) for v in report.scores[e])]
        cells += [_fmt(float(report.seconds[e]), 3), _fmt(float(report.items_per_s[e]), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_markdown(report: ComparisonReport | FramesReport, *, digits: int = 4) -> str:
    """Markdown tables: one row per estimator, grid point and parameter, then a summary.

    A :class:`FramesReport` is rendered by :func:`frames_markdown` instead.

    Main columns: estimator, grid point, parameter, true, scale, valid, failed %, bias, std,
    RMSE, MAPE %, CRLB, efficiency, samples/s (bias/std/RMSE/CRLB in the ``scale`` coordinate).
    Summary columns: estimator, parameter, Spearman, overall samples/s, mean failed %.
    Missing values (no CRLB, no valid samples) print as an em dash.

    Arguments:
        report: from :func:`compare_estimators` (or :func:`compare_on_frames`).
        digits: significant digits.

    Returns:
        The Markdown text.
    """
    if isinstance(report, FramesReport):
        return frames_markdown(report, digits=digits)
    head = [
        "estimator",
        "grid point",
        "parameter",
        "true",
        "scale",
        "valid",
        "failed %",
        "bias",
        "std",
        "RMSE",
        "MAPE %",
        "CRLB",
        "efficiency",
        "samples/s",
    ]
    align = ["---" if h in ("estimator", "parameter", "scale") else "---:" for h in head]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in report.rows():
        cells = [
            r["estimator"],
            str(r["grid_index"]),
            r["parameter"],
            _fmt(r["true"], digits),
            r["scale"],
            str(r["n_valid"]),
            _fmt(100.0 * r["failed_fraction"], 3),
            _fmt(r["bias"], digits),
            _fmt(r["std"], digits),
            _fmt(r["rmse"], digits),
            _fmt(r["mape_percent"], digits),
            _fmt(r["crlb"], digits),
            _fmt(r["efficiency"], 3),
            _fmt(r["samples_per_s"], 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| estimator | parameter | Spearman | samples/s | failed % |", "|---|---|---:|---:|---:|"]
    for e, name in enumerate(report.estimator_names):
        for p, pname in enumerate(report.param_names):
            failed = 100.0 * float(np.mean(report.failed_fraction[e]))
            lines.append(
                f"| {name} | {pname} | {_fmt(report.spearman[e, p], digits)} | {_fmt(report.overall_samples_per_s[e], 3)} | {_fmt(failed, 3)} |"
            )
    return "\n".join(lines) + "\n"


def to_csv(report: ComparisonReport, path: str | Path) -> Path:
    """Write :meth:`ComparisonReport.rows` as CSV with header :data:`CSV_COLUMNS`.

    Arguments:
        report: from :func:`compare_estimators`.
        path: output file (parent folders are created).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(report.rows())
    return path
