"""The exact estimator of single-molecule localization: spot detection, per-spot Poisson maximum
likelihood through the fitting engine, and Cramér-Rao bounds (Smith et al. 2010; Mortensen et al. 2010).

A stack of frames (camera counts) goes through four steps, each a function here:

1. the camera's counts become Poisson-equivalent data (``camera.poisson_equivalent``: equivalent
   counts ``d`` with ``d + shift ~ Poisson(scale photons + shift)``), and ``d / scale`` is the
   image in photons that the detector sees;
2. :func:`detect_spots`: a difference-of-Gaussians filter (the PSF-sized Gaussian minus a wider
   one that estimates the local background, as ThunderSTORM's DoG filter; Ovesny et al. 2014) of
   the sum of the planes, local maxima over 3 x 3 pixels above a threshold in multiples of the
   filtered image's noise s.d., the ``max_spots`` strongest per frame in a fixed-size list with a
   validity mask (one compilation for any content);
3. :func:`extract_rois`: k x k boxes (all planes) around the candidates by ``lax.dynamic_slice``;
   a box that would cross the frame's border is moved inside it (clamped), so spots near the
   border are kept, off-centre in their box; each box carries its origin (row, column);
4. :func:`fit_rois`: :func:`fluojax.fit.poisson_mle_batch` of the spot model
   (:class:`SpotModel`: one emitter on a flat background, :func:`fluojax.smlm.models.spot_expected`)
   in ROI-local coordinates, so one compiled fit serves every spot (the engine's ``args``, the
   ROI's pixel grid, are shared), then the Cramér-Rao bounds at the fitted parameters.

:func:`localize` chains them; :func:`refine` fits from given positions (a network's detections).
Parameters: ``theta = (x_nm, y_nm, z_nm, photons, background)`` for a 3D PSF and
``(x_nm, y_nm, photons, background)`` for a 2D one; x, y in nm from the ROI's outer corner while
fitting, then in frame nm (``+ (column, row) * pixel_nm`` of the ROI's origin); photons per focal
plane; background in photons per pixel. :func:`spot_crlb` is the CRLB of any PSF by autodiff
(:func:`fluojax.fit.poisson_crlb`), and :func:`mortensen_mle_variance` /
:func:`mortensen_lsq_variance` are the closed forms of Mortensen et al. 2010 for the 2D Gaussian.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from fluojax import fit
from fluojax.batching import map_padded
from fluojax.io import InputError
from fluojax.noise import Camera, IdealCamera
from fluojax.smlm.models import PSF, Astigmatic3D, Emitters, Grid, QuadPlane, pixel_grid, spot_expected

__all__ = [
    "Candidates",
    "Rois",
    "SpotArgs",
    "SpotFits",
    "SpotModel",
    "as_stack",
    "default_roi_size",
    "default_z_range",
    "detect_spots",
    "extract_rois",
    "fit_rois",
    "localize",
    "mortensen_lsq_variance",
    "mortensen_mle_variance",
    "refine",
    "spot_crlb",
]


# ----------------------------------------------------------------------------------------------
# Shapes, defaults
# ----------------------------------------------------------------------------------------------


def as_stack(frames: Float[ArrayLike, "*shape"], planes: int) -> Float[Array, "n planes ny nx"]:
    """Frames as a stack ``(n, planes, ny, nx)``.

    Accepted: ``(ny, nx)`` (one single-plane frame), ``(n, ny, nx)`` (single-plane stack, when
    ``planes`` is 1), ``(planes, ny, nx)`` (one multi-plane frame, when ``planes`` > 1) and
    ``(n, planes, ny, nx)``.

    Arguments:
        frames: image array.
        planes: focal planes of the PSF.

    Raises:
        InputError: a shape that fits none of these (e.g. the wrong plane count).
    """
    x = jnp.asarray(frames)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        if planes == 1:
            x = x[:, None]
        elif x.shape[0] == planes:
            x = x[None]
        else:
            raise InputError(f"a frame of {x.shape[0]} planes: the PSF has {planes}")
    elif x.ndim != 4:
        raise InputError(f"frames of {x.ndim} dimensions: expected (frames, planes, y, x), (frames, y, x) or (y, x)")
    if x.shape[1] != planes:
        raise InputError(f"frames of {x.shape[1]} planes: the PSF has {planes}")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise InputError(f"empty frames: shape {tuple(x.shape)}")
    return x


def default_roi_size(psf: PSF) -> int:
    """ROI side in pixels when none is given: 7 for a single-plane PSF (about +-2.5 s.d. of a
    130 nm PSF at 100 nm pixels), 9 for a multi-plane one (defocused planes are wider)."""
    return 7 if psf.planes == 1 else 9


def default_z_range(psf: PSF) -> tuple[float, float]:
    """Axial fit bounds in nm when none are given: 400 nm beyond the outer focal planes for a
    :class:`QuadPlane`; ``+-(c + d)`` (focal offset plus depth) for an :class:`Astigmatic3D`;
    (0, 0) for a 2D PSF.

    Raises:
        InputError: another 3D PSF kind (give the range).
    """
    if not psf.three_d:
        return (0.0, 0.0)
    if isinstance(psf, QuadPlane):
        return (min(psf.plane_z_nm) - 400.0, max(psf.plane_z_nm) + 400.0)
    if isinstance(psf, Astigmatic3D):
        r = psf.focal_offset_nm + psf.depth_nm
        return (-r, r)
    raise InputError(f"no default z range for the PSF {type(psf).__name__}: give z_range_nm")


def _check_roi(size: int, shape: tuple[int, int]) -> None:
    if size < 3 or size % 2 == 0:
        raise InputError(f"ROI of {size} pixels: must be odd and >= 3")
    if size > min(shape):
        raise InputError(f"ROI of {size} pixels is larger than the frame ({shape[0]} x {shape[1]} pixels)")


# ----------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------


class Candidates(NamedTuple):
    """Spot candidates, a fixed number per frame (padded; ``valid`` marks the real ones).

    Attributes:
        row, col: (n, K) pixel of each candidate's local maximum.
        score: (n, K) the filtered image there, photons (``-inf`` for padding).
        valid: (n, K) bools.
    """

    row: Int[Array, "n k"]
    col: Int[Array, "n k"]
    score: Float[Array, "n k"]
    valid: Bool[Array, "n k"]


def _gaussian_kernel(sigma_px: float) -> np.ndarray:
    radius = max(1, math.ceil(3.0 * sigma_px))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma_px) ** 2)
    return k / k.sum()


def _dog_kernel(sigma_px: float, ratio: float) -> np.ndarray:
    """2D kernel of G(sigma) - G(ratio sigma), both normalised to sum 1 (so a flat image filters to 0)."""
    wide = _gaussian_kernel(ratio * sigma_px)
    narrow = np.zeros_like(wide)
    r_w, r_n = wide.size // 2, _gaussian_kernel(sigma_px).size // 2
    narrow[r_w - r_n : r_w + r_n + 1] = _gaussian_kernel(sigma_px)
    return np.outer(narrow, narrow) - np.outer(wide, wide)


def _filter(images: Array, kernel: np.ndarray) -> Array:
    """``images`` (n, ny, nx) correlated with ``kernel``, edges extended (replicated)."""
    r = kernel.shape[0] // 2
    padded = jnp.pad(images, ((0, 0), (r, r), (r, r)), mode="edge")[:, None]
    out = jax.lax.conv_general_dilated(padded, jnp.asarray(kernel, images.dtype)[None, None], (1, 1), "VALID")
    return out[:, 0]


@partial(jax.jit, static_argnames=("sigma_px", "threshold", "max_spots", "background_ratio"))
def _detect(photons, sigma_px: float, threshold: float, max_spots: int, background_ratio: float):
    image = photons.sum(axis=1)  # (n, ny, nx): the sum of the planes
    kernel = _dog_kernel(sigma_px, background_ratio)
    filtered = _filter(image, kernel)
    n, ny, nx = filtered.shape
    flat = filtered.reshape(n, -1)
    mad = jnp.median(jnp.abs(flat - jnp.median(flat, axis=1, keepdims=True)), axis=1)
    poisson = jnp.sqrt(jnp.maximum(jnp.median(image.reshape(n, -1), axis=1), 1.0) * float(np.sum(kernel**2)))
    noise = jnp.maximum(1.4826 * mad, poisson)
    neighbourhood = jax.lax.reduce_window(filtered, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    peak = (filtered >= neighbourhood) & (filtered > threshold * noise[:, None, None])
    score = jnp.where(peak, filtered, -jnp.inf).reshape(n, -1)
    k = min(max_spots, ny * nx)
    value, index = jax.lax.top_k(score, k)
    if k < max_spots:
        value = jnp.pad(value, ((0, 0), (0, max_spots - k)), constant_values=-jnp.inf)
        index = jnp.pad(index, ((0, 0), (0, max_spots - k)))
    valid = jnp.isfinite(value)
    return Candidates(index // nx, index % nx, value, valid)


def detect_spots(
    photons: Float[ArrayLike, "n planes ny nx"],
    sigma_px: float,
    *,
    threshold: float = 5.0,
    max_spots: int = 64,
    background_ratio: float = 2.5,
    frames_per_call: int = 64,
) -> Candidates:
    """Spot candidates in every frame: local maxima of a difference-of-Gaussians filtered image.

    With ``I`` the sum of a frame's planes (photons), the filtered image is

        F = G_sigma * I - G_{r sigma} * I,

    (``G_s`` a normalised Gaussian of s.d. s pixels, r = ``background_ratio``; edges replicated),
    which is 0 on a flat background and peaks at ~``N / (4 pi sigma^2)`` on a spot of N photons
    of s.d. ``sigma`` pixels. A pixel is a candidate when it is the maximum of its 3 x 3
    neighbourhood and ``F > threshold * noise``, where ``noise`` is the larger of the robust s.d.
    of F over the frame (1.4826 x median absolute deviation) and the s.d. that Poisson noise of
    the frame's median (at least 1 photon) would give F (``sqrt(median sum_k w_k^2)``, w the
    kernel), so a noise-free frame does not turn rounding into candidates. The ``max_spots``
    strongest candidates of each frame are returned (padded, with a validity mask), so the
    detector compiles once for any content; jitted in calls of ``frames_per_call`` frames.

    Arguments:
        photons: (n, planes, ny, nx) images in photons (Poisson-equivalent counts / scale).
        sigma_px: s.d. of the PSF-matched Gaussian, pixels (static).
        threshold: multiples of the noise s.d. of F (static).
        max_spots: candidates per frame kept (static).
        background_ratio: width of the background Gaussian in units of ``sigma_px`` (static).
        frames_per_call: frames per compiled call.

    Returns:
        :class:`Candidates` of NumPy arrays, leaves (n, max_spots), strongest first.
    """
    photons = np.asarray(photons)
    per_call = max(1, min(int(frames_per_call), photons.shape[0]))
    return map_padded(
        lambda chunk, _count: _detect(
            jnp.asarray(chunk), float(sigma_px), float(threshold), int(max_spots), float(background_ratio)
        ),
        photons,
        per_call,
    )


# ----------------------------------------------------------------------------------------------
# ROIs
# ----------------------------------------------------------------------------------------------


class Rois(NamedTuple):
    """Boxes cut from frames.

    Attributes:
        data: (m, planes, k, k) pixel values.
        frame: (m,) index of the frame each box comes from.
        origin: (m, 2) (row, column) of the box's first pixel in its frame.
    """

    data: Float[Array, "m planes k k"]
    frame: Int[Array, " m"]
    origin: Int[Array, "m 2"]


@partial(jax.jit, static_argnames=("size",))
def extract_rois(
    stack: Float[ArrayLike, "n planes ny nx"],
    frame: Int[ArrayLike, " m"],
    row: Int[ArrayLike, " m"],
    col: Int[ArrayLike, " m"],
    size: int,
) -> Rois:
    """``size x size`` boxes, all planes, centred on pixels ``(row, col)`` of frames ``frame``.

    The box's first pixel is ``(row - size // 2, col - size // 2)`` clamped into
    ``[0, ny - size] x [0, nx - size]``: a box never leaves the frame; near the border it is
    shifted inwards and the spot sits off-centre in it.

    Arguments:
        stack: (n, planes, ny, nx) frames.
        frame, row, col: (m,) integer indices.
        size: box side, pixels (static, odd).

    Returns:
        :class:`Rois`.
    """
    stack = jnp.asarray(stack)
    _, planes, ny, nx = stack.shape
    half = size // 2
    r0 = jnp.clip(jnp.asarray(row) - half, 0, ny - size).astype(jnp.int32)
    c0 = jnp.clip(jnp.asarray(col) - half, 0, nx - size).astype(jnp.int32)
    f = jnp.asarray(frame).astype(jnp.int32)

    def one(fi, ri, ci):
        return jax.lax.dynamic_slice(stack, (fi, 0, ri, ci), (1, planes, size, size))[0]

    return Rois(jax.vmap(one)(f, r0, c0), f, jnp.stack([r0, c0], axis=-1))


# ----------------------------------------------------------------------------------------------
# The spot model
# ----------------------------------------------------------------------------------------------


class SpotArgs(NamedTuple):
    """The fit's shared ``args``: the ROI's pixel grid in ROI-local nm and the planes' drift.

    Attributes:
        grid: :class:`~fluojax.smlm.models.Grid` of a k x k box with its origin at (0, 0).
        drift_nm: (planes, 2) lateral image shift (dx, dy) of each plane, nm (zeros: none).
    """

    grid: Grid
    drift_nm: Float[Array, "planes 2"]


@dataclasses.dataclass(frozen=True)
class SpotModel:
    """One emitter on a flat background in a ROI: ``model(theta, args) -> (planes, k, k)`` photons.

    ``theta = (x, y, z, N, b)`` (3D PSF) or ``(x, y, N, b)`` (2D PSF): position in nm from the
    ROI's outer corner, photons per plane N, background b photons per pixel;
    ``mu = b + N P(x, y, z)`` (:func:`fluojax.smlm.models.spot_expected`). A frozen dataclass, so
    the engine's compiled fit is cached per PSF.

    Attributes:
        psf: the PSF kind.
    """

    psf: PSF

    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of theta's entries."""
        if self.psf.three_d:
            return ("x_nm", "y_nm", "z_nm", "photons", "background")
        return ("x_nm", "y_nm", "photons", "background")

    def position(self, theta: Float[Array, "*batch p"]) -> Float[Array, "*batch 3"]:
        """(x, y, z) of theta (z = 0 for a 2D PSF)."""
        if self.psf.three_d:
            return theta[..., :3]
        return jnp.concatenate([theta[..., :2], jnp.zeros_like(theta[..., :1])], axis=-1)

    def __call__(self, theta: Float[Array, " p"], args: SpotArgs) -> Float[Array, "planes k k"]:
        n, b = theta[-2], theta[-1]
        return spot_expected(self.psf, self.position(theta), n, b, args.grid, args.drift_nm)

    def value_and_jacobian(
        self, theta: Float[Array, " p"], args: SpotArgs
    ) -> tuple[Float[Array, "planes k k"], Float[Array, "planes k k p"]]:
        """The model and its Jacobian ``d mu / d theta`` from the separable factors.

        With ``mu_kij = (N E_y)_ki E_x,kj + b`` (:meth:`fluojax.smlm.models.PSF.factors`), the
        derivative by any of ``c = (x, y, [z], N)`` is the product rule on the two 1D factors,
        ``d(N E_y)/dc E_x + N E_y dE_x/dc``, and ``d mu / d b = 1``; the 1D derivatives (k values
        per plane) come from forward-mode autodiff of the factors. The fitting engine uses this
        instead of autodiff of the whole k x k model (:func:`fluojax.fit.poisson_mle`), which
        pushes every parameter's tangent through the outer product and costs several times
        more. The value is the same arithmetic as :meth:`__call__`.

        Arguments:
            theta: (P,) spot parameters (:attr:`param_names`).
            args: the ROI's :class:`SpotArgs`.

        Returns:
            ``(mu (planes, k, k), jacobian (planes, k, k, P))``.
        """

        def factors(coords):
            position = self.position(jnp.concatenate([coords, theta[-1:]]))
            one = Emitters(position[0:1], position[1:2], position[2:3], coords[-1:])
            ey, ex = self.psf.factors(one, args.grid, args.drift_nm)
            return (ey[0], ex[0]), (ey[0], ex[0])

        (d_ey, d_ex), (ey, ex) = jax.jacfwd(factors, has_aux=True)(theta[:-1])
        mu = ey[:, :, None] * ex[:, None, :] + theta[-1]
        jac = d_ey[:, :, None, :] * ex[:, None, :, None] + ey[:, :, None, None] * d_ex[:, None, :, :]
        return mu, jnp.concatenate([jac, jnp.ones(mu.shape + (1,), mu.dtype)], axis=-1)


