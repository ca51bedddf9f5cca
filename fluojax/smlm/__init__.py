"""Single-molecule localization microscopy: PSF models, simulation, MLE and a voxel-wise network.

The modules follow the technique layout (docs/architecture.md): ``models`` (PSFs: 2D Gaussian,
astigmatic 3D, quad-plane; positions in nm) -> ``simulate`` (random emitters, drift, background,
noise) -> ``estimate`` (spot detection, per-spot maximum likelihood, Cramér-Rao bounds) ->
``nets`` (the voxel-wise regression network of Aritake et al. 2021) -> ``learned`` (recipes,
training, decoding) -> ``pipeline`` (a stack to a localization table); ``localizations`` (the
table, ThunderSTORM CSV, rendering) and ``metrics`` (SMLM Challenge 2016 and voxel metrics) are
its own pieces. The names below are the public API.
"""

from fluojax.smlm.models import PSF as PSF
from fluojax.smlm.models import PSFS as PSFS
from fluojax.smlm.models import Astigmatic3D as Astigmatic3D
from fluojax.smlm.models import Emitters as Emitters
from fluojax.smlm.models import Gaussian2D as Gaussian2D
from fluojax.smlm.models import Grid as Grid
from fluojax.smlm.models import QuadPlane as QuadPlane
from fluojax.smlm.models import frame_expected as frame_expected
from fluojax.smlm.models import pixel_grid as pixel_grid
from fluojax.smlm.models import spot_expected as spot_expected
from fluojax.smlm.models import weight_to_photons as weight_to_photons
from fluojax.smlm.simulate import AdditiveNoise as AdditiveNoise
from fluojax.smlm.simulate import PlaneDrift as PlaneDrift
from fluojax.smlm.simulate import Scene as Scene
from fluojax.smlm.simulate import ShotNoise as ShotNoise
from fluojax.smlm.simulate import SimulatedFrames as SimulatedFrames
from fluojax.smlm.simulate import gaussian_2d as gaussian_2d
from fluojax.smlm.simulate import quadplane_paper as quadplane_paper
from fluojax.smlm.simulate import quadplane_physical as quadplane_physical
from fluojax.smlm.simulate import quadplane_released as quadplane_released
from fluojax.smlm.simulate import simulate_frames as simulate_frames

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("fluojax")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0"
