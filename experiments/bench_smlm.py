"""Benchmark (not a test): fluojax SMLM localization (per-spot Poisson MLE, voxel network) vs. NumPy/SciPy.

What is measured, all in one run (CPU unless JAX sees an accelerator):

1. **Per-spot MLE** (fits per second). Spots: ``ROI x ROI`` pixels of ``a`` nm (default 9 x 9,
   100 nm), a pixel-integrated 2D Gaussian PSF of s.d. 130 nm (Smith et al. 2010, eq. 3),
   ``N`` = 2000 photons, ``b`` = 10 background photons per pixel, Poisson noise, every spot at
   the same true position (a fixed sub-pixel offset from the ROI centre), so that the spread of
   the estimates is the estimator's precision. fluojax fits the 4 parameters
   ``(x nm, y nm, N, b)`` of every spot by its batched Poisson maximum-likelihood solver
   (``fluojax.fit.poisson_mle_batch``: Levenberg-Marquardt on the Poisson likelihood with the
   Fisher information as curvature, vmapped chunks), float32. The baseline is what a Python user
   writes: a loop over spots of ``scipy.optimize.minimize`` on the Poisson negative
   log-likelihood of the same erf-integrated Gaussian, written in NumPy float64
   (``scipy.special.erf``), with an analytic gradient, in two variants timed on the same spots:
   L-BFGS-B (bounds; gradient only) and Newton-CG (analytic gradient and Hessian, no bounds).
   The faster one is the denominator of the ratio ("the stronger baseline"). Before anything is
   timed the baselines are checked against fluojax on a few spots (the same optimum: positions
   within 0.1 nm and the same NLL within 1e-3), and the NumPy model against
   ``fluojax.smlm.models.spot_expected``: a benchmark of a wrong baseline is worthless.
   Beside the rates: the fitted precision as a ratio to the Cramer-Rao bound, s.d.(x_hat) /
   sqrt(CRLB_x) (``fluojax.fit.poisson_crlb`` of the same model at the truth; 1 is efficient),
   for fluojax on all its spots and for the baselines on theirs. fluojax rows: the library's
   ``fluojax.smlm.estimate.fit_rois`` (its start values, the fit, a Cramer-Rao bound per spot)
   and the engine alone from the same starts as SciPy (the default chunk and ``--alt-chunk``; and
   with the library's ``estimate.SpotModel``, which gives the engine its own Jacobian);
   each timed as a first call (compilation included) and as the median of warm calls, the
   variants' warm calls in alternation. The baselines: time per fit, both variants alternating
   spot by spot; rate = 1 / median time per fit (the mean is printed too).
2. **Whole command**: the process time of ``fluojax smlm localize`` on a simulated 2D stack
   (written as a TIFF), if that command exists.
3. **Voxel network** (frames per second): ``fluojax.smlm.nets.VoxelNet`` at the paper's size
   (Aritake et al. 2021, Fig. 3), untrained (throughput does not depend on the weights), jitted,
   float32, on 64 x 64 x 4 and 256 x 256 x 4 frames, end to end from host frames to decoded
   localizations on the host (``nets.decode``). Printed beside the paper's 200 frames/s on an
   NVIDIA V100 (Aritake et al. 2021, Fig. 9 and its text: loading, transfer to the GPU and
   prediction included); different hardware, so no ratio is claimed.
4. On a GPU: fits/s beside Gpufit's (Przybylski et al. 2017) throughput figure (see
   ``GPUFIT_NOTE``).

The CPU of the development machine is shared: rows are medians, and the load average is printed.

Usage:  python experiments/bench_smlm.py [--out docs/bench/smlm_cpu.txt]
        python experiments/bench_smlm.py --quick          (< 3 min on a 2-core CPU)
"""

from __future__ import annotations

import os

# The baseline gets its best setting: one BLAS thread. scipy's L-BFGS-B calls BLAS on 4-vectors;
# with the default thread pool on a loaded 2-core host one fit took ~50 ms instead of ~1 ms.
# Set before NumPy/SciPy load their BLAS; XLA (fluojax) does not use this pool.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fluojax import fit  # noqa: E402
from fluojax.smlm import estimate, models  # noqa: E402

