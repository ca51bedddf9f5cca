"""Camera and detector noise models shared by every technique: simulated read-out, likelihoods and
the Poisson-equivalent data that a Poisson maximum-likelihood fit takes.

Expected photons in, camera counts (ADU) out: one class per camera model, each implementing
:class:`Camera`. A camera turns the expected photons per pixel into expected photo-electrons
``lambda = QE photons + c`` (quantum efficiency ``QE``, spurious or clock-induced charge ``c``;
defaults 1 and 0, so ``lambda = photons``) and reads them out:

* ``counts(key, photons)``: a simulated read-out, a pure function of an explicit PRNG key,
  jit/vmap-able;
* ``log_likelihood(counts_adu, photons)``: the per-pixel log-density of the counts (exact or a
  documented approximation), jit/vmap/grad-able in ``photons``;
* ``poisson_equivalent(counts_adu)``: data ``(counts, shift, scale)`` such that
  ``counts + shift ~ Poisson(scale photons + shift)`` (approximately), the input of
  :func:`fluojax.fit.poisson_mle` (model ``scale * photons``, ``shift`` added to data and model).

The models:

* :class:`IdealCamera`       - shot noise only: ``Poisson(lambda)`` (counts = electrons).
* :class:`GaussianReadNoise` - CCD-like: Poisson electrons + Gaussian read noise, times a
  conversion gain, plus an offset.
* :class:`EMCCD`             - electron multiplication: Poisson electrons -> Gamma(n, g) gain
  register (the standard high-gain model, excess noise factor F^2 = 2; Basden et al. 2003)
  + Gaussian read noise; :meth:`EMCCD.challenge_2016` is the camera of the SMLM Challenge 2016
  simulator (Sage et al. 2019), as an example of a preset.
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

Units: ``photons`` expected photons per pixel and frame, ``read_noise_e`` in electrons (s.d.),
``read_variance_e2`` in electrons^2, ``spurious_charge_e`` in electrons per pixel and frame,
``gain_adu_per_e`` in ADU per electron, ``offset_adu`` in ADU, ``em_gain`` and
``quantum_efficiency`` dimensionless; ``a`` in intensity^2, ``a'`` in intensity. Computations
run in the floating dtype of the input (float32 by default).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, i1e, xlogy
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from fluojax import draws
from fluojax.io import require

__all__ = [
    "EMCCD",
    "SCMOS",
    "AffineGaussianNoise",
    "Camera",
    "GaussianReadNoise",
    "IdealCamera",
    "PoissonEquivalent",
]


class PoissonEquivalent(NamedTuple):
    """Camera counts mapped to data for a Poisson maximum-likelihood fit.

    ``counts + shift`` is (approximately) ``Poisson(scale photons + shift)``: ``counts`` has mean
    ``scale photons`` and variance ``scale photons + shift``. Fit it with
    ``fluojax.fit.poisson_mle(model, counts, init, shift=shift, scale=scale)``, where ``model``
    gives expected photons, so the fitted parameters are in photons.

    Attributes:
        counts: equivalent counts per pixel (may be negative or fractional), shape of the input.
        shift: known expected counts added to data and model (read variance, spurious charge),
            broadcast against ``counts``.
        scale: expected equivalent counts per photon (quantum efficiency; halved for an EMCCD),
            broadcast against ``counts``.
    """

    counts: Float[Array, "*shape"]
    shift: Float[Array, "*shape"]
    scale: Float[Array, "*shape"]


def _float(x: ArrayLike) -> Array:
    """``x`` as a JAX array of its floating dtype (float32 for integers)."""
    x = jnp.asarray(x)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _shot_noise(key: PRNGKeyArray, electrons: ArrayLike) -> tuple[Array, Array, Array, Array]:
    """Poisson photo-electrons of expected values ``electrons`` (clipped at 0), and the gain and
    read sub-keys: ``(n, lam, k_gain, k_read)``, ``n`` in the floating dtype of ``lam``."""
    k_shot, k_gain, k_read = jax.random.split(key, 3)
    lam = jnp.maximum(_float(electrons), 0.0)
    n = draws.poisson(k_shot, lam).astype(lam.dtype)
    return n, lam, k_gain, k_read


def _check_conversion(quantum_efficiency: float, spurious_charge_e: float) -> None:
    require(0 < quantum_efficiency <= 1, f"quantum efficiency {quantum_efficiency}: must be in (0, 1]")
    require(spurious_charge_e >= 0, f"spurious charge {spurious_charge_e} e-/pixel: must be >= 0")


class Camera(abc.ABC):
    """A camera model: simulated read-out of expected photons, the likelihood of its counts and
    their Poisson-equivalent data. A new model is a new subclass.

    Subclasses hold ``quantum_efficiency`` and ``spurious_charge_e``; the expected
    photo-electrons are ``lambda = quantum_efficiency * photons + spurious_charge_e``.
    """

    quantum_efficiency: float
    spurious_charge_e: float

    def electrons(self, photons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Expected photo-electrons ``lambda = QE photons + c`` (unchanged photons, bit for bit,
        with the defaults QE = 1 and c = 0).

        Arguments:
            photons: expected photons per pixel, any shape.

        Returns:
            array of expected electrons, floating dtype of ``photons`` (float32 for integers).
        """
        lam = _float(photons)
        if self.quantum_efficiency != 1.0:
            lam = lam * self.quantum_efficiency
        if self.spurious_charge_e != 0.0:
            lam = lam + self.spurious_charge_e
        return lam

    @abc.abstractmethod
    def counts(self, key: PRNGKeyArray, photons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """Simulated camera counts (ADU) of the expected photons per pixel ``photons`` (>= 0).

        Arguments:
            key: PRNG key.
            photons: array of expected photons, any shape (photo-electrons when QE = 1, c = 0).

        Returns:
            array of counts, shape of ``photons``, floating dtype of ``photons`` (float32 for integers).
        """

    @abc.abstractmethod
    def log_likelihood(
        self, counts_adu: Float[ArrayLike, "*shape"], photons: Float[ArrayLike, "*shape"]
    ) -> Float[Array, "*shape"]:
        """Per-pixel log-density (log-probability for integer data) of ``counts_adu`` given the
        expected photons, elementwise; differentiable in ``photons``.

        Arguments:
            counts_adu: observed counts, ADU.
            photons: expected photons per pixel (> 0 for a finite gradient), broadcast against
                ``counts_adu``.

        Returns:
            array of log-densities per ADU, broadcast shape.
        """

    @abc.abstractmethod
    def poisson_equivalent(self, counts_adu: Float[ArrayLike, "*shape"]) -> PoissonEquivalent:
        """Data for a Poisson maximum-likelihood fit of photons (:class:`PoissonEquivalent`).

        Arguments:
            counts_adu: observed counts, ADU, any shape.

        Returns:
            ``PoissonEquivalent(counts, shift, scale)``.
        """


def _poisson_log_pmf(k: Array, mean: Array) -> Array:
    """``k ln(mean) - mean - ln k!`` (continuous in k through lgamma; 0 ln 0 = 0)."""
    return xlogy(k, mean) - mean - gammaln(k + 1.0)


def _equivalent(counts_e: Array, electrons_shift: float, read_var_e2: ArrayLike, qe: float, divide: float):
    """Poisson-equivalent data of electrons ``counts_e`` of mean ``lambda = QE N + c`` and
    variance ``divide lambda + read_var_e2`` (``divide`` 1 for Huang et al. 2013's Poisson plus
    Gaussian read noise; 2 for an EMCCD's input-referred electrons, Mortensen et al. 2010):
    ``e = counts_e / divide`` has mean ``lambda / divide`` and variance
    ``lambda / divide + read_var_e2 / divide^2``; so ``counts = e - c / divide``,
    ``shift = read_var_e2 / divide^2 + c / divide``, ``scale = QE / divide``."""
    c = electrons_shift / divide
    shift = jnp.asarray(read_var_e2, counts_e.dtype) / divide**2 + c
    return PoissonEquivalent(
        counts_e / divide - c,
        jnp.broadcast_to(shift, counts_e.shape),
        jnp.full(counts_e.shape, qe / divide, counts_e.dtype),
    )


@dataclasses.dataclass(frozen=True)
class IdealCamera(Camera):
    """Shot noise only: ``counts ~ Poisson(lambda)``, ``lambda = QE photons + c``; mean =
    variance = lambda.

    The likelihood is the exact Poisson log-probability; the Poisson-equivalent data are the
    counts less ``c`` (shift ``c``, scale ``QE``), exact.

    Attributes:
        quantum_efficiency: float in (0, 1], photo-electrons per photon.
        spurious_charge_e: float >= 0, expected spurious electrons per pixel and frame.
    """

    quantum_efficiency: float = 1.0
    spurious_charge_e: float = 0.0

    def __post_init__(self):
        _check_conversion(self.quantum_efficiency, self.spurious_charge_e)

    def counts(self, key: PRNGKeyArray, photons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        return _shot_noise(key, self.electrons(photons))[0]

    def log_likelihood(self, counts_adu, photons):
        """Exact: ``k ln(lambda) - lambda - ln k!`` with ``k`` the counts."""
        k = _float(counts_adu)
        return _poisson_log_pmf(k, self.electrons(jnp.asarray(photons, k.dtype)))

    def poisson_equivalent(self, counts_adu):
        return _equivalent(_float(counts_adu), self.spurious_charge_e, 0.0, self.quantum_efficiency, 1.0)


def _gaussian_read_log_likelihood(camera, counts_adu, photons, gain, offset, read_var):
    """Huang et al. 2013's approximation for Poisson electrons plus Gaussian read noise of
    variance ``v`` (e-^2): ``x = (d - offset) / gain + v`` (clipped at 0) is taken as
    ``Poisson(lambda + v)`` (the same mean and variance), continued to real ``x`` through lgamma;
    the density per ADU includes the Jacobian ``1 / gain``."""
    d = _float(counts_adu)
    gain = jnp.asarray(gain, d.dtype)
    v = jnp.asarray(read_var, d.dtype)
    x = jnp.maximum((d + 0.5 * camera.quantize - jnp.asarray(offset, d.dtype)) / gain + v, 0.0)
    return _poisson_log_pmf(x, camera.electrons(jnp.asarray(photons, d.dtype)) + v) - jnp.log(gain)


def _read(counts: Array, gain: ArrayLike, offset: ArrayLike, quantize: bool) -> Array:
    """Electrons after the read amplifier to ADU: ``e gain + offset``, floored to whole ADU
    before the offset when ``quantize`` (as the camera's A/D converter does)."""
    adu = counts * gain
    if quantize:
        adu = jnp.floor(adu)
    return adu + offset


def _quantization_var_e2(quantize: bool, gain: ArrayLike) -> ArrayLike:
    """Variance (e-^2) added by flooring to whole ADU: 1/12 ADU^2 = 1 / (12 gain^2) e-^2."""
    return 1.0 / (12.0 * np.asarray(gain) ** 2) if quantize else 0.0


@dataclasses.dataclass(frozen=True)
class GaussianReadNoise(Camera):
    """CCD: ``counts = (Poisson(lambda) + read_noise_e z) gain + offset``, z ~ N(0, 1),
    ``lambda = QE photons + c``.

    Mean ``gain lambda + offset``, variance ``gain^2 (lambda + read_noise_e^2)``. With
    ``quantize`` the electrons times the gain are floored to whole ADU before the offset is added.

    Likelihood and Poisson-equivalent data: Huang et al. 2013's approximation (see
    :class:`SCMOS`) with the read variance ``read_noise_e^2`` in every pixel.

    Attributes:
        read_noise_e: float >= 0, read-noise s.d. in electrons.
        gain_adu_per_e: float > 0, conversion gain in ADU per electron.
        offset_adu: float, constant offset in ADU.
        quantum_efficiency: float in (0, 1], photo-electrons per photon.
        spurious_charge_e: float >= 0, expected spurious electrons per pixel and frame.
        quantize: bool, floor to whole ADU (default False).
    """

    read_noise_e: float = 0.0
    gain_adu_per_e: float = 1.0
    offset_adu: float = 0.0
    quantum_efficiency: float = 1.0
    spurious_charge_e: float = 0.0
    quantize: bool = False

    def __post_init__(self):
        require(self.read_noise_e >= 0, f"read noise {self.read_noise_e} e-: must be >= 0")
        require(self.gain_adu_per_e > 0, f"conversion gain {self.gain_adu_per_e} ADU/e-: must be > 0")
        _check_conversion(self.quantum_efficiency, self.spurious_charge_e)

    def counts(self, key: PRNGKeyArray, photons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        n, lam, _, k_read = _shot_noise(key, self.electrons(photons))
        read = self.read_noise_e * draws.normal(k_read, lam.shape, lam.dtype)
        return _read(n + read, self.gain_adu_per_e, self.offset_adu, self.quantize)

    def _read_var(self):
        return self.read_noise_e**2 + _quantization_var_e2(self.quantize, self.gain_adu_per_e)

    def log_likelihood(self, counts_adu, photons):
        """Huang et al. 2013's approximation (see :class:`SCMOS`)."""
        return _gaussian_read_log_likelihood(
            self, counts_adu, photons, self.gain_adu_per_e, self.offset_adu, self._read_var()
        )

    def poisson_equivalent(self, counts_adu):
        d = _float(counts_adu)
        e = (d + 0.5 * self.quantize - self.offset_adu) / self.gain_adu_per_e
        return _equivalent(e, self.spurious_charge_e, self._read_var(), self.quantum_efficiency, 1.0)


@dataclasses.dataclass(frozen=True)
class EMCCD(Camera):
    """Electron-multiplying CCD: ``counts = (G + read_noise_e z) gain + offset``.

    The gain register turns ``n ~ Poisson(lambda)`` electrons, ``lambda = QE photons + c``, into
    ``G ~ Gamma(n, em_gain)`` (``G = 0`` for ``n = 0``), the high-gain limit of the multiplication
    cascade (Basden et al. 2003): mean ``em_gain lambda``, variance ``2 em_gain^2 lambda``
    (excess noise factor 2). So the counts have mean ``gain em_gain lambda + offset`` and variance
    ``gain^2 (2 em_gain^2 lambda + read_noise_e^2)``. With ``quantize`` the electrons times the
    gain are floored to whole ADU before the offset is added.

    Likelihood (:meth:`log_likelihood`): with ``x = (d - offset) / gain`` electrons out of the
    register (``d + 1/2`` ADU, the bin's middle, when quantized), the Poisson-Gamma density is exact
    for the register without read noise:

        p(x) = e^{-lambda - x/g} sqrt(lambda / (x g)) I_1(2 sqrt(lambda x / g)),   x > 0,

    plus a point mass ``e^{-lambda}`` at ``x = 0`` (``g = em_gain``). Read noise (s.d. ``r``) is
    applied to the point mass only, which becomes ``e^{-lambda} N(x; 0, r^2)``; the continuous part,
    of scale ``g``, is left unblurred (an approximation valid for ``r << g``, e.g. 74 e- against a
    gain of 300; the density still integrates to 1). Quantization is ignored beyond taking the
    bin's middle.

    Poisson-equivalent data (:meth:`poisson_equivalent`): the excess-noise treatment of Mortensen
    et al. 2010: input-referred electrons ``e = x / g`` have mean ``lambda`` and variance
    ``2 lambda + r_q^2 / g^2`` (``r_q^2`` the read variance plus 1/12 ADU^2 when quantized), so
    ``e / 2`` has mean ``lambda / 2`` and variance ``lambda / 2 + r_q^2 / (4 g^2)``: a Poisson
    variable with half the photons. Hence ``counts = e/2 - c/2``, ``shift = r_q^2/(4 g^2) + c/2``,
    ``scale = QE / 2``; a Poisson fit of them has twice the variance of an ideal camera's at
    ``QE`` (the excess noise factor F^2 = 2), asymptotically exact at high gain since mean and
    variance match.

    Attributes:
        em_gain: float > 0, electron-multiplication gain.
        read_noise_e: float >= 0, read-noise s.d. in electrons (after the gain register).
        gain_adu_per_e: float > 0, conversion gain in ADU per electron.
        offset_adu: float, constant offset in ADU.
        quantum_efficiency: float in (0, 1], photo-electrons per photon.
        spurious_charge_e: float >= 0, clock-induced charge, expected electrons per pixel and
            frame (enters the register like photo-electrons).
        quantize: bool, floor to whole ADU (default False).
    """

    em_gain: float = 1.0
    read_noise_e: float = 0.0
    gain_adu_per_e: float = 1.0
    offset_adu: float = 0.0
    quantum_efficiency: float = 1.0
    spurious_charge_e: float = 0.0
    quantize: bool = False

    def __post_init__(self):
        require(self.em_gain > 0, f"EM gain {self.em_gain}: must be > 0")
        require(self.read_noise_e >= 0, f"read noise {self.read_noise_e} e-: must be >= 0")
        require(self.gain_adu_per_e > 0, f"conversion gain {self.gain_adu_per_e} ADU/e-: must be > 0")
        _check_conversion(self.quantum_efficiency, self.spurious_charge_e)

    @classmethod
    def challenge_2016(cls, *, quantize: bool = False) -> EMCCD:
        """The EMCCD of the SMLM Challenge 2016 simulator (Sage et al. 2019; Photometrics Evolve
        values): QE 0.9, EM gain 300, read noise 74.4 e- rms, spurious charge 0.002 e-/pixel,
        45 e-/ADU, baseline 100 ADU. The challenge's images are quantized
        (``floor(e / 45) + 100``); ``quantize=True`` reproduces that.

        Arguments:
            quantize: bool, floor to whole ADU as the challenge does (default False).
        """
        return cls(
            em_gain=300.0,
            read_noise_e=74.4,
            gain_adu_per_e=1.0 / 45.0,
            offset_adu=100.0,
            quantum_efficiency=0.9,
            spurious_charge_e=0.002,
            quantize=quantize,
        )

    def counts(self, key: PRNGKeyArray, photons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        n, lam, k_gain, k_read = _shot_noise(key, self.electrons(photons))
        register = jax.random.gamma(k_gain, jnp.maximum(n, 1.0), dtype=lam.dtype)
        amplified = jnp.where(n > 0, register * self.em_gain, 0.0)
        read = self.read_noise_e * draws.normal(k_read, lam.shape, lam.dtype)
        return _read(amplified + read, self.gain_adu_per_e, self.offset_adu, self.quantize)

    def _electrons_out(self, counts_adu) -> Array:
        d = _float(counts_adu)
        return (d + 0.5 * self.quantize - self.offset_adu) / self.gain_adu_per_e

    def log_likelihood(self, counts_adu, photons):
        """Poisson-Gamma density with read noise on the zero-electron mass (see the class)."""
        x = self._electrons_out(counts_adu)
        lam = self.electrons(jnp.asarray(photons, x.dtype))
        g = self.em_gain
        tiny = jnp.finfo(x.dtype).tiny
        positive = x > 0
        xs = jnp.where(positive, x, 1.0)
        ls = jnp.maximum(lam, tiny)
        z = 2.0 * jnp.sqrt(ls * xs / g)
        # sqrt(lam / (x g)) I1(z) = (lam / g) I1(z) / (z / 2), and I1(z) / (z/2) -> 1 as z -> 0:
        # with i1e(z) = e^{-z} I1(z), log p = -lam - x/g + log(lam/g) + log(i1e(z) / (z/2)) + z
        small = z < 1e-3
        zs = jnp.where(small, 1.0, z)
        ratio = jnp.where(small, jnp.exp(-z) * (1.0 + z * z / 8.0), i1e(zs) / (0.5 * zs))
        continuous = -ls - xs / g + jnp.log(ls / g) + jnp.log(ratio) + z
        continuous = jnp.where(positive & (lam > 0), continuous, -jnp.inf)
        if self.read_noise_e > 0:
            r = self.read_noise_e
            zero = -lam - 0.5 * (x / r) ** 2 - np.log(r * np.sqrt(2.0 * np.pi))
        else:  # a probability mass at exactly 0
            zero = jnp.where(x == 0, -lam, -jnp.inf)
        return jnp.logaddexp(zero, continuous) - np.log(self.gain_adu_per_e)

    def poisson_equivalent(self, counts_adu):
        e = self._electrons_out(counts_adu) / self.em_gain
        read_var = (self.read_noise_e**2 + _quantization_var_e2(self.quantize, self.gain_adu_per_e)) / self.em_gain**2
        return _equivalent(e, self.spurious_charge_e, read_var, self.quantum_efficiency, 2.0)


@dataclasses.dataclass(frozen=True, eq=False)
class SCMOS(Camera):
    """sCMOS: ``counts = (Poisson(lambda) + sqrt(read_variance_e2) z) gain + offset`` with
    per-pixel maps (Huang et al. 2013), ``lambda = QE photons + c``; mean ``gain lambda + offset``,
    variance ``gain^2 (lambda + read_variance_e2)`` per pixel. With ``quantize`` the electrons
    times the gain are floored to whole ADU before the offset is added.

    Likelihood and Poisson-equivalent data: Huang et al. 2013's approximation. With
    ``v = read_variance_e2`` (plus ``1 / (12 gain^2)`` when quantized), the electrons
    ``(d - offset) / gain`` have mean ``lambda`` and variance ``lambda + v``, so
    ``(d - offset) / gain + v`` is taken as ``Poisson(lambda + v)`` (same mean and variance; the
    exact density is the Poisson-Gaussian convolution). :meth:`log_likelihood` evaluates that
    Poisson density continued to real arguments through lgamma (clipped at 0: data more than ``v``
    electrons below the offset count as 0), per ADU (Jacobian ``1 / gain``);
    :meth:`poisson_equivalent` returns ``counts = (d - offset) / gain - c``, ``shift = v + c``,
    ``scale = QE``.

    The maps are constants of a compiled simulation; two SCMOS objects are equal only if they are
    the same object (so one can be a static argument).

    Attributes:
        gain_adu_per_e: array (or float), conversion gain per pixel in ADU per electron.
        offset_adu: array (or float), offset per pixel in ADU.
        read_variance_e2: array (or float), read-noise variance per pixel in electrons^2.
        All broadcast against the ``photons`` given to :meth:`counts`.
        quantum_efficiency: float in (0, 1], photo-electrons per photon.
        spurious_charge_e: float >= 0, expected spurious electrons per pixel and frame.
        quantize: bool, floor to whole ADU (default False).
    """

    gain_adu_per_e: ArrayLike
    offset_adu: ArrayLike
    read_variance_e2: ArrayLike
    quantum_efficiency: float = 1.0
    spurious_charge_e: float = 0.0
    quantize: bool = False

    def __post_init__(self):
        gain, variance = np.asarray(self.gain_adu_per_e), np.asarray(self.read_variance_e2)
        require(bool(np.all(gain > 0)), f"sCMOS gain map: minimum {gain.min()} ADU/e-, must be > 0")
        require(bool(np.all(variance >= 0)), f"sCMOS read-variance map: minimum {variance.min()} e-^2, must be >= 0")
        _check_conversion(self.quantum_efficiency, self.spurious_charge_e)

    def counts(self, key: PRNGKeyArray, photons: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        n, lam, _, k_read = _shot_noise(key, self.electrons(photons))
        read = jnp.sqrt(self.read_variance_e2) * draws.normal(k_read, lam.shape, lam.dtype)
        return _read(n + read, self.gain_adu_per_e, self.offset_adu, self.quantize)

    def _read_var(self):
        return np.asarray(self.read_variance_e2) + _quantization_var_e2(self.quantize, self.gain_adu_per_e)

    def log_likelihood(self, counts_adu, photons):
        """Huang et al. 2013's approximation (see the class)."""
        return _gaussian_read_log_likelihood(
            self, counts_adu, photons, self.gain_adu_per_e, self.offset_adu, self._read_var()
        )

    def poisson_equivalent(self, counts_adu):
        d = _float(counts_adu)
        gain, offset = jnp.asarray(self.gain_adu_per_e, d.dtype), jnp.asarray(self.offset_adu, d.dtype)
        e = (d + 0.5 * self.quantize - offset) / gain
        return _equivalent(e, self.spurious_charge_e, self._read_var(), self.quantum_efficiency, 1.0)


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
        return images + jnp.sqrt(self.variance(images)) * draws.normal(key, images.shape, images.dtype)