def _spot_args(psf: PSF, size: int, pixel_nm: float, drift_nm) -> SpotArgs:
    drift = jnp.zeros((psf.planes, 2), jnp.float32) if drift_nm is None else jnp.asarray(drift_nm, jnp.float32)
    if drift.shape != (psf.planes, 2):
        raise InputError(f"plane drift of shape {tuple(drift.shape)}: expected ({psf.planes}, 2) nm")
    return SpotArgs(pixel_grid((size, size), pixel_nm), drift)


# ----------------------------------------------------------------------------------------------
# Cramér-Rao bounds
# ----------------------------------------------------------------------------------------------


def _camera_terms(camera: Camera | None, shape: tuple[int, ...]) -> tuple[Array, Array]:
    """(scale, shift) of the camera's Poisson-equivalent data for a block of ``shape`` (they do
    not depend on the counts)."""
    if camera is None:
        return jnp.ones(shape), jnp.zeros(shape)
    eq = camera.poisson_equivalent(jnp.zeros(shape))
    return jnp.broadcast_to(eq.scale, shape), jnp.broadcast_to(eq.shift, shape)


def _crlb_one(model: SpotModel, theta, args, scale, shift):
    return fit.poisson_crlb(model, theta, args, shift=shift, scale=scale)


def spot_crlb(
    psf: PSF,
    theta: Float[ArrayLike, "*batch p"],
    roi_size: int,
    pixel_nm: float,
    camera: Camera | None = None,
    drift_nm: Float[ArrayLike, "planes 2"] | None = None,
) -> Float[Array, "*batch p"]:
    """Cramér-Rao bound on the s.d. of every spot parameter, by autodiff, for any PSF.

    The data of a k x k ROI (all planes) are independent Poisson-equivalent counts of mean
    ``mu' = s mu(theta) + c`` (``mu`` the :class:`SpotModel`, scale s and shift c of the camera's
    Poisson-equivalent data; s = 1, c = 0 without a camera), so the Fisher information is
    ``I = J^T diag(1 / mu') J`` with ``J = d mu' / d theta`` (:func:`fluojax.fit.poisson_crlb`),
    and the bound is ``sqrt(diag(I^-1))``. An EMCCD's scale 1/2 doubles the variance (the
    excess noise factor; Mortensen et al. 2010).

    Arguments:
        psf: the PSF kind.
        theta: (..., P) spot parameters, x, y in nm from the ROI's outer corner
            (``roi_size * pixel_nm / 2`` is the centre).
        roi_size: k, pixels.
        pixel_nm: pixel size, nm.
        camera: None (ideal counting) or a camera whose calibration broadcasts to
            (planes, k, k) (an sCMOS camera needs maps of the ROI's shape).
        drift_nm: optional (planes, 2) plane drift, nm.

    Returns:
        (..., P) bounds in the units of theta.
    """
    model = SpotModel(psf)
    args = _spot_args(psf, roi_size, pixel_nm, drift_nm)
    scale, shift = _camera_terms(camera, (psf.planes, roi_size, roi_size))
    theta = jnp.asarray(theta, jnp.result_type(jnp.asarray(theta).dtype, jnp.float32))
    flat = theta.reshape(-1, theta.shape[-1])
    m = flat.shape[0]
    out = _crlbs(
        model, flat, args, jnp.broadcast_to(scale, (m, *scale.shape)), jnp.broadcast_to(shift, (m, *shift.shape))
    )
    return out.reshape(theta.shape)


