"""Multi-device and multi-process runs equal one-device, one-process runs.

Forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``) and the
multi-controller runtime must be set up before jax initialises, so each check runs in a fresh
subprocess and reports its results back through a file; the references are computed in the
same subprocess (on one device) or here (one process). Forced host devices share this machine's
cores: these tests show correctness, not speed (experiments/bench_scaling.py measures).
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# one worker: the one-process training reference is computed once and shared
pytestmark = [pytest.mark.xdist_group("distributed"), pytest.mark.slow]

# a tiny network, its simulated data and schedule, shared by the subprocesses and the references
TRAINING = textwrap.dedent(
    """
    import jax, jax.numpy as jnp
    from flax import nnx
    from fluojax import train

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(8, 16, use_bias=False, rngs=rngs)  # BatchNorm removes a bias
            self.bn = nnx.BatchNorm(16, rngs=rngs)
            self.l2 = nnx.Linear(16, 2, rngs=rngs)

        def __call__(self, x):
            return self.l2(jax.nn.relu(self.bn(self.l1(x))))

    def sample(key):
        x = jax.random.normal(key, (64, 8))
        return x, jnp.stack([x.sum(1), (x**2).mean(1)], 1)

    CONFIG = train.TrainConfig(steps=12, batch_size=64, eval_every=6, eval_batches=1, learning_rate=1e-2)

    def trained():
        net = Net(nnx.Rngs(1))
        history = train.train(net, sample, CONFIG, progress=False)
        leaves = jax.tree.leaves(nnx.state(net, nnx.Param))
        return np.concatenate([np.asarray(p).ravel() for p in leaves]), np.asarray(history.train_loss[1:])
    """
)

MULTI_DEVICE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax
    assert jax.local_device_count() == 4, jax.devices()
    from fluojax import fit, networks
    from fluojax.fcs import correlator
    one = jax.local_devices()[:1]
    out = {}

    # per-pixel fits: 1,024 datasets, 64 slots, one segment of 256 per device
    def model(theta, t):
        return theta[0] * jnp.exp(-t / theta[1]) + theta[2]
    rng = np.random.default_rng(0)
    t = jnp.asarray(np.geomspace(1e-3, 10, 40), jnp.float32)
    a, tau = rng.uniform(0.5, 2, 1024), rng.uniform(0.05, 2, 1024)
    data = a[:, None] * np.exp(-np.asarray(t) / tau[:, None]) + 0.1 + rng.normal(0, 0.02, (1024, 40))
    data, sigma, init = data.astype(np.float32), np.full((1024, 40), 0.02, np.float32), np.float32([1, 0.5, 0])
    for name, devices in (("one", one), ("all", None)):
        r = fit.least_squares_batch(model, data, sigma, init, t, chunk=64, devices=devices)
        out[f"fit_params_{name}"], out[f"fit_status_{name}"] = r.params, r.status

    # network inference: 1,000 samples in calls of 64 (16 calls over 4 devices)
    net = networks.eval_view(Net(nnx.Rngs(0)))
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    out["predict_one"], out["predict_all"] = networks.predict(net, x, 64, devices=one), networks.predict(net, x, 64)

    # the correlator's XLA path (a small lag grid, P=8, Q=4): 37 pixels, not a multiple of 4
    frames = rng.poisson(50.0, (400, 37)).astype(np.float32)
    for name, devices in (("one", one), ("all", None)):
        r = correlator.correlate_on_devices(frames, 8, 4, devices=devices)
        out[f"acf_{name}"], out[f"sem_{name}"] = r.acf, r.sem

    # training, data-parallel over the 4 devices (the one-device run is the parent's)
    out["train_params"], out["train_loss"] = trained()
    np.savez(sys.argv[1], **out)
    """
)


def _python(script: str, out: Path, env: dict) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    full.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **env})
    return subprocess.Popen(
        [sys.executable, "-c", "import numpy as np\n" + TRAINING + script, str(out)],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen, timeout: float = 180) -> None:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-3000:]


@functools.cache
def _one_process_training() -> tuple[np.ndarray, np.ndarray]:
    namespace: dict = {"np": np}
    exec(TRAINING, namespace)  # the same definitions as the subprocesses'
    return namespace["trained"]()


