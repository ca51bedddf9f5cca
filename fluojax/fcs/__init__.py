"""Imaging FCS: forward models, correlator, simulator, least-squares and learned estimators.

The layers (each module imports only those above it): :mod:`~fluojax.fcs.models` (ACF models and
geometries) -> :mod:`~fluojax.fcs.correlator` (multiple-tau correlator with blocking SEM) ->
:mod:`~fluojax.fcs.simulate` (random-walk stacks, training batches) -> :mod:`~fluojax.fcs.estimate`
(least squares) -> :mod:`~fluojax.fcs.nets` / :mod:`~fluojax.fcs.learned` (FCSNet, ImFCSNet) ->
:mod:`~fluojax.fcs.pipeline` (whole stacks to maps).

The names below are imported on first use (``fluojax.fcs.fit_acfs`` imports
:mod:`~fluojax.fcs.estimate`, and with it JAX; the learned estimators' names Flax and orbax), so
importing a module of this package costs only what that module imports: the CPU correlator
(:mod:`~fluojax.fcs.correlator_cpu`, :mod:`~fluojax.fcs.lags`, :mod:`~fluojax.fcs.reduction`) runs
without JAX in the helper process of ``fluojax fcs fit``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from fluojax.fcs.learned import RECIPES as RECIPES
    from fluojax.fcs.learned import Recipe as Recipe
    from fluojax.fcs.learned import load_network as load_network
    from fluojax.fcs.learned import physics_check_chi2 as physics_check_chi2
    from fluojax.fcs.learned import predict_imfcsnet_map as predict_imfcsnet_map
    from fluojax.fcs.learned import predict_ln_d as predict_ln_d
    from fluojax.fcs.learned import predict_stack as predict_stack
    from fluojax.fcs.learned import train_recipe as train_recipe
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

_HOME = {
    "ACFResult": "correlator",
    "LagGrid": "correlator",
    "correlate": "correlator",
    "lag_grid": "correlator",
    "FCS_BOUNDS": "estimate",
    "FCS_SOLVER": "estimate",
    "GeometryModel": "estimate",
    "fit_acfs": "estimate",
    "model_and_shape": "estimate",
    "start_values": "estimate",
    "RECIPES": "learned",
    "Recipe": "learned",
    "load_network": "learned",
    "physics_check_chi2": "learned",
    "predict_imfcsnet_map": "learned",
    "predict_ln_d": "learned",
    "predict_stack": "learned",
    "train_recipe": "learned",
    "ACFParams": "models",
    "GEOMETRIES": "models",
    "Geometry": "models",
    "ITIR_2D": "models",
    "Itir2D": "models",
    "Optics": "models",
    "SPIM_3D": "models",
    "Spim3D": "models",
    "acf_2d_itir": "models",
    "acf_3d_spim": "models",
    "acf_3d_spim_tabulated": "models",
    "check_optics": "models",
    "spim_shape_table": "models",
    "AnalysisSettings": "pipeline",
    "FCSMaps": "pipeline",
    "PixelStatus": "pipeline",
    "analyse_stack": "pipeline",
    "correlate_stack": "pipeline",
    "default_optics": "pipeline",
    "maps_summary": "pipeline",
    "DiffusionSample": "simulate",
    "StackGeometry": "simulate",
    "TrainingPrior": "simulate",
    "simulate_stack": "simulate",
    "simulate_training_batch": "simulate",
}
"""Where each public name lives: ``fluojax.fcs.NAME`` imports ``fluojax.fcs.<module>`` on first use."""

__all__ = sorted(name for name, module in _HOME.items() if module != "learned")  # import *: no Flax


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (:data:`_HOME`), a module of the package, or ``__version__``."""
    if name in _HOME:
        value = getattr(importlib.import_module(f"fluojax.fcs.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    if name == "__version__":  # the installed distribution's (fluojax.__version__)
        return importlib.import_module("fluojax").__version__
    if importlib.util.find_spec(f"fluojax.fcs.{name}") is not None:  # a module: fluojax.fcs.pipeline
        return importlib.import_module(f"fluojax.fcs.{name}")
    raise AttributeError(f"module 'fluojax.fcs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