PAPER_FPS = 200.0  # Aritake et al. 2021, Fig. 9 and text: V100, loading + transfer + prediction
GPUFIT_NOTE = (
    "Gpufit (Przybylski et al. 2017, Sci Rep 7:15722): the paper's fits/s figures not verified here; "
    "the example output in the Gpufit repository (examples/Gpufit_Cpufit_Performance_Comparison_readme.txt) "
    "shows 3.04e6 fits/s for 1e7 GAUSS_2D fits (least squares, 5 parameters, its own test spots; GPU not named)"
)


# ----------------------------------------------------------------------------------------------
# the spot model: fluojax (JAX) and the NumPy baseline
# ----------------------------------------------------------------------------------------------


def spot_model(theta, grid):
    """Expected photons of one spot, ``theta = (x nm, y nm, N photons, b photons/pixel)``: (ny, nx)."""
    position = jnp.stack([theta[0], theta[1], jnp.zeros_like(theta[0])])
    return models.spot_expected(SPOT_PSF, position, theta[2], theta[3], grid)[0]


SPOT_PSF = models.Gaussian2D(130.0)


class NumpySpot:
    """The erf-integrated Gaussian of one ROI and its derivatives, NumPy float64 (the baseline's model).

    ``mu_ij = N Ey_i Ex_j + b``, ``Ex_j = 1/2 [erf((u_j + a/2) / (sqrt2 s)) - erf((u_j - a/2) / (sqrt2 s))]``,
    ``u_j = x_j - x`` (pixel centres ``x_j``); ``dEx_j/dx = -(G(u_j + a/2) - G(u_j - a/2)) / (sqrt(2 pi) s)``
    and ``d2Ex_j/dx2 = -((u_j + a/2) G(u_j + a/2) - (u_j - a/2) G(u_j - a/2)) / (sqrt(2 pi) s^3)``,
    ``G(u) = exp(-u^2 / (2 s^2))``.
    """

    def __init__(self, roi: int, pixel_nm: float, sigma_nm: float):
        self.a, self.s = pixel_nm, sigma_nm
        self.centres = (np.arange(roi) + 0.5) * pixel_nm

    def factor(self, position):
        """(E, dE/dposition, d2E/dposition2) along one axis, each (roi,)."""
        from scipy.special import erf

        s, h = self.s, 0.5 * self.a
        up, lo = self.centres - position + h, self.centres - position - h
        gp, gl = np.exp(-(up**2) / (2 * s * s)), np.exp(-(lo**2) / (2 * s * s))
        c = 1.0 / (math.sqrt(2 * math.pi) * s)
        e = 0.5 * (erf(up / (math.sqrt(2) * s)) - erf(lo / (math.sqrt(2) * s)))
        return e, -c * (gp - gl), -c * (up * gp - lo * gl) / (s * s)

    def expected(self, theta):
        x, y, n, b = theta
        ex, _, _ = self.factor(x)
        ey, _, _ = self.factor(y)
        return n * np.outer(ey, ex) + b

    def derivatives(self, theta, second=False):
        """mu (ny, nx), its Jacobian (4, ny, nx) and, if ``second``, the second derivatives (4, 4, ny, nx)."""
        x, y, n, b = theta
        ex, dex, ddex = self.factor(x)
        ey, dey, ddey = self.factor(y)
        p = np.outer(ey, ex)
        mu = n * p + b
        jac = np.stack([n * np.outer(ey, dex), n * np.outer(dey, ex), p, np.ones_like(p)])
        if not second:
            return mu, jac, None
        hess = np.zeros((4, 4) + p.shape)
        hess[0, 0] = n * np.outer(ey, ddex)
        hess[1, 1] = n * np.outer(ddey, ex)
        hess[0, 1] = hess[1, 0] = n * np.outer(dey, dex)
        hess[0, 2] = hess[2, 0] = np.outer(ey, dex)
        hess[1, 2] = hess[2, 1] = np.outer(dey, ex)
        return mu, jac, hess


