"""Reading a stack band by band without JAX: the bleach choice, the bands, the CPU kernel's sums.

:func:`fluojax.fcs.pipeline.correlate_stack` correlates a stack in bands of rows. Its NumPy side
is here: the ``"auto"`` bleach choice from the image-averaged trace
(:func:`choose_bleach_correction`), the bleach correction's linear maps (:func:`bleach_design`),
each band with its saturation and no-signal masks (:func:`read_band`), and, on a CPU, each band
reduced by the numba kernel to the correlator's sums (:func:`read_bands`). Binning, the XLA
correlator, the ACFs' finish and the fits stay in the pipeline (JAX).

This module imports neither JAX nor, until a band is reduced, numba. So ``fluojax fcs fit``
forks a :class:`ReductionProcess` before it imports JAX: while the command imports JAX on one
core, the helper imports numba, loads the kernel and reduces the first stack on the other, and
the command finishes each band's ACFs as its sums arrive (the same arithmetic, so the same
numbers as in one process; docs/benchmarks.md, 'Whole command').
"""

from __future__ import annotations

import concurrent.futures
import functools
import itertools
import math
from collections.abc import Generator, Sequence
from typing import Any, NamedTuple

import numpy as np

from fluojax.io import InputError

__all__ = [
    "CPU_BAND_PIXELS",
    "Band",
    "BandLayout",
    "BleachChoice",
    "HelperFailed",
    "PreparedStack",
    "ReductionProcess",
    "band_layout",
    "bleach_design",
    "choose_bleach_correction",
    "intensity_scale",
    "mean_trace",
    "read_band",
    "read_bands",
    "reduce_traces",
    "resolve_bleach",
    "start_reduction_process",
    "varies_in_time",
]


# ------------------------------------------------------------------------------------------------
# Bleach correction: the choice and the linear maps


class BleachChoice(NamedTuple):
    """The bleach correction of a stack and why it was chosen.

    Attributes:
        requested: str, what was asked for: ``"auto"``, ``"none"`` or ``"polyK"``.
        order: int, the polynomial order applied (0 = none).
        relative_decay: float or None, ``1 - f(end)/f(start)`` of the straight line fitted to the
            block means of the image-averaged trace (positive: the intensity falls).
        significance: float or None, |decay| over the rms scatter of those block means about a
            quadratic: the trend in units of the trace's own slow fluctuations.
        reason: str, one sentence.
    """

    requested: str
    order: int
    relative_decay: float | None
    significance: float | None
    reason: str

    def as_dict(self) -> dict:
        """For summary.json: requested, applied ("none" or "polyK"), the statistics, the reason."""
        return {
            "requested": self.requested,
            "applied": "none" if self.order == 0 else f"poly{self.order}",
            "order": self.order,
            "relative_decay": self.relative_decay,
            "significance": self.significance,
            "reason": self.reason,
        }


def mean_trace(stack, chunk_frames: int = 1024) -> np.ndarray:
    """The image-averaged intensity of every frame, read in chunks of frames (one pass).

    Arguments:
        stack: (T, H, W) array-like (array or memory map).
        chunk_frames: int, frames per read.

    Returns:
        (T,) float64 mean counts per pixel.

    8- and 16-bit integer frames are summed in 32-bit integers when no sum can overflow them
    (2.4x faster than float64 on a 2-core CPU: this pass reads the whole stack before the
    correlation does); integer sums are exact, as float64 sums of them are, so the means are
    the same.
    """
    t = stack.shape[0]
    pixels = int(np.prod(stack.shape[1:]))
    accumulate: np.dtype = np.dtype(np.float64)
    if np.issubdtype(stack.dtype, np.integer) and stack.dtype.itemsize <= 2:
        info = np.iinfo(stack.dtype)
        signed = info.min < 0
        if pixels * max(info.max, -info.min) < 2**31:
            accumulate = np.dtype(np.int32 if signed else np.uint32)
        else:
            accumulate = np.dtype(np.int64 if signed else np.uint64)
    out = np.empty(t, np.float64)
    for f in range(0, t, chunk_frames):
        chunk = np.asarray(stack[f : f + chunk_frames])
        out[f : f + chunk_frames] = chunk.reshape(chunk.shape[0], -1).sum(axis=1, dtype=accumulate) / pixels
    return out


