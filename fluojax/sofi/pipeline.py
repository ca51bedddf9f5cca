"""From a recorded stack to SOFI images: checks, cumulants in frame blocks, flattening, linearization, bSOFI, files.

The top of the SOFI technique, the library path ``fluojax sofi STACK.tif`` calls and Python users
reach the same way. :func:`sofi_images` runs sofipackage's order of steps (Leutenegger,
Geissbuehler, Lukes, Grussmayer et al.; Geissbuehler et al. 2012): the stack, whole or as blocks
of frames (sofipackage's subsequences), gives per block and order n the zero-lag cross-cumulants
of n distinct pixels on n x n virtual-pixel sub-lattices
(:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices`, Dertinger et al. 2010); the blocks'
sub-lattices are averaged, weighted by their frame counts, then flattened and interleaved onto
the ``n (H - 4) + 1`` by ``n (W - 4) + 1`` grid (:func:`fluojax.sofi.estimate.flatten`): the raw
flat cumulant images (sofipackage's ``sofi_c<n>``). Linearization deconvolves them with the
order-scaled Gaussian PSF (Richardson-Lucy) and takes the n-th root (``"root"``, sofipackage's
``sofi<n>``) or the adaptive exponent from the estimated on-time ratio (``"adaptive"``,
``sofi_lin<n>``); ``bsofi`` adds the balanced image and the maps of on-time ratio, brightness and
density from orders 2-4 (Geissbuehler et al. 2012). The PSF's FWHM, when not given, is estimated
from the sub-lattice means (:func:`fluojax.sofi.estimate.estimate_fwhm`). The temporal mean (the
wide-field image) is kept too. :func:`check_settings`, :func:`check_stack_shape` and
:func:`check_block` refuse what cannot be analysed (:class:`fluojax.io.InputError`, one line
each): an order outside 2-4, fewer frames than the order needs (:func:`minimum_frames`), a stack
smaller than the 4 x 4 pixel neighbourhood, non-finite values, and a stack without fluctuations.
:func:`images_summary` gives the JSON summary and :func:`write_images` the TIFF and PNG files.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import noise
from fluojax.io import require
from fluojax.sofi import cumulants, cumulants_cpu, estimate, models, simulate

if TYPE_CHECKING:
    from jaxtyping import Float

__all__ = [
    "CAMERAS",
    "CROSS_ORDERS",
    "LINEARIZATIONS",
    "PRESETS",
    "ImageSettings",
    "SofiImages",
    "check_block",
    "check_settings",
    "check_stack_shape",
    "emitters_csv",
    "image_extent_nm",
    "images_summary",
    "minimum_frames",
    "output_shape",
    "parse_orders",
    "simulation_settings",
    "sofi_images",
    "to_uint16",
    "write_image",
    "write_images",
]

GRID = cumulants.GRIDS["sofipackage"]
"""The virtual-pixel grid of the images: sofipackage's 4 x 4 neighbourhood."""

CROSS_ORDERS = GRID.orders
"""The orders of cross-cumulants with virtual pixels (2, 3, 4)."""

LINEARIZATIONS = estimate.LINEARIZATIONS
"""Linearizations after deconvolution: the n-th root, or the adaptive exponent (Geissbuehler et al. 2012)."""

# the estimator's steps compiled once per shape (run op by op they cost ~1 s each on a small image)
_flatten = jax.jit(estimate.flatten, static_argnames=("median",))
_estimate_fwhm = jax.jit(estimate.estimate_fwhm)
_linearize = jax.jit(estimate.linearize, static_argnames=("order", "fwhm_px", "iterations"))
_adaptive_linearize = jax.jit(estimate.adaptive_linearize, static_argnames=("order", "fwhm_px", "iterations", "points"))
_estimate_on_ratio = jax.jit(estimate.estimate_on_ratio, static_argnames=("points",))
_bsofi_parameters = jax.jit(estimate.bsofi_parameters, static_argnames=("exponent",))
_balanced_sofi = jax.jit(estimate.balanced_sofi)