def _mortensen_integral(tau: Array) -> Array:
    """``int_0^1 ln t / (1 + t / tau) dt`` by 64-point Gauss-Legendre after ``t = s^2``
    (integrand ``4 s ln s / (1 + s^2 / tau)``, smooth on [0, 1])."""
    nodes, weights = np.polynomial.legendre.leggauss(64)
    s = jnp.asarray(0.5 * (nodes + 1.0))
    w = jnp.asarray(0.5 * weights)
    tau = jnp.asarray(tau)[..., None]
    return jnp.sum(w * 4.0 * s * jnp.log(s) / (1.0 + s**2 / tau), axis=-1)


def _mortensen_terms(sigma_nm, pixel_nm, photons, background) -> tuple[Array, Array]:
    """``(s_a^2, tau)`` of Mortensen et al. 2010: ``s_a^2 = s^2 + a^2 / 12`` (nm^2) and
    ``tau = 2 pi s_a^2 b / (N a^2)`` (dimensionless)."""
    sa2 = jnp.asarray(sigma_nm) ** 2 + jnp.asarray(pixel_nm) ** 2 / 12.0
    return sa2, 2.0 * jnp.pi * sa2 * jnp.asarray(background) / (jnp.asarray(photons) * jnp.asarray(pixel_nm) ** 2)


