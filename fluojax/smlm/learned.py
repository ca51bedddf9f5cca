"""The voxel-wise regression network as users run it: training recipes, checkpoints, localization.

A *recipe* (:class:`VoxelNetRecipe`, a ``fluojax.networks.Recipe``) names the simulated scene the
network learns from (a :class:`fluojax.smlm.simulate.Scene`: PSF, pixel size, density, photons,
background, drift, noise), the z range of its voxels, the network size
(:class:`fluojax.smlm.nets.VoxelNetConfig`) and the training schedule. Training
(:func:`fluojax.networks.train_recipe`, or :func:`train_recipe` here) simulates every batch inside
the compiled step (:func:`fluojax.smlm.simulate.simulate_frames`), so no frame is ever reused, and
minimises :func:`fluojax.smlm.nets.voxel_loss` (Aritake et al. 2021, eq. 11).

Input scaling: the network reads ``frames / counts_per_unit`` (:func:`network_input`, default 100
photons per unit), the one transform applied both in training and at prediction; the frames are
expected in photons (photo-electrons) as simulated, so camera counts are converted first (gain and
offset). Aritake et al. 2021 do not describe an input normalisation; a fixed factor keeps the
network's inputs of order one (paper scene: background 10, peaks up to ~460 photons) while
keeping brightness information.

Recipes (:data:`RECIPES`):

``voxelnet-paper``
    Aritake et al. 2021, Table 3 and section 4.2: the quad-plane scene of
    :func:`~fluojax.smlm.simulate.quadplane_paper` (64 x 64 x 4 frames of 192 nm pixels, 50
    molecules, drift), z voxels over [-200, 1350) nm (the range of the simulated molecules, as in
    the authors' released code: 387.5 nm bins), the full network, Adam at 1e-3 (no decay), batch
    50, 40,000 steps (100,000 frames x 20 epochs / 50; the authors' released code draws the
    molecules of its 100,000 frames once and renders and re-noises them every epoch, here every
    step draws new molecules). A GPU recipe. The paper's Adam has beta2 = 0.99;
    ``fluojax.train.Adam`` uses optax's 0.999.
``voxelnet-small``
    A CPU recipe: 32 x 32 x 4 frames of the same scene (13 molecules: the paper's density), the
    half-width network (:meth:`~fluojax.smlm.nets.VoxelNetConfig.small`), batch 8, 3,000 steps (Adam 2e-3 -> 2e-4).
``voxelnet-cpu``
    The paper's network (206,704 weights) trained on this CPU: 32 x 32 x 4 tiles of the paper
    scene at its density (13 molecules), batch 16, 12,000 steps (192,000 tiles, about a tenth of
    the paper's 2,000,000 frame presentations in area), Adam 1e-3 -> 1e-4. Being fully
    convolutional, it localizes the paper's 64 x 64 x 4 frames.
``voxelnet-2d-small``
    Single-plane 2D data: 32 x 32 frames of :func:`~fluojax.smlm.simulate.gaussian_2d` (100 nm
    pixels, 130 nm Gaussian PSF, 1000-5000 photons, 3 molecules), one z bin, the half-width
    network, batch 8, 3,000 steps (Adam 2e-3 -> 2e-4).

:func:`localize_with_network` runs a trained network over a stack in fixed batches
(:func:`fluojax.networks.predict`) and decodes every voxel above a threshold into
(frame, x nm, y nm, z nm, probability), the candidate list a maximum-likelihood refinement starts from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from fluojax import networks
from fluojax import train as training
from fluojax.io import InputError
from fluojax.smlm import nets
from fluojax.smlm.simulate import Scene, gaussian_2d, quadplane_paper, simulate_frames

__all__ = [
    "BUILDERS",
    "NETWORK_KIND",
    "RECIPES",
    "VoxelNetRecipe",
    "load_network",
    "localize_with_network",
    "network_input",
    "predict_voxels",
    "train_recipe",
]

NETWORK_KIND = "voxelnet"
"""``meta["fluojax_network"]`` of every voxel-wise regression checkpoint."""


def network_input(
    frames: Float[ArrayLike, "*batch planes ny nx"], counts_per_unit: float
) -> Float[Array, "*batch planes ny nx"]:
    """What the network reads: ``frames / counts_per_unit`` (frames in photons), float32.

    The one input transform, used by the training sampler and by :func:`predict_voxels`.

    Arguments:
        frames: (..., planes, ny, nx) frames in photons.
        counts_per_unit: photons mapped to 1.
    """
    return jax.numpy.asarray(frames, jax.numpy.float32) / counts_per_unit


@dataclasses.dataclass(frozen=True)
class VoxelNetRecipe(networks.Recipe):
    """Everything needed to train one voxel-wise regression network (immutable).

    Attributes, besides the base's ``name``, ``net`` (a :class:`~fluojax.smlm.nets.VoxelNetConfig`)
    and ``train``:
        scene: the :class:`~fluojax.smlm.simulate.Scene` every training frame is drawn from.
        z_range_nm: (z_lo, z_hi) of the network's z voxels, nm (``net.z_bins`` bins).
        counts_per_unit: photons per unit of network input (:func:`network_input`).
        description: str.
    """

    scene: Scene = dataclasses.field(default_factory=quadplane_paper)
    z_range_nm: tuple[float, float] = (-200.0, 1350.0)
    counts_per_unit: float = 100.0
    description: str = ""

    network = NETWORK_KIND

    def __post_init__(self):
        lo, hi = self.z_range_nm
        if not hi > lo:
            raise InputError(f"z range [{lo}, {hi}) nm of the voxels: the upper end must exceed the lower")
        if self.counts_per_unit <= 0:
            raise InputError(f"input scale {self.counts_per_unit} photons per unit: must be > 0")
        if self.net.in_planes != self.scene.psf.planes:
            raise InputError(
                f"a network of {self.net.in_planes} input planes cannot read frames of {self.scene.psf.planes} planes"
            )

    def meta_fields(self) -> dict:
        return {
            "pixel_nm": self.scene.pixel_nm,
            "z_range_nm": list(self.z_range_nm),
            "counts_per_unit": self.counts_per_unit,
            "three_d": self.scene.psf.three_d,
            "scene": networks.describe(self.scene),
        }

    def build(self, seed: int):
        return nets.build_network(self.net, seed=seed)

    def sampler(self) -> Callable:
        """``key -> (network inputs (B, planes, ny, nx), targets (B, Z, ny, nx, 4))``, jittable."""
        scene, batch, z_bins = self.scene, self.train.batch_size, self.net.z_bins

        def sample_frames(key):
            sim = simulate_frames(key, scene, batch)
            targets = nets.voxel_targets(sim.emitters, scene.shape, scene.pixel_nm, self.z_range_nm, z_bins)
            return network_input(sim.images, self.counts_per_unit), targets

        return sample_frames

    def training_data(self, seed: int, progress: bool | None) -> networks.TrainingData:
        """Fresh frames simulated inside every step, and the loss of Aritake et al. 2021, eq. 11."""
        return networks.TrainingData(self.sampler(), loss=nets.voxel_loss)


def _small_quadplane() -> Scene:
    """The paper's scene cut to 32 x 32 pixels, at its density (50 / 4 = 12.5 -> 13 molecules)."""
    return dataclasses.replace(quadplane_paper(), shape=(32, 32), emitters=13)