@dataclasses.dataclass(frozen=True)
class ImageSettings:
    """What :func:`sofi_images` computes (static: it chooses orders, code paths and block sizes).

    Attributes:
        orders: cumulant orders whose images are made, each in 2-4 (sorted, no repeats).
        linearize: ``"root"``, ``"adaptive"`` or None (no deconvolution nor linearization).
        bsofi: also the balanced image and the on-time ratio, brightness and density maps.
        fwhm_px: FWHM of the microscope's PSF in camera pixels, for the deconvolution and the
            on-ratio; None: estimated from the cumulants.
        iterations: Richardson-Lucy iterations (sofipackage: 10).
        block_frames: frames per block (None: the whole stack is one block).
        cumulant_kernel: ``"auto"`` (the numba CPU kernel of :mod:`fluojax.sofi.cumulants_cpu`
            when JAX runs on the CPU and numba imports, else XLA), ``"cpu"`` or ``"xla"``
            (:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices`). The same values up to
            float32 rounding, except where XLA leaves rounding residue: the kernel's means are
            exact for constant pixels, so a stack whose only fluctuating pixels have no
            fluctuating neighbours is refused there, while XLA returns residue-sized images.
            :class:`SofiImages` records the kernel that was used.
        on_ratio: rho_on of the adaptive linearization when it is known (e.g. from single-molecule
            data or a simulation), in (0, 1); None: estimated from orders 2-3
            (:func:`fluojax.sofi.estimate.estimate_on_ratio`, one emitter per point).
    """

    orders: tuple[int, ...] = (2,)
    linearize: str | None = "root"
    bsofi: bool = False
    fwhm_px: float | None = None
    iterations: int = 10
    block_frames: int | None = None
    cumulant_kernel: str = "auto"
    on_ratio: float | None = None

    def uses_cpu_kernel(self) -> bool:
        """Whether the blocks' cumulants come from the numba CPU kernel rather than XLA."""
        if self.cumulant_kernel == "auto":
            return jax.default_backend() == "cpu" and cumulants_cpu.available()
        return self.cumulant_kernel == "cpu"

    @property
    def computed_orders(self) -> tuple[int, ...]:
        """The orders whose cumulants are computed: ``orders``, plus 2-3 for the adaptive
        linearization's on-ratio when it is not given, and 2-4 for bSOFI."""
        estimated = self.linearize == "adaptive" and self.on_ratio is None
        extra = set(CROSS_ORDERS) if self.bsofi else {2, 3} if estimated else set()
        return tuple(sorted(set(self.orders) | extra))


class SofiImages(NamedTuple):
    """The SOFI images of one stack (float32 NumPy arrays, the bSOFI maps JAX arrays; dicts keyed by order).

    Attributes:
        mean: ``(H, W)`` temporal mean of all frames (the wide-field image), in the stack's units.
        cumulants: order n -> ``(n (H - 4) + 1, n (W - 4) + 1)`` flattened cross-cumulant image
            (sofipackage's ``sofi_c<n>``), in the stack's units to the power n.
        linearized: order n -> the deconvolved, linearized image on the same grid (empty without
            linearization); root: the stack's units; adaptive: up to a power.
        bsofi: the on-ratio, brightness and density maps on the order-4 grid
            (:class:`fluojax.sofi.estimate.BsofiMaps`), or None.
        balanced: the balanced SOFI image on the order-4 grid (values in [0, 1]), or None.
        fwhm_px: the PSF FWHM used, in camera pixels (given or estimated).
        on_ratio: the on-time ratio behind the adaptive linearization, or None.
        frames: frames used.
        blocks: blocks of frames the cumulants were averaged over.
        timings_s: seconds per step (``cumulants`` with the reading, ``flatten``, ``linearize``, ``bsofi``).
        settings: what was asked for.
    """

    mean: np.ndarray
    cumulants: dict[int, np.ndarray]
    linearized: dict[int, np.ndarray]
    bsofi: estimate.BsofiMaps | None
    balanced: np.ndarray | None
    fwhm_px: float | None
    on_ratio: float | None
    frames: int
    blocks: int
    timings_s: dict[str, float]
    settings: ImageSettings


# ------------------------------------------------------------------------------------------------
# Checks


def parse_orders(text: str) -> tuple[int, ...]:
    """Cumulant orders from ``"2"``, ``"2-4"``, ``"2..4"`` or ``"2,4"`` (any mix, separated by commas).

    Returns:
        the sorted orders without repeats (their range is checked by :func:`check_settings`).

    Raises:
        InputError: text that is not a list of integers and ranges, or a range that runs backwards.
    """
    orders: set[int] = set()
    for part in text.replace("..", "-").split(","):
        ends = part.strip().split("-")
        try:
            numbers = [int(e) for e in ends]
        except ValueError:
            numbers = []
        require(1 <= len(numbers) <= 2, f"orders {text!r}: give an order (2), a range (2-4) or a list (2,4)")
        require(numbers[0] <= numbers[-1], f"orders {text!r}: the range {part.strip()} runs backwards")
        orders.update(range(numbers[0], numbers[-1] + 1))
    return tuple(sorted(orders))


def minimum_frames(order: int) -> int:
    """Fewest frames (per block) for an order-n cumulant image: ``max(4, n)``, as
    :func:`fluojax.sofi.cumulants.cross_cumulant_sublattices` (sofipackage refuses stacks below 4)."""
    return max(cumulants.MIN_FRAMES, int(order))


