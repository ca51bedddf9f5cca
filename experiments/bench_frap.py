"""Benchmark (not a test): fluojax FRAP generator, least-squares fits and DeepFRAP networks vs. NumPy/SciPy.

What is compared, at DeepFRAP settings (256 x 256 image, padding 128, i.e. a 512 x 512 periodic
grid; 10 prebleach / 4 bleach / 100 postbleach frames; disk of radius 19.742 px), all in one run,
JIT compile excluded (one warm-up call each, reported as "first call"), medians over repeats:

1. **Generator** (recovery curves per second): the tabulated ``recovery_curve_fast`` under
   ``jit(vmap)`` (clean curves), ``sample_frap_params`` + ``simulate_curves`` (noisy training
   curves, DeepFRAP prior), the full image solver ``recovery_curve`` (one FFT pair per frame,
   float32, vmapped over a small batch), and the baseline a Python user would write:
   ``numpy_recovery_curve`` below, the same solver as a frame loop over ``numpy.fft.rfft2`` /
   ``irfft2`` in float64 (114 FFT pairs on 512 x 512 per curve). Before anything is timed the
   NumPy curve is checked against ``recovery_curve`` in float64 (``jax.enable_x64``) and against
   the float32 fast table: a benchmark of a wrong baseline is worthless.
2. **Least squares** (fits per second): ``fit_recovery_curves`` (multistart Levenberg-Marquardt
   on the fast table, every start one fit of the slot-refilling batch solver; 1 and 30 starts
   from the prior) on noisy curves, vs.
   ``scipy.optimize.least_squares`` (``trf``, the same bounds, D fitted as ln D like fluojax,
   finite-difference Jacobian) on ``numpy_recovery_curve``, fitting the first few of the same
   curves from the same start as fluojax's 1-start fit. The ratio is per start (fluojax
   starts/s over SciPy starts/s; a SciPy fit is one start). Accuracy is reported next to it
   (median |ln D_hat - ln D_true|; and the largest |ln D_scipy - ln D_fluojax| on the shared
   curves) so that the ratio compares like with like.
3. **Network inference** (curves per second): the paper DeepFRAP network (130,179 weights) and
   the merged per-parameter one (389,763), untrained (throughput does not depend on the weights),
   jitted, float32, on one large batch.

The NumPy/SciPy baseline is single-process NumPy (whatever threads its FFT uses) and is timed on
a few curves only; per-curve and per-fit times are scaled to rates. On a GPU the fluojax rows run
on the GPU and the baseline still on the host CPU.

Usage:  python experiments/bench_frap.py [--out docs/bench/frap_cpu.md]
        python experiments/bench_frap.py --quick          (< 3 min on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fluojax import fit, networks
from fluojax.frap import estimate, models, nets, simulate

SETTINGS = models.FrapSettings()  # DeepFRAP: N 256, M 128, 10/4/100 frames, dt 0.265 s
PRIOR = simulate.FrapPrior.deepfrap()


# ----------------------------------------------------------------------------------------------
# baseline: the NumPy solver and the SciPy fit a Python user would write
# ----------------------------------------------------------------------------------------------


def numpy_recovery_curve(d_px2_s, c0, alpha, mask, weights, settings=SETTINGS):
    """Recovery curve of the FRAP model with ``numpy.fft`` (float64), one FFT pair per frame.

    The same model as ``models.recovery_curve`` with mobile fraction 1, no imaging bleach and a
    sharp mask: the field starts at c0 on the (N + 2M)^2 periodic grid; every frame diffuses it
    for dt (``exp(-|xi|^2 D dt)`` in Fourier space, ``xi = 2 pi k / L``); bleach frames then
    multiply it by ``1 - (1 - alpha) B`` and are not recorded; recorded frames give
    ``sum w c`` over the N x N image.

    Arguments:
        d_px2_s, c0, alpha: floats, D in px^2/s, prebleach intensity, fraction left per bleach.
        mask: (N, N) bleach indicator B (area fractions in [0, 1]).
        weights: (N, N) ROI weights w.
        settings: ``FrapSettings``.

    Returns:
        (n_prebleach + n_postbleach,) float64 curve.
    """
    n, m, size = settings.n_pixels, settings.pad, settings.grid_size
    k_rows = np.fft.fftfreq(size) * size
    k_cols = np.fft.rfftfreq(size) * size
    xi2 = (2.0 * np.pi / size) ** 2 * (k_rows[:, None] ** 2 + k_cols[None, :] ** 2)
    decay = np.exp(-xi2 * d_px2_s * settings.dt_s)
    bleach = 1.0 - (1.0 - alpha) * np.pad(mask, m)
    c = np.full((size, size), float(c0))

    def diffuse(field):
        return np.fft.irfft2(np.fft.rfft2(field) * decay, s=(size, size))

    def roi_mean(field):
        return np.sum(weights * field[m : m + n, m : m + n])

    curve = []
    for _ in range(settings.n_prebleach):
        c = diffuse(c)
        curve.append(roi_mean(c))
    for _ in range(settings.n_bleach):
        c = diffuse(c) * bleach
    for _ in range(settings.n_postbleach):
        c = diffuse(c)
        curve.append(roi_mean(c))
    return np.array(curve)


def scipy_fit(curve, start, lower, upper, geometry):
    """One ``scipy.optimize.least_squares`` fit (trf, bounds, ln D) of the NumPy model.

    Returns:
        (theta_hat (D, c0, alpha), number of curve evaluations, success flag).
    """
    from scipy.optimize import least_squares

    mask, weights = np.asarray(geometry.indicator), np.asarray(geometry.roi_weights)
    y = np.asarray(curve, np.float64)

    def residual(x):
        return numpy_recovery_curve(math.exp(x[0]), x[1], x[2], mask, weights) - y

    to_x = np.array([math.log(start[0]), start[1], start[2]])
    lo = np.array([math.log(lower[0]), lower[1], lower[2]])
    hi = np.array([math.log(upper[0]), upper[1], upper[2]])
    r = least_squares(residual, to_x, bounds=(lo, hi), method="trf")
    n_eval = r.nfev + (r.njev or 0) * 3  # 2-point Jacobian: 3 extra curves per Jacobian
    return np.array([math.exp(r.x[0]), r.x[1], r.x[2]]), n_eval, bool(r.success)


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


def warm_up_curves(n_starts, n_curves):
    """Curves in one compiled chunk of ``fit_recovery_curves`` (its default chunk: 256 // K on
    CPU, 8192 // K elsewhere), so a warm-up on that many compiles exactly what the timed run uses."""
    base = 256 if jax.default_backend() == "cpu" else 8192
    return min(n_curves, max(1, base // n_starts))


def batch_params(key, batch):
    """``batch`` DeepFRAP-prior ``FrapSample``s."""
    return simulate.sample_frap_params(key, batch, PRIOR)


def ln_d_error(d_hat, d_true):
    """Median |ln D_hat - ln D_true| over the finite fits."""
    return float(np.nanmedian(np.abs(np.log(d_hat) - np.log(d_true))))


def fmt_rate(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


class Table:
    """Rows of the Markdown report: (measurement, n, first call s, median s, rate, vs baseline, note)."""

    def __init__(self):
        self.rows = []

    def add(self, what, n, first, median, rate, ratio=None, note=""):
        self.rows.append((what, n, first, median, rate, ratio, note))

    def markdown(self):
        head = "| measurement | n | first call s | median s | rate /s | vs NumPy/SciPy | note |"
        lines = [head, "|---|---:|---:|---:|---:|---:|---|"]
        for what, n, first, med, rate, ratio, note in self.rows:
            f = "" if first is None else f"{first:.2f}"
            r = "" if ratio is None else f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x"
            lines.append(f"| {what} | {n:,} | {f} | {med:.4g} | {fmt_rate(rate)} | {r} | {note} |")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# 1. generator
# ----------------------------------------------------------------------------------------------


def check_numpy_baseline(geometry, table, key, n_check):
    """Max relative deviation of ``numpy_recovery_curve`` from ``recovery_curve`` (float64) and
    from the float32 fast table, over ``n_check`` prior draws."""
    p = batch_params(key, n_check).params
    mask, weights = np.asarray(geometry.indicator), np.asarray(geometry.roi_weights)
    ref = [
        numpy_recovery_curve(float(d), float(c), float(a), mask, weights) for d, c, a in zip(p.d_px2_s, p.c0, p.alpha)
    ]
    ref = np.stack(ref)
    with jax.enable_x64(True):
        d, c0, alpha = (jnp.asarray(np.asarray(x, np.float64)) for x in (p.d_px2_s, p.c0, p.alpha))
        curve = jax.vmap(lambda *theta: models.recovery_curve(models.FrapParams(*theta), geometry, SETTINGS))
        full = np.asarray(curve(d, c0, alpha))
    fast = np.asarray(jax.vmap(models.recovery_curve_fast, in_axes=(0, None))(p, table), np.float64)
    scale = np.max(np.abs(ref), axis=1, keepdims=True)
    return float(np.max(np.abs(full - ref) / scale)), float(np.max(np.abs(fast - ref) / scale))


def bench_generator(rows, geometry, table, n_eff, args):
    key = jax.random.key(1)
    fast = jax.jit(jax.vmap(models.recovery_curve_fast, in_axes=(0, None)))

    @partial(jax.jit, static_argnames="batch")
    def noisy(key, table, batch):
        k_params, k_noise = jax.random.split(key)
        sample = batch_params(k_params, batch)
        return simulate.simulate_curves(k_noise, sample.params, table, sample.noise, n_eff)

    full = jax.jit(jax.vmap(lambda p: models.recovery_curve(p, geometry, SETTINGS)))
    mask, weights = np.asarray(geometry.indicator), np.asarray(geometry.roi_weights)

    # NumPy baseline first: its rate is the denominator of the ratios
    p_np = batch_params(key, args.numpy_curves).params
    values = [(float(d), float(c), float(a)) for d, c, a in zip(p_np.d_px2_s, p_np.c0, p_np.alpha)]
    t_np = []
    for d, c, a in values:
        t0 = time.perf_counter()
        numpy_recovery_curve(d, c, a, mask, weights)
        t_np.append(time.perf_counter() - t0)
    numpy_rate = 1.0 / statistics.median(t_np)

    for batch in args.gen_batches:
        params = batch_params(key, batch).params
        first, med, _ = timed(lambda params=params: fast(params, table), args.repeats)
        rows.add(
            "generator: `recovery_curve_fast`, jit(vmap), clean",
            batch,
            first,
            med,
            batch / med,
            batch / med / numpy_rate,
            "tabulated (Chebyshev in ln D), float32",
        )
    for batch in args.gen_batches:
        first, med, _ = timed(lambda batch=batch: noisy(key, table, batch), args.repeats)
        rows.add(
            "generator: `sample_frap_params` + `simulate_curves`, noisy",
            batch,
            first,
            med,
            batch / med,
            batch / med / numpy_rate,
            "prior draw + curve noise, one jit",
        )
    params = batch_params(key, args.full_batch).params
    first, med, _ = timed(lambda: full(params), max(1, args.repeats // 2))
    rows.add(
        "generator: `recovery_curve` (full image solver), jit(vmap)",
        args.full_batch,
        first,
        med,
        args.full_batch / med,
        args.full_batch / med / numpy_rate,
        "114 FFT pairs on 512^2 per curve, float32",
    )
    rows.add(
        "baseline: `numpy_recovery_curve` (numpy.fft, frame loop)",
        len(t_np),
        None,
        statistics.median(t_np),
        numpy_rate,
        1.0,
        "float64, median per curve",
    )
    return numpy_rate


# ----------------------------------------------------------------------------------------------
# 2. least squares
# ----------------------------------------------------------------------------------------------


def make_fit_data(table, n_eff, n_curves):
    """Noisy prior curves (float32) and their true D."""
    k_params, k_noise = jax.random.split(jax.random.key(2))
    sample = batch_params(k_params, n_curves)
    curves = simulate.simulate_curves(k_noise, sample.params, table, sample.noise, n_eff)
    return np.asarray(curves), np.asarray(sample.params.d_px2_s, np.float64)


def bench_fits(rows, geometry, table, n_eff, args):
    curves, d_true = make_fit_data(table, n_eff, args.fit_curves)
    key = jax.random.key(3)
    fl = {}
    for n_starts, repeats in ((1, args.fit_repeats), (30, args.multistart_repeats)):
        t0 = time.perf_counter()
        estimate.fit_recovery_curves(curves[: warm_up_curves(n_starts, len(curves))], table, key=key, n_starts=n_starts)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):  # already compiled: every run is timed
            t0 = time.perf_counter()
            res = estimate.fit_recovery_curves(curves, table, key=key, n_starts=n_starts)
            times.append(time.perf_counter() - t0)
        fl[n_starts] = (first, statistics.median(times), res)

    # SciPy on the first few curves, from fluojax's 1-start start vector
    lower, upper = estimate.frap_bounds(table, PRIOR)
    start = estimate.frap_starts(key, 1, table, PRIOR)[0].astype(np.float64)
    ns = args.scipy_fits
    sp_times, sp_d, sp_evals, sp_ok = [], [], [], []
    for i in range(ns):
        t0 = time.perf_counter()
        theta, n_eval, ok = scipy_fit(curves[i], start, lower, upper, geometry)
        sp_times.append(time.perf_counter() - t0)
        sp_d.append(theta[0])
        sp_evals.append(n_eval)
        sp_ok.append(ok)
    sp_d = np.array(sp_d)
    sp_med = statistics.median(sp_times)
    sp_rate = 1.0 / sp_med  # one start per SciPy fit

    n = curves.shape[0]
    for n_starts, (first, med, res) in fl.items():
        conv = float(np.mean(fit.succeeded(res.status, res.params, np)))
        same = ln_d_error(res.d_px2_s[:ns], d_true[:ns])
        note = (
            f"{n_starts} start(s)/curve; {conv:.1%} converged; median abs(dln D) {ln_d_error(res.d_px2_s, d_true):.4f} "
            f"(first {ns}: {same:.4f})"
        )
        rows.add(
            f"least squares: `fit_recovery_curves`, {n_starts} start(s)",
            n,
            first,
            med,
            n / med,
            n * n_starts / med / sp_rate,
            note + "; ratio per start",
        )
    diff = float(np.max(np.abs(np.log(sp_d) - np.log(fl[1][2].d_px2_s[:ns]))))
    rows.add(
        "baseline: scipy `least_squares` (trf) on `numpy_recovery_curve`",
        ns,
        None,
        sp_med,
        sp_rate,
        1.0,
        f"1 start/fit, median per fit; {np.mean(sp_evals):.0f} curve evals/fit; {np.mean(sp_ok):.0%} success; "
        f"median abs(dln D) {ln_d_error(sp_d, d_true[:ns]):.4f}; max abs(ln D_scipy - ln D_fluojax 1-start) {diff:.2g}",
    )


# ----------------------------------------------------------------------------------------------
# 3. networks
# ----------------------------------------------------------------------------------------------


def bench_networks(rows, args):
    x = jax.random.uniform(jax.random.key(4), (args.net_batch, SETTINGS.n_frames), jnp.float32, 0.2, 1.0)
    for per_parameter in (False, True):
        model = nets.build_network(nets.DeepFrapConfig.paper(per_parameter=per_parameter))
        graphdef, state = nnx.split(model)
        apply = jax.jit(lambda state, x, graphdef=graphdef: nnx.merge(graphdef, state)(x))
        first, med, _ = timed(lambda apply=apply, state=state: apply(state, x), args.repeats)
        name = "merged (per-parameter)" if per_parameter else "joint (paper)"
        rows.add(
            f"network inference: DeepFRAP {name}",
            args.net_batch,
            first,
            med,
            args.net_batch / med,
            None,
            f"{networks.parameter_count(model):,} weights, untrained, float32",
        )


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and smaller batches (< 3 min on 2 CPU cores)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats of the fast rows (median)")
    ap.add_argument("--gen-batches", type=int, nargs="+", default=None, help="batches of the fast generator rows")
    ap.add_argument("--full-batch", type=int, default=None, help="batch of the full image solver row")
    ap.add_argument("--numpy-curves", type=int, default=None, help="NumPy curves timed (median per curve)")
    ap.add_argument("--fit-curves", type=int, default=None, help="curves fitted by fluojax")
    ap.add_argument("--fit-repeats", type=int, default=None, help="timed runs of the 1-start fluojax fit (median)")
    ap.add_argument(
        "--multistart-repeats", type=int, default=None, help="timed runs of the 30-start fluojax fit (median)"
    )
    ap.add_argument("--scipy-fits", type=int, default=None, help="curves fitted by SciPy")
    ap.add_argument("--check-curves", type=int, default=None, help="curves in the NumPy-vs-fluojax check")
    ap.add_argument("--net-batch", type=int, default=None, help="network inference batch")
    ap.add_argument("--out", default=None, help="also write the report (Markdown) to this file")
    args = ap.parse_args()
    gpu = jax.default_backend() != "cpu"
    defaults = dict(  # (default, --quick) per flag, CPU; GPU defaults are larger
        repeats=(5, 2),
        gen_batches=([4096, 65536], [4096]),
        full_batch=(4, 2),
        numpy_curves=(5, 2),
        fit_curves=(256, 64),
        fit_repeats=(3, 1),
        multistart_repeats=(1, 1),
        scipy_fits=(3, 1),
        check_curves=(3, 2),
        net_batch=(65536, 8192),
    )
    if gpu:
        defaults.update(
            gen_batches=([65536, 1048576], [65536]),
            full_batch=(64, 16),
            fit_curves=(8192, 1024),
            multistart_repeats=(3, 1),
            net_batch=(65536, 65536),
        )
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main():
    args = parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in ["experiments/bench_frap.py", *sys.argv[1:]])
    dev = jax.devices()[0]
    header = [
        f"# FRAP benchmark ({dev.platform}: {getattr(dev, 'device_kind', dev)})",
        "",
        f"Command: `{command}`",
        "",
        f"JAX {jax.__version__}, backend {jax.default_backend()}, device {dev!r} ({getattr(dev, 'device_kind', '')}); "
        f"host {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, NumPy {np.__version__}; "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "",
        f"DeepFRAP settings: {SETTINGS.n_pixels}^2 image, pad {SETTINGS.pad} (grid {SETTINGS.grid_size}^2), "
        f"{SETTINGS.n_prebleach}/{SETTINGS.n_bleach}/{SETTINGS.n_postbleach} frames, dt {SETTINGS.dt_s} s, "
        f"disk r = {models.DEEPFRAP_RADIUS_PX:.3f} px; prior: Wåhlstrand Skärström et al. 2021, Table 1.",
    ]
    print("\n".join(header), flush=True)

    geometry = models.circular_region(SETTINGS)
    n_eff = simulate.roi_effective_pixels(geometry)
    t0 = time.perf_counter()
    table = models.build_fast_curve_table(geometry, SETTINGS)
    t_table = time.perf_counter() - t0
    print(f"fast table built in {t_table:.1f} s (64 nodes, float64); checking the NumPy baseline...", flush=True)
    dev_full, dev_fast = check_numpy_baseline(geometry, table, jax.random.key(0), args.check_curves)
    checks = [
        f"Baseline check ({args.check_curves} prior curves): max |NumPy - `recovery_curve` (x64)| / max|curve| = {dev_full:.2e}; "
        f"max |NumPy - `recovery_curve_fast` (float32)| / max|curve| = {dev_fast:.2e}.",
        f"Fast table build: {t_table:.1f} s (once per geometry; not in the rates).",
    ]
    print("\n".join(checks), flush=True)
    if not (dev_full < 1e-9 and dev_fast < 1e-5):
        raise SystemExit("NumPy baseline disagrees with fluojax: refusing to benchmark it")

    rows = Table()
    t0 = time.perf_counter()
    bench_generator(rows, geometry, table, n_eff, args)
    print(f"generator done ({time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    bench_fits(rows, geometry, table, n_eff, args)
    print(f"fits done ({time.perf_counter() - t0:.0f} s)", flush=True)
    bench_networks(rows, args)

    notes = [
        "Rates: curves/s for generator and network rows, fits/s (curves fitted per second) for least-squares rows. "
        "'vs NumPy/SciPy': rate over the NumPy curve rate (generator) or, for fits, fluojax starts/s over SciPy "
        "starts/s (a SciPy fit is one start). First call includes JIT compilation. Baseline rows run on the host CPU.",
    ]
    checks.append(f"Load average at the end: {os.getloadavg()[0]:.1f} (1 min; a shared host makes CPU rows noisy).")
    report = "\n".join(header + ["", rows.markdown(), ""] + [f"- {line}" for line in checks + notes]) + "\n"
    print()
    print(rows.markdown())
    print()
    print("\n".join(f"- {line}" for line in notes))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
