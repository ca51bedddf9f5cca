"""Benchmark (not a test): fluojax Imaging FCS vs. the usual Python route, side by side.

Measures in one run, on a synthetic SIZE x SIZE x FRAMES uint16 stack (default 128 x 128 x 50,000):

1. correlation + blocking SEM (with the default 4th-order bleach correction) by
   ``pipeline.analyse_stack`` / ``correlate_stack`` on a memory-mapped TIFF written with
   ``fluojax.io.write_stack`` (the "correlate" timing includes reading the TIFF band by band;
   excludes fitting); on a CPU with the numba kernel (the default there) and with the XLA
   reduction, side by side;
2. SIZE^2 2D fits (``fit_acfs``, model "2d") with the optimistix backend (default
   ``pipeline.FCS_SOLVER``: tolerances 1e-3, slot refilling), with the engine's tighter default
   tolerances, with jaxopt, and as a plain ``jax.vmap(fit.least_squares)`` over jitted chunks;
3. SIZE^2 3D fits (model "3d", tabulated SPIM model; the table is built inside ``fit_acfs``);
4. the baseline a Python user would write today: ``multipletau.autocorrelate(trace, m=16,
   normalize=True)`` per pixel + ``scipy.optimize.least_squares`` per pixel on the same 2D model
   (NumPy + ``scipy.special.erf``), weighted with the same SEM as the fluojax fits. Baseline
   times are measured on a subset and scaled linearly to SIZE^2 pixels.

Fit inputs are synthetic ACFs from the models themselves (D log-uniform in 0.1-10 um^2/s, N in
5-50, Gaussian noise with a plausible SEM), so the fits behave like fits to real data and the D
error can be checked. JIT compile time is excluded from the timed runs (one warm-up run each)
and reported separately as "first call".

Usage:  python experiments/bench_fcs.py [--frames 50000] [--size 128] [--repeats 3]
        python experiments/bench_fcs.py --nets IMFCSNET_RUN FCSNET_RUN [--size 128]   (learned estimators)
Smoke:  python experiments/bench_fcs.py --frames 5000 --size 32
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import fit, io
from fluojax.fcs import correlator, estimate, models, pipeline

FRAME_TIME_2D = 1.06e-3
FRAME_TIME_3D = 2.04e-3
OPTICS_2D = models.Optics()  # 24 um pixel, 100x, NA 1.45, 583 nm, sigma0 0.8
OPTICS_3D = models.Optics(24.0, 60.0, 1.0, 515.0, 1.1, 2.2, 1.333, 1)


# ----------------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------------


def make_stack(frames: int, size: int, seed: int = 0) -> np.ndarray:
    """A quick correlated "Poisson-ish" uint16 stack (T, size, size).

    Per pixel: mean 100-500 counts, an AR(1) fluctuation (correlation time 3-100 frames, four
    groups of pixels), a slow 10 % exponential bleach, plus shot noise ~ sqrt(mean). Not physical
    particle simulation, only realistic in size, dtype and rough statistics.
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    pixels = size * size
    mean = rng.uniform(100.0, 500.0, pixels).astype(np.float32)
    group = rng.integers(0, 4, pixels)
    taus = np.array([3.0, 10.0, 30.0, 100.0])
    out = np.empty((frames, pixels), np.uint16)
    chunk = 5000
    state = {g: np.zeros((1, int(np.sum(group == g))), np.float64) for g in range(4)}
    for t0 in range(0, frames, chunk):
        t1 = min(frames, t0 + chunk)
        n = t1 - t0
        fluct = np.empty((n, pixels), np.float32)
        for g, tau in enumerate(taus):
            idx = np.nonzero(group == g)[0]
            a = np.exp(-1.0 / tau)
            white = rng.standard_normal((n, idx.size), dtype=np.float32) * np.sqrt(1 - a * a)
            y, state[g] = lfilter([1.0], [1.0, -a], white, axis=0, zi=state[g] * 1.0)
            fluct[:, idx] = y
        bleach = np.exp(-0.1 * np.arange(t0, t1, dtype=np.float32) / frames)[:, None]
        m = mean[None, :] * bleach
        x = m * (1.0 + 0.1 * fluct) + np.sqrt(m) * rng.standard_normal((n, pixels), dtype=np.float32)
        out[t0:t1] = np.clip(np.rint(x), 0, 65534).astype(np.uint16)
    return out.reshape(frames, size, size)