def output_shape(shape_yx: tuple[int, int], order: int) -> tuple[int, int]:
    """The order-n image's shape for an ``(H, W)`` stack: ``(n (H - 4) + 1, n (W - 4) + 1)`` (sofipackage's grid)."""
    h, w = GRID.sublattice_shape(shape_yx)
    return order * h - (order - 1), order * w - (order - 1)


def check_settings(settings: ImageSettings) -> None:
    """Refuse settings that cannot give images (one InputError line each).

    Raises:
        InputError: no order, an order outside 2-4, an unknown linearization, a PSF FWHM that
            is not a positive number, fewer than 1 iteration, or blocks shorter than the highest
            order needs.
    """
    require(len(settings.orders) > 0, "no cumulant order given: choose among 2-4")
    for order in settings.orders:
        require(
            order in CROSS_ORDERS,
            f"order {order}: cross-cumulants are built for orders {CROSS_ORDERS[0]}-{CROSS_ORDERS[-1]}",
        )
    require(
        settings.linearize is None or settings.linearize in LINEARIZATIONS,
        f"linearization {settings.linearize!r}: choose {' or '.join(LINEARIZATIONS)}",
    )
    fwhm = settings.fwhm_px
    require(
        fwhm is None or (math.isfinite(fwhm) and fwhm > 0),
        f"PSF FWHM {fwhm} px: must be a positive number of camera pixels",
    )
    rho = settings.on_ratio
    require(
        rho is None or (math.isfinite(rho) and 0.0 < rho < 1.0),
        f"on-time ratio {rho}: must lie between 0 and 1",
    )
    require(
        rho is None or settings.linearize == "adaptive",
        "an on-time ratio is for the adaptive linearization: add --linearize adaptive",
    )
    if rho is not None:
        f2 = rho * (1.0 - rho)
        for order in settings.orders:  # the exponent divides by log(i / f_n(rho)): f_n must not vanish
            fn = float(models.bernoulli_cumulant(order, rho))
            require(
                abs(fn) > 1e-3 * f2,
                f"on-time ratio {rho}: the order-{order} Bernoulli cumulant f_{order} vanishes there, so its "
                "adaptive exponent is infinite; choose another order",
            )
    require(settings.iterations >= 1, f"{settings.iterations} deconvolution iterations: must be at least 1")
    require(
        settings.cumulant_kernel in ("auto", "cpu", "xla"),
        f"cumulant kernel {settings.cumulant_kernel!r}: choose auto, cpu or xla",
    )
    require(
        settings.cumulant_kernel != "cpu" or cumulants_cpu.available(),
        "the CPU cumulant kernel needs numba (pip install numba), or choose xla",
    )
    if settings.block_frames is not None:
        top = max(settings.computed_orders)
        require(
            settings.block_frames >= minimum_frames(top),
            f"blocks of {settings.block_frames} frames: order {top} needs at least {minimum_frames(top)} frames per block",
        )


def check_stack_shape(
    shape: tuple, orders: Iterable[int], name: str = "the stack", linearize: str | None = None
) -> None:
    """Refuse a stack that is not ``(frames, y, x)``, is smaller than the 4 x 4 pixel
    neighbourhood of the cross-cumulants, has too few frames for the highest order, or, for
    the adaptive linearization, has fewer camera pixels with cumulants ((H - 3) x (W - 3)) than
    the brightest points its exponent and on-ratio average (:data:`fluojax.sofi.estimate.PEAK_POINTS`).

    Arguments:
        shape: ``(T, H, W)``; T may be None (not known yet: only the pixels are checked).
        orders: the orders to compute.
        name: the stack's name in the messages.
        linearize: the linearization asked for (``"adaptive"``, ``"root"`` or None).
    """
    require(len(shape) == 3, f"{name}: shape {tuple(shape)}; a stack is (frames, y, x)")
    frames, ny, nx = shape
    side = GRID.min_size
    require(
        ny >= side and nx >= side,
        f"{name}: {ny} x {nx} pixels, smaller than the {side} x {side} pixel neighbourhood the "
        "cross-cumulants take their pixels from",
    )
    if linearize == "adaptive":
        sub = GRID.sublattice_shape((ny, nx))
        require(
            sub[0] * sub[1] >= estimate.PEAK_POINTS,
            f"{name}: {ny} x {nx} pixels leave {sub[0]} x {sub[1]} with cumulants, fewer than the "
            f"{estimate.PEAK_POINTS} brightest points the adaptive linearization averages; use --linearize root",
        )
    if frames is not None:
        top = max(orders)
        require(
            frames >= minimum_frames(top),
            f"{name}: {frames} frames; order {top} needs at least {minimum_frames(top)} frames",
        )