def mortensen_mle_variance(
    sigma_nm: Float[ArrayLike, "*b"],
    pixel_nm: Float[ArrayLike, "*b"],
    photons: Float[ArrayLike, "*b"],
    background: Float[ArrayLike, "*b"],
    emccd: bool = False,
) -> Float[Array, "*b"]:
    """Variance (nm^2) of the MLE of x for a 2D Gaussian spot (Mortensen et al. 2010, eq. 5):

        var = (s_a^2 / N) [1 + int_0^1 ln t / (1 + t / tau) dt]^-1,
        s_a^2 = s^2 + a^2 / 12,    tau = 2 pi s_a^2 b / (N a^2),

    with s the PSF s.d., a the pixel size, N the photons, b the background photons per pixel;
    times 2 for an EMCCD (excess noise factor). It is the CRLB of a Gaussian of variance s_a^2
    on an infinite, continuous detector: an approximation of the pixel-integrated model.

    Arguments:
        sigma_nm, pixel_nm, photons, background: as above (broadcast).
        emccd: double the variance.
    """
    sa2, tau = _mortensen_terms(sigma_nm, pixel_nm, photons, background)
    var = sa2 / jnp.asarray(photons) / (1.0 + _mortensen_integral(jnp.maximum(tau, 1e-30)))
    return 2.0 * var if emccd else var


