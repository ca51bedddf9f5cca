"""Reading image stacks and writing result maps, safely.

* :func:`read_stack` opens a TIFF as a (T, Y, X) array, memory-mapped when the file is
  uncompressed and contiguous (so a 1.6 GB stack costs no RAM until a band is read), and turns
  every way a file can be wrong into one :class:`InputError` with a one-line message;
  :func:`frame_interval_s` resolves the frame interval (an option, else the ImageJ metadata).
* :func:`write_map` writes a float32 ImageJ TIFF with the quantity, its unit and the pixel size
  in the metadata (``imagej=True``: works on old and new tifffile).
* :func:`result_folder` writes a result folder beside its destination and moves it into place
  only when everything succeeded; it only ever creates a new folder, fills an empty one, or
  replaces an earlier fluojax result of the same kind when asked to (``overwrite``).
  :func:`check_output_folder` applies the same rules up front, touching nothing, so a command
  can refuse a bad ``-o`` before a long analysis. :func:`result_file` does the same for one file.
* :func:`terminate_guard` turns SIGTERM into ``SystemExit(143)`` while output is being staged, so
  the clean-up code runs and no hidden half-written folder is left behind.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

if TYPE_CHECKING:  # annotations only: importing jaxtyping costs ~0.1 s that the command need not pay
    from jaxtyping import Float, Real

__all__ = [
    "FRAME_INTERVAL_RANGE_S",
    "RESULT_MARKER",
    "InputError",
    "check_output_file",
    "check_output_folder",
    "describe_entries",
    "frame_interval_s",
    "memory_map",
    "read_pixel_size_um",
    "read_stack",
    "read_stack_blocks",
    "require",
    "result_file",
    "result_folder",
    "terminate_guard",
    "write_json",
    "write_map",
    "write_stack",
]

RESULT_MARKER = ".fluojax-result.json"
"""Name of the file that marks a folder as a fluojax result; written last, so its presence also
means the folder is complete. JSON: ``kind``, ``files`` (the names written beside it),
``fluojax_version``, ``created`` (UTC, ISO 8601)."""


class InputError(ValueError):
    """Bad user input (file, option, data); its message is one line meant for the user."""


def require(condition: bool, text: str) -> None:
    """Raise :class:`InputError` with the one-line message ``text`` unless ``condition`` holds."""
    if not condition:
        raise InputError(text)


def read_stack(path: str | os.PathLike) -> tuple[Real[np.ndarray, "t y x"], dict]:
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
    with _tifffile_warnings() as warnings:
        target, meta, data, one_pixel = _open_stack(path, warnings)
        if data is None:  # compressed or non-contiguous: read it whole
            try:
                data = tifffile.imread(path)
            except Exception as err:
                raise InputError(f"{path}: image data could not be read ({type(err).__name__})") from None
        _check_read(path, warnings, one_pixel, data.size, int(np.prod(target)))
    return data.reshape(target), meta


def memory_map(path: str | os.PathLike) -> Real[np.ndarray, "t y x"] | None:
    """The TIFF stack at ``path`` as a read-only ``numpy.memmap`` of shape (T, Y, X), or None where
    the file is compressed or not contiguous (:func:`read_stack` reads those whole).

    Checked and refused as :func:`read_stack` does (the same ``InputError`` lines).
    """
    path = Path(path)
    with _tifffile_warnings() as warnings:
        target, _, data, one_pixel = _open_stack(path, warnings)
        if data is None:
            return None
        _check_read(path, warnings, one_pixel, data.size, int(np.prod(target)))
    return data.reshape(target)


def read_stack_blocks(
    path: str | os.PathLike, block_frames: int, dtype: type | None = np.float32
) -> tuple[tuple[int, int, int], dict, Iterator[Float[np.ndarray, "t y x"]]]:
    """Open a TIFF image stack for reading in blocks of frames, in bounded memory.

    The file is checked as :func:`read_stack` checks it (the same refusals, raised here, before
    any block is read). The blocks are then read one at a time: slices of the memory map when the
    file is uncompressed and contiguous, else consecutive pages (one page per frame, as ImageJ
    and tifffile write stacks, compressed ones included); only a file whose pages are not frames
    is read whole. Each block is a float32 copy, so at most one block of frames is held at once
    (a 512 x 512 x 1,000 stack in blocks of 100 frames: 105 MB). With ``dtype=None`` the blocks
    keep the file's type, and a memory-mapped file's blocks are views of the map (no copy: the
    pages are read when the block is, and the system may drop them again).

    Arguments:
        path: file path.
        block_frames: frames per block (>= 1); the last block holds the rest.
        dtype: the blocks' type (a copy in it), or None: as stored.

    Returns:
        ((T, Y, X), metadata, blocks): the stack's shape, its ImageJ metadata (as from
        :func:`read_stack`) and an iterator of ``(t, Y, X)`` blocks (float32, or ``dtype``),
        ``t <= block_frames``, in frame order.

    Raises:
        InputError: every refusal of :func:`read_stack`; a block size below 1; a block that
            cannot be read (raised by the iterator).
    """
    path = Path(path)
    require(int(block_frames) >= 1, f"{block_frames} frames per block: must be at least 1")
    block_frames = int(block_frames)
    with _tifffile_warnings() as warnings:
        target, meta, mapped, one_pixel = _open_stack(path, warnings)
        if mapped is not None:
            _check_read(path, warnings, one_pixel, mapped.size, int(np.prod(target)))
    frames, ny, nx = target

    def blocks() -> Iterator[np.ndarray]:
        starts = range(0, frames, block_frames)
        if mapped is not None:
            stack = mapped.reshape(target)
            for start in starts:
                view = stack[start : start + block_frames]
                yield view if dtype is None else np.array(view, dtype)
            return
        with _tifffile_warnings() as warnings, tifffile.TiffFile(path) as tif:
            by_page = len(tif.pages) == frames
            whole = None if by_page else tif.asarray().reshape(target)
            for start in starts:
                stop = min(start + block_frames, frames)
                try:
                    data = tif.asarray(key=range(start, stop)) if whole is None else whole[start:stop]
                except Exception as err:
                    raise InputError(f"{path}: image data could not be read ({type(err).__name__})") from None
                _check_read(path, warnings, one_pixel, data.size, (stop - start) * ny * nx)
                yield (data if dtype is None else np.asarray(data, dtype)).reshape(stop - start, ny, nx)

    return target, meta, blocks()


def _open_stack(path: Path, warnings: list[str]) -> tuple[tuple[int, int, int], dict, np.ndarray | None, bool]:
    """The checks of :func:`read_stack` on the file's header; ``warnings`` collects tifffile's.

    Returns:
        ((T, Y, X), ImageJ metadata, the memory map of the data or None when the file cannot be
        memory-mapped (compressed or not contiguous), whether it is a T x 1 x 1 ImageJ stack).
    """
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a TIFF file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
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
    problems = _problems(warnings, one_pixel)
    if problems or (data_end is not None and data_end > file_size):
        what = problems[0] if problems else f"the image data end at byte {data_end}, the file at {file_size}"
        raise InputError(f"{path}: truncated or damaged TIFF ({what})".splitlines()[0])
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)) or dtype == np.bool_:
        raise InputError(f"{path}: pixel type {dtype} is not a numeric intensity type")
    target = _stack_shape(path, shape, axes)
    try:
        mapped = tifffile.memmap(path, mode="r")
    except Exception:  # compressed or non-contiguous
        mapped = None
    return target, meta, mapped, one_pixel


def _problems(warnings: list[str], one_pixel: bool) -> list[str]:
    """tifffile's warnings that mean a damaged file (a one-pixel ImageJ stack's expected one left out)."""
    return [w for w in warnings if not (one_pixel and "ImageJ series metadata invalid" in w)]


def _check_read(path: Path, warnings: list[str], one_pixel: bool, size: int, expected: int) -> None:
    """Refuse data read with tifffile warnings or with another number of values than ``expected``."""
    problems = _problems(warnings, one_pixel)
    if problems or size != expected:
        what = problems[0] if problems else f"{size} values read, {expected} expected"
        raise InputError(f"{path}: truncated or damaged TIFF ({what})".splitlines()[0])


@contextlib.contextmanager
def _tifffile_warnings() -> Iterator[list[str]]:
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
        axes = "Q" * max(len(shape) - 2, 0) + "YX"[-len(shape) :]
    for ax, n in zip(axes, shape):
        if ax in "SC" and n > 1:
            kind = "samples (colour)" if ax == "S" else "channels"
            raise InputError(
                f"{path}: RGB/multichannel image ({n} {kind}, axes {axes} of shape {shape}): "
                "export one channel as a (frames, Y, X) stack"
            )
    kept = [n for ax, n in zip(axes, shape) if ax not in "SC"]
    if len(kept) < 2:
        raise InputError(f"{path}: shape {shape} is not an image; needs a time stack (frames, Y, X)")
    (y, x), others = kept[-2:], [n for n in kept[:-2] if n != 1]
    if not others:
        raise InputError(f"{path}: a single {y}x{x} image; needs a time stack (frames, Y, X)")
    if len(others) > 1:
        raise InputError(
            f"{path}: {len(others)} non-spatial axes longer than 1 (axes {axes}, shape {shape}); "
            "expected one time stack (frames, Y, X)"
        )
    return others[0], y, x


FRAME_INTERVAL_RANGE_S = (1e-7, 1e4)
"""Accepted frame intervals in s: from 100 ns (faster than any camera, SPAD arrays included) to
about 3 hours (slower than any time-lapse FRAP); a value outside is almost surely in other units
(ms or us taken as s), which would scale every rate and D by that factor."""


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
        InputError: neither is set, the metadata's value is not a positive finite number
            (text, inf, 0, negative), or either is outside :data:`FRAME_INTERVAL_RANGE_S`.
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
    lo, hi = FRAME_INTERVAL_RANGE_S
    if not lo <= seconds <= hi:
        raise InputError(
            f"{path}: {source} is {seconds:g} s, outside {lo:g}-{hi:g} s: is it in seconds? pass {option} S"
        )
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
            page = tif.pages[0]
            if not isinstance(page, tifffile.TiffPage):
                return None
            tags = page.tags
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


def write_map(
    path: str | os.PathLike, image: Real[np.ndarray, "y x"], quantity: str, unit: str, pixel_um: float | None = None
) -> None:
    """Write a 2D map as a float32 ImageJ TIFF (uint8 and uint16 maps keep their type), with its
    quantity and unit in the metadata.

    Arguments:
        path: output file.
        image: (Y, X) array.
        quantity: name of the mapped quantity (e.g. ``"D"``).
        unit: its unit (e.g. ``"um^2/s"``; ``""`` for dimensionless).
        pixel_um: object-space pixel size in um, stored as the spatial calibration.
    """
    image = np.asarray(image)
    dtype = image.dtype if image.dtype in (np.uint8, np.uint16) else np.float32
    meta = {"axes": "YX", "Info": f"quantity={quantity}\nunit={unit or 'dimensionless'}\n"}
    tifffile.imwrite(path, image.astype(dtype), imagej=True, **_calibration(meta, pixel_um))


def write_stack(
    path: str | os.PathLike, stack: Real[np.ndarray, "t y x"], frame_time_s: float, pixel_um: float | None = None
) -> None:
    """Write a (T, Y, X) stack as an ImageJ TIFF with its frame interval (s) and pixel size (um)."""
    meta = {"axes": "TYX", "finterval": float(frame_time_s)}
    tifffile.imwrite(path, np.asarray(stack), imagej=True, **_calibration(meta, pixel_um))


def _calibration(meta: dict, pixel_um: float | None) -> dict:
    """``imwrite`` keywords: the ImageJ ``metadata`` and, when ``pixel_um`` is set, the unit
    (micron) and the ``resolution`` (pixels per um)."""
    if not pixel_um:
        return {"metadata": meta}
    return {"metadata": {**meta, "unit": "micron"}, "resolution": (1.0 / pixel_um, 1.0 / pixel_um)}


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented JSON (NumPy scalars converted)."""

    def default(o):
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(type(o).__name__)

    Path(path).write_text(json.dumps(obj, indent=2, default=default) + "\n")


