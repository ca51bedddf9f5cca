"""Benchmark (not a test): fluojax SOFI cumulants and the MISR-GRU network vs. NumPy and pysofi.

What is measured, all in one run (CPU unless JAX sees an accelerator):

1. **Cross-cumulants** of orders 2, 3 and 4 (sofipackage's pixel combinations and grid,
   zero time lag; Dertinger et al. 2010) on two synthetic blinking stacks, 128 x 128 x 100 and
   512 x 512 x 1,000 (``--quick``: 256 x 256 x 200 as the large one). fluojax:
   ``fluojax.sofi.cumulants.cross_cumulant_sublattices`` (jitted) on the whole small stack in
   memory (first call, i.e. with compilation, and the median of warm calls), and the numba CPU
   kernel ``fluojax.sofi.cumulants_cpu.cross_cumulants_cpu`` (what the pipeline and the command
   use when JAX runs on the CPU); on the large stack, both, over frame blocks read one by one
   from the TIFF on disk (``io.read_stack_blocks`` + ``cumulants.mean_over_blocks``: the mean of
   the blocks' cumulants, sofipackage's subsequences; float32 copies for XLA, the uint16 counts
   as views of the memory map for the kernel) in a child process whose peak resident memory
   (``VmHWM``; it counts the mapped file's pages the process has read) is reported. The
   baseline is a NumPy implementation of the *same* quantity, written here as a NumPy user
   would: the pixel combinations are taken from fluojax's own table
   (``cumulants.combinations``), so both compute identical numbers; the arithmetic is NumPy's:
   subtract the temporal mean, then for every virtual pixel sum over the set partitions of its
   pixels without singletons ``(-1)^(P-1) (P-1)! prod_parts mean_t(prod of shifted views)``,
   vectorised over pixels with array slices, each distinct moment image computed once. On the
   large stack NumPy computes the same block means from the stack in memory. Before a ratio is
   printed the two are compared (max |difference| / max |value|). A floor row times one
   streaming pass over the stack (a sum over frames): no implementation can beat it.
2. **pysofi** (Miao et al. 2022; PyPI ``pysofi``), where it runs on NumPy 2: its per-pixel
   moment image (``PysofiData.moment_image``), moments + auto-cumulants to order 4
   (``PysofiData.cumulants_images``) and its 2nd-order cross-correlation images for pixel shifts
   (``reconstruction.calc_xc_im``). These are NOT the same quantities as sofipackage's
   cross-cumulants (auto-cumulants include shot noise; ``calc_xc_im`` is a product of two shifted
   pixels, no virtual-pixel grid), so no speed ratio is claimed against them except the
   like-for-like row: fluojax ``auto_cumulants`` vs ``cumulants_images``. pysofi reads its TIFF
   frame by frame (its only interface), so its rows include reading. The other pysofi functions
   are called once on the small stack and any exception is printed (the ``np.float``/``np.int``
   aliases removed in NumPy 1.24 break some of them).
3. **The command** ``fluojax sofi STACK.tif --order 2 -o OUT`` as a subprocess (start-up,
   reading, cumulants, flattening, writing), with the child's peak memory, if the command exists.
4. **Network latency**: ``fluojax.sofi.nets.MisrGru`` at the released size (24 channels,
   20 frames), untrained, jitted, float32, forward on 1 x 20 x 128 x 128 and 1 x 20 x 512 x 512
   (first call and warm median), beside the thesis's 4.85 frames/s (TensorRT, RTX 3090;
   Komen 2024); other hardware, so no ratio.

The CPU of the development machine is shared: rows are medians, the load average is printed.

Usage:  python experiments/bench_sofi.py [--out docs/bench/sofi_cpu.txt]
        python experiments/bench_sofi.py --quick          (< 2 min on a 2-core CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import io as fio

THESIS_FPS = 4.85  # Komen 2024: SOFI-MISRGRU, 20 x 128 x 128 input, TensorRT on an RTX 3090
NEIGHBOURHOOD = (-1, 2)  # sofipackage's 4 x 4 neighbourhood: offsets -1..2 from the reference pixel


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------


def make_stack(frames: int, side: int, seed: int, density: float = 0.02) -> np.ndarray:
    """A synthetic blinking stack (frames, side, side) uint16, made quickly in NumPy (not the simulator).

    ``density`` emitters per pixel at uniform positions, a pixel-integrated Gaussian PSF of
    s.d. 1.3 px, independent Bernoulli on/off per frame (on with probability 0.3), 400 photons per
    frame while on, 100 photons of background per pixel, Poisson noise.
    """
    from scipy.special import erf

    rng = np.random.default_rng(seed)
    k = max(1, int(density * side * side))
    pos = rng.uniform(2.0, side - 2.0, (k, 2))
    r = 4  # 9 x 9 patch
    base = np.floor(pos).astype(int)
    offsets = np.arange(-r, r + 1)
    s = 1.3 * math.sqrt(2.0)

    def factor(centre, base):  # (k, 9): pixel-integrated Gaussian along one axis
        edges = base[:, None] + offsets[None, :]
        return 0.5 * (erf((edges + 1 - centre[:, None]) / s) - erf((edges - centre[:, None]) / s))

    fy, fx = factor(pos[:, 0], base[:, 0]), factor(pos[:, 1], base[:, 1])
    weights = 400.0 * fy[:, :, None] * fx[:, None, :]  # (k, 9, 9)
    rows = np.clip(base[:, 0, None] + offsets, 0, side - 1)
    cols = np.clip(base[:, 1, None] + offsets, 0, side - 1)
    index = (rows[:, :, None] * side + cols[:, None, :]).reshape(k, -1)
    weights = weights.reshape(k, -1)
    out = np.empty((frames, side, side), np.uint16)
    for t in range(frames):
        on = rng.random(k) < 0.3
        expected = np.bincount(index[on].ravel(), weights[on].ravel(), minlength=side * side) + 100.0
        out[t] = rng.poisson(expected).reshape(side, side)
    return out


# ----------------------------------------------------------------------------------------------
# the combination table (fluojax's) and the NumPy baseline
# ----------------------------------------------------------------------------------------------


def fluojax_table(order: int) -> dict[tuple[int, int], list[tuple[int, int]]]:
    """fluojax's pixel combinations: {(i, j) sub-lattice: [(dy, dx) pixel offsets from the reference]}."""
    from fluojax.sofi import cumulants

    offsets = np.asarray(cumulants.combinations(order).offsets)  # (n^2, n, 2), row i n + j
    return {divmod(row, order): [(int(a), int(b)) for a, b in offsets[row]] for row in range(order * order)}