def poisson_nll(mu, counts):
    """Half the Poisson deviance, ``sum mu - y + y ln(y / mu)`` (0 ln 0 = 0): the NLL up to a constant."""
    ylogy = np.where(counts > 0, counts * np.log(np.where(counts > 0, counts, 1.0)), 0.0)
    return float(np.sum(mu - counts - counts * np.log(mu) + ylogy))


def scipy_fit(spot: NumpySpot, counts, start, lower, upper, method):
    """One ``scipy.optimize.minimize`` Poisson MLE of a spot (what a Python user writes).

    The optimiser works on scaled variables ``v = theta / scale`` (scale: pixel size for x and
    y, the start's N and b), so all four are of order 1. L-BFGS-B: bounds, analytic gradient.
    Newton-CG: analytic gradient and Hessian (exact second derivatives), no bounds.

    Returns:
        (theta_hat (4,), success flag, function evaluations).
    """
    from scipy.optimize import minimize

    counts = np.asarray(counts, np.float64)
    scale = np.array([spot.a, spot.a, max(start[2], 1.0), max(start[3], 1e-3)])

    def fun(v):
        mu, jac, _ = spot.derivatives(v * scale)
        mu = np.maximum(mu, 1e-12)
        w = 1.0 - counts / mu
        return poisson_nll(mu, counts), np.einsum("pij,ij->p", jac, w) * scale

    def hess(v):
        mu, jac, sec = spot.derivatives(v * scale, second=True)
        mu = np.maximum(mu, 1e-12)
        h = np.einsum("pij,qij,ij->pq", jac, jac, counts / mu**2) + np.einsum("pqij,ij->pq", sec, 1.0 - counts / mu)
        return h * np.outer(scale, scale)

    v0 = np.asarray(start, np.float64) / scale
    if method == "L-BFGS-B":
        bounds = list(zip(np.asarray(lower) / scale, np.asarray(upper) / scale))
        r = minimize(fun, v0, jac=True, method="L-BFGS-B", bounds=bounds, options=dict(ftol=1e-12, gtol=1e-7))
    else:
        r = minimize(fun, v0, jac=True, hess=hess, method="Newton-CG", options=dict(xtol=1e-8))
    return r.x * scale, bool(r.success), int(r.nfev)


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def truth(args):
    """The fixed true parameters: a sub-pixel offset (+23, -31) nm from the ROI centre."""
    centre = 0.5 * args.roi * args.pixel_nm
    return np.array([centre + 23.0, centre - 31.0, args.photons, args.background])


def make_spots(spot: NumpySpot, theta, n, seed):
    """``n`` Poisson draws of the spot at ``theta`` (float64 expectation, float32 counts)."""
    rng = np.random.default_rng(seed)
    return rng.poisson(spot.expected(theta), size=(n,) + spot.centres.shape * 2).astype(np.float32)


def starts(counts, pixel_nm):
    """Start values from the data alone (the same for fluojax and SciPy): background from the
    ROI's edge pixels (median), photons from the background-subtracted sum, position from the
    background-subtracted centroid."""
    counts = np.asarray(counts, np.float64)
    edge = np.concatenate([counts[:, 0, :], counts[:, -1, :], counts[:, 1:-1, 0], counts[:, 1:-1, -1]], axis=1)
    b = np.maximum(np.median(edge, axis=1), 1.0)
    signal = np.maximum(counts - b[:, None, None], 0.0)
    n = np.maximum(signal.sum(axis=(1, 2)), 1.0)
    centres = (np.arange(counts.shape[-1]) + 0.5) * pixel_nm
    x = np.einsum("kij,j->k", signal, centres) / n
    y = np.einsum("kij,i->k", signal, centres) / n
    return np.stack([x, y, n, b], axis=1)