def _small_2d() -> Scene:
    return dataclasses.replace(gaussian_2d(), shape=(32, 32), emitters=3)


def _small_schedule() -> training.TrainConfig:
    return training.TrainConfig(
        steps=3000,
        batch_size=8,
        learning_rate=2e-3,
        final_learning_rate=2e-4,
        optimizer=training.Adam(eps=1e-8),
        eval_every=250,
        eval_batches=8,
        checkpoint_every=250,
    )


RECIPES: dict[str, VoxelNetRecipe] = {
    "voxelnet-paper": VoxelNetRecipe(
        "voxelnet-paper",
        nets.VoxelNetConfig.paper(),
        training.TrainConfig(
            steps=40_000,
            batch_size=50,
            learning_rate=1e-3,
            final_learning_rate=1e-3,
            optimizer=training.Adam(eps=1e-8),  # PyTorch's default eps, as the authors' released code
            eval_every=1000,
            eval_batches=20,
            checkpoint_every=5000,
        ),
        scene=quadplane_paper(),
        z_range_nm=(-200.0, 1350.0),
        description="Aritake et al. 2021: 64 x 64 x 4 quad-plane frames, full network, 40,000 steps of 50 (GPU)",
    ),
    "voxelnet-small": VoxelNetRecipe(
        "voxelnet-small",
        nets.VoxelNetConfig.small(),
        _small_schedule(),
        scene=_small_quadplane(),
        z_range_nm=(-200.0, 1350.0),
        description="32 x 32 x 4 quad-plane frames, half-width network, 3,000 steps of 8 (CPU, minutes)",
    ),
    "voxelnet-cpu": VoxelNetRecipe(
        "voxelnet-cpu",
        nets.VoxelNetConfig.paper(),
        training.TrainConfig(
            steps=12_000,
            batch_size=16,
            learning_rate=1e-3,
            final_learning_rate=1e-4,
            optimizer=training.Adam(eps=1e-8),
            eval_every=500,
            eval_batches=8,
            checkpoint_every=500,
        ),
        scene=_small_quadplane(),
        z_range_nm=(-200.0, 1350.0),
        description=(
            "the paper's network (206,704 weights) on 32 x 32 x 4 tiles of the paper scene (its density), "
            "batch 16, 12,000 steps (CPU, ~1.5 h on 2 cores)"
        ),
    ),
    "voxelnet-2d-small": VoxelNetRecipe(
        "voxelnet-2d-small",
        nets.VoxelNetConfig.small(z_bins=1, in_planes=1),
        _small_schedule(),
        scene=_small_2d(),
        z_range_nm=(-500.0, 500.0),
        description="32 x 32 single-plane 2D frames, one z bin, half-width network, 3,000 steps of 8 (CPU)",
    ),
}


