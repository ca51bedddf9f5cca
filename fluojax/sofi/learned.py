"""The MISR-GRU SOFI network as users run it: training recipes, training pairs, checkpoints, prediction.

A *recipe* (:class:`MisrGruRecipe`, a ``fluojax.networks.Recipe``) names the simulated movies the
network learns from (the 3 x 4 density x SNR grid of Komen 2024, Tables 5.1-5.2, on fields of
``tile`` pixels: :func:`fluojax.sofi.simulate.thesis_preset` or, for small fields,
:func:`~fluojax.sofi.simulate.small_preset`), the network size
(:class:`fluojax.sofi.nets.MisrGruConfig`) and the training schedule. A training pair is one
simulated movie of ``movie_frames`` (100) frames: the input is its first ``net.frames`` (20)
frames (:func:`network_input`), the target the 2nd-order SOFI image of all its frames
(:func:`sofi_target`). As in Komen 2024 (§5.1.2: 2000 training samples) the network trains on a
fixed pool simulated once (in chunks, with a progress counter) and a separate held-out pool,
minimising the pixel mean squared error (``loss="mse"``, the default) or the thesis's Fourier loss
(``loss="fourier"``, :func:`fluojax.sofi.nets.fourier_loss`; Komen 2024, eq. 4.5). On the thesis's
sparse blinking the Fourier loss does not rank predictions by structure: its phase term is at
chance level (~1.57) even for the 20-frame SOFI image (Pearson 0.8 with the target) and its
amplitude term ignores where things are, so a network trained on it matched the spectrum with
unstructured images (held-out Pearson 0.003 after 1,250 steps of ``misrgru-small``).

Input scaling: every 20-frame window is standardised by its own mean and standard deviation
(:func:`network_input`), in training and at prediction. Komen 2024 divides the 16-bit counts by
65535 instead. A SOFI target normalised to its maximum does not see the camera offset
(cross-cumulants of distinct pixels ignore it) nor, with root linearization, the gain (kappa_2
scales as gain^2, the square root and the normalisation remove it); the adaptive exponent depends
weakly on the cumulant's units (it is computed on raw counts, as in sofipackage). An input scaled
per window leaves the network nothing to learn about offset and gain, and its fluctuations have
unit variance rather than ~1e-3 (a per-window min-max, used before, left sparse blinking at s.d.
~0.08 on a pedestal, and the network did not learn from it).

Target: sofipackage's 2nd-order image (Leutenegger, Geissbuehler, Lukes, Grussmayer et al.):
cross-cumulant sub-lattices (:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices`), the
empirical flattening with the 2 x 2 median (:func:`fluojax.sofi.estimate.flatten`), then the
adaptive linearization the thesis trains on (Komen 2024, §6 and appendix E:
:func:`~fluojax.sofi.estimate.adaptive_linearize`, rho_on from orders 2 and 3 flattened with the
simulation's PSF width, :func:`~fluojax.sofi.estimate.estimate_on_ratio`) or, with
``linearization="root"``, the standard one (:func:`~fluojax.sofi.estimate.linearize`), with the
simulated FWHM and 10 Richardson-Lucy iterations; finally divided by its maximum (sofipackage
saves ``65535 x image / max``, the thesis divides by 65535).

Recipes (:data:`RECIPES`):

``misrgru-paper``
    Komen 2024 and the authors' released code (Grussmayer lab, RESURF_MISRGRU): C = 24 (95,073
    weights), 128 x 128 fields, 20 input frames, targets from 100 frames, a pool of 2,000
    movies (the thesis's training-set size) plus 60 held out, batch 10, 28,000 steps (200
    epochs of 140 batches), AdamW at 1e-3 with weight decay 1e-4 decaying to 1e-4 (see
    :class:`MisrGruRecipe` for how this differs from the released PyTorch Adam). A GPU recipe.
``misrgru-small``
    A CPU recipe: the released network (C = 24) on 32 x 32 fields (targets 57 x 57), a pool of
    1,920 movies (160 per density x SNR cell) plus 48 held out, batch 8, AdamW 1e-3 -> 1e-4,
    2,500 steps: about an hour of this 2-core CPU when idle (measured 0.73 steps/s; the pool
    about 3 minutes with one compilation per cell). On cores shared with other work the rate
    drops several-fold (0.19 steps/s at load ~6.5): pass ``steps`` or ``stop_after``.
``misrgru-small-wide``
    ``misrgru-small`` on filaments whose 5000 emitters/um^2 are spread over a 50-nm labelled
    width (250 emitters per um of filament instead of the literal reading's 50; our choice,
    see :func:`fluojax.sofi.simulate.thesis_preset`).
``misrgru-small-wide-rho``
    ``misrgru-small-wide`` whose adaptive targets use the simulation's own on-time ratio
    instead of the estimate from orders 2-3 with one emitter per point, which where N emitters
    share a point reads about N rho and so gives exponents close to the root's (docs/sofi.md,
    sections 9-10).
``misrgru-small-c16``
    The same with the released code's 16-channel variant: 1.8 steps/s idle, so 6,000 steps.

:func:`predict` runs a trained network over a stack of any size and length in 20-frame windows
(disjoint, or rolling with a smaller stride) through :func:`fluojax.networks.predict`;
:func:`load_network` rebuilds a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from fluojax import networks
from fluojax import train as training
from fluojax.batching import map_padded
from fluojax.io import require
from fluojax.sofi import cumulants, estimate, nets, simulate

__all__ = [
    "BUILDERS",
    "LINEARIZATIONS",
    "LOSSES",
    "NETWORK_KIND",
    "RECIPES",
    "MisrGruRecipe",
    "load_network",
    "network_input",
    "predict",
    "simulate_pool",
    "sofi_target",
    "train_recipe",
    "training_pairs",
]

NETWORK_KIND = "misrgru"
"""``meta["fluojax_network"]`` of every MISR-GRU SOFI checkpoint."""

LINEARIZATIONS = estimate.LINEARIZATIONS
"""How the 2nd-order target is linearized: adaptive (Komen 2024's targets) or the square root."""

_TARGET_ORDER = 2
_INPUT_SCALING = "per-window standardisation"  # what network_input does, stored in checkpoints

TARGET_RHOS = ("estimated", "simulated")
"""Where the adaptive targets' rho_on comes from (:attr:`MisrGruRecipe.target_rho`)."""

LOSSES = {"mse": training.mse_loss, "fourier": nets.fourier_loss}
"""Training losses of the recipes: pixel mean squared error, or Komen 2024's Fourier L1 (eq. 4.5)."""


def network_input(frames: Float[ArrayLike, "*batch t y x"]) -> Float[Array, "*batch t y x"]:
    """What the network reads: each (t, y, x) window standardised by its own mean and spread.

    ``(I - mean I) / std I``, mean and standard deviation over the window's frames and pixels
    (dimensionless, zero mean and unit variance; a constant window gives zeros). The one input
    transform, used for the training pairs and by :func:`predict`. Like the former per-window
    min-max it ignores the camera offset and gain, but it scales the fluctuations, not the
    extremes: with the thesis's photophysics (rho_on ~ 0.016) a 20-frame window is a pedestal
    with sparse blinking events, and min-max put it at 0.2-0.4 with fluctuations of s.d. ~0.08
    (the maximum is one bright event), on which the network did not learn (sofi.md, §10).

    Arguments:
        frames: (..., t, y, x) camera frames (any units, any offset).
    """
    x = jnp.asarray(frames, jnp.float32)
    centred = x - jnp.mean(x, axis=(-3, -2, -1), keepdims=True)
    spread = jnp.sqrt(jnp.mean(centred * centred, axis=(-3, -2, -1), keepdims=True))
    return centred / jnp.where(spread > 0, spread, 1.0)


def sofi_target(
    stack: Float[ArrayLike, "t y x"],
    fwhm_px: float,
    linearization: str = "adaptive",
    iterations: int = 10,
    on_ratio: float | None = None,
) -> Float[Array, "y2 x2"]:
    """The network's target: the linearized 2nd-order SOFI image of a stack, divided by its maximum.

    ``flatten(kappa_2)`` (sofipackage's empirical flattening and 2 x 2 median), then Richardson-
    Lucy with the order-scaled Gaussian of FWHM ``fwhm_px`` and the exponent ``gamma_2`` of the
    adaptive linearization (``rho_on`` from the 2nd- and 3rd-order cumulants flattened with the
    distance factors of ``fwhm_px``; Geissbuehler et al. 2012; Komen 2024, eq. 3.8-3.9) or 1/2
    (``"root"``, Komen 2024, eq. 3.7); finally ``/ max``. ``2 (H - 4) + 1`` pixels per side.
    Jit-able with the static arguments fixed.

    Arguments:
        stack: (T, H, W) frames, T >= 3 (order 3 for the adaptive exponent).
        fwhm_px: PSF FWHM in camera pixels (static).
        linearization: ``"adaptive"`` or ``"root"`` (static).
        iterations: Richardson-Lucy iterations (static; sofipackage: 10).
        on_ratio: rho_on of the adaptive exponent (e.g. a simulation's own on-time ratio); None:
            estimated from the stack's orders 2 and 3 with one emitter per point, which on dense
            filaments reads about N rho (:func:`fluojax.sofi.estimate.estimate_on_ratio`).
    """
    require(linearization in LINEARIZATIONS, f"linearization {linearization!r}: choose adaptive or root")
    k2_sub = cumulants.cross_cumulant_sublattices(stack, _TARGET_ORDER)
    k2 = estimate.flatten(k2_sub)
    if linearization == "root":
        image = estimate.linearize(k2, _TARGET_ORDER, fwhm_px, iterations)
    else:
        if on_ratio is None:
            d2 = estimate.flatten(k2_sub, fwhm_px)
            d3 = estimate.flatten(cumulants.cross_cumulant_sublattices(stack, 3), fwhm_px)
            rho = estimate.estimate_on_ratio(d2, d3)
        else:
            rho = jnp.asarray(on_ratio, jnp.float32)
        image = estimate.adaptive_linearize(k2, _TARGET_ORDER, fwhm_px, rho, iterations)
    peak = jnp.max(image)
    return image / jnp.where(peak > 0, peak, 1.0)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def training_pairs(
    movies: Float[ArrayLike, "b t y x"],
    frames: int,
    fwhm_px: float,
    linearization: str = "adaptive",
    on_ratio: float | None = None,
) -> tuple[Float[Array, "b f y x"], Float[Array, "b y2 x2"]]:
    """Training pairs of a batch of movies: (``network_input`` of the first ``frames`` frames,
    ``sofi_target`` of all frames). Jit-compiled (once per movie shape and static arguments).

    Arguments:
        movies: (B, T, H, W) simulated movies, T >= ``frames``.
        frames: input frames (static; Komen 2024: 20).
        fwhm_px: PSF FWHM in camera pixels (static).
        linearization: ``"adaptive"`` or ``"root"`` (static).
        on_ratio: rho_on of the adaptive targets (static; None: estimated per movie).
    """
    m = jnp.asarray(movies, jnp.float32)
    require(m.ndim == 4 and m.shape[1] >= frames, f"movies of shape {m.shape}: need (batch, >= {frames} frames, y, x)")
    targets = jax.vmap(lambda s: sofi_target(s, fwhm_px, linearization, on_ratio=on_ratio))(m)
    return network_input(m[:, :frames]), targets


@functools.partial(jax.jit, static_argnames=("settings",))
def _simulate_movies(key_data, settings: simulate.SofiSettings):
    """Camera frames (B, T, H, W) of movies drawn from raw key data (B, 2) (one compilation per settings)."""
    keys = jax.random.wrap_key_data(key_data)
    return jax.vmap(lambda k: simulate.simulate_movie(k, settings).frames)(keys)


@dataclasses.dataclass(frozen=True)
class MisrGruRecipe(networks.Recipe):
    """Everything needed to train one MISR-GRU SOFI network (immutable).

    Attributes, besides the base's ``name``, ``net`` (a :class:`~fluojax.sofi.nets.MisrGruConfig`;
    its ``frames`` are the input frames) and ``train``:
        tile: field side in camera pixels of the simulated movies (the network's input size in
            training; it is fully convolutional).
        movie_frames: frames per simulated movie, all used for the target (Komen 2024: 100).
        densities: density levels of the thesis grid drawn (0-2: off-time 600/1200/2400 ms).
        snrs: SNR levels drawn (0-3: I_on 100/80/60/40 photons per frame).
        linearization: target linearization, ``"adaptive"`` (the thesis) or ``"root"``.
        loss: ``"mse"`` (pixel mean squared error, the default) or ``"fourier"`` (Komen 2024,
            eq. 4.5), a name in :data:`LOSSES`.
        pool_samples: movies of the training pool, split evenly over the density x SNR cells.
        held_out_samples: movies of the separate held-out pool (whole batches are used).
        filament_width_nm: labelled width of the simulated filaments, nm (None: the thesis's 10 nm;
            :func:`fluojax.sofi.simulate.thesis_preset`).
        target_rho: rho_on of the adaptive targets: ``"estimated"`` from each movie's orders 2-3
            with one emitter per point (:func:`fluojax.sofi.estimate.estimate_on_ratio`; on dense
            filaments about N rho, so the exponent is close to the root's) or ``"simulated"``, the
            movies' own on-time ratio (what an estimator that knew N would return).
        description: str.

    Optimizer: the released code uses PyTorch's Adam(lr 1e-3, weight_decay 1e-4), whose decay is
    an L2 term added to the gradient before Adam's normalisation, and ReduceLROnPlateau (x 0.5
    after 5 flat epochs). The recipes use ``fluojax.train.AdamW`` (decoupled decay: ``lr x 1e-4
    x theta`` per step; eps 1e-8, PyTorch's) and an exponential decay of the learning rate to a
    tenth, the training engine's schedules.
    """

    tile: int = 32
    movie_frames: int = 100
    densities: tuple[int, ...] = (0, 1, 2)
    snrs: tuple[int, ...] = (0, 1, 2, 3)
    linearization: str = "adaptive"
    loss: str = "mse"
    pool_samples: int = 1920
    held_out_samples: int = 48
    filament_width_nm: float | None = None
    target_rho: str = "estimated"
    description: str = ""

    network = NETWORK_KIND

    def __post_init__(self):
        require(self.tile >= 8, f"tile of {self.tile} pixels: the network's output needs at least 8")
        require(
            self.movie_frames >= max(self.net.frames, 3),
            f"movies of {self.movie_frames} frames: need at least the {self.net.frames} input frames (and 3)",
        )
        require(self.linearization in LINEARIZATIONS, f"linearization {self.linearization!r}: choose adaptive or root")
        require(self.loss in LOSSES, f"loss {self.loss!r}: choose {' or '.join(LOSSES)}")
        require(self.target_rho in TARGET_RHOS, f"target rho_on {self.target_rho!r}: choose {' or '.join(TARGET_RHOS)}")
        require(len(self.densities) > 0 and len(self.snrs) > 0, "at least one density and one SNR level")
        require(self.pool_samples >= 1 and self.held_out_samples >= 1, "pools need at least one movie each")

    def settings(self, density: int, snr: int) -> simulate.SofiSettings:
        """The simulated movies of one density x SNR cell (thesis preset; small fields: small preset)."""
        width = self.filament_width_nm
        if self.tile >= 128:
            base = simulate.thesis_preset(density, snr, (self.tile, self.tile), filament_width_nm=width)
        else:
            base = simulate.small_preset(density, snr, self.tile, filament_width_nm=width)
        return dataclasses.replace(base, n_frames=self.movie_frames)

    def movies(self, key_data: Array, density: int, snr: int) -> Float[Array, "b t y x"]:
        """Camera frames (B, ``movie_frames``, tile, tile) of B movies of one cell, one per raw key
        (``key_data`` (B, 2), ``jax.random.key_data``): :func:`fluojax.sofi.simulate.simulate_movie`
        with :meth:`settings` (compiled once per cell)."""
        return _simulate_movies(key_data, self.settings(density, snr))

    def target_on_ratio(self, density: int, snr: int) -> float | None:
        """rho_on of one cell's adaptive targets: the simulated on-time ratio, or None (estimated)."""
        if self.target_rho == "simulated" and self.linearization == "adaptive":
            return float(self.settings(density, snr).blinking.on_fraction)
        return None

    def fwhm_px(self) -> float:
        """PSF FWHM of the movies in camera pixels (the targets' deconvolution width)."""
        first = self.settings(*self.cells()[0])
        return first.fwhm_nm / first.pixel_nm

    def cells(self) -> list[tuple[int, int]]:
        """The (density, SNR) levels drawn, in order."""
        return [(d, s) for d in self.densities for s in self.snrs]

    def meta_fields(self) -> dict:
        first = self.settings(*self.cells()[0])
        return {
            "fwhm_px": self.fwhm_px(),
            "tile": self.tile,
            "movie_frames": self.movie_frames,
            "densities": list(self.densities),
            "snrs": list(self.snrs),
            "linearization": self.linearization,
            "loss": self.loss,
            "target_rho": self.target_rho,
            "pool_samples": self.pool_samples,
            "held_out_samples": self.held_out_samples,
            "filament_width_nm": first.sample.width_nm,
            "pixel_nm": first.pixel_nm,
            "fwhm_nm": first.fwhm_nm,
            "input_scaling": _INPUT_SCALING,
            "settings": networks.describe(first),
        }

    def build(self, seed: int):
        return nets.build_network(self.net, seed=seed)

    def sampler(self):
        """``(key, pool) -> (inputs (B, frames, y, x), targets (B, y2, x2))``: a batch drawn from the pool."""
        batch = self.train.batch_size

        def sample_pool(key, pool):
            inputs, targets = pool
            idx = jax.random.randint(key, (batch,), 0, inputs.shape[0])
            return inputs[idx], targets[idx]

        return sample_pool

    def training_data(self, seed: int, progress: bool | None) -> networks.TrainingData:
        """A training pool and a held-out pool simulated once (:func:`simulate_pool`), the recipe's loss."""
        key = jax.random.fold_in(jax.random.key(seed), 20_020)
        pool = simulate_pool(jax.random.fold_in(key, 0), self, self.pool_samples, progress)
        held = simulate_pool(jax.random.fold_in(key, 1), self, self.held_out_samples, progress)
        b = self.train.batch_size
        batches = max(1, len(held[0]) // b)
        held_out = [(held[0][i * b : (i + 1) * b], held[1][i * b : (i + 1) * b]) for i in range(batches)]
        return networks.TrainingData(self.sampler(), loss=LOSSES[self.loss], data=pool, held_out=held_out)


def simulate_pool(
    key: jax.Array, recipe: MisrGruRecipe, samples: int, progress: bool | None = None, chunk: int = 16
) -> tuple[Float[np.ndarray, "n f y x"], Float[np.ndarray, "n y2 x2"]]:
    """Training pairs of ``samples`` simulated movies, spread evenly over the recipe's density x SNR cells.

    Each cell's movies (:meth:`MisrGruRecipe.movies`) are simulated and turned into pairs
    (:func:`training_pairs`) ``chunk`` at a time (:func:`fluojax.batching.map_padded`: one
    compilation per cell, and one of the targets per on-time ratio they are linearized with),
    with a progress counter.

    Arguments:
        key: PRNG key.
        recipe: :class:`MisrGruRecipe`.
        samples: number of movies (cell c gets ``samples // cells`` plus one of the remainder).
        progress: progress counter (None: auto).
        chunk: movies per compiled call (a cell of fewer movies is padded to one call: every pool of
            a recipe, training and held-out, reuses the same compilations).

    Returns:
        (inputs (n, frames, tile, tile), targets (n, 2 tile - 7, 2 tile - 7)) NumPy float32, cells in order.
    """
    from fluojax.progress import progress as counter

    cells = recipe.cells()
    fwhm_px = recipe.fwhm_px()
    counts = [samples // len(cells) + (i < samples % len(cells)) for i in range(len(cells))]
    inputs, targets = [], []
    with counter(samples, "simulate SOFI pairs", "movies", enabled=progress) as bar:
        for i, ((density, snr), n) in enumerate(zip(cells, counts)):
            if n == 0:
                continue
            keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.fold_in(key, i), n)))

            on_ratio = recipe.target_on_ratio(density, snr)

            def pairs(k, _count, density=density, snr=snr, on_ratio=on_ratio):
                movies = recipe.movies(jnp.asarray(k), density, snr)
                return training_pairs(movies, recipe.net.frames, fwhm_px, recipe.linearization, on_ratio)

            x, y = map_padded(
                pairs,
                keys,
                chunk,  # fewer movies are padded to one call: one compiled size for every pool
                on_batch=lambda out: bar.update(len(out[0])),
            )
            inputs.append(x)
            targets.append(y)
    return np.concatenate(inputs).astype(np.float32), np.concatenate(targets).astype(np.float32)