def choose_bleach_correction(
    trace: np.ndarray,
    blocks: int = 32,
    threshold: float = 10.0,
    min_decay: float = 0.02,
    residual: float = 1e-3,
    max_order: int = 4,
) -> BleachChoice:
    """Whether and how to bleach-correct a stack, from its image-averaged trace (``"auto"``).

    Photobleaching is common to all pixels, so it shows in the mean over the image, where the
    diffusion fluctuations of single pixels average out; what remains of them there are the
    slow number fluctuations of the whole field of view (relative size ~1/sqrt(particles in
    view)), which a trend must stand out from. The trace is averaged in ``blocks`` equal
    blocks; a straight line fitted to them gives the relative decay ``delta = 1 - f(end)/f(start)``
    and a quadratic the scatter ``s`` (rms residual, relative to the mean) of the block means
    about a smooth curve. The stack is corrected when ``|delta| >= min_decay`` and
    ``|delta| / s >= threshold``. On bleach-free simulated 2 x 2 and 8 x 8 stacks of 2,500-50,000
    frames with D = 0.1-10 um^2/s the ratio stayed below 7.3 (192 stacks; docs/fcs.md), hence
    10. A trend that does not stand out from the field's own slow fluctuations changes each
    pixel's ACF by less than those fluctuations already do, so leaving it is the smaller error.

    The order is the lowest that leaves a residual trend below ``residual`` (relative) for an
    exponential decay of the measured depth: the best order-k polynomial misses
    ``exp(-a x)`` on [0, 1] by at most ``(a/2)^(k+1) / ((k+1)! 2^k)`` (Chebyshev interpolation
    bound), ``a = -ln(1 - delta)``; at most ``max_order`` (the Imaging FCS plugin's guidance: 4 or
    less). So a 10 % decay gets order 1, 30 % order 2, 60 % order 3. A lower order keeps more of
    each pixel's slow diffusion fluctuations, which a polynomial fitted per pixel would remove
    together with the bleach: the long-lag tail of the ACF and with it D (poly4 on 8 x 8 x 3,000
    frames at D = 1 um^2/s: median D +60 % against none; poly1: +5 %).

    Arguments:
        trace: (T,) image-averaged counts per frame (:func:`mean_trace`).
        blocks: int, block means fitted (each >= 72 frames for T >= 2,304).
        threshold: float, |delta| / s needed to correct.
        min_decay: float, smallest |delta| corrected (a 2 % trend adds ~3e-5 to G).
        residual: float, relative residual trend tolerated when choosing the order.
        max_order: int, highest polynomial order.

    Returns:
        ``BleachChoice`` with ``requested="auto"``.
    """
    x = np.asarray(trace, np.float64)
    per = x.shape[0] // blocks
    b = x[: per * blocks].reshape(blocks, per).mean(axis=1)
    level = b.mean()
    if not (np.isfinite(level) and level > 0 and per > 0):
        return BleachChoice("auto", 0, None, None, "no positive mean intensity: not corrected")
    b = b / level
    s = np.linspace(-1.0, 1.0, blocks)
    line = np.polynomial.legendre.legfit(s, b, 1)
    start, end = np.polynomial.legendre.legval(-1.0, line), np.polynomial.legendre.legval(1.0, line)
    delta = float(1.0 - end / start) if start > 0 else 0.0
    scatter = float(np.std(b - np.polynomial.legendre.legval(s, np.polynomial.legendre.legfit(s, b, 2))))
    sig = float(abs(delta) / scatter) if scatter > 0 else float("inf")
    sig_out = round(sig, 3) if np.isfinite(sig) else None
    if abs(delta) < min_decay or sig < threshold:
        why = (
            f"|decay| {abs(delta):.3g} < {min_decay:g}"
            if abs(delta) < min_decay
            else f"significance {sig:.3g} < {threshold:g}"
        )
        return BleachChoice(
            "auto", 0, round(delta, 5), sig_out, f"no significant trend in the mean trace ({why}): not corrected"
        )
    a = abs(np.log(max(1.0 - abs(delta), 1e-6)))  # decay constant over the record (a rise: the same size)
    order = next(
        (k for k in range(1, max_order + 1) if (a / 2) ** (k + 1) / (math.factorial(k + 1) * 2**k) <= residual),
        max_order,
    )
    return BleachChoice(
        "auto",
        order,
        round(delta, 5),
        sig_out,
        f"mean trace changes by {delta:.3g} ({sig:.3g} x its slow scatter): polynomial of order {order}",
    )


