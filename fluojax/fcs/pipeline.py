"""Imaging FCS of a whole stack: frames in, per-pixel diffusion maps out.

The steps, as the Imaging FCS plugin does them (docs/fcs.md, 'Correlator' and 'Bleach correction: why the default is `auto`'), each vectorised over pixels:

1. **Binning** n x n (sums), overlapping (a sliding window: (H-n+1) x (W-n+1) pixels) or not
   (H//n x W//n).
2. **Bleach correction** (optional): a polynomial of order k fitted by linear least squares to
   each pixel's trace averaged in blocks, then the mean- and variance-preserving correction
   ``I' = I / sqrt(f/f0) + f0 (1 - sqrt(f/f0))``. By default (``"auto"``) only when the
   image-averaged trace decays significantly, with the lowest order that describes the decay
   (:func:`choose_bleach_correction`): a per-pixel polynomial also removes the slow diffusion
   fluctuations that carry the ACF's long-lag tail, and on short records that biases D upwards.
3. **Correlation** with blocking SEM (:mod:`fluojax.fcs.correlator`). On a CPU, steps 2-3 run
   in the compiled kernel of :mod:`fluojax.fcs.correlator_cpu` (the same arithmetic, faster than
   XLA there: docs/benchmarks.md); elsewhere in XLA.
4. **Fit** of the 2D (closed-form) or 3D (tabulated quadrature) model with the shared LM engine
   (:mod:`fluojax.fit`), weights 1/SEM^2, parameters N, D (um^2/s), G_inf.

The stack is read in bands of rows so that a 128 x 128 x 50,000 uint16 file (1.6 GB) is processed
in a few hundred MB; each band is padded to the same shape, so it compiles once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import functools
import importlib.util
import time
from collections.abc import Generator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import fit
from fluojax.cache import compiled_call
from fluojax.fcs import correlator, models, reduction
from fluojax.fcs.estimate import FCS_SOLVER, acf_model_2d, acf_model_3d, fit_acfs, start_values
from fluojax.fcs.reduction import BleachChoice as BleachChoice
from fluojax.fcs.reduction import bleach_design as bleach_design
from fluojax.fcs.reduction import choose_bleach_correction as choose_bleach_correction
from fluojax.fcs.reduction import intensity_scale as intensity_scale
from fluojax.fcs.reduction import mean_trace as mean_trace
from fluojax.fcs.reduction import resolve_bleach as resolve_bleach
from fluojax.fcs.reduction import varies_in_time as varies_in_time
from fluojax.io import InputError

__all__ = [
    "CORRELATION_LAGS",
    "CORRELATION_Z",
    "DEFAULT_OPTICS_2D",
    "DEFAULT_OPTICS_3D",
    "FCS_SOLVER",
    "PIXEL_STATUS_DESCRIPTION",
    "AnalysisSettings",
    "BleachChoice",
    "FCSMaps",
    "PixelStatus",
    "acf_model_2d",
    "acf_model_3d",
    "analyse_stack",
    "analyse_stack_across_processes",
    "bin_pixels",
    "bleach_correct",
    "bleach_design",
    "check_signal",
    "choose_bleach_correction",
    "correlate_band",
    "correlate_stack",
    "correlation_z",
    "default_optics",
    "fit_acfs",
    "intensity_scale",
    "maps_summary",
    "mean_trace",
    "resolve_bleach",
    "signal_status",
    "start_values",
    "varies_in_time",
]


class PixelStatus(enum.IntEnum):
    """FCS's own codes of the status map, after :class:`fluojax.fit.Status`'s 0-5 (5, invalid
    data: an ACF or SEM that is not finite). Written as uint8; :data:`PIXEL_STATUS_DESCRIPTION`
    says every code of the map in words.

    NO_SIGNAL and NON_POSITIVE_MEAN are decided from the raw data before any bleach correction:
    a pixel is without signal when every raw pixel in its bin is constant over time (all zero,
    say), and ``G = <dI(t) dI(t + tau)> / <I>^2`` cannot be normalised by a mean <= 0 (a camera
    offset or background subtracted too much). NO_CORRELATION marks a pixel whose fluctuations
    are not correlated in time (shot or read noise only, or diffusion faster than one frame): its
    ACF at the first :data:`CORRELATION_LAGS` lags does not stand out from zero by
    :data:`CORRELATION_Z` standard errors (:func:`correlation_z`), so a D fitted to it would be
    noise; its maps are NaN.
    """

    SATURATED = fit.FIRST_TECHNIQUE_CODE  # fitted, but some frame hit the detector's maximum value
    NO_SIGNAL = 7  # no fluctuation: every raw pixel of the bin is constant in time (e.g. all zero)
    NO_WINDOW = 8  # border pixel: no 3 x 3 window centred on it (ImFCSNet, overlapping mode)
    NON_POSITIVE_MEAN = 9  # fluctuates, but its mean intensity is <= 0: G cannot be normalised
    NO_CORRELATION = 10  # fluctuates, but G at the first lags is within noise of 0 (shot noise only)

    @property
    def description(self) -> str:
        """The code in words, as summary.json's ``status_codes`` lists it."""
        return PIXEL_STATUS_DESCRIPTION[self]