def _paper_schedule() -> training.TrainConfig:
    return training.TrainConfig(
        steps=28_000,  # 200 epochs x 140 batches of 10 (1,400 training samples in the thesis's 70/30 split)
        batch_size=10,
        learning_rate=1e-3,
        final_learning_rate=1e-4,
        optimizer=training.AdamW(eps=1e-8, weight_decay=1e-4),
        eval_every=700,
        eval_batches=6,
        checkpoint_every=1400,
    )


def _small_schedule(steps: int) -> training.TrainConfig:
    return training.TrainConfig(
        steps=steps,
        batch_size=8,
        learning_rate=1e-3,
        final_learning_rate=1e-4,
        optimizer=training.AdamW(eps=1e-8, weight_decay=1e-4),
        eval_every=100,
        eval_batches=6,
        checkpoint_every=250,
    )


_SMALL = MisrGruRecipe(
    "misrgru-small",
    nets.MisrGruConfig.paper(),
    _small_schedule(2500),
    tile=32,
    pool_samples=1920,
    held_out_samples=48,
    description=(
        "the released network (C = 24, 95,073 weights) on 32 x 32 x 20-frame tiles -> 57 x 57 adaptive SOFI "
        "of 100 frames, pool of 1,920 movies, batch 8, 2,500 steps (CPU: ~1 h on 2 idle cores, pool included)"
    ),
)


