"""Learned Imaging FCS estimators (FCSNet, ImFCSNet) as users run them: training recipes, maps, checks.

This module joins the shared engines to the FCS pieces. A *recipe* names a network size, the
training prior of its simulator and the training schedule (``fcsnet-2d``, ``imfcsnet-2d-small``,
...); :func:`train_recipe` trains it with :func:`fluojax.train.train` on batches simulated on the
fly; :func:`load_network` rebuilds a trained network from its checkpoint and refuses one of
another kind. :func:`predict_imfcsnet_map` slides the 3 x 3-pixel network over a whole stack;
:func:`predict_ln_d` runs either network on a batch (for FCSNet, the correlator's 72-point ACFs);
:func:`predict_stack` makes a whole map with the physics check.

Every prediction on measured data comes with a physics check (Tang et al. 2024 warn that a
network answers in range for input outside its training range): with D fixed at the prediction,
the model ACF ``G(tau) = S(D tau) / N + G_inf`` is linear in ``1/N`` and ``G_inf``, so its best
weighted fit to the measured ACF is a 2 x 2 linear solve, and the reduced chi^2 of that fit
(:func:`physics_check_chi2`) says whether the predicted D can describe the data at all.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import batching, networks
from fluojax import train as training
from fluojax.fcs import correlator, estimate, models, nets, pipeline, simulate
from fluojax.io import InputError

__all__ = [
    "BUILDERS",
    "RECIPES",
    "FCSNetRecipe",
    "ImFCSNetRecipe",
    "Recipe",
    "compare_with_least_squares",
    "comparison_estimators",
    "comparison_simulator",
    "imfcsnet_windows",
    "load_network",
    "physics_check_chi2",
    "predict_imfcsnet_map",
    "predict_ln_d",
    "predict_stack",
    "simulate_acf_batch",
    "train_recipe",
]


# ----------------------------------------------------------------------------------------------
# recipes: network size + training prior + schedule
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Recipe(networks.Recipe):
    """Everything needed to train one learned FCS estimator (immutable; a ``fluojax.networks.Recipe``).

    The base of :class:`ImFCSNetRecipe` and :class:`FCSNetRecipe`, which say how their network's
    training batches are made (:meth:`sampler`, :meth:`training_data`).

    Attributes:
        name: str, e.g. ``"imfcsnet-2d-small"``.
        net: ``nets.FCSNetConfig`` or ``nets.ImFCSNetConfig``.
        train: ``fluojax.train.TrainConfig``.
        prior: ``simulate.TrainingPrior`` of the simulated training stacks (frames, optics,
            parameter ranges).
        stacks_per_batch: int, simulated 3 x 3 stacks per batch (ImFCSNet: the batch; FCSNet:
            batch / 9, one ACF per pixel).
    """

    prior: simulate.TrainingPrior
    stacks_per_batch: int

    @property
    def network(self) -> str:
        """``"fcsnet"`` or ``"imfcsnet"`` (the config's name)."""
        return self.net.name

    def meta_fields(self) -> dict:
        return {"prior": dataclasses.asdict(self.prior)}

    def build(self, seed: int):
        return nets.build_network(self.net, seed=seed)

    @abc.abstractmethod
    def sampler(self) -> Callable:
        """``sample_batch`` for ``fluojax.train.train``: key (, pool) -> (inputs, ln D)."""

    def training_data(self, seed: int, progress: bool | None) -> networks.TrainingData:
        """Fresh simulated batches from :meth:`sampler`."""
        return networks.TrainingData(self.sampler())

    def with_pool(self, pool_stacks: int) -> Recipe:
        """The recipe trained on a pool of ``pool_stacks`` stacks simulated once (FCSNet only).

        Raises:
            fluojax.io.InputError: this network trains on fresh batches.
        """
        raise InputError(
            f"pool of {pool_stacks} stacks: a simulated pool is an FCSNet setting; {self.network} trains on fresh batches"
        )


@dataclasses.dataclass(frozen=True)
class ImFCSNetRecipe(Recipe):
    """An ImFCSNet recipe: every batch is ``stacks_per_batch`` fresh 3 x 3 stacks of the prior.

    The paper-sized recipes (``imfcsnet-2d``, ``imfcsnet-3d``) train on the schedule of Tang et al.
    2024 (Methods, training): Adam, batch 128, learning rate 1e-3 -> 1e-5 in a staircase decay
    applied every 32 batches, 48,000 batches per round.
    """

    def sampler(self) -> Callable:
        def sample_stacks(key):
            stacks, params = simulate.simulate_training_batch(key, self.prior, self.stacks_per_batch)
            return stacks, jnp.log(params.d_um2_s)

        return sample_stacks


@dataclasses.dataclass(frozen=True)
class FCSNetRecipe(Recipe):
    """An FCSNet recipe: ACFs of every pixel of simulated 3 x 3 stacks, fresh or from a pool.

    Attributes:
        pool_stacks: int, stacks simulated once and reused for every epoch, as the paper did
            (Tang et al. 2024; 0: simulate every batch afresh).
        held_out_stacks: int, with a pool: stacks of the separate held-out pool.
    """

    pool_stacks: int = 0
    held_out_stacks: int = 0

    def sampler(self) -> Callable:
        if self.pool_stacks:

            def sample_pool(key, pool):
                acf, ln_d = pool
                idx = jax.random.randint(key, (self.train.batch_size,), 0, acf.shape[0])
                return acf[idx], ln_d[idx]

            return sample_pool

        def sample_acfs(key):
            return simulate_acf_batch(key, self.prior, self.stacks_per_batch)

        return sample_acfs

    def training_data(self, seed: int, progress: bool | None) -> networks.TrainingData:
        """Fresh simulated batches, or (with ``pool_stacks``) a pool simulated once and a held-out pool."""
        if not self.pool_stacks:
            return super().training_data(seed, progress)
        key = jax.random.fold_in(jax.random.key(seed), 10_007)
        pool = _acf_pool(jax.random.fold_in(key, 0), self, self.pool_stacks, progress)
        held_out = _acf_pool(jax.random.fold_in(key, 1), self, max(self.held_out_stacks, 1), progress)
        return networks.TrainingData(self.sampler(), data=pool, held_out=[held_out])

    def with_pool(self, pool_stacks: int) -> FCSNetRecipe:
        """The recipe on a pool of ``pool_stacks`` stacks, its held-out pool at most 1/8 of that."""
        return dataclasses.replace(
            self,
            pool_stacks=pool_stacks,
            held_out_stacks=min(self.held_out_stacks or pool_stacks, max(pool_stacks // 8, 1)),
        )


def _paper_imfcsnet():
    """The ImFCSNet training schedule of Tang et al. 2024 (Methods, training): Adam, batch 128, 48,000
    batches per round, learning rate 1e-3 -> 1e-5 in a staircase decay applied every 32 batches
    (``TrainConfig.decay_every``)."""
    return training.TrainConfig(
        steps=48_000,
        batch_size=128,
        learning_rate=1e-3,
        final_learning_rate=1e-5,
        decay_every=32,
        eval_every=500,
        eval_batches=8,
        checkpoint_every=2_000,
    )


def _paper_fcsnet():
    """The FCSNet training schedule of Tang et al. 2024 (Methods, training): Adam, batch 1,152 ACFs
    (128 stacks x 9 px), 3,000 epochs x 352 batches, learning rate 1e-3 -> 1e-5 stepped every epoch;
    ~479k ACFs (53,248 stacks of 50,000 frames) reshuffled every epoch."""
    return training.TrainConfig(
        steps=3_000 * 352,
        batch_size=1_152,
        learning_rate=1e-3,
        final_learning_rate=1e-5,
        decay_every=352,
        eval_every=3_520,
        eval_batches=8,
        checkpoint_every=35_200,
    )


# CPU-sized prior: fewer particles (density <= 0.5 / px^2, <= 112 in the box) -> ~4x less work
_SMALL_DENSITY = dict(density_max_per_px2=0.5, max_particles=112)


def _small_schedule(steps: int, batch_size: int, eval_every: int, eval_batches: int) -> training.TrainConfig:
    """A CPU-sized schedule: learning rate 3e-3 -> 3e-4, a checkpoint every 2 evaluations."""
    return training.TrainConfig(
        steps=steps,
        batch_size=batch_size,
        learning_rate=3e-3,
        final_learning_rate=3e-4,
        eval_every=eval_every,
        eval_batches=eval_batches,
        checkpoint_every=2 * eval_every,
    )


_PRIORS = {"2d": simulate.TrainingPrior.itir_2d, "3d": simulate.TrainingPrior.spim_3d}
"""The training prior of each geometry (by its ``--model`` name), called with the frame count."""


def _recipes() -> dict[str, Recipe]:
    """The named recipes: paper-sized ImFCSNet and FCSNet, then CPU-sized ("-small") ones, 2D and 3D."""
    paper: list[Recipe] = [
        *(
            ImFCSNetRecipe(
                f"imfcsnet-{g}",
                nets.ImFCSNetConfig.paper(),
                _paper_imfcsnet(),
                prior=prior(2_500),
                stacks_per_batch=128,
            )
            for g, prior in _PRIORS.items()
        ),
        *(
            FCSNetRecipe(
                f"fcsnet-{g}",
                nets.FCSNetConfig.paper(),
                _paper_fcsnet(),
                prior=prior(50_000),
                stacks_per_batch=128,
                pool_stacks=53_248,
                held_out_stacks=1_024,
            )
            for g, prior in _PRIORS.items()
        ),
    ]
    small: list[Recipe] = [
        *(
            ImFCSNetRecipe(
                f"imfcsnet-{g}-small",
                nets.ImFCSNetConfig.small(),
                prior=prior(1_000, **_SMALL_DENSITY),
                train=_small_schedule(200, 16, 25, 2),
                stacks_per_batch=16,
            )
            for g, prior in _PRIORS.items()
        ),
        *(
            FCSNetRecipe(
                f"fcsnet-{g}-small",
                nets.FCSNetConfig.small(),
                prior=prior(5_000, **_SMALL_DENSITY),
                train=_small_schedule(400, 72, 50, 1),
                stacks_per_batch=8,
                pool_stacks=64,
                held_out_stacks=16,
            )
            for g, prior in _PRIORS.items()
        ),
    ]
    return {r.name: r for r in paper + small}


RECIPES: dict[str, Recipe] = _recipes()
"""The named recipes (``fluojax fcs train --config NAME``)."""


# ----------------------------------------------------------------------------------------------
# training data
# ----------------------------------------------------------------------------------------------


def simulate_acf_batch(key: jax.Array, prior: simulate.TrainingPrior, stacks: int) -> tuple[jax.Array, jax.Array]:
    """FCSNet training pairs: simulate ``stacks`` 3 x 3 stacks and correlate each of their pixels.

    Arguments:
        key: PRNG key.
        prior: ``simulate.TrainingPrior`` (static; ``frames`` >= the correlator's minimum).
        stacks: int, static.

    Returns:
        (acf (stacks * 9, 72), ln D (stacks * 9,)) with every pixel of a stack labelled by the
        stack's D in um^2/s. No bleach correction (the simulation does not bleach).
    """
    return _simulate_acf_batch(key, prior, stacks)


@jax.jit(static_argnames=("prior", "stacks"))
def _simulate_acf_batch(key, prior, stacks):
    data, params = simulate.simulate_training_batch(key, prior, stacks)
    traces = jnp.moveaxis(data.reshape(stacks, prior.frames, 9), 1, 0).reshape(prior.frames, stacks * 9)
    acf = correlator.correlate(traces).acf.T
    return acf, jnp.repeat(jnp.log(params.d_um2_s), 9)


def _acf_pool(key, recipe: FCSNetRecipe, stacks: int, progress) -> tuple[jax.Array, jax.Array]:
    from fluojax.progress import progress as progress_counter

    chunks = -(-stacks // recipe.stacks_per_batch)
    parts = []
    with progress_counter(chunks, "simulate ACF pool", "batches", enabled=progress) as bar:
        for i in range(chunks):
            parts.append(
                jax.device_get(simulate_acf_batch(jax.random.fold_in(key, i), recipe.prior, recipe.stacks_per_batch))
            )
            bar.update(1)
    return jnp.asarray(np.concatenate([p[0] for p in parts])), jnp.asarray(np.concatenate([p[1] for p in parts]))


# ----------------------------------------------------------------------------------------------
# train, load, predict
# ----------------------------------------------------------------------------------------------


def train_recipe(
    recipe: Recipe | str,
    run_dir: str | Path | None = None,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    stop_after: int | None = None,
    time_limit_s: float | None = None,
    pool_stacks: int | None = None,
):
    """Train a recipe's network on data simulated on the fly (or on its simulated pool).

    Arguments:
        recipe: ``Recipe`` or a name in ``RECIPES``.
        run_dir: folder for checkpoints and metrics (resumes if it holds a checkpoint).
        steps: override the number of steps (the learning-rate schedule follows it).
        seed: random seed of the data and the initial weights.
        progress: progress bars (None: only on a terminal).
        stop_after: stop after this many steps in total (see ``fluojax.train.train``).
        time_limit_s: stop, after a checkpoint, once this many seconds of training have passed
            (see ``fluojax.train.train``).
        pool_stacks: FCSNet: override the recipe's pool size (stacks simulated once and reused).

    Returns:
        (network, ``TrainHistory``); see ``fluojax.networks.train_recipe``.
    """
    recipe = RECIPES[recipe] if isinstance(recipe, str) else recipe
    if pool_stacks:
        recipe = recipe.with_pool(pool_stacks)
    return networks.train_recipe(
        recipe, run_dir, steps=steps, seed=seed, progress=progress, stop_after=stop_after, time_limit_s=time_limit_s
    )


def _build_from_meta(config_cls):
    return lambda meta: nets.build_network(config_cls(**meta["net_config"]))


BUILDERS = {"fcsnet": _build_from_meta(nets.FCSNetConfig), "imfcsnet": _build_from_meta(nets.ImFCSNetConfig)}
"""``meta["fluojax_network"]`` -> ``build(meta)``: the FCS networks ``load_network`` rebuilds."""


def load_network(path: str | Path, expect: str | None = None):
    """Rebuild a trained network from a checkpoint folder (a run folder or one of its checkpoints).

    Arguments:
        path: run folder (its newest checkpoint is used) or a ``checkpoints/step_*`` folder.
        expect: ``"fcsnet"`` or ``"imfcsnet"``: refuse a checkpoint of the other network.

    Returns:
        (network in eval mode, checkpoint meta dict).

    Raises:
        ValueError: not a fluojax network checkpoint, or not the expected network.
    """
    return networks.load_network(path, BUILDERS, expect=expect, accepted="FCSNet or ImFCSNet network")


def predict_ln_d(net, inputs: np.ndarray, batch: int = 256) -> np.ndarray:
    """ln D (um^2/s) of many inputs in fixed-size batches (the last one padded: one compilation).

    Arguments:
        net: FCSNet or ImFCSNet in eval mode (``load_network``).
        inputs: (B, 72) ACFs or (B, T, 3, 3) stacks.
        batch: int, samples per compiled call (fewer inputs: one call of their number).

    Returns:
        (B,) float32 ln D.
    """
    return networks.predict(net, inputs, max(1, min(batch, len(inputs))))


def imfcsnet_windows(height: int, width: int, overlap: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the 3 x 3 windows ImFCSNet reads from an H x W image.

    Overlapping: every window (stride 1); its prediction belongs to its centre pixel, so the
    map has no values on the 1-pixel border. Non-overlapping: 3 x 3 tiles (stride 3), a map of
    (H // 3, W // 3) binned pixels.

    Returns:
        (rows, cols) int arrays of window corners.
    """
    step = 1 if overlap else 3
    rows, cols = np.meshgrid(np.arange(0, height - 2, step), np.arange(0, width - 2, step), indexing="ij")
    return rows.ravel(), cols.ravel()


@functools.cache
def _imfcsnet_by_pixels():
    """The compiled per-pixel and per-window halves of ``ImFCSNet`` (``pixel_spectra``, ``windows_ln_d``)."""
    from flax import nnx

    pixels = nnx.jit(lambda net, frames: net.pixel_spectra(frames))
    windows = nnx.jit(
        lambda net, spectra, rows, cols, frames: net.windows_ln_d(spectra, rows, cols, frames), static_argnums=4
    )
    return pixels, windows


_BAND_BYTES = 1 << 30
"""Memory for one band of image rows whose pixel spectra are held at once (~16 bytes per pixel
and frame with the temporaries; a 128 x 128 x 2,500 chunk is one band)."""


def _imfcsnet_chunk(net, frames: np.ndarray, rows: np.ndarray, cols: np.ndarray, batch: int, method: str, on_batch):
    """ln D of the windows ``(rows, cols)`` of one chunk ``frames`` (T, H, W): ``"direct"``, the network
    on each window's (T, 3, 3) stack, or ``"fft"``, the same map from the pixels' shared spectra."""
    if method == "direct":
        windows = np.lib.stride_tricks.sliding_window_view(frames, (3, 3), axis=(1, 2))  # (T, h-2, w-2, 3, 3)
        parts = []
        for start in range(0, rows.size, batch):
            r, q = rows[start : start + batch], cols[start : start + batch]
            parts.append(predict_ln_d(net, np.moveaxis(windows[:, r, q], 1, 0), batch))
            on_batch(parts[-1])
        return np.concatenate(parts)
    pixels, windows_ln_d = _imfcsnet_by_pixels()
    t, h, w = frames.shape
    band = max(1, min(h - 2, _BAND_BYTES // (16 * t * w) - 2))  # window rows per band of pixel spectra
    size = max(1, min(batch, rows.size))
    values = np.empty(rows.size, np.float32)
    for r0 in range(0, h - 2, band):
        inside = np.flatnonzero((rows >= r0) & (rows < r0 + band))
        if inside.size == 0:
            continue
        top = min(r0, h - 2 - band)  # the last band ends at the image's edge: every band has band + 2 rows
        spectra = pixels(net, jnp.asarray(frames[:, top : top + band + 2]))

        def in_band(rc, _count, spectra=spectra):
            return windows_ln_d(net, spectra, jnp.asarray(rc[0]), jnp.asarray(rc[1]), t)

        values[inside] = batching.map_padded(
            in_band,
            (rows[inside] - top, cols[inside]),
            size,
            on_batch=on_batch,
        )
    return values


def predict_imfcsnet_map(
    net,
    stack,
    window_frames: int,
    overlap: bool = True,
    batch: int = 64,
    progress: bool | None = None,
    method: str = "fft",
) -> dict:
    """ImFCSNet over a whole (T, H, W) stack: 3 x 3 windows in space, non-overlapping chunks in time.

    Each window is evaluated on ``floor(T / window_frames)`` consecutive chunks of
    ``window_frames`` frames; the map holds the mean of the chunks' ln D, exponentiated
    ("ImFCSNet_ave" of Tang et al. 2024, averaged in ln D where the network's error is symmetric), and
    the first chunk's value alone.

    By default (``method="fft"``) each pixel's trace is Fourier-transformed once for the 9 windows
    that share it, the first layer (z-score and 200-frame convolution, both linear) is summed over
    the window's pixels in the frequency domain, and the residual stages' convolutions run by FFT
    (``ImFCSNet.pixel_spectra``, ``ImFCSNet.windows_ln_d``): the same map as the network on every
    window (``method="direct"``) within float32 rounding, with ~60x fewer arithmetic operations in
    the first layer and ~9x fewer in the residual convolutions at paper size (the strided
    convolution and the 1 x 1 stages run as in the network).

    Arguments:
        net: ImFCSNet in eval mode.
        stack: (T, H, W) array or memory map of counts.
        window_frames: int, frames per chunk (the network's training length, e.g. 2,500).
        overlap: per-pixel map with an empty 1-pixel border (True) or 3 x 3 tiles (False).
        batch: int, windows per compiled call (``"fft"``: about 2 MB each at T = 2,500 and the
            paper's network, on top of the pixel spectra, held for bands of image rows of ~1 GiB).
        progress: progress of the windows (:func:`fluojax.progress.progress`: None or True, a bar
            on a terminal and a line every ~10 s in logs; False: nothing).
        method: ``"fft"`` (default) or ``"direct"`` (the network on each window's stack, for checks).

    Returns:
        dict with ``d_um2_s`` (mean over chunks), ``d_first_um2_s`` (first chunk),
        ``ln_d_chunks`` (chunks, H', W'), ``edge`` (bool map of pixels without a value),
        ``chunks`` (int).

    Raises:
        fluojax.io.InputError: the stack is shorter than one chunk, the chunk shorter than the network's
            receptive field, or the image smaller than 3 x 3.
    """
    from fluojax.progress import progress as progress_counter

    t, h, w = stack.shape
    if window_frames < net.config.min_frames:
        raise InputError(f"window of {window_frames} frames: this ImFCSNet needs at least {net.config.min_frames}")
    if t < window_frames:
        raise InputError(f"stack of {t} frames: this network reads chunks of {window_frames} frames")
    if h < 3 or w < 3:
        raise InputError(f"image of {h} x {w} pixels: ImFCSNet needs at least 3 x 3")
    if method not in ("fft", "direct"):
        raise ValueError(f"method {method!r}: 'fft' or 'direct'")
    rows, cols = imfcsnet_windows(h, w, overlap)
    chunks = t // window_frames
    out_h, out_w = (h, w) if overlap else (h // 3, w // 3)
    ln_d = np.full((chunks, out_h, out_w), np.nan, np.float32)
    with progress_counter(chunks * rows.size, "ImFCSNet", "windows", enabled=progress) as bar:
        for c in range(chunks):
            frames = np.asarray(stack[c * window_frames : (c + 1) * window_frames], np.float32)
            values = _imfcsnet_chunk(net, frames, rows, cols, batch, method, lambda out: bar.update(len(out)))
            if overlap:
                ln_d[c, rows + 1, cols + 1] = values
            else:
                ln_d[c, rows // 3, cols // 3] = values
    edge = np.isnan(ln_d[0])
    return {
        "d_um2_s": np.exp(np.mean(ln_d, axis=0)),
        "d_first_um2_s": np.exp(ln_d[0]),
        "ln_d_chunks": ln_d,
        "edge": edge,
        "chunks": chunks,
    }


def physics_check_chi2(
    acf: np.ndarray, sem: np.ndarray, lag_s: np.ndarray, d_um2_s: np.ndarray, shape: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduced chi^2 of the model ACF at a given D, amplitude and offset fitted in closed form.

    With ``s_k = S(D tau_k)`` (the model's normalised shape) and weights ``w_k = 1/sem_k^2``,
    ``G_k ~ a s_k + g`` is solved by weighted linear least squares for ``a = 1/N`` and
    ``g = G_inf``; ``chi^2_red = sum_k w_k (G_k - a s_k - g)^2 / (K - 3)`` (three numbers, D
    included, were taken from the data). Values near 1 mean the predicted D explains the ACF as
    well as a full fit would; values far above 1 flag a prediction to distrust.

    Arguments:
        acf, sem: (B, K) measured ACFs and their standard errors.
        lag_s: (K,) lag times in s.
        d_um2_s: (B,) predicted diffusion coefficients in um^2/s.
        shape: vectorised NumPy ``S(D tau)`` of the model (``fcs.estimate.model_and_shape``).

    Returns:
        (chi2_reduced, n_particles, g_inf), each (B,); NaN where D or the data are not usable.
    """
    acf = np.asarray(acf, np.float64)
    sem = np.asarray(sem, np.float64)
    d = np.asarray(d_um2_s, np.float64).reshape(-1)
    ok_d = np.isfinite(d) & (d > 0)
    s = shape(np.where(ok_d, d, 1.0)[:, None] * np.asarray(lag_s, np.float64)[None, :])
    good = np.isfinite(acf) & np.isfinite(sem) & (sem > 0)
    w = np.where(good, 1.0 / np.where(good, sem, 1.0) ** 2, 0.0)
    g = np.where(good, acf, 0.0)
    sww, sw1, s11 = (w * s * s).sum(1), (w * s).sum(1), w.sum(1)
    bw, b1 = (w * s * g).sum(1), (w * g).sum(1)
    det = sww * s11 - sw1**2
    with np.errstate(invalid="ignore", divide="ignore"):
        amp = (bw * s11 - b1 * sw1) / det
        offset = (sww * b1 - sw1 * bw) / det
        chi2 = (w * (g - amp[:, None] * s - offset[:, None]) ** 2).sum(1) / (good.sum(1) - 3)
        n = 1.0 / amp
    bad = ~ok_d | (good.sum(1) <= 3) | ~(det > 0)
    return np.where(bad, np.nan, chi2), np.where(bad, np.nan, n), np.where(bad, np.nan, offset)


def _settings_for(meta: dict, frame_time_s: float, binning: int, overlap: bool):
    """Analysis settings matching a network's training prior (its optics and geometry)."""
    prior = simulate.TrainingPrior(**meta["prior"])
    optics = prior.optics(0.5 * (prior.sigma0_min + prior.sigma0_max), binning)
    return pipeline.AnalysisSettings(frame_time_s, optics, model=prior.acf_geometry, overlap=overlap)


def _fcsnet_map(net, meta, stack, frame_time_s, overlap, bleach_order, progress):
    """FCSNet on every pixel's ACF: (ln D (H, W), border mask, region of the ACFs, settings, ACFs)."""
    settings = dataclasses.replace(_settings_for(meta, frame_time_s, 1, False), bleach_order=bleach_order)
    corr = pipeline.correlate_stack(stack, settings, progress)
    ln_d = predict_ln_d(net, np.nan_to_num(corr.acf)).reshape(corr.shape)
    return ln_d, np.zeros(corr.shape, bool), (slice(None), slice(None)), settings, corr


def _imfcsnet_map(net, meta, stack, frame_time_s, overlap, bleach_order, progress):
    """ImFCSNet on 3 x 3 windows, with the ACFs of the 3 x 3 sums for the physics check: in the
    overlapping mode a (H, W) map whose border has no window, else (H // 3, W // 3) tiles."""
    prior = simulate.TrainingPrior(**meta["prior"])
    result = predict_imfcsnet_map(net, stack, prior.frames, overlap, progress=progress)
    settings = dataclasses.replace(_settings_for(meta, frame_time_s, 3, overlap), bleach_order=bleach_order)
    corr = pipeline.correlate_stack(stack, settings, progress)  # 3 x 3 sums: (h-2, w-2) or (h//3, w//3)
    region = (slice(1, -1), slice(1, -1)) if overlap else (slice(None), slice(None))
    return np.log(result["d_um2_s"]), result["edge"], region, settings, corr


_MAP_PREDICTORS = {"fcsnet": _fcsnet_map, "imfcsnet": _imfcsnet_map}
"""``meta["fluojax_network"]`` -> the function mapping a whole stack with that network."""


def predict_stack(
    net,
    meta: dict,
    stack,
    frame_time_s: float,
    overlap: bool = True,
    bleach_order: int | str = "auto",
    progress: bool | None = None,
):
    """A network's D map of a whole (T, H, W) stack, with the physics check per pixel.

    FCSNet: every pixel's ACF (bleach-corrected, P=16, Q=8) -> ln D. ImFCSNet: 3 x 3 windows
    over non-overlapping chunks of the training length (:func:`predict_imfcsnet_map`). For
    either, the reduced chi^2 of the model ACF at the predicted D (amplitude and offset fitted,
    :func:`physics_check_chi2`) is returned in ``chi2_reduced``, from the ACF of the pixel
    (FCSNet) or of the 3 x 3 sum (ImFCSNet) over the whole stack.

    Arguments:
        net, meta: from :func:`load_network`.
        stack: (T, H, W) array or memory map.
        frame_time_s: float, s; must match the network's training frame time (1 %), since
            the network's D is in units fixed by the training frame time and pixel size.
        overlap: ImFCSNet per-pixel map (border marked) or 3 x 3 tiles.
        bleach_order: polynomial bleach correction of the ACFs (0: none), or ``"auto"``
            (``pipeline.choose_bleach_correction``).
        progress: progress bars.

    Returns:
        ``pipeline.FCSMaps`` (``n_particles``/``g_inf`` from the physics check; status 0 =
        predicted, 7 = no signal (constant), 8 = border, 9 = mean intensity <= 0, 5 = invalid
        ACF: :class:`pipeline.PixelStatus`).

    Raises:
        fluojax.io.InputError: a frame time that is not positive or differs from training, impossible
            optics in the checkpoint, a stack too short or too small, or one without a pixel
            that fluctuates with a positive mean (:func:`pipeline.check_signal`).
    """
    import time

    kind = meta["fluojax_network"]
    prior = simulate.TrainingPrior(**meta["prior"])
    if not (np.isfinite(frame_time_s) and frame_time_s > 0):
        raise InputError(f"frame time {frame_time_s} s: must be a positive number")
    if abs(frame_time_s / prior.frame_time_s - 1.0) > 0.01:
        raise InputError(
            f"this network was trained for a frame time of {prior.frame_time_s} s; the stack's is {frame_time_s} s "
            "(D from a network is only valid at its training frame time and pixel size)"
        )
    models.check_optics(_settings_for(meta, frame_time_s, 1, False).optics, prior.acf_geometry)
    t0 = time.perf_counter()
    if kind not in _MAP_PREDICTORS:
        raise InputError(f"a {kind!r} network does not predict maps: known are {', '.join(_MAP_PREDICTORS)}")
    ln_d, edge, region, settings, corr = _MAP_PREDICTORS[kind](
        net, meta, stack, frame_time_s, overlap, bleach_order, progress
    )
    out_shape = ln_d.shape
    t_pred = time.perf_counter() - t0
    acf = np.full(out_shape + (corr.acf.shape[1],), np.nan, np.float32)
    sem = np.full_like(acf, np.nan)
    mean = np.full(out_shape, np.nan, np.float32)
    data_status = np.full(out_shape, pipeline.PixelStatus.NO_WINDOW, np.uint8)
    inner = mean[region].shape  # where the correlated pixels (or 3 x 3 sums) lie in the map
    acf[region], sem[region] = corr.acf.reshape(inner + (-1,)), corr.sem.reshape(inner + (-1,))
    mean[region] = corr.mean_intensity.reshape(inner)
    data_status[region] = pipeline.signal_status(corr).reshape(inner)
    _, _, shape_fn = estimate.model_and_shape(settings)
    d = np.exp(ln_d)
    chi2, n, g_inf = physics_check_chi2(
        acf.reshape(-1, acf.shape[-1]), sem.reshape(-1, sem.shape[-1]), corr.lag_s, d.ravel(), shape_fn
    )
    status = np.where(edge, pipeline.PixelStatus.NO_WINDOW, data_status).astype(np.uint8)
    d = np.where(status == 0, d, np.nan).astype(np.float32)
    chi2, n, g_inf = (np.where(status.ravel() == 0, v, np.nan) for v in (chi2, n, g_inf))
    return pipeline.FCSMaps(
        d_um2_s=d,
        n_particles=n.reshape(out_shape).astype(np.float32),
        g_inf=g_inf.reshape(out_shape).astype(np.float32),
        chi2_reduced=chi2.reshape(out_shape).astype(np.float32),
        status=status,
        mean_intensity=mean,
        acf=acf,
        sem=sem,
        lag_s=corr.lag_s,
        timings_s={"predict_and_correlate": time.perf_counter() - t0, "network": t_pred},
        bleach=corr.bleach.as_dict(),
    ), dataclasses.replace(settings, bleach_order=corr.bleach.order)


# ----------------------------------------------------------------------------------------------
# the comparison of Tang et al. 2024, as estimators and a simulator for fluojax.compare
# ----------------------------------------------------------------------------------------------


def comparison_simulator(prior: simulate.TrainingPrior, density_per_px2: float, brightness: float):
    """Simulator for ``fluojax.compare``: (key, theta (N, 1) = D in um^2/s) -> (N, T, 3, 3) stacks.

    Every stack has the prior's optics and frame count and fixed density, brightness, sigma0 and
    read noise (the middle of the prior's ranges), so only D varies over the grid.

    Arguments:
        prior: ``simulate.TrainingPrior`` (frames = the long record, e.g. 50,000).
        density_per_px2: float, particles per px^2.
        brightness: float, counts per particle per frame.

    Returns:
        (simulate_grid_point, prior actually used).
    """
    n_particles = int(np.floor(density_per_px2 * prior.box_side_px**2))
    prior = dataclasses.replace(
        prior, max_particles=n_particles, density_max_per_px2=density_per_px2, density_min_per_px2=density_per_px2
    )
    sigma0 = 0.5 * (prior.sigma0_min + prior.sigma0_max)
    noise = 0.5 * (prior.noise_sd_min + prior.noise_sd_max)

    def simulate_grid_point(key, theta):
        n = theta.shape[0]
        params = simulate.TrainingParams(
            d_um2_s=jnp.asarray(theta[:, 0], jnp.float32),
            n_particles=jnp.full((n,), n_particles, jnp.int32),
            brightness=jnp.full((n,), brightness, jnp.float32),
            sigma0=jnp.full((n,), sigma0, jnp.float32),
            noise_sd=jnp.full((n,), noise, jnp.float32),
        )
        stacks, _ = simulate.simulate_training_batch(key, prior, n, params)
        return np.asarray(stacks)

    return simulate_grid_point, prior


def compare_with_least_squares(
    base: simulate.TrainingPrior,
    density_per_px2: float,
    brightness: float,
    t_short: int,
    fcsnet,
    imfcsnet,
    d_grid_um2_s,
    samples: int,
    key,
):
    """The comparison of Tang et al. 2024: least squares and the networks on the same simulated
    3 x 3 stacks at each D of a grid (:func:`comparison_simulator`, :func:`comparison_estimators`,
    ``fluojax.compare.compare_estimators``).

    Arguments:
        base: ``simulate.TrainingPrior`` of the long record (its frames = the long T).
        density_per_px2: particles per px^2; brightness: counts per particle per frame.
        t_short: frames of the short record the networks see.
        fcsnet, imfcsnet: loaded networks, or None to leave one out.
        d_grid_um2_s: the true D values (um^2/s).
        samples: stacks per grid point; key: PRNG key.

    Returns:
        ``fluojax.compare.ComparisonReport`` (parameter ``D_um2_s``, compared in ln D).
    """
    from fluojax import compare

    simulate_point, prior = comparison_simulator(base, density_per_px2, brightness)
    estimators = comparison_estimators(prior, t_short, fcsnet, imfcsnet)
    return compare.compare_estimators(
        estimators,
        simulate_point,
        np.asarray(d_grid_um2_s, np.float64).reshape(-1, 1),
        samples,
        key,
        param_names=("D_um2_s",),
        log_scale=("D_um2_s",),
    )


def comparison_estimators(prior, t_short: int, fcsnet, imfcsnet):
    """The estimators of the comparison of Tang et al. 2024, each stacks (N, T, 3, 3) -> (N, 1) D in um^2/s.

    ``NLS 1x1 @ long``: the centre pixel's ACF over all T frames fitted with the model;
    ``FCSNet 1x1 @ long``: that ACF through FCSNet; ``NLS 3x3 @ short``: the 3 x 3 sum's ACF
    over the first ``t_short`` frames, fitted (binning 3); ``ImFCSNet @ short``: the first
    ``t_short`` frames; ``ImFCSNet avg @ long``: mean ln D over the T / t_short windows;
    ``hybrid``: NLS 3x3 @ short started at ImFCSNet's D. A network given as None is left out.

    Arguments:
        prior: ``simulate.TrainingPrior`` of the data (optics, frame time).
        t_short: int, frames of the short record (>= 2,304 for the correlator).
        fcsnet, imfcsnet: networks in eval mode, or None.
    """
    optics = prior.optics(0.5 * (prior.sigma0_min + prior.sigma0_max))
    model = prior.acf_geometry
    one = pipeline.AnalysisSettings(prior.frame_time_s, optics, model=model, bleach_order=0)
    three = pipeline.AnalysisSettings(prior.frame_time_s, optics._replace(binning=3), model=model, bleach_order=0)
    lag_s = correlator.lag_grid(16, 8).lags * prior.frame_time_s
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def acf_centre(stacks):
        key = ("centre", id(stacks))
        if key not in cache:
            cache.clear()
            res = correlator.correlate(jnp.asarray(stacks[:, :, 1, 1].T))
            cache[key] = (np.asarray(res.acf.T), np.asarray(res.sem.T))
        return cache[key]

    def acf_sum_short(stacks):
        res = correlator.correlate(jnp.asarray(stacks[:, :t_short].sum(axis=(2, 3)).T))
        return np.asarray(res.acf.T), np.asarray(res.sem.T)

    def nls_long(stacks):
        acf, sem = acf_centre(stacks)
        return pipeline.fit_acfs(acf, sem, lag_s, one).params[:, 1:2]

    def fcsnet_long(stacks):
        acf, _ = acf_centre(stacks)
        return np.exp(predict_ln_d(fcsnet, np.nan_to_num(acf)))[:, None]

    def nls_short(stacks):
        acf, sem = acf_sum_short(stacks)
        return pipeline.fit_acfs(acf, sem, lag_s, three).params[:, 1:2]

    def imfcsnet_short(stacks):
        return np.exp(predict_ln_d(imfcsnet, stacks[:, :t_short], batch=32))[:, None]

    def imfcsnet_avg(stacks):
        n_win = stacks.shape[1] // t_short
        windows = stacks[:, : n_win * t_short].reshape(stacks.shape[0] * n_win, t_short, 3, 3)
        ln_d = predict_ln_d(imfcsnet, windows, batch=32).reshape(stacks.shape[0], n_win)
        return np.exp(ln_d.mean(axis=1))[:, None]

    def hybrid_short(stacks):
        acf, sem = acf_sum_short(stacks)
        start = np.exp(predict_ln_d(imfcsnet, stacks[:, :t_short], batch=32))
        return pipeline.fit_acfs(acf, sem, lag_s, three, start_d_um2_s=start).params[:, 1:2]

    estimators = {"NLS 1x1 @ long": nls_long}
    if fcsnet is not None:
        estimators["FCSNet 1x1 @ long"] = fcsnet_long
    estimators["NLS 3x3 @ short"] = nls_short
    if imfcsnet is not None:
        estimators.update(
            {
                "ImFCSNet @ short": imfcsnet_short,
                "ImFCSNet avg @ long": imfcsnet_avg,
                "hybrid (ImFCSNet start) @ short": hybrid_short,
            }
        )
    return estimators