def check_finite(block: np.ndarray, name: str = "the stack") -> None:
    """Refuse a block of frames with non-finite values (integer data are finite: not read)."""
    if not np.issubdtype(block.dtype, np.integer):
        require(bool(np.all(np.isfinite(block))), f"{name}: holds non-finite values (NaN or infinity)")


def check_block(block: np.ndarray, name: str = "the stack") -> bool:
    """Refuse a block of frames with non-finite values; return whether any pixel fluctuates in it."""
    check_finite(block, name)
    return block.shape[0] > 1 and bool(np.any(np.ptp(block, axis=0) > 0))


# ------------------------------------------------------------------------------------------------
# The images


def _blocks(stack_or_blocks, block_frames: int | None, keep_dtype: bool = False) -> Iterator[np.ndarray]:
    """Blocks of frames from an array (sliced) or an iterable of blocks (as given), as float32;
    with ``keep_dtype`` uint16 and float32 blocks stay as they are (the CPU kernel reads them)."""

    def host(block) -> np.ndarray:
        block = np.asarray(block)
        return block if keep_dtype and block.dtype in (np.uint16, np.float32) else block.astype(np.float32)

    if hasattr(stack_or_blocks, "shape"):
        frames = stack_or_blocks.shape[0]
        size = frames if block_frames is None else block_frames
        for start in range(0, frames, max(size, 1)):
            yield host(stack_or_blocks[start : start + size])
    else:
        for block in stack_or_blocks:
            yield host(block)


def _with_short_tail_merged(blocks: Iterator[np.ndarray], minimum: int) -> Iterator[np.ndarray]:
    """The blocks, with a last block shorter than ``minimum`` frames joined to the one before
    (at most two blocks are held at once)."""
    previous = None
    for block in blocks:
        if previous is not None:
            if block.shape[0] < minimum:
                block = np.concatenate([previous, block])
            else:
                yield previous
        previous = block
    if previous is not None:
        yield previous


def _checked(
    blocks: Iterator[np.ndarray], computed: tuple[int, ...], name: str, seen: dict[str, int], linearize: str | None
) -> Iterator[np.ndarray]:
    """The blocks, each checked against the first's pixels and the orders' needs; counts the
    frames and blocks passed on in ``seen``."""
    first = None
    for block in blocks:
        if first is not None:
            require(
                block.shape[1:] == first,
                f"{name}: a block of {block.shape[1]} x {block.shape[2]} pixels after blocks of "
                f"{first[0]} x {first[1]}",
            )
        check_stack_shape(block.shape if first is None else (None, *block.shape[1:]), computed, name, linearize)
        first = block.shape[1:]
        seen["frames"] += block.shape[0]
        seen["blocks"] += 1
        yield block


def _block_terms_cpu(block: np.ndarray, computed: tuple[int, ...], name: str) -> tuple:
    """:func:`_block_terms` in one pass of the numba kernel (a constant pixel's mean is exact
    there, so its variance and every cumulant it enters are exactly 0)."""
    check_finite(block, name)
    res = cumulants_cpu.block_cumulants_cpu(block, computed)
    assert res.variance is not None
    # squares of tiny deviations (|d| < 1e-23) underflow in float32: then ask the values themselves
    varies = block.shape[0] > 1 and bool(np.any(res.variance > 0) or np.any(np.ptp(block, axis=0) > 0))
    return res.mean, np.float64(varies), res.sublattices


def _block_terms(block: np.ndarray, computed: tuple[int, ...], name: str) -> tuple:
    """(mean image, 1 if any pixel fluctuates else 0, {order: cross-cumulant sub-lattices}) of one
    block; a block without fluctuations has every cumulant 0 (not computed: its float32 mean
    could leave rounding residues)."""
    varies = check_block(block, name)
    x = jnp.asarray(block)
    sub = {}
    for order in computed:
        if varies:
            sub[order] = cumulants.cross_cumulant_sublattices(x, order)
        else:
            shape = jax.eval_shape(lambda y, n=order: cumulants.cross_cumulant_sublattices(y, n), x).shape
            sub[order] = np.zeros(shape, np.float32)
    return block.mean(axis=0, dtype=np.float64), np.float64(varies), sub


