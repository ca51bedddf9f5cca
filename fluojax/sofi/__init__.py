"""SOFI: cross-cumulants with virtual pixels, flattening, linearization, a blinking simulator and a network.

The modules follow the technique layout (docs/architecture.md): ``models`` (the cumulant forward
model of independent blinking emitters) -> ``simulate`` (blinking movies, microtubules, cameras)
-> ``estimate`` (flattening, deconvolution, linearization, balanced SOFI) -> ``nets`` (the
MISR-GRU network) -> ``learned`` (recipes, training, prediction) -> ``pipeline`` (a stack to SOFI
images, as ``fluojax sofi`` runs it); ``cumulants`` (auto- and cross-cumulants; on a CPU also
``cumulants_cpu``, the same cross-cumulants by a numba kernel) and ``metrics``
(decorrelation resolution, Pearson, SQUIRREL, TPR/TNR) are its own pieces. The names below are
the public API; the network's names (Flax) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fluojax.sofi.cumulants import GRIDS as GRIDS
from fluojax.sofi.cumulants import Combinations as Combinations
from fluojax.sofi.cumulants import FullGrid as FullGrid
from fluojax.sofi.cumulants import Grid as Grid
from fluojax.sofi.cumulants import SofipackageGrid as SofipackageGrid
from fluojax.sofi.cumulants import auto_cumulants as auto_cumulants
from fluojax.sofi.cumulants import combinations as combinations
from fluojax.sofi.cumulants import cross_cumulant_sublattices as cross_cumulant_sublattices
from fluojax.sofi.cumulants import interleave as interleave
from fluojax.sofi.cumulants import mean_over_blocks as mean_over_blocks
from fluojax.sofi.cumulants import partitions as partitions
from fluojax.sofi.cumulants_cpu import BlockCumulants as BlockCumulants
from fluojax.sofi.cumulants_cpu import block_cumulants_cpu as block_cumulants_cpu
from fluojax.sofi.cumulants_cpu import cross_cumulants_cpu as cross_cumulants_cpu
from fluojax.sofi.estimate import BALANCE_THRESHOLDS as BALANCE_THRESHOLDS
from fluojax.sofi.estimate import LINEARIZATIONS as LINEARIZATIONS
from fluojax.sofi.estimate import BsofiMaps as BsofiMaps
from fluojax.sofi.estimate import adaptive_exponent as adaptive_exponent
from fluojax.sofi.estimate import adaptive_linearize as adaptive_linearize
from fluojax.sofi.estimate import balanced_sofi as balanced_sofi
from fluojax.sofi.estimate import bsofi_parameters as bsofi_parameters
from fluojax.sofi.estimate import deconvolve as deconvolve
from fluojax.sofi.estimate import estimate_fwhm as estimate_fwhm
from fluojax.sofi.estimate import estimate_on_ratio as estimate_on_ratio
from fluojax.sofi.estimate import flatten as flatten
from fluojax.sofi.estimate import linearize as linearize
from fluojax.sofi.estimate import median_filter_2x2 as median_filter_2x2
from fluojax.sofi.estimate import order_psf_sigma as order_psf_sigma
from fluojax.sofi.estimate import richardson_lucy as richardson_lucy
from fluojax.sofi.metrics import BinaryRates as BinaryRates
from fluojax.sofi.metrics import Decorrelation as Decorrelation
from fluojax.sofi.metrics import ImageMetrics as ImageMetrics
from fluojax.sofi.metrics import Squirrel as Squirrel
from fluojax.sofi.metrics import SRGrid as SRGrid
from fluojax.sofi.metrics import binary_rates as binary_rates
from fluojax.sofi.metrics import decorrelation_resolution as decorrelation_resolution
from fluojax.sofi.metrics import image_metrics as image_metrics
from fluojax.sofi.metrics import li_threshold as li_threshold
from fluojax.sofi.metrics import pearson as pearson
from fluojax.sofi.metrics import squirrel as squirrel
from fluojax.sofi.models import bernoulli_cumulant as bernoulli_cumulant
from fluojax.sofi.models import distance_factor as distance_factor
from fluojax.sofi.models import expected_auto_cumulant as expected_auto_cumulant
from fluojax.sofi.models import expected_cross_cumulant as expected_cross_cumulant
from fluojax.sofi.models import expected_sublattices as expected_sublattices
from fluojax.sofi.models import on_ratio as on_ratio
from fluojax.sofi.models import psf_factors as psf_factors
from fluojax.sofi.pipeline import ImageSettings as ImageSettings
from fluojax.sofi.pipeline import SofiImages as SofiImages
from fluojax.sofi.pipeline import images_summary as images_summary
from fluojax.sofi.pipeline import minimum_frames as minimum_frames
from fluojax.sofi.pipeline import output_shape as output_shape
from fluojax.sofi.pipeline import parse_orders as parse_orders
from fluojax.sofi.pipeline import sofi_images as sofi_images
from fluojax.sofi.pipeline import to_uint16 as to_uint16
from fluojax.sofi.pipeline import write_images as write_images
from fluojax.sofi.simulate import KOMEN_2024 as KOMEN_2024
from fluojax.sofi.simulate import Blinking as Blinking
from fluojax.sofi.simulate import Microtubules as Microtubules
from fluojax.sofi.simulate import SofiMovie as SofiMovie
from fluojax.sofi.simulate import SofiSettings as SofiSettings
from fluojax.sofi.simulate import ThesisSimulation as ThesisSimulation
from fluojax.sofi.simulate import ground_truth_image as ground_truth_image
from fluojax.sofi.simulate import grow_microtubules as grow_microtubules
from fluojax.sofi.simulate import place_emitters as place_emitters
from fluojax.sofi.simulate import render_frames as render_frames
from fluojax.sofi.simulate import scmos_camera as scmos_camera
from fluojax.sofi.simulate import simulate_movie as simulate_movie
from fluojax.sofi.simulate import small_preset as small_preset
from fluojax.sofi.simulate import thesis_preset as thesis_preset

if TYPE_CHECKING:
    from fluojax.sofi.learned import RECIPES as RECIPES
    from fluojax.sofi.learned import MisrGruRecipe as MisrGruRecipe
    from fluojax.sofi.learned import load_network as load_network
    from fluojax.sofi.learned import network_input as network_input
    from fluojax.sofi.learned import predict as predict
    from fluojax.sofi.learned import sofi_target as sofi_target
    from fluojax.sofi.learned import train_recipe as train_recipe
    from fluojax.sofi.learned import training_pairs as training_pairs
    from fluojax.sofi.nets import MisrGru as MisrGru
    from fluojax.sofi.nets import MisrGruConfig as MisrGruConfig
    from fluojax.sofi.nets import build_network as build_network
    from fluojax.sofi.nets import fourier_amplitude_loss as fourier_amplitude_loss
    from fluojax.sofi.nets import fourier_loss as fourier_loss
    from fluojax.sofi.nets import output_size as output_size

_LAZY = {
    "MisrGru": "fluojax.sofi.nets",
    "MisrGruConfig": "fluojax.sofi.nets",
    "build_network": "fluojax.sofi.nets",
    "fourier_amplitude_loss": "fluojax.sofi.nets",
    "fourier_loss": "fluojax.sofi.nets",
    "output_size": "fluojax.sofi.nets",
    "RECIPES": "fluojax.sofi.learned",
    "MisrGruRecipe": "fluojax.sofi.learned",
    "load_network": "fluojax.sofi.learned",
    "network_input": "fluojax.sofi.learned",
    "predict": "fluojax.sofi.learned",
    "sofi_target": "fluojax.sofi.learned",
    "train_recipe": "fluojax.sofi.learned",
    "training_pairs": "fluojax.sofi.learned",
}


def __getattr__(name: str) -> Any:
    """The network's names, imported on first use (they need Flax and orbax)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fluojax.sofi' has no attribute {name!r}")
