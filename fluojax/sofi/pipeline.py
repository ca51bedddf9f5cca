"""From a recorded stack to SOFI images: checks, cumulants in frame blocks, flattening, linearization, bSOFI, files.

The top of the SOFI technique, the library path ``fluojax sofi STACK.tif`` calls and Python users
reach the same way. :func:`sofi_images` runs sofipackage's order of steps (Leutenegger,
Geissbuehler, Lukes, Grussmayer et al.; Geissbuehler et al. 2012): the stack, whole or as blocks of
frames (sofipackage's subsequences, each ``block_frames`` long), gives per block and order n the
zero-lag cross-cumulants of n distinct pixels on n x n virtual-pixel sub-lattices
(:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices`, Dertinger et al. 2010); the blocks'
sub-lattices are averaged, weighted by their frame counts, then flattened (sub-lattice mean
equalisation, :func:`fluojax.sofi.estimate.flatten`) and interleaved onto the ``n (H - 4) + 1``
by ``n (W - 4) + 1`` grid (:func:`fluojax.sofi.cumulants.interleave`). These are the raw flat
cumulant images (sofipackage's ``sofi_c<n>``). Linearization deconvolves them with the
order-scaled Gaussian PSF (Richardson-Lucy) and takes the n-th root (``"root"``, sofipackage's
``sofi<n>``) or the adaptive exponent from the estimated on-time ratio (``"adaptive"``,
``sofi_lin<n>``); ``bsofi`` adds the balanced image and the maps of on-time ratio, brightness and
density from orders 2-4 (Geissbuehler et al. 2012). The temporal mean (the wide-field image) is
kept too. :func:`check_stack_shape`, :func:`check_block` and :func:`check_settings` refuse what
cannot be analysed (:class:`fluojax.io.InputError`, one line each): an order outside 2-4, fewer
frames than the order needs (:func:`minimum_frames`), a stack smaller than the 4 x 4 pixel
neighbourhood, non-finite values, and a stack without fluctuations. :func:`images_summary`
gives the JSON summary and :func:`write_images` the TIFF and PNG files.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from fluojax.io import require

if TYPE_CHECKING:  # annotations only: importing jax here would slow down the command line's help
    from jaxtyping import Float

__all__ = [
    "CROSS_ORDERS",
    "LINEARIZATIONS",
    "NEIGHBOURHOOD_PX",
    "SofiImages",
    "SofiSettings",
    "check_block",
    "check_settings",
    "check_stack_shape",
    "images_summary",
    "minimum_frames",
    "output_shape",
    "parse_orders",
    "sofi_images",
    "write_images",
]

CROSS_ORDERS = (2, 3, 4)
"""The orders of cross-cumulants with virtual pixels (sofipackage's combinations are built for these)."""

LINEARIZATIONS = ("root", "adaptive")
"""Linearizations after deconvolution: the n-th root, or the adaptive exponent (Geissbuehler et al. 2012)."""

NEIGHBOURHOOD_PX = 4
"""Side of the pixel neighbourhood the cross-cumulants take their pixels from (offsets -1..2)."""

SOFIPACKAGE_FRAMES_MIN = 4
"""sofipackage's smallest stack in frames (and pixels per side)."""


@dataclasses.dataclass(frozen=True)
class SofiSettings:
    """What :func:`sofi_images` computes (static: it chooses orders, code paths and block sizes).

    Attributes:
        orders: cumulant orders whose images are made, each in 2-4 (sorted, no repeats).
        linearize: ``"root"``, ``"adaptive"`` or None (no deconvolution nor linearization).
        bsofi: also the balanced image and the on-time ratio, brightness and density maps
            (they need orders 2-4, computed whatever ``orders`` says).
        fwhm_px: FWHM of the microscope's PSF in camera pixels (for the deconvolution; None:
            required when ``linearize`` or ``bsofi`` is set).
        iterations: Richardson-Lucy iterations (sofipackage: 10).
        block_frames: frames per block (None: the whole stack is one block).
    """

    orders: tuple[int, ...] = (2,)
    linearize: str | None = "root"
    bsofi: bool = False
    fwhm_px: float | None = None
    iterations: int = 10
    block_frames: int | None = None

    @property
    def computed_orders(self) -> tuple[int, ...]:
        """The orders whose cumulants are computed: ``orders``, plus 2-4 for bSOFI."""
        return tuple(sorted(set(self.orders) | (set(CROSS_ORDERS) if self.bsofi else set())))


class SofiImages(NamedTuple):
    """The SOFI images of one stack (NumPy float32 arrays; dicts keyed by order).

    Attributes:
        mean: ``(H, W)`` temporal mean of all frames (the wide-field image), in the stack's units.
        cumulants: order n -> ``(n (H - 4) + 1, n (W - 4) + 1)`` flattened cross-cumulant image
            (sofipackage's ``sofi_c<n>``), in the stack's units to the power n.
        linearized: order n -> the deconvolved and linearized image on the same grid (empty
            without linearization); units: those of the stack, up to a scale.
        bsofi: the balanced image and the parameter maps (``fluojax.sofi.estimate``'s result),
            or None.
        frames: frames used.
        blocks: blocks of frames the cumulants were averaged over.
        timings_s: seconds per step (``read_and_cumulants``, ``flatten``, ``linearize``, ``bsofi``).
        settings: what was computed.
    """

    mean: Any
    cumulants: dict[int, Any]
    linearized: dict[int, Any]
    bsofi: Any
    frames: int
    blocks: int
    timings_s: dict[str, float]
    settings: SofiSettings


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
    """Fewest frames for an order-n cumulant image: ``max(4, n + 1)``.

    The frames' deviations from their mean have ``T - 1`` degrees of freedom, and an n-th order
    cumulant needs at least n of them (the k-statistic of order n is defined from n values on);
    sofipackage refuses stacks below 4 frames.
    """
    return max(SOFIPACKAGE_FRAMES_MIN, int(order) + 1)


def output_shape(shape_yx: tuple[int, int], order: int) -> tuple[int, int]:
    """The order-n image's shape for an ``(H, W)`` stack: ``(n (H - 4) + 1, n (W - 4) + 1)`` (sofipackage's grid)."""
    return tuple(order * (s - NEIGHBOURHOOD_PX) + 1 for s in shape_yx)  # type: ignore[return-value]


def check_settings(settings: SofiSettings) -> None:
    """Refuse settings that cannot give images (one InputError line each).

    Raises:
        InputError: no order, an order outside 2-4, an unknown linearization, no or a
            non-positive PSF FWHM where deconvolution needs one, fewer than 1 iteration, or
            blocks shorter than the highest order needs.
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
    if settings.linearize is not None or settings.bsofi:
        fwhm = settings.fwhm_px
        require(
            fwhm is not None,
            "the deconvolution before linearization needs the PSF's FWHM in camera pixels",
        )
        require(
            fwhm is not None and bool(np.isfinite(fwhm)) and fwhm > 0,
            f"PSF FWHM {fwhm} px: must be a positive number of camera pixels",
        )
    require(settings.iterations >= 1, f"{settings.iterations} deconvolution iterations: must be at least 1")
    if settings.block_frames is not None:
        top = max(settings.computed_orders)
        require(
            settings.block_frames >= minimum_frames(top),
            f"blocks of {settings.block_frames} frames: order {top} needs at least {minimum_frames(top)} frames per block",
        )


def check_stack_shape(shape: tuple[int, ...], orders: Iterable[int], name: str = "the stack") -> None:
    """Refuse a stack that is not ``(frames, y, x)``, is smaller than the pixel neighbourhood or
    has too few frames for the highest order.

    Arguments:
        shape: ``(T, H, W)`` (T may be None when not known yet: only the pixels are checked).
        orders: the orders to compute.
        name: the stack's name in the messages.
    """
    require(len(shape) == 3, f"{name}: shape {tuple(shape)}; a stack is (frames, y, x)")
    frames, ny, nx = shape
    require(
        ny >= NEIGHBOURHOOD_PX and nx >= NEIGHBOURHOOD_PX,
        f"{name}: {ny} x {nx} pixels, smaller than the {NEIGHBOURHOOD_PX} x {NEIGHBOURHOOD_PX} pixel "
        "neighbourhood the cross-cumulants take their pixels from",
    )
    if frames is not None:
        top = max(orders)
        require(
            frames >= minimum_frames(top),
            f"{name}: {frames} frames; order {top} needs at least {minimum_frames(top)}",
        )


def check_block(block: np.ndarray, name: str = "the stack") -> bool:
    """Refuse a block of frames with non-finite values; return whether any pixel fluctuates in it."""
    require(bool(np.all(np.isfinite(block))), f"{name}: holds non-finite values (NaN or infinity)")
    return bool(np.any(np.ptp(block, axis=0) > 0)) if block.shape[0] > 1 else False


# ------------------------------------------------------------------------------------------------
# The images


def _blocks(stack_or_blocks, block_frames: int | None) -> Iterator[np.ndarray]:
    """Blocks of frames from an array (sliced) or an iterable of blocks (as given)."""
    if hasattr(stack_or_blocks, "shape"):
        frames = stack_or_blocks.shape[0]
        size = frames if block_frames is None else block_frames
        for start in range(0, frames, max(size, 1)):
            yield np.asarray(stack_or_blocks[start : start + size], np.float32)
    else:
        for block in stack_or_blocks:
            yield np.asarray(block, np.float32)


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


def sofi_images(
    stack_or_blocks: Float[np.ndarray, "t y x"] | Iterable[Float[np.ndarray, "t y x"]],
    orders: Iterable[int] = (2,),
    linearize: str | None = "root",
    bsofi: bool = False,
    fwhm_px: float | None = None,
    iterations: int = 10,
    block_frames: int | None = None,
    name: str = "the stack",
) -> SofiImages:
    """SOFI images of a stack: flat cross-cumulant images per order, linearized images, bSOFI maps, the mean.

    For each block of frames b (T_b frames) and order n the cross-cumulant sub-lattices
    ``K_n^b`` (n, n, H - 3, W - 3) are computed (:func:`fluojax.sofi.cumulants.cross_cumulant_sublattices`);
    the stack's are ``K_n = sum_b T_b K_n^b / sum_b T_b`` (sofipackage averages its subsequences
    the same way, with equal lengths). ``K_n`` is flattened (:func:`fluojax.sofi.estimate.flatten`)
    and interleaved to ``n (H - 4) + 1`` by ``n (W - 4) + 1`` pixels. Linearization: Richardson-Lucy
    with a Gaussian PSF of FWHM ``fwhm_px sqrt(n)`` output pixels (the n-th power of the camera
    PSF on the n-fold grid), ``iterations`` iterations, then the n-th root (``"root"``) or the
    adaptive exponent (``"adaptive"``; :mod:`fluojax.sofi.estimate`). A last block shorter than
    the highest order needs (:func:`minimum_frames`) is joined to the block before it.

    Arguments:
        stack_or_blocks: a ``(T, H, W)`` array (NumPy, a memory map, JAX), sliced into blocks of
            ``block_frames``, or an iterable of ``(t, H, W)`` blocks (e.g. from
            :func:`fluojax.io.read_stack_blocks`), used as given.
        orders: cumulant orders, each in 2-4.
        linearize: ``"root"``, ``"adaptive"`` or None.
        bsofi: also the balanced image and the on-time ratio, brightness and density maps.
        fwhm_px: PSF FWHM in camera pixels (needed for ``linearize`` and ``bsofi``).
        iterations: Richardson-Lucy iterations.
        block_frames: frames per block when ``stack_or_blocks`` is an array (None: one block).
        name: the stack's name in the messages.

    Returns:
        :class:`SofiImages`.

    Raises:
        InputError: see :func:`check_settings`, :func:`check_stack_shape`, :func:`check_block`,
            and a stack without fluctuations (every pixel constant in time) or whose neighbouring
            pixels never fluctuate together (all cross-cumulants zero).
    """
    settings = SofiSettings(
        tuple(sorted(set(int(o) for o in orders))), linearize, bool(bsofi), fwhm_px, int(iterations), block_frames
    )
    check_settings(settings)
    computed = settings.computed_orders
    if hasattr(stack_or_blocks, "shape"):
        check_stack_shape(tuple(stack_or_blocks.shape), computed, name)
    t0 = time.perf_counter()
    blocks = _with_short_tail_merged(_blocks(stack_or_blocks, block_frames), minimum_frames(max(computed)))
    sums: dict[int, np.ndarray] = {}
    total = None
    frames = n_blocks = 0
    fluctuates = False
    for block in blocks:
        check_stack_shape((None, *block.shape[1:]), computed, name)
        fluctuates |= check_block(block, name)
        if total is not None:
            require(
                block.shape[1:] == total.shape,
                f"{name}: a block of {block.shape[1]} x {block.shape[2]} pixels after blocks of "
                f"{total.shape[0]} x {total.shape[1]}",
            )
        if block.shape[0] < minimum_frames(max(computed)):  # the whole stack is this one block
            check_stack_shape(block.shape, computed, name)
        total = block.sum(axis=0, dtype=np.float64) if total is None else total + block.sum(axis=0, dtype=np.float64)
        frames += block.shape[0]
        n_blocks += 1
        if not fluctuates:
            continue
        for order, sub in _block_sublattices(block, computed).items():
            weighted = block.shape[0] * np.asarray(sub, np.float64)
            sums[order] = weighted if order not in sums else sums[order] + weighted
    require(total is not None, f"{name}: holds no frames")
    require(fluctuates, f"{name}: no fluctuations: every pixel is constant in time, so every cumulant is zero")
    assert total is not None
    timings = {"read_and_cumulants": time.perf_counter() - t0}
    # blocks read before the first fluctuating one contribute zero cumulants and their frames
    sublattices = {order: (s / frames).astype(np.float32) for order, s in sums.items()}
    t1 = time.perf_counter()
    flat = {order: _flat_image(sub, order, name) for order, sub in sublattices.items()}
    timings["flatten"] = time.perf_counter() - t1
    mean = (total / frames).astype(np.float32)
    linearized: dict[int, np.ndarray] = {}
    t2 = time.perf_counter()
    if settings.linearize is not None or settings.bsofi:
        linearized = _linearized(flat, mean, settings)
    timings["linearize"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    maps = _bsofi(flat, linearized, settings) if settings.bsofi else None
    timings["bsofi"] = time.perf_counter() - t3
    keep = set(settings.orders)
    return SofiImages(
        mean=mean,
        cumulants={o: im for o, im in flat.items() if o in keep},
        linearized={o: im for o, im in linearized.items() if o in keep and settings.linearize is not None},
        bsofi=maps,
        frames=frames,
        blocks=n_blocks,
        timings_s=timings,
        settings=settings,
    )


def _block_sublattices(block: np.ndarray, orders: tuple[int, ...]) -> dict[int, np.ndarray]:
    """Order -> the block's cross-cumulant sub-lattices ``(n, n, H - 3, W - 3)``."""
    import jax.numpy as jnp

    from fluojax.sofi import cumulants

    stack = jnp.asarray(block)
    return {order: np.asarray(cumulants.cross_cumulant_sublattices(stack, order)) for order in orders}