# ------------------------------------------------------------------------------------------------
# safe outputs
#
# Nothing the user already has is ever replaced unless it is recognisably what fluojax would write
# there (a result folder of the same kind, with only the files its marker lists; a .tif file) and
# the user asked for it. Everything is written beside the destination in a hidden sibling named
# ``.NAME.fluojax-<role>-<pid>-<host>-<random>`` and renamed into place when complete; siblings
# left by a process that no longer exists (killed with SIGKILL) are cleared by the next run.


def describe_entries(names, limit: int = 3) -> str:
    """A short listing for a one-line message: ``holds a.tif, b.txt and 4 more``.

    Arguments:
        names: iterable of file names.
        limit: how many names to show.
    """
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return f"holds {shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


class _TerminateGuard:
    """SIGTERM handler state: raise once, or only remember the signal while ``deferring``."""

    def __init__(self):
        self.fired = False
        self.deferring = False

    def handler(self, signum, frame):
        if self.fired:  # a second signal must not interrupt the clean-up of the first
            return
        self.fired = True
        if not self.deferring:
            raise SystemExit(128 + signum)


@contextlib.contextmanager
def terminate_guard():
    """While active, SIGTERM raises ``SystemExit(143)`` so that ``except``/``finally`` clean-up runs.

    Python's default SIGTERM action ends the process at once, skipping every clean-up. Inside
    the guard the first SIGTERM raises instead (later ones are ignored, so they cannot interrupt
    the clean-up); while ``guard.deferring`` is set (a short commit that must not stop half way)
    it is only recorded and raised when the guard exits. The previous handler is restored on
    exit. Outside the main thread (where Python cannot install handlers) it does nothing.

    Yields:
        the guard; set its ``deferring`` attribute to postpone the signal.
    """
    guard = _TerminateGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = signal.signal(signal.SIGTERM, guard.handler)
    previous = signal.SIG_DFL if previous is None else previous  # None: installed outside Python
    try:
        yield guard
    except BaseException as err:
        signal.signal(signal.SIGTERM, previous)
        if guard.fired and not isinstance(err, SystemExit):  # SIGTERM came during the clean-up of another error
            raise SystemExit(128 + signal.SIGTERM) from err
        raise
    signal.signal(signal.SIGTERM, previous)
    if guard.fired:  # deferred during a commit
        raise SystemExit(128 + signal.SIGTERM)


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _sibling(destination: Path, role: str) -> Path:
    """A fresh name for a hidden sibling of ``destination`` (role: staging, old or partial)."""
    suffix = destination.suffix if role == "partial" else ""  # tifffile and friends may look at it
    return destination.with_name(
        f".{destination.name}.fluojax-{role}-{os.getpid()}-{_host_tag()}-{secrets.token_hex(4)}{suffix}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _remove(path: Path) -> None:
    """Remove a file, link or folder tree; a missing path is fine."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _clear_stale_siblings(destination: Path) -> None:
    """Remove the hidden siblings of ``destination`` left by dead fluojax processes on this host.

    A staging folder or partial file is deleted. An ``old`` folder (an earlier result moved aside
    an instant before its replacement was renamed into place) is put back when the destination
    is missing, and deleted otherwise.
    """
    pattern = re.compile(
        rf"\.{re.escape(destination.name)}\.fluojax-(staging|old|partial)-(\d+)-([0-9a-f]{{8}})-[0-9a-f]+"
    )
    host = _host_tag()
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return
    for entry in entries:
        match = pattern.match(entry.name)
        if not match or match.group(3) != host or _pid_alive(int(match.group(2))):
            continue
        path = Path(entry.path)
        if match.group(1) == "old" and not os.path.lexists(destination):
            try:
                os.rename(path, destination)
                continue
            except OSError:
                pass
        _remove(path)


def _check_parent(destination: Path, label: str) -> None:
    """The nearest existing ancestor of ``destination`` must be a writable folder."""
    ancestor = destination.parent
    while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{label}: {ancestor} is a file, not a folder; nothing was touched")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"{label}: no permission to write in {ancestor}; nothing was touched")


def _read_marker(folder: Path) -> dict | None:
    """The result marker of ``folder`` as a dict with ``kind`` and ``files``, or None."""
    marker = folder / RESULT_MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("kind"), str) and isinstance(data.get("files"), list)):
        return None
    return data


def _absolute(destination: str | os.PathLike) -> Path:
    return Path(os.path.abspath(destination))  # normalised, links not followed: "." -> the working folder


def check_output_folder(
    destination: str | os.PathLike, kind: str, overwrite: bool = False, label: str | None = None
) -> Path:
    """Check that a result folder may be written at ``destination``; touches nothing.

    Allowed: nothing there (the folder and its parents will be created); an empty folder; with
    ``overwrite``, an earlier fluojax result of the same ``kind`` holding only the files its
    marker lists. Refused: a file or link, a folder that is not a fluojax result (e.g. ``.`` or
    the input's folder), another kind's result, a result with files fluojax did not write, and a
    result of the same kind without ``overwrite``.

    Arguments:
        destination: the output folder as the user gave it.
        kind: what is written, e.g. ``"fcs-fit"``; stored in the marker.
        overwrite: replace an earlier result of the same kind.
        label: how the messages name the destination (default ``-o DESTINATION``).

    Returns:
        the absolute path of the destination.

    Raises:
        InputError: with a one-line message saying what is there and that nothing was touched.
    """
    label = label or f"-o {destination}"
    path = _absolute(destination)
    if not path.name:
        raise InputError(f"{label}: not a usable folder name; nothing was touched")
    _check_parent(path, label)
    if path.is_symlink():
        raise InputError(
            f"{label}: is a symbolic link, not a results folder; nothing was touched; choose a new folder name"
        )
    if not path.exists():
        return path
    if not path.is_dir():
        raise InputError(
            f"{label}: is an existing file, not a results folder; nothing was touched; choose a new folder name"
        )
    try:
        entries = os.listdir(path)
    except OSError as err:
        raise InputError(f"{label}: cannot be read ({err.strerror}); nothing was touched") from None
    if not entries:
        return path
    marker = _read_marker(path)
    if marker is None:
        raise InputError(
            f"{label}: a folder that is not a fluojax result ({describe_entries(entries)}); "
            "nothing was touched; choose a new or empty folder"
        )
    if marker["kind"] != kind:
        other = " ".join(marker["kind"].split())[:40]  # one line, whatever the file says
        raise InputError(
            f"{label}: holds a fluojax {other} result, not {kind}; nothing was touched; choose another folder"
        )
    listed = set(marker["files"]) | {RESULT_MARKER}
    foreign = [name for name in entries if name not in listed]
    if foreign:
        raise InputError(
            f"{label}: a fluojax {kind} result that also {describe_entries(foreign)}, which fluojax did not write; "
            "nothing was touched; move those files or choose another folder"
        )
    if not overwrite:
        raise InputError(f"{label}: holds an earlier fluojax {kind} result; pass --overwrite to replace it")
    return path


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones created, deepest last."""
    missing = []
    while not os.path.lexists(folder):
        missing.append(folder)
        folder = folder.parent
    created = []
    for path in reversed(missing):
        try:
            os.mkdir(path)
        except FileExistsError:  # made by someone else meanwhile: theirs
            continue
        created.append(path)
    return created


def _remove_created(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:  # no longer empty: someone else's now
            break


def _marker(kind: str, files: list[str]) -> dict:
    from importlib import metadata

    try:
        version = metadata.version("fluojax")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "kind": kind,
        "files": sorted(files),
        "fluojax_version": version,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


@contextlib.contextmanager
def result_folder(destination: str | os.PathLike, kind: str, overwrite: bool = False, label: str | None = None):
    """Yield an empty staging folder; when the block succeeds it becomes the result at ``destination``.

    The rules of :func:`check_output_folder` are applied on entry and again just before the
    commit. The staging folder is a hidden sibling (``.NAME.fluojax-staging-<pid>-...``, normal
    permissions: 0o777 less the umask). On success the marker :data:`RESULT_MARKER` is written
    last, an earlier result (if any) is renamed aside, the staging folder is renamed into place
    and the earlier result deleted. On any exception, including KeyboardInterrupt and SIGTERM
    (see :func:`terminate_guard`), the staging folder and any parent folders created for it are
    removed and ``destination`` is left as it was. Stale siblings of dead processes are cleared
    on entry.

    Arguments:
        destination: output folder.
        kind: what is written (e.g. ``"fcs-fit"``); an existing result is only replaced when
            its marker names the same kind.
        overwrite: replace an earlier result of the same kind.
        label: how messages name the destination (default ``-o DESTINATION``).

    Yields:
        ``Path`` of the staging folder to write the result files into.

    Raises:
        InputError: the destination may not be written (nothing touched).
    """
    label = label or f"-o {destination}"
    path = check_output_folder(destination, kind, overwrite, label)
    with terminate_guard() as guard:
        created, staging, old = [], None, None
        committed = False
        try:
            created = _make_parents(path.parent)
            _clear_stale_siblings(path)
            check_output_folder(path, kind, overwrite, label)  # a cleared sibling may have been put back
            while staging is None:
                try:
                    staging = _sibling(path, "staging")
                    os.mkdir(staging)  # mode 0o777 less the umask (mkdtemp would give 0o700)
                except FileExistsError:
                    staging = None
            yield staging
            guard.deferring = True  # from here on a SIGTERM waits until the result is in place
            write_json(staging / RESULT_MARKER, _marker(kind, os.listdir(staging)))
            check_output_folder(path, kind, overwrite, label)  # still as checked before the work started?
            if path.is_dir():
                if os.listdir(path):
                    old = _sibling(path, "old")
                    os.rename(path, old)
                else:
                    os.rmdir(path)
            os.rename(staging, path)
            committed = True
            if old is not None:
                _remove(old)  # interrupted here, it is cleared as a stale sibling by the next run
        except BaseException as err:
            guard.deferring = True
            if not committed:
                if old is not None and not os.path.lexists(path):
                    with contextlib.suppress(OSError):  # else the next run puts it back (stale sibling)
                        os.rename(old, path)  # put the earlier result back
                if staging is not None:
                    _remove(staging)
                _remove_created(created)
            if isinstance(err, OSError):  # e.g. disk full: one line, not a traceback
                raise InputError(
                    f"{label}: could not be written ({err.strerror or err}); nothing was touched"
                ) from None
            raise


def check_output_file(
    destination: str | os.PathLike,
    overwrite: bool = False,
    suffixes: tuple[str, ...] = (".tif", ".tiff"),
    label: str | None = None,
) -> Path:
    """Check that a file may be written at ``destination``; touches nothing.

    Allowed: nothing there; with ``overwrite``, a regular file with one of ``suffixes``.
    Refused: another suffix, a folder, a link or a special file, and an existing file without
    ``overwrite``.

    Arguments:
        destination: output file as the user gave it.
        overwrite: replace an existing file.
        suffixes: allowed suffixes (lower case).
        label: how the messages name the destination (default ``-o DESTINATION``).

    Returns:
        the absolute path of the destination.

    Raises:
        InputError: with a one-line message.
    """
    label = label or f"-o {destination}"
    path = _absolute(destination)
    if path.suffix.lower() not in suffixes:
        raise InputError(f"{label}: the output must be a {' or '.join(suffixes)} file")
    _check_parent(path, label)
    if path.is_symlink():
        raise InputError(f"{label}: is a symbolic link; nothing was touched; choose a new file name")
    if not path.exists():
        return path
    if path.is_dir():
        raise InputError(f"{label}: is a folder, not a file; nothing was touched; choose a new file name")
    if not stat.S_ISREG(path.stat().st_mode):
        raise InputError(f"{label}: is not a regular file; nothing was touched")
    if not overwrite:
        raise InputError(f"{label}: exists; pass --overwrite to replace it (nothing was touched)")
    return path


@contextlib.contextmanager
def result_file(
    destination: str | os.PathLike,
    overwrite: bool = False,
    suffixes: tuple[str, ...] = (".tif", ".tiff"),
    label: str | None = None,
):
    """Yield a hidden temporary path beside ``destination``; when the block succeeds it replaces it.

    The rules of :func:`check_output_file` are applied on entry and before the final
    ``os.replace``. On any exception (SIGTERM included) the temporary file and parent folders
    created for it are removed.

    Arguments:
        destination, overwrite, suffixes, label: as for :func:`check_output_file`.

    Yields:
        ``Path`` to write (an empty file, same suffix as ``destination``).
    """
    label = label or f"-o {destination}"
    path = check_output_file(destination, overwrite, suffixes, label)
    with terminate_guard() as guard:
        created, tmp = [], None
        try:
            created = _make_parents(path.parent)
            _clear_stale_siblings(path)
            while tmp is None:
                try:
                    tmp = _sibling(path, "partial")
                    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                except FileExistsError:
                    tmp = None
            yield tmp
            guard.deferring = True
            check_output_file(path, overwrite, suffixes, label)
            os.replace(tmp, path)
        except BaseException as err:
            guard.deferring = True
            if tmp is not None:
                _remove(tmp)
            _remove_created(created)
            if isinstance(err, OSError):
                raise InputError(
                    f"{label}: could not be written ({err.strerror or err}); nothing was touched"
                ) from None
            raise
