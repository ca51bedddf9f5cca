"""Camera and detector noise models shared by every technique.

Camera read-out, photo-electrons in, camera counts (ADU) out: one class per camera model, each
implementing :class:`Camera` with ``counts(key, electrons)``, a pure function of an explicit PRNG
key, jit/vmap-able, applied to an array of *expected* photo-electrons per pixel (photons x quantum
efficiency):

* :class:`IdealCamera`       - shot noise only: ``Poisson(lambda)`` (counts = electrons).
* :class:`GaussianReadNoise` - CCD-like: Poisson electrons + Gaussian read noise, times a
  conversion gain, plus an offset.
* :class:`EMCCD`             - electron multiplication: Poisson electrons -> Gamma(n, g) gain
  register (the standard high-gain model, excess noise factor F^2 = 2; Basden et al. 2003)
  + Gaussian read noise.
* :class:`SCMOS`             - Poisson electrons with per-pixel gain, offset and read-noise
  variance maps (Huang et al. 2013).

Every model draws with the same three sub-keys ``split(key, 3)`` (shot, gain register, read), so a
key gives the same shot noise whatever the camera. The cameras are frozen dataclasses: static
arguments of a compiled simulation (sCMOS maps are compared by identity).

Intensity-domain noise, noisy image out of a noise-free one: :class:`AffineGaussianNoise`,
independent Gaussian noise of variance ``a + a' I`` per pixel (a read-noise floor plus a
Poisson-like term), for simulations in intensity units rather than photo-electrons. Its
parameters are a NamedTuple because they may be drawn per sample: leaves carry a batch shape
that leads the images'.

Units: ``read_noise_e`` in electrons (s.d.), ``gain_adu_per_e`` in ADU per electron,
``offset_adu`` in ADU, ``em_gain`` dimensionless; ``a`` in intensity^2, ``a'`` in intensity.
Computations run in the floating dtype of the input (float32 by default).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fluojax.io import InputError

__all__ = ["EMCCD", "SCMOS", "AffineGaussianNoise", "Camera", "GaussianReadNoise", "IdealCamera"]


def _shot_noise(key: PRNGKeyArray, electrons: ArrayLike) -> tuple[Array, Array, Array, Array]:
    """Poisson photo-electrons of expected values ``electrons`` (clipped at 0), and the gain and
    read sub-keys: ``(n, lam, k_gain, k_read)``, ``n`` in the floating dtype of ``lam``."""
    k_shot, k_gain, k_read = jax.random.split(key, 3)
    lam = jnp.asarray(electrons)
    lam = jnp.maximum(lam.astype(jnp.result_type(lam.dtype, jnp.float32)), 0.0)
    n = jax.random.poisson(k_shot, lam).astype(lam.dtype)
    return n, lam, k_gain, k_read


def _check(condition: bool, text: str) -> None:
    if not condition:
        raise InputError(text)


class Camera(abc.ABC):
    """A camera model: simulated read-out of expected photo-electrons. A new model is a new subclass."""

    @abc.abstractmethod
    def counts(self, key: PRNGKeyArray, electrons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Camera counts (ADU) of the expected photo-electrons per pixel ``electrons`` (>= 0).

        Arguments:
            key: PRNG key.
            electrons: array of expected photo-electrons, any shape.

        Returns:
            array of counts, shape of ``electrons``, floating dtype of ``electrons`` (float32 for integers).
        """