def partitions(items: list[int]):
    """All set partitions of ``items`` (lists of lists)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in partitions(rest):
        for i in range(len(p)):
            yield p[:i] + [[first] + p[i]] + p[i + 1 :]
        yield [[first]] + p


def numpy_cross_cumulants(stack: np.ndarray, order: int, table: dict) -> np.ndarray:
    """The same cross-cumulants in NumPy: (order, order, H - 3, W - 3) float32.

    ``d = x - mean_t(x)``; for the virtual pixel (i, j) with pixels r_1..r_n (``table``),
    ``kappa = sum over set partitions P of {1..n} with no singleton part of
    (-1)^(|P|-1) (|P|-1)! prod_{B in P} mean_t(prod_{k in B} d(r + r_k))`` (zero lag). Images are
    shifted views of ``d`` for the (H - 3) x (W - 3) reference pixels (rows/columns 1..H-3).
    Each distinct moment image (a set of offsets up to a translation) is computed once, over all
    positions where its pixels exist, and cropped for each use.
    """
    d = np.asarray(stack, np.float32)
    d = d - d.mean(axis=0)
    _, rows, cols = d.shape
    lo, hi = NEIGHBOURHOOD
    h, w = rows - (hi - lo), cols - (hi - lo)
    cache: dict[tuple, np.ndarray] = {}

    def moment(group):
        """mean_t of the product of d at the offsets ``group``, cropped to the reference pixels."""
        my, mx = min(o[0] for o in group), min(o[1] for o in group)
        key = tuple(sorted((o[0] - my, o[1] - mx) for o in group))
        if key not in cache:
            ry, rx = max(o[0] for o in key), max(o[1] for o in key)
            views = [d[:, a : rows - ry + a, b : cols - rx + b] for a, b in key]
            p = views[0] * views[1]
            for v in views[2:]:
                p *= v
            cache[key] = p.mean(axis=0)
        y0, x0 = my - lo, mx - lo
        return cache[key][y0 : y0 + h, x0 : x0 + w]

    parts = [p for p in partitions(list(range(order))) if all(len(b) > 1 for b in p)]
    out = np.empty((order, order, h, w), np.float32)
    for (i, j), offs in table.items():
        total = np.zeros((h, w), np.float32)
        for p in parts:
            term = (-1) ** (len(p) - 1) * math.factorial(len(p) - 1)
            for block in p:
                term = term * moment([offs[k] for k in block])
            total += term
        out[i, j] = total
    return out


def numpy_blocked(stack: np.ndarray, order: int, table: dict, block_frames: int) -> np.ndarray:
    """The mean of :func:`numpy_cross_cumulants` over consecutive blocks of ``block_frames`` frames
    (the last T mod B frames left out): the quantity fluojax computes over frame blocks."""
    count = stack.shape[0] // block_frames
    total = None
    for k in range(count):
        value = numpy_cross_cumulants(stack[k * block_frames : (k + 1) * block_frames], order, table)
        total = value if total is None else total + value
    return total / count


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| (cumulant images cross zero: relative to the image's scale)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def timed(fn, repeats):
    """(first-call seconds, median of ``repeats`` calls after it, all times, last result); blocks on JAX output."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), times, out