def resolve_bleach(stack, bleach_order: int | str) -> BleachChoice:
    """The ``BleachChoice`` for a setting: ``"auto"`` reads the stack once (:func:`mean_trace`)."""
    if bleach_order == "auto":
        return choose_bleach_correction(mean_trace(stack))
    k = int(bleach_order)
    return BleachChoice("none" if k == 0 else f"poly{k}", k, None, None, "requested")


@functools.lru_cache(maxsize=8)
def bleach_design(n_frames: int, order: int, points: int = 1000) -> tuple[int, np.ndarray, np.ndarray]:
    """The linear maps of the polynomial bleach correction for ``n_frames`` frames.

    The trace averaged in ``stride = ceil(T / points)``-frame blocks (the first
    ``T // stride`` blocks) is fitted by a Legendre series of degree ``order`` on the frame
    index scaled to [-1, 1]: coefficients ``fit_matrix @ block_means`` (least squares, the
    pseudo-inverse of the design matrix at the block centres), trend ``vander @ coefficients``.

    Arguments:
        n_frames: int, T.
        order: int >= 1, polynomial degree.
        points: int, approximate number of block averages to fit.

    Returns:
        (stride, fit_matrix (order + 1, blocks) float32, vander (T, order + 1) float32).
    """
    stride = max(1, -(-n_frames // points))
    nb = n_frames // stride
    centres = (np.arange(nb) + 0.5) * stride - 0.5
    scale = lambda s: 2.0 * s / max(n_frames - 1, 1) - 1.0  # noqa: E731  (frame index -> [-1, 1])
    fit_matrix = np.linalg.pinv(np.polynomial.legendre.legvander(scale(centres), order)).astype(np.float32)
    vander = np.polynomial.legendre.legvander(scale(np.arange(n_frames)), order).astype(np.float32)
    return stride, fit_matrix, vander


def intensity_scale(band: np.ndarray, low: float = 1e-6, high: float = 1e8) -> float:
    """A power of two that brings a band's largest |value| into [1024, 2048), or 1.0 when it is in range.

    G does not depend on the intensity scale, but the correlator sums products in float32:
    values near 1e19 overflow it (squares above 3.4e38) and values near 1e-20 fall into its
    subnormal range. A power of two rescales exactly.

    Arguments:
        band: array of intensities (finite).
        low, high: float, the range of the largest |value| left as it is.

    Returns:
        float, the factor to multiply the band by (divide the means by it afterwards).
    """
    peak = float(np.max(np.abs(band))) if band.size else 0.0
    if peak == 0.0 or low <= peak <= high:
        return 1.0
    return float(2.0 ** (10 - np.floor(np.log2(peak))))


def varies_in_time(band: np.ndarray, stride: int = 16) -> np.ndarray:
    """Which pixels of a (T, ...) block are not constant in time (min != max over all frames).

    Every ``stride``-th frame is checked first; only the pixels constant there (usually none)
    are checked on every frame, so this costs about 1/stride of a full min/max pass.

    Arguments:
        band: (T, ...) array.
        stride: frame step of the first check.

    Returns:
        (...) bool array.
    """
    sample = band[::stride]
    varies = sample.min(axis=0) != sample.max(axis=0)
    flat = ~varies
    if flat.any():
        candidates = band[:, flat]  # (T, k): the few pixels that looked constant
        varies[flat] = candidates.min(axis=0) != candidates.max(axis=0)
    return varies


# ------------------------------------------------------------------------------------------------
# Bands

CPU_BAND_PIXELS = 128
"""Pixels per band for the CPU kernel (a 50,000-frame uint16 band is 13 MB): of 64-1,024 pixels,
the fastest on a 2-core CPU for 128 x 128 x 50,000 and 64 x 64 x 20,000 stacks (docs/benchmarks.md)."""


class BandLayout(NamedTuple):
    """How a (T, H, W) stack is read in bands of rows (host constants).

    Attributes:
        shape: (T, H, W) of the stack.
        dtype: str, the stack's dtype (``numpy.dtype.str``).
        binning: int, n of the n x n pixel binning.
        overlap: bool, sliding-window binning ((H - n + 1) x (W - n + 1) pixels) instead of tiles.
        out_rows, out_cols: int, rows and columns of (binned) pixels.
        rows_per_band: int, rows of (binned) pixels per band.
        rows_in: int, rows of the stack read per band.
        p, q: int, correlator layout.
    """

    shape: tuple
    dtype: str
    binning: int
    overlap: bool
    out_rows: int
    out_cols: int
    rows_per_band: int
    rows_in: int
    p: int
    q: int

    @property
    def band_starts(self) -> range:
        """The first (binned) row of each band."""
        return range(0, self.out_rows, self.rows_per_band)


def band_layout(shape: tuple, dtype, binning: int, overlap: bool, band_pixels: int, p: int, q: int) -> BandLayout:
    """The :class:`BandLayout` of a (T, H, W) stack read in bands of about ``band_pixels`` (binned) pixels.

    Arguments:
        shape: (T, H, W).
        dtype: the stack's dtype.
        binning: int >= 1, n (at most min(H, W)).
        overlap: bool, sliding-window binning.
        band_pixels: int, pixels per band (whole rows, at least one).
        p, q: int, correlator layout.
    """
    _, h, w = shape
    n = int(binning)
    out_h = h - n + 1 if overlap else h // n
    out_w = w - n + 1 if overlap else w // n
    rows_per_band = max(1, min(out_h, band_pixels // out_w))
    rows_in = rows_per_band + n - 1 if overlap else rows_per_band * n
    return BandLayout(
        tuple(int(v) for v in shape), np.dtype(dtype).str, n, bool(overlap), out_h, out_w, rows_per_band, rows_in, p, q
    )


def read_band(stack, layout: BandLayout, out_row: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, float]:
    """The rows of the stack feeding one band of (binned) rows.

    Arguments:
        stack: (T, H, W) array or memory map.
        layout: its :class:`BandLayout`.
        out_row: the band's first (binned) row.

    Returns:
        (band (T, rows_in, W), padded by repeating the last row so that every band has one shape
        and rescaled by :func:`intensity_scale`; which of its raw pixels reach the detector's
        maximum (None for float data); which are not constant in time; the scale factor).

    Raises:
        fluojax.io.InputError: NaN or Inf intensities.
    """
    saturation = np.iinfo(stack.dtype).max if np.issubdtype(stack.dtype, np.integer) else None
    start = out_row * (1 if layout.overlap else layout.binning)
    rows_in = layout.rows_in
    band = np.ascontiguousarray(stack[:, start : start + rows_in, :])
    if not np.issubdtype(band.dtype, np.integer) and not np.all(np.isfinite(band)):
        raise InputError("the stack contains NaN or Inf intensities")
    if band.shape[1] < rows_in:  # pad the last band so every band has one shape
        band = np.pad(band, ((0, 0), (0, rows_in - band.shape[1]), (0, 0)), mode="edge")
    high = band.max(axis=0)
    varies = varies_in_time(band)
    scale = 1.0 if band.dtype.itemsize <= 2 and np.issubdtype(band.dtype, np.integer) else intensity_scale(band)
    if scale != 1.0:
        band = np.multiply(band.astype(np.float64 if band.dtype.itemsize > 4 else np.float32), scale).astype(np.float32)
    return band, (None if saturation is None else high >= saturation), varies, scale


def reduce_traces(traces: np.ndarray, bleach_order: int, p: int, q: int):
    """The CPU kernel's ``lags.LagSums`` of (T, pixels) traces, bleach-corrected by the polynomial
    of ``bleach_order`` first (0: none; :func:`bleach_design`,
    :func:`fluojax.fcs.correlator_cpu.lag_sums_cpu`)."""
    from fluojax.fcs import correlator_cpu

    trend = bleach_design(traces.shape[0], bleach_order) if bleach_order > 0 else None
    return correlator_cpu.lag_sums_cpu(traces, p, q, trend)


class Band(NamedTuple):
    """One band of a stack as :func:`read_bands` yields it.

    Attributes:
        out_row: int, its first (binned) row.
        data: the (T, rows_in, W) band (:func:`read_band`), or its ``lags.LagSums`` over the band's
            rows_in x W pixels (row-major) where the CPU kernel reduced it.
        saturated: (rows_in, W) bool, raw pixels that reach the detector's maximum (None: float data).
        varies: (rows_in, W) bool, raw pixels not constant in time.
        scale: float, the factor the intensities were multiplied by (:func:`intensity_scale`).
    """

    out_row: int
    data: Any
    saturated: np.ndarray | None
    varies: np.ndarray
    scale: float


def read_bands(stack, layout: BandLayout, bleach_order: int | str, reduce: bool) -> Generator[Any, None, None]:
    """The stack's :class:`BleachChoice`, then each of its bands in order (:class:`Band`).

    A thread reads band k + 1 while band k is reduced or used; before the first band, the thread
    reads the mean trace (``bleach_order="auto"``) and the first band while this one (with
    ``reduce``) imports numba and loads the kernel (NumPy's reductions and copies release the GIL).

    Arguments:
        stack: (T, H, W) array or memory map.
        layout: its :class:`BandLayout`.
        bleach_order: ``"auto"`` or an int (:func:`resolve_bleach`).
        reduce: reduce each band with the CPU kernel (:func:`fluojax.fcs.correlator_cpu.lag_sums_cpu`,
            bleach correction included; needs ``layout.binning == 1``); else yield the bands.

    Yields:
        a ``BleachChoice``, then one ``Band`` per band.

    Raises:
        fluojax.io.InputError: NaN or Inf intensities (:func:`read_band`).
    """
    if reduce and layout.binning != 1:
        raise ValueError("the CPU kernel reduces unbinned bands only (binning 1)")
    n_frames = layout.shape[0]
    starts = list(layout.band_starts)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as reader:
        choice = reader.submit(resolve_bleach, stack, bleach_order)
        pending = reader.submit(read_band, stack, layout, starts[0])
        if reduce:
            from fluojax.fcs import correlator_cpu

            correlator_cpu.load_kernel(stack.dtype, layout.p, layout.q)
        bleach = choice.result()
        yield bleach
        for i, out_row in enumerate(starts):
            band, saturated, varies, scale = pending.result()
            if i + 1 < len(starts):
                pending = reader.submit(read_band, stack, layout, starts[i + 1])
            traces = band.reshape(n_frames, -1)
            data = reduce_traces(traces, bleach.order, layout.p, layout.q) if reduce else band
            yield Band(out_row, data, saturated, varies, scale)


# ------------------------------------------------------------------------------------------------
# Reducing in a helper process


_SILENCE_S = 300.0
"""Seconds without a message after which the helper counts as failed (a band takes well under one;
the bleach pass over a stack of many GB a few)."""


class HelperFailed(Exception):
    """The helper process failed (not the data): the command reduces the stack itself instead."""


class ReductionProcess:
    """A forked process that reduces stacks with the CPU kernel for a command importing JAX.

    Started by :func:`start_reduction_process` before the command imports JAX. :meth:`submit`
    asks it for a stack (``fcs fit`` asks for its first stack at once, from the command line);
    the helper then imports numba and loads the kernel while its reader thread reads the mean
    trace and the first band (:func:`read_bands`), and reduces band after band. :meth:`bands`
    returns what it sends back, one message per band. The command checks that the layout it would
    use itself is the one the helper used, and otherwise (or should the helper fail, be gone or
    stay silent) reads the stack itself. A stack the command gives up on is cancelled.
    """

    def __init__(self, process, connection, overlap: bool, bleach_order: int | str, band_pixels: int, p: int, q: int):
        self._process = process
        self._connection = connection
        self._options = (1, bool(overlap), bleach_order, int(band_pixels), int(p), int(q))
        self._jobs = itertools.count()
        self._submitted: dict[str, int] = {}
        self._expected: list[str] = []
        self.stacks_reduced = 0
        """Stacks whose every band the command received from the helper."""

    def submit(self, path: str) -> None:
        """Ask for the reduction of the stack at ``path`` (jobs run in the order submitted).

        Arguments:
            path: the TIFF stack's path, as the command will read it.
        """
        if self._connection is None or path in self._submitted:
            return
        job = next(self._jobs)
        if self._send(("job", job, path, *self._options)):
            self._submitted[path] = job

    @property
    def pending(self) -> tuple[str, ...]:
        """The stacks asked for and not yet received whole, in the order asked."""
        return tuple(self._submitted)

    def expect(self, paths: Sequence[str]) -> None:
        """The stacks the command will ask for, in its order: once a stack has come back whole, the
        next one is asked for at once, so the helper reduces it while the command fits and writes
        the one before (up to the helper's outbox of 64 bands ahead)."""
        self._expected = [str(p) for p in paths]

    def cancel(self, path: str) -> None:
        """Tell the helper to stop reducing the stack at ``path`` (if it was asked for and not yet received)."""
        job = self._submitted.pop(path, None)
        if job is not None:
            self._send(("cancel", job))

    def prepared(self, path: str) -> PreparedStack:
        """The stack at ``path``, to be reduced by this process when the pipeline asks for its bands."""
        return PreparedStack(self, path)

    def bands(self, path: str, layout: BandLayout, bleach_order: int | str) -> Generator[Any, None, None] | None:
        """What :func:`read_bands` with ``reduce=True`` yields for the stack at ``path``, reduced in
        the helper (:meth:`submit` now, unless it was); None where the bleach setting is not the
        helper's or the helper is gone.

        Raises (while iterating):
            fluojax.io.InputError: the helper refused the data (its message).
            HelperFailed: the helper failed otherwise, or the layout it used is not ``layout``.
        """
        if self._options[2] != bleach_order:
            self.cancel(path)
            return None
        self.submit(path)
        job = self._submitted.get(path)
        return None if self._connection is None or job is None else self._receive(path, job, layout)

    def _receive(self, path: str, job: int, layout: BandLayout) -> Generator[Any, None, None]:
        done = False
        try:
            while True:
                try:
                    if not self._connection.poll(_SILENCE_S):
                        raise EOFError
                    sent, kind, payload = self._connection.recv()
                except (EOFError, OSError, TypeError, AttributeError):  # AttributeError: closed meanwhile
                    self.close()
                    raise HelperFailed("the reduction process is gone or silent") from None
                if sent != job:  # what is left of a job that the command gave up on
                    continue
                if kind == "layout" and payload != layout:
                    raise HelperFailed(f"the reduction process used {payload}, not {layout}")
                if kind == "error":
                    done = True
                    input_error, message = payload
                    if input_error:
                        raise InputError(message)
                    raise HelperFailed(message)
                if kind == "end":
                    done = True
                    self.stacks_reduced += 1
                    self._submit_next(path)
                    return
                if kind == "item":
                    yield payload
        finally:  # finished, failed, or the command stopped reading: the job is over either way
            if done:
                self._submitted.pop(path, None)
            else:
                self.cancel(path)

    def _submit_next(self, path: str) -> None:
        """:meth:`submit` the stack expected after ``path`` (:meth:`expect`), if any."""
        if path in self._expected:
            following = self._expected[self._expected.index(path) + 1 :]
            if following:
                self.submit(following[0])

    def _send(self, message: tuple) -> bool:
        if self._connection is None:
            return False
        try:
            self._connection.send(message)
        except OSError:
            self.close()
            return False
        return True

    @property
    def running(self) -> bool:
        """Whether the helper is still in use (False once it was found gone or silent, or closed)."""
        return self._connection is not None

    def close(self) -> None:
        """End the process."""
        self._connection = None
        self._process.terminate()
        self._process.join(timeout=5)


class PreparedStack(NamedTuple):
    """A stack that a :class:`ReductionProcess` may reduce: what
    :func:`fluojax.fcs.pipeline.correlate_stack` takes as ``prepared``."""

    process: ReductionProcess
    path: str

    def bands(self, layout: BandLayout, bleach_order: int | str) -> Generator[Any, None, None] | None:
        """:meth:`ReductionProcess.bands` of this stack."""
        return self.process.bands(self.path, layout, bleach_order)

    def cancel(self) -> None:
        """:meth:`ReductionProcess.cancel` of this stack."""
        self.process.cancel(self.path)


def start_reduction_process(
    overlap: bool, bleach_order: int | str, band_pixels: int = CPU_BAND_PIXELS, p: int = 16, q: int = 8
) -> ReductionProcess | None:
    """A :class:`ReductionProcess` for stacks without binning, or None where it would not help:
    outside Linux, once JAX is imported (:func:`fluojax.forked.start`), without numba, and where
    JAX may run on an accelerator (``JAX_PLATFORMS`` names another platform first, or, unset, a
    JAX plugin or libtpu is installed): there the pipeline correlates in XLA, not with the kernel.

    Arguments:
        overlap, band_pixels, p, q: as for :func:`band_layout` (binning 1), for every stack.
        bleach_order: ``"auto"`` or an int, for every stack.
    """
    import importlib.util
    import os

    from fluojax import forked

    platforms = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
    if platforms:
        cpu = platforms.split(",")[0].strip().lower() == "cpu"
    else:
        cpu = importlib.util.find_spec("jax_plugins") is None and importlib.util.find_spec("libtpu") is None
    if not cpu or importlib.util.find_spec("numba") is None:
        return None
    started = forked.start(_serve, "fluojax-reduce")
    return None if started is None else ReductionProcess(*started, overlap, bleach_order, band_pixels, p, q)


def _serve(connection) -> None:
    """The helper: run each job as it comes (:func:`read_bands`, the stack memory-mapped), its
    messages ``(job, kind, payload)`` queued for a sending thread (a band's sums are ~0.7 MB and
    the command reads them only once it has imported JAX); between bands, read what the command
    sent (a cancel ends the job). Killed when the command ends (:func:`fluojax.forked.start`)."""
    import collections
    import os
    import queue
    import signal
    import sys
    import threading

    from fluojax import io

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's; it ends this process
    # numba, loading the kernel, imports scipy.linalg (0.15 s) only to see whether np.dot and
    # np.linalg could call BLAS; the kernel calls neither, so here that import fails at once
    sys.modules.setdefault("scipy.linalg", None)  # type: ignore[arg-type]
    outbox: queue.Queue = queue.Queue(maxsize=64)
    jobs: collections.deque = collections.deque()
    cancelled: set[int] = set()

    def send_all():
        while True:
            try:
                connection.send(outbox.get())
            except (OSError, ValueError):  # the command is gone
                os._exit(0)

    def take(message) -> None:
        if message[0] == "cancel":
            cancelled.add(message[1])
        else:
            jobs.append(message[1:])

    def read_messages(block: bool) -> None:
        try:
            if block:
                take(connection.recv())
            while connection.poll(0):
                take(connection.recv())
        except (EOFError, OSError):
            os._exit(0)

    threading.Thread(target=send_all, daemon=True).start()
    while True:
        read_messages(block=not jobs)
        if not jobs:  # only a cancel came
            continue
        number, path, binning, overlap, bleach_order, band_pixels, p, q = jobs.popleft()
        if number in cancelled:
            continue
        try:
            stack = io.memory_map(path)
            if stack is None:  # compressed: the command reads it whole already; not a second time here
                raise HelperFailed(f"{path} cannot be memory-mapped")
            layout = band_layout(stack.shape, stack.dtype, binning, overlap, band_pixels, p, q)
            outbox.put((number, "layout", layout))
            for item in read_bands(stack, layout, bleach_order, reduce=True):
                read_messages(block=False)
                if number in cancelled:
                    break
                outbox.put((number, "item", item))
            else:
                outbox.put((number, "end", None))
        except InputError as err:
            outbox.put((number, "error", (True, str(err))))
        except Exception as err:
            outbox.put((number, "error", (False, f"{type(err).__name__}: {' '.join(str(err).split())}")))