_WIDE = dataclasses.replace(
    _SMALL,
    name="misrgru-small-wide",
    filament_width_nm=50.0,
    description=(
        "misrgru-small on filaments labelled over 50 nm (250 emitters per um instead of 50; "
        "a denser labelling whose 100-frame SOFI targets come close to the thesis's Pearson)"
    ),
)


RECIPES: dict[str, MisrGruRecipe] = {
    "misrgru-paper": MisrGruRecipe(
        "misrgru-paper",
        nets.MisrGruConfig.paper(),
        _paper_schedule(),
        tile=128,
        pool_samples=2000,
        held_out_samples=60,
        description=(
            "Komen 2024 / released code: 128 x 128 x 20 frames -> 249 x 249 adaptive SOFI of 100 frames, "
            "C = 24, pool of 2,000 movies, batch 10, 28,000 steps (GPU)"
        ),
    ),
    "misrgru-small": _SMALL,
    "misrgru-small-wide": _WIDE,
    "misrgru-small-wide-rho": dataclasses.replace(
        _WIDE,
        name="misrgru-small-wide-rho",
        target_rho="simulated",
        description=(
            "misrgru-small-wide with targets adaptively linearized with the simulation's own on-time "
            "ratio instead of the one-emitter estimate (which reads about N rho on these filaments)"
        ),
    ),
    "misrgru-small-c16": MisrGruRecipe(
        "misrgru-small-c16",
        nets.MisrGruConfig(channels=16),
        _small_schedule(6000),
        tile=32,
        pool_samples=1920,
        held_out_samples=48,
        description=(
            "the released code's 16-channel variant on the tiles of misrgru-small, batch 8, 6,000 steps "
            "(CPU: ~1 h on 2 idle cores, pool included)"
        ),
    ),
}


