"""Simulated single-molecule frames: random emitters, optional per-plane drift, background, noise.

A :class:`Scene` (frozen settings) says what a frame holds: the PSF, the field (pixels and pixel
size), how many emitters, their z range and photon range, the background (flat, or structured:
a smooth random field, the situation BGnet addresses; Möckl et al. 2020), the lateral drift of the
focal planes and the noise. :func:`simulate_frames` draws ``n`` independent frames from a PRNG key
as one vmapped, jitted computation, so a training step can simulate its own batch.

Every frame is made as in Aritake et al. 2021, eq. 3: emitters uniform in the field
``[0, nx a) x [0, ny a) x [z_lo, z_hi)`` nm, photons uniform in ``[N_lo, N_hi)`` per plane, expected
image ``s = sum_m N_m P(x_m)`` (:func:`fluojax.smlm.models.frame_expected`), background ``b`` photons
per pixel, then noise (:class:`FrameNoise`):

* :class:`AdditiveNoise` - the paper's model as the authors' released code draws it:
  ``y = s + Poisson(b) + N(0, sd^2)``; no shot noise on the signal (Table 3: lambda = 10,
  sigma^2 = 9).
* :class:`ShotNoise` - physical: ``y = camera(Poisson(s + b))`` with a camera of
  :mod:`fluojax.noise` (shot noise on signal and background, then the camera's gain, read noise
  and offset).

Presets: :func:`quadplane_paper` (Aritake et al. 2021, Tables 2-3: 64 x 64 x 4 at 192 nm, 50
molecules, weight in [0.3, 1], z in [-200, 1350) nm, Poisson(10) + N(0, 9), drift of planes 2-4),
:func:`quadplane_released` (the same with the PSF constants of the authors' released code),
:func:`quadplane_physical` (pixel-integrated PSF, shot noise on everything) and
:func:`gaussian_2d` (a single-plane 2D field such as most users record).
"""

from __future__ import annotations

import abc
import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from fluojax import draws
from fluojax.io import require
from fluojax.noise import Camera, IdealCamera
from fluojax.smlm.models import PSF, Emitters, Gaussian2D, QuadPlane, frame_expected, pixel_grid, weight_to_photons

__all__ = [
    "AdditiveNoise",
    "FrameNoise",
    "PlaneDrift",
    "Scene",
    "ShotNoise",
    "SimulatedFrames",
    "gaussian_2d",
    "quadplane_paper",
    "quadplane_physical",
    "quadplane_released",
    "random_emitters",
    "simulate_frames",
    "structured_background",
]


class FrameNoise(abc.ABC):
    """How a frame's expected signal and background become recorded values. A new kind is a new subclass."""

    @abc.abstractmethod
    def apply(
        self, key: PRNGKeyArray, signal: Float[Array, "*shape"], background: Float[Array, "*shape"]
    ) -> Float[Array, "*shape"]:
        """Noisy frame from the expected emitter signal and the expected background (photons per pixel)."""


@dataclasses.dataclass(frozen=True)
class AdditiveNoise(FrameNoise):
    """``y = s + Poisson(b) + N(0, sd^2)``: signal-independent noise (Aritake et al. 2021, eq. 3, as
    their released code draws it: the signal itself carries no shot noise).

    Attributes:
        gaussian_sd: sd of the Gaussian term, counts (Table 3: sigma^2 = 9, so 3).
    """

    gaussian_sd: float = 3.0

    def apply(self, key, signal, background):
        k_bg, k_read = jax.random.split(key)
        bg = draws.poisson(k_bg, jnp.broadcast_to(background, signal.shape)).astype(signal.dtype)
        return signal + bg + self.gaussian_sd * draws.normal(k_read, signal.shape, signal.dtype)


@dataclasses.dataclass(frozen=True)
class ShotNoise(FrameNoise):
    """``y = camera(s + b)``: Poisson shot noise on signal and background, then the camera's read-out.

    Attributes:
        camera: a :class:`fluojax.noise.Camera` (default: ideal, counts = photo-electrons).
    """

    camera: Camera = IdealCamera()

    def apply(self, key, signal, background):
        return self.camera.counts(key, signal + background)


