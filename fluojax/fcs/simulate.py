"""Random-walk image stacks for Imaging FCS (2D TIRF and 3D SPIM), deterministic for a key.

Particles diffuse in a box that extends ``margin_px`` beyond the observed ``size_px`` square
(periodic boundaries; in 3D the box is ``+-depth_factor * w_z / 2`` deep). Each frame is
``substeps`` sub-steps; in each sub-step every particle moves by a Gaussian step of variance
``2 D dt / substeps`` per axis and emits Poisson photons at ``brightness / substeps`` per
particle, each displaced by the PSF (s.d. ``w / 2``; in 3D ``(w + |z| tan alpha) / 2``, and the
emission weighted by the light sheet ``exp(-2 z^2 / w_z^2)``) and counted in the pixel where it
lands (the FCSNet/ImFCSNet simulator of Tang et al. 2024, Methods).

Photon counting is done per pixel rather than per photon: by Poisson thinning, the photons of
all particles that land in pixel (i, j) during a frame are Poisson with mean
``sum_{substeps, particles} brightness/substeps * weight * Px_i * Py_j`` (Px, Py: the
probability that a photon lands in column i / row j, differences of erf). This is the same
distribution as the per-photon simulation and costs one small matrix product per frame.
Camera noise is then applied with :mod:`fluojax.noise`.

Boundaries are periodic in x, y (and z in 3D). The FCSNet/ImFCSNet TF simulator instead
re-inserts a particle that leaves the box at a uniformly random point on a random edge
(Tang et al. 2024, Methods); periodic wrap keeps the particle density exactly uniform and the particle
number constant. The two differ only at the box edges, a 6 px margin (~9 in-focus PSF s.d.)
away from the detector.

Training batches. ``simulate_training_batch`` draws a batch of parameter sets from a
``TrainingPrior`` (the FCSNet/ImFCSNet training distribution of Tang et al. 2024) and simulates
one 3 x 3 stack per set with the same ``_simulate`` code path as ``simulate_stack``, vmapped over
the batch. The particle number varies per sample, so every sample carries ``max_particles``
particles of which only the first ``n_particles`` emit (a static-shape mask).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf
from jax.typing import ArrayLike

from fluojax import draws
from fluojax.fcs.models import (
    ITIR_2D,
    SPIM_3D,
    Geometry,
    Optics,
    pixel_side_um,
    psf_radius_um,
    sheet_radius_um,
    tan_half_angle,
)
from fluojax.io import InputError
from fluojax.networks import log_uniform
from fluojax.noise import Camera, IdealCamera

__all__ = [
    "DiffusionSample",
    "StackGeometry",
    "TrainingParams",
    "TrainingPrior",
    "particles_for_density",
    "sample_training_params",
    "simulate_stack",
    "simulate_training_batch",
]


@dataclasses.dataclass(frozen=True)
class StackGeometry:
    """Static layout of a simulated stack (hashable; shapes depend on it).

    Attributes:
        frames: int, number of frames T.
        size_px: int, observed image is size_px x size_px pixels.
        frame_time_s: float, frame time in s.
        n_particles: int, particles in the simulation box.
        margin_px: int, box margin beyond the observed area on each side, in pixels.
        substeps: int, diffusion/emission sub-steps per frame.
        three_d: bool, SPIM geometry (light sheet, defocus) instead of TIRF.
        depth_factor: float, 3D box half-depth in units of w_z / 2.
        frames_per_step: int or None, frames simulated per ``lax.scan`` step (speed only: each
            frame draws its random numbers from its own key whatever the value, so results
            agree up to float rounding); None picks 1 on CPU and 50 on accelerators.
    """

    frames: int
    size_px: int
    frame_time_s: float
    n_particles: int
    margin_px: int = 6
    substeps: int = 10
    three_d: bool = False
    depth_factor: float = 10.0
    frames_per_step: int | None = None


class DiffusionSample(NamedTuple):
    """What is simulated.

    Attributes:
        d_um2_s: float, diffusion coefficient in um^2/s.
        brightness: float, expected photo-electrons per particle per frame (in focus).
    """

    d_um2_s: ArrayLike
    brightness: ArrayLike


def particles_for_density(density_per_um2: float, size_px: int, optics: Optics, margin_px: int = 6) -> int:
    """Number of particles giving a surface density (per um^2 of the x-y box) in the box."""
    side = (size_px + 2 * margin_px) * float(pixel_side_um(optics))
    return max(1, round(density_per_um2 * side**2))


def _axis_probabilities(pos_um, inv_scale, edges_um):
    """Probability that a photon from a particle at ``pos_um`` lands between consecutive pixel
    edges, for a Gaussian PSF of s.d. sigma given as ``inv_scale = 1 / (sqrt(2) sigma)``.

    pos_um: (...); inv_scale: broadcastable to pos_um; edges_um: (size + 1,) -> (size, ...).
    The edge axis leads so that the erf runs over the long contiguous particle axis (about 1.5x
    faster on CPU than a trailing axis of length size + 1)."""
    edges = edges_um.reshape(-1, *([1] * pos_um.ndim))
    half_erf = 0.5 * erf((edges - pos_um) * inv_scale)  # cdf - 1/2
    return half_erf[1:] - half_erf[:-1]


def simulate_stack(
    key: jax.Array,
    sample: DiffusionSample,
    optics: Optics,
    geometry: StackGeometry,
    camera: Camera = IdealCamera(),
) -> jax.Array:
    """Simulate an Imaging FCS image stack.

    Arguments:
        key: PRNG key (the stack is a deterministic function of it).
        sample: ``DiffusionSample`` (D in um^2/s, brightness in e-/particle/frame); traced, so
            the function can be vmapped over samples.
        optics: ``Optics`` (pixel, PSF, and for 3D light sheet and refractive index).
        geometry: ``StackGeometry`` (static).
        camera: ``Camera`` (static).

    Returns:
        float32 array (frames, size_px, size_px) of camera counts.
    """
    return _simulate(key, sample, optics, geometry, camera)


def _frames_per_step(geometry: StackGeometry) -> int:
    """Frames per ``lax.scan`` step: ``geometry.frames_per_step``, or by backend when None.

    On CPU one frame per step is fastest (the per-step arrays stay in cache); on a GPU the scan
    is latency-bound and 50 frames per step is fastest (timings: docs/benchmarks.md)."""
    f = geometry.frames_per_step
    if f is None:
        f = 1 if jax.default_backend() == "cpu" else 50
    return max(1, min(geometry.frames, f))


@functools.partial(jax.jit, static_argnames=("geometry", "camera"))
def _simulate(key, sample, optics, geometry: StackGeometry, camera: Camera, active=None):
    """The simulator behind ``simulate_stack`` and ``simulate_training_batch``.

    ``active``: optional (n_particles,) bool mask; particles where it is False still move but
    emit nothing (so the particle number can vary under vmap with static shapes). ``sample``
    and ``optics`` leaves may be traced (per-sample D, brightness, sigma0).
    """
    a = pixel_side_um(optics)
    w = psf_radius_um(optics)
    lo = -geometry.margin_px * a
    side = (geometry.size_px + 2 * geometry.margin_px) * a
    edges = jnp.arange(geometry.size_px + 1) * a
    n, s = geometry.n_particles, geometry.substeps
    step_sd = jnp.sqrt(2.0 * sample.d_um2_s * geometry.frame_time_s / s)
    rate = sample.brightness / s
    # per-particle emission rate per sub-step, (n,): masked particles emit nothing
    rate = jnp.broadcast_to(rate, (n,)) if active is None else jnp.where(active, rate, 0.0)

    k_init, k_z, k_run = jax.random.split(key, 3)
    xy = lo + side * draws.uniform(k_init, (n, 2))
    if geometry.three_d:
        wz = sheet_radius_um(optics)
        half_depth = geometry.depth_factor * wz / 2.0
        z = jax.random.uniform(k_z, (n,), minval=-half_depth, maxval=half_depth)
        tan_a = tan_half_angle(optics)
    else:
        z = jnp.zeros((n,))

    f = _frames_per_step(geometry)
    chunks = -(-geometry.frames // f)

    def frames(pos, keys):
        # f frames (f * s sub-steps) per scan step: cumulative Gaussian steps, periodic wrap.
        # Each frame's random numbers come from its own key, as in a frame-by-frame loop.
        xy, z = pos
        k_xy, k_z, k_cam = jnp.moveaxis(jax.vmap(lambda k: jax.random.split(k, 3))(keys), 1, 0)
        normal = jax.vmap(draws.normal, in_axes=(0, None))
        path_xy = xy + jnp.cumsum(step_sd * normal(k_xy, (s, n, 2)).reshape(f * s, n, 2), axis=0)
        path_xy = lo + jnp.mod(path_xy - lo, side)
        if geometry.three_d:
            path_z = z + jnp.cumsum(step_sd * normal(k_z, (s, n)).reshape(f * s, n), axis=0)
            path_z = -half_depth + jnp.mod(path_z + half_depth, 2 * half_depth)
            inv_scale = 1.0 / (np.sqrt(2.0) * 0.5 * (w + jnp.abs(path_z) * tan_a))[..., None]  # (f*s, n, 1)
            weight = rate[None, :] * jnp.exp(-2.0 * path_z**2 / wz**2)
        else:
            path_z = jnp.broadcast_to(z, (f * s, n))
            inv_scale = 1.0 / (np.sqrt(2.0) * 0.5 * w)  # scalar: one PSF width for all
            weight = jnp.broadcast_to(rate, (f * s, n))
        p = _axis_probabilities(path_xy, inv_scale, edges).reshape(-1, f, s, n, 2)  # (size, f, s, n, [x, y])
        # expected[frame, row, col] = sum over sub-steps, particles of weight P(y in row) P(x in col)
        expected = jnp.einsum("ifsn,jfsn->fij", p[..., 1] * weight.reshape(f, s, n), p[..., 0])
        counts = jax.vmap(camera.counts)(k_cam, expected)
        return (path_xy[-1], path_z[-1]), counts

    keys = jax.random.split(k_run, geometry.frames)
    keys = jnp.concatenate([keys, keys[: chunks * f - geometry.frames]])  # padding frames, dropped below
    _, stack = jax.lax.scan(frames, (xy, z), keys.reshape(chunks, f))
    stack = stack.reshape(chunks * f, geometry.size_px, geometry.size_px)[: geometry.frames]
    return stack.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# On-the-fly training batches for the learned estimators (FCSNet / ImFCSNet)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingPrior:
    """Distribution of simulated training stacks (immutable, hashable: pass it as a static argument).

    Every sample draws D and the particle density log-uniformly and the brightness, sigma0
    and read-noise s.d. uniformly between the ``*_min`` and ``*_max`` bounds below
    (``min == max`` fixes a parameter). Particles live in a square box of
    ``size_px + 2 * margin_px`` pixels on a side; the particle number of a sample is
    ``floor(density * box_side_px**2)``, which must not exceed ``max_particles``.

    Attributes:
        d_min_um2_s: float, lower bound of D in um^2/s (log-uniform).
        d_max_um2_s: float, upper bound of D in um^2/s.
        density_min_per_px2: float, lower bound of the particle density, particles per
            object-space pixel area a^2 (log-uniform; in 3D per a^2 of the x-y box, the
            particles filling the whole z range).
        density_max_per_px2: float, upper bound of the particle density, per px^2.
        brightness_min: float, lower bound of the brightness, expected photo-electrons (counts)
            per particle per frame in focus (uniform).
        brightness_max: float, upper bound of the brightness, counts/particle/frame.
        sigma0_min: float, lower bound of the PSF factor sigma0 (dimensionless; 1/e^2 radius
            ``w = sigma0 * lambda / NA``), uniform.
        sigma0_max: float, upper bound of sigma0.
        noise_sd_min: float, lower bound of the s.d. of the additive zero-mean Gaussian camera
            noise, in counts per pixel per frame (uniform).
        noise_sd_max: float, upper bound of the Gaussian noise s.d., counts.
        camera_pixel_um: float, camera pixel pitch in um.
        magnification: float, total magnification (object-space pixel = pitch / magnification).
        na: float, numerical aperture.
        wavelength_nm: float, emission wavelength in nm.
        sigmaz: float, light-sheet factor, sheet 1/e^2 radius ``sigmaz * lambda / NA`` (3D only).
        refractive_index: float, refractive index of the sample (3D defocus only).
        frame_time_s: float, frame time in s.
        frames: int, frames T per stack.
        size_px: int, detector side in pixels (the networks see 3 x 3).
        margin_px: int, box margin beyond the detector on each side, in pixels.
        substeps: int, diffusion/emission sub-steps per frame.
        three_d: bool, SPIM geometry (light sheet, defocus) instead of TIRF.
        depth_factor: float, 3D box half-depth in units of w_z / 2.
        max_particles: int, particles simulated per sample (static); the inactive ones are masked.
        frames_per_step: int or None, frames per ``lax.scan`` step (``StackGeometry``; speed only).
    """

    d_min_um2_s: float = 0.02
    d_max_um2_s: float = 50.0
    density_min_per_px2: float = 0.48374 / 4.47214
    density_max_per_px2: float = 0.48374 * 4.47214
    brightness_min: float = 1.06
    brightness_max: float = 10.6
    sigma0_min: float = 0.75
    sigma0_max: float = 0.85
    noise_sd_min: float = float(np.sqrt(0.09))
    noise_sd_max: float = float(np.sqrt(0.11))
    camera_pixel_um: float = 24.0
    magnification: float = 100.0
    na: float = 1.45
    wavelength_nm: float = 583.0
    sigmaz: float = 2.2
    refractive_index: float = 1.333
    frame_time_s: float = 1.06e-3
    frames: int = 2500
    size_px: int = 3
    margin_px: int = 6
    substeps: int = 10
    three_d: bool = False
    depth_factor: float = 10.0
    max_particles: int = 486
    frames_per_step: int | None = None

    def __post_init__(self):
        bounds = {
            "D": (self.d_min_um2_s, self.d_max_um2_s),
            "density": (self.density_min_per_px2, self.density_max_per_px2),
            "brightness": (self.brightness_min, self.brightness_max),
            "sigma0": (self.sigma0_min, self.sigma0_max),
            "noise_sd": (self.noise_sd_min, self.noise_sd_max),
        }
        for name, (lo, hi) in bounds.items():
            if not 0 <= lo <= hi:
                raise InputError(f"training prior {name} range {lo:g} to {hi:g}: need 0 <= min <= max")
        if self.d_min_um2_s <= 0 or self.density_min_per_px2 <= 0:
            raise InputError(
                f"training prior lower bounds D {self.d_min_um2_s:g} um^2/s, density {self.density_min_per_px2:g} "
                "per px^2: must be > 0 (log-uniform)"
            )
        needed = int(np.floor(self.density_max_per_px2 * self.box_side_px**2))
        if self.max_particles < needed:
            raise InputError(
                f"TrainingPrior: max_particles = {self.max_particles} < {needed} particles at the highest density"
            )

    @classmethod
    def itir_2d(cls, frames: int = 2500, **overrides) -> TrainingPrior:
        """The ImFCSNet 2D (ITIR/TIRF, DOPC-like) training distribution (Tang et al. 2024, Methods).

        From ``waihoh/ImFCS_FCSNet_ImFCSNet: imfcsnet/Configurations/fd1t_cfg_2d.py`` and its
        datagen, cross-checked with the PyTorch port's ``model_dopc_2d.yml``:

        * D 0.02-50 um^2/s log-uniform: TF ``ParticleSig`` 0.19185 px/frame (= 1.00 um^2/s
          at a = 0.24 um, 1.06 ms) times/divided by 7.07107 (D x/÷ 50).
        * density 0.48374 px^-2 x/÷ 4.47214 = 0.108-2.163 px^-2 log-uniform -> 24-486 particles
          in the 15 x 15 px box (PyTorch ``NO_OF_PARTICLES`` 24-486).
        * brightness 5.83 +- 4.77 = 1.06-10.6 counts/particle/frame uniform (TF ``EmissionRate``).
        * sigma0 0.75-0.85 uniform (TF ``PhotonSig`` 0.67012 +- 0.04188 px = sigma0 lambda/NA/2a).
        * camera noise: the shipped TF config's Gaussian, variance ``CCDNoiseRate`` 0.1 +- 0.01,
          i.e. s.d. sqrt(0.09)-sqrt(0.11) = 0.300-0.332 counts, here drawn uniform in the s.d.
          (The PyTorch port instead adds s.d. U(1, 9) counts as an augmentation:
          ``TrainingPrior.itir_2d(noise_sd_min=1.0, noise_sd_max=9.0)``.) The TF scaled
          empirical-EMCCD noise is not modelled (its PMF file is not available here).
        * 24 um pixel, 100x (a = 240 nm), NA 1.45, 583 nm, frame time 1.06 ms, 2500 frames,
          3 x 3 detector, 6 px margin, 10 sub-steps (TF ``Margin``, ``NumPixels``,
          ``StepsPerFrame``, ``Frames``; PyTorch ``PIXEL_SIZE``, ``FRAME_TIME``).

        ``overrides``: any other field, e.g. ``max_particles`` together with a narrower density range.
        """
        return cls(frames=frames, **overrides)

    @classmethod
    def spim_3d(cls, frames: int = 2500, **overrides) -> TrainingPrior:
        """The ImFCSNet 3D (SPIM, dextran-like) training distribution (Tang et al. 2024, Methods).

        From ``imfcsnet/Configurations/fd1t_cfg_3d.py`` and ``simulator/fd1t_3d_datagen.py``,
        cross-checked with the PyTorch port's ``model_dextran_3d.yml``:

        * D 0.02-50 um^2/s log-uniform (TF ``ParticleSig`` 0.15969 px/frame = 1.00 um^2/s at
          a = 0.4 um, 2.04 ms, x/÷ 7.07107).
        * density 0.108-2.163 px^-2 log-uniform (same as 2D) -> 24-486 particles, filling
          the z box of +-10 light-sheet parameters (``ZDimFactor`` 10; here
          ``depth_factor * w_z / 2`` with ``w_z = sigmaz lambda / NA``).
        * brightness 11.22 +- 9.18 = 2.04-20.4 counts/particle/frame in focus, uniform.
        * sigma0 1.05-1.15 uniform (TF ``PhotonSig`` 0.708125 +- 0.03219 px); sigmaz 2.2 fixed
          (``SigmaZ``); refractive index 1.333 (defocus ``tan(asin(NA / n))``).
        * camera noise as in ``itir_2d`` (TF Gaussian, variance 0.1 +- 0.01).
        * 24 um pixel, 60x (a = 400 nm), NA 1.0, 515 nm, frame time 2.04 ms, 2500 frames,
          3 x 3 detector, 6 px margin, 10 sub-steps.
        """
        values: dict[str, Any] = dict(
            brightness_min=11.22 - 9.18,
            brightness_max=11.22 + 9.18,
            sigma0_min=1.05,
            sigma0_max=1.15,
            magnification=60.0,
            na=1.0,
            wavelength_nm=515.0,
            sigmaz=2.2,
            refractive_index=1.333,
            frame_time_s=2.04e-3,
            three_d=True,
        )
        values.update(overrides)
        return cls(frames=frames, **values)

    @classmethod
    def for_geometry(cls, geometry: Geometry | str, frames: int = 2500, **overrides) -> TrainingPrior:
        """The training distribution of a geometry (or its name, ``"2d"``/``"3d"``):
        :meth:`spim_3d` for one with a light sheet, :meth:`itir_2d` otherwise.

        Raises:
            fluojax.io.InputError: an unknown geometry name.
        """
        from fluojax.fcs.models import as_geometry

        build = cls.spim_3d if as_geometry(geometry).light_sheet else cls.itir_2d
        return build(frames, **overrides)

    @property
    def box_side_px(self) -> int:
        """Side of the (x-y) simulation box in pixels, ``size_px + 2 * margin_px``."""
        return self.size_px + 2 * self.margin_px

    @property
    def geometry(self) -> StackGeometry:
        """The ``StackGeometry`` of one sample (``max_particles`` particles)."""
        return StackGeometry(
            frames=self.frames,
            size_px=self.size_px,
            frame_time_s=self.frame_time_s,
            n_particles=self.max_particles,
            margin_px=self.margin_px,
            substeps=self.substeps,
            three_d=self.three_d,
            depth_factor=self.depth_factor,
            frames_per_step=self.frames_per_step,
        )

    @property
    def acf_geometry(self) -> Geometry:
        """The ACF model's ``models.Geometry`` of this prior's data: SPIM 3D or ITIR 2D."""
        return SPIM_3D if self.three_d else ITIR_2D

    def optics(self, sigma0: jax.Array | float, binning: int = 1) -> Optics:
        """``Optics`` of a sample with PSF factor ``sigma0`` (may be traced) and n x n ``binning``;
        a light sheet (``sigmaz``) only in 3D."""
        return Optics(
            self.camera_pixel_um,
            self.magnification,
            self.na,
            self.wavelength_nm,
            sigma0,
            self.sigmaz if self.three_d else None,
            self.refractive_index,
            binning,
        )


class TrainingParams(NamedTuple):
    """Parameters of a batch of training stacks, each a (batch,) array.

    Attributes:
        d_um2_s: float32, diffusion coefficient in um^2/s.
        n_particles: int32, particles in the ``box_side_px**2`` box (density = n / box area).
        brightness: float32, counts per particle per frame (in focus).
        sigma0: float32, PSF factor (w = sigma0 * lambda / NA).
        noise_sd: float32, s.d. of the additive Gaussian camera noise, counts.
    """

    d_um2_s: jax.Array
    n_particles: jax.Array
    brightness: jax.Array
    sigma0: jax.Array
    noise_sd: jax.Array


def sample_training_params(key: jax.Array, prior: TrainingPrior, batch: int) -> TrainingParams:
    """Draw ``batch`` parameter sets from ``prior`` (deterministic for ``key``; jit with
    ``prior`` and ``batch`` static).

    Returns:
        ``TrainingParams`` of (batch,) arrays.
    """
    k_d, k_n, k_b, k_s, k_noise = jax.random.split(key, 5)
    density = log_uniform(k_n, (batch,), prior.density_min_per_px2, prior.density_max_per_px2)
    n = jnp.clip(jnp.floor(density * prior.box_side_px**2), 0, prior.max_particles).astype(jnp.int32)
    uniform = lambda k, lo, hi: jax.random.uniform(k, (batch,), minval=lo, maxval=hi)  # noqa: E731
    return TrainingParams(
        d_um2_s=log_uniform(k_d, (batch,), prior.d_min_um2_s, prior.d_max_um2_s),
        n_particles=n,
        brightness=uniform(k_b, prior.brightness_min, prior.brightness_max),
        sigma0=uniform(k_s, prior.sigma0_min, prior.sigma0_max),
        noise_sd=uniform(k_noise, prior.noise_sd_min, prior.noise_sd_max),
    )


@functools.partial(jax.jit, static_argnames=("prior", "batch"))
def simulate_training_batch(
    key: jax.Array, prior: TrainingPrior, batch: int, params: TrainingParams | None = None
) -> tuple[jax.Array, TrainingParams]:
    """Simulate a batch of training stacks with parameters drawn from ``prior``.

    Each sample is an ideal (shot-noise) 3 x 3 stack from ``_simulate`` (the ``simulate_stack``
    code path) with ``max_particles`` particles of which the first ``n_particles`` emit, plus
    zero-mean Gaussian noise of s.d. ``noise_sd`` counts per pixel per frame (no offset, as
    in the TF simulator). Vmapped over the batch; a ``lax.scan`` over frames inside.

    Arguments:
        key: PRNG key (the batch is a deterministic function of it).
        prior: ``TrainingPrior`` (static).
        batch: int, number of stacks (static).
        params: optional ``TrainingParams`` of (batch,) arrays to simulate instead of a draw
            from ``prior`` (e.g. a fixed D per evaluation grid point); ``n_particles`` must not
            exceed ``prior.max_particles``.

    Returns:
        (stacks, params): float32 (batch, frames, size_px, size_px) counts, and the
        ``TrainingParams`` of (batch,) arrays they were simulated with.
    """
    k_params, k_stacks = jax.random.split(key)
    if params is None:
        params = sample_training_params(k_params, prior, batch)
    geometry = prior.geometry

    def one(k, p):
        k_sim, k_noise = jax.random.split(k)
        active = jnp.arange(prior.max_particles) < p.n_particles
        stack = _simulate(
            k_sim, DiffusionSample(p.d_um2_s, p.brightness), prior.optics(p.sigma0), geometry, IdealCamera(), active
        )
        return stack + p.noise_sd * draws.normal(k_noise, stack.shape, jnp.float32)

    stacks = jax.vmap(one)(jax.random.split(k_stacks, batch), params)
    return stacks, params
