"""FRAP forward models: a spectral solver of the 2D diffusion equation with bleach frames.

The model is the numerical FRAP model of DeepFRAP (Wåhlstrand Skärström et al. 2021, J. Microsc.
282:146; originally Röding et al. 2019, Biophys. J. 116:1348, code ``roding/frap_matlab``; the
units and conventions are summarised in docs/frap.md, "1. Model and units"):

* Concentration ``c(x, y, t)`` of fluorescent molecules (dimensionless intensity units; c0 before
  bleaching) obeys ``dc/dt = D (d^2/dx^2 + d^2/dy^2) c`` (Wåhlstrand Skärström et al. 2021, eq. 2)
  on a periodic square of
  ``L = N + 2M`` pixels: the ``N x N`` image plus a padding of ``M`` pixels on each side.
* In Fourier space every mode is an independent ODE, ``d c^(xi, eta)/dt = -(xi^2 + eta^2) D c^``
  (Wåhlstrand Skärström et al. 2021, eq. 3), solved exactly over one frame interval ``dt``:
  ``c^(t + dt) = exp(-(xi^2 + eta^2) D dt) c^(t)`` (Wåhlstrand Skärström et al. 2021, eq. 4), with
  ``xi = 2 pi k / L`` for the integer ``k`` of the FFT (the continuous Laplacian symbol, not a
  finite-difference stencil). D is in pixel^2/s internally; ``d_um2_s_to_px2_s`` /
  ``d_px2_s_to_um2_s`` convert.
* Bleaching is a pointwise multiplication in real space by ``m = 1 - (1 - alpha) B``: ``alpha``
  (the fraction left after one bleach frame) inside the bleach region, 1 outside
  (Wåhlstrand Skärström et al. 2021, eq. 1).
  ``B`` is the area-fraction indicator of the region (anti-aliased), optionally blurred by a
  Gaussian of standard deviation ``gamma`` pixels (finite bleach resolution).
* Frame order (as in ``frap_matlab/signal_d.m``): every frame — prebleach, bleach or postbleach —
  first diffuses the mobile field for ``dt`` (eq. 4) and then multiplies both the mobile and the
  immobile field by that frame's mask. Prebleach and postbleach frames use the imaging mask
  (``beta`` inside the ``N x N`` window, 1 in the padding: bleaching during imaging) and are
  recorded; bleach frames use bleach mask times imaging mask and are **not** recorded. Time runs
  during bleach frames, so the first postbleach frame comes ``(n_bleach + 1) dt`` after the last
  prebleach frame, and ``alpha`` is applied once per bleach frame (depth ~ alpha^n_bleach for slow
  D).
* Mobile fraction ``phi``: the field starts as ``phi c0`` (mobile, diffusing) plus
  ``(1 - phi) c0`` (immobile, only bleached).
* Recovery curve (Wåhlstrand Skärström et al. 2021, eq. 6): ``F(t) = sum_xy w(x, y) c(x, y, t)``
  with ``w`` the area-fraction indicator of the *unblurred* bleach region over the ``N x N`` image,
  normalised to sum 1 (or any user ROI weights). Prebleach and postbleach values are returned
  together (``n_prebleach + n_postbleach`` values; 10 + 100 = 110 in DeepFRAP).

Three evaluators of the same model:

``simulate_images`` / ``recovery_curve``
    The full solver: one real FFT pair per frame. Handles every parameter including ``beta``.
``recovery_curve_spectral``
    Exact (to rounding) recovery curve for ``beta = 1`` without an FFT per postbleach frame: the
    curve is linear in c0 and phi, a polynomial of degree ``n_bleach`` in alpha whose coefficient
    fields are propagated through the bleach frames with FFTs, and after the last bleach frame every
    postbleach value is a sum of decaying exponentials ``sum_lambda W(lambda) exp(-D lambda t)``
    over the distinct values lambda of ``|xi|^2`` (ROI mean = spectrum dot product, Parseval).
``recovery_curve_fast`` (with ``build_fast_curve_table``)
    For training and fitting: the alpha-polynomial coefficient curves of the spectral evaluator are
    tabulated once at Chebyshev nodes in ``log D``; a curve is then a Chebyshev sum plus a
    polynomial, exact in c0, alpha and phi and interpolated in D (error estimate in the table).

All evaluators are pure JAX functions of pytrees: jit-, vmap- and grad-able in D, c0, alpha, phi,
beta (full solver) and gamma (full and spectral solvers). Static settings (grid, frame counts, dt)
live in the hashable ``FrapSettings``; region shapes are host-side (NumPy) constructions.

Measurement noise (variance ``a + a' c`` per pixel, Wåhlstrand Skärström et al. 2021, eq. 5) is not
part of these models.

Pixel coordinates: image pixel ``(row i, column j)`` covers ``[j, j + 1] x [i, i + 1]``, so the
default centre ``(N/2, N/2)`` lies on the corner shared by the four central pixels (as in
``frap_matlab``, whose pixel i spans ``[i - 1, i]``); pixel centres are at ``j + 1/2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from jaxtyping import Array, Float, Shaped

from fluojax.io import InputError

__all__ = [
    "DEEPFRAP_DT_S",
    "DEEPFRAP_D_UM2_S",
    "DEEPFRAP_PIXEL_UM",
    "DEEPFRAP_RADIUS_PX",
    "BleachGeometry",
    "FastCurveTable",
    "FrapParams",
    "FrapSettings",
    "build_fast_curve_table",
    "circular_region",
    "custom_region",
    "d_px2_s_to_um2_s",
    "d_um2_s_to_px2_s",
    "recovery_curve",
    "recovery_curve_fast",
    "recovery_curve_spectral",
    "rectangular_region",
    "simulate_images",
]

DEEPFRAP_PIXEL_UM = 0.7598
"""Pixel size of the DeepFRAP data, um (0.7598 um, 194.5 um field of view;
Wåhlstrand Skärström et al. 2021)."""
DEEPFRAP_D_UM2_S = (1.0, 1000.0)
"""DeepFRAP's prior range of D, um^2/s (1e-12 to 1e-9 m^2/s; Wåhlstrand Skärström et al. 2021,
Table 1)."""
DEEPFRAP_DT_S = 0.265
"""Frame interval of the DeepFRAP data, s."""
DEEPFRAP_RADIUS_PX = 15.0 / DEEPFRAP_PIXEL_UM
"""Bleach radius of the DeepFRAP data in pixels (30 um diameter): 19.742 px."""


def d_um2_s_to_px2_s(d_um2_s: Float[ArrayLike, "*b"], pixel_size_um: float = DEEPFRAP_PIXEL_UM) -> Any:
    """Convert a diffusion coefficient from um^2/s to pixel^2/s: ``D_px = D_um / dx^2``.

    Arguments:
        d_um2_s: array or float, D in um^2/s.
        pixel_size_um: float, pixel side dx in um (default: DeepFRAP's 0.7598 um).

    Returns:
        D in pixel^2/s, same shape.
    """
    return d_um2_s / pixel_size_um**2


def d_px2_s_to_um2_s(d_px2_s: Float[ArrayLike, "*b"], pixel_size_um: float = DEEPFRAP_PIXEL_UM) -> Any:
    """Convert a diffusion coefficient from pixel^2/s to um^2/s: ``D_um = D_px dx^2``.

    Arguments:
        d_px2_s: array or float, D in pixel^2/s.
        pixel_size_um: float, pixel side dx in um (default: DeepFRAP's 0.7598 um).

    Returns:
        D in um^2/s, same shape.
    """
    return d_px2_s * pixel_size_um**2


# ----------------------------------------------------------------------------------------------
# Settings, parameters, geometry
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrapSettings:
    """Static settings of the solver (hashable; pass as a static argument under jit).

    Defaults are DeepFRAP's (Wåhlstrand Skärström et al. 2021): 256 x 256 images, padding 128, 10
    prebleach, 4 bleach and 100 postbleach frames, 0.265 s between frames.

    Attributes:
        n_pixels: int, image side N in pixels.
        pad: int, padding M in pixels on each side; the periodic grid has side ``L = N + 2M``.
        n_prebleach: int, recorded frames before bleaching.
        n_bleach: int, bleach frames (each: diffuse for dt, then multiply by the bleach mask;
            never recorded).
        n_postbleach: int, recorded frames after bleaching.
        dt_s: float, time between consecutive frames in s (also the duration of a bleach frame).
    """

    n_pixels: int = 256
    pad: int = 128
    n_prebleach: int = 10
    n_bleach: int = 4
    n_postbleach: int = 100
    dt_s: float = DEEPFRAP_DT_S

    @property
    def grid_size(self) -> int:
        """Side ``L = N + 2M`` of the periodic computational grid."""
        return self.n_pixels + 2 * self.pad

    @property
    def n_frames(self) -> int:
        """Number of recorded frames, ``n_prebleach + n_postbleach``."""
        return self.n_prebleach + self.n_postbleach

    def frame_times_s(self) -> Float[np.ndarray, " t"]:
        """Times of the recorded frames in s, counted from the start (uniform state at t = 0).

        Prebleach frame i (1-based) is at ``i dt``; the last bleach frame ends at
        ``(n_prebleach + n_bleach) dt``; postbleach frame j at ``(n_prebleach + n_bleach + j) dt``.
        """
        pre = np.arange(1, self.n_prebleach + 1)
        post = self.n_prebleach + self.n_bleach + np.arange(1, self.n_postbleach + 1)
        return np.concatenate([pre, post]).astype(np.float64) * self.dt_s

    def postbleach_times_s(self) -> Float[np.ndarray, " t_post"]:
        """Times of the postbleach frames in s after the end of the last bleach frame: ``j dt``."""
        return np.arange(1, self.n_postbleach + 1, dtype=np.float64) * self.dt_s


class FrapParams(NamedTuple):
    """Physical parameters of the pure-diffusion FRAP model (names as in ``frap_matlab``).

    Attributes:
        d_px2_s: D, diffusion coefficient in pixel^2/s (``d_um2_s_to_px2_s`` converts).
        c0: initial (prebleach) concentration, dimensionless intensity units.
        alpha: bleach parameter, fraction of the concentration left inside the bleach region after
            one bleach frame (Wåhlstrand Skärström et al. 2021, eq. 1); applied once per bleach
            frame. In (0, 1].
        mobile_fraction: phi in [0, 1]; the immobile part ``(1 - phi) c0`` never diffuses but is
            bleached by the same masks. Default 1 (DeepFRAP).
        beta: fraction left per recorded or bleach frame by imaging bleach, applied inside the
            ``N x N`` imaged window only (1 in the padding). Default 1 (no imaging bleach).
        gamma_px: standard deviation, in pixels, of the Gaussian blur of the bleach mask (finite
            bleach resolution). Default 0 (sharp mask).
    """

    d_px2_s: jax.Array | float
    c0: jax.Array | float
    alpha: jax.Array | float
    mobile_fraction: jax.Array | float = 1.0
    beta: jax.Array | float = 1.0
    gamma_px: jax.Array | float = 0.0


class BleachGeometry(NamedTuple):
    """Bleach region and recovery-curve weights on the ``N x N`` image (a pytree of arrays).

    Attributes:
        indicator: (N, N) array in [0, 1], area fraction of each pixel inside the bleach region
            (the bleach mask is ``1 - (1 - alpha) * blur_gamma(indicator)``, zero-padded by M).
        roi_weights: (N, N) array, weights ``w`` of the recovery curve ``F = sum w c``
            (Wåhlstrand Skärström et al. 2021, eq. 6); by default the unblurred indicator normalised
            to sum 1.
    """

    indicator: jax.Array | np.ndarray
    roi_weights: jax.Array | np.ndarray


def _normalised_weights(roi, shape) -> np.ndarray:
    w = np.asarray(roi, dtype=np.float64)
    if w.shape != shape:
        raise InputError(f"ROI weights of shape {w.shape}: expected the image shape {shape} (pixels)")
    if np.any(w < 0) or w.sum() <= 0:
        raise InputError(f"ROI weights with minimum {w.min():g} and sum {w.sum():g}: must be >= 0 with a positive sum")
    return w / w.sum()


def _default_center(settings: FrapSettings, center_px) -> tuple[float, float]:
    if center_px is None:
        return 0.5 * settings.n_pixels, 0.5 * settings.n_pixels
    xc, yc = center_px
    return float(xc), float(yc)


def circular_region(
    settings: FrapSettings,
    radius_px: float = DEEPFRAP_RADIUS_PX,
    center_px: tuple[float, float] | None = None,
    supersample: int = 15,
    roi: Float[ArrayLike, "n n"] | None = None,
) -> BleachGeometry:
    """Disk of radius r, anti-aliased by area fraction (as ``frap_matlab/create_bleach_mask.m``).

    Each pixel's value is the fraction of ``supersample x supersample`` sub-pixel centres with
    ``(x - x_c)^2 + (y - y_c)^2 <= r^2`` (box downsampling of a fine binary disk; 15 in
    ``frap_matlab``). For DeepFRAP's r = 19.742 px centred at (128, 128) this sums to 1224.48
    (pi r^2 = 1224.43): 1148 full and 148 partial pixels.

    Arguments:
        settings: ``FrapSettings`` (only ``n_pixels`` is used).
        radius_px: r in pixels (default DeepFRAP's 15 um / 0.7598 um).
        center_px: (x_c, y_c) in pixel coordinates (x = column, y = row; pixel j spans [j, j+1]);
            default the image centre (N/2, N/2).
        supersample: sub-pixels per side used for the area fraction.
        roi: optional (N, N) non-negative ROI weights; default the disk indicator itself.

    Returns:
        ``BleachGeometry`` with float64 NumPy arrays.
    """
    n = settings.n_pixels
    xc, yc = _default_center(settings, center_px)
    r = float(radius_px)
    s = int(supersample)
    frac = np.zeros((n, n))
    i0, i1 = max(math.floor(yc - r) - 1, 0), min(math.ceil(yc + r) + 1, n)
    j0, j1 = max(math.floor(xc - r) - 1, 0), min(math.ceil(xc + r) + 1, n)
    if i1 > i0 and j1 > j0:
        sub = (np.arange(s) + 0.5) / s
        ys = (np.arange(i0, i1)[:, None] + sub[None, :]).ravel()
        xs = (np.arange(j0, j1)[:, None] + sub[None, :]).ravel()
        inside = (xs[None, :] - xc) ** 2 + (ys[:, None] - yc) ** 2 <= r * r
        frac[i0:i1, j0:j1] = inside.reshape(i1 - i0, s, j1 - j0, s).mean(axis=(1, 3))
    weights = _normalised_weights(frac if roi is None else roi, frac.shape)
    return BleachGeometry(frac, weights)


def rectangular_region(
    settings: FrapSettings,
    lx_px: float,
    ly_px: float,
    center_px: tuple[float, float] | None = None,
    roi: Float[ArrayLike, "n n"] | None = None,
) -> BleachGeometry:
    """Axis-aligned rectangle ``l_x x l_y``, anti-aliased by exact area fraction.

    A pixel's value is the product of its overlaps with ``[x_c - l_x/2, x_c + l_x/2]`` and
    ``[y_c - l_y/2, y_c + l_y/2]`` (the limit of ``frap_matlab``'s supersampled box average).

    Arguments:
        settings: ``FrapSettings`` (only ``n_pixels`` is used).
        lx_px: width l_x (along columns, x) in pixels.
        ly_px: height l_y (along rows, y) in pixels.
        center_px: (x_c, y_c) in pixel coordinates; default the image centre (N/2, N/2).
        roi: optional (N, N) non-negative ROI weights; default the rectangle indicator.

    Returns:
        ``BleachGeometry`` with float64 NumPy arrays.
    """
    n = settings.n_pixels
    xc, yc = _default_center(settings, center_px)
    edges = np.arange(n, dtype=np.float64)

    def overlap(c, length):
        lo, hi = c - 0.5 * length, c + 0.5 * length
        return np.clip(np.minimum(edges + 1.0, hi) - np.maximum(edges, lo), 0.0, 1.0)

    frac = np.outer(overlap(yc, float(ly_px)), overlap(xc, float(lx_px)))
    weights = _normalised_weights(frac if roi is None else roi, frac.shape)
    return BleachGeometry(frac, weights)


def custom_region(
    indicator: Shaped[ArrayLike, "ns ns"], supersample: int = 1, roi: Float[ArrayLike, "n n"] | None = None
) -> BleachGeometry:
    """Any bleach region given as an indicator image, optionally at a finer resolution.

    With ``supersample = s > 1`` the indicator is given on an ``(N s) x (N s)`` grid (e.g. a
    binary mask drawn at high resolution) and box-averaged to ``N x N``, which gives area-fraction
    anti-aliasing; with ``s = 1`` it is used as is (values in [0, 1]; fractional values are partial
    bleaching, as in ``frap_matlab``'s arbitrary-shape mode ``1 - (1 - alpha) indicator``).

    Arguments:
        indicator: (N s, N s) array of values in [0, 1] (bool allowed).
        supersample: s, sub-pixels per image pixel side.
        roi: optional (N, N) non-negative ROI weights; default the (downsampled) indicator.

    Returns:
        ``BleachGeometry`` with float64 NumPy arrays.
    """
    ind = np.asarray(indicator, dtype=np.float64)
    s = int(supersample)
    if ind.ndim != 2 or ind.shape[0] != ind.shape[1] or ind.shape[0] % s:
        raise InputError(
            f"bleach indicator of shape {ind.shape}: must be square with a side divisible by the supersampling {s}"
        )
    if np.any(ind < 0) or np.any(ind > 1):
        raise InputError(f"bleach indicator values in [{ind.min():g}, {ind.max():g}]: must lie in [0, 1]")
    n = ind.shape[0] // s
    frac = ind.reshape(n, s, n, s).mean(axis=(1, 3))
    weights = _normalised_weights(frac if roi is None else roi, frac.shape)
    return BleachGeometry(frac, weights)


# ----------------------------------------------------------------------------------------------
# Spectral constants and shared pieces
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _spectral_grid(size: int):
    """Host constants of the real-FFT layout ``(L, L//2 + 1)`` of an ``L x L`` periodic grid.

    Returns ``(lam, inverse, lam_unique, hermitian)``: ``lam = |xi|^2`` per mode (pixel^-2), the
    index of each mode's value in ``lam_unique`` (the distinct values of ``|xi|^2``; 22026 of them
    for L = 512), and the Parseval multiplicity of each stored mode (1 for the kx = 0 and Nyquist
    columns, 2 for the others, whose conjugate partners are not stored).
    """
    ny = np.rint(np.fft.fftfreq(size) * size).astype(np.int64)
    nx = np.rint(np.fft.rfftfreq(size) * size).astype(np.int64)
    n2 = ny[:, None] ** 2 + nx[None, :] ** 2
    unit = (2.0 * np.pi / size) ** 2
    unique, inverse = np.unique(n2, return_inverse=True)
    herm = np.full(n2.shape, 2.0)
    herm[:, 0] = 1.0
    if size % 2 == 0:
        herm[:, -1] = 1.0
    return unit * n2.astype(np.float64), inverse.reshape(n2.shape).astype(np.int32), unit * unique, herm


def _default_float():
    """JAX's current default float type (float32, or float64 under x64), as a NumPy dtype."""
    return np.dtype(jnp.result_type(float))


def _const(x):
    """A host constant as a JAX array of the current default float type, from a fresh host copy.

    The copy matters: with jax 0.10, a NumPy array captured in one trace keeps the dtype it was
    given there when captured again after ``jax.enable_x64`` is toggled (float64 leaking into
    float32 code, or float32 silently replacing float64 in x64 code).
    """
    return jnp.asarray(np.array(x, dtype=_default_float()))


def _floats(tree):
    """Cast every leaf of a pytree (params, geometry, table) to the default float type; host
    leaves (NumPy arrays, Python numbers) go through ``_const``."""

    def cast(leaf):
        if isinstance(leaf, (np.ndarray, np.generic, float, int)):
            return _const(leaf)
        return jnp.asarray(leaf, dtype=_default_float())

    return jax.tree_util.tree_map(cast, tree)


def _pad(image, settings: FrapSettings):
    """Zero-pad an ``N x N`` image by M on each side to the ``L x L`` grid."""
    return jnp.pad(jnp.asarray(image), settings.pad)


def _fft_diffuse(field, decay, size: int):
    """One exact diffusion step of a real field via real FFTs (Wåhlstrand Skärström et al. 2021,
    eq. 4)."""
    return jnp.fft.irfft2(jnp.fft.rfft2(field) * decay, s=(size, size))


def _blurred_indicator(indicator, gamma_px, settings: FrapSettings):
    """Zero-padded bleach indicator blurred by a periodic Gaussian of std gamma (pixels).

    Spectral multiplier ``exp(-gamma^2 |xi|^2 / 2)``: the same as letting the indicator diffuse
    for ``D t = gamma^2 / 2``, which is why a blurred single bleach equals a sharp one observed
    ``gamma^2 / (2 D)`` later (tests/test_frap_models.py checks this). ``frap_matlab`` blurs a 15x
    supersampled mask with a truncated kernel before box downsampling instead; the two differ at the
    sub-pixel level.
    """
    size = settings.grid_size
    lam = _const(_spectral_grid(size)[0])
    b = _pad(indicator, settings)
    return _fft_diffuse(b, jnp.exp(-0.5 * jnp.square(gamma_px) * lam), size)


def _concrete_or_none(x):
    """NumPy value of ``x`` if it is concrete (not a tracer), else None."""
    try:
        return np.asarray(x)
    except Exception:
        return None


def _require_value(x, expected, name: str, where: str) -> None:
    """Refuse ``x != expected`` when both are concrete (under a trace nothing is checked)."""
    value, target = _concrete_or_none(x), _concrete_or_none(expected)
    if value is not None and target is not None and not np.allclose(value, target, rtol=0.0, atol=1e-12):
        raise InputError(f"{name} {value}: {where} requires {name} = {target}")


# ----------------------------------------------------------------------------------------------
# Full solver
# ----------------------------------------------------------------------------------------------


def _time_stepping(params: FrapParams, geometry: BleachGeometry, settings: FrapSettings, images: bool):
    n, m, size = settings.n_pixels, settings.pad, settings.grid_size
    lam = _const(_spectral_grid(size)[0])
    d, c0, alpha = params.d_px2_s, params.c0, params.alpha
    phi, beta = params.mobile_fraction, params.beta
    decay = jnp.exp(-(d * settings.dt_s) * lam)
    blurred = _blurred_indicator(geometry.indicator, params.gamma_px, settings)
    window = _pad(jnp.ones((n, n)), settings)
    imaging = 1.0 + (beta - 1.0) * window
    bleach = (1.0 - (1.0 - alpha) * blurred) * imaging
    weights = jnp.asarray(geometry.roi_weights)

    def frame(state, mask):
        mobile, immobile = state
        mobile = _fft_diffuse(mobile, decay, size) * mask
        immobile = immobile * mask
        crop = (mobile + immobile)[m : m + n, m : m + n]
        out = crop if images else jnp.sum(weights * crop)
        return (mobile, immobile), out

    dtype = blurred.dtype
    state = (
        jnp.full((size, size), phi * c0, dtype=dtype),
        jnp.full((size, size), (1.0 - phi) * c0, dtype=dtype),
    )
    state, pre = jax.lax.scan(lambda s, _: frame(s, imaging), state, None, length=settings.n_prebleach)
    state, _ = jax.lax.scan(lambda s, _: (frame(s, bleach)[0], None), state, None, length=settings.n_bleach)
    _, post = jax.lax.scan(lambda s, _: frame(s, imaging), state, None, length=settings.n_postbleach)
    return jnp.concatenate([pre, post], axis=0)


_time_stepping_jit = jax.jit(_time_stepping, static_argnames=("settings", "images"))


def simulate_images(
    params: FrapParams, geometry: BleachGeometry, settings: FrapSettings = FrapSettings()
) -> Float[Array, "t n n"]:
    """Simulated FRAP image sequence: the recorded prebleach and postbleach frames.

    Starting from ``c = c0`` (``phi c0`` mobile, ``(1 - phi) c0`` immobile) on the ``L x L``
    periodic grid, each frame applies ``c^ <- exp(-D |xi|^2 dt) c^`` to the mobile field
    (Wåhlstrand Skärström et al. 2021, eqs. 3-4; real FFTs, so the field stays real —
    ``frap_matlab`` takes ``abs`` of a complex inverse FFT instead) and then multiplies both fields
    by the frame's mask: the imaging mask
    ``1 + (beta - 1) 1_window`` for recorded frames, and additionally the bleach mask
    ``1 - (1 - alpha) B_gamma`` (Wåhlstrand Skärström et al. 2021, eq. 1) for the ``n_bleach``
    unrecorded bleach frames. The output is ``mobile + immobile`` cropped to the central ``N x N``
    window.

    Arguments:
        params: ``FrapParams`` (D in px^2/s, c0, alpha, phi, beta, gamma in px); scalar leaves.
        geometry: ``BleachGeometry`` (bleach indicator; the ROI weights are not used here).
        settings: ``FrapSettings`` (static).

    Returns:
        (n_prebleach + n_postbleach, N, N) array of intensities c, in units of c0's.
    """
    return _time_stepping_jit(_floats(params), _floats(geometry), settings, images=True)


def recovery_curve(
    params: FrapParams, geometry: BleachGeometry, settings: FrapSettings = FrapSettings()
) -> Float[Array, " t"]:
    """Recovery curve ``F(t) = sum_xy w(x, y) c(x, y, t)`` (Wåhlstrand Skärström et al. 2021, eq. 6)
    from the full solver.

    Same time stepping as ``simulate_images`` (one FFT pair per frame), reduced to the ROI mean
    per recorded frame instead of storing the images.

    Arguments:
        params: ``FrapParams`` (D in px^2/s, c0, alpha, phi, beta, gamma in px); scalar leaves.
        geometry: ``BleachGeometry`` (bleach indicator and ROI weights w).
        settings: ``FrapSettings`` (static).

    Returns:
        (n_prebleach + n_postbleach,) array: prebleach then postbleach ROI means.
    """
    return _time_stepping_jit(_floats(params), _floats(geometry), settings, images=False)


# ----------------------------------------------------------------------------------------------
# Exact spectral recovery curve (beta = 1)
# ----------------------------------------------------------------------------------------------


def _mobile_alpha_polynomial(d, blurred, weights_hat, settings: FrapSettings):
    """Postbleach ROI means of the alpha-polynomial coefficients of the mobile field (c0 = 1).

    With ``B`` the (blurred) indicator, one bleach frame maps ``u -> ((1 - B) + alpha B) P u``
    (``P`` = diffusion over dt). Starting from ``u = 1``, after ``n_bleach`` frames
    ``u = sum_p alpha^p v_p`` with non-negative fields obeying
    ``v_p <- (1 - B) P v_p + B P v_{p-1}``, so the alpha powers add up without cancellation
    (unlike an expansion in ``1 - alpha``). Postbleach frame j then has ROI mean
    ``G_p(j) = L^-2 sum_k conj(w^_k) v^_p,k exp(-D |xi_k|^2 j dt)`` (Parseval), evaluated by
    grouping the modes by their distinct ``|xi|^2``.

    Returns:
        (n_bleach + 1, n_postbleach) array ``G_p(j)``.
    """
    size = settings.grid_size
    lam, inverse, lam_unique, herm = _spectral_grid(size)
    decay = jnp.exp(-(d * settings.dt_s) * _const(lam))
    keep = 1.0 - blurred
    fields: list[jax.Array | float] = [jnp.ones_like(blurred)]  # every entry is an array in fact
    for frame in range(settings.n_bleach):
        if frame == 0:
            diffused = fields  # a uniform field does not change under diffusion
        else:
            diffused = list(_fft_diffuse(jnp.stack(fields), decay, size))
        fields = [
            (keep * diffused[p] if p < len(diffused) else 0.0) + (blurred * diffused[p - 1] if p > 0 else 0.0)
            for p in range(len(diffused) + 1)
        ]
    spectra = jnp.fft.rfft2(jnp.stack(fields))
    proj = _const(herm / size**2) * jnp.real(jnp.conj(weights_hat) * spectra)
    segment = jnp.asarray(np.array(inverse.ravel(), dtype=np.int32))
    binned = jax.ops.segment_sum(proj.reshape(proj.shape[0], -1).T, segment, num_segments=lam_unique.size)
    # binned: (n_lambda, n_bleach + 1) weights W_p(lambda)
    times = _const(settings.postbleach_times_s())
    expo = jnp.exp(-d * _const(lam_unique)[:, None] * times[None, :])
    return binned.T @ expo


def _immobile_alpha_polynomial(blurred, weights_padded, n_bleach: int):
    """ROI means of the alpha-polynomial coefficients of the immobile field (c0 = 1):
    ``((1 - B) + alpha B)^n = sum_p C(n, p) alpha^p B^p (1 - B)^(n - p)``."""
    keep = 1.0 - blurred
    return jnp.stack(
        [
            math.comb(n_bleach, p) * jnp.sum(weights_padded * blurred**p * keep ** (n_bleach - p))
            for p in range(n_bleach + 1)
        ]
    )


def _alpha_powers(alpha, degree: int):
    """``[1, alpha, ..., alpha^degree]`` by repeated products (finite gradient at alpha = 0)."""
    powers = [jnp.ones_like(alpha)]
    for _ in range(degree):
        powers.append(powers[-1] * alpha)
    return jnp.stack(powers)


@partial(jax.jit, static_argnames=("settings",))
def _recovery_curve_spectral(params, geometry, settings):
    blurred = _blurred_indicator(geometry.indicator, params.gamma_px, settings)
    weights_padded = _pad(geometry.roi_weights, settings)
    mobile = _mobile_alpha_polynomial(params.d_px2_s, blurred, jnp.fft.rfft2(weights_padded), settings)
    immobile = _immobile_alpha_polynomial(blurred, weights_padded, settings.n_bleach)
    powers = _alpha_powers(params.alpha, settings.n_bleach)
    phi = params.mobile_fraction
    post = params.c0 * (phi * (powers @ mobile) + (1.0 - phi) * (powers @ immobile))
    pre = jnp.full((settings.n_prebleach,), params.c0 * jnp.sum(weights_padded), dtype=post.dtype)
    return jnp.concatenate([pre, post])


def recovery_curve_spectral(
    params: FrapParams, geometry: BleachGeometry, settings: FrapSettings = FrapSettings()
) -> Float[Array, " t"]:
    """Exact recovery curve for ``beta = 1`` with no FFT per postbleach frame.

    ``F_pre = c0 sum w`` and, for postbleach frame j (time ``j dt`` after the last bleach frame),
    ``F_j = c0 sum_p alpha^p [phi G_p(j; D, gamma) + (1 - phi) H_p(gamma)]``, p = 0..n_bleach,
    where ``G_p(j) = sum_lambda W_p(lambda) exp(-D lambda j dt)`` is a sum of decaying
    exponentials over the distinct ``lambda = |xi|^2`` (weights from the spectrum of the
    alpha^p coefficient field after the last bleach frame times the ROI spectrum,
    Wåhlstrand Skärström et al. 2021, eqs. 4 and 6) and ``H_p = C(n, p) sum w B^p (1 - B)^(n - p)``
    is the immobile part. Costs about
    ``(n_bleach + 1)(n_bleach + 2)`` real FFTs of the ``L x L`` grid, versus two per frame for
    ``recovery_curve``; agrees with it to rounding (about 1e-13 in float64).

    Arguments:
        params: ``FrapParams``; ``beta`` must be 1 (checked when concrete; imaging bleach is
            confined to the window and breaks the spectral structure — use ``recovery_curve``).
        geometry: ``BleachGeometry``.
        settings: ``FrapSettings`` (static).

    Returns:
        (n_prebleach + n_postbleach,) array: prebleach then postbleach ROI means.
    """
    _require_value(params.beta, 1.0, "beta", "recovery_curve_spectral")
    return _recovery_curve_spectral(_floats(params), _floats(geometry), settings)


# ----------------------------------------------------------------------------------------------
# Fast tabulated recovery curves
# ----------------------------------------------------------------------------------------------


class FastCurveTable(NamedTuple):
    """Precomputed recovery-curve model for one geometry, settings and gamma (a pytree of arrays).

    Every field is an array or a number, so a table passes through ``jax.jit`` and ``vmap`` as an
    ordinary argument (no static part): the frame counts are the shapes of ``coeffs`` and
    ``prebleach``, and the map from D to the Chebyshev variable uses the float64 constants
    ``inv_d_mid`` and ``x_per_log_d`` computed when the table is built.

    Attributes:
        coeffs: (K, n_bleach + 1, n_postbleach) Chebyshev coefficients, in
            ``x = (2 ln D - ln D_min - ln D_max) / (ln D_max - ln D_min)``, of the mobile
            alpha-polynomial curves ``G_p(j; D)`` (c0 = 1).
        immobile: (n_bleach + 1,) immobile alpha-polynomial coefficients ``H_p``.
        roi_sum: scalar ``sum w`` (1 for normalised weights): the prebleach value per unit c0.
        prebleach: (n_prebleach,) prebleach curve per unit c0 (``roi_sum`` in every frame).
        log_d_min, log_d_max: natural logs of the D range covered, ln(D / (px^2/s)).
        inv_d_mid: ``1 / D_mid`` in s/px^2, ``D_mid = sqrt(D_min D_max)``, so that
            ``x = ln(D / D_mid) x_per_log_d``.
        x_per_log_d: ``2 / (ln D_max - ln D_min)``.
        gamma_px: the bleach blur (std, px) baked into the table.
        tail: max |coefficient| over the last 4 orders, an estimate of the interpolation error
            in absolute intensity per unit c0.
    """

    coeffs: Float[Array, "k p t"] | np.ndarray
    immobile: Float[Array, " p"] | np.ndarray
    roi_sum: Float[Array, ""] | np.ndarray | float
    prebleach: Float[Array, " n_pre"] | np.ndarray
    log_d_min: Float[Array, ""] | float
    log_d_max: Float[Array, ""] | float
    inv_d_mid: Float[Array, ""] | float
    x_per_log_d: Float[Array, ""] | float
    gamma_px: Float[Array, ""] | float
    tail: Float[Array, ""] | float

    @property
    def d_range_px2_s(self) -> tuple[float, float]:
        """The D range (px^2/s) inside which the table is accurate (host tables only)."""
        return math.exp(self.log_d_min), math.exp(self.log_d_max)

    @property
    def n_frames(self) -> int:
        """Recorded frames of a curve, ``n_prebleach + n_postbleach`` (from the array shapes)."""
        return int(np.shape(self.prebleach)[0] + np.shape(self.coeffs)[2])


def build_fast_curve_table(
    geometry: BleachGeometry,
    settings: FrapSettings = FrapSettings(),
    d_range_px2_s: tuple[float, float] = (1.0, 3000.0),
    n_nodes: int = 64,
    gamma_px: float = 0.0,
) -> FastCurveTable:
    """Tabulate the exact alpha-polynomial curves at Chebyshev nodes in ln D (float64).

    The mobile curves ``G_p(j; D)`` of ``recovery_curve_spectral`` are smooth (entire) functions
    of ``ln D``; they are evaluated in float64 at the K Chebyshev points of the first kind
    ``x_k = cos(pi (k + 1/2) / K)`` of the interval and converted to Chebyshev coefficients. The
    default (1 to 3000 px^2/s, K = 64) covers DeepFRAP's prior (1.73 to 1732 px^2/s) with margin.
    Building costs K spectral solves (``recovery_curve_spectral`` without the alpha sum).

    Arguments:
        geometry: ``BleachGeometry``.
        settings: ``FrapSettings``.
        d_range_px2_s: (D_min, D_max) in px^2/s; outside it the Chebyshev sum extrapolates and
            quickly becomes meaningless.
        n_nodes: K, number of Chebyshev nodes (and coefficients).
        gamma_px: bleach blur (std, pixels) baked into the table.

    Returns:
        ``FastCurveTable`` (NumPy float64 leaves; cast to JAX's default float type when used).
    """
    d_min, d_max = (float(v) for v in d_range_px2_s)
    if not 0 < d_min < d_max < math.inf:
        raise InputError(f"D range [{d_min:g}, {d_max:g}] px^2/s: must be positive, finite and increasing")
    lo, hi = math.log(d_min), math.log(d_max)
    k = int(n_nodes)
    theta = np.pi * (np.arange(k) + 0.5) / k
    d_nodes = np.exp(0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(theta))
    with jax.enable_x64(True):
        blurred = _blurred_indicator(_const(geometry.indicator), gamma_px, settings)
        weights_padded = _pad(_const(geometry.roi_weights), settings)
        weights_hat = jnp.fft.rfft2(weights_padded)
        values = np.stack(
            [np.asarray(_mobile_alpha_polynomial_jit(jnp.float64(d), blurred, weights_hat, settings)) for d in d_nodes]
        )  # (K, P, n_post)
        immobile = np.asarray(_immobile_alpha_polynomial(blurred, weights_padded, settings.n_bleach))
        roi_sum = np.asarray(jnp.sum(weights_padded))
    basis = np.cos(np.outer(np.arange(k), theta)) * (2.0 / k)  # (n, k)
    basis[0] *= 0.5
    coeffs = np.tensordot(basis, values, axes=(1, 0))
    tail = float(np.max(np.abs(coeffs[-4:]))) if k >= 4 else float("nan")
    return FastCurveTable(
        coeffs=coeffs,
        immobile=immobile,
        roi_sum=roi_sum,
        prebleach=np.full(settings.n_prebleach, roi_sum),
        log_d_min=lo,
        log_d_max=hi,
        inv_d_mid=math.exp(-0.5 * (lo + hi)),
        x_per_log_d=2.0 / (hi - lo),
        gamma_px=float(gamma_px),
        tail=tail,
    )


_mobile_alpha_polynomial_jit = jax.jit(_mobile_alpha_polynomial, static_argnames=("settings",))
"""One compiled solve per settings and grid (not per table): the geometry enters as arguments, so
the next stack of the same shape reuses it."""


def _clenshaw(x, coeffs):
    """``sum_n coeffs[n] T_n(x)`` by Clenshaw's recurrence (smooth in x; in float32 about 25 %
    less rounding error than summing an explicit ``T_n`` basis)."""
    b1 = jnp.zeros_like(coeffs[0])
    b2 = b1
    for n in range(coeffs.shape[0] - 1, 0, -1):
        b1, b2 = coeffs[n] + 2.0 * x * b1 - b2, b1
    return coeffs[0] + x * b1 - b2


@jax.jit
def _recovery_curve_fast(params, table):
    # ln(D / D_mid) rather than ln D - ln D_mid: no cancellation of two O(8) logs in float32
    x = jnp.log(params.d_px2_s * table.inv_d_mid) * table.x_per_log_d
    mobile = _clenshaw(x, table.coeffs)  # (n_bleach + 1, n_post)
    powers = _alpha_powers(params.alpha, table.coeffs.shape[1] - 1)
    phi = params.mobile_fraction
    post = params.c0 * (phi * (powers @ mobile) + (1.0 - phi) * (powers @ table.immobile))
    pre = params.c0 * table.prebleach
    return jnp.concatenate([pre, post])


def recovery_curve_fast(params: FrapParams, table: FastCurveTable) -> Float[Array, " t"]:
    """Recovery curve from a ``FastCurveTable``: a Chebyshev sum in ln D plus a polynomial in alpha.

    ``F_pre = c0 sum w``; postbleach frame j:
    ``F_j = c0 sum_p alpha^p [phi sum_n a_{n,p,j} T_n(x(D)) + (1 - phi) H_p]``. Exact in c0,
    alpha and phi; in D it interpolates the exact (spectral) solution, with an error of order
    ``table.tail`` inside ``table.d_range_px2_s``. Per curve this is about
    ``3 K (n_bleach + 1) n_postbleach`` flops (about 1e5 at DeepFRAP settings with K = 64); batch
    it under ``jax.jit(jax.vmap(...))`` (rates in docs/benchmarks.md).

    Accuracy at DeepFRAP settings (default table) against the float64 image solver: about 1e-13
    relative when evaluated in float64 (x64), and below 1e-6 relative in float32 (worst case
    5.7e-7 over 20,000 random DeepFRAP-prior curves: a few float32 roundings; the float32 image
    solver itself is only good to ~1e-5).

    Arguments:
        params: ``FrapParams``; D must lie in the table's range; ``beta`` must be 1 and
            ``gamma_px`` equal to ``table.gamma_px`` (both checked when concrete).
        table: ``FastCurveTable`` from ``build_fast_curve_table``.

    Returns:
        (n_prebleach + n_postbleach,) array: prebleach then postbleach ROI means.
    """
    _require_value(params.beta, 1.0, "beta", "recovery_curve_fast")
    _require_value(params.gamma_px, table.gamma_px, "gamma_px", "recovery_curve_fast (table)")
    return _recovery_curve_fast(_floats(params), _floats(table))