def train_recipe(recipe: MisrGruRecipe | str, run_dir: str | Path | None = None, **options: Any):
    """Train a recipe (or a name in :data:`RECIPES`) with :func:`fluojax.networks.train_recipe`.

    Arguments:
        recipe: :class:`MisrGruRecipe` or its name.
        run_dir: folder for checkpoints and metrics (resumes if it holds a checkpoint).
        **options: ``steps``, ``seed``, ``progress``, ``stop_after``, ``time_limit_s``.

    Returns:
        (network, ``TrainHistory``).

    Raises:
        InputError: a name that is not in :data:`RECIPES`.
    """
    return networks.train_recipe(networks.recipe_named(RECIPES, recipe), run_dir, **options)


def _config_from_meta(meta: dict) -> nets.MisrGruConfig:
    return nets.MisrGruConfig(**meta["net_config"])


BUILDERS = {NETWORK_KIND: lambda meta: nets.build_network(_config_from_meta(meta))}
"""``meta["fluojax_network"]`` -> ``build(meta)``: the network :func:`load_network` rebuilds."""


def load_network(path: str | Path):
    """Rebuild a trained MISR-GRU SOFI network from a checkpoint (run folder or checkpoint).

    Returns:
        (network, checkpoint meta with ``net_config``, ``tile``, ``linearization``, ``pixel_nm``, ...).

    Raises:
        ValueError: not a fluojax network checkpoint, or not a MISR-GRU one.
        InputError: a network trained on inputs scaled otherwise (the former per-window min-max).
    """
    net, meta = networks.load_network(path, BUILDERS, accepted="MISR-GRU SOFI network")
    require(
        meta.get("input_scaling", _INPUT_SCALING) == _INPUT_SCALING,
        f"{path}: a network trained on {meta.get('input_scaling')} inputs; this version feeds "
        f"{_INPUT_SCALING} (retrain it)",
    )
    return net, meta