PIXEL_STATUS_DESCRIPTION: dict[int, str] = {
    fit.Status.CONVERGED: "converged",
    fit.Status.MAX_STEPS: "max iterations",
    fit.Status.NON_FINITE: "non-finite",
    fit.Status.AT_BOUND: "at a bound",
    fit.Status.SOLVER_FAILED: "solver failed",
    fit.Status.INVALID_DATA: "invalid ACF",
    PixelStatus.SATURATED: "saturated (fitted)",
    PixelStatus.NO_SIGNAL: "no signal (constant/zero)",
    PixelStatus.NO_WINDOW: "border (no 3x3 window)",
    PixelStatus.NON_POSITIVE_MEAN: "mean intensity <= 0 (offset/background?)",
    PixelStatus.NO_CORRELATION: "no correlation (G within noise of 0)",
}
"""Every code of a status map in words, :class:`fluojax.fit.Status`'s and :class:`PixelStatus`'s
(summary.json ``status_codes``, keyed by the integer code)."""


@dataclasses.dataclass(frozen=True)
class AnalysisSettings:
    """How to analyse a stack.

    Attributes:
        frame_time_s: float, time between frames in s.
        optics: ``models.Optics`` (its ``binning`` is the n of n x n binning).
        model: ``models.Geometry``: ``models.ITIR_2D`` (2D ITIR, closed form; default) or
            ``models.SPIM_3D`` (3D SPIM, numerical), or its name in ``models.GEOMETRIES``
            (``"2d"``, ``"3d"``), which is replaced by the geometry.
        overlap: bool, overlapping (sliding) binning instead of non-overlapping.
        bleach_order: int, polynomial order of the bleach correction (0 = none), or ``"auto"``
            (default): decided per stack by :func:`choose_bleach_correction`.
        p, q: int, correlator layout.
        solver: ``fit.LevenbergMarquardt``; default :data:`FCS_SOLVER`.
        tile_pixels: int or None, pixels per correlation band (memory ~ 12 bytes x frames x
            tile_pixels); None: :func:`band_pixels` (128 for the CPU kernel, 1024 for XLA).
        correlator_kernel: ``"auto"`` (the numba CPU kernel when JAX runs on the CPU and numba
            is installed, else XLA), ``"xla"`` or ``"cpu"``.
    """

    frame_time_s: float
    optics: models.Optics = models.Optics()
    model: models.Geometry | str = models.ITIR_2D
    overlap: bool = False
    bleach_order: int | str = "auto"
    p: int = 16
    q: int = 8
    solver: fit.LevenbergMarquardt = FCS_SOLVER
    tile_pixels: int | None = None
    correlator_kernel: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "model", models.as_geometry(self.model))
        if not (self.bleach_order == "auto" or (isinstance(self.bleach_order, int) and self.bleach_order >= 0)):
            raise InputError(f"bleach correction order {self.bleach_order!r}: must be 'auto' or an integer >= 0")
        if self.correlator_kernel not in ("auto", "xla", "cpu"):
            raise InputError(f"correlator kernel {self.correlator_kernel!r}: must be 'auto', 'xla' or 'cpu'")

    @property
    def geometry(self) -> models.Geometry:
        """The ``models.Geometry`` of ``model`` (typed: ``__post_init__`` has resolved a name)."""
        return models.as_geometry(self.model)

    def uses_cpu_kernel(self) -> bool:
        """Whether bands are correlated by the numba kernel rather than XLA."""
        if self.correlator_kernel == "auto":  # numba installed (found, not imported: correlate_stack
            # imports it and loads the kernel while its reader thread reads the first band)
            return jax.default_backend() == "cpu" and importlib.util.find_spec("numba") is not None
        return self.correlator_kernel == "cpu"

    def band_pixels(self) -> int:
        """Pixels per correlation band: ``tile_pixels``, else
        :data:`fluojax.fcs.reduction.CPU_BAND_PIXELS` (128) for the CPU kernel and 1,024 for XLA."""
        if self.tile_pixels is not None:
            return self.tile_pixels
        return reduction.CPU_BAND_PIXELS if self.uses_cpu_kernel() else 1024