@dataclasses.dataclass(frozen=True)
class PlaneDrift:
    """Random lateral drift of the focal planes relative to a reference plane (Aritake et al. 2021, eq. 7).

    Per frame, plane and axis the authors' released code shifts the observation coordinates by
    ``s`` drawn uniformly from ``steps x step_nm`` (``{-2, -1, 0, 1} x 24 nm``: the "+-48 nm" of its
    comment never reaches +48), except in the reference plane; shifting the observation by ``s``
    moves the image by ``-s``, which is what is recorded here as ``drift_nm``.

    Attributes:
        step_nm: the shift unit, nm (192 nm / 8 in the paper).
        steps: the integer multiples drawn.
        reference_plane: index of the plane that never moves.
    """

    step_nm: float = 24.0
    steps: tuple[int, ...] = (-2, -1, 0, 1)
    reference_plane: int = 2

    def sample(self, key: PRNGKeyArray, planes: int) -> Float[Array, "planes 2"]:
        """(planes, 2) image displacement (dx, dy) in nm of every plane of one frame."""
        shift = jax.random.choice(key, jnp.asarray(self.steps, jnp.float32), (planes, 2)) * self.step_nm
        moving = (jnp.arange(planes) != self.reference_plane)[:, None]
        return jnp.where(moving, -shift, 0.0)


@dataclasses.dataclass(frozen=True)
class Scene:
    """What a simulated frame holds (static settings of :func:`simulate_frames`).

    Attributes:
        psf: the PSF kind (:mod:`fluojax.smlm.models`).
        shape: (ny, nx) pixels.
        pixel_nm: pixel size, nm.
        emitters: molecules per frame, M.
        z_range_nm: (z_lo, z_hi) of the uniform axial positions, nm (ignored by 2D PSFs: z = 0).
        photons_range: (N_lo, N_hi) of the uniform photons per plane.
        background: mean background, photons per pixel.
        background_structure: relative s.d. of a smooth random background (0: flat).
        background_scale_nm: correlation length of the structured background, nm.
        drift: lateral drift of the planes, or None.
        noise: the :class:`FrameNoise`.
    """

    psf: PSF
    shape: tuple[int, int] = (64, 64)
    pixel_nm: float = 100.0
    emitters: int = 10
    z_range_nm: tuple[float, float] = (0.0, 0.0)
    photons_range: tuple[float, float] = (1000.0, 5000.0)
    background: float = 10.0
    background_structure: float = 0.0
    background_scale_nm: float = 1000.0
    drift: PlaneDrift | None = None
    noise: FrameNoise = ShotNoise()

    def __post_init__(self):
        require(self.pixel_nm > 0, f"pixel size {self.pixel_nm} nm: must be > 0")
        require(min(self.shape) >= 1, f"frame of {self.shape[0]} x {self.shape[1]} pixels: must be at least 1 x 1")
        require(self.emitters >= 0, f"{self.emitters} emitters per frame: must be >= 0")
        lo, hi = self.photons_range
        require(0 <= lo <= hi, f"photon range [{lo}, {hi}]: must satisfy 0 <= low <= high")
        require(self.background >= 0, f"background {self.background} photons/pixel: must be >= 0")
        require(self.z_range_nm[0] <= self.z_range_nm[1], f"z range {self.z_range_nm} nm: low must be <= high")

    @property
    def field_nm(self) -> tuple[float, float]:
        """(width, height) of the field, nm."""
        return self.shape[1] * self.pixel_nm, self.shape[0] * self.pixel_nm


class SimulatedFrames(NamedTuple):
    """Frames and their truth.

    Attributes:
        images: (n, planes, ny, nx) recorded values (photons, or ADU with a camera).
        emitters: :class:`~fluojax.smlm.models.Emitters`, leaves (n, M): the truth.
        drift_nm: (n, planes, 2) image displacement of every plane, nm (zeros without drift).
        background: (n, planes, ny, nx) expected background, photons per pixel.
    """

    images: Float[Array, "n planes ny nx"]
    emitters: Emitters
    drift_nm: Float[Array, "n planes 2"]
    background: Float[Array, "n planes ny nx"]


def random_emitters(key: PRNGKeyArray, scene: Scene) -> Emitters:
    """The M emitters of one frame, uniform in the field, z range and photon range (leaves (M,))."""
    kx, ky, kz, kn = jax.random.split(key, 4)
    m = (scene.emitters,)
    width, height = scene.field_nm
    z = jax.random.uniform(kz, m, minval=scene.z_range_nm[0], maxval=scene.z_range_nm[1])
    return Emitters(
        jax.random.uniform(kx, m, maxval=width),
        jax.random.uniform(ky, m, maxval=height),
        z if scene.psf.three_d else jnp.zeros(m),
        jax.random.uniform(kn, m, minval=scene.photons_range[0], maxval=scene.photons_range[1]),
    )