def sofi_images(
    stack_or_blocks: Float[np.ndarray, "t y x"] | Iterable[Float[np.ndarray, "t y x"]],
    orders: Iterable[int] = (2,),
    linearize: str | None = "root",
    bsofi: bool = False,
    fwhm_px: float | None = None,
    iterations: int = 10,
    block_frames: int | None = None,
    name: str = "the stack",
    cumulant_kernel: str = "auto",
    on_ratio: float | None = None,
) -> SofiImages:
    """SOFI images of a stack: flat cross-cumulant images per order, linearized images, bSOFI, the mean.

    For each block b of ``T_b`` frames and order n the cross-cumulant sub-lattices ``K_n^b``
    (n, n, H - 3, W - 3) are computed (:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices`,
    each block centred by its own mean; on a CPU all orders in one pass of the numba kernel,
    :func:`fluojax.sofi.cumulants_cpu.block_cumulants_cpu`); the stack's are ``K_n = sum_b T_b K_n^b / sum_b T_b``
    (:func:`fluojax.sofi.cumulants.mean_over_blocks`; sofipackage averages its equally long
    subsequences). A last block shorter than
    ``block_frames / 2`` or than the highest order needs (:func:`minimum_frames`) is joined to the
    block before it, so no frame is left out. ``K_n`` is flattened by sub-lattice mean
    equalisation, interleaved and 2 x 2 median filtered (:func:`fluojax.sofi.estimate.flatten`).
    FWHM ``w``: ``fwhm_px``, else :func:`fluojax.sofi.estimate.estimate_fwhm` of the lowest
    order's sub-lattices. Linearization (:func:`fluojax.sofi.estimate.linearize`): Richardson-Lucy
    with a Gaussian of sigma ``w sqrt(n) / sqrt(8 ln 2)`` output pixels, ``iterations`` times, then
    the n-th root; adaptive (:func:`fluojax.sofi.estimate.adaptive_linearize`): the exponent from
    the on-time ratio rho_on, ``on_ratio`` or else :func:`fluojax.sofi.estimate.estimate_on_ratio`
    (the bSOFI maps estimate their own, per pixel). rho_on and the
    bSOFI maps (:func:`fluojax.sofi.estimate.bsofi_parameters`) compare cumulants of different
    orders at one pixel, so they take the distance-factor flattening with ``w`` (which keeps the
    model's scale), not the mean equalisation; the balanced image
    (:func:`fluojax.sofi.estimate.balanced_sofi`) takes the root-linearized orders 3 and 4.

    Arguments:
        stack_or_blocks: a ``(T, H, W)`` array (NumPy, a memory map, JAX), sliced into blocks of
            ``block_frames``, or an iterable of ``(t, H, W)`` blocks (e.g. from
            :func:`fluojax.io.read_stack_blocks`), used as given.
        orders: cumulant orders, each in 2-4.
        linearize: ``"root"``, ``"adaptive"`` or None.
        bsofi: also the balanced image and the on-time ratio, brightness and density maps.
        fwhm_px: PSF FWHM in camera pixels (None: estimated).
        iterations: Richardson-Lucy iterations.
        block_frames: frames per block when ``stack_or_blocks`` is an array (None: one block).
        name: the stack's name in the messages.
        cumulant_kernel: ``"auto"``, ``"cpu"`` or ``"xla"`` (:class:`ImageSettings`).
        on_ratio: rho_on of the adaptive linearization (None: estimated; :class:`ImageSettings`).

    Returns:
        :class:`SofiImages`.

    Raises:
        InputError: see :func:`check_settings`, :func:`check_stack_shape` and :func:`check_block`;
            a stack without fluctuations (every pixel constant in time), or whose neighbouring
            pixels never fluctuate together (all cross-cumulants zero).
    """
    settings = ImageSettings(
        tuple(sorted({int(o) for o in orders})),
        linearize,
        bool(bsofi),
        fwhm_px,
        int(iterations),
        block_frames,
        cumulant_kernel,
        on_ratio,
    )
    check_settings(settings)
    computed = settings.computed_orders
    least = minimum_frames(max(computed))
    if hasattr(stack_or_blocks, "shape"):
        check_stack_shape(tuple(stack_or_blocks.shape), computed, name, settings.linearize)
    t0 = time.perf_counter()
    shortest = max(least, (block_frames or 0) // 2)
    seen = {"frames": 0, "blocks": 0}
    cpu = settings.uses_cpu_kernel()
    settings = dataclasses.replace(settings, cumulant_kernel="cpu" if cpu else "xla")  # what was used
    block_terms = _block_terms_cpu if cpu else _block_terms
    blocks = _blocks(stack_or_blocks, block_frames, keep_dtype=cpu)
    blocks = _checked(_with_short_tail_merged(blocks, shortest), computed, name, seen, settings.linearize)
    mean, fluctuation, sub = cumulants.mean_over_blocks(blocks, lambda block: block_terms(block, computed, name))
    frames, n_blocks = seen["frames"], seen["blocks"]
    require(
        bool(fluctuation > 0), f"{name}: no fluctuations: every pixel is constant in time, so every cumulant is zero"
    )
    timings = {"cumulants": time.perf_counter() - t0}
    t1 = time.perf_counter()
    for order in computed:
        require(
            bool(jnp.any(sub[order] != 0)),
            f"{name}: the order-{order} cross-cumulants are all zero: no neighbouring pixels fluctuate together",
        )
    flat = {order: np.asarray(_flatten(sub[order]), np.float32) for order in computed}
    fwhm = settings.fwhm_px
    if fwhm is None and (settings.linearize is not None or settings.bsofi):
        fwhm = float(_estimate_fwhm(sub[computed[0]]))
    timings["flatten"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    linearized: dict[int, np.ndarray] = {}
    rho = None
    if settings.linearize == "adaptive":
        assert fwhm is not None
        if settings.on_ratio is not None:
            rho = float(settings.on_ratio)
        else:
            scaled = {o: _flatten(sub[o], fwhm) for o in (2, 3)}
            rho = float(_estimate_on_ratio(scaled[2], scaled[3]))
            require(
                math.isfinite(rho) and 0.0 < rho < 1.0,
                f"{name}: the on-time ratio estimated from orders 2 and 3 is {rho:.3g}: no adaptive linearization",
            )
        for order in settings.orders:
            image = _adaptive_linearize(flat[order], order, fwhm, rho, settings.iterations)
            linearized[order] = np.asarray(image, np.float32)
    elif settings.linearize == "root":
        assert fwhm is not None
        for order in settings.orders:
            linearized[order] = np.asarray(_linearize(flat[order], order, fwhm, settings.iterations), np.float32)
    timings["linearize"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    maps = balanced = None
    if settings.bsofi:
        assert fwhm is not None
        scaled = {o: _flatten(sub[o], fwhm) for o in CROSS_ORDERS}
        maps = _bsofi_parameters(scaled[2], scaled[3], scaled[4])
        lin = {
            o: linearized[o]
            if settings.linearize == "root" and o in linearized
            else _linearize(flat[o], o, fwhm, settings.iterations)
            for o in (3, 4)
        }
        balanced = np.asarray(_balanced_sofi(lin[3], lin[4], maps.on_ratio), np.float32)
    timings["bsofi"] = time.perf_counter() - t3
    return SofiImages(
        mean=np.asarray(mean, np.float32),
        cumulants={o: flat[o] for o in settings.orders},
        linearized=linearized,
        bsofi=maps,
        balanced=balanced,
        fwhm_px=fwhm,
        on_ratio=rho,
        frames=frames,
        blocks=n_blocks,
        timings_s=timings,
        settings=settings,
    )


# ------------------------------------------------------------------------------------------------
# Summary and files


def images_summary(result: SofiImages, stack: str | None = None) -> dict:
    """A JSON-ready summary: settings, frames, blocks, FWHM, on-ratio, each image's shape and range, timings."""

    def describe(image) -> dict:
        image = np.asarray(image)
        finite = image[np.isfinite(image)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (None, None)
        return {"shape": list(image.shape), "min": low, "max": high}

    return {
        "stack": stack,
        "settings": dataclasses.asdict(result.settings),
        "frames": result.frames,
        "blocks": result.blocks,
        "fwhm_px": result.fwhm_px,
        "fwhm_estimated": result.settings.fwhm_px is None and result.fwhm_px is not None,
        "on_ratio": result.on_ratio,
        "mean": describe(result.mean),
        "cumulants": {str(o): describe(im) for o, im in result.cumulants.items()},
        "linearized": {str(o): describe(im) for o, im in result.linearized.items()},
        "bsofi": None
        if result.bsofi is None or result.balanced is None
        else {"balanced": describe(result.balanced), **{f: describe(m) for f, m in result.bsofi._asdict().items()}},
        "timings_s": result.timings_s,
        "grid": "order n: n (H - 4) + 1 by n (W - 4) + 1 pixels; pixel (p, q) is the virtual pixel at camera "
        "pixel (1 + p / n, 1 + q / n) (rows, columns)",
    }


def image_extent_nm(shape_yx: tuple[int, int], order: int, pixel_nm: float) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) in nm of an order-n image's pixels, for drawing.

    Pixel (p, q) of the order-n image is the virtual pixel at camera pixel ``r + (p, q) / n``
    (rows, columns; ``r`` = 1, the first reference pixel), whose centre lies at
    ``(r + 1/2 + p / n) a`` with the origin at the outer corner of camera pixel 0 (a = ``pixel_nm``).
    """
    ny, nx = shape_yx
    row0, col0 = GRID.first_reference
    top = (row0 + 0.5 - 0.5 / order) * pixel_nm
    left = (col0 + 0.5 - 0.5 / order) * pixel_nm
    return (left, left + nx * pixel_nm / order, top + ny * pixel_nm / order, top)


class _Drawn(NamedTuple):
    """An image as :func:`fluojax.plotting.plot_super_resolution` draws it."""

    image: np.ndarray
    extent_nm: tuple[float, float, float, float]
    bin_nm: float


def write_image(
    folder: str | Path,
    stem: str,
    image,
    order: int,
    quantity: str,
    unit: str,
    pixel_nm: float | None = None,
    title: str | None = None,
    uint16: bool = False,
) -> list[str]:
    """Write one order-n image as ``STEM.tif`` (float32 ImageJ TIFF calibrated with ``pixel_nm / n``;
    with ``uint16`` sofipackage's 16-bit image, :func:`to_uint16`)
    and, with a ``title``, ``STEM.png`` (:func:`fluojax.plotting.plot_super_resolution`, axes in µm;
    without a pixel size one camera pixel is drawn as 1 µm and the title says so).

    Arguments:
        folder: an existing folder.
        stem: the file name without suffix.
        image: (y, x) image, or (k, y, x) images (TIFF only).
        order: n, the image's pixels being ``1/n`` camera pixel (1: camera pixels).
        quantity, unit: stored in the TIFF's metadata.
        pixel_nm: camera pixel size in nm, or None.
        title: the PNG's title (None: no PNG).
        uint16: write a (y, x) image's TIFF as :func:`to_uint16` (its unit then "relative").

    Returns:
        the names of the files written.
    """
    from fluojax import io
    from fluojax.plotting import plot_super_resolution

    folder = Path(folder)
    image = np.asarray(image, np.float32)
    pixel_um = pixel_nm / order / 1000.0 if pixel_nm else None
    if image.ndim == 3:
        io.write_stack(folder / f"{stem}.tif", image, 1.0, pixel_um)
    elif uint16:
        io.write_map(folder / f"{stem}.tif", to_uint16(image), quantity, "65535 x image / max", pixel_um)
    else:
        io.write_map(folder / f"{stem}.tif", image, quantity, unit, pixel_um)
    if title is None:
        return [f"{stem}.tif"]
    drawn_nm = pixel_nm or 1000.0
    shown = np.nan_to_num(image)
    drawn = _Drawn(shown, image_extent_nm(shown.shape, order, drawn_nm), drawn_nm / order)
    unknown = "" if pixel_nm else " (pixel size unknown: 1 camera pixel drawn as 1 µm)"
    label = f"{quantity} ({unit})" if unit else quantity
    plot_super_resolution(folder / f"{stem}.png", drawn, f"{title}{unknown}", label)
    return [f"{stem}.tif", f"{stem}.png"]


def to_uint16(image: np.ndarray) -> np.ndarray:
    """sofipackage's 16-bit image: ``round(65535 x max(image, 0) / max(image))`` as uint16 (all
    zeros where the image has no positive value).

    Arguments:
        image: (y, x) image, any real values (NaN counts as 0).
    """
    x = np.nan_to_num(np.asarray(image, np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0.0)
    top = x.max(initial=0.0)
    return np.zeros(x.shape, np.uint16) if top <= 0 else np.rint(65535.0 * x / top).astype(np.uint16)


def write_images(
    folder: str | Path, result: SofiImages, pixel_nm: float | None = None, name: str = "stack", uint16: bool = False
) -> list[str]:
    """Write the images of :func:`sofi_images` into ``folder``: float32 ImageJ TIFFs and PNGs (:func:`write_image`).

    Files: ``mean.tif`` (the temporal mean); per order n ``sofi_c<n>.tif`` (flat cumulant) and
    ``sofi<n>.tif`` (root-linearized) or ``sofi_lin<n>.tif`` (adaptive), sofipackage's names;
    with bSOFI ``bsofi.tif`` (balanced) and ``bsofi_on_ratio.tif``, ``bsofi_brightness.tif``,
    ``bsofi_density.tif``. Each TIFF of order n is calibrated with ``pixel_nm / n``; each SOFI
    image also gets a PNG.

    Arguments:
        folder: an existing folder (e.g. the staging folder of :func:`fluojax.io.result_folder`).
        result: the images.
        pixel_nm: camera pixel size in nm (None: uncalibrated TIFFs, PNG axes in camera pixels
            drawn as µm).
        name: the stack's name in the PNG titles.
        uint16: the SOFI images' TIFFs (flat cumulants, linearized and balanced images; not the mean
            and the bSOFI parameter maps) as sofipackage saves them, :func:`to_uint16`.

    Returns:
        the names of the files written.
    """
    written = write_image(folder, "mean", result.mean, 1, "temporal mean", "counts", pixel_nm)
    how = result.settings.linearize
    lin = "sofi_lin" if how == "adaptive" else "sofi"
    for n, image in result.cumulants.items():
        title = f"{name}: order-{n} SOFI, flat cumulant"
        written += write_image(
            folder, f"sofi_c{n}", image, n, f"flat order-{n} cross-cumulant", f"counts^{n}", pixel_nm, title, uint16
        )
    for n, image in result.linearized.items():
        title = f"{name}: order-{n} SOFI, {how} linearization"
        written += write_image(
            folder, f"{lin}{n}", image, n, f"{how}-linearized order-{n} SOFI", "counts", pixel_nm, title, uint16
        )
    if result.bsofi is not None and result.balanced is not None:
        written += write_image(
            folder, "bsofi", result.balanced, 4, "balanced SOFI", "", pixel_nm, f"{name}: balanced SOFI", uint16
        )
        units = {"on_ratio": "", "brightness": "counts per frame", "density": "emitters"}
        for field, image in result.bsofi._asdict().items():
            written += write_image(
                folder, f"bsofi_{field}", image, 4, field.replace("_", " "), units.get(field, ""), pixel_nm
            )
    return written


# ------------------------------------------------------------------------------------------------
# Simulation


PRESETS = {"thesis": simulate.thesis_preset, "small": simulate.small_preset}
"""Simulation presets by name: Komen 2024's settings (Tables 5.1-5.2: 128 x 128 pixels of 100 nm,
100 frames, PSF FWHM 220 nm, sCMOS) and their CPU-sized variant (32 x 32, fewer filaments); both
take a density level (0-2, off-time 600/1200/2400 ms) and an SNR level (0-3, 100/80/60/40 photons)."""


CAMERAS = {"scmos": None, "emccd": noise.EMCCD.challenge_2016, "ideal": noise.IdealCamera}
"""Cameras a preset's movie can be read out with, by name (a factory, or None for the preset's
own): the preset's sCMOS (per-pixel offset, read-noise
variance and gain maps, :func:`fluojax.sofi.simulate.scmos_camera`), the EMCCD of the SMLM
Challenge 2016 (:meth:`fluojax.noise.EMCCD.challenge_2016`: EM gain 300, 45 e-/ADU, baseline
100 ADU) or an ideal photon counter (shot noise only, counts in photo-electrons)."""


def simulation_settings(
    preset: str = "thesis",
    density_level: int = 0,
    snr_level: int = 0,
    size: int | None = None,
    filament_width_nm: float | None = None,
    camera: str = "scmos",
) -> simulate.SofiSettings:
    """The :class:`fluojax.sofi.simulate.SofiSettings` of a named preset (:data:`PRESETS`).

    Arguments:
        preset: ``"thesis"`` or ``"small"``.
        density_level: 0-2 (densest first).
        snr_level: 0-3 (brightest first).
        size: square field side in pixels (None: the preset's, 128 or 32).
        filament_width_nm: labelled filament width in nm over which the 5000 emitters/um^2 lie
            (None: the thesis's 10 nm, 50 emitters per um).
        camera: a name in :data:`CAMERAS` (the presets' own: ``"scmos"``).
    """
    require(preset in PRESETS, f"preset {preset!r}: the presets are {', '.join(PRESETS)}")
    require(camera in CAMERAS, f"camera {camera!r}: choose {', '.join(CAMERAS)}")
    if preset == "thesis":
        settings = simulate.thesis_preset(density_level, snr_level, (size or 128, size or 128), None, filament_width_nm)
    else:
        settings = simulate.small_preset(density_level, snr_level, size or 32, None, filament_width_nm)
    make = CAMERAS[camera]
    return settings if make is None else dataclasses.replace(settings, camera=make())


def emitters_csv(movie: simulate.SofiMovie) -> str:
    """The emitters of a simulated movie as CSV: id, x and y in nm (origin at the outer corner of
    the first pixel), brightness in photons per frame while on, and photons emitted over the movie."""
    mask = np.asarray(movie.mask)
    x, y = np.asarray(movie.x_nm)[mask], np.asarray(movie.y_nm)[mask]
    brightness = np.asarray(movie.brightness)[mask]
    photons = np.asarray(movie.traces).sum(axis=0)[mask]
    lines = ['"id","x [nm]","y [nm]","brightness [photon/frame]","photons [photon]"']
    lines += [f"{k + 1},{x[k]:.2f},{y[k]:.2f},{brightness[k]:.6g},{photons[k]:.6g}" for k in range(int(mask.sum()))]
    return "\n".join(lines) + "\n"
