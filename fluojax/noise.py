"""Camera models shared by every technique: photons in, camera counts (ADU) out.

Each model is a pure function of an explicit PRNG key, jit/vmap-able, applied to an array of
*expected* photo-electrons per pixel (photons x quantum efficiency):

* ``ideal``    - shot noise only: ``Poisson(lambda)`` (counts = electrons).
* ``gaussian`` - CCD-like: Poisson electrons + Gaussian read noise, times a conversion gain,
  plus an offset.
* ``emccd``    - electron multiplication: Poisson electrons -> Gamma(n, g) gain register
  (the standard high-gain model, excess noise factor sqrt 2) + Gaussian read noise.
* ``scmos``    - Poisson electrons with per-pixel gain, offset and read-noise variance maps.

Units: ``read_noise_e`` in electrons (s.d.), ``gain_adu_per_e`` in ADU per electron,
``offset_adu`` in ADU, ``em_gain`` dimensionless.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

__all__ = ["Camera", "camera_counts"]


@dataclasses.dataclass(frozen=True)
class Camera:
    """Camera settings (immutable, hashable: pass it as a static argument).

    Attributes:
        kind: ``"ideal"``, ``"gaussian"``, ``"emccd"`` or ``"scmos"``.
        read_noise_e: float, read-noise s.d. in electrons (gaussian, emccd).
        gain_adu_per_e: float, conversion gain in ADU per electron.
        offset_adu: float, constant offset in ADU.
        em_gain: float, electron-multiplication gain (emccd).
    """

    kind: str = "ideal"
    read_noise_e: float = 0.0
    gain_adu_per_e: float = 1.0
    offset_adu: float = 0.0
    em_gain: float = 1.0

    def __post_init__(self):
        if self.kind not in ("ideal", "gaussian", "emccd", "scmos"):
            raise ValueError(f"unknown camera kind {self.kind!r}")


def camera_counts(
    key: jax.Array,
    electrons: jax.Array,
    camera: Camera,
    scmos_maps: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
    """Simulate camera read-out of expected photo-electrons.

    Arguments:
        key: PRNG key.
        electrons: array, expected photo-electrons per pixel (>= 0).
        camera: ``Camera``.
        scmos_maps: for ``scmos`` only, (gain ADU/e-, offset ADU, read variance e-^2) arrays
            broadcastable to ``electrons``.

    Returns:
        float32 array of camera counts (ADU), shape of ``electrons``.
    """
    k_shot, k_gain, k_read = jax.random.split(key, 3)
    lam = jnp.maximum(jnp.asarray(electrons, jnp.float32), 0.0)
    n = jax.random.poisson(k_shot, lam).astype(jnp.float32)
    if camera.kind == "ideal":
        return n
    if camera.kind == "gaussian":
        read = camera.read_noise_e * jax.random.normal(k_read, lam.shape)
        return (n + read) * camera.gain_adu_per_e + camera.offset_adu
    if camera.kind == "emccd":
        amplified = jnp.where(n > 0, jax.random.gamma(k_gain, jnp.maximum(n, 1.0)) * camera.em_gain, 0.0)
        read = camera.read_noise_e * jax.random.normal(k_read, lam.shape)
        return (amplified + read) * camera.gain_adu_per_e + camera.offset_adu
    if scmos_maps is None:
        raise ValueError("an sCMOS camera needs (gain, offset, read variance) maps")
    gain, offset, read_var = scmos_maps
    read = jnp.sqrt(read_var) * jax.random.normal(k_read, lam.shape)
    return (n + read) * gain + offset