def train_recipe(recipe: VoxelNetRecipe | str, run_dir: str | Path | None = None, **options: Any):
    """Train a recipe (or a name in :data:`RECIPES`) with :func:`fluojax.networks.train_recipe`.

    Arguments:
        recipe: :class:`VoxelNetRecipe` or its name.
        run_dir: folder for checkpoints and metrics (resumes if it holds a checkpoint).
        **options: ``steps``, ``seed``, ``progress``, ``stop_after``, ``time_limit_s``.

    Returns:
        (network, ``TrainHistory``).

    Raises:
        InputError: a name that is not in :data:`RECIPES`.
    """
    return networks.train_recipe(networks.recipe_named(RECIPES, recipe), run_dir, **options)


def _config_from_meta(meta: dict) -> nets.VoxelNetConfig:
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["net_config"].items()}
    return nets.VoxelNetConfig(**fields)


BUILDERS = {NETWORK_KIND: lambda meta: nets.build_network(_config_from_meta(meta))}
"""``meta["fluojax_network"]`` -> ``build(meta)``: the network :func:`load_network` rebuilds."""


def load_network(path: str | Path):
    """Rebuild a trained voxel-wise regression network from a checkpoint (run folder or checkpoint).

    Returns:
        (network in evaluation mode, checkpoint meta with ``pixel_nm``, ``z_range_nm``,
        ``counts_per_unit``, ``scene``, ``net_config``).

    Raises:
        ValueError: not a fluojax network checkpoint, or not a voxel-wise regression one.
    """
    return networks.load_network(path, BUILDERS, accepted="voxel-wise regression network")


def _as_planes(frames, planes: int) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim == 3 and planes == 1:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != planes:
        raise InputError(
            f"frames of shape {x.shape}: the network reads (frames, {planes}, rows, columns)"
            + (" or (frames, rows, columns)" if planes == 1 else "")
        )
    return x


def predict_voxels(net, meta: dict, frames, batch: int = 16) -> np.ndarray:
    """The network's output for a stack, in calls of ``batch`` frames (:func:`fluojax.networks.predict`).

    Arguments:
        net: the network (used in evaluation mode: BatchNorm with its running statistics).
        meta: its checkpoint meta (:func:`fluojax.networks.network_meta` of its recipe).
        frames: (n, planes, ny, nx) in photons, or (n, ny, nx) for a single-plane network.
        batch: frames per compiled call (fewer frames: one call of their number).

    Returns:
        (n, Z, ny, nx, 4) NumPy array ``(c, zeta_x, zeta_y, zeta_z)``.
    """
    x = _as_planes(frames, net.config.in_planes)
    inputs = np.asarray(network_input(x, float(meta["counts_per_unit"])))
    return networks.predict(networks.eval_view(net), inputs, max(1, min(int(batch), x.shape[0])))


def localize_with_network(
    net,
    meta: dict,
    frames,
    threshold: float = 0.5,
    *,
    batch: int = 16,
    local_max: bool = False,
    chunk: int = 1024,
) -> nets.Detections:
    """Localizations of a stack by a trained network: every voxel with probability > ``threshold``.

    The stack is processed ``chunk`` frames at a time (bounded memory), each chunk in network
    calls of ``batch`` frames, and decoded by :func:`fluojax.smlm.nets.decode` (no merging of
    neighbouring voxels as in Aritake et al. 2021, or local maxima only with ``local_max``).

    Arguments:
        net: the network (used in evaluation mode).
        meta: its checkpoint meta (pixel size, z range, input scale).
        frames: (n, planes, ny, nx) in photons, or (n, ny, nx) for a single-plane network; the
            pixel size must be the training's (``meta["pixel_nm"]``).
        threshold: probability threshold (Aritake et al. 2021: 0.5 or 0.9).
        batch: frames per compiled network call.
        local_max: keep only voxels whose probability is the largest in their 3 x 3 x 3 neighbourhood.
        chunk: frames decoded at once.

    Returns:
        :class:`~fluojax.smlm.nets.Detections` of 1D NumPy arrays (frame 0-based, x, y, z nm,
        probability), ordered by frame then decreasing probability; z is 0 for a network trained
        on a 2D PSF (``meta["three_d"]`` false).
    """
    x = _as_planes(frames, net.config.in_planes)
    z_range = (float(meta["z_range_nm"][0]), float(meta["z_range_nm"][1]))
    pixel_nm, z_bins = float(meta["pixel_nm"]), net.config.z_bins
    parts = []
    for start in range(0, x.shape[0], max(1, int(chunk))):
        out = predict_voxels(net, meta, x[start : start + chunk], batch)
        padded = nets.decode(out, threshold, pixel_nm, z_range, z_bins, local_max=local_max, first_frame=start)
        parts.append(nets.compact_detections(padded))
    if not parts:  # no frames
        empty = np.zeros(0, np.float32)
        return nets.Detections(np.zeros(0, np.int32), empty, empty, empty, empty, np.zeros(0, bool))
    found = nets.Detections(*(np.concatenate(leaves) for leaves in zip(*parts)))
    if not meta.get("three_d", True):  # a 2D PSF carries no z: its one z bin's offset is not a measurement
        found = found._replace(z_nm=np.zeros_like(found.z_nm))
    return found
