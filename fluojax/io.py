"""Reading image stacks and writing result maps, safely.

* :func:`read_stack` opens a TIFF as a (T, Y, X) array, memory-mapped when the file is
  uncompressed and contiguous (so a 1.6 GB stack costs no RAM until a band is read), and turns
  every way a file can be wrong into one :class:`InputError` with a one-line message.
* :func:`write_map` writes a float32 ImageJ TIFF with the quantity, its unit and the pixel size
  in the metadata (``imagej=True``: works on old and new tifffile).
* :func:`staged_output` writes a result folder next to its destination and moves it into place
  only when everything succeeded, so a failure never leaves half a result behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["InputError", "read_stack", "read_pixel_size_um", "write_map", "write_stack", "write_json", "staged_output"]


class InputError(ValueError):
    """Bad user input (file, option, data); its message is one line meant for the user."""


def read_stack(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Open a TIFF image stack as a (T, Y, X) array.

    Arguments:
        path: file path.

    Returns:
        (array, metadata): a ``numpy.memmap`` or ndarray of shape (T, Y, X), and a dict with
        ImageJ metadata when present (e.g. ``finterval`` in s).

    Raises:
        InputError: missing/unreadable/non-TIFF file, a single 2D image, more than three
            non-singleton axes, or a non-numeric dtype.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            meta = dict(tif.imagej_metadata or {})
    except Exception as err:  # tifffile raises several types for corrupt or foreign files
        raise InputError(f"{path}: not a readable TIFF file ({type(err).__name__}: {err})".splitlines()[0]) from None
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) or dtype == np.bool_:
        raise InputError(f"{path}: pixel type {dtype} is not a numeric intensity type")
    dims = [s for s in shape if s != 1]
    if len(dims) < 3:
        raise InputError(f"{path}: a single {'x'.join(map(str, shape))} image; Imaging FCS needs a time stack (frames, Y, X)")
    if len(dims) > 3:
        raise InputError(f"{path}: {len(dims)} non-singleton axes {shape}; expected one stack (frames, Y, X)")
    try:
        data = tifffile.memmap(path, mode="r")
    except Exception:  # compressed or non-contiguous: read it whole
        try:
            data = tifffile.imread(path)
        except Exception as err:
            raise InputError(f"{path}: image data could not be read ({type(err).__name__})") from None
    return data.reshape(dims), meta


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