class FCSMaps(NamedTuple):
    """Per-pixel results (NumPy arrays, shape (H', W') after binning; ``acf``/``sem`` (H', W', C)).

    Attributes:
        d_um2_s, n_particles, g_inf, chi2_reduced: float32 maps (NaN where not fitted).
        status: uint8 map of :class:`PixelStatus` codes.
        mean_intensity: float32 map, counts/frame.
        acf, sem: float32 arrays of the correlation functions and their standard errors.
        lag_s: (C,) lag times in s.
        timings_s: dict of seconds spent per stage.
        bleach: dict, the bleach correction applied and why (:meth:`BleachChoice.as_dict`).
    """

    d_um2_s: np.ndarray
    n_particles: np.ndarray
    g_inf: np.ndarray
    chi2_reduced: np.ndarray
    status: np.ndarray
    mean_intensity: np.ndarray
    acf: np.ndarray
    sem: np.ndarray
    lag_s: np.ndarray
    timings_s: dict
    bleach: dict | None = None


def bin_pixels(frames: jax.Array, n: int, overlap: bool) -> jax.Array:
    """Sum n x n pixel blocks of a (T, H, W) stack.

    Arguments:
        frames: (T, H, W) array.
        n: int, bin side (1 = unchanged).
        overlap: bool, sliding window ((H-n+1) x (W-n+1) output) or tiling (H//n x W//n).

    Returns:
        (T, H', W') float32 array.
    """
    x = jnp.asarray(frames, jnp.float32)
    if n == 1:
        return x
    if overlap:
        c = jnp.cumsum(jnp.cumsum(jnp.pad(x, ((0, 0), (1, 0), (1, 0))), axis=1), axis=2)
        return c[:, n:, n:] - c[:, :-n, n:] - c[:, n:, :-n] + c[:, :-n, :-n]
    t, h, w = x.shape
    x = x[:, : h // n * n, : w // n * n]
    return x.reshape(t, h // n, n, w // n, n).sum(axis=(2, 4))


def bleach_correct(frames: jax.Array, order: int, points: int = 1000) -> jax.Array:
    """Polynomial bleach correction of (T, pixels) traces, preserving mean and variance.

    The decay ``f(t)`` is the Legendre fit of :func:`bleach_design`; then
    ``I'(t) = I(t) / sqrt(f(t)/f(0)) + f(0) (1 - sqrt(f(t)/f(0)))`` (docs/fcs.md, 'Bleach correction: why the default is `auto`').

    Arguments:
        frames: (T, pixels) array.
        order: int >= 1, polynomial degree.
        points: int, approximate number of block averages to fit.

    Returns:
        (T, pixels) float32 corrected traces.
    """
    x = jnp.asarray(frames, jnp.float32)
    stride, fit_matrix, vander = bleach_design(x.shape[0], order, points)
    nb = fit_matrix.shape[1]
    blocks = x[: nb * stride].reshape(nb, stride, -1).mean(axis=1)
    trend = jnp.asarray(vander) @ (jnp.asarray(fit_matrix) @ blocks)
    ratio = jnp.sqrt(jnp.maximum(trend / trend[:1], 1e-12))
    return x / ratio + trend[:1] * (1.0 - ratio)


@functools.partial(jax.jit, static_argnames=("n", "overlap", "bleach_order", "p", "q"))
def _band_acf(band, n, overlap, bleach_order, p, q):
    """Bin, bleach-correct and correlate one band of rows in XLA: (T, h, W) -> ACFResult over pixels."""
    binned = bin_pixels(band, n, overlap)
    t, h, w = binned.shape
    traces = binned.reshape(t, h * w)
    if bleach_order > 0:
        traces = bleach_correct(traces, bleach_order)
    return correlator.correlate(traces, p, q)


@functools.partial(jax.jit, static_argnames=("n", "overlap", "bleach_order"))
def _band_traces(band, n, overlap, bleach_order):
    """The binned, bleach-corrected (T, pixels) traces of one band, as :func:`_band_acf` correlates them."""
    binned = bin_pixels(band, n, overlap)
    traces = binned.reshape(binned.shape[0], -1)
    return bleach_correct(traces, bleach_order) if bleach_order > 0 else traces


_acf_from_lag_sums = jax.jit(correlator.acf_from_lag_sums, static_argnums=(1, 2, 3))


def _band_acf_cpu(band: np.ndarray, n: int, overlap: bool, bleach_order: int, p: int, q: int) -> correlator.ACFResult:
    """:func:`_band_acf` with bleach correction and correlation in the numba CPU kernel."""
    t = band.shape[0]
    traces = band.reshape(t, -1) if n == 1 else np.asarray(bin_pixels(jnp.asarray(band), n, overlap)).reshape(t, -1)
    return _finish_lag_sums(reduction.reduce_traces(traces, bleach_order, p, q), t, p, q)


def _finish_lag_sums(reduced: correlator.LagSums, n_frames: int, p: int, q: int) -> correlator.ACFResult:
    """``correlator.acf_from_lag_sums`` of the CPU kernel's sums of one band (NumPy arrays in and out).

    It runs on a power-of-two number of pixels (edge-padded), so bands of other widths reuse its
    compiled code; kept between runs (fluojax.cache).
    """
    pixels = reduced.mean.shape[-1]
    bucket = 1 << max(4, (pixels - 1).bit_length())
    widths = lambda x: [(0, 0)] * (np.ndim(x) - 1) + [(0, bucket - pixels)]  # noqa: E731
    padded = jax.tree.map(lambda x: np.pad(np.asarray(x), widths(x), mode="edge"), reduced)
    result = compiled_call(_acf_from_lag_sums, {"n_frames": n_frames, "p": p, "q": q}, {"reduced": padded})
    return jax.tree.map(lambda x: np.asarray(x)[..., :pixels], result)


def correlate_band(band: np.ndarray, settings: AnalysisSettings) -> correlator.ACFResult:
    """Bin, bleach-correct and correlate one (T, h, W) band of rows with the settings' kernel.

    Returns:
        ``ACFResult`` over the band's (binned) pixels in row-major order.
    """
    if not isinstance(settings.bleach_order, int):
        raise ValueError("correlate_band needs an integer bleach_order; resolve 'auto' per stack with resolve_bleach")
    if not settings.uses_cpu_kernel() and len(jax.local_devices()) > 1:  # XLA on every local device
        n, overlap, order = int(settings.optics.binning), settings.overlap, settings.bleach_order
        return correlator.correlate_on_devices(_band_traces(band, n, overlap, order), settings.p, settings.q)
    static: dict[str, Any] = {
        "n": int(settings.optics.binning),
        "overlap": settings.overlap,
        "bleach_order": settings.bleach_order,
        "p": settings.p,
        "q": settings.q,
    }
    if settings.uses_cpu_kernel():
        return _band_acf_cpu(band, **static)
    return compiled_call(_band_acf, static, {"band": band})  # kept between runs (fluojax.cache)


class StackACFs(NamedTuple):
    """Correlation of every (binned) pixel of a stack.

    Attributes:
        acf, sem: (pixels, C) ACFs and blocking standard errors, pixels in row-major order.
        mean_intensity: (pixels,) mean counts per frame.
        saturated: (pixels,) bool, a raw pixel in the bin reached the integer dtype's maximum.
        fluctuates: (pixels,) bool, some raw pixel in the bin is not constant in time.
        shape: (H', W') of the binned image.
        lag_s: (C,) lag times in s.
        seconds: float, wall time.
        bleach: ``BleachChoice`` applied.
    """

    acf: np.ndarray
    sem: np.ndarray
    mean_intensity: np.ndarray
    saturated: np.ndarray
    fluctuates: np.ndarray
    shape: tuple
    lag_s: np.ndarray
    seconds: float
    bleach: BleachChoice


def correlate_stack(
    stack, settings: AnalysisSettings, progress: bool | None = None, prepared: reduction.PreparedStack | None = None
) -> StackACFs:
    """Bin, bleach-correct and correlate every pixel of a (T, H, W) stack, band by band.

    Arguments:
        stack: (T, H, W) array-like of intensities (array or memory map).
        settings: ``AnalysisSettings`` (binning, bleach correction, correlator, band size);
            ``bleach_order="auto"`` costs one extra pass over the stack (:func:`resolve_bleach`).
        progress: progress of the bands (:func:`fluojax.progress.progress`: None or True, a bar
            on a terminal and a line every ~10 s in logs; False: nothing).
        prepared: the same stack as a :class:`fluojax.fcs.reduction.ReductionProcess` may be
            reducing it (``fluojax fcs fit``): where it was asked for exactly what the CPU kernel
            would do here, its sums are used (the same numbers); otherwise, or should it fail, the
            stack is read here.

    Returns:
        ``StackACFs``.

    Float data (or integers above 1e8) are rescaled per band by :func:`intensity_scale` before
    correlating; ``mean_intensity`` is in the original units.

    Raises:
        fluojax.io.InputError: too few frames for the lag grid, a binning that does not fit, NaN/Inf, no
            pixel that fluctuates in time, or no fluctuating pixel with a positive mean.
    """
    t, h, w = stack.shape
    n = int(settings.optics.binning)
    grid = correlator.lag_grid(settings.p, settings.q)
    if t < correlator.min_frames(grid):
        raise InputError(
            f"the stack has {t} frames; the correlator (P={settings.p}, Q={settings.q}) needs at least "
            f"{correlator.min_frames(grid)} (its largest lag is {int(grid.lags[-1])} frames)"
        )
    if n < 1 or n > min(h, w):
        raise InputError(f"binning {n} x {n} pixels: does not fit a {h} x {w} pixel image")

    def plan(s: AnalysisSettings) -> tuple[reduction.BandLayout, bool]:
        """The bands, and whether the CPU kernel's sums come with each band."""
        layout = reduction.band_layout(stack.shape, stack.dtype, n, s.overlap, s.band_pixels(), s.p, s.q)
        return layout, n == 1 and s.uses_cpu_kernel()

    t0 = time.perf_counter()
    layout, reduce = plan(settings)
    bands = prepared.bands(layout, settings.bleach_order) if prepared is not None and reduce else None
    if bands is not None:
        try:
            return _correlate_bands(bands, layout, settings, reduce, progress, t0)
        except reduction.HelperFailed:  # read the stack here instead
            pass
    if settings.uses_cpu_kernel() and not _cpu_kernel_imports():  # numba found, but broken: XLA
        settings = dataclasses.replace(settings, correlator_kernel="xla")
        layout, reduce = plan(settings)
    bands = reduction.read_bands(stack, layout, settings.bleach_order, reduce)
    return _correlate_bands(bands, layout, settings, reduce, progress, t0)


def _cpu_kernel_imports() -> bool:
    """Whether the numba kernel imports (numba can be installed but broken, e.g. by a NumPy it
    does not support yet; ``AnalysisSettings.uses_cpu_kernel`` only looks for it, to spare the
    command numba's import where a helper process correlates)."""
    from fluojax.fcs import correlator_cpu

    return correlator_cpu.available()


def _correlate_bands(
    bands: Generator[Any, None, None],
    layout: reduction.BandLayout,
    settings: AnalysisSettings,
    reduce: bool,
    progress,
    t0: float,
) -> StackACFs:
    """:func:`correlate_stack` of what :func:`fluojax.fcs.reduction.read_bands` yields (its bands
    correlated, or their sums finished where ``reduce``)."""
    from fluojax.progress import progress as progress_counter

    n, n_frames = layout.binning, layout.shape[0]
    out_h, out_w = layout.out_rows, layout.out_cols
    lags = correlator.lag_grid(settings.p, settings.q).lags
    acf = np.empty((out_h * out_w, len(lags)), np.float32)
    sem = np.empty_like(acf)
    mean = np.empty(out_h * out_w, np.float32)
    saturated = np.zeros(out_h * out_w, bool)
    fluctuates = np.zeros(out_h * out_w, bool)

    def binned_any(mask):
        """Whether any raw pixel of each (binned) pixel is set: (rows, W) bool -> (rows', W') bool."""
        if n == 1:  # the mask itself (no round trip through the device for every band)
            return mask
        return np.asarray(bin_pixels(mask[None].astype(np.float32), n, settings.overlap))[0] > 0

    with (
        contextlib.closing(bands) as items,
        progress_counter(len(layout.band_starts), "correlate", "bands", enabled=progress) as bar,
    ):
        bleach = next(items)
        settings = dataclasses.replace(settings, bleach_order=bleach.order)
        for band in items:
            if reduce:
                res = _finish_lag_sums(band.data, n_frames, settings.p, settings.q)
            else:
                res = correlate_band(band.data, settings)
            valid_rows = min(layout.rows_per_band, out_h - band.out_row)
            sl = slice(band.out_row * out_w, (band.out_row + valid_rows) * out_w)
            if band.saturated is not None:
                saturated[sl] = binned_any(band.saturated)[:valid_rows].ravel()
            fluctuates[sl] = binned_any(band.varies)[:valid_rows].ravel()
            acf[sl] = np.asarray(res.acf).T[: valid_rows * out_w]
            sem[sl] = np.asarray(res.sem).T[: valid_rows * out_w]
            mean[sl] = np.asarray(res.mean, np.float64)[: valid_rows * out_w] / band.scale
            bar.update(1)
    check_signal(fluctuates, mean)
    return StackACFs(
        acf,
        sem,
        mean,
        saturated,
        fluctuates,
        (out_h, out_w),
        lags * settings.frame_time_s,
        time.perf_counter() - t0,
        bleach,
    )


def check_signal(fluctuates: np.ndarray, mean: np.ndarray) -> None:
    """Refuse a stack of which no pixel can give an ACF.

    Arguments:
        fluctuates: (pixels,) bool, the pixel is not constant in time.
        mean: (pixels,) mean intensities.

    Raises:
        fluojax.io.InputError: no pixel fluctuates (a blank recording: all zero or constant), or none of
            those that do has a positive mean (G = <dI dI> / <I>^2 needs <I> > 0).
    """
    if not np.any(fluctuates):
        raise InputError(
            "no pixel of the stack fluctuates in time (every pixel is constant, e.g. all zero): nothing to correlate"
        )
    if not np.any(fluctuates & (mean > 0)):
        raise InputError(
            f"no fluctuating pixel has a positive mean intensity (highest {float(np.max(mean[fluctuates])):.4g}): "
            "G = <dI dI>/<I>^2 needs intensities above zero; was a camera offset or background subtracted too much?"
        )


CORRELATION_LAGS = 4
"""Lags (1-4 frames) whose ACF values :func:`correlation_z` combines."""
CORRELATION_Z = 3.0
"""Smallest :func:`correlation_z` for a pixel to count as correlated. On white Poisson noise
(means 5-1,000 counts, 256 pixels each) z had a standard deviation of 0.5 at 2,400 frames and
0.9 at 20,000 (the blocking SEMs overestimate the noise of short records) and a maximum of 2.1-3.8.
Simulated 2D diffusion (6 x 6 pixels, 1-6 photons per particle and frame, D = 0.1-10 um^2/s at
1.06 ms frames) had median z 3.7-26 at 2,400 frames and 13-46 at 20,000; the pixels of short
records below 3 hold no correlation that their own noise would not also produce, so a D fitted
to them says nothing (docs/fcs.md, "Fitting")."""


def correlation_z(acf: np.ndarray, sem: np.ndarray, lags: int = CORRELATION_LAGS) -> np.ndarray:
    """How many standard errors the ACF at its first lags stands above zero.

    ``z = max(sum_{k<=lags} G(tau_k) / (sqrt(lags) s), sum_{k<=16} G(tau_k) / (4 s))`` with ``s``
    the median blocking SEM of the first 16 lags (one frame apart each). For uncorrelated
    fluctuations (white shot or read noise) the ACF estimates at different lags are independent
    with one common standard deviation, which the median of 16 SEMs estimates far more steadily
    than one lag's SEM (on short records single blocking SEMs scatter several-fold), so both sums
    are close to standard normal there. A diffusing particle's pixel stands out in the first sum
    when the ACF decays within a few frames and in the second when it decays slowly.

    Arguments:
        acf, sem: (pixels, C) correlation functions and blocking standard errors.
        lags: number of leading lags combined.

    Returns:
        (pixels,) float64 z (NaN where the median SEM is not positive).
    """
    s = np.median(np.asarray(sem[:, :16], np.float64), axis=1)
    s = np.where(s > 0, s, np.nan)
    g = np.asarray(acf, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(g[:, :lags].sum(axis=1) / (np.sqrt(lags) * s), g[:, :16].sum(axis=1) / (4.0 * s))


def signal_status(corr: StackACFs) -> np.ndarray:
    """Per-pixel :class:`PixelStatus` of the data alone: NO_SIGNAL, NON_POSITIVE_MEAN,
    ``fit.Status.INVALID_DATA`` (non-finite ACF or SEM, or all SEM zero), NO_CORRELATION
    (:func:`correlation_z` below :data:`CORRELATION_Z`) or 0 (usable).

    Arguments:
        corr: ``StackACFs``.

    Returns:
        (pixels,) uint8.
    """
    valid = np.all(np.isfinite(corr.acf), axis=1) & np.all(np.isfinite(corr.sem), axis=1) & np.any(corr.sem > 0, axis=1)
    status = np.where(valid, 0, fit.Status.INVALID_DATA)
    with np.errstate(invalid="ignore"):
        uncorrelated = valid & ~(correlation_z(corr.acf, corr.sem) >= CORRELATION_Z)
    status = np.where(uncorrelated, PixelStatus.NO_CORRELATION, status)
    status = np.where(corr.mean_intensity > 0, status, PixelStatus.NON_POSITIVE_MEAN)
    return np.where(corr.fluctuates, status, PixelStatus.NO_SIGNAL).astype(np.uint8)


def analyse_stack(
    stack, settings: AnalysisSettings, progress: bool | None = None, prepared: reduction.PreparedStack | None = None
) -> FCSMaps:
    """Per-pixel Imaging FCS of a (T, H, W) stack (array or memory map): correlate, then fit.

    Arguments:
        stack: (T, H, W) array-like of intensities; read band by band.
        settings: ``AnalysisSettings``.
        progress: progress of correlation and fits (:func:`fluojax.progress.progress`: None or
            True, bars on a terminal and a line every ~10 s in logs; False: nothing).
        prepared: the stack as a helper process may be reducing it (:func:`correlate_stack`).

    Returns:
        ``FCSMaps``.

    Raises:
        fluojax.io.InputError: impossible optics (``models.check_optics``) or data (:func:`correlate_stack`).
    """
    from fluojax.progress import progress as progress_counter

    models.check_optics(settings.optics, settings.geometry)
    corr = correlate_stack(stack, settings, progress, prepared)
    acf, sem, mean, saturated = corr.acf, corr.sem, corr.mean_intensity, corr.saturated
    out_h, out_w = corr.shape
    t_corr = corr.seconds

    data_status = signal_status(corr)
    usable = data_status == 0  # only these are fitted; the others keep their data status and NaN maps
    lag_s = corr.lag_s
    params = np.full((acf.shape[0], 3), np.nan)
    chi2 = np.full(acf.shape[0], np.nan)
    status = data_status.astype(np.uint8)
    t1 = time.perf_counter()
    with progress_counter(int(usable.sum()), "fit", "px", enabled=progress) as bar:
        if usable.any():
            result = fit_acfs(acf[usable], sem[usable], lag_s, settings, progress=bar.update)
            params[usable], chi2[usable] = result.params, result.chi2_reduced
            fitted = result.status.astype(np.uint8)
            status[usable] = np.where(
                saturated[usable] & (fitted <= fit.Status.AT_BOUND), PixelStatus.SATURATED, fitted
            )
    t_fit = time.perf_counter() - t1

    shape2 = (out_h, out_w)
    return FCSMaps(
        d_um2_s=params[:, 1].reshape(shape2).astype(np.float32),
        n_particles=params[:, 0].reshape(shape2).astype(np.float32),
        g_inf=params[:, 2].reshape(shape2).astype(np.float32),
        chi2_reduced=chi2.reshape(shape2).astype(np.float32),
        status=status.reshape(shape2),
        mean_intensity=mean.reshape(shape2),
        acf=acf.reshape(out_h, out_w, -1),
        sem=sem.reshape(out_h, out_w, -1),
        lag_s=lag_s,
        timings_s={"correlate": t_corr, "fit": t_fit},
        bleach=corr.bleach.as_dict(),
    )


# ------------------------------------------------------------------------------------------------
# Defaults and summaries (what `fluojax fcs fit`/`predict` and `fluojax demo` report)

DEFAULT_OPTICS_2D = {
    "magnification": 100.0,
    "na": 1.45,
    "wavelength_nm": 583.0,
    "sigma0": 0.8,
    "refractive_index": 1.518,
}
"""Default optics of a 2D (ITIR/TIRF) measurement: 100x, NA 1.45 oil objective (``refractive_index``
is the immersion medium's, which bounds the NA), 583 nm emission, PSF factor 0.8 (as the Imaging
FCS plugin's defaults)."""
DEFAULT_OPTICS_3D = {
    "magnification": 60.0,
    "na": 1.0,
    "wavelength_nm": 515.0,
    "sigma0": 1.1,
    "refractive_index": 1.333,
    "sigmaz": 2.2,
}
"""Default optics of a 3D (SPIM) measurement: 60x, NA 1.0 water-dipping objective in water (the
sample's and the immersion index, 1.333), 515 nm emission, PSF factor 1.1, light-sheet factor 2.2."""
DEFAULT_OPTICS = {models.ITIR_2D.name: DEFAULT_OPTICS_2D, models.SPIM_3D.name: DEFAULT_OPTICS_3D}
"""The default optics of each geometry, by its name; a light sheet (``sigmaz``) only where it has one."""


def default_optics(
    geometry: models.Geometry | str, *, camera_pixel_um: float = 24.0, binning: int = 1, **overrides
) -> models.Optics:
    """``models.Optics`` from the 2D or 3D defaults (:data:`DEFAULT_OPTICS_2D`/:data:`DEFAULT_OPTICS_3D`)
    with the given values replacing them, checked by ``models.check_optics``.

    ``refractive_index`` is the sample's index in 3D (a water-dipping objective: the immersion
    index too) and the immersion medium's in 2D, where the model does not use the sample's.

    Arguments:
        geometry: ``models.Geometry`` or its name (``"2d"``, ``"3d"``): whose defaults
            (:data:`DEFAULT_OPTICS`).
        camera_pixel_um: camera pixel pitch in um.
        binning: n of n x n binning.
        overrides: any of ``magnification``, ``na``, ``wavelength_nm`` (nm), ``sigma0``,
            ``sigmaz`` (3D only; ignored in 2D, which has no light sheet), ``refractive_index``;
            None keeps the default.

    Returns:
        ``models.Optics`` (``sigmaz`` None in 2D).

    Raises:
        fluojax.io.InputError: an unknown geometry or override, or optics that cannot exist
            (``models.check_optics``).
    """
    geometry = models.as_geometry(geometry)
    defaults = DEFAULT_OPTICS[geometry.name]
    light_sheet = "sigmaz" in defaults
    unknown = set(overrides) - set(DEFAULT_OPTICS_3D)
    if unknown:
        raise InputError(f"unknown optics: {', '.join(sorted(unknown))}")
    pick: dict[str, Any] = {
        k: v if v is not None else defaults.get(k) for k, v in {**dict.fromkeys(DEFAULT_OPTICS_3D), **overrides}.items()
    }
    index = pick["refractive_index"]
    optics = models.Optics(
        camera_pixel_um=camera_pixel_um,
        magnification=pick["magnification"],
        na=pick["na"],
        wavelength_nm=pick["wavelength_nm"],
        sigma0=pick["sigma0"],
        sigmaz=pick["sigmaz"] if light_sheet else None,  # no light sheet in 2D
        refractive_index=index if light_sheet else models.Optics._field_defaults["refractive_index"],  # unused in 2D
        binning=binning,
        immersion_index=index,
    )
    models.check_optics(optics, geometry)
    return optics


def maps_summary(maps: FCSMaps, settings: AnalysisSettings) -> dict:
    """The JSON-ready summary of a map: settings, timings, status counts, medians and units.

    Arguments:
        maps: ``FCSMaps`` (from :func:`analyse_stack` or a network's ``predict_stack``).
        settings: the ``AnalysisSettings`` used, with the bleach order applied (an int).

    Returns:
        dict (keys settings, timings_s, pixels, fitted, status_counts, status_codes, medians, units).
    """
    pixel_um = float(models.pixel_side_um(settings.optics))
    counts = np.bincount(maps.status.ravel(), minlength=max(PixelStatus) + 1)
    ok = np.isfinite(maps.d_um2_s)
    return {
        "settings": {
            "model": settings.geometry.name,
            "frame_time_s": settings.frame_time_s,
            "optics": settings.optics._asdict(),
            "object_pixel_um": pixel_um,
            "overlap": settings.overlap,
            "bleach_order": settings.bleach_order,  # applied (0 = none); "bleach" says what was asked and why
            "bleach": maps.bleach,
            "correlator": {"P": settings.p, "Q": settings.q},
            "backend": settings.solver.backend.name,
        },
        "timings_s": maps.timings_s,
        "pixels": int(maps.status.size),
        "fitted": int(ok.sum()),
        "status_counts": {PIXEL_STATUS_DESCRIPTION[k]: int(c) for k, c in enumerate(counts) if c},
        "status_codes": {int(k): v for k, v in PIXEL_STATUS_DESCRIPTION.items()},
        "medians": {
            "D_um2_s": float(np.nanmedian(maps.d_um2_s)) if ok.any() else None,
            "N": float(np.nanmedian(maps.n_particles)) if ok.any() else None,
            "G_inf": float(np.nanmedian(maps.g_inf)) if ok.any() else None,
            "chi2_reduced": float(np.nanmedian(maps.chi2_reduced)) if ok.any() else None,
        },
        "units": {"D": "um^2/s", "N": "particles per pixel observation area", "G_inf": "dimensionless", "lag": "s"},
    }


# ------------------------------------------------------------------------------------------------
# Across the processes of a multi-host run


def analyse_stack_across_processes(
    stack, settings: AnalysisSettings, progress: bool | None = None, prepared: reduction.PreparedStack | None = None
) -> FCSMaps:
    """:func:`analyse_stack` with the rows shared between the processes of a multi-host run.

    Each process reads and analyses its own band of output rows
    (:func:`fluojax.distributed.band`, with the input rows its binning needs), and the maps
    are gathered so that every process holds the whole stack's (:func:`fluojax.distributed.gather_rows`;
    process 0 writes them). Pixels are analysed independently, so the maps are those of one
    process, except that ``bleach_order="auto"`` chooses from the stack's mean trace summed over
    the processes' disjoint bands of input rows (float64 sums in another order), and the timings
    are the slowest process's. A single process runs :func:`analyse_stack`.

    Arguments:
        stack: (T, H, W) array-like (array or memory map); each process reads only its band.
        settings, progress: as for :func:`analyse_stack`.
        prepared: as for :func:`analyse_stack`; used by a single process only.

    Returns:
        ``FCSMaps`` of the whole stack, on every process.

    Raises:
        fluojax.io.InputError: as :func:`analyse_stack`, on every process if on any (one process's
            message, or a note that another process refused its band); fewer output rows than processes.
    """
    from fluojax import distributed

    count = distributed.process_count()
    if count == 1:
        return analyse_stack(stack, settings, progress, prepared)
    _, h, w = stack.shape
    n = int(settings.optics.binning)
    out_h = h - n + 1 if settings.overlap else h // n
    if out_h < count:
        raise InputError(f"{out_h} rows of (binned) pixels cannot be shared between {count} processes")
    bleach = None
    if settings.bleach_order == "auto":  # the whole stack's mean trace, from disjoint bands of raw rows
        own = distributed.band(h)
        total = distributed.sum_over_processes(mean_trace(stack[:, own, :]) * ((own.stop - own.start) * w))
        bleach = choose_bleach_correction(total / (h * w))
        settings = dataclasses.replace(settings, bleach_order=bleach.order)
    rows = distributed.band(out_h)
    first, stop = (rows.start, rows.stop + n - 1) if settings.overlap else (rows.start * n, rows.stop * n)
    error = ""
    try:
        maps = analyse_stack(stack[:, first:stop, :], settings, progress)
    except InputError as err:
        error = str(err)
    refused = distributed.sum_over_processes(np.int32(bool(error)))
    if refused:
        raise InputError(error or f"{int(refused)} other process(es) refused their band of the stack")
    per_pixel = ("d_um2_s", "n_particles", "g_inf", "chi2_reduced", "status", "mean_intensity", "acf", "sem")
    whole = distributed.gather_rows({k: getattr(maps, k) for k in per_pixel}, out_h)
    keys = sorted(maps.timings_s)
    slowest = np.max(distributed.gather_rows(np.array([[maps.timings_s[k] for k in keys]]), count), axis=0)
    return maps._replace(
        **whole,
        timings_s={k: float(v) for k, v in zip(keys, slowest)},
        bleach=maps.bleach if bleach is None else bleach.as_dict(),
    )