def mortensen_lsq_variance(
    sigma_nm: Float[ArrayLike, "*b"],
    pixel_nm: Float[ArrayLike, "*b"],
    photons: Float[ArrayLike, "*b"],
    background: Float[ArrayLike, "*b"],
    emccd: bool = False,
) -> Float[Array, "*b"]:
    """Variance (nm^2) of the unweighted least-squares estimate of x for a 2D Gaussian spot
    (Mortensen et al. 2010, eq. 4):

        var = (s_a^2 / N) (16/9 + 8 pi s_a^2 b / (N a^2)),   s_a^2 = s^2 + a^2 / 12,

    symbols as in :func:`mortensen_mle_variance`; times 2 for an EMCCD.

    Arguments:
        sigma_nm, pixel_nm, photons, background: as above (broadcast).
        emccd: double the variance.
    """
    sa2, tau = _mortensen_terms(sigma_nm, pixel_nm, photons, background)
    var = sa2 / jnp.asarray(photons) * (16.0 / 9.0 + 4.0 * tau)  # 8 pi s_a^2 b / (N a^2) = 4 tau
    return 2.0 * var if emccd else var


# ----------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------


class SpotFits(NamedTuple):
    """Per-spot maximum-likelihood fits (NumPy arrays of length m; NaN where a fit failed).

    Attributes:
        frame: (m,) frame index (0-based).
        x_nm, y_nm: position in the frame, nm (origin at the outer corner of the first pixel).
        z_nm: axial position, nm (NaN for a 2D PSF).
        photons: photons per focal plane.
        background: photons per pixel.
        crlb_x_nm, crlb_y_nm, crlb_z_nm, crlb_photons, crlb_background: Cramér-Rao bounds (s.d.)
            at the fitted parameters (:func:`spot_crlb`; NaN z for 2D).
        status: (m,) :class:`fluojax.fit.Status` codes.
        num_steps: (m,) iterations.
        deviance: (m,) Poisson deviance per degree of freedom at the fit (~1 for a good model).
    """

    frame: Int[np.ndarray, " m"]
    x_nm: Float[np.ndarray, " m"]
    y_nm: Float[np.ndarray, " m"]
    z_nm: Float[np.ndarray, " m"]
    photons: Float[np.ndarray, " m"]
    background: Float[np.ndarray, " m"]
    crlb_x_nm: Float[np.ndarray, " m"]
    crlb_y_nm: Float[np.ndarray, " m"]
    crlb_z_nm: Float[np.ndarray, " m"]
    crlb_photons: Float[np.ndarray, " m"]
    crlb_background: Float[np.ndarray, " m"]
    status: Int[np.ndarray, " m"]
    num_steps: Int[np.ndarray, " m"]
    deviance: Float[np.ndarray, " m"]


