"""Benchmark (not a test): ``fluojax fcs fit`` as a whole process against multipletau + scipy, same stack.

For each stack size (default 128 x 128 x 50,000 and 64 x 64 x 20,000 frames):

1. **The stack**: simulated once by ``fluojax fcs simulate --size S --frames T`` (2D diffusion,
   the command's defaults; with ``--tile K`` a side/K stack repeated K x K times, its photon
   counts written as uint16 as a camera writes them) and kept in ``--stack-dir`` for later runs (its time is reported, not
   compared); ``--quick-stack`` writes ``experiments/bench_fcs.make_stack``'s AR(1) stack
   instead (seconds instead of minutes, but its ACFs are not the 2D model's).
2. **fluojax**: ``python -m fluojax fcs fit STACK -o OUT`` as a subprocess, wall clock, all
   options at their defaults. First run with an empty JAX compilation cache and an empty numba
   cache (``FLUOJAX_CACHE_DIR`` and ``NUMBA_CACHE_DIR`` pointed at fresh folders: the first run
   after install), then ``--warm-runs`` runs with both caches filled (the second run after
   install and later ones; their median is compared).
3. **The peer**, as a Python user would write it today: per pixel
   ``multipletau.autocorrelate(trace, m=16, deltat=frame_time, normalize=True)`` (lag 0 dropped)
   and ``scipy.optimize.least_squares`` with its defaults (trf, 2-point Jacobian), unweighted, on
   the same 2D ITIR model ``fcs fit`` fits (``bench_fcs.numpy_model_2d``, the optics of
   ``fcs fit``'s defaults). Run as a subprocess: its imports (multipletau, scipy, tifffile), the
   TIFF read and the per-pixel loop are timed inside it (loading this file's helper module,
   which imports jax, is not counted). With ``--peer-pixels N`` only N pixels spread over the
   image are correlated and fitted and the loop time is extrapolated linearly to every pixel
   (the output says so).

The ratio printed is peer total / fluojax warm median.

Usage:  python experiments/bench_cli.py [--sizes 128x50000 64x20000] [--stack-dir DIR] [--peer-pixels N]
Smoke:  python experiments/bench_cli.py --sizes 32x5000 --peer-pixels 64 --warm-runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FRAME_TIME_S = 1.06e-3  # fluojax fcs simulate's default frame time


def _env(**extra: str) -> dict:
    """This environment with the worktree first on PYTHONPATH and ``extra`` set."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def make_stack(path: Path, size: int, frames: int, quick: bool, tile: int = 1) -> float:
    """Write the benchmark stack at ``path`` unless it exists; seconds spent (0 when it existed).

    With ``tile`` > 1 a ``size / tile`` square stack is simulated and repeated ``tile x tile``
    times side by side: every pixel still carries a simulated 2D-diffusion trace, both sides do
    the full per-pixel work, and the simulation costs ~tile^4 times less."""
    if path.exists():
        return 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if tile > 1:
        part = path.with_name(f"{path.stem}_part{size // tile}.tif")
        make_stack(part, size // tile, frames, quick)
        code = (
            "import sys, numpy as np; from fluojax import io;"
            "s, m = io.read_stack(sys.argv[1]); k = int(sys.argv[3]);"
            "t = np.tile(np.asarray(s), (1, k, k)); c = t.astype(np.uint16);"
            "t = c if np.array_equal(c, t) else t;"  # photon counts, written as a camera writes them
            "io.write_stack(sys.argv[2], t, float(sys.argv[4]), m.get('pixel_um'))"
        )
        cmd = [sys.executable, "-c", code, str(part), str(path), str(tile), str(FRAME_TIME_S)]
        subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
        part.unlink()
        return time.perf_counter() - t0
    if quick:
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from bench_fcs import make_stack; from fluojax import io;"
            "io.write_stack(sys.argv[2], make_stack(int(sys.argv[3]), int(sys.argv[4])), float(sys.argv[5]))"
        )
        cmd = [sys.executable, "-c", code, str(HERE), str(path), str(frames), str(size), str(FRAME_TIME_S)]
    else:
        cmd = [sys.executable, "-m", "fluojax", "fcs", "simulate", "--size", str(size), "--frames", str(frames)]
        cmd += ["--frame-time", str(FRAME_TIME_S), "-o", str(path)]
    subprocess.run(cmd, check=True, env=_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def run_fluojax(stack: Path, out: Path, cache: Path, numba_cache: Path) -> tuple[float, dict]:
    """Wall seconds of ``fluojax fcs fit STACK -o OUT`` and its summary.json timings."""
    cmd = [sys.executable, "-m", "fluojax", "fcs", "fit", str(stack), "-o", str(out), "--overwrite"]
    env = _env(FLUOJAX_CACHE_DIR=str(cache), NUMBA_CACHE_DIR=str(numba_cache))
    env.pop("FLUOJAX_NO_CACHE", None)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"fluojax fcs fit failed ({done.returncode}):\n{done.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    return wall, {"timings_s": summary["timings_s"], "fitted": summary["fitted"], "pixels": summary["pixels"]}


def optics_lengths() -> tuple[float, float]:
    """Pixel side a and PSF radius w (um) of ``fluojax fcs fit``'s default 2D optics."""
    from fluojax.fcs import models, pipeline

    optics = pipeline.default_optics("2d")
    return float(models.pixel_side_um(optics)), float(models.psf_radius_um(optics))


def run_peer(stack: Path, pixels: int | None, a_um: float, w_um: float) -> tuple[float, dict]:
    """Wall seconds of the peer subprocess and what it measured inside (``peer_worker``)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--peer-worker", str(stack), "--a", repr(a_um)]
    cmd += ["--w", repr(w_um), "--peer-pixels", str(pixels or 0)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"peer failed ({done.returncode}):\n{done.stderr}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def peer_worker(stack: str, pixels: int, a_um: float, w_um: float) -> None:
    """The peer: read the TIFF, then per pixel multipletau + unweighted scipy least_squares; prints JSON."""
    sys.path.insert(0, str(HERE))
    import numpy as np
    from bench_fcs import numpy_model_2d  # the same 2D model as bench_fcs's baseline (not timed)

    t0 = time.perf_counter()
    import multipletau
    import tifffile
    from scipy.optimize import least_squares

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    with tifffile.TiffFile(stack) as tif:
        frame_time = float((tif.imagej_metadata or {}).get("finterval", FRAME_TIME_S))
        data = tif.asarray()
    t_read = time.perf_counter() - t0
    _, height, width = data.shape
    total = height * width
    chosen = np.arange(total) if not pixels or pixels >= total else np.linspace(0, total - 1, pixels).astype(int)

    t0 = time.perf_counter()
    d_fit, converged = [], 0
    for index in chosen:
        trace = data[:, index // width, index % width].astype(np.float64)
        g = multipletau.autocorrelate(trace, m=16, deltat=frame_time, normalize=True)[1:]
        lag, y = g[:, 0], g[:, 1]
        n0 = 1.0 / y[0] if y[0] > 0 else 1.0
        half = np.nonzero(y < 0.5 * y[0])[0]
        tau_half = lag[half[0]] if half.size else lag[len(lag) // 2]
        x0 = np.clip([n0, w_um**2 / (4.0 * tau_half), 0.0], [1e-6, 1e-6, -0.9], [1e6, 1e6, 0.9])
        fit = least_squares(
            lambda th: numpy_model_2d(th, lag, a_um, w_um) - y,  # noqa: B023
            x0,
            bounds=([0.0, 0.0, -1.0], [np.inf, np.inf, 1.0]),
        )
        d_fit.append(fit.x[1])
        converged += bool(fit.success)
    t_loop = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "import_s": t_import,
                "read_s": t_read,
                "loop_s": t_loop,
                "pixels_done": int(chosen.size),
                "pixels": total,
                "converged": converged,
                "median_d_um2_s": float(np.median(d_fit)),
                "lags": int(lag.size),
            }
        )
    )


def parse_size(text: str) -> tuple[int, int]:
    side, frames = text.lower().split("x")
    return int(side), int(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["128x50000", "64x20000"], help="SIDExFRAMES (default both)")
    ap.add_argument(
        "--stack-dir", default=None, help="where the stacks are simulated once and kept (default: a temp dir)"
    )
    ap.add_argument("--quick-stack", action="store_true", help="AR(1) synthetic stack instead of fcs simulate")
    ap.add_argument(
        "--tile", type=int, default=1, help="simulate side/K and tile K x K (the simulation ~K^4 times cheaper)"
    )
    ap.add_argument("--warm-runs", type=int, default=3, help="fluojax runs with warm caches (median compared)")
    ap.add_argument("--peer-pixels", type=int, default=0, help="peer on N pixels, extrapolated (0: every pixel)")
    ap.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--a", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--w", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer_worker:
        return peer_worker(args.peer_worker, args.peer_pixels, args.a, args.w)

    import jax
    import ml_dtypes
    import numba

    print("fluojax fcs fit as a whole process vs multipletau + scipy least_squares (unweighted, defaults)")
    print(
        f"JAX {jax.__version__} ({jax.default_backend()}), numba {numba.__version__}, ml_dtypes {ml_dtypes.__version__}"
    )
    print(f"host: {platform.platform()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    a_um, w_um = optics_lengths()
    with tempfile.TemporaryDirectory(prefix="fluojax_bench_cli_") as tmp:
        tmp = Path(tmp)
        stack_dir = Path(args.stack_dir) if args.stack_dir else tmp / "stacks"
        rows = []
        for text in args.sizes:
            size, frames = parse_size(text)
            kind = "ar1" if args.quick_stack else "sim"
            stack = stack_dir / f"{kind}_{size}x{size}x{frames}.tif"
            tile = args.tile if size % args.tile == 0 else 1
            if tile > 1:
                stack = stack.with_name(f"{stack.stem}_tiled{tile}.tif")
            made = make_stack(stack, size, frames, args.quick_stack, tile)
            how = "AR(1) bench_fcs.make_stack" if args.quick_stack else "fluojax fcs simulate (2D diffusion)"
            if tile > 1:
                how += f" of {size // tile} x {size // tile} pixels tiled {tile} x {tile}"
            print(
                f"\n== {size} x {size} x {frames}: {stack} ({how}; " + (f"made in {made:.0f} s)" if made else "reused)")
            )

            cache, numba_cache = tmp / f"jax_{text}", tmp / f"numba_{text}"
            out = tmp / f"out_{text}"
            first, info = run_fluojax(stack, out, cache, numba_cache)
            print(f"fluojax first run (empty JAX + numba caches): {first:.2f} s  (in-command {info['timings_s']})")
            warm = []
            for k in range(args.warm_runs):
                wall, info = run_fluojax(stack, out, cache, numba_cache)
                warm.append(wall)
                print(f"fluojax warm run {k + 2}: {wall:.2f} s  (in-command {info['timings_s']})")
            fitted = f"{info['fitted']}/{info['pixels']} pixels fitted"
            warm_s = statistics.median(warm) if warm else first

            wall, peer = run_peer(stack, args.peer_pixels, a_um, w_um)
            per_pixel = peer["loop_s"] / peer["pixels_done"]
            peer_total = peer["import_s"] + peer["read_s"] + per_pixel * peer["pixels"]
            scope = (
                "every pixel"
                if peer["pixels_done"] == peer["pixels"]
                else f"EXTRAPOLATED from {peer['pixels_done']} of {peer['pixels']} pixels"
            )
            print(
                f"peer: imports {peer['import_s']:.2f} s, TIFF read {peer['read_s']:.2f} s, "
                f"{per_pixel * 1e3:.2f} ms/pixel ({peer['lags']} lags, {peer['converged']}/{peer['pixels_done']} "
                f"converged, median D {peer['median_d_um2_s']:.3g} um^2/s) -> {peer_total:.1f} s ({scope}; "
                f"subprocess wall {wall:.1f} s)"
            )
            print(f"fluojax: {fitted}")
            ratio = peer_total / warm_s
            print(f"RATIO {size}x{size}x{frames}: peer {peer_total:.1f} s / fluojax warm {warm_s:.2f} s = {ratio:.1f}x")
            rows.append((f"{size} x {size} x {frames:,}", first, warm_s, peer_total, ratio, scope))

    print("\n| stack | fluojax first run | fluojax warm (median) | multipletau + scipy | ratio (warm) |")
    print("|---|---:|---:|---:|---:|")
    for name, first, warm_s, peer_total, ratio, scope in rows:
        note = "" if scope == "every pixel" else " (extrapolated)"
        print(f"| {name} | {first:.1f} s | {warm_s:.2f} s | {peer_total:.1f} s{note} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