def fmt_times(times):
    return "(" + ", ".join(f"{t:.3g}" for t in times) + ")"


class Table:
    """Rows: (measurement, stack, first call s, median s, vs NumPy, note)."""

    def __init__(self, versus="vs NumPy"):
        self.versus, self.rows = versus, []

    def add(self, what, stack, first, median, ratio=None, note=""):
        self.rows.append((what, stack, first, median, ratio, note))

    def markdown(self):
        lines = [
            f"| measurement | stack | first call s | median s | {self.versus} | note |",
            "|---|---|---:|---:|---:|---|",
        ]
        for what, stack, first, med, ratio, note in self.rows:
            f = "" if first is None else f"{first:.3g}"
            m = "" if med is None else f"{med:.4g}"
            r = "" if ratio is None else f"{ratio:.3g}x"
            lines.append(f"| {what} | {stack} | {f} | {m} | {r} | {note} |")
        return "\n".join(lines)


def quiet():
    """pysofi prints progress bars to stdout: swallow them."""
    return contextlib.redirect_stdout(io.StringIO())


def shape_name(stack_shape) -> str:
    t, y, x = stack_shape
    return f"{y}x{x}x{t:,}"


def child_env(tree: Path) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]))


def peak_rss_mib(pid="self") -> float:
    """The process's peak resident memory, MiB: ``VmHWM`` of /proc/PID/status (0 if unreadable).

    Not ``ru_maxrss``: on Linux that survives fork + exec, so a child started by a process holding
    gigabytes reports the parent's resident size as its own peak."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def run_child(cmd, env, cwd):
    """Run ``cmd``; (seconds, peak RSS MiB of the child, (rc, stdout, stderr)).

    The peak is the child's ``VmHWM`` polled every 50 ms (it only grows; the last reading is
    taken at most 50 ms before the child exits)."""
    out_f, err_f = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, env=env, cwd=cwd, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mib(proc.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    out_f.seek(0)
    err_f.seek(0)
    return elapsed, peak, (proc.returncode, out_f.read(), err_f.read())


# ----------------------------------------------------------------------------------------------
# 1. cross-cumulants
# ----------------------------------------------------------------------------------------------


def bench_small(rows, args, stack, lines, ratios):
    """In-memory stack: fluojax jitted (XLA) and its CPU kernel vs NumPy, orders 2-4."""
    from fluojax.sofi import cumulants, cumulants_cpu

    name = shape_name(stack.shape)
    host = stack.astype(np.float32)
    device = jax.device_put(host)
    for order in args.orders:
        table = fluojax_table(order)
        fn = functools.partial(cumulants.cross_cumulant_sublattices, order=order)  # jitted, order static
        first, med, times, out = timed(lambda fn=fn: fn(device), args.repeats)
        ref = numpy_cross_cumulants(host, order, table)
        diff = rel_diff(out, ref)
        np_times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            numpy_cross_cumulants(host, order, table)
            np_times.append(time.perf_counter() - t0)
        np_med = statistics.median(np_times)
        _, host_med, host_times, _ = timed(lambda fn=fn: fn(jnp.asarray(host)), args.repeats)
        rows.add(
            f"fluojax `cross_cumulant_sublattices`, order {order}, jitted, float32",
            name,
            first,
            med,
            np_med / med,
            f"warm {fmt_times(times)}; max rel. diff. to NumPy {diff:.1e}; output {tuple(out.shape)}",
        )
        rows.add(
            f"the same incl. host->device copy of the stack (order {order})",
            name,
            None,
            host_med,
            np_med / host_med,
            f"{fmt_times(host_times)}",
        )
        rows.add(
            f"NumPy, same cross-cumulants, order {order} (the ratio's denominator)",
            name,
            None,
            np_med,
            1.0,
            f"{fmt_times(np_times)}; {len(table)} virtual pixels",
        )
        ratios.append(f"order {order} {name}: NumPy {np_med:.4g} s / fluojax XLA {med:.4g} s = {np_med / med:.3g}x")
        if cumulants_cpu.available():
            kfirst, kmed, ktimes, kout = timed(
                lambda order=order: cumulants_cpu.cross_cumulants_cpu(host, (order,)), args.repeats
            )
            rows.add(
                f"fluojax `cross_cumulants_cpu` (numba CPU kernel), order {order}, float32",
                name,
                kfirst,
                kmed,
                np_med / kmed,
                f"warm {fmt_times(ktimes)}; max rel. diff. to NumPy {rel_diff(kout[order], ref):.1e}; first call loads "
                "the kernel from numba's cache",
            )
            ratios.append(
                f"order {order} {name}: NumPy {np_med:.4g} s / fluojax CPU kernel {kmed:.4g} s = {np_med / kmed:.3g}x"
            )
    if cumulants_cpu.available() and len(args.orders) > 1:
        counts = np.asarray(stack)
        _, kmed, ktimes, _ = timed(lambda: cumulants_cpu.cross_cumulants_cpu(counts, tuple(args.orders)), args.repeats)
        rows.add(
            f"fluojax `cross_cumulants_cpu`, orders {'+'.join(map(str, args.orders))} in one pass, uint16 frames",
            name,
            None,
            kmed,
            None,
            f"warm {fmt_times(ktimes)}; the camera counts as stored (what the command passes)",
        )
    # a floor: one streaming pass over the stack (every implementation reads each value at least once)
    frame_sum = jax.jit(lambda s: jnp.sum(s, axis=0))
    _, floor, floor_times, _ = timed(lambda: frame_sum(device), args.repeats)
    np_floor = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        host.sum(axis=0)
        np_floor.append(time.perf_counter() - t0)
    rows.add(
        "floor: one pass over the stack, jitted `jnp.sum(stack, axis=0)`",
        name,
        None,
        floor,
        None,
        f"{fmt_times(floor_times)}; NumPy `stack.sum(axis=0)`: {statistics.median(np_floor):.3g} s; any cumulant "
        "code reads every value at least once",
    )


def block_child(args):
    """Child process: cross-cumulants of one order over frame blocks read one by one from a TIFF
    (``io.read_stack_blocks`` + ``cumulants.mean_over_blocks``), twice (the first compiles); prints
    one JSON line with both times and the process's peak resident memory."""
    from fluojax.sofi import cumulants, cumulants_cpu

    order = args.child_order
    if args.child_kernel == "cpu":  # camera counts as stored (memory-map views), as the command reads them
        dtype = None

        def fn(block):
            return cumulants_cpu.cross_cumulants_cpu(block, (order,))[order]

    else:
        dtype = np.float32
        fn = functools.partial(cumulants.cross_cumulant_sublattices, order=order)
    jax.block_until_ready(jnp.zeros(4) + 1)  # the runtime started: the baseline memory of a JAX process
    base = peak_rss_mib()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        _, _, blocks = fio.read_stack_blocks(args.child_blocks, args.block_frames, dtype=dtype)
        out = np.asarray(cumulants.mean_over_blocks(blocks, fn))
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for block in fio.read_stack_blocks(args.child_blocks, args.block_frames, dtype=dtype)[2]:
        block.sum()
    read_s = time.perf_counter() - t0
    peak = peak_rss_mib()
    np.save(args.child_save, out)
    shape, _, _ = fio.read_stack_blocks(args.child_blocks, args.block_frames)
    block = jax.ShapeDtypeStruct((min(args.block_frames, shape[0]), *shape[1:]), jnp.float32)
    temp = float("nan")
    if args.child_kernel != "cpu":
        compiled = cumulants.cross_cumulant_sublattices.lower(block, order=args.child_order).compile()
        with contextlib.suppress(Exception):  # not every backend reports it
            temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    print(
        json.dumps(
            dict(
                first=times[0],
                warm=times[1],
                read_s=read_s,
                peak_rss_mib=peak,
                base_rss_mib=base,
                xla_temp_mib=temp,
                shape=list(out.shape),
            )
        )
    )


