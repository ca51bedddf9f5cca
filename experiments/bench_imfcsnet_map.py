"""Benchmark (not a test): the ImFCSNet map by shared pixel spectra and FFT vs. the network on every window.

Times ``fluojax.fcs.learned.predict_imfcsnet_map`` on a SIZE x SIZE x FRAMES stack of Poisson
counts with overlapping 3 x 3 windows ((SIZE - 2)^2 windows), side by side:

* ``fft`` (the default): each pixel's centred trace transformed once, the first layer summed
  over the 9 pixels in the frequency domain, the residual convolutions by FFT;
* ``direct``: the network (``ImFCSNet.__call__``) on every window's (FRAMES, 3, 3) stack.

The network is the paper-size ImFCSNet (``ImFCSNetConfig.paper()``, 716,896 parameters) with
random weights (``--run`` loads a trained checkpoint instead): the work does not depend on the
weights' values. Timed calls exclude compilation (one warm-up call each, reported as "first
call"); the median of ``--repeats`` calls and the ratio direct / fft are printed, with the largest
difference between the two maps in ln D.

Usage:  python experiments/bench_imfcsnet_map.py [--size 128] [--frames 2500] [--repeats 3] [--batch 256]
Smoke:  python experiments/bench_imfcsnet_map.py --size 12 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np


def timed(fn, repeats: int):
    """(first-call seconds, median of ``repeats`` timed calls, the timings, median process CPU
    seconds of the timed calls (all threads; a steadier measure of the work on a shared machine),
    the last result)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    median = statistics.median(times) if times else float("nan")
    return first, median, times, statistics.median(cpu) if cpu else float("nan"), out


def main() -> None:
    from flax import nnx

    from fluojax.fcs import learned, nets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="image side (pixels)")
    ap.add_argument("--frames", type=int, default=2500, help="frames (one chunk of the network's length)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per method (median)")
    ap.add_argument("--batch", type=int, default=64, help="windows per compiled call")
    ap.add_argument("--run", default=None, help="trained ImFCSNet run folder (default: random paper-size weights)")
    ap.add_argument("--skip-direct", action="store_true", help="time only the fft path")
    args = ap.parse_args()

    if args.run:
        net, meta = learned.load_network(args.run, expect="imfcsnet")
        what = f"trained {meta['recipe']} ({args.run})"
    else:
        net = nnx.view(nets.build_network(nets.ImFCSNetConfig.paper(), seed=0), use_running_average=True)
        what = "paper-size ImFCSNet, random weights"
    rng = np.random.default_rng(0)
    stack = rng.poisson(5.0, (args.frames, args.size, args.size)).astype(np.float32)
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    print(f"network: {what}; stack {args.size} x {args.size} x {args.frames}, {(args.size - 2) ** 2} windows")
    print(f"repeats {args.repeats}, batch {args.batch}")
    results = {}
    methods = ("fft",) if args.skip_direct else ("fft", "direct")
    for method in methods:
        with np.errstate(over="ignore"):  # random weights: ln D far outside any physical range
            first, med, times, cpu, out = timed(
                lambda m=method: learned.predict_imfcsnet_map(
                    net, stack, args.frames, overlap=True, batch=args.batch, progress=False, method=m
                ),
                args.repeats,
            )
        results[method] = out
        print(
            f"{method:<7} first call {first:8.2f} s   median {med:8.2f} s   (CPU time {cpu:8.2f} s)   "
            f"runs {[round(t, 2) for t in times]}"
        )
        results[method + "_median"] = med
    if not args.skip_direct:
        fast, direct = results["fft"]["ln_d_chunks"], results["direct"]["ln_d_chunks"]
        print(f"direct / fft: {results['direct_median'] / results['fft_median']:.2f}x")
        print(
            f"max |ln D fft - ln D direct| = {np.nanmax(np.abs(fast - direct)):.2e} (max |ln D| {np.nanmax(np.abs(direct)):.1f})"
        )


if __name__ == "__main__":
    main()