def structured_background(
    key: PRNGKeyArray, shape: tuple[int, int], pixel_nm: float, scale_nm: float
) -> Float[Array, "ny nx"]:
    """A smooth random field of zero mean and unit s.d.: white noise low-passed by a Gaussian of
    s.d. ``scale_nm`` (in Fourier space, periodic), then standardised."""
    white = draws.normal(key, shape)
    fy = jnp.fft.fftfreq(shape[0], d=pixel_nm)[:, None]
    fx = jnp.fft.rfftfreq(shape[1], d=pixel_nm)[None, :]
    kernel = jnp.exp(-2.0 * (jnp.pi * scale_nm) ** 2 * (fx**2 + fy**2))
    field = jnp.fft.irfft2(jnp.fft.rfft2(white) * kernel, s=shape)
    field = field - field.mean()
    return field / jnp.maximum(field.std(), 1e-12)


def _one_frame(key: PRNGKeyArray, scene: Scene):
    k_em, k_drift, k_bg, k_noise = jax.random.split(key, 4)
    emitters = random_emitters(k_em, scene)
    planes = scene.psf.planes
    drift = scene.drift.sample(k_drift, planes) if scene.drift is not None else jnp.zeros((planes, 2))
    grid = pixel_grid(scene.shape, scene.pixel_nm)
    signal = frame_expected(scene.psf, emitters, grid, 0.0, drift if scene.drift is not None else None)
    background = jnp.full(signal.shape, scene.background, signal.dtype)
    if scene.background_structure > 0:
        field = structured_background(k_bg, scene.shape, scene.pixel_nm, scene.background_scale_nm)
        background = jnp.maximum(background * (1.0 + scene.background_structure * field), 0.0)
    images = scene.noise.apply(k_noise, signal, background)
    return images, emitters, drift, background


@partial(jax.jit, static_argnums=(1, 2))
def simulate_frames(key: PRNGKeyArray, scene: Scene, n_frames: int) -> SimulatedFrames:
    """``n_frames`` independent frames of ``scene`` (one vmapped computation; ``fold_in(key, i)`` per frame).

    Arguments:
        key: PRNG key.
        scene: :class:`Scene` (static).
        n_frames: number of frames (static).

    Returns:
        :class:`SimulatedFrames`.
    """
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_frames))
    return SimulatedFrames(*jax.vmap(lambda k: _one_frame(k, scene))(keys))


def quadplane_paper(psf: QuadPlane | None = None) -> Scene:
    """The simulated data of Aritake et al. 2021 (Tables 2-3, Fig. 5): 64 x 64 x 4 frames of 192 nm
    pixels, 50 molecules of weight U(0.3, 1) (photons ``w a' / a^2``, up to 1356 per plane), z
    uniform in [-200, 1350) nm, point-sampled PSF of Table 2, ``Poisson(10) + N(0, 9)`` added,
    planes 1, 2, 4 drifting against plane 3 by {-2, ..., 1} x 24 nm (the released code)."""
    psf = psf if psf is not None else QuadPlane.table_2()
    n_hi = float(weight_to_photons(1.0, 192.0))
    return Scene(
        psf=psf,
        shape=(64, 64),
        pixel_nm=192.0,
        emitters=50,
        z_range_nm=(-200.0, 1350.0),
        photons_range=(0.3 * n_hi, n_hi),
        background=10.0,
        drift=PlaneDrift(),
        noise=AdditiveNoise(3.0),
    )


def quadplane_released() -> Scene:
    """:func:`quadplane_paper` with the PSF constants of the authors' released code (B = 0.122484)."""
    return quadplane_paper(QuadPlane.released_code())


def quadplane_physical(camera: Camera = IdealCamera()) -> Scene:
    """The paper's scene with physical noise: pixel-integrated PSF (Table 2 constants), shot noise
    on signal and the 10-photon background, read out by ``camera`` (ideal by default)."""
    return dataclasses.replace(quadplane_paper(QuadPlane.table_2(integrated=True)), noise=ShotNoise(camera))


def gaussian_2d(camera: Camera = IdealCamera()) -> Scene:
    """A single-plane 2D field: 64 x 64 pixels of 100 nm, 10 emitters of 1000-5000 photons, a
    130 nm Gaussian PSF, 10 background photons per pixel, shot noise read out by ``camera``."""
    return Scene(psf=Gaussian2D(130.0), noise=ShotNoise(camera))
