"""What scales how: the per-pixel fit, network inference and training on 1, 2, 4 devices and 2 processes.

Each configuration runs in its own subprocess (forced host devices and the multi-controller
runtime must be set before jax initialises):

* ``D devices``: ``XLA_FLAGS=--xla_force_host_platform_device_count=D``, one process;
  :func:`fluojax.batching.map_padded` deals fit segments and predict batches out to the D
  devices, :func:`fluojax.train.train` is data-parallel over them.
* ``2 processes``: two processes of one device each on the loopback address
  (``FLUOJAX_NUM_PROCESSES``, ``FLUOJAX_PROCESS_ID``, ``JAX_COORDINATOR_ADDRESS``, gloo
  collectives): each fits its band of the pixels (:func:`fluojax.distributed.band`) and the
  results are gathered (:func:`fluojax.distributed.gather_rows`); training is data-parallel
  over both processes' devices; inference is per process (each would predict its own band)
  and is not timed there.

Measured per configuration: PIXELS FCS 2D fits (``fcs.estimate.fit_acfs`` on model ACFs with
noise, as ``bench_fcs.py`` makes them): the first call (compilation included) and the median
of REPEATS warm calls; a small MLP's predictions on 65,536 samples in batches of 1,024; and
training samples/s of a small MLP at batch 256 (median over evaluation rows after the first).
Ratios are against the one-device row. Results are checked equal to the one-device row's
(fit parameters, predictions).

On a CPU, forced host devices and local processes share the same cores: the table shows
correctness and the overhead of splitting, not a speed-up. Where a machine has several
accelerators, run it with ``--real``: no forcing, the default platform, and only the
configurations with at most that many devices (``CUDA_VISIBLE_DEVICES`` picks the first D).

Usage:
    PYTHONPATH=. JAX_PLATFORMS=cpu python experiments/bench_scaling.py [--pixels 4096] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, statistics, sys, time
    sys.path.insert(0, {experiments!r})
    from fluojax import distributed
    distributed.initialize_from_env()
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from fluojax import networks, train
    from fluojax.fcs import correlator
    from fluojax.fcs.estimate import fit_acfs
    from fluojax.fcs.pipeline import AnalysisSettings
    from bench_fcs import OPTICS_2D, make_acfs

    pixels, repeats, out = {pixels}, {repeats}, {out!r}
    lag_s = correlator.lag_grid().lags * 1e-3
    acf, sem, _ = make_acfs("2d", pixels, lag_s, 0)
    settings = AnalysisSettings(frame_time_s=1e-3, optics=OPTICS_2D)
    rows = distributed.band(pixels)

    def fit_all():
        r = fit_acfs(acf[rows], sem[rows], lag_s, settings)
        return distributed.gather_rows(r.params, pixels)

    t0 = time.perf_counter(); params = fit_all(); first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fit_all(); times.append(time.perf_counter() - t0)
    result = dict(fit_first=first, fit=statistics.median(times), converged=float(np.mean(np.isfinite(params[:, 1]))))

    class Mlp(nnx.Module):
        def __init__(self, rngs):
            self.a = nnx.Linear(72, 256, rngs=rngs); self.b = nnx.Linear(256, 256, rngs=rngs); self.c = nnx.Linear(256, 1, rngs=rngs)
        def __call__(self, x):
            return self.c(jax.nn.relu(self.b(jax.nn.relu(self.a(x)))))

    x = np.random.default_rng(1).normal(size=(65536, 72)).astype(np.float32)
    net = Mlp(nnx.Rngs(0))
    if jax.process_count() == 1:
        prediction = networks.predict(net, x, 1024)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter(); networks.predict(net, x, 1024); times.append(time.perf_counter() - t0)
        result["predict"] = statistics.median(times)

    def sample(key):
        xx = jax.random.normal(key, (256, 72))
        return xx, jnp.sum(xx[:, :8], axis=1, keepdims=True)

    config = train.TrainConfig(steps={steps}, batch_size=256, eval_every={steps} // 4, eval_batches=1)
    history = train.train(Mlp(nnx.Rngs(2)), sample, config, progress=False)
    result["train"] = statistics.median(history.samples_per_s[2:])
    result["devices"] = jax.device_count()
    if jax.process_index() == 0:
        np.savez(out + ".npz", params=params, **({{"prediction": prediction}} if jax.process_count() == 1 else {{}}))
        Path = __import__("pathlib").Path
        Path(out + ".json").write_text(json.dumps(result))
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accelerators() -> int:
    """Local accelerators, counted in a subprocess (this process never initialises JAX)."""
    code = "import jax; print(jax.local_device_count())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def run(name: str, devices: int, processes: int, args, tmp: Path) -> dict:
    out = str(tmp / name.replace(" ", "_"))
    script = WORKER.format(
        experiments=str(ROOT / "experiments"), pixels=args.pixels, repeats=args.repeats, steps=args.steps, out=out
    )
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(ROOT)
    if not args.real:
        env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    else:  # the first `devices` accelerators of the machine
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(devices))
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    port = _free_port()
    procs = []
    for i in range(processes):
        extra = {}
        if processes > 1:
            extra = {
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "FLUOJAX_NUM_PROCESSES": str(processes),
                "FLUOJAX_PROCESS_ID": str(i),
            }
            if args.real:  # one accelerator per process
                extra["CUDA_VISIBLE_DEVICES"] = str(i)
        procs.append(subprocess.Popen([sys.executable, "-c", script], env={**env, **extra}, cwd=ROOT))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{name}: a process failed (exit {p.returncode})")
    import numpy as np

    result = json.loads(Path(out + ".json").read_text())
    arrays = np.load(out + ".npz")
    result["params"], result["prediction"] = arrays["params"], arrays.get("prediction")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pixels", type=int, default=4096, help="FCS 2D fits per call (default 4,096)")
    parser.add_argument("--repeats", type=int, default=3, help="warm calls timed (median)")
    parser.add_argument("--steps", type=int, default=80, help="training steps (4 evaluation rows)")
    parser.add_argument("--real", action="store_true", help="do not force host devices (a machine with accelerators)")
    args = parser.parse_args()
    import numpy as np

    configs = [("1 device", 1, 1), ("2 devices", 2, 1), ("4 devices", 4, 1), ("2 processes", 1, 2)]
    if args.real:  # only what the machine has: two processes need a device each (NCCL refuses a shared GPU)
        available = _accelerators()
        configs = [c for c in configs if c[1] * c[2] <= available]
        print(f"--real: {available} accelerator(s); configurations {[c[0] for c in configs]}", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, devices, processes in configs:
            results[name] = run(name, devices, processes, args, Path(tmp))
            print(f"  {name}: done", file=sys.stderr, flush=True)
    base = results["1 device"]
    print(f"{args.pixels} FCS 2D fits, MLP predict on 65,536 samples, MLP training at batch 256 ({args.steps} steps)")
    print(
        "| configuration | devices | fit, first call (s) | fit, warm (s) | vs 1 device | predict (s) | vs 1 device "
        "| training (samples/s) | vs 1 device | fits equal | predictions equal |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for name, r in results.items():
        same_fit = np.array_equal(r["params"], base["params"], equal_nan=True)
        pred = "–" if r["prediction"] is None else str(np.array_equal(r["prediction"], base["prediction"]))
        predict = r.get("predict")
        speed = "–" if predict is None else f"{base['predict'] / predict:.2f}x"
        print(
            f"| {name} | {r['devices']} | {r['fit_first']:.2f} | {r['fit']:.3f} | {base['fit'] / r['fit']:.2f}x "
            f"| {'–' if predict is None else f'{predict:.3f}'} "
            f"| {speed} "
            f"| {r['train']:.0f} | {r['train'] / base['train']:.2f}x | {same_fit} | {pred} |"
        )
    print(f"converged fits: {base['converged']:.3f}; machine: {os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
