"""Random-walk image stacks for Imaging FCS (2D TIRF and 3D SPIM), deterministic for a key.

Particles diffuse in a box that extends ``margin_px`` beyond the observed ``size_px`` square
(periodic boundaries; in 3D the box is ``+-depth_factor * w_z / 2`` deep). Each frame is
``substeps`` sub-steps; in each sub-step every particle moves by a Gaussian step of variance
``2 D dt / substeps`` per axis and emits Poisson photons at ``brightness / substeps`` per
particle, each displaced by the PSF (s.d. ``w / 2``; in 3D ``(w + |z| tan alpha) / 2``, and the
emission weighted by the light sheet ``exp(-2 z^2 / w_z^2)``) and counted in the pixel where it
lands (fcs.md §1.2, the FCSNet/ImFCSNet simulator).

Photon counting is done per pixel rather than per photon: by Poisson thinning, the photons of
all particles that land in pixel (i, j) during a frame are Poisson with mean
``sum_{substeps, particles} brightness/substeps * weight * Px_i * Py_j`` (Px, Py: the
probability that a photon lands in column i / row j, differences of erf). This is the same
distribution as the per-photon simulation and costs one small matrix product per sub-step.
Camera noise is then applied with :mod:`fluojax.noise`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from fluojax.fcs.models import Optics, pixel_side_um, psf_radius_um, sheet_radius_um, tan_half_angle
from fluojax.noise import Camera, camera_counts

__all__ = ["StackGeometry", "DiffusionSample", "particles_for_density", "simulate_stack"]


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
    """

    frames: int
    size_px: int
    frame_time_s: float
    n_particles: int
    margin_px: int = 6
    substeps: int = 10
    three_d: bool = False
    depth_factor: float = 10.0


class DiffusionSample(NamedTuple):
    """What is simulated.

    Attributes:
        d_um2_s: float, diffusion coefficient in um^2/s.
        brightness: float, expected photo-electrons per particle per frame (in focus).
    """

    d_um2_s: jax.Array | float
    brightness: jax.Array | float


def particles_for_density(density_per_um2: float, size_px: int, optics: Optics, margin_px: int = 6) -> int:
    """Number of particles giving a surface density (per um^2 of the x-y box) in the box."""
    side = (size_px + 2 * margin_px) * float(pixel_side_um(optics))
    return max(1, int(round(density_per_um2 * side**2)))


def _axis_probabilities(pos_um, sigma_um, edges_um):
    """Probability that a photon from each particle lands between consecutive pixel edges.

    pos_um, sigma_um: (n,); edges_um: (size + 1,) -> (n, size)."""
    cdf = 0.5 * (1.0 + erf((edges_um[None, :] - pos_um[:, None]) / (np.sqrt(2.0) * sigma_um[:, None])))
    return cdf[:, 1:] - cdf[:, :-1]


def simulate_stack(
    key: jax.Array,
    sample: DiffusionSample,
    optics: Optics,
    geometry: StackGeometry,
    camera: Camera = Camera(),
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


@functools.partial(jax.jit, static_argnames=("geometry", "camera"))
def _simulate(key, sample, optics, geometry: StackGeometry, camera: Camera):
    a = pixel_side_um(optics)
    w = psf_radius_um(optics)
    lo = -geometry.margin_px * a
    side = (geometry.size_px + 2 * geometry.margin_px) * a
    edges = jnp.arange(geometry.size_px + 1) * a
    n, s = geometry.n_particles, geometry.substeps
    step_sd = jnp.sqrt(2.0 * sample.d_um2_s * geometry.frame_time_s / s)
    rate = sample.brightness / s

    k_init, k_z, k_run = jax.random.split(key, 3)
    xy = lo + side * jax.random.uniform(k_init, (n, 2))
    if geometry.three_d:
        wz = sheet_radius_um(optics)
        half_depth = geometry.depth_factor * wz / 2.0
        z = jax.random.uniform(k_z, (n,), minval=-half_depth, maxval=half_depth)
        tan_a = tan_half_angle(optics)
    else:
        z = jnp.zeros((n,))

    def frame(pos, k):
        # all sub-steps of a frame at once: cumulative Gaussian steps, periodic wrap
        xy, z = pos
        k_xy, k_z, k_cam = jax.random.split(k, 3)
        path_xy = xy + jnp.cumsum(step_sd * jax.random.normal(k_xy, (s, n, 2)), axis=0)
        path_xy = lo + jnp.mod(path_xy - lo, side)
        if geometry.three_d:
            path_z = z + jnp.cumsum(step_sd * jax.random.normal(k_z, (s, n)), axis=0)
            path_z = -half_depth + jnp.mod(path_z + half_depth, 2 * half_depth)
            sigma = 0.5 * (w + jnp.abs(path_z) * tan_a)
            weight = rate * jnp.exp(-2.0 * path_z**2 / wz**2)
        else:
            path_z = jnp.broadcast_to(z, (s, n))
            sigma = jnp.full((s, n), 0.5 * w)
            weight = jnp.full((s, n), rate)
        flat = lambda v: v.reshape(s * n, *v.shape[2:])  # noqa: E731
        px = _axis_probabilities(flat(path_xy[..., 0]), flat(sigma), edges)  # (s*n, cols)
        py = _axis_probabilities(flat(path_xy[..., 1]), flat(sigma), edges)  # (s*n, rows)
        expected = (py * flat(weight)[:, None]).T @ px  # (rows, cols)
        return (path_xy[-1], path_z[-1]), camera_counts(k_cam, expected, camera)

    _, stack = jax.lax.scan(frame, (xy, z), jax.random.split(k_run, geometry.frames))
    return stack.astype(jnp.float32)