def test_four_devices_equal_one_device(tmp_path):
    out = tmp_path / "multi_device.npz"
    proc = _python(MULTI_DEVICE, out, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    params_one, loss_one = _one_process_training()  # meanwhile, on this process's one device
    _finish(proc)
    r = np.load(out)
    # fits, predictions and correlations: each row runs the same program on its own data,
    # whichever device, so the results are identical, not merely close
    np.testing.assert_array_equal(r["fit_status_all"], r["fit_status_one"])
    np.testing.assert_array_equal(r["fit_params_all"], r["fit_params_one"])
    assert np.mean(r["fit_status_one"] == 0) > 0.9  # the comparison covers converged fits
    np.testing.assert_array_equal(r["predict_all"], r["predict_one"])
    np.testing.assert_array_equal(r["acf_all"], r["acf_one"])
    np.testing.assert_array_equal(r["sem_all"], r["sem_one"])
    # training: the same batches, but the loss and gradients are summed over 4 devices in
    # another order (float32, ~1e-7 relative per sum); 12 Adam steps of at most lr = 1e-2 each
    # keep the weights within 1e-4 of the one-device run (they move by ~1e-1 in all)
    np.testing.assert_allclose(r["train_loss"], loss_one, rtol=1e-4)
    np.testing.assert_allclose(r["train_params"], params_one, atol=1e-4)


# the one-process reference of the map, run like the two processes: in a fresh process (once,
# in a full suite run, the map computed inside the test worker after other tests differed from a
# fresh process's at 6 of 120 borderline pixels; not the compilation cache, whose cold and warm
# maps equal the uncached map bit for bit; likely numba: a correlator kernel it has just compiled
# and the same kernel loaded from its cache differ in float32 rounding, docs/fcs.md)
ONE_PROCESS = textwrap.dedent(
    """
    import sys
    from fluojax.cli import main
    assert main(["fcs", "fit", sys.argv[2], "-o", sys.argv[3], "--frame-time", "1e-3", "--bleach", "none"]) == 0
    """
)

MULTI_PROCESS = textwrap.dedent(
    """
    import sys
    from fluojax.cli import main
    stack, folder = sys.argv[2], sys.argv[3]
    code = main(["fcs", "fit", stack, "-o", folder, "--frame-time", "1e-3", "--bleach", "none"])
    assert code == 0, code
    assert jax.process_count() == 2 and jax.device_count() == 2
    params, loss = trained()  # data-parallel over both processes' devices
    if jax.process_index() == 0:
        np.savez(sys.argv[1], train_params=params, train_loss=loss)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _correlated_stack(path: Path) -> np.ndarray:
    """A 12 x 10 pixel, 2,400-frame uint16 stack of Poisson counts around an AR(1) signal
    (correlation time ~5 frames), so the pixels correlate and fit."""
    from scipy.signal import lfilter

    from fluojax import io

    rng = np.random.default_rng(3)
    signal = lfilter([1.0], [1.0, -0.8], rng.normal(0, 1, (2400, 12, 10)), axis=0)
    stack = rng.poisson(np.clip(60.0 + 12.0 * signal, 1, None)).astype(np.uint16)
    io.write_stack(path, stack, 1e-3, 0.24)
    return stack


def test_two_processes_equal_one_process(tmp_path):
    stack_path = tmp_path / "stack.tif"
    _correlated_stack(stack_path)
    folder, out = tmp_path / "two", tmp_path / "training.npz"
    port = _free_port()
    procs = [
        _python(
            MULTI_PROCESS.replace("sys.argv[2], sys.argv[3]", f"{str(stack_path)!r}, {str(folder)!r}"),
            out,
            {
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "FLUOJAX_NUM_PROCESSES": "2",
                "FLUOJAX_PROCESS_ID": str(i),
            },
        )
        for i in range(2)
    ]
    one = tmp_path / "one"
    procs.append(
        _python(
            ONE_PROCESS.replace("sys.argv[2], ", f"{str(stack_path)!r}, ").replace("sys.argv[3]", repr(str(one))),
            tmp_path / "unused.npz",
            {},
        )
    )
    params_one, loss_one = _one_process_training()  # meanwhile, here
    for proc in procs:
        _finish(proc)

    import tifffile

    # process 0 wrote the one output folder, with every row of the maps; process 1 nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "stack.tif", "training.npz", "two"]
    status = tifffile.imread(one / "status.tif")
    np.testing.assert_array_equal(tifffile.imread(folder / "status.tif"), status)
    assert np.mean(status == 0) > 0.5  # the comparison covers fitted pixels
    # the maps are those of one process: each pixel is correlated and fitted on its own
    # (TIFFs store float32 maps exactly)
    for name in ("D.tif", "N.tif"):
        np.testing.assert_array_equal(tifffile.imread(folder / name), tifffile.imread(one / name))
    # training over two processes: as over four devices (test above)
    r = np.load(out)
    np.testing.assert_allclose(r["train_loss"], loss_one, rtol=1e-4)
    np.testing.assert_allclose(r["train_params"], params_one, atol=1e-4)


@pytest.mark.parametrize(
    ("n", "count"),
    [(10, 3), (2, 2), (7, 1)],
)
def test_bands_tile_the_rows_in_order(n, count):
    from fluojax import distributed

    bands = [distributed.band(n, i, count) for i in range(count)]
    rows = np.concatenate([np.arange(n)[b] for b in bands])
    np.testing.assert_array_equal(rows, np.arange(n))  # every row once, in order
    sizes = [b.stop - b.start for b in bands]
    assert max(sizes) - min(sizes) <= 1


def test_no_environment_no_runtime():
    from fluojax import distributed

    assert not distributed.initialize_from_env({})
    assert not distributed.initialize_from_env({"FLUOJAX_DISTRIBUTED": "0"})


def test_bad_process_index_is_refused():
    from fluojax import distributed
    from fluojax.io import InputError

    with pytest.raises(InputError, match=r"FLUOJAX_PROCESS_ID=2: must be in 0\.\.1"):
        distributed.initialize_from_env({"FLUOJAX_NUM_PROCESSES": "2", "FLUOJAX_PROCESS_ID": "2"})
