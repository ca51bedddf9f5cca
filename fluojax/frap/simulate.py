"""Noisy FRAP data: DeepFRAP's parameter prior, per-pixel noise, image- and curve-level simulation.

DeepFRAP (Wåhlstrand Skärström et al. 2021, J. Microsc. 282:146) trains on recovery curves made in
three steps: draw (D, c0, alpha, a) from the distributions of its Table 1, simulate the image
sequence with the spectral solver (``fluojax.frap.models``), add independent Gaussian noise to every
pixel of every recorded frame, and take the ROI mean (Wåhlstrand Skärström et al. 2021, eq. 6) of
each frame. This module provides those steps and a much cheaper equivalent that never forms an
image.

Noise model (Wåhlstrand Skärström et al. 2021, eq. 5). Pixel (x, y) of a recorded frame at time t is

    I(x, y, t) = c(x, y, t) + sqrt(a + a' c(x, y, t)) z,    z ~ N(0, 1) independent,

with ``a`` a constant variance and ``a'`` a variance per unit intensity (Poisson-like), both in
the dimensionless intensity units of c (c0 in [0.5, 1]). DeepFRAP sets ``a' = 0`` and draws ``a``
per sample; ``a`` is a *per-pixel* variance (docs/frap.md, "1. Model and units": only then is the
paper's least-squares MSE for c0, its Table 2, reachable — noise of variance ``a`` on the 110 curve
values would give an MSE three orders of magnitude larger).

Curve-level noise. The ROI curve ``F(t) = sum_xy w c`` (weights w, ``S = sum w``, 1 by default) of
the noisy images is ``F(t) + e(t)`` with independent Gaussian ``e(t)`` of variance

    var F(t) = sum_xy w^2 (a + a' c(x, y, t)) = (S^2 / n_eff) (a + a' c~(t)),

where ``n_eff = S^2 / sum w^2`` is the effective number of ROI pixels (1247.0 for DeepFRAP's
area-fraction disk, a little more than its 1224.5 pixel area because edge pixels weigh less)
and ``c~(t) = sum w^2 c / sum w^2`` is the ROI mean taken with the squared weights. For ``a' = 0``
(DeepFRAP) this is exact and needs only ``n_eff``. For ``a' > 0``, ``c~`` is either tabulated
exactly (a second ``FastCurveTable`` built on the squared weights, see
``squared_weight_geometry``) or approximated by ``F / S`` — exact in prebleach frames and for a
uniform ROI, and at DeepFRAP settings within 8 % (slow D, alpha = 0.45) to 0.03 % (fast D)
of the exact ``c~`` after the bleach (the a'-term only). Because the image noise is Gaussian
and independent, curve-level simulation with this variance has exactly the distribution of the
image-level pipeline (same mean and covariance, Gaussian), at a tiny fraction of its cost (no
FFT per frame; rates in docs/benchmarks.md).

Units: the prior is stated in um^2/s (SI 1e-12 m^2/s = 1 um^2/s); ``FrapParams.d_px2_s`` is in
pixel^2/s (``d_um2_s_to_px2_s`` with the prior's pixel size); network targets use
``D* = log10(D / (px^2/s))``, uniform on [0.2386, 3.2386] for DeepFRAP
(Wåhlstrand Skärström et al. 2021).

Every function is pure and deterministic for a (typed, ``jax.random.key``) PRNG key; leaves of
``FrapParams`` / ``AffineGaussianNoise`` may carry any common batch shape (the solvers are vmapped over it).
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float

from fluojax import draws
from fluojax.frap.models import (
    DEEPFRAP_D_UM2_S,
    DEEPFRAP_PIXEL_UM,
    BleachGeometry,
    FastCurveTable,
    FrapParams,
    FrapSettings,
    d_px2_s_to_um2_s,
    d_um2_s_to_px2_s,
    recovery_curve_fast,
    simulate_images,
)
from fluojax.io import InputError
from fluojax.networks import log_uniform
from fluojax.noise import AffineGaussianNoise

__all__ = [
    "FrapPrior",
    "FrapSample",
    "add_curve_noise",
    "curve_noise_variance",
    "recovery_curve_from_images",
    "roi_effective_pixels",
    "sample_d_um2_s",
    "sample_frap_params",
    "simulate_curves",
    "simulate_image_sequences",
    "squared_weight_geometry",
]


class FrapSample(NamedTuple):
    """One draw (or a batch of draws) from a ``FrapPrior``.

    Attributes:
        params: ``FrapParams`` (D in px^2/s, c0, alpha; phi = beta = 1, gamma = 0).
        noise: ``fluojax.noise.AffineGaussianNoise`` (a, a'; DeepFRAP: a log-uniform in [1e-4, 1e-2], a' = 0).
    """

    params: FrapParams
    noise: AffineGaussianNoise


@dataclasses.dataclass(frozen=True)
class FrapPrior:
    """Distribution of the simulated parameters (immutable, hashable: a static argument).

    D is held in px^2/s, the unit of the solver and of the samples; :meth:`from_um2_s` builds a
    prior stated in um^2/s (as DeepFRAP's Table 1) from a pixel size. Distributions: D
    log-uniform, c0 uniform, alpha uniform, a log-uniform, a' log-uniform when its lower bound is
    positive, uniform when it is 0 (a constant when both bounds are equal).

    Attributes:
        d_px2_s_range: (D_min, D_max) in px^2/s (default DeepFRAP's 1-1000 um^2/s at 0.7598 um
            pixels: 1.7322-1732.2 px^2/s).
        c0_range: (min, max) of the prebleach intensity c0.
        alpha_range: (min, max) of the per-bleach-frame remaining fraction alpha.
        noise_a_range: (min, max) of the per-pixel constant variance a.
        noise_a_prime_range: (min, max) of the per-pixel proportional variance a'.
        pixel_size_um: pixel side in um that relates px^2/s to um^2/s (:attr:`d_um2_s_range`,
            :func:`sample_d_um2_s`); None when the prior is not tied to a pixel size.
    """

    d_px2_s_range: tuple[float, float] = (
        d_um2_s_to_px2_s(DEEPFRAP_D_UM2_S[0], DEEPFRAP_PIXEL_UM),
        d_um2_s_to_px2_s(DEEPFRAP_D_UM2_S[1], DEEPFRAP_PIXEL_UM),
    )
    c0_range: tuple[float, float] = (0.5, 1.0)
    alpha_range: tuple[float, float] = (0.45, 0.95)
    noise_a_range: tuple[float, float] = (1e-4, 1e-2)
    noise_a_prime_range: tuple[float, float] = (0.0, 0.0)
    pixel_size_um: float | None = DEEPFRAP_PIXEL_UM

    def __post_init__(self) -> None:
        ranges = (
            ("D", self.d_px2_s_range, "px^2/s"),
            ("c0", self.c0_range, "intensity"),
            ("alpha", self.alpha_range, ""),
            ("a", self.noise_a_range, "intensity^2"),
            ("a'", self.noise_a_prime_range, "intensity"),
        )
        for name, (lo, hi), unit in ranges:
            if not lo <= hi:
                raise InputError(
                    f"prior range of {name} [{lo:g}, {hi:g}] {unit}: the minimum must not exceed the maximum"
                )
        if self.d_px2_s_range[0] <= 0 or self.noise_a_range[0] <= 0:
            raise InputError(
                f"prior lower bounds D {self.d_px2_s_range[0]:g} px^2/s, a {self.noise_a_range[0]:g} intensity^2: "
                "must be positive (both are log-uniform)"
            )
        if self.noise_a_prime_range[0] < 0:
            raise InputError(f"prior lower bound a' {self.noise_a_prime_range[0]:g} intensity: must be >= 0")
        if self.pixel_size_um is not None and not self.pixel_size_um > 0:
            raise InputError(f"pixel size {self.pixel_size_um:g} um: must be > 0")

    @classmethod
    def from_um2_s(
        cls, d_um2_s_range: tuple[float, float], pixel_size_um: float = DEEPFRAP_PIXEL_UM, **ranges
    ) -> FrapPrior:
        """A prior whose D range is stated in um^2/s: ``D_px = D_um / dx^2`` with dx = ``pixel_size_um``.

        Arguments:
            d_um2_s_range: (D_min, D_max) in um^2/s.
            pixel_size_um: pixel side dx in um (default DeepFRAP's 0.7598 um).
            **ranges: the other fields (``c0_range``, ``alpha_range``, ...).
        """
        lo, hi = d_um2_s_range
        d_px2_s = (d_um2_s_to_px2_s(lo, pixel_size_um), d_um2_s_to_px2_s(hi, pixel_size_um))
        return cls(d_px2_s_range=d_px2_s, pixel_size_um=pixel_size_um, **ranges)

    @classmethod
    def deepfrap(cls) -> FrapPrior:
        """DeepFRAP's prior (Wåhlstrand Skärström et al. 2021, Table 1): D log-uniform in
        [1e-12, 1e-9] m^2/s (= [1, 1000] um^2/s, 1.7322-1732.2 px^2/s at 0.7598 um pixels), c0
        uniform in [0.5, 1], alpha uniform in [0.45, 0.95], a log-uniform in [1e-4, 1e-2];
        a' = 0. (Röding et al. 2019's generator used alpha in [0.5, 0.95] and a + a'c noise;
        the DeepFRAP values are used here.)"""
        return cls.from_um2_s(DEEPFRAP_D_UM2_S)

    @property
    def d_um2_s_range(self) -> tuple[float, float]:
        """(D_min, D_max) in um^2/s: (1, 1000) for DeepFRAP.

        Raises:
            InputError: the prior has no pixel size.
        """
        pixel = _pixel_size(self)
        lo, hi = self.d_px2_s_range
        return d_px2_s_to_um2_s(lo, pixel), d_px2_s_to_um2_s(hi, pixel)

    @property
    def log10_d_px2_s_range(self) -> tuple[float, float]:
        """Range of the network target ``D* = log10(D / (px^2/s))``: (0.2386, 3.2386) for DeepFRAP."""
        lo, hi = self.d_px2_s_range
        return math.log10(lo), math.log10(hi)


def _pixel_size(prior: FrapPrior) -> float:
    if prior.pixel_size_um is None:
        raise InputError("this prior has no pixel size: D is known in px^2/s only")
    return prior.pixel_size_um


def _uniform(key, batch: int, lo: float, hi: float):
    """``U[lo, hi]`` draws (a constant when lo == hi)."""
    return jax.random.uniform(key, (batch,), minval=lo, maxval=hi)


@partial(jax.jit, static_argnames=("batch", "prior"))
def sample_frap_params(key: jax.Array, batch: int, prior: FrapPrior = FrapPrior()) -> FrapSample:
    """Draw ``batch`` independent parameter sets from a prior (Wåhlstrand Skärström et al. 2021,
    Table 1 by default).

    ``log10 D`` is drawn uniformly (D in px^2/s: ``D* = log10 D`` uniform on the prior's
    ``log10_d_px2_s_range``), c0 and alpha uniformly, ``ln a`` uniformly, a' as documented on
    ``FrapPrior``. The mobile fraction and beta are 1 and gamma 0 (DeepFRAP:
    Wåhlstrand Skärström et al. 2021).

    Arguments:
        key: typed PRNG key (``jax.random.key``); the draws depend on nothing else.
        batch: int (static), number of parameter sets B.
        prior: ``FrapPrior`` (static).

    Returns:
        ``FrapSample`` whose leaves have shape (B,), float32 (the default float type).
    """
    k_d, k_c0, k_alpha, k_a, k_ap = jax.random.split(key, 5)
    log10_lo, log10_hi = prior.log10_d_px2_s_range
    d_px2_s = 10.0 ** _uniform(k_d, batch, log10_lo, log10_hi)
    ap_lo, ap_hi = prior.noise_a_prime_range
    a_prime = log_uniform(k_ap, (batch,), ap_lo, ap_hi) if ap_lo > 0 else _uniform(k_ap, batch, ap_lo, ap_hi)
    ones = jnp.ones((batch,))
    params = FrapParams(
        d_px2_s=d_px2_s,
        c0=_uniform(k_c0, batch, *prior.c0_range),
        alpha=_uniform(k_alpha, batch, *prior.alpha_range),
        mobile_fraction=ones,
        beta=ones,
        gamma_px=jnp.zeros((batch,)),
    )
    return FrapSample(params, AffineGaussianNoise(log_uniform(k_a, (batch,), *prior.noise_a_range), a_prime))


def sample_d_um2_s(sample: FrapSample, prior: FrapPrior = FrapPrior()) -> Float[Array, "*b"]:
    """D of a sample in um^2/s (``D_um = D_px dx^2``, dx the prior's pixel size)."""
    return d_px2_s_to_um2_s(sample.params.d_px2_s, _pixel_size(prior))


# ----------------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------------


def roi_effective_pixels(geometry: BleachGeometry) -> float:
    """Effective number of pixels of the ROI weights, ``n_eff = (sum w)^2 / sum w^2``.

    The ROI curve of images with independent per-pixel noise of constant variance ``a`` has noise
    variance ``a sum w^2 = a S^2 / n_eff`` (``S = sum w``; ``a / n_eff`` for normalised weights).
    DeepFRAP's area-fraction disk (r = 19.742 px): 1247.0.

    Arguments:
        geometry: ``BleachGeometry`` (host arrays).

    Returns:
        float, n_eff.
    """
    w = np.asarray(geometry.roi_weights, dtype=np.float64)
    return float(w.sum() ** 2 / np.sum(w * w))


def squared_weight_geometry(geometry: BleachGeometry) -> BleachGeometry:
    """The same bleach region with ROI weights ``w^2 / sum w^2``.

    A ``FastCurveTable`` built on it (``build_fast_curve_table(squared_weight_geometry(g), ...)``)
    evaluates ``c~(t) = sum w^2 c / sum w^2``, the intensity that sets the a'-term of the curve
    noise variance exactly (see ``curve_noise_variance``).

    Arguments:
        geometry: ``BleachGeometry``.

    Returns:
        ``BleachGeometry`` with the same indicator and squared, renormalised ROI weights.
    """
    w = np.asarray(geometry.roi_weights, dtype=np.float64)
    return BleachGeometry(np.asarray(geometry.indicator, dtype=np.float64), w * w / np.sum(w * w))


def curve_noise_variance(
    curve: Float[ArrayLike, "*b t"],
    noise: AffineGaussianNoise,
    effective_pixels: float,
    roi_sum: Float[ArrayLike, ""] = 1.0,
    weighted_intensity: Float[ArrayLike, "*b t"] | None = None,
) -> Float[Array, "*b t"]:
    """Noise variance of each ROI-curve value, ``var F = (S^2 / n_eff)(a + a' c~)``.

    From ``F = sum w I`` with independent pixels of variance ``a + a' c``:
    ``var F = sum w^2 (a + a' c) = sum w^2 a + a' sum w^2 c``. With ``sum w^2 = S^2 / n_eff``
    and ``c~ = sum w^2 c / sum w^2`` this is the formula above; for normalised weights (S = 1),
    ``(a + a' c~) / n_eff``. Without ``weighted_intensity``, ``c~ = F / S`` is used (exact when
    a' = 0, in prebleach frames, and for a uniform ROI intensity).

    Arguments:
        curve: (..., T) noise-free ROI curve F(t).
        noise: ``AffineGaussianNoise`` with leaves of the batch shape ``...`` (or scalars).
        effective_pixels: n_eff (``roi_effective_pixels``).
        roi_sum: S = sum w (``table.roi_sum``; 1 for normalised weights).
        weighted_intensity: optional (..., T) exact ``c~(t)``.

    Returns:
        (..., T) variances.
    """
    c_tilde = curve / roi_sum if weighted_intensity is None else weighted_intensity
    return jnp.asarray((roi_sum * roi_sum / effective_pixels) * noise.variance(c_tilde))


def add_curve_noise(
    key: jax.Array,
    curve: Float[Array, "*b t"],
    noise: AffineGaussianNoise,
    effective_pixels: float,
    roi_sum: Float[ArrayLike, ""] = 1.0,
    weighted_intensity: Float[ArrayLike, "*b t"] | None = None,
) -> Float[Array, "*b t"]:
    """Noisy ROI curve ``F + sqrt(var F) z`` with ``var F`` from ``curve_noise_variance``.

    Arguments:
        key: typed PRNG key.
        curve: (..., T) noise-free ROI curve.
        noise, effective_pixels, roi_sum, weighted_intensity: as in ``curve_noise_variance``.

    Returns:
        (..., T) noisy curve.
    """
    var = curve_noise_variance(curve, noise, effective_pixels, roi_sum, weighted_intensity)
    return curve + jnp.sqrt(var) * draws.normal(key, curve.shape, curve.dtype)


# ----------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------


def _map_over_batch(fn, params: FrapParams):
    """Apply a single-sample solver to every sample of a batch of ``FrapParams``.

    Leaves are broadcast to a common batch shape ``s`` (scalars allowed), flattened, vmapped over,
    and the outputs reshaped to ``s + output shape``.
    """
    leaves = [jnp.asarray(leaf) for leaf in params]
    shape = jnp.broadcast_shapes(*(leaf.shape for leaf in leaves))
    flat = FrapParams(*(jnp.broadcast_to(leaf, shape).reshape(-1) for leaf in leaves))
    out = jax.vmap(fn)(flat)
    return out.reshape(shape + out.shape[1:])


def _require_table_compatible(params: FrapParams, table: FastCurveTable) -> None:
    """Refuse (when the values are concrete) beta != 1 or gamma != table.gamma_px."""
    for value, expected, name in ((params.beta, 1.0, "beta"), (params.gamma_px, table.gamma_px, "gamma_px")):
        try:
            concrete, target = np.asarray(value), np.asarray(expected)
        except Exception:  # a tracer: nothing to check
            continue
        if not np.allclose(concrete, target, rtol=0.0, atol=1e-6):
            raise InputError(f"{name} {concrete}: the fast-curve table was built for {name} = {target}")


def simulate_curves(
    key: jax.Array,
    params: FrapParams,
    table: FastCurveTable,
    noise: AffineGaussianNoise,
    effective_pixels: float,
    variance_table: FastCurveTable | None = None,
) -> Float[Array, "*b t"]:
    """Noisy recovery curves without images: ``recovery_curve_fast`` plus the curve-level noise.

    Each curve is ``F(t) + sqrt(var F(t)) z(t)`` with F from the fast table
    (Wåhlstrand Skärström et al. 2021, eq. 6) and
    ``var F = (S^2 / n_eff)(a + a' c~)`` (``curve_noise_variance``), which is the exact
    distribution of the ROI curve of ``simulate_image_sequences`` when ``c~`` is exact (always for
    a' = 0; otherwise give ``variance_table``). This is DeepFRAP's network input: 110 values,
    10 prebleach then 100 postbleach (Wåhlstrand Skärström et al. 2021).

    Arguments:
        key: typed PRNG key.
        params: ``FrapParams`` with leaves of any common batch shape (B,) (or scalars); D in px^2/s
            inside the table's range; beta = 1, gamma = ``table.gamma_px``.
        table: ``FastCurveTable`` of the ROI weights w (``build_fast_curve_table``).
        noise: ``AffineGaussianNoise`` with leaves of the same batch shape (or scalars).
        effective_pixels: n_eff of the ROI weights (``roi_effective_pixels(geometry)``).
        variance_table: optional ``FastCurveTable`` built on ``squared_weight_geometry(geometry)``
            for the exact a'-term; if None, ``c~ = F / S``.

    Returns:
        (B..., n_prebleach + n_postbleach) noisy curves.
    """
    _require_table_compatible(params, table)
    clean = _map_over_batch(lambda p: recovery_curve_fast(p, table), params)
    weighted = (
        None if variance_table is None else _map_over_batch(lambda p: recovery_curve_fast(p, variance_table), params)
    )
    roi_sum = jnp.asarray(table.roi_sum, clean.dtype)
    return add_curve_noise(key, clean, noise, effective_pixels, roi_sum, weighted)


def simulate_image_sequences(
    key: jax.Array,
    params: FrapParams,
    geometry: BleachGeometry,
    settings: FrapSettings = FrapSettings(),
    noise: AffineGaussianNoise = AffineGaussianNoise(0.0),
) -> Float[Array, "*b t n n"]:
    """Noisy FRAP image sequences: ``simulate_images`` plus per-pixel noise ``a + a' c``
    (Wåhlstrand Skärström et al. 2021, eq. 5).

    The DeepFRAP data pipeline (Wåhlstrand Skärström et al. 2021): the full spectral solver gives
    the recorded frames (prebleach then postbleach; bleach frames are not recorded), then every
    pixel of every frame gets independent Gaussian noise. ``recovery_curve_from_images`` turns the
    result into the network input. One FFT pair per frame on the (N + 2M)^2 grid per sample
    (use ``simulate_curves`` for training data).

    Arguments:
        key: typed PRNG key.
        params: ``FrapParams`` with leaves of any common batch shape (or scalars); D in px^2/s.
        geometry: ``BleachGeometry``.
        settings: ``FrapSettings`` (static).
        noise: ``AffineGaussianNoise`` with leaves of the same batch shape (or scalars); default no noise.

    Returns:
        (B..., n_prebleach + n_postbleach, N, N) noisy images.
    """
    clean = _map_over_batch(lambda p: simulate_images(p, geometry, settings), params)
    return noise.sample(key, clean)


def recovery_curve_from_images(
    images: Float[Array, "*b t n n"] | Float[np.ndarray, "*b t n n"], geometry: BleachGeometry
) -> Float[Array, "*b t"]:
    """ROI curve ``F(t) = sum_xy w(x, y) I(x, y, t)`` of image sequences
    (Wåhlstrand Skärström et al. 2021, eq. 6).

    Arguments:
        images: (..., T, N, N) images.
        geometry: ``BleachGeometry`` (its ``roi_weights`` w).

    Returns:
        (..., T) curve.
    """
    w = jnp.asarray(np.asarray(geometry.roi_weights), images.dtype)
    return jnp.einsum("...ij,ij->...", images, w)
