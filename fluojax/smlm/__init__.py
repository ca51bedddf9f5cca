"""Single-molecule localization microscopy: PSF models, simulation, MLE and a voxel-wise network.

The modules follow the technique layout (docs/architecture.md): ``models`` (PSFs: 2D Gaussian,
astigmatic 3D, quad-plane; positions in nm) -> ``simulate`` (random emitters, drift, background,
noise) -> ``estimate`` (spot detection, per-spot maximum likelihood, Cramér-Rao bounds) ->
``nets`` (the voxel-wise regression network of Aritake et al. 2021) -> ``learned`` (recipes,
training, localization with a network) -> ``pipeline`` (a stack to a localization table, as
``fluojax smlm`` runs it); ``localizations`` (the table, ThunderSTORM CSV, rendering) and
``metrics`` (SMLM Challenge 2016 and voxel metrics) are its own pieces. The names below are the
public API; the network's names (Flax) are imported on first use.
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from fluojax.smlm.estimate import SpotFits as SpotFits
from fluojax.smlm.estimate import SpotModel as SpotModel
from fluojax.smlm.estimate import detect_spots as detect_spots
from fluojax.smlm.estimate import extract_rois as extract_rois
from fluojax.smlm.estimate import fit_rois as fit_rois
from fluojax.smlm.estimate import localize as localize
from fluojax.smlm.estimate import mortensen_lsq_variance as mortensen_lsq_variance
from fluojax.smlm.estimate import mortensen_mle_variance as mortensen_mle_variance
from fluojax.smlm.estimate import refine as refine
from fluojax.smlm.estimate import spot_crlb as spot_crlb
from fluojax.smlm.localizations import Localizations as Localizations
from fluojax.smlm.localizations import Rendered as Rendered
from fluojax.smlm.localizations import concatenate as concatenate
from fluojax.smlm.localizations import read_challenge_truth as read_challenge_truth
from fluojax.smlm.localizations import read_localizations as read_localizations
from fluojax.smlm.localizations import read_thunderstorm as read_thunderstorm
from fluojax.smlm.localizations import render as render
from fluojax.smlm.localizations import thunderstorm_csv as thunderstorm_csv
from fluojax.smlm.localizations import write_thunderstorm as write_thunderstorm
from fluojax.smlm.metrics import ChallengeMetrics as ChallengeMetrics
from fluojax.smlm.metrics import MatchResult as MatchResult
from fluojax.smlm.metrics import VoxelConfusion as VoxelConfusion
from fluojax.smlm.metrics import VoxelGrid as VoxelGrid
from fluojax.smlm.metrics import challenge_metrics as challenge_metrics
from fluojax.smlm.metrics import efficiency as efficiency
from fluojax.smlm.metrics import evaluate as evaluate
from fluojax.smlm.metrics import fine_voxel_jaccard as fine_voxel_jaccard
from fluojax.smlm.metrics import match as match
from fluojax.smlm.metrics import metrics_table as metrics_table
from fluojax.smlm.metrics import voxel_confusion as voxel_confusion
from fluojax.smlm.metrics import voxel_labels as voxel_labels
from fluojax.smlm.models import PSF as PSF
from fluojax.smlm.models import PSFS as PSFS
from fluojax.smlm.models import QUADPLANE_A_PRIME as QUADPLANE_A_PRIME
from fluojax.smlm.models import Astigmatic3D as Astigmatic3D
from fluojax.smlm.models import Emitters as Emitters
from fluojax.smlm.models import Gaussian2D as Gaussian2D
from fluojax.smlm.models import Grid as Grid
from fluojax.smlm.models import QuadPlane as QuadPlane
from fluojax.smlm.models import frame_expected as frame_expected
from fluojax.smlm.models import pixel_grid as pixel_grid
from fluojax.smlm.models import spot_expected as spot_expected
from fluojax.smlm.models import weight_to_photons as weight_to_photons
from fluojax.smlm.pipeline import camera_from_settings as camera_from_settings
from fluojax.smlm.pipeline import evaluate_tables as evaluate_tables
from fluojax.smlm.pipeline import localize_stack as localize_stack
from fluojax.smlm.pipeline import read_frames as read_frames
from fluojax.smlm.pipeline import simulate_stack as simulate_stack
from fluojax.smlm.simulate import AdditiveNoise as AdditiveNoise
from fluojax.smlm.simulate import FrameNoise as FrameNoise
from fluojax.smlm.simulate import PlaneDrift as PlaneDrift
from fluojax.smlm.simulate import Scene as Scene
from fluojax.smlm.simulate import ShotNoise as ShotNoise
from fluojax.smlm.simulate import SimulatedFrames as SimulatedFrames
from fluojax.smlm.simulate import gaussian_2d as gaussian_2d
from fluojax.smlm.simulate import quadplane_paper as quadplane_paper
from fluojax.smlm.simulate import quadplane_physical as quadplane_physical
from fluojax.smlm.simulate import quadplane_released as quadplane_released
from fluojax.smlm.simulate import random_emitters as random_emitters
from fluojax.smlm.simulate import simulate_frames as simulate_frames
from fluojax.smlm.simulate import structured_background as structured_background

if TYPE_CHECKING:
    from fluojax.smlm.learned import RECIPES as RECIPES
    from fluojax.smlm.learned import VoxelNetRecipe as VoxelNetRecipe
    from fluojax.smlm.learned import load_network as load_network
    from fluojax.smlm.learned import localize_with_network as localize_with_network
    from fluojax.smlm.learned import train_recipe as train_recipe
    from fluojax.smlm.nets import Detections as Detections
    from fluojax.smlm.nets import VoxelNet as VoxelNet
    from fluojax.smlm.nets import VoxelNetConfig as VoxelNetConfig
    from fluojax.smlm.nets import decode as decode
    from fluojax.smlm.nets import voxel_loss as voxel_loss
    from fluojax.smlm.nets import voxel_targets as voxel_targets

try:
    __version__ = _metadata.version("fluojax")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_LAZY = {
    "Detections": "fluojax.smlm.nets",
    "VoxelNet": "fluojax.smlm.nets",
    "VoxelNetConfig": "fluojax.smlm.nets",
    "decode": "fluojax.smlm.nets",
    "voxel_loss": "fluojax.smlm.nets",
    "voxel_targets": "fluojax.smlm.nets",
    "RECIPES": "fluojax.smlm.learned",
    "VoxelNetRecipe": "fluojax.smlm.learned",
    "load_network": "fluojax.smlm.learned",
    "localize_with_network": "fluojax.smlm.learned",
    "train_recipe": "fluojax.smlm.learned",
}


def __getattr__(name: str) -> Any:
    """The network's names, imported on first use (they need Flax and orbax)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fluojax.smlm' has no attribute {name!r}")