def bounds(args):
    width = args.roi * args.pixel_nm
    # finite, moderate upper bounds: the float32 box transform of the engine stalls with an upper
    # bound of 1e8 photons (255 of 256 spots at MAX_STEPS), not with 1e6
    return (0.0, 0.0, 1.0, 1e-3), (width, width, 1e6, 1e4)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def timed(fn, repeats):
    """(first-call seconds, median of ``repeats`` timed calls after it, last result); blocks on JAX output."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def fmt_rate(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


class Table:
    """Rows of the report: (measurement, n, first call s, median s, rate, vs baseline, note)."""

    def __init__(self, unit, versus):
        self.unit, self.versus, self.rows = unit, versus, []

    def add(self, what, n, first, median, rate, ratio=None, note=""):
        self.rows.append((what, n, first, median, rate, ratio, note))

    def markdown(self):
        head = f"| measurement | n | first call s | median s | {self.unit} | {self.versus} | note |"
        lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
        for what, n, first, med, rate, ratio, note in self.rows:
            f = "" if first is None else f"{first:.2f}"
            m = "" if med is None else f"{med:.4g}"
            r = "" if ratio is None else f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x"
            lines.append(f"| {what} | {n:,} | {f} | {m} | {fmt_rate(rate)} | {r} | {note} |")
        return "\n".join(lines)


def crlb(args, theta):
    """sqrt(CRLB) of (x, y, N, b) at ``theta``: ``estimate.spot_crlb`` (float32, the library's),
    ``fit.poisson_crlb`` of the same model in float64, and from the NumPy Jacobian (float64; an
    independent check of the bound)."""
    library = np.asarray(estimate.spot_crlb(SPOT_PSF, theta.astype(np.float32), args.roi, args.pixel_nm), np.float64)
    grid = models.pixel_grid((args.roi, args.roi), args.pixel_nm)
    with jax.enable_x64(True):
        g64 = models.Grid(*(jnp.asarray(np.asarray(v, np.float64)) for v in grid))
        engine = np.asarray(fit.poisson_crlb(spot_model, jnp.asarray(theta, jnp.float64), g64))
    mu, jac, _ = NumpySpot(args.roi, args.pixel_nm, SPOT_PSF.sigma_nm).derivatives(theta)
    j = jac.reshape(4, -1)
    independent = np.sqrt(np.diag(np.linalg.inv((j / mu.ravel()) @ j.T)))
    return library, engine, independent


def precision(x_hat, y_hat, bound):
    """(s.d.(x)/sqrt(CRLB_x), s.d.(y)/sqrt(CRLB_y)) over the finite estimates."""
    ok = np.isfinite(x_hat) & np.isfinite(y_hat)
    return float(np.std(x_hat[ok], ddof=1) / bound[0]), float(np.std(y_hat[ok], ddof=1) / bound[1])


# ----------------------------------------------------------------------------------------------
# 1. per-spot MLE
# ----------------------------------------------------------------------------------------------


def fluojax_engine(args, chunk, own_jacobian=False):
    """The engine alone: ``fit.poisson_mle_batch`` from given starts -> (params (n, 4), status (n,)).

    The model is :func:`spot_model` (a plain function: the engine differentiates it by autodiff)
    or, with ``own_jacobian``, the library's ``estimate.SpotModel`` of the same PSF (the same
    expected counts; it hands the engine its Jacobian from the separable factors)."""
    lower, upper = bounds(args)
    if own_jacobian:
        model, shared = (
            estimate.SpotModel(SPOT_PSF),
            estimate.SpotArgs(models.pixel_grid((args.roi, args.roi), args.pixel_nm), jnp.zeros((1, 2), jnp.float32)),
        )
    else:
        model, shared = spot_model, models.pixel_grid((args.roi, args.roi), args.pixel_nm)

    def run(counts, init):
        data = counts[:, None] if own_jacobian else counts
        res = fit.poisson_mle_batch(model, data, init, shared, lower=lower, upper=upper, chunk=chunk)
        return np.asarray(res.params), np.asarray(res.status)

    return run


def fluojax_rois(args):
    """The library's per-spot MLE, ``estimate.fit_rois`` (its own start values, bounds and a
    Cramer-Rao bound per spot at the fit): counts -> (params (n, 4), status (n,))."""

    def run(counts):
        theta, _, res = estimate.fit_rois(counts[:, None], SPOT_PSF, args.pixel_nm, chunk=args.chunk)
        return theta, np.asarray(res.status)

    return run


def check_baselines(args, spot, lines):
    """Same optimum on ``args.check_spots`` spots: max |position difference| nm and max |dNLL|."""
    theta = truth(args)
    counts = make_spots(spot, theta, args.check_spots, seed=11)
    init = starts(counts, args.pixel_nm)
    lower, upper = bounds(args)
    fl, _ = fluojax_rois(args)(counts)
    ok = True
    for method in ("L-BFGS-B", "Newton-CG"):
        dpos, dnll = 0.0, 0.0
        for k in range(len(counts)):
            th, _, _ = scipy_fit(spot, counts[k], init[k], lower, upper, method)
            c64 = counts[k].astype(np.float64)
            d = float(np.max(np.abs(th[:2] - fl[k, :2])))
            e = abs(poisson_nll(spot.expected(fl[k]), c64) - poisson_nll(spot.expected(th), c64))
            dpos = max(dpos, d if math.isfinite(d) else math.inf)  # a NaN fit fails the check
            dnll = max(dnll, e if math.isfinite(e) else math.inf)
        lines.append(
            f"Baseline check ({len(counts)} spots), SciPy {method} vs `estimate.fit_rois`: max |position difference| "
            f"{dpos:.3g} nm, max |NLL difference| {dnll:.2g}."
        )
        ok &= dpos < 0.1 and dnll < 1e-3
    grid = models.pixel_grid((args.roi, args.roi), args.pixel_nm)
    ref = np.asarray(spot_model(jnp.asarray(theta, jnp.float32), grid), np.float64)
    dev = float(np.max(np.abs(ref - spot.expected(theta)) / np.max(spot.expected(theta))))
    lines.append(f"NumPy spot model vs `models.spot_expected` (float32): max relative difference {dev:.1e}.")
    return ok and dev < 1e-5


def bench_mle(rows, args, spot, lines):
    theta = truth(args)
    counts = make_spots(spot, theta, args.spots, seed=1)
    init = starts(counts, args.pixel_nm)
    library, bound, independent = crlb(args, theta)
    lines.append(
        f"CRLB at the truth: sqrt(CRLB) x {bound[0]:.3f} nm, y {bound[1]:.3f} nm, N {bound[2]:.1f}, b {bound[3]:.3f} "
        f"(`fit.poisson_crlb`, float64); `estimate.spot_crlb` (float32): x {library[0]:.3f} nm; "
        f"NumPy Jacobian: x {independent[0]:.3f} nm."
    )

    # baselines: both variants on the same first spots, alternating spot by spot so that the
    # load of a shared host falls on both alike
    lower, upper = bounds(args)
    methods = ("L-BFGS-B", "Newton-CG")
    record: dict[str, tuple[list, list, list, list]] = {m: ([], [], [], []) for m in methods}
    for k in range(args.scipy_spots):
        for method in methods:
            t0 = time.perf_counter()
            th, success, n_eval = scipy_fit(spot, counts[k], init[k], lower, upper, method)
            times, est, ok, nfev = record[method]
            times.append(time.perf_counter() - t0)
            est.append(th)
            ok.append(success)
            nfev.append(n_eval)
    base = {m: (t, np.array(e), float(np.mean(o)), float(np.mean(f))) for m, (t, e, o, f) in record.items()}
    # rate = 1 / median time per fit: robust to the other processes on a shared host, and
    # favourable to the baseline (its slow fits do not count); the mean is printed beside it
    best = min(base, key=lambda m: statistics.median(base[m][0]))
    base_rate = 1.0 / statistics.median(base[best][0])

    # fluojax: every variant's first call (compilation included), then the warm calls in
    # alternation (round r times every variant once), medians per variant
    n = len(counts)
    runs = [
        ("fluojax `estimate.fit_rois` (start values, MLE, CRLB per spot)", "rois", args.chunk),
        ("fluojax engine alone: `fit.poisson_mle_batch` (the SciPy starts)", "engine", args.chunk),
        ("fluojax engine alone, `estimate.SpotModel` (its own Jacobian; the SciPy starts)", "engine_spot", args.chunk),
    ]
    if args.alt_chunk:
        runs.append(("fluojax engine alone, another chunk", "engine_alt", args.alt_chunk))
    calls, firsts, warm, results = {}, {}, {}, {}
    for _, key, chunk in runs:
        if key == "rois":
            calls[key] = partial(fluojax_rois(args), counts)
        else:
            calls[key] = partial(fluojax_engine(args, chunk, own_jacobian=key == "engine_spot"), counts, init)
        t0 = time.perf_counter()
        results[key] = calls[key]()
        firsts[key] = time.perf_counter() - t0
        warm[key] = []
    for _ in range(args.repeats):
        for _, key, _ in runs:
            t0 = time.perf_counter()
            results[key] = calls[key]()
            warm[key].append(time.perf_counter() - t0)
    rates = {}
    for label, key, chunk in runs:
        params, status = results[key]
        med = statistics.median(warm[key])
        rates[key] = n / med
        conv = float(np.mean(fit.succeeded(status, params, np)))
        px, py = precision(params[:, 0], params[:, 1], bound)
        sub = params[: args.scipy_spots]
        sx, sy = precision(sub[:, 0], sub[:, 1], bound)
        rows.add(
            label + ", float32",
            n,
            firsts[key],
            med,
            n / med,
            n / med / base_rate,
            f"{conv:.1%} converged; s.d./sqrt(CRLB) x {px:.3f}, y {py:.3f} "
            f"(on the SciPy spots: {sx:.3f}, {sy:.3f}); chunk {chunk or 'default'}",
        )
    for method, (times, est, success, nfev) in base.items():
        bx, by = precision(est[:, 0], est[:, 1], bound)
        tag = " (the ratio's denominator)" if method == best else ""
        med_fit = statistics.median(times)
        rows.add(
            f"baseline: SciPy `minimize` {method}, NumPy erf model{tag}",
            args.scipy_spots,
            None,
            med_fit,
            1.0 / med_fit,
            1.0 / med_fit / base_rate,
            f"float64, loop over spots, median per fit (mean {1e3 * statistics.fmean(times):.2f} ms); "
            f"{success:.0%} success, {nfev:.0f} function evals/fit; s.d./sqrt(CRLB) x {bx:.3f}, y {by:.3f}",
        )
    se = 1.0 / math.sqrt(2 * (args.scipy_spots - 1))
    lines.append(
        f"Precision ratios are s.d. of the estimates at a fixed truth over sqrt(CRLB); their relative standard "
        f"error is about 1/sqrt(2(n-1)): {1 / math.sqrt(2 * (n - 1)):.1%} for {n:,} spots, {se:.1%} for "
        f"{args.scipy_spots}."
    )
    return rates, base_rate, best


# ----------------------------------------------------------------------------------------------
# 2. the command
# ----------------------------------------------------------------------------------------------


def bench_command(rows, args, lines):
    """Whole-process time of ``fluojax smlm localize`` on a 2D stack made by ``fluojax smlm simulate``
    (preset 2d: 64 x 64 pixels of 100 nm, 10 emitters of 1000-5000 photons per frame), if the
    command exists in the source tree ``args.cli_tree`` (default: this one)."""
    tree = Path(args.cli_tree or Path.cwd()).resolve()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]))
    fluojax = [sys.executable, "-m", "fluojax", "smlm"]
    probe = subprocess.run([*fluojax, "localize", "--help"], capture_output=True, text=True, env=env, cwd=tree)
    if probe.returncode != 0:
        lines.append(f"`fluojax smlm localize` not available in {tree}: the whole-command row is skipped.")
        return
    work = Path(tempfile.mkdtemp(prefix="bench_smlm_"))
    try:
        sim = [*fluojax, "simulate", "--preset", "2d", "--frames", str(args.cli_frames), "-o", str(work / "sim")]
        done = subprocess.run(sim, capture_output=True, text=True, env=env, cwd=tree)
        if done.returncode != 0:
            lines.append(f"`fluojax smlm simulate` failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
            return
        loc = [*fluojax, "localize", str(work / "sim" / "stack.tif"), "-o", str(work / "locs.csv")]
        t0 = time.perf_counter()
        done = subprocess.run(loc, capture_output=True, text=True, env=env, cwd=tree)
        elapsed = time.perf_counter() - t0
        if done.returncode != 0:
            lines.append(f"`fluojax smlm localize` failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
            return
        n_locs = max(0, len((work / "locs.csv").read_text().splitlines()) - 1)
        rows.add(
            "`fluojax smlm localize` (whole process: start-up, reading, detection, MLE, CSV/PNG/JSON)",
            n_locs,
            None,
            elapsed,
            n_locs / elapsed,
            None,
            f"{args.cli_frames} frames of 64x64 px (`fluojax smlm simulate --preset 2d`), {n_locs:,} localizations "
            f"(n); {args.cli_frames / elapsed:.3g} frames/s; one run; command's own report: "
            f"{done.stdout.strip().splitlines()[-1][:160] if done.stdout.strip() else ''}",
        )
        if args.cli_tree:
            lines.append(f"The command ran from the source tree {tree}.")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# 3. the voxel network
# ----------------------------------------------------------------------------------------------


def bench_network(rows, args, lines):
    try:
        from fluojax import networks
        from fluojax.smlm import nets
    except ImportError:
        lines.append("`fluojax.smlm.nets` not available in this tree: the network rows are skipped.")
        return
    from flax import nnx

    config = nets.VoxelNetConfig.paper()
    net = networks.eval_view(nets.build_network(config))
    graphdef, state = nnx.split(net)
    pixel_nm, z_range = 192.0, (-200.0, 1350.0)
    decode = getattr(nets, "decode", None)

    @jax.jit
    def forward(state, frames):
        out = nnx.merge(graphdef, state)(frames)
        if decode is None:
            return out
        return decode(out, 0.5, pixel_nm, z_range, config.z_bins, max_per_frame=args.max_per_frame)

    for side, batch in ((64, args.net_batch_64), (256, args.net_batch_256)):
        host = np.random.default_rng(6).uniform(0.0, 1.0, (batch, config.in_planes, side, side)).astype(np.float32)

        def run(host=host):
            out = forward(state, jnp.asarray(host))  # host -> device, network, decode
            return jax.tree.map(np.asarray, out)  # device -> host

        first, med, _ = timed(run, args.net_repeats)
        rows.add(
            f"VoxelNet (paper size) {side}x{side}x4",
            batch,
            first,
            med,
            batch / med,
            None,
            f"{networks.parameter_count(net):,} weights, untrained, float32; "
            + ("incl. `decode` (threshold 0.5)" if decode is not None else "network only (no `decode` yet)")
            + f"; paper: {PAPER_FPS:.0f} frames/s on a V100",
        )


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer spots and repeats (< 3 min on 2 CPU cores)")
    ap.add_argument("--roi", type=int, default=9, help="ROI side, pixels")
    ap.add_argument("--pixel-nm", type=float, default=100.0, help="pixel size, nm")
    ap.add_argument("--photons", type=float, default=2000.0, help="photons per spot")
    ap.add_argument("--background", type=float, default=10.0, help="background photons per pixel")
    ap.add_argument("--spots", type=int, default=None, help="spots fitted by fluojax")
    ap.add_argument("--scipy-spots", type=int, default=None, help="spots fitted by each SciPy baseline")
    ap.add_argument("--check-spots", type=int, default=None, help="spots in the baseline-vs-fluojax check")
    ap.add_argument("--repeats", type=int, default=None, help="timed warm calls of the fluojax fit (median)")
    ap.add_argument("--chunk", type=int, default=None, help="spots per compiled engine call (default: the engine's)")
    ap.add_argument(
        "--alt-chunk", type=int, default=1024, help="also time the engine alone at this chunk (0: no such row)"
    )
    ap.add_argument("--net-batch-64", type=int, default=50, help="frames per network call, 64 x 64 x 4")
    ap.add_argument("--net-batch-256", type=int, default=8, help="frames per network call, 256 x 256 x 4")
    ap.add_argument("--net-repeats", type=int, default=None, help="timed warm network calls (median)")
    ap.add_argument("--max-per-frame", type=int, default=256, help="decoded rows per frame")
    ap.add_argument("--cli-frames", type=int, default=None, help="frames of the stack for the command")
    ap.add_argument("--cli-tree", default=None, help="source tree whose `fluojax` the command runs (default: this)")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    args = ap.parse_args()
    gpu = jax.default_backend() != "cpu"
    defaults = dict(  # (default, --quick) per flag
        spots=(10000, 2000),
        scipy_spots=(300, 60),
        check_spots=(10, 5),
        repeats=(5, 2),
        net_repeats=(5, 2),
        cli_frames=(200, 50),
    )
    if gpu:
        defaults.update(spots=(100000, 20000))
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main():
    args = parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in ["experiments/bench_smlm.py", *sys.argv[1:]])
    dev = jax.devices()[0]
    header = [
        f"# SMLM benchmark ({dev.platform}: {getattr(dev, 'device_kind', dev)})",
        "",
        f"Command: `{command}`",
        "",
        f"JAX {jax.__version__}, backend {jax.default_backend()}, device {dev!r}; host {platform.platform()}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, NumPy {np.__version__}; "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "",
        f"Spots: {args.roi}x{args.roi} pixels of {args.pixel_nm:g} nm, pixel-integrated Gaussian PSF s.d. "
        f"{SPOT_PSF.sigma_nm:g} nm, N = {args.photons:g} photons, b = {args.background:g} photons/pixel, Poisson "
        f"noise, true position fixed at (+23, -31) nm from the ROI centre; 4 free parameters (x, y, N, b).",
    ]
    print("\n".join(header), flush=True)
    lines: list[str] = []
    spot = NumpySpot(args.roi, args.pixel_nm, SPOT_PSF.sigma_nm)
    if not check_baselines(args, spot, lines):
        print("\n".join(lines))
        raise SystemExit("SciPy baseline disagrees with fluojax: refusing to benchmark it")
    print("\n".join(lines), flush=True)

    fits = Table("rate /s", "vs SciPy")
    t0 = time.perf_counter()
    rates, base_rate, best = bench_mle(fits, args, spot, lines)
    print(f"MLE done ({time.perf_counter() - t0:.0f} s)", flush=True)
    bench_command(fits, args, lines)
    nets_table = Table("frames/s", "")
    bench_network(nets_table, args, lines)
    if not nets_table.rows:
        nets_table = None
    if dev.platform == "gpu":
        lines.append(f"GPU: fluojax {rates['rois']:,.0f} fits/s on {dev.device_kind}. {GPUFIT_NOTE}.")
    ratios = [
        f"`estimate.fit_rois` {rates['rois']:,.0f} / {base_rate:,.0f} = {rates['rois'] / base_rate:,.0f}x",
        f"engine alone {rates['engine']:,.0f} / {base_rate:,.0f} = {rates['engine'] / base_rate:,.0f}x",
        f"engine alone with `SpotModel` {rates['engine_spot']:,.0f} / {base_rate:,.0f} = "
        f"{rates['engine_spot'] / base_rate:,.0f}x",
    ]
    if args.alt_chunk:
        r = rates["engine_alt"]
        ratios.append(f"engine alone at chunk {args.alt_chunk} {r:,.0f} / {base_rate:,.0f} = {r / base_rate:,.0f}x")
    lines.append(
        f"Ratio: fluojax fits/s over the faster SciPy variant's ({best}, 1 / median time per fit): "
        + "; ".join(ratios)
        + " (goal >= 100x). First call includes JIT compilation. Baselines run on the host CPU, single process, "
        "one BLAS thread."
    )
    lines.append(
        f"Network: the paper reports {PAPER_FPS:.0f} frames/s end to end on an NVIDIA V100 (Aritake et al. 2021, "
        "Fig. 9; loading, transfer and prediction); other hardware, so no ratio."
    )
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.1f} (1 min; a shared host makes CPU rows noisy).")
    tables = [fits.markdown()] + ([nets_table.markdown()] if nets_table is not None else [])
    body = [""] + [x for t in tables for x in (t, "")] + [f"- {line}" for line in lines]
    report = "\n".join(header + body) + "\n"
    print("\n".join(body))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