@partial(jax.jit, static_argnames=("model", "z_starts"))
def _start_values(model: SpotModel, photons, scale, shift, args: SpotArgs, position, z_starts: tuple[float, ...]):
    """Start values of every ROI: background from the median of the box's edge pixels, photons
    from the sum above it, (x, y) from ``position`` where finite, else the centroid; z from
    ``position`` where finite, else the member of ``z_starts`` of least Poisson deviance."""
    m, planes, k, _ = photons.shape
    edge = jnp.concatenate(
        [photons[..., 0, :], photons[..., -1, :], photons[..., 1:-1, 0], photons[..., 1:-1, -1]], axis=-1
    ).reshape(m, -1)
    b0 = jnp.maximum(jnp.median(edge, axis=-1), 0.01)
    signal = jnp.maximum(photons - b0[:, None, None, None], 0.0)
    total = signal.sum(axis=(1, 2, 3))
    n0 = jnp.maximum(total / planes, 10.0)
    profile_x = signal.sum(axis=(1, 2))
    profile_y = signal.sum(axis=(1, 3))
    centre = 0.5 * k * args.grid.pixel_nm
    safe = jnp.where(total > 0, total, 1.0)
    cx = jnp.where(total > 0, profile_x @ args.grid.x_nm / safe, centre)
    cy = jnp.where(total > 0, profile_y @ args.grid.y_nm / safe, centre)
    x0 = jnp.where(jnp.isfinite(position[:, 0]), position[:, 0], cx)
    y0 = jnp.where(jnp.isfinite(position[:, 1]), position[:, 1], cy)
    if not model.psf.three_d:
        return jnp.stack([x0, y0, n0, b0], axis=-1)
    zs = jnp.asarray(z_starts, photons.dtype)

    def deviance(theta, data, sc, sh):
        mu = jnp.maximum(sc * model(theta, args) + sh, 1e-6)
        y = jnp.maximum(data * sc + sh, 0.0)
        return jnp.sum(mu - y + jax.scipy.special.xlogy(y, y / mu))

    def best_z(x, y, n, b, data, sc, sh):
        dev = jax.vmap(lambda z: deviance(jnp.stack([x, y, z, n, b]), data, sc, sh))(zs)
        return zs[jnp.argmin(dev)]

    zg = jax.vmap(best_z)(x0, y0, n0, b0, photons, scale, shift)
    z0 = jnp.where(jnp.isfinite(position[:, 2]), position[:, 2], zg)
    return jnp.stack([x0, y0, z0, n0, b0], axis=-1)


@partial(jax.jit, static_argnames=("model",))
def _crlbs(model: SpotModel, theta, args, scale, shift):
    good = jnp.all(jnp.isfinite(theta), axis=-1)
    safe = jnp.where(good[:, None], theta, jnp.ones_like(theta))
    out = jax.vmap(lambda t, sc, sh: _crlb_one(model, t, args, sc, sh))(safe, scale, shift)
    return jnp.where(good[:, None], out, jnp.nan)


def fit_rois(
    counts: Float[ArrayLike, "m planes k k"],
    psf: PSF,
    pixel_nm: float,
    *,
    shift: Float[ArrayLike, "m planes k k"] | None = None,
    scale: Float[ArrayLike, "m planes k k"] | None = None,
    position_nm: Float[ArrayLike, "m 3"] | None = None,
    z_range_nm: tuple[float, float] | None = None,
    z_starts: int = 7,
    drift_nm: Float[ArrayLike, "planes 2"] | None = None,
    chunk: int | None = None,
    solver: fit.PoissonLevenbergMarquardt | None = None,
) -> tuple[np.ndarray, np.ndarray, fit.FitResult]:
    """Poisson maximum-likelihood fit of one emitter in each ROI, in ROI-local coordinates.

    Maximises ``sum_k y_k ln mu_k - mu_k`` over the ROI's pixels and planes with
    ``y = counts + shift``, ``mu = scale * SpotModel(theta) + shift`` (Smith et al. 2010; the
    camera's Poisson-equivalent data, Huang et al. 2013 for sCMOS, Mortensen et al. 2010 for an
    EMCCD) by :func:`fluojax.fit.poisson_mle_batch`. Bounds: x, y within one pixel beyond the
    ROI, z in ``z_range_nm``, photons >= 1, background >= 0. Start values: see the module
    (centroid and edge median; for a 3D PSF, z from ``position_nm`` or the best of ``z_starts``
    values evenly spaced over the z range by Poisson deviance: quad-plane z has more than one
    basin).

    Arguments:
        counts: (m, planes, k, k) Poisson-equivalent counts (photons for an ideal camera).
        psf: the PSF kind.
        pixel_nm: pixel size, nm.
        shift, scale: (m, planes, k, k) of the camera's Poisson-equivalent data (None: 0 and 1).
        position_nm: optional (m, 3) start positions in ROI-local nm (NaN entries: estimated).
        z_range_nm: axial bounds (default :func:`default_z_range`).
        z_starts: number of z values tried for the start.
        drift_nm: optional (planes, 2) lateral shift of each plane's image, nm.
        chunk: spots per compiled call of the engine.
        solver: engine settings (default :class:`fluojax.fit.PoissonLevenbergMarquardt`).

    Returns:
        ``(theta, crlb, result)``: (m, P) fitted parameters (ROI-local; NaN where failed),
        (m, P) Cramér-Rao bounds at them, and the engine's ``FitResult``.
    """
    counts = np.asarray(counts, np.float32)
    m, planes, k, k2 = counts.shape
    if planes != psf.planes or k != k2:
        raise InputError(f"ROIs of shape {counts.shape[1:]}: expected ({psf.planes}, k, k)")
    shift_a = np.zeros_like(counts) if shift is None else np.broadcast_to(np.asarray(shift, np.float32), counts.shape)
    scale_a = np.ones_like(counts) if scale is None else np.broadcast_to(np.asarray(scale, np.float32), counts.shape)
    model = SpotModel(psf)
    args = _spot_args(psf, k, pixel_nm, drift_nm)
    z_lo, z_hi = default_z_range(psf) if z_range_nm is None else z_range_nm
    pos = np.full((m, 3), np.nan, np.float32) if position_nm is None else np.asarray(position_nm, np.float32)
    photons = counts / np.where(scale_a > 0, scale_a, 1.0)
    zs = tuple(float(z) for z in np.linspace(z_lo, z_hi, max(1, int(z_starts))))
    init = np.asarray(_start_values(model, jnp.asarray(photons), scale_a, shift_a, args, jnp.asarray(pos), zs))
    width = k * float(pixel_nm)
    lower = [-float(pixel_nm), -float(pixel_nm)] + ([z_lo] if psf.three_d else []) + [1.0, 0.0]
    upper = [width + pixel_nm, width + pixel_nm] + ([z_hi] if psf.three_d else []) + [np.inf, np.inf]
    if psf.three_d and not z_lo < z_hi:
        raise InputError(f"z range {z_lo} to {z_hi} nm: the low end must be below the high end")
    options: dict[str, Any] = {"lower": np.asarray(lower), "upper": np.asarray(upper)}
    if solver is not None:
        options["solver"] = solver
    # an absent shift / scale goes to the engine as None (0 and 1 inside its compiled chunk)
    result = fit.poisson_mle_batch(
        model,
        counts,
        init,
        args,
        shift=None if shift is None else shift_a,
        scale=None if scale is None else scale_a,
        chunk=chunk,
        **options,
    )
    theta = np.asarray(result.params, np.float64)
    crlb = np.asarray(_crlbs(model, jnp.asarray(theta, jnp.float32), args, scale_a, shift_a), np.float64)
    return theta, crlb, result


