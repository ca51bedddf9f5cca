"""FRAP: the spectral diffusion model, simulation, least squares, DeepFRAP networks, stack analysis.

The modules follow the technique layout (docs/architecture.md): ``models`` (the forward model,
D in px^2/s) -> ``simulate`` (prior and noisy curves or images) -> ``estimate`` (multistart least
squares, Cramer-Rao bound) -> ``nets`` (DeepFRAP's networks and loss) -> ``learned`` (training
recipes, prediction, the hybrid) -> ``pipeline`` (an image stack to a fit, as ``fluojax frap``
runs it). The names below are the public API; the modules hold the rest.
"""

from importlib.metadata import PackageNotFoundError, version

from fluojax.frap.estimate import FrapFit as FrapFit
from fluojax.frap.estimate import fit_recovery_curves as fit_recovery_curves
from fluojax.frap.estimate import frap_bounds as frap_bounds
from fluojax.frap.estimate import frap_curve_model as frap_curve_model
from fluojax.frap.estimate import recovery_curve_crlb as recovery_curve_crlb
from fluojax.frap.learned import RECIPES as RECIPES
from fluojax.frap.learned import Recipe as Recipe
from fluojax.frap.learned import Refined as Refined
from fluojax.frap.learned import comparison_estimators as comparison_estimators
from fluojax.frap.learned import deepfrap_table as deepfrap_table
from fluojax.frap.learned import load_network as load_network
from fluojax.frap.learned import predict_curves as predict_curves
from fluojax.frap.learned import refine as refine
from fluojax.frap.learned import train_recipe as train_recipe
from fluojax.frap.models import DEEPFRAP_D_UM2_S as DEEPFRAP_D_UM2_S
from fluojax.frap.models import DEEPFRAP_DT_S as DEEPFRAP_DT_S
from fluojax.frap.models import DEEPFRAP_PIXEL_UM as DEEPFRAP_PIXEL_UM
from fluojax.frap.models import DEEPFRAP_RADIUS_PX as DEEPFRAP_RADIUS_PX
from fluojax.frap.models import BleachGeometry as BleachGeometry
from fluojax.frap.models import FastCurveTable as FastCurveTable
from fluojax.frap.models import FrapParams as FrapParams
from fluojax.frap.models import FrapSettings as FrapSettings
from fluojax.frap.models import build_fast_curve_table as build_fast_curve_table
from fluojax.frap.models import circular_region as circular_region
from fluojax.frap.models import custom_region as custom_region
from fluojax.frap.models import d_px2_s_to_um2_s as d_px2_s_to_um2_s
from fluojax.frap.models import d_um2_s_to_px2_s as d_um2_s_to_px2_s
from fluojax.frap.models import recovery_curve as recovery_curve
from fluojax.frap.models import recovery_curve_fast as recovery_curve_fast
from fluojax.frap.models import recovery_curve_spectral as recovery_curve_spectral
from fluojax.frap.models import rectangular_region as rectangular_region
from fluojax.frap.models import simulate_images as simulate_images
from fluojax.frap.nets import DeepFrapConfig as DeepFrapConfig
from fluojax.frap.nets import DeepFrapNet as DeepFrapNet
from fluojax.frap.pipeline import CircleROI as CircleROI
from fluojax.frap.pipeline import FrapStatus as FrapStatus
from fluojax.frap.pipeline import PreparedStack as PreparedStack
from fluojax.frap.pipeline import build_table as build_table
from fluojax.frap.pipeline import fit_prepared as fit_prepared
from fluojax.frap.pipeline import fit_status as fit_status
from fluojax.frap.pipeline import fit_summary as fit_summary
from fluojax.frap.pipeline import parse_roi as parse_roi
from fluojax.frap.pipeline import predict_prepared as predict_prepared
from fluojax.frap.pipeline import prepare_stack as prepare_stack
from fluojax.frap.pipeline import refine_prepared as refine_prepared
from fluojax.frap.simulate import FrapPrior as FrapPrior
from fluojax.frap.simulate import FrapSample as FrapSample
from fluojax.frap.simulate import add_curve_noise as add_curve_noise
from fluojax.frap.simulate import curve_noise_variance as curve_noise_variance
from fluojax.frap.simulate import recovery_curve_from_images as recovery_curve_from_images
from fluojax.frap.simulate import roi_effective_pixels as roi_effective_pixels
from fluojax.frap.simulate import sample_d_um2_s as sample_d_um2_s
from fluojax.frap.simulate import sample_frap_params as sample_frap_params
from fluojax.frap.simulate import simulate_curves as simulate_curves
from fluojax.frap.simulate import simulate_image_sequences as simulate_image_sequences
from fluojax.frap.simulate import squared_weight_geometry as squared_weight_geometry

try:
    __version__ = version("fluojax")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
