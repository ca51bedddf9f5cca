"""Imaging FCS: forward models, correlator, simulator, least-squares and learned estimators.

The layers (each module imports only those above it): :mod:`~fluojax.fcs.models` (ACF models and
geometries) -> :mod:`~fluojax.fcs.correlator` (multiple-tau correlator with blocking SEM) ->
:mod:`~fluojax.fcs.simulate` (random-walk stacks, training batches) -> :mod:`~fluojax.fcs.estimate`
(least squares) -> :mod:`~fluojax.fcs.nets` / :mod:`~fluojax.fcs.learned` (FCSNet, ImFCSNet) ->
:mod:`~fluojax.fcs.pipeline` (whole stacks to maps).

Importing this package costs NumPy and JAX; the learned estimators (Flax, orbax) are imported on
first use of one of their names (``train_recipe``, ``load_network``, ``predict_stack``, ...).
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from fluojax.fcs.correlator import ACFResult as ACFResult
from fluojax.fcs.correlator import LagGrid as LagGrid
from fluojax.fcs.correlator import correlate as correlate
from fluojax.fcs.correlator import lag_grid as lag_grid
from fluojax.fcs.estimate import FCS_BOUNDS as FCS_BOUNDS
from fluojax.fcs.estimate import FCS_SOLVER as FCS_SOLVER
from fluojax.fcs.estimate import GeometryModel as GeometryModel
from fluojax.fcs.estimate import fit_acfs as fit_acfs
from fluojax.fcs.estimate import model_and_shape as model_and_shape
from fluojax.fcs.estimate import start_values as start_values
from fluojax.fcs.models import GEOMETRIES as GEOMETRIES
from fluojax.fcs.models import ITIR_2D as ITIR_2D
from fluojax.fcs.models import SPIM_3D as SPIM_3D
from fluojax.fcs.models import ACFParams as ACFParams
from fluojax.fcs.models import Geometry as Geometry
from fluojax.fcs.models import Itir2D as Itir2D
from fluojax.fcs.models import Optics as Optics
from fluojax.fcs.models import Spim3D as Spim3D
from fluojax.fcs.models import acf_2d_itir as acf_2d_itir
from fluojax.fcs.models import acf_3d_spim as acf_3d_spim
from fluojax.fcs.models import acf_3d_spim_tabulated as acf_3d_spim_tabulated
from fluojax.fcs.models import check_optics as check_optics
from fluojax.fcs.models import spim_shape_table as spim_shape_table
from fluojax.fcs.pipeline import AnalysisSettings as AnalysisSettings
from fluojax.fcs.pipeline import FCSMaps as FCSMaps
from fluojax.fcs.pipeline import PixelStatus as PixelStatus
from fluojax.fcs.pipeline import analyse_stack as analyse_stack
from fluojax.fcs.pipeline import correlate_stack as correlate_stack
from fluojax.fcs.pipeline import default_optics as default_optics
from fluojax.fcs.pipeline import maps_summary as maps_summary
from fluojax.fcs.simulate import DiffusionSample as DiffusionSample
from fluojax.fcs.simulate import StackGeometry as StackGeometry
from fluojax.fcs.simulate import TrainingPrior as TrainingPrior
from fluojax.fcs.simulate import simulate_stack as simulate_stack
from fluojax.fcs.simulate import simulate_training_batch as simulate_training_batch

if TYPE_CHECKING:
    from fluojax.fcs.learned import RECIPES as RECIPES
    from fluojax.fcs.learned import Recipe as Recipe
    from fluojax.fcs.learned import load_network as load_network
    from fluojax.fcs.learned import physics_check_chi2 as physics_check_chi2
    from fluojax.fcs.learned import predict_imfcsnet_map as predict_imfcsnet_map
    from fluojax.fcs.learned import predict_ln_d as predict_ln_d
    from fluojax.fcs.learned import predict_stack as predict_stack
    from fluojax.fcs.learned import train_recipe as train_recipe

try:
    __version__ = _metadata.version("fluojax")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

_LEARNED = (
    "RECIPES",
    "Recipe",
    "load_network",
    "physics_check_chi2",
    "predict_imfcsnet_map",
    "predict_ln_d",
    "predict_stack",
    "train_recipe",
)


def __getattr__(name: str) -> Any:
    """The learned estimators' names, imported on first use (they need Flax and orbax)."""
    if name in _LEARNED:
        return getattr(importlib.import_module("fluojax.fcs.learned"), name)
    raise AttributeError(f"module 'fluojax.fcs' has no attribute {name!r}")
