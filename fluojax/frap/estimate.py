"""Least-squares estimation of (D, c0, alpha) from FRAP recovery curves (DeepFRAP's LS baseline).

The model is the fast tabulated curve ``recovery_curve_fast`` (mobile fraction 1, beta 1, the
table's gamma), parameter vector ``theta = (D px^2/s, c0, alpha)``. Each curve is fitted by the
generic engine (:func:`fluojax.fit.least_squares_multistart`) from ``n_starts`` random starts
drawn from the prior (DeepFRAP's LS baseline, Wåhlstrand Skärström et al. 2021: 30 random
starts, best sum of squares kept; ``frap_matlab`` draws them uniformly in the bounds, here they
come from the prior, which for D is log-uniform; docs/frap.md, "5. Where we differ from the
paper, and why"), vmapped over curves in jitted chunks.

Bounds: D within the table's range (``table.d_range_px2_s``; outside it the Chebyshev sum is
meaningless), fitted in log space; c0 in ``[c0_min / 2, 2 c0_max]`` and alpha in
``[alpha_min / 2, 1]`` from the prior (Table 1: c0 in [0.5, 1], alpha in [0.45, 0.95]), i.e. a
bit wider than Table 1 so that true values at the prior's edges are interior points (a fit stuck
on a bound has no meaningful Wald interval).

Noise: with ``noise_variance=None`` the curves are fitted with unit sigma (ordinary LS, as
frap_matlab's ``lsqnonlin`` mode) and the noise variance per curve value is estimated from the
residuals, ``s^2 = RSS / (n - p)`` (``n`` = 110 values, ``p`` = 3 at DeepFRAP settings), which
also scales the covariance. With a known variance the fit is weighted by it, the intervals are
not rescaled, and the reported estimate is ``chi^2 / (n - p)`` times the given variance.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Int

from fluojax import fit
from fluojax.frap.models import FastCurveTable, FrapParams, recovery_curve_fast
from fluojax.frap.simulate import FrapPrior, curve_noise_variance, sample_frap_params
from fluojax.io import InputError
from fluojax.noise import AffineGaussianNoise

__all__ = [
    "FrapFit",
    "fit_recovery_curves",
    "frap_bounds",
    "frap_curve_model",
    "frap_starts",
    "recovery_curve_crlb",
    "start_in_bounds",
]

_LOG_SCALE = (True, False, False)


class FrapFit(NamedTuple):
    """Result of :func:`fit_recovery_curves` (NumPy arrays, leading dimension B).

    Attributes:
        params: (B, 3) fitted (D px^2/s, c0, alpha); NaN where the fit failed.
        ci_lower, ci_upper: (B, 3) confidence limits (95 % by default); the D interval is built on
            ln D (``D exp(+-z sd_D / D)``), c0 and alpha are ``theta +- z sd``.
        stderr: (B, 3) asymptotic standard deviations ``sqrt(diag Cov)``.
        status: (B,) :class:`fluojax.fit.Status` codes of the best start.
        noise_variance: (B,) residual estimate of the noise variance per curve value.
        chi2_reduced: (B,) chi^2 / (n - 3) of the best start (equals ``noise_variance`` when the
            noise variance was not given).
    """

    params: Float[np.ndarray, "b 3"]
    ci_lower: Float[np.ndarray, "b 3"]
    ci_upper: Float[np.ndarray, "b 3"]
    stderr: Float[np.ndarray, "b 3"]
    status: Int[np.ndarray, " b"]
    noise_variance: Float[np.ndarray, " b"]
    chi2_reduced: Float[np.ndarray, " b"]

    @property
    def d_px2_s(self) -> Float[np.ndarray, " b"]:
        """Fitted D in px^2/s."""
        return self.params[:, 0]

    @property
    def c0(self) -> Float[np.ndarray, " b"]:
        """Fitted prebleach intensity c0."""
        return self.params[:, 1]

    @property
    def alpha(self) -> Float[np.ndarray, " b"]:
        """Fitted fraction left per bleach frame."""
        return self.params[:, 2]


def frap_curve_model(theta: Float[Array, " 3"], table: FastCurveTable) -> Float[Array, " t"]:
    """``recovery_curve_fast`` as a fitting model: theta = (D px^2/s, c0, alpha), args = table."""
    return recovery_curve_fast(FrapParams(theta[0], theta[1], theta[2]), table)


def frap_bounds(
    table: FastCurveTable, prior: FrapPrior = FrapPrior()
) -> tuple[Float[np.ndarray, " 3"], Float[np.ndarray, " 3"]]:
    """(lower, upper) bounds of (D, c0, alpha): D in the table's range, c0 in
    ``[c0_min / 2, 2 c0_max]``, alpha in ``[alpha_min / 2, 1]``."""
    d_lo, d_hi = table.d_range_px2_s
    c_lo, c_hi = prior.c0_range
    a_lo, _ = prior.alpha_range
    return np.array([d_lo, 0.5 * c_lo, 0.5 * a_lo]), np.array([d_hi, 2.0 * c_hi, 1.0])


def start_in_bounds(
    start: Float[ArrayLike, "*b 3"], table: FastCurveTable, prior: FrapPrior
) -> Float[np.ndarray, "*b 3"]:
    """Starts (D px^2/s, c0, alpha) moved into the fit's bounds (:func:`frap_bounds`), D just
    inside the table's range, NaN replaced by 1: where a least-squares fit from ``start`` begins.

    Arguments:
        start: (..., 3) starts.
        table: ``FastCurveTable`` of the fit.
        prior: ``FrapPrior`` whose c0 and alpha ranges set the bounds.
    """
    lower, upper = frap_bounds(table, prior)
    return np.asarray(
        np.clip(
            np.nan_to_num(start, nan=1.0),
            [lower[0] * 1.001, lower[1], lower[2]],
            [upper[0] / 1.001, upper[1], upper[2]],
        )
    )


def frap_starts(
    key: jax.Array, n_starts: int, table: FastCurveTable, prior: FrapPrior = FrapPrior()
) -> Float[np.ndarray, "k 3"]:
    """``n_starts`` start vectors (D, c0, alpha) drawn from the prior, D clipped into the table range.

    Returns:
        (n_starts, 3) float array.
    """
    p = sample_frap_params(key, n_starts, prior).params
    d_lo, d_hi = table.d_range_px2_s
    d = np.clip(np.asarray(p.d_px2_s, np.float64), d_lo * 1.001, d_hi / 1.001)
    return np.stack([d, np.asarray(p.c0), np.asarray(p.alpha)], axis=1)


@jax.jit
def recovery_curve_crlb(
    theta: Float[ArrayLike, "b 3"], table: FastCurveTable, noise: AffineGaussianNoise, effective_pixels: float
) -> Float[Array, "b 3"]:
    """Cramer-Rao bound on (D, c0, alpha) from one noisy recovery curve, for B curves at once.

    The curve values are independent Gaussians, ``F_t ~ N(mu_t(theta), v_t)`` with ``mu`` the
    fast curve (Wåhlstrand Skärström et al. 2021, eq. 6) and ``v_t = (a + a' c~_t) / n_eff``
    (:func:`curve_noise_variance`, normalised ROI weights). The Fisher information is
    ``I = J^T diag(1/v) J`` with
    ``J = d mu / d theta`` by forward-mode autodiff (:func:`fluojax.fit.crlb`), and the bound is
    ``sqrt(diag I^-1)``. Exact for a' = 0 (DeepFRAP's Table 1 noise); for a' > 0 it leaves out the
    information in the variance's dependence on theta (a lower bound on I, so a looser bound).
    Boundaries are ignored: near the prior's edges a bounded estimator can beat it.

    Arguments:
        theta: (B, 3) (D px^2/s, c0, alpha).
        table: ``FastCurveTable`` of the ROI (``build_fast_curve_table``).
        noise: ``AffineGaussianNoise`` with (B,) leaves (a, a' per pixel).
        effective_pixels: float, n_eff of the ROI weights (``roi_effective_pixels``).

    Returns:
        (B, 3) smallest s.d. of an unbiased estimator of D (px^2/s), c0 and alpha.
    """

    def one(t, a, a_prime):
        variance = curve_noise_variance(
            frap_curve_model(t, table), AffineGaussianNoise(a, a_prime), effective_pixels, table.roi_sum
        )
        return fit.crlb(frap_curve_model, t, jnp.sqrt(variance), table)

    a = jnp.asarray(noise.a)
    return jax.vmap(one)(jnp.asarray(theta), a, jnp.broadcast_to(jnp.asarray(noise.a_prime, a.dtype), a.shape))


@functools.partial(jax.jit, static_argnames="level")
def _intervals(params, sigma, table, residual_variance, level):
    """Per-curve Wald intervals and standard deviations (vmapped; :func:`fluojax.fit.wald_intervals`,
    D on the log scale); NaN for curves whose fit failed."""

    def one(theta, s, rv):
        cov = fit.parameter_covariance(frap_curve_model, theta, s, table, rv)
        lower, upper = fit.wald_intervals(theta, cov, level=level, log_scale=_LOG_SCALE)
        return lower, upper, jnp.sqrt(jnp.diag(cov))

    safe = jnp.where(jnp.isfinite(params), params, jnp.asarray([10.0, 0.75, 0.7], params.dtype))
    lower, upper, sd = jax.vmap(one)(safe, sigma, residual_variance)
    bad = ~jnp.all(jnp.isfinite(params), axis=1, keepdims=True)
    nan = jnp.asarray(jnp.nan, params.dtype)
    return jnp.where(bad, nan, lower), jnp.where(bad, nan, upper), jnp.where(bad, nan, sd)


def fit_recovery_curves(
    curves: Float[ArrayLike, "b t"] | Float[ArrayLike, " t"],
    table: FastCurveTable,
    *,
    key: jax.Array | None = None,
    n_starts: int = 30,
    starts: Float[ArrayLike, "k 3"] | Float[ArrayLike, "b k 3"] | None = None,
    noise_variance: Float[ArrayLike, "*b"] | Float[ArrayLike, "b t"] | None = None,
    prior: FrapPrior = FrapPrior(),
    level: float = 0.95,
    solver: fit.LevenbergMarquardt = fit.LevenbergMarquardt(),
    chunk: int | None = None,
) -> FrapFit:
    """Fit (D px^2/s, c0, alpha) to recovery curves by multistart weighted least squares.

    For each curve ``y`` (n = n_prebleach + n_postbleach values),
    ``theta_hat = argmin sum_t ((F(t; theta) - y_t) / sigma_t)^2`` over the bounds of
    :func:`frap_bounds` (D in log space), keeping the best of ``n_starts`` Levenberg-Marquardt
    fits started from prior draws (:func:`frap_starts`; one set shared by all curves). Intervals
    are Wald intervals (:func:`fluojax.fit.wald_intervals`) from ``Cov = s^2 (J^T W J)^{-1}``
    (:func:`fluojax.fit.parameter_covariance`),
    ``s^2`` = reduced chi^2 when the noise variance is not given (see the module docstring).

    Arguments:
        curves: (B, n) or (n,) recovery curves (prebleach then postbleach values, as
            ``simulate_curves`` or ``recovery_curve_from_images`` give).
        table: ``FastCurveTable`` of the experiment's geometry and settings.
        key: typed PRNG key for the random starts (needed unless ``starts`` is given).
        n_starts: int, number of random starts (paper: 30).
        starts: optional explicit starts (D px^2/s, c0, alpha) instead of random ones: (K, 3)
            shared or (B, K, 3) per curve, clipped into the bounds. A network's prediction as
            the only start, ``pred[:, None, :]``, gives the hybrid estimator.
        noise_variance: None (estimate from the residuals) or the known variance of each curve
            value: scalar, (B,) or (B, n).
        prior: ``FrapPrior`` the starts are drawn from and the c0/alpha bounds derive from.
        level: coverage of the intervals (default 95 %).
        solver: ``fluojax.fit.LevenbergMarquardt`` settings.
        chunk: curves whose starts iterate together (see ``fit.least_squares_multistart_batch``).

    Returns:
        :class:`FrapFit`.
    """
    curves = np.asarray(curves)
    if curves.ndim == 1:
        curves = curves[None]
    n_curves, n_values = curves.shape
    if n_values != table.n_frames:
        raise InputError(f"curves of {n_values} values: the table's settings give {table.n_frames} frames per curve")
    dtype = jnp.zeros(()).dtype
    curves = curves.astype(dtype)
    if noise_variance is None:
        sigma = np.ones_like(curves)
    else:
        var = np.asarray(noise_variance, np.float64)
        var = var[:, None] if var.ndim == 1 else var
        sigma = np.broadcast_to(np.sqrt(var), curves.shape).astype(dtype)
    lower, upper = frap_bounds(table, prior)
    if starts is None:
        if key is None:
            raise InputError("no PRNG key and no starts: random starts need a key (or give explicit starts)")
        starts = frap_starts(key, n_starts, table, prior).astype(dtype)
    else:
        starts = np.asarray(starts, np.float64)
        if starts.ndim not in (2, 3) or starts.shape[-1] != 3 or (starts.ndim == 3 and starts.shape[0] != n_curves):
            raise InputError(f"starts of shape {starts.shape}: expected (K, 3) or ({n_curves}, K, 3)")
        finite = np.isfinite(starts)
        starts = np.where(finite, starts, 0.5 * (lower + upper))
        inner_lo = np.array([lower[0] * 1.001, *(lower[1:] + 1e-6 * (upper[1:] - lower[1:]))])
        inner_hi = np.array([upper[0] / 1.001, *(upper[1:] - 1e-6 * (upper[1:] - lower[1:]))])
        starts = np.clip(starts, inner_lo, inner_hi).astype(dtype)  # strictly inside the box
    res = fit.least_squares_multistart_batch(
        frap_curve_model,
        curves,
        sigma,
        starts,
        table,
        chunk=chunk,
        lower=lower,
        upper=upper,
        log_scale=_LOG_SCALE,
        solver=solver,
    )
    chi2 = np.asarray(res.chi2_reduced)
    residual_variance = np.ones_like(chi2) if noise_variance is not None else chi2
    ci_lo, ci_hi, sd = jax.device_get(
        _intervals(
            jnp.asarray(res.params),
            jnp.asarray(sigma),
            table,
            jnp.asarray(np.nan_to_num(residual_variance, nan=1.0)),
            float(level),
        )
    )
    if noise_variance is None:
        noise_est = chi2
    else:
        noise_est = chi2 * np.mean(np.broadcast_to(np.asarray(sigma, np.float64) ** 2, curves.shape), axis=1)
    return FrapFit(np.asarray(res.params), ci_lo, ci_hi, sd, np.asarray(res.status), noise_est, chi2)