def predict(
    net: nets.MisrGru, stack: Float[ArrayLike, "t y x"], *, stride: int | None = None, batch: int = 4
) -> Float[np.ndarray, "w y2 x2"]:
    """The network's 2nd-order SOFI image of every window of ``net.config.frames`` frames of a stack.

    Window k holds frames ``[k stride, k stride + F)`` (F = ``net.config.frames``); ``stride = F``
    (default) gives disjoint windows, a smaller stride rolling ones (stride 1: one image per
    frame after the first F - 1). Frames past the last whole window are not used. Each window is
    scaled by :func:`network_input`; windows go through the network ``batch`` at a time
    (:func:`fluojax.networks.predict`, one compilation per field size).

    Arguments:
        net: the network (e.g. from :func:`load_network`).
        stack: (T, H, W) frames in camera counts, T >= F, H, W >= 8.
        stride: frames between window starts (default F).
        batch: windows per compiled call (fewer windows: one call of their number).

    Returns:
        (windows, 2 H - 7, 2 W - 7) NumPy float32 images, each on the scale of the training targets
        (maximum about 1).

    Raises:
        InputError: a stack of the wrong shape, with non-finite values, or with a window in
            which no pixel changes in time (a constant stack: nothing blinks).
    """
    x = np.asarray(stack, np.float32)
    f = net.config.frames
    require(
        x.ndim == 3 and x.shape[0] >= f,
        f"stack of shape {x.shape}: the network reads (frames, rows, columns) with at least {f} frames",
    )
    require(min(x.shape[1:]) >= 8, f"frames of {x.shape[1]} x {x.shape[2]} pixels: the network needs at least 8 x 8")
    step = f if stride is None else int(stride)
    require(step >= 1, f"stride {step} frames: must be >= 1")
    require(bool(np.all(np.isfinite(x))), "the stack holds non-finite values (NaN or infinity)")
    if f > 1:  # window [s, s + F) fluctuates iff some frame in it differs from the next one
        starts = np.arange(0, x.shape[0] - f + 1, step)
        t = x.shape[0]
        moved = [  # frame i vs i + 1, 256 pairs at a time (no full-size boolean copy of the stack)
            np.any(x[i + 1 : min(i + 257, t)] != x[i : min(i + 256, t - 1)], axis=(1, 2)) for i in range(0, t - 1, 256)
        ]
        changes = np.concatenate([[0], np.cumsum(np.concatenate(moved))])
        still = starts[changes[starts + f - 1] == changes[starts]]
        first = int(still[0]) if still.size else 0
        require(
            still.size == 0,
            f"frames {first}-{first + f - 1}: no pixel changes in time, so there is no blinking for the network "
            "to image",
        )
    windows = np.moveaxis(np.lib.stride_tricks.sliding_window_view(x, f, axis=0)[::step], -1, 1)  # (n, F, H, W)
    inputs = np.asarray(network_input(windows))
    return networks.predict(networks.eval_view(net), inputs, max(1, min(int(batch), len(inputs))))