def _flat_image(sublattices: np.ndarray, order: int, name: str) -> np.ndarray:
    """Flatten the sub-lattices and interleave them onto one image; refuse an all-zero result."""
    import jax.numpy as jnp

    from fluojax.sofi import cumulants, estimate

    require(
        bool(np.any(sublattices != 0)),
        f"{name}: the order-{order} cross-cumulants are all zero: no two neighbouring pixels fluctuate together",
    )
    image = np.asarray(cumulants.interleave(estimate.flatten(jnp.asarray(sublattices))), np.float32)
    require(bool(np.all(np.isfinite(image))), f"{name}: the order-{order} cumulant image is not finite")
    return image


def _linearized(flat: dict[int, np.ndarray], mean: np.ndarray, settings: SofiSettings) -> dict[int, np.ndarray]:
    """Order -> the deconvolved, linearized image (root or adaptive)."""
    import jax.numpy as jnp

    from fluojax.sofi import estimate

    assert settings.fwhm_px is not None
    images = {o: jnp.asarray(im) for o, im in flat.items()}
    if settings.linearize == "adaptive":
        out = estimate.adaptive_linearize(images, jnp.asarray(mean), settings.fwhm_px, iterations=settings.iterations)
    else:
        out = {
            o: estimate.linearize(im, o, settings.fwhm_px, iterations=settings.iterations) for o, im in images.items()
        }
    return {o: np.asarray(im, np.float32) for o, im in out.items()}