def make_acfs(kind: str, n: int, lag_s: np.ndarray, seed: int):
    """n noisy model ACFs: returns (acf (n, C), sem (n, C), true D (n,))."""
    rng = np.random.default_rng(seed)
    d = np.exp(rng.uniform(np.log(0.1), np.log(10.0), n)).astype(np.float32)
    nn = rng.uniform(5.0, 50.0, n).astype(np.float32)
    ginf = rng.normal(0.0, 1e-4, n).astype(np.float32)
    lag = jnp.asarray(lag_s, jnp.float32)
    if kind == "2d":
        g = jax.vmap(lambda th: pipeline.acf_model_2d(th, (lag, OPTICS_2D)))
    else:
        table = jax.jit(models.spim_shape_table)(OPTICS_3D)
        g = jax.vmap(lambda th: pipeline.acf_model_3d(th, (lag, table)))
    clean = np.asarray(g(jnp.asarray(np.stack([nn, d, ginf], 1))))
    # SEM: ~2 % of the amplitude at short lags rising to ~6 % at the longest lags (fewer
    # independent samples there), as blocking gives on 50,000-frame traces
    c = lag_s.size
    amp = clean[:, :1]
    sem = (amp * 0.02 * (1.0 + 2.0 * np.arange(c) / (c - 1))[None, :]).astype(np.float32)
    acf = (clean + sem * rng.standard_normal(clean.shape).astype(np.float32)).astype(np.float32)
    return acf, sem, d


# ----------------------------------------------------------------------------------------------
# baseline: multipletau + scipy
# ----------------------------------------------------------------------------------------------


def numpy_model_2d(theta, lag_s, a, w):
    from scipy.special import erf

    n, d, ginf = theta
    p = a / np.sqrt(w**2 + 4.0 * d * lag_s)
    b = erf(p) + np.expm1(-(p**2)) / (np.sqrt(np.pi) * p)
    return b**2 / n + ginf