def _to_table(psf: PSF, pixel_nm: float, rois: Rois, theta, crlb, result: fit.FitResult) -> SpotFits:
    origin = np.asarray(rois.origin, np.float64)
    nan = np.full(theta.shape[0], np.nan)
    three = psf.three_d
    return SpotFits(
        np.asarray(rois.frame, np.int64),
        theta[:, 0] + origin[:, 1] * pixel_nm,
        theta[:, 1] + origin[:, 0] * pixel_nm,
        theta[:, 2] if three else nan,
        theta[:, -2],
        theta[:, -1],
        crlb[:, 0],
        crlb[:, 1],
        crlb[:, 2] if three else nan,
        crlb[:, -2],
        crlb[:, -1],
        np.asarray(result.status, np.int32),
        np.asarray(result.num_steps, np.int32),
        np.asarray(result.chi2_reduced, np.float64),
    )


def _equivalent_stack(frames, psf: PSF, camera: Camera):
    stack = as_stack(frames, psf.planes).astype(jnp.float32)
    eq = camera.poisson_equivalent(stack)
    counts = jnp.asarray(eq.counts, jnp.float32)
    shift = jnp.broadcast_to(jnp.asarray(eq.shift, jnp.float32), counts.shape)
    scale = jnp.broadcast_to(jnp.asarray(eq.scale, jnp.float32), counts.shape)
    return counts, shift, scale


def _fit_candidates(counts, shift, scale, frame, row, col, position_frame_nm, psf, pixel_nm, roi_size, **fit_options):
    rois = extract_rois(counts, frame, row, col, roi_size)
    sh = extract_rois(shift, frame, row, col, roi_size).data
    sc = extract_rois(scale, frame, row, col, roi_size).data
    local = None
    if position_frame_nm is not None:
        origin = np.asarray(rois.origin, np.float64)
        local = np.asarray(position_frame_nm, np.float64).copy()
        local[:, 0] -= origin[:, 1] * pixel_nm
        local[:, 1] -= origin[:, 0] * pixel_nm
    theta, crlb, result = fit_rois(rois.data, psf, pixel_nm, shift=sh, scale=sc, position_nm=local, **fit_options)
    return _to_table(psf, pixel_nm, rois, theta, crlb, result)


def _empty(psf: PSF) -> SpotFits:
    f = np.zeros(0)
    i = np.zeros(0, np.int32)
    return SpotFits(np.zeros(0, np.int64), f, f, f, f, f, f, f, f, f, f, i, i, f)


def _filter_sigma_px(psf: PSF, pixel_nm: float, z_range: tuple[float, float]) -> float:
    """Detector scale: the smallest Gaussian s.d. of the PSF (any plane, x or y) at the middle of
    the z range, in pixels."""
    sx, sy = psf.widths(jnp.asarray(0.5 * (z_range[0] + z_range[1])))
    return float(jnp.minimum(sx.min(), sy.min())) / pixel_nm