def _bsofi(flat: dict[int, np.ndarray], linearized: dict[int, np.ndarray], settings: SofiSettings):
    """The balanced image and the parameter maps of orders 2-4."""
    import jax.numpy as jnp

    from fluojax.sofi import estimate

    params = estimate.bsofi_parameters(*(jnp.asarray(flat[o]) for o in CROSS_ORDERS))
    balanced = estimate.balanced_sofi(jnp.asarray(linearized[3]), jnp.asarray(linearized[4]), params.on_ratio)
    return params, np.asarray(balanced, np.float32)


# ------------------------------------------------------------------------------------------------
# Summary and files


def images_summary(result: SofiImages, stack: str | None = None) -> dict:
    """A JSON-ready summary: settings, frames, blocks, each image's shape and range, timings."""

    def describe(image) -> dict:
        image = np.asarray(image)
        return {"shape": list(image.shape), "min": float(np.min(image)), "max": float(np.max(image))}

    return {
        "stack": stack,
        "settings": dataclasses.asdict(result.settings),
        "frames": result.frames,
        "blocks": result.blocks,
        "mean": describe(result.mean),
        "cumulants": {str(o): describe(im) for o, im in result.cumulants.items()},
        "linearized": {str(o): describe(im) for o, im in result.linearized.items()},
        "bsofi": None if result.bsofi is None else {"balanced": describe(result.bsofi[1])},
        "timings_s": result.timings_s,
        "grid": "order n: n (H - 4) + 1 by n (W - 4) + 1 pixels; pixel (0, 0) is the virtual pixel of camera pixel (1, 1)",
    }