def scipy_fits(acf, sem, lag_s, init):
    """Weighted (1/SEM) per-pixel scipy least_squares on the 2D model; returns (D, converged)."""
    from scipy.optimize import least_squares

    a = float(models.pixel_side_um(OPTICS_2D))
    w = float(models.psf_radius_um(OPTICS_2D))
    lag = lag_s.astype(np.float64)
    d_out = np.full(acf.shape[0], np.nan)
    ok = np.zeros(acf.shape[0], bool)
    for i in range(acf.shape[0]):
        y = acf[i].astype(np.float64)
        s = sem[i].astype(np.float64)
        x0 = np.clip(init[i].astype(np.float64), [1e-6, 1e-6, -0.9], [np.inf, np.inf, 0.9])
        r = least_squares(
            lambda th: (numpy_model_2d(th, lag, a, w) - y) / s,  # noqa: B023
            x0,
            bounds=([0.0, 0.0, -1.0], [np.inf, np.inf, 1.0]),
        )
        d_out[i] = r.x[1]
        ok[i] = r.success
    return d_out, ok


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def timed(fn, repeats):
    """(first-call seconds, median of `repeats` timed calls, all timings, last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return first, (statistics.median(times) if times else float("nan")), times, out


def fit_quality(result, d_true):
    conv = float(np.mean(np.asarray(result.status) == fit.Status.CONVERGED))
    rel = np.abs(np.asarray(result.params)[:, 1] / d_true - 1.0)
    return conv, float(np.nanmedian(rel))


def bench_learned(imfcsnet_run: str, fcsnet_run: str, size: int, repeats: int) -> None:
    """Inference of trained networks: an ImFCSNet map of a SIZE x SIZE x T stack (overlapping
    3 x 3 windows, T = the network's window) and FCSNet on SIZE^2 ACFs; plus the training
    throughput recorded in each run's metrics.csv."""
    from fluojax.fcs import learned

    imfcsnet, meta_i = learned.load_network(imfcsnet_run, expect="imfcsnet")
    fcsnet, meta_f = learned.load_network(fcsnet_run, expect="fcsnet")
    frames = meta_i["prior"]["frames"]
    rng = np.random.default_rng(0)
    stack = rng.poisson(5.0, (frames, size, size)).astype(np.float32)
    acfs = rng.normal(0.0, 0.01, (size * size, 72)).astype(np.float32) + np.geomspace(0.05, 0.001, 72, dtype=np.float32)
    rows = []
    first, med, _, _ = timed(
        lambda: learned.predict_imfcsnet_map(imfcsnet, stack, frames, overlap=True, batch=1024, progress=False), repeats
    )
    rows.append(
        (
            f"ImFCSNet map {size}x{size}x{frames}, overlapping ({meta_i['recipe']})",
            first,
            med,
            f"{(size - 2) ** 2} windows",
        )
    )
    first, med, _, _ = timed(lambda: learned.predict_ln_d(fcsnet, acfs, batch=4096), repeats)
    rows.append((f"FCSNet on {size * size} ACFs ({meta_f['recipe']})", first, med, ""))
    for run, meta in ((imfcsnet_run, meta_i), (fcsnet_run, meta_f)):
        rates = [float(r) for r in meta["history"]["samples_per_s"] if r == r]
        rows.append(
            (
                f"training throughput {meta['recipe']} (samples/s, median of log rows)",
                None,
                float(np.median(rates)) if rates else float("nan"),
                f"{meta['step']} steps in {run}",
            )
        )
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    w = max(len(r[0]) for r in rows)
    for name, first, t, note in rows:
        f = f"{first:12.2f}" if first is not None else f"{'':12}"
        print(f"{name:<{w}}  {f}  {t:12.2f}  {note}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats of each fit (median)")
    ap.add_argument("--baseline-pixels", type=int, default=64, help="pixels in the multipletau subset")
    ap.add_argument("--baseline-fits", type=int, default=64, help="fits in the scipy subset")
    ap.add_argument("--tmpdir", default=None, help="where to write the temporary TIFF")
    ap.add_argument(
        "--tile-pixels",
        type=int,
        default=None,
        help="pixels per correlation band (default: AnalysisSettings.band_pixels(); GPU: e.g. 16384)",
    )
    ap.add_argument(
        "--nets",
        nargs=2,
        default=None,
        metavar=("IMFCSNET_RUN", "FCSNET_RUN"),
        help="benchmark inference of these trained networks instead of the NLS pipeline",
    )
    args = ap.parse_args()
    if args.nets:
        return bench_learned(args.nets[0], args.nets[1], args.size, args.repeats)

    frames, size = args.frames, args.size
    pixels = size * size
    print(f"fluojax benchmark: {size} x {size} x {frames} uint16, {pixels} fits per variant")
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"host: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    rows = []  # (stage, first call s, timed s, note)

    # ---- data ------------------------------------------------------------------------------
    t0 = time.perf_counter()
    stack = make_stack(frames, size)
    t_gen = time.perf_counter() - t0
    fd, tif = tempfile.mkstemp(suffix=".tif", prefix="fluojax_bench_", dir=args.tmpdir)
    os.close(fd)
    tif = Path(tif)
    try:
        t0 = time.perf_counter()
        io.write_stack(tif, stack, FRAME_TIME_2D)
        t_write = time.perf_counter() - t0
        del stack
        print(f"synthesised stack in {t_gen:.1f} s, wrote {tif.stat().st_size / 1e9:.2f} GB TIFF in {t_write:.1f} s")
        data, _meta = io.read_stack(tif)
        print(f"read_stack: {type(data).__name__} {data.shape} {data.dtype}")

        settings = pipeline.AnalysisSettings(
            FRAME_TIME_2D, OPTICS_2D, model="2d", tile_pixels=args.tile_pixels, bleach_order=4
        )
        grid = correlator.lag_grid(settings.p, settings.q)
        lag_s = (grid.lags * FRAME_TIME_2D).astype(np.float64)

        # ---- 1. correlation + SEM ------------------------------------------------------------
        rows_per_band = max(1, min(size, settings.band_pixels() // size))
        t0 = time.perf_counter()
        warm = pipeline.correlate_band(np.asarray(data[:, :rows_per_band, :]), settings)
        jax.block_until_ready(warm)
        t_corr_first = time.perf_counter() - t0
        del warm
        kernel_name = "numba CPU kernel" if settings.uses_cpu_kernel() else "XLA"

        # warm the 2D fit too, so the analyse_stack run below compiles nothing
        acf2, sem2, d2 = make_acfs("2d", pixels, lag_s, seed=1)
        t0 = time.perf_counter()
        pipeline.fit_acfs(acf2, sem2, lag_s, settings)
        t_fit_first = time.perf_counter() - t0

        t0 = time.perf_counter()
        maps = pipeline.analyse_stack(data, settings, progress=False)
        t_pipe = time.perf_counter() - t0
        # correlation alone: analyse_stack's run plus (repeats - 1) more, median
        corr_times = [maps.timings_s["correlate"]]
        corr_times += [
            pipeline.correlate_stack(data, settings, progress=False).seconds for _ in range(args.repeats - 1)
        ]
        t_corr = statistics.median(corr_times)
        n_bands = -(-size // rows_per_band)
        rows.append(
            (
                f"correlate + blocking SEM (analyse_stack, incl. TIFF read + bleach corr.; {kernel_name})",
                t_corr_first,
                t_corr,
                f"median of {len(corr_times)} ({', '.join(f'{t:.1f}' for t in corr_times)}); first call = compile + 1 of {n_bands} bands",
            )
        )
        t_corr_xla = None
        if settings.uses_cpu_kernel():  # the same stage with the XLA reduction, for comparison
            xla = dataclasses.replace(settings, correlator_kernel="xla")
            t0 = time.perf_counter()
            jax.block_until_ready(pipeline.correlate_band(np.asarray(data[:, :rows_per_band, :]), xla))
            t_xla_first = time.perf_counter() - t0
            xla_times = [pipeline.correlate_stack(data, xla, progress=False).seconds for _ in range(args.repeats)]
            t_corr_xla = statistics.median(xla_times)
            rows.append(
                (
                    "correlate + blocking SEM, XLA reduction (correlator_kernel='xla')",
                    t_xla_first,
                    t_corr_xla,
                    f"median of {len(xla_times)} ({', '.join(f'{t:.1f}' for t in xla_times)})",
                )
            )
        rows.append(
            (
                "  (analyse_stack fit stage on these synthetic-stack ACFs)",
                None,
                maps.timings_s["fit"],
                f"1 run; {np.mean(maps.status == 0):.1%} converged",
            )
        )
        rows.append(("  (analyse_stack total wall)", None, t_pipe, "1 run"))

        # ---- 2. 2D fits ----------------------------------------------------------------------
        results = {}
        variants = (
            ("optimistix", "optimistix (FCS default: tolerances 1e-3, slot refilling)", pipeline.FCS_SOLVER),
            (
                "optimistix-engine-tolerances",
                "optimistix, the engine's default tolerances (1e-4, 1e-6)",
                fit.LevenbergMarquardt(),
            ),
            ("jaxopt", "jaxopt (its default tolerances)", fit.LevenbergMarquardt(backend=fit.JaxoptBackend())),
        )
        for key, label, solver in variants:
            st = pipeline.AnalysisSettings(FRAME_TIME_2D, OPTICS_2D, model="2d", solver=solver)
            first, med, times, res = timed(lambda st=st: pipeline.fit_acfs(acf2, sem2, lag_s, st), args.repeats)
            if key == "optimistix":
                first = max(first, t_fit_first)  # its compile happened in the warm-up above
            conv, err = fit_quality(res, d2)
            results[f"2d-{key}"] = med
            rows.append(
                (
                    f"{pixels} 2D fits, {label}",
                    first,
                    med,
                    f"median of {len(times)}; {conv:.1%} converged, median |dD/D| {err:.2%}, "
                    f"{np.median(res.num_steps):.0f} steps (median)",
                )
            )

        # the same fits as a plain jax.vmap(fit.least_squares) over jitted chunks of 256 (what a
        # user would write by hand; every chunk iterates until its slowest fit stops)
        model2, make_args2, shape2 = estimate.model_and_shape(settings)
        init2 = pipeline.start_values(acf2, lag_s, shape2)
        plain = jax.jit(
            jax.vmap(
                lambda d, s, i: fit.least_squares(
                    model2,
                    d,
                    s,
                    i,
                    make_args2(jnp.asarray(lag_s, jnp.float32)),
                    solver=pipeline.FCS_SOLVER,
                    **estimate.FCS_BOUNDS,
                )
            )
        )

        def plain_chunks(chunk=256):
            parts = [
                jax.device_get(plain(acf2[a : a + chunk], sem2[a : a + chunk], init2[a : a + chunk]))
                for a in range(0, pixels, chunk)
            ]
            return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

        first, med, times, res = timed(plain_chunks, args.repeats)
        conv, err = fit_quality(res, d2)
        results["2d-plain-vmap"] = med
        rows.append(
            (
                f"{pixels} 2D fits, plain jax.vmap(least_squares) in jitted chunks of 256 (FCS tolerances)",
                first,
                med,
                f"median of {len(times)}; {conv:.1%} converged, median |dD/D| {err:.2%}, "
                f"{np.median(res.num_steps):.0f} steps (median)",
            )
        )

        # ---- 3. 3D fits ----------------------------------------------------------------------
        lag3 = (grid.lags * FRAME_TIME_3D).astype(np.float64)
        acf3, sem3, d3 = make_acfs("3d", pixels, lag3, seed=2)
        st3 = pipeline.AnalysisSettings(FRAME_TIME_3D, OPTICS_3D, model="3d")
        first, med, times, res = timed(lambda: pipeline.fit_acfs(acf3, sem3, lag3, st3), args.repeats)
        conv, err = fit_quality(res, d3)
        results["3d"] = med
        rows.append(
            (
                f"{pixels} 3D fits, optimistix (incl. shape table)",
                first,
                med,
                f"median of {len(times)}; {conv:.1%} converged, median |dD/D| {err:.2%}",
            )
        )

        # ---- 4. baseline ---------------------------------------------------------------------
        import multipletau

        nb = min(args.baseline_pixels, pixels)
        traces = np.asarray(data[:, 0, :nb] if nb <= size else data.reshape(frames, -1)[:, :nb]).astype(np.float64)

        def run_mt():
            return [multipletau.autocorrelate(traces[:, i], m=16, normalize=True) for i in range(nb)]

        _, mt_med, _mt_times, mt_out = timed(run_mt, 1)
        mt_per_px = mt_med / nb
        rows.append(
            (
                f"multipletau m=16 per pixel ({nb} px, scaled to {pixels})",
                None,
                mt_per_px * pixels,
                f"{mt_per_px * 1e3:.2f} ms/px, {mt_out[0].shape[0]} lags, no SEM, no bleach corr.",
            )
        )

        nf = min(args.baseline_fits, pixels)
        _, shape_fn = estimate.model_and_shape(settings)[0], estimate.model_and_shape(settings)[2]
        init = pipeline.start_values(acf2[:nf], lag_s, shape_fn)
        _, sp_med, _sp_times, (d_sp, ok_sp) = timed(lambda: scipy_fits(acf2[:nf], sem2[:nf], lag_s, init), 1)
        sp_per_fit = sp_med / nf
        sp_err = float(np.nanmedian(np.abs(d_sp / d2[:nf] - 1.0)))
        rows.append(
            (
                f"scipy least_squares 2D per pixel ({nf} fits, scaled to {pixels})",
                None,
                sp_per_fit * pixels,
                f"{sp_per_fit * 1e3:.2f} ms/fit, weighted 1/SEM; {ok_sp.mean():.1%} success, median |dD/D| {sp_err:.2%}",
            )
        )
    finally:
        try:
            del data
        except NameError:
            pass
        tif.unlink(missing_ok=True)

    # ---- report ----------------------------------------------------------------------------
    fl_e2e = t_corr + results["2d-optimistix"]
    base_e2e = (mt_per_px + sp_per_fit) * pixels
    rows.append(("fluojax end to end (correlate + 2D fits, optimistix)", None, fl_e2e, "sum of the rows above"))
    rows.append(("baseline end to end (multipletau + scipy), scaled", None, base_e2e, "sum of the rows above"))

    print()
    w = max(len(r[0]) for r in rows)
    print(f"{'stage':<{w}}  {'first call s':>12}  {'timed s':>9}  note")
    print("-" * (w + 40))
    for name, first, t, note in rows:
        f = f"{first:12.2f}" if first is not None else f"{'':12}"
        print(f"{name:<{w}}  {f}  {t:9.2f}  {note}")
    print()
    print("ratios:")
    print(f"  baseline / fluojax, end to end:          {base_e2e / fl_e2e:8.1f}x")
    print(f"  multipletau / fluojax correlate+SEM:      {mt_per_px * pixels / t_corr:8.1f}x")
    if t_corr_xla is not None:
        print(f"  XLA / numba CPU kernel correlate+SEM:     {t_corr_xla / t_corr:8.1f}x")
    print(f"  scipy / fluojax 2D fits (optimistix):     {sp_per_fit * pixels / results['2d-optimistix']:8.1f}x")
    print(f"  plain vmapped chunks / slot refilling:    {results['2d-plain-vmap'] / results['2d-optimistix']:8.2f}")
    print(
        f"  engine / FCS tolerances, optimistix:      {results['2d-optimistix-engine-tolerances'] / results['2d-optimistix']:8.2f}"
    )
    print(f"  jaxopt / optimistix 2D fit time:          {results['2d-jaxopt'] / results['2d-optimistix']:8.2f}")
    print(f"  3D / 2D fit time (optimistix):            {results['3d'] / results['2d-optimistix']:8.2f}")
    print()
    print("targets (issue):")
    print(f"  correlation + SEM <= 10 s:                {t_corr:8.2f} s  {'MET' if t_corr <= 10 else 'NOT MET'}")
    print(
        f"  {pixels} 2D fits <= 5 s:                  {results['2d-optimistix']:8.2f} s  {'MET' if results['2d-optimistix'] <= 5 else 'NOT MET'}"
    )
    r3 = results["3d"] / results["2d-optimistix"]
    print(f"  3D fits <= 2x 2D fits:                    {r3:8.2f} x  {'MET' if r3 <= 2 else 'NOT MET'}")
    r = base_e2e / fl_e2e
    print(f"  >= 20x faster than multipletau + scipy:   {r:8.1f} x  {'MET' if r >= 20 else 'NOT MET'}")


if __name__ == "__main__":
    main()