def localize(
    frames: Float[ArrayLike, "*shape"],
    psf: PSF,
    pixel_nm: float,
    *,
    camera: Camera = IdealCamera(),
    roi_size: int | None = None,
    threshold: float = 5.0,
    max_spots: int = 64,
    z_range_nm: tuple[float, float] | None = None,
    z_starts: int = 7,
    drift_nm: Float[ArrayLike, "planes 2"] | None = None,
    chunk: int | None = None,
    solver: fit.PoissonLevenbergMarquardt | None = None,
) -> SpotFits:
    """Localize every molecule of a stack: detect, cut ROIs, fit each by Poisson MLE, bound it.

    ``frames`` (camera counts, ADU) -> ``camera.poisson_equivalent`` -> :func:`detect_spots` on
    ``counts / scale`` (photons) -> :func:`extract_rois` -> :func:`fit_rois` -> positions in frame
    nm with their Cramér-Rao bounds (:class:`SpotFits`, one row per candidate; failed fits have
    NaN values and their status).

    Arguments:
        frames: (n, planes, ny, nx), (n, ny, nx) for a 2D PSF, (planes, ny, nx) or (ny, nx).
        psf: the PSF kind.
        pixel_nm: pixel size, nm.
        camera: the camera that recorded the counts (ideal: counts are photo-electrons).
        roi_size: ROI side in pixels, odd (default :func:`default_roi_size`).
        threshold: detection threshold in multiples of the filtered image's noise s.d.
        max_spots: candidates kept per frame (the strongest).
        z_range_nm: axial bounds (default :func:`default_z_range`).
        z_starts: z values tried for the start of a 3D fit.
        drift_nm: optional (planes, 2) lateral shift of each plane's image, nm.
        chunk: spots per compiled fit call.
        solver: engine settings.

    Returns:
        :class:`SpotFits`.
    """
    if not pixel_nm > 0:
        raise InputError(f"pixel size {pixel_nm} nm: must be > 0")
    size = default_roi_size(psf) if roi_size is None else int(roi_size)
    counts, shift, scale = _equivalent_stack(frames, psf, camera)
    _check_roi(size, (counts.shape[2], counts.shape[3]))
    z_range = default_z_range(psf) if z_range_nm is None else z_range_nm
    photons = counts / jnp.where(scale > 0, scale, 1.0)
    cand = detect_spots(photons, _filter_sigma_px(psf, pixel_nm, z_range), threshold=threshold, max_spots=max_spots)
    valid = np.asarray(cand.valid)
    frame = np.broadcast_to(np.arange(valid.shape[0])[:, None], valid.shape)[valid]
    if frame.size == 0:
        return _empty(psf)
    return _fit_candidates(
        counts,
        shift,
        scale,
        frame,
        np.asarray(cand.row)[valid],
        np.asarray(cand.col)[valid],
        None,
        psf,
        pixel_nm,
        size,
        z_range_nm=z_range,
        z_starts=z_starts,
        drift_nm=drift_nm,
        chunk=chunk,
        solver=solver,
    )


def refine(
    frames: Float[ArrayLike, "*shape"],
    frame: Int[ArrayLike, " m"],
    x_nm: Float[ArrayLike, " m"],
    y_nm: Float[ArrayLike, " m"],
    psf: PSF,
    pixel_nm: float,
    *,
    z_nm: Float[ArrayLike, " m"] | None = None,
    camera: Camera = IdealCamera(),
    roi_size: int | None = None,
    z_range_nm: tuple[float, float] | None = None,
    z_starts: int = 7,
    drift_nm: Float[ArrayLike, "planes 2"] | None = None,
    chunk: int | None = None,
    solver: fit.PoissonLevenbergMarquardt | None = None,
) -> SpotFits:
    """The fit of :func:`localize` from given candidates (e.g. a network's detections).

    Each candidate's ROI is centred on the pixel holding ``(x_nm, y_nm)`` (clamped inside the
    frame); the fit starts at the given position (z: the given one, or the best of ``z_starts``
    where it is None or NaN). Positions in frame nm (origin at the first pixel's outer corner).

    Arguments:
        frames: as for :func:`localize`.
        frame: (m,) 0-based frame index of each candidate.
        x_nm, y_nm: (m,) candidate positions, nm.
        psf, pixel_nm, camera, roi_size, z_range_nm, z_starts, drift_nm, chunk, solver: as for
            :func:`localize`.
        z_nm: optional (m,) start z, nm (3D PSFs).

    Returns:
        :class:`SpotFits`, one row per candidate, in the order given.
    """
    if not pixel_nm > 0:
        raise InputError(f"pixel size {pixel_nm} nm: must be > 0")
    size = default_roi_size(psf) if roi_size is None else int(roi_size)
    counts, shift, scale = _equivalent_stack(frames, psf, camera)
    n, _, ny, nx = counts.shape
    _check_roi(size, (ny, nx))
    f = np.asarray(frame, np.int64).reshape(-1)
    x = np.asarray(x_nm, np.float64).reshape(-1)
    y = np.asarray(y_nm, np.float64).reshape(-1)
    if not (f.shape == x.shape == y.shape):
        raise InputError(f"candidate columns of lengths {f.size}, {x.size}, {y.size}: must be equal")
    if f.size == 0:
        return _empty(psf)
    if f.min() < 0 or f.max() >= n:
        raise InputError(
            f"candidate frame {int(f.max() if f.max() >= n else f.min())}: the stack has frames 0 to {n - 1}"
        )
    z = np.full_like(x, np.nan) if z_nm is None else np.asarray(z_nm, np.float64).reshape(-1)
    if not np.all(np.isfinite(x) & np.isfinite(y)):
        raise InputError("candidate positions must be finite")
    row = np.clip(np.floor(y / pixel_nm), 0, ny - 1).astype(np.int32)
    col = np.clip(np.floor(x / pixel_nm), 0, nx - 1).astype(np.int32)
    return _fit_candidates(
        counts,
        shift,
        scale,
        f,
        row,
        col,
        np.stack([x, y, z], axis=-1),
        psf,
        pixel_nm,
        size,
        z_range_nm=z_range_nm,
        z_starts=z_starts,
        drift_nm=drift_nm,
        chunk=chunk,
        solver=solver,
    )
