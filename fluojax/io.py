"""Reading image stacks and writing result maps, safely.

* :func:`read_stack` opens a TIFF as a (T, Y, X) array, memory-mapped when the file is
  uncompressed and contiguous (so a 1.6 GB stack costs no RAM until a band is read), and turns
  every way a file can be wrong into one :class:`InputError` with a one-line message;
  :func:`frame_interval_s` resolves the frame interval (an option, else the ImageJ metadata).
* :func:`write_map` writes a float32 ImageJ TIFF with the quantity, its unit and the pixel size
  in the metadata (``imagej=True``: works on old and new tifffile).
* :func:`staged_output` writes a result folder next to its destination and moves it into place
  only when everything succeeded, so a failure never leaves half a result behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["InputError", "read_stack", "frame_interval_s", "read_pixel_size_um", "write_map", "write_stack", "write_json", "staged_output"]


class InputError(ValueError):
    """Bad user input (file, option, data); its message is one line meant for the user."""


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Open a TIFF image stack as a (T, Y, X) array.

    The axes come from tifffile's ``series.axes``: Y and X are the last two (spatial) axes, the
    time axis is the one other axis longer than 1 (T, Z, I, Q, ...). A colour ('S') or channel
    ('C') axis longer than 1 is never taken for time. A T x 1 x 1 file is a valid one-pixel stack.
    tifffile's warnings while reading (logger ``tifffile``) are captured, not printed: any of
    them, or data that end beyond the file, mean a truncated or damaged file.

    Arguments:
        path: file path.

    Returns:
        (array, metadata): a ``numpy.memmap`` or ndarray of shape (T, Y, X), and a dict with
        ImageJ metadata when present (e.g. ``finterval`` in s; see :func:`frame_interval_s`).

    Raises:
        InputError: missing file or a folder, unreadable/non-TIFF/truncated file, an RGB or
            multichannel image, a single 2D image, more than one non-spatial axis, or a
            non-numeric dtype.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a TIFF file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with _tifffile_warnings() as warnings:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                shape, axes, dtype = tuple(series.shape), str(series.axes), np.dtype(series.dtype)
                meta = dict(tif.imagej_metadata or {})
                data_end = None if series.dataoffset is None else series.dataoffset + series.nbytes
                file_size = tif.filehandle.size
                len(tif.pages)  # walk every page header: a cut file is reported here
        except Exception as err:  # tifffile raises several types for corrupt or foreign files
            raise InputError(f"{path}: not a readable TIFF file ({type(err).__name__}: {err})".splitlines()[0]) from None
        one_pixel = _imagej_one_pixel(shape, meta)
        if one_pixel:
            shape, axes = (meta["images"], 1, 1), "TYX"
        problems = lambda: [w for w in warnings if not (one_pixel and "ImageJ series metadata invalid" in w)]  # noqa: E731
        if problems() or (data_end is not None and data_end > file_size):
            what = problems()[0] if problems() else f"the image data end at byte {data_end}, the file at {file_size}"
            raise InputError(f"{path}: truncated or damaged TIFF ({what})".splitlines()[0])
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) or dtype == np.bool_:
            raise InputError(f"{path}: pixel type {dtype} is not a numeric intensity type")
        target = _stack_shape(path, shape, axes)
        try:
            data = tifffile.memmap(path, mode="r")
        except Exception:  # compressed or non-contiguous: read it whole
            try:
                data = tifffile.imread(path)
            except Exception as err:
                raise InputError(f"{path}: image data could not be read ({type(err).__name__})") from None
        if problems() or data.size != int(np.prod(target)):
            what = problems()[0] if problems() else f"{data.size} values read, {int(np.prod(target))} expected"
            raise InputError(f"{path}: truncated or damaged TIFF ({what})".splitlines()[0])
    return data.reshape(target), meta


@contextlib.contextmanager
def _tifffile_warnings():
    """Collect the messages tifffile logs (logger ``tifffile``, WARNING and above) instead of
    printing them; yields the list they are appended to. The logger is restored on exit."""
    import logging

    found: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            found.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage()))  # without "<tifffile.TiffPages @8>"

    logger = logging.getLogger("tifffile")
    handler, propagate = Collect(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _imagej_one_pixel(shape: tuple, meta: dict) -> bool:
    """Whether a file is a T x 1 x 1 ImageJ stack as tifffile writes one: a single T x 1 page with
    ``images=T`` in the ImageJ header (tifffile then logs 'ImageJ series metadata invalid')."""
    images = meta.get("images")
    return isinstance(images, int) and images > 1 and len(shape) == 2 and min(shape) == 1 and max(shape) == images


def _stack_shape(path: Path, shape: tuple, axes: str) -> tuple[int, int, int]:
    """(T, Y, X) of a TIFF series from its shape and tifffile axes (see :func:`read_stack`)."""
    if len(axes) != len(shape):  # no usable axes: the last two are spatial
        axes = "Q" * max(len(shape) - 2, 0) + "YX"[-len(shape):]
    for ax, n in zip(axes, shape):
        if ax in "SC" and n > 1:
            kind = "samples (colour)" if ax == "S" else "channels"
            raise InputError(f"{path}: RGB/multichannel image ({n} {kind}, axes {axes} of shape {shape}): "
                             "export one channel as a (frames, Y, X) stack")
    kept = [n for ax, n in zip(axes, shape) if ax not in "SC"]
    if len(kept) < 2:
        raise InputError(f"{path}: shape {shape} is not an image; needs a time stack (frames, Y, X)")
    (y, x), others = kept[-2:], [n for n in kept[:-2] if n != 1]
    if not others:
        raise InputError(f"{path}: a single {y}x{x} image; needs a time stack (frames, Y, X)")
    if len(others) > 1:
        raise InputError(f"{path}: {len(others)} non-spatial axes longer than 1 (axes {axes}, shape {shape}); "
                         "expected one time stack (frames, Y, X)")
    return others[0], y, x


def frame_interval_s(given: float | None, meta: dict, option: str, path) -> float:
    """The frame interval in s: ``given`` (a command-line value) if set, else the TIFF's ImageJ ``finterval``.

    Arguments:
        given: float or None, the option's value in s (already checked positive by argparse).
        meta: ImageJ metadata dict from :func:`read_stack`.
        option: the option's name for the messages, e.g. ``"--frame-time"`` or ``"--dt"``.
        path: the stack's path, for the messages.

    Returns:
        float > 0, finite.

    Raises:
        InputError: neither is set, or the metadata's value is not a positive finite number
            (text, inf, 0, negative).
    """
    if given is not None:
        value, source = given, option
    elif meta.get("finterval") is not None:
        value, source = meta["finterval"], "the TIFF's ImageJ frame interval (finterval)"
    else:
        raise InputError(f"no frame time: pass {option} S (the TIFF has no ImageJ frame interval)")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise InputError(f"{path}: {source} is {value!r}, not a positive number of seconds; pass {option} S")
    return seconds


def read_pixel_size_um(path: str | os.PathLike) -> float | None:
    """The pixel side in um from a TIFF's ImageJ calibration, or None when it has none.

    Only square pixels with the ImageJ unit ``micron`` (also ``um``, ``µm``) count, as
    :func:`write_stack` and :func:`write_map` store them (``XResolution`` = pixels per um).

    Arguments:
        path: a readable TIFF (call :func:`read_stack` first for the error messages).

    Returns:
        float pixel size in um, or None.
    """
    try:
        with tifffile.TiffFile(path) as tif:
            unit = str((tif.imagej_metadata or {}).get("unit", "")).strip().lower()
            tags = tif.pages[0].tags
            xres, yres = tags.get("XResolution"), tags.get("YResolution")
            if unit not in ("micron", "um", "µm") or xres is None or yres is None:
                return None
            xn, xd = xres.value
            yn, yd = yres.value
    except Exception:
        return None
    if not (xn > 0 and xd > 0 and yn > 0 and yd > 0) or abs(xn * yd - yn * xd) > 1e-6 * xn * yd:
        return None
    return float(xd) / float(xn)


def write_map(path: str | os.PathLike, image: np.ndarray, quantity: str, unit: str, pixel_um: float | None = None) -> None:
    """Write a 2D map as a float32 ImageJ TIFF, with its quantity and unit in the metadata.

    Arguments:
        path: output file.
        image: (Y, X) array.
        quantity: name of the mapped quantity (e.g. ``"D"``).
        unit: its unit (e.g. ``"um^2/s"``; ``""`` for dimensionless).
        pixel_um: object-space pixel size in um, stored as the spatial calibration.
    """
    image = np.asarray(image)
    dtype = np.uint8 if image.dtype == np.uint8 else np.float32
    meta = {"axes": "YX", "Info": f"quantity={quantity}\nunit={unit or 'dimensionless'}\n"}
    kwargs = {}
    if pixel_um:
        meta["unit"] = "micron"
        kwargs["resolution"] = (1.0 / pixel_um, 1.0 / pixel_um)
    tifffile.imwrite(path, image.astype(dtype), imagej=True, metadata=meta, **kwargs)


def write_stack(path: str | os.PathLike, stack: np.ndarray, frame_time_s: float, pixel_um: float | None = None) -> None:
    """Write a (T, Y, X) stack as an ImageJ TIFF with its frame interval (s)."""
    meta = {"axes": "TYX", "finterval": float(frame_time_s)}
    kwargs = {}
    if pixel_um:
        meta["unit"] = "micron"
        kwargs["resolution"] = (1.0 / pixel_um, 1.0 / pixel_um)
    tifffile.imwrite(path, np.asarray(stack), imagej=True, metadata=meta, **kwargs)


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON (NumPy scalars converted)."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    Path(path).write_text(json.dumps(obj, indent=2, default=default) + "\n")


@contextlib.contextmanager
def staged_output(destination: str | os.PathLike):
    """Yield a temporary folder beside ``destination``; on success it replaces ``destination``.

    On an exception the temporary folder is removed and ``destination`` is left as it was.
    """
    destination = Path(destination).resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if destination.exists():
        old = destination.with_name(f".{destination.name}.old.{os.getpid()}")
        destination.rename(old)
    staging.rename(destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