def image_extent_nm(shape_yx: tuple[int, int], order: int, pixel_nm: float) -> tuple[float, float, float, float]:
    """(left, right, bottom, top) in nm of an order-n image's pixels, for drawing.

    Pixel (p, q) of the order-n image is the virtual pixel at camera pixel (1 + p / n, 1 + q / n)
    (rows, columns; the reference pixels start at camera pixel 1), whose centre lies at
    ``(1.5 + p / n) a`` with the origin at the outer corner of camera pixel 0 (a = ``pixel_nm``).
    """
    ny, nx = shape_yx
    half = 0.5 / order
    left, top = (1.5 - half) * pixel_nm, (1.5 - half) * pixel_nm
    return (left, left + nx * pixel_nm / order, top + ny * pixel_nm / order, top)


class _Drawn(NamedTuple):
    """An image as :func:`fluojax.plotting.plot_super_resolution` draws it."""

    image: np.ndarray
    extent_nm: tuple[float, float, float, float]
    bin_nm: float


def write_images(
    folder: str | Path, result: SofiImages, pixel_nm: float | None = None, name: str = "stack"
) -> list[str]:
    """Write the images of :func:`sofi_images` into ``folder``: float32 TIFFs and PNGs.

    Files: ``mean.tif`` (the temporal mean), ``sofi_c<n>.tif`` (flat cumulants),
    ``sofi<n>.tif`` (root-linearized) or ``sofi_lin<n>.tif`` (adaptive), ``bsofi.tif`` and
    ``bsofi_<map>.tif`` (balanced image, on-time ratio, brightness, density), each order-n TIFF
    calibrated with ``pixel_nm / n``, and one PNG per SOFI image.

    Arguments:
        folder: an existing folder (e.g. the staging folder of :func:`fluojax.io.result_folder`).
        result: the images.
        pixel_nm: camera pixel size in nm (None: uncalibrated TIFFs, PNG axes in camera pixels
            drawn as µm).
        name: the stack's name in the PNG titles.

    Returns:
        the names of the files written.
    """
    from fluojax import io
    from fluojax.plotting import plot_super_resolution

    folder = Path(folder)
    written: list[str] = []
    drawn_pixel = pixel_nm or 1000.0
    unknown = "" if pixel_nm else " (pixel size unknown: 1 camera pixel drawn as 1 µm)"

    def save(stem: str, image, order: int, quantity: str, unit: str, title: str) -> None:
        image = np.asarray(image, np.float32)
        io.write_map(folder / f"{stem}.tif", image, quantity, unit, None if not pixel_nm else pixel_nm / order / 1000.0)
        drawn = _Drawn(image, image_extent_nm(image.shape, order, drawn_pixel), drawn_pixel / order)
        plot_super_resolution(folder / f"{stem}.png", drawn, f"{name}: {title}{unknown}")
        written.extend([f"{stem}.tif", f"{stem}.png"])

    io.write_map(
        folder / "mean.tif", result.mean, "temporal mean", "counts", None if not pixel_nm else pixel_nm / 1000.0
    )
    written.append("mean.tif")
    lin = "sofi_lin" if result.settings.linearize == "adaptive" else "sofi"
    for order, image in result.cumulants.items():
        save(
            f"sofi_c{order}",
            image,
            order,
            f"flat order-{order} cross-cumulant",
            f"counts^{order}",
            f"order {order}, flat cumulant",
        )
    for order, image in result.linearized.items():
        save(
            f"{lin}{order}",
            image,
            order,
            f"linearized order-{order} SOFI",
            "counts (relative)",
            f"order {order}, linearized",
        )
    if result.bsofi is not None:
        params, balanced = result.bsofi
        save("bsofi", balanced, 4, "balanced SOFI", "relative", "balanced SOFI")
        for field in params._fields:
            io.write_map(
                folder / f"bsofi_{field}.tif",
                np.asarray(getattr(params, field), np.float32),
                field,
                "",
                None if not pixel_nm else pixel_nm / 4 / 1000.0,
            )
            written.append(f"bsofi_{field}.tif")
    return written