def bench_large(rows, args, stack, path, lines, ratios):
    """Large stack: fluojax over frame blocks from the TIFF (child process, peak RSS) vs NumPy in memory."""
    name = shape_name(stack.shape)
    here = Path(__file__).resolve()
    tree = here.parent.parent
    work = Path(tempfile.mkdtemp(prefix="bench_sofi_child_"))
    gib = stack.size * 4 / 2**30
    try:
        for order in args.orders:
            table = fluojax_table(order)
            n_frames = args.numpy_large_frames or stack.shape[0]
            tracemalloc.start()
            t0 = time.perf_counter()
            ref = numpy_blocked(stack[:n_frames], order, table, args.block_frames)
            np_s = time.perf_counter() - t0
            _, np_peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            scaled = np_s * stack.shape[0] / n_frames
            for kernel in ("xla", "cpu"):
                save = work / f"order{order}_{kernel}.npy"
                cmd = [sys.executable, str(here), "--child-blocks", str(path), "--child-order", str(order)]
                cmd += ["--child-save", str(save), "--block-frames", str(args.block_frames), "--child-kernel", kernel]
                _, _, (rc, out, err) = run_child(cmd, child_env(tree), tree)
                if rc != 0:
                    lines.append(f"block run ({kernel}), order {order}, failed (exit {rc}): {err.strip()[-400:]}")
                    continue
                res = json.loads(out.strip().splitlines()[-1])
                diff = rel_diff(np.load(save), ref) if n_frames == stack.shape[0] else None
                if kernel == "xla":
                    what, detail = (
                        "fluojax (XLA)",
                        (
                            f"XLA's temporary buffers per block {res['xla_temp_mib']:.0f} MiB (`memory_analysis`); a float32 "
                            f"block is {args.block_frames * stack[0].size * 4 / 2**20:.0f} MiB, the whole stack as float32 "
                            f"{gib:.2f} GiB; "
                        ),
                    )
                else:
                    what, detail = "fluojax CPU kernel (numba)", "uint16 blocks as views of the memory map (no copy); "
                rows.add(
                    f"{what} over frame blocks of {args.block_frames} from the TIFF, order {order}",
                    name,
                    res["first"],
                    res["warm"],
                    scaled / res["warm"],
                    f"child process: peak RSS {res['peak_rss_mib']:.0f} MiB, of which {res['base_rss_mib']:.0f} MiB "
                    f"before reading (Python + JAX + fluojax); {detail}"
                    f"incl. reading the TIFF (reading the blocks alone: {res['read_s']:.3g} s); second of 2 calls; "
                    + (
                        f"max rel. diff. to NumPy {diff:.1e}"
                        if diff is not None
                        else "not compared (NumPy on a subset)"
                    ),
                )
                ratios.append(
                    f"order {order} {name}: NumPy {scaled:.4g} s / {what} blocks {res['warm']:.4g} s = "
                    f"{scaled / res['warm']:.3g}x"
                )
            subset = (
                ""
                if n_frames == stack.shape[0]
                else f" on the first {n_frames} frames, scaled x{stack.shape[0] / n_frames:g}"
            )
            rows.add(
                f"NumPy, same cross-cumulants over the same frame blocks, order {order}, stack in memory",
                name,
                None,
                scaled,
                1.0,
                f"one run{subset}; reading not included; NumPy peak allocation {np_peak / 2**30:.2f} GiB (tracemalloc, "
                "beside the uint16 stack)",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# 2. pysofi
# ----------------------------------------------------------------------------------------------


def bench_pysofi(rows, args, stack, path, lines, probe):
    """pysofi on the TIFF (same stack); fluojax auto_cumulants beside cumulants_images."""
    try:
        from pysofi import pysofi as ps
        from pysofi import reconstruction as rec
    except Exception as err:
        lines.append(f"pysofi not importable: {type(err).__name__}: {err}")
        return
    from fluojax.sofi import cumulants

    name = shape_name(stack.shape)
    folder, file = str(path.parent), path.name
    reps = args.pysofi_repeats if stack.shape[1] <= 128 else 1

    def pysofi_time(fn):
        times, out = [], None
        for _ in range(reps):
            t0 = time.perf_counter()
            with quiet():
                out = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times, out

    med, times, cum = pysofi_time(lambda: ps.PysofiData(folder, file).cumulants_images(highest_order=4))
    host = jnp.asarray(stack.astype(np.float32))

    @jax.jit
    def auto(s):
        return jnp.stack([cumulants.auto_cumulants(s, n) for n in (2, 3, 4)])

    first, fmed, ftimes, out = timed(lambda: auto(host), args.repeats)
    diffs = ", ".join(f"{n}: {rel_diff(np.asarray(out)[n - 2], cum[n]):.1e}" for n in (2, 3, 4))
    rows.add(
        "fluojax `auto_cumulants` orders 2-4, jitted (like for like with the next row)",
        name,
        first,
        fmed,
        None,
        f"{fmt_times(ftimes)}; stack in memory; max rel. diff. to pysofi per order {diffs} (pysofi truncates moments to int64)",
    )
    rows.add(
        "pysofi `PysofiData(...).cumulants_images(highest_order=4)` (moments 1-4, auto-cumulants)",
        name,
        None,
        med,
        None,
        f"{fmt_times(times)}; reads the TIFF frame by frame, once per order; pysofi / fluojax = {med / fmed:.3g}x "
        "(includes its reading)",
    )
    for order in args.orders:
        med, times, _ = pysofi_time(lambda order=order: ps.PysofiData(folder, file).moment_image(order=order))
        rows.add(
            f"pysofi `moment_image(order={order})` (per-pixel moment, not a cumulant)",
            name,
            None,
            med,
            None,
            fmt_times(times),
        )
    med, times, xc = pysofi_time(lambda: rec.calc_xc_im(folder, file, 1))
    rows.add(
        "pysofi `reconstruction.calc_xc_im(ri_range=1)` (2nd-order products of 4 pixel pairs, no virtual-pixel grid)",
        name,
        None,
        med,
        None,
        f"{fmt_times(times)}; {len(xc)} images of {next(iter(xc.values())).shape}",
    )
    if probe:
        probe_pysofi(folder, file, cum, lines)


def probe_pysofi(folder, file, cum, lines):
    """Call the other pysofi entry points once and record what fails."""
    from pysofi import filtering
    from pysofi import pysofi as ps

    data = ps.PysofiData(folder, file)
    calls = [
        ("PysofiData.get_frame(0)", lambda: data.get_frame(0)),
        ("PysofiData.deconvsk(input_im=2nd cumulant)", lambda: data.deconvsk(input_im=cum[2])),
        ("PysofiData.ldrc(order=2, input_im=2nd cumulant)", lambda: data.ldrc(order=2, input_im=cum[2])),
        ("PysofiData.finterp_image(interp_num_lst=[2])", lambda: data.finterp_image(interp_num_lst=[2])),
        ("filtering.filter1d_same (noise filter)", lambda: filtering.filter1d_same(np.ones(10), np.ones(3))),
        (
            "PysofiData.bleach_correct(save_option=False, return_option=True) (this stack does not bleach)",
            lambda: data.bleach_correct(save_option=False, return_option=True),
        ),
        ("import pysofi.moca (MOCA)", lambda: __import__("pysofi.moca")),
    ]
    results = []
    for label, fn in calls:
        try:
            with quiet(), np.errstate(all="ignore"):
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn()
            results.append(f"{label}: runs")
        except Exception as err:
            msg = str(err).splitlines()[0][:90]
            alias = isinstance(err, AttributeError) and "has no attribute" in msg and "numpy" in msg
            why = " - an alias removed in NumPy 1.24" if alias else " - not a NumPy-version problem"
            results.append(f"{label}: **{type(err).__name__}** ({msg}){why}")
    lines.append(f"pysofi {_version('pysofi')} on NumPy {np.__version__}: " + "; ".join(results) + ".")


def code_version() -> str:
    """The git commit of this tree (and whether it has uncommitted changes), or '?'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=here
        )
        return f"commit {rev.stdout.strip()}" + (" with uncommitted changes" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def _version(name):
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


# ----------------------------------------------------------------------------------------------
# 3. the command
# ----------------------------------------------------------------------------------------------


def bench_command(rows, args, paths, lines):
    tree = Path(args.cli_tree or Path(__file__).resolve().parent.parent).resolve()
    env = child_env(tree)
    base = [sys.executable, "-m", "fluojax", "sofi"]
    probe = subprocess.run([*base, "--help"], capture_output=True, text=True, env=env, cwd=tree)
    if probe.returncode != 0:
        lines.append(f"`fluojax sofi` not available in {tree}: the whole-command rows are skipped.")
        return
    work = Path(tempfile.mkdtemp(prefix="bench_sofi_cli_"))
    try:
        for shape, path in paths:
            cmd = [*base, str(path), "--order", "2", "-o", str(work / f"out_{shape[1]}")]
            elapsed, rss, (rc, out, err) = run_child(cmd, env, tree)
            if rc != 0:
                lines.append(f"`fluojax sofi` on {shape_name(shape)} failed (exit {rc}): {err.strip()[-300:]}")
                continue
            report = out.strip().splitlines()[-1][:200] if out.strip() else ""
            rows.add(
                "`fluojax sofi STACK.tif --order 2 -o OUT` (whole process)",
                shape_name(shape),
                None,
                elapsed,
                None,
                f"one run; peak RSS {rss:.0f} MiB; command's own report: {report}",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# 4. the network
# ----------------------------------------------------------------------------------------------


def bench_network(rows, args):
    """MisrGru forward latency (released size, untrained), host -> device -> host, per input side."""
    from flax import nnx

    from fluojax import networks
    from fluojax.sofi import nets

    config = nets.MisrGruConfig.paper()
    net = networks.eval_view(nets.build_network(config))
    graphdef, state = nnx.split(net)

    @jax.jit
    def forward(state, frames):
        return nnx.merge(graphdef, state)(frames)

    for side in args.net_sides:
        host = np.random.default_rng(6).uniform(0.0, 1.0, (1, config.frames, side, side)).astype(np.float32)

        def run(host=host):
            return np.asarray(forward(state, jnp.asarray(host)))

        reps = args.net_repeats if side <= 128 else max(1, args.net_repeats // 2)
        first, med, times, out = timed(run, reps)
        rows.add(
            f"MisrGru (released size, C={config.channels}) 1x{config.frames}x{side}x{side} -> {out.shape[-2]}x{out.shape[-1]}",
            f"{side}x{side}x{config.frames}",
            first,
            med,
            None,
            f"{fmt_times(times)}; {1 / med:.3g} reconstructions/s; {networks.parameter_count(net):,} weights, untrained, "
            f"float32, host->device->host; thesis: {THESIS_FPS} /s at 128x128 (TensorRT, RTX 3090)",
        )


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller large stack, fewer repeats (< 2 min on 2 cores)")
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4], help="cross-cumulant orders")
    ap.add_argument("--small", type=int, nargs=2, default=[128, 100], metavar=("SIDE", "FRAMES"))
    ap.add_argument("--large", type=int, nargs=2, default=None, metavar=("SIDE", "FRAMES"))
    ap.add_argument("--block-frames", type=int, default=None, help="frames per block of the large-stack run")
    ap.add_argument(
        "--numpy-large-frames", type=int, default=None, help="NumPy on the first N frames of the large stack (scaled)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed warm calls (median)")
    ap.add_argument("--pysofi-repeats", type=int, default=None)
    ap.add_argument("--net-sides", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--net-repeats", type=int, default=None)
    ap.add_argument("--cli-tree", default=None, help="source tree whose `fluojax` the command runs (default: this)")
    ap.add_argument("--tmpdir", default=None, help="folder for the temporary TIFFs")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    # internal: the frame-block child process
    ap.add_argument("--child-blocks", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-order", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--child-save", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-kernel", default="xla", help=argparse.SUPPRESS)
    args = ap.parse_args()
    defaults = dict(  # (full, quick)
        large=([512, 1000], [256, 200]),
        block_frames=(100, 50),
        repeats=(7, 3),
        pysofi_repeats=(3, 1),
        net_repeats=(5, 2),
    )
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.quick and args.net_sides == [128, 512]:
        args.net_sides = [128]
    return args


def main():
    args = parse_args()
    if args.child_blocks:
        block_child(args)
        return
    command = "python " + " ".join(shlex.quote(a) for a in ["experiments/bench_sofi.py", *sys.argv[1:]])
    dev = jax.devices()[0]
    header = [
        f"# SOFI benchmark ({dev.platform}: {getattr(dev, 'device_kind', dev)})",
        "",
        f"Command: `{command}`",
        "",
        f"Code: {code_version()}",
        "",
        f"JAX {jax.__version__}, backend {jax.default_backend()}, device {dev!r}; host {platform.platform()}, "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, NumPy {np.__version__}, pysofi "
        f"{_version('pysofi')}; load average at start {os.getloadavg()[0]:.1f}",
        "",
        "Stacks: synthetic blinking emitters (0.02 per pixel, Gaussian PSF s.d. 1.3 px, on with probability 0.3 per "
        "frame, 400 photons/frame while on, 100 photons background, Poisson), uint16, written as ImageJ TIFFs.",
    ]
    print("\n".join(header), flush=True)
    lines: list[str] = []
    ratios: list[str] = []
    cum_rows, net_rows = Table(), Table(versus="")
    pysofi_rows = Table(versus="")
    tmp = Path(tempfile.mkdtemp(prefix="bench_sofi_", dir=args.tmpdir))
    try:
        small = make_stack(args.small[1], args.small[0], seed=1)
        small_path = tmp / "small.tif"
        fio.write_stack(small_path, small, 0.01)
        t0 = time.perf_counter()
        bench_small(cum_rows, args, small, lines, ratios)
        print(f"small stack done ({time.perf_counter() - t0:.0f} s)", flush=True)
        t0 = time.perf_counter()
        large = make_stack(args.large[1], args.large[0], seed=2)
        large_path = tmp / "large.tif"
        fio.write_stack(large_path, large, 0.01)
        lines.append(f"Making and writing the large stack took {time.perf_counter() - t0:.0f} s (not timed below).")
        t0 = time.perf_counter()
        bench_large(cum_rows, args, large, large_path, lines, ratios)
        print(f"large stack done ({time.perf_counter() - t0:.0f} s)", flush=True)
        t0 = time.perf_counter()
        bench_pysofi(pysofi_rows, args, small, small_path, lines, probe=True)
        bench_pysofi(pysofi_rows, args, large, large_path, lines, probe=False)
        print(f"pysofi done ({time.perf_counter() - t0:.0f} s)", flush=True)
        bench_command(cum_rows, args, [(small.shape, small_path), (large.shape, large_path)], lines)
        del large
        bench_network(net_rows, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines.append(
        "Ratios (NumPy / fluojax, warm medians; goal >= 10x): " + "; ".join(ratios) + ". First call includes JIT "
        "compilation. NumPy runs single-process with its default threads (elementwise NumPy is single-threaded)."
    )
    lines.append(
        "pysofi computes different quantities (per-pixel moments and auto-cumulants, which carry shot noise, and "
        "2-pixel cross-products without the virtual-pixel grid); its rows are beside, not against, the cross-cumulant "
        "rows, except auto_cumulants vs cumulants_images."
    )
    lines.append(
        f"Network: the thesis reports {THESIS_FPS} reconstructions/s at 128x128 with TensorRT on an RTX 3090 "
        "(Komen 2024); other hardware, so no ratio."
    )
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.1f} (1 min; a shared host makes CPU rows noisy).")
    tables = [cum_rows.markdown(), pysofi_rows.markdown()] + ([net_rows.markdown()] if net_rows.rows else [])
    body = [""] + [x for t in tables for x in (t, "")] + [f"- {line}" for line in lines]
    report = "\n".join(header + body) + "\n"
    print("\n".join(body))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