@dataclasses.dataclass(frozen=True)
class IdealCamera(Camera):
    """Shot noise only: ``counts ~ Poisson(electrons)``; mean = variance = electrons."""

    def counts(self, key: PRNGKeyArray, electrons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        return _shot_noise(key, electrons)[0]


@dataclasses.dataclass(frozen=True)
class GaussianReadNoise(Camera):
    """CCD: ``counts = (Poisson(lambda) + read_noise_e z) gain + offset``, z ~ N(0, 1).

    Mean ``gain lambda + offset``, variance ``gain^2 (lambda + read_noise_e^2)``.

    Attributes:
        read_noise_e: float >= 0, read-noise s.d. in electrons.
        gain_adu_per_e: float > 0, conversion gain in ADU per electron.
        offset_adu: float, constant offset in ADU.
    """

    read_noise_e: float = 0.0
    gain_adu_per_e: float = 1.0
    offset_adu: float = 0.0

    def __post_init__(self):
        _check(self.read_noise_e >= 0, f"read noise {self.read_noise_e} e-: must be >= 0")
        _check(self.gain_adu_per_e > 0, f"conversion gain {self.gain_adu_per_e} ADU/e-: must be > 0")

    def counts(self, key: PRNGKeyArray, electrons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        n, lam, _, k_read = _shot_noise(key, electrons)
        read = self.read_noise_e * jax.random.normal(k_read, lam.shape, lam.dtype)
        return (n + read) * self.gain_adu_per_e + self.offset_adu


@dataclasses.dataclass(frozen=True)
class EMCCD(Camera):
    """Electron-multiplying CCD: ``counts = (G + read_noise_e z) gain + offset``.

    The gain register turns ``n ~ Poisson(lambda)`` electrons into ``G ~ Gamma(n, em_gain)``
    (``G = 0`` for ``n = 0``), the high-gain limit of the multiplication cascade (Basden et al.
    2003): mean ``em_gain lambda``, variance ``2 em_gain^2 lambda`` (excess noise factor 2). So
    the counts have mean ``gain em_gain lambda + offset`` and variance
    ``gain^2 (2 em_gain^2 lambda + read_noise_e^2)``.

    Attributes:
        em_gain: float > 0, electron-multiplication gain.
        read_noise_e: float >= 0, read-noise s.d. in electrons (after the gain register).
        gain_adu_per_e: float > 0, conversion gain in ADU per electron.
        offset_adu: float, constant offset in ADU.
    """

    em_gain: float = 1.0
    read_noise_e: float = 0.0
    gain_adu_per_e: float = 1.0
    offset_adu: float = 0.0

    def __post_init__(self):
        _check(self.em_gain > 0, f"EM gain {self.em_gain}: must be > 0")
        _check(self.read_noise_e >= 0, f"read noise {self.read_noise_e} e-: must be >= 0")
        _check(self.gain_adu_per_e > 0, f"conversion gain {self.gain_adu_per_e} ADU/e-: must be > 0")

    def counts(self, key: PRNGKeyArray, electrons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        n, lam, k_gain, k_read = _shot_noise(key, electrons)
        register = jax.random.gamma(k_gain, jnp.maximum(n, 1.0), dtype=lam.dtype)
        amplified = jnp.where(n > 0, register * self.em_gain, 0.0)
        read = self.read_noise_e * jax.random.normal(k_read, lam.shape, lam.dtype)
        return (amplified + read) * self.gain_adu_per_e + self.offset_adu


@dataclasses.dataclass(frozen=True, eq=False)
class SCMOS(Camera):
    """sCMOS: ``counts = (Poisson(lambda) + sqrt(read_variance_e2) z) gain + offset`` with
    per-pixel maps (Huang et al. 2013); mean ``gain lambda + offset``, variance
    ``gain^2 (lambda + read_variance_e2)`` per pixel.

    The maps are constants of a compiled simulation; two SCMOS objects are equal only if they are
    the same object (so one can be a static argument).

    Attributes:
        gain_adu_per_e: array (or float), conversion gain per pixel in ADU per electron.
        offset_adu: array (or float), offset per pixel in ADU.
        read_variance_e2: array (or float), read-noise variance per pixel in electrons^2.
        All broadcast against the ``electrons`` given to :meth:`counts`.
    """

    gain_adu_per_e: ArrayLike
    offset_adu: ArrayLike
    read_variance_e2: ArrayLike

    def __post_init__(self):
        gain, variance = np.asarray(self.gain_adu_per_e), np.asarray(self.read_variance_e2)
        _check(bool(np.all(gain > 0)), f"sCMOS gain map: minimum {gain.min()} ADU/e-, must be > 0")
        _check(bool(np.all(variance >= 0)), f"sCMOS read-variance map: minimum {variance.min()} e-^2, must be >= 0")

    def counts(self, key: PRNGKeyArray, electrons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        n, lam, _, k_read = _shot_noise(key, electrons)
        read = jnp.sqrt(self.read_variance_e2) * jax.random.normal(k_read, lam.shape, lam.dtype)
        return (n + read) * self.gain_adu_per_e + self.offset_adu


def _leading(leaf: ArrayLike, ndim: int) -> Array:
    """``leaf`` with trailing unit axes up to ``ndim`` axes: its shape leads an array of ``ndim`` axes."""
    x = jnp.asarray(leaf)
    return x.reshape(x.shape + (1,) * max(ndim - x.ndim, 0))


class AffineGaussianNoise(NamedTuple):
    """Independent Gaussian noise per pixel of variance ``a + a' I`` (I the noise-free intensity).

    ``a`` is the intensity-independent floor (read noise), ``a'`` the variance per unit intensity
    (shot noise in intensity units: ``a' = 1 / photons per unit intensity``); ``a' = 0`` is
    intensity-independent Gaussian noise (the pixel noise model of Wåhlstrand Skärström et al.
    2021, eq. 5).

    Leaves may be scalars or carry a batch shape ``B...`` that *leads* the arrays they apply to
    (one noise level per sample of a batch of images or curves).

    Attributes:
        a: constant variance per pixel, intensity^2.
        a_prime: variance per unit intensity, intensity units.
    """

    a: Float[ArrayLike, "*batch"]
    a_prime: Float[ArrayLike, "*batch"] = 0.0

    def variance(self, intensity: Float[ArrayLike, "*batch *rest"]) -> Float[Array, "*batch *rest"]:
        """Per-pixel variance ``sigma^2 = a + a' I``, clipped at 0.

        Arguments:
            intensity: noise-free intensities I, shape ``B... + rest`` (``B...`` the leaves' shape).

        Returns:
            array of variances, shape of ``intensity``.
        """
        intensity = jnp.asarray(intensity)
        a, a_prime = (_leading(leaf, intensity.ndim) for leaf in self)
        return jnp.maximum(a + a_prime * intensity, 0.0)

    def sample(self, key: PRNGKeyArray, images: Float[Array, "*batch *rest"]) -> Float[Array, "*batch *rest"]:
        """Noisy images ``I + sqrt(a + a' I) z``, z standard normal per element.

        Arguments:
            key: PRNG key.
            images: noise-free intensities, shape ``B... + rest``.

        Returns:
            noisy images, shape and dtype of ``images``.
        """
        return images + jnp.sqrt(self.variance(images)) * jax.random.normal(key, images.shape, images.dtype)
