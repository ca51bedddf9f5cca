"""The localization table of SMLM, its files (ThunderSTORM CSV, SMLM Challenge 2016 ground truth) and rendering.

:class:`Localizations` is one NamedTuple of equal-length NumPy arrays, one row per localized
molecule: 0-based frame, position in nm (origin at the outer corner of the first pixel: pixel
(row i, column j) spans x in [j a, (j+1) a), y in [i a, (i+1) a) nm, a the pixel size; z relative
to the reference focal plane, NaN when not measured), photons, background, fitted PSF width,
uncertainties and a detection score. ThunderSTORM (Ovesny et al. 2014) uses the same origin: its
fitter returns x relative to the centre of the detected pixel ``j`` and adds ``j + 0.5`` px
(``MultipleLocationsImageFitting`` in zitmen/thunderstorm), so pixel j spans [j, j+1) px and
``x [nm] = x [px] * a`` with no half-pixel shift; its frames are 1-based, ours 0-based.
:func:`thunderstorm_csv` / :func:`write_thunderstorm` write its CSV (quoted ``"name [unit]"``
labels), :func:`read_thunderstorm` reads any ThunderSTORM-style CSV (any column order, units
converted), :func:`read_challenge_truth` the challenge's ground-truth ``activations.csv``
(Sage et al. 2019), and :func:`render` makes the super-resolution image (a Gaussian-blurred
histogram on a zoomed grid).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from fluojax.io import InputError, result_file

if TYPE_CHECKING:  # annotations only (see fluojax/io.py)
    from jaxtyping import Bool, Float, Int

__all__ = [
    "Localizations",
    "Rendered",
    "concatenate",
    "read_challenge_truth",
    "read_localizations",
    "read_thunderstorm",
    "render",
    "thunderstorm_csv",
    "write_thunderstorm",
]

_FLOAT_FIELDS = (
    "x_nm",
    "y_nm",
    "z_nm",
    "photons",
    "background",
    "sigma_nm",
    "uncertainty_xy_nm",
    "uncertainty_z_nm",
    "score",
)


class Localizations(NamedTuple):
    """A table of n localizations; every field is an array of length n.

    Fields:
        frame: int64, 0-based frame index.
        x_nm, y_nm: lateral position in nm (origin at the outer corner of the first pixel).
        z_nm: axial position in nm relative to the reference focal plane; NaN = not measured (2D).
        photons: total signal in photons (expected photo-electrons); NaN when unknown.
        background: background in photons per pixel; NaN when unknown.
        sigma_nm: fitted lateral PSF standard deviation in nm; NaN when not fitted (e.g. a network).
        uncertainty_xy_nm: lateral localization precision (one axis, e.g. sqrt(CRLB_x)) in nm; NaN
            when unknown.
        uncertainty_z_nm: axial localization precision in nm; NaN when unknown or 2D.
        score: detection confidence (a network's probability in [0, 1]); NaN when none.

    Build one with :meth:`build` (missing fields become NaN); ``table.n`` is the number of rows
    (``len(table)`` is the number of fields, as for every tuple).
    """

    frame: Int[np.ndarray, " n"]
    x_nm: Float[np.ndarray, " n"]
    y_nm: Float[np.ndarray, " n"]
    z_nm: Float[np.ndarray, " n"]
    photons: Float[np.ndarray, " n"]
    background: Float[np.ndarray, " n"]
    sigma_nm: Float[np.ndarray, " n"]
    uncertainty_xy_nm: Float[np.ndarray, " n"]
    uncertainty_z_nm: Float[np.ndarray, " n"]
    score: Float[np.ndarray, " n"]

    @classmethod
    def build(cls, frame, x_nm, y_nm, **fields) -> Localizations:
        """A table from its columns as NumPy arrays (int64 frame, float64 values).

        Arguments:
            frame, x_nm, y_nm: arrays of length n (JAX, NumPy or lists).
            **fields: any of ``z_nm``, ``photons``, ``background``, ``sigma_nm``,
                ``uncertainty_xy_nm``, ``uncertainty_z_nm``, ``score``; a scalar is broadcast,
                a missing field is NaN.

        Raises:
            InputError: columns of different lengths, or an unknown field name.
        """
        unknown = sorted(set(fields) - set(_FLOAT_FIELDS))
        if unknown:
            raise InputError(f"unknown localization field(s) {', '.join(unknown)}")
        frame_arr = np.asarray(frame).reshape(-1).astype(np.int64)
        n = frame_arr.shape[0]
        columns: dict[str, np.ndarray] = {"frame": frame_arr}
        for name in _FLOAT_FIELDS:
            given = {"x_nm": x_nm, "y_nm": y_nm}.get(name, fields.get(name))
            values = np.full(n, np.nan) if given is None else np.asarray(given, dtype=np.float64)
            if values.ndim == 0:
                values = np.full(n, float(values))
            values = values.reshape(-1)
            if values.shape[0] != n:
                raise InputError(f"localization column {name} has {values.shape[0]} values, frame has {n}")
            columns[name] = values
        return cls(**columns)

    @classmethod
    def empty(cls) -> Localizations:
        """A table with no rows."""
        return cls.build(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))

    @property
    def n(self) -> int:
        """Number of localizations."""
        return int(np.shape(self.frame)[0])

    @property
    def is_3d(self) -> bool:
        """Whether any z is measured (finite)."""
        return bool(np.isfinite(np.asarray(self.z_nm)).any())

    def select(self, which: Bool[np.ndarray, " n"] | Int[np.ndarray, " m"]) -> Localizations:
        """The rows picked by a boolean mask of length n or an index array."""
        which = np.asarray(which)
        return Localizations(*(np.asarray(col)[which] for col in self))


def concatenate(tables) -> Localizations:
    """The rows of several tables, one after another (an empty list gives an empty table)."""
    tables = list(tables)
    if not tables:
        return Localizations.empty()
    return Localizations(*(np.concatenate([np.asarray(col) for col in cols]) for cols in zip(*tables)))


# ------------------------------------------------------------------------------------------------
# ThunderSTORM CSV

_LENGTH_NM = {"nm": 1.0, "um": 1000.0, "µm": 1000.0, "μm": 1000.0}
# ThunderSTORM's default unit of a column whose label has none (MoleculeDescriptor.Units.getDefaultUnit)
_DEFAULT_UNIT = {"x": "px", "y": "px", "z": "nm", "sigma": "px", "intensity": "ADU", "offset": "ADU", "bkgstd": "ADU"}
# ThunderSTORM column name -> Localizations field, and whether it is a length (else photons)
_COLUMNS = {
    "x": ("x_nm", True),
    "y": ("y_nm", True),
    "z": ("z_nm", True),
    "sigma": ("sigma_nm", True),
    "uncertainty_xy": ("uncertainty_xy_nm", True),
    "uncertainty": ("uncertainty_xy_nm", True),  # label of ThunderSTORM before uncertainty_xy
    "uncertainty_z": ("uncertainty_z_nm", True),
    "intensity": ("photons", False),
    "offset": ("background", False),
    "score": ("score", False),
}


def thunderstorm_csv(locs: Localizations) -> str:
    """The ThunderSTORM CSV text of a table (Ovesny et al. 2014).

    Header (quoted labels, as ThunderSTORM writes them)::

        "id","frame","x [nm]","y [nm]",["z [nm]",]"sigma [nm]","intensity [photon]",
        "offset [photon]","bkgstd [photon]","uncertainty_xy [nm]"[,"uncertainty_z [nm]"][,"score"]

    ``id`` counts rows from 1, ``frame`` is 1-based, ``x [nm] = x_nm`` (same origin, see the
    module docstring), ``offset`` is the background per pixel and ``bkgstd`` its Poisson standard
    deviation sqrt(background) (photons). The z columns appear when any z is finite, ``score``
    when any score is finite (ThunderSTORM imports extra unitless columns). Unknown values are
    written ``NaN`` (what Java's ``Double.parseDouble`` reads); numbers with 10 significant digits.

    Arguments:
        locs: the table.
    """
    locs = Localizations(*(np.asarray(col) for col in locs))
    n = locs.n
    background = locs.background
    columns: list[tuple[str, np.ndarray]] = [
        ("id", np.arange(1, n + 1)),
        ("frame", locs.frame + 1),
        ("x [nm]", locs.x_nm),
        ("y [nm]", locs.y_nm),
    ]
    if locs.is_3d:
        columns.append(("z [nm]", locs.z_nm))
    columns += [
        ("sigma [nm]", locs.sigma_nm),
        ("intensity [photon]", locs.photons),
        ("offset [photon]", background),
        ("bkgstd [photon]", np.sqrt(np.where(background >= 0, background, np.nan))),
        ("uncertainty_xy [nm]", locs.uncertainty_xy_nm),
    ]
    if locs.is_3d:
        columns.append(("uncertainty_z [nm]", locs.uncertainty_z_nm))
    if np.isfinite(locs.score).any():
        columns.append(("score", locs.score))
    header = ",".join(f'"{label}"' for label, _ in columns)
    if n == 0:
        return header + "\n"
    texts = []
    for _, values in columns:
        if np.issubdtype(values.dtype, np.integer):
            texts.append(values.astype(str))
        else:
            text = np.char.mod("%.10g", values)
            texts.append(np.where(np.isnan(values), "NaN", text))
    rows = texts[0]
    for text in texts[1:]:
        rows = np.char.add(np.char.add(rows, ","), text)
    return header + "\n" + "\n".join(rows.tolist()) + "\n"


def write_thunderstorm(
    locs: Localizations, destination: str | os.PathLike, overwrite: bool = False, label: str | None = None
) -> Path:
    """Write a table as a ThunderSTORM CSV (:func:`thunderstorm_csv`), never half-written.

    The text goes to a hidden sibling that replaces ``destination`` only when complete
    (:func:`fluojax.io.result_file`, with its rules: a ``.csv`` file, an existing one only with
    ``overwrite``).

    Arguments:
        locs: the table.
        destination: the ``.csv`` path.
        overwrite: replace an existing file.
        label: how messages name the destination (default as in :func:`fluojax.io.result_file`).

    Returns:
        the absolute path written.

    Raises:
        InputError: the destination may not be written.
    """
    text = thunderstorm_csv(locs)
    with result_file(destination, overwrite, suffixes=(".csv",), label=label) as tmp:
        Path(tmp).write_text(text)
    return Path(destination).absolute()


def _parse_label(label: str) -> tuple[str, str | None]:
    """``"x [nm]"`` -> ("x", "nm"); a label without brackets -> (label, None)."""
    label = label.strip().strip("\"'`").strip()
    start, end = label.rfind("["), label.rfind("]")
    if start < 0 or end < start:
        return label, None
    return label[:start].strip(), label[start + 1 : end].strip()


def _read_rows(path: Path) -> tuple[list[str], np.ndarray]:
    """The header labels and the numeric rows (n, columns) of a comma-separated file."""
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a localization file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable text file ({type(err).__name__})") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        raise InputError(f"{path}: empty file, no localization table")
    header = next(csv.reader([lines[0]]))
    if len(lines) == 1:
        return header, np.zeros((0, len(header)))
    try:
        data = np.loadtxt(lines[1:], delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise InputError(f"{path}: non-numeric or ragged rows ({str(err).splitlines()[0]})") from None
    if data.shape[0] and data.shape[1] != len(header):
        raise InputError(f"{path}: {len(header)} column labels but {data.shape[1]} values per row")
    return header, data.reshape(-1, len(header))


def _frames(path: Path, values: np.ndarray, first: int) -> np.ndarray:
    """0-based int frames from a file's frame column numbered from ``first``."""
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise InputError(f"{path}: frame numbers must be whole numbers")
    if values.size and values.min() < first:
        raise InputError(f"{path}: frame {values.min():g}: frames in this file are numbered from {first}")
    return values.astype(np.int64) - first


def read_thunderstorm(path: str | os.PathLike, pixel_nm: float | None = None) -> Localizations:
    """Read a ThunderSTORM-style localization CSV.

    Columns are found by name, in any order; extra columns (``id``, ``chi2``, ``detections``,
    ``gt_id``, ...) are ignored. Units come from the labels: lengths in ``nm``, ``um`` or ``px``
    (times ``pixel_nm``); a label without a unit takes ThunderSTORM's default (x, y, sigma in px;
    z and uncertainties in nm); photometric columns (``intensity``, ``offset``) are used in
    ``photon`` units and become NaN in ``ADU`` (no camera calibration here). Frames are 1-based in
    the file, 0-based in the table. ``uncertainty [nm]`` (older ThunderSTORM) is read as
    ``uncertainty_xy``; a ``z`` column of all zeros is kept as z = 0.

    Arguments:
        path: the CSV file.
        pixel_nm: pixel size in nm; needed only when a length is in px.

    Raises:
        InputError: a missing file, an empty file, non-numeric values, no frame/x/y column
            (the message names the missing ones), px lengths without ``pixel_nm``, a z in px,
            or frames below 1.
    """
    path = Path(path)
    header, data = _read_rows(path)
    found: dict[str, tuple[int, str | None]] = {}
    for index, label in enumerate(header):
        name, unit = _parse_label(label)
        if name not in found:
            found[name] = (index, unit)
    missing = [name for name in ("frame", "x", "y") if name not in found]
    if missing:
        raise InputError(
            f"{path}: no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}; "
            'a localization table needs frame, x and y (e.g. ThunderSTORM\'s "x [nm]")'
        )
    if pixel_nm is not None and not (math.isfinite(pixel_nm) and pixel_nm > 0):
        raise InputError(f"pixel size {pixel_nm} nm: must be > 0")
    fields: dict[str, np.ndarray] = {}
    for name, (field, is_length) in _COLUMNS.items():
        if name not in found or field in fields:
            continue
        index, unit = found[name]
        unit = unit if unit is not None else _DEFAULT_UNIT.get(name, "nm" if is_length else "")
        values = data[:, index]
        if is_length:
            if unit == "px":
                if name == "z":
                    raise InputError(f"{path}: z in px cannot be converted to nm; give z in nm")
                if pixel_nm is None:
                    raise InputError(f"{path}: {name} is in px: the pixel size in nm is needed")
                values = values * pixel_nm
            elif unit in _LENGTH_NM:
                values = values * _LENGTH_NM[unit]
            else:
                raise InputError(f"{path}: {name} in unit {unit!r}: expected nm, um or px")
        elif name != "score" and unit != "photon":
            values = np.full_like(values, np.nan)  # ADU: needs the camera's calibration
        fields[field] = values
    frame = _frames(path, data[:, found["frame"][0]], first=1)
    return Localizations.build(frame, **fields)


def read_challenge_truth(path: str | os.PathLike) -> Localizations:
    """Read an SMLM Challenge 2016 ground-truth CSV (Sage et al. 2019) as a truth table.

    Columns ``Ground-truth`` (molecule id), ``frame`` (1-based), ``xnano``, ``ynano``, ``znano``
    (nm) and ``intensity `` (photons; the label ends in a space), found by name in any order; a
    file without a header is read in that column order. Positions are kept as given.

    Arguments:
        path: the CSV file (``activations.csv`` of a challenge dataset).

    Raises:
        InputError: a missing or empty file, non-numeric values, or a missing frame/xnano/ynano.
    """
    path = Path(path)
    header, data = _read_rows(path)
    try:  # a file without a header: its first line is numbers too
        first = np.array([float(label) for label in header])
    except ValueError:
        pass
    else:
        header = ["Ground-truth", "frame", "xnano", "ynano", "znano", "intensity"][: len(header)]
        data = np.vstack([first[None, :], data])
    index = {label.strip().strip("\"'").strip(): i for i, label in enumerate(reversed(header))}
    index = {name: len(header) - 1 - i for name, i in index.items()}  # first occurrence wins
    missing = [name for name in ("frame", "xnano", "ynano") if name not in index]
    if missing:
        raise InputError(
            f"{path}: no {', '.join(missing)} column{'s' if len(missing) > 1 else ''}; "
            "an SMLM Challenge truth table needs frame, xnano and ynano"
        )
    column = lambda name: data[:, index[name]] if name in index else None  # noqa: E731
    return Localizations.build(
        _frames(path, data[:, index["frame"]], first=1),
        column("xnano"),
        column("ynano"),
        z_nm=column("znano"),
        photons=column("intensity"),
    )


def read_localizations(path: str | os.PathLike, pixel_nm: float | None = None) -> Localizations:
    """Read a localization or truth CSV: the challenge ground truth when the header has
    ``xnano``, else ThunderSTORM (:func:`read_thunderstorm`, :func:`read_challenge_truth`)."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as handle:
            first = handle.readline()
    except (OSError, UnicodeDecodeError):
        first = ""
    if "xnano" in first:
        return read_challenge_truth(path)
    return read_thunderstorm(path, pixel_nm)


# ------------------------------------------------------------------------------------------------
# rendering


class Rendered(NamedTuple):
    """A super-resolution image.

    Fields:
        image: float32 (ny * zoom, nx * zoom), localizations per bin (a histogram, blurred).
        extent_nm: (left, right, bottom, top) = (0, nx a, ny a, 0) nm, matplotlib's ``imshow``
            extent for ``origin="upper"`` (row 0 at the top, y growing downwards).
        bin_nm: side of a bin, a / zoom.
    """

    image: Float[np.ndarray, "ny nx"]
    extent_nm: tuple[float, float, float, float]
    bin_nm: float


def _axis_weights(centre_bins: np.ndarray, sigma_bins: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """For n positions (in bins), the first bin index of a (2 radius + 1) patch and the Gaussian
    mass in each patch bin (erf differences, normalised to 1 over the patch)."""
    from scipy.special import erf

    first = np.floor(centre_bins).astype(np.int64) - radius
    edges = first[:, None] + np.arange(2 * radius + 2)[None, :]
    cdf = 0.5 * erf((edges - centre_bins[:, None]) / (math.sqrt(2.0) * sigma_bins[:, None]))
    mass = np.diff(cdf, axis=1)
    return first, mass / mass.sum(axis=1, keepdims=True)


def render(
    locs: Localizations,
    pixel_nm: float,
    shape_px: tuple[int, int],
    zoom: int = 8,
    sigma_nm: float | None = None,
    block_bins: int = 1 << 22,
) -> Rendered:
    """A super-resolution image: the localizations binned on a grid ``zoom`` times finer than the
    camera, each spread as a Gaussian.

    Bin (r, c) spans x in [c b, (c+1) b), y in [r b, (r+1) b) nm with b = a / zoom. A localization
    at (x, y) adds the mass of a normalised 2D Gaussian of standard deviation s centred on it to
    each bin, integrated over the bin: w_c = Phi((c+1) b; x, s) - Phi(c b; x, s) (and so in y),
    truncated at about 4 s and renormalised, so each localization adds exactly 1 when its patch
    lies inside the field. ``sigma_nm = 0`` gives the plain histogram (1 in the bin holding it).
    The image sums all frames. Vectorised: localizations sorted by s are cut into blocks of about
    ``block_bins`` patch bins, each block added with one ``np.bincount``; the loop runs over blocks
    only. s is capped at a quarter of the field's larger side (such a localization is noise anyway).

    Arguments:
        locs: the table (x_nm, y_nm and, when ``sigma_nm`` is None, uncertainty_xy_nm).
        pixel_nm: camera pixel size a in nm.
        shape_px: camera field (ny, nx) in pixels.
        zoom: integer bins per camera pixel.
        sigma_nm: the blur s in nm for every localization; None = each one's ``uncertainty_xy_nm``
            (non-finite values take the median of the finite ones, or 0 when none is finite).
        block_bins: patch bins per vectorised block (memory: a few float64 arrays of this size).

    Returns:
        :class:`Rendered`.

    Raises:
        InputError: pixel size, zoom or sigma not positive (sigma may be 0), or an empty field.
    """
    if not (math.isfinite(pixel_nm) and pixel_nm > 0):
        raise InputError(f"pixel size {pixel_nm} nm: must be > 0")
    if int(zoom) != zoom or zoom < 1:
        raise InputError(f"zoom {zoom}: must be a whole number >= 1")
    ny, nx = (int(s) for s in shape_px)
    if ny < 1 or nx < 1:
        raise InputError(f"field of {ny} x {nx} pixels: must be at least 1 x 1")
    zoom = int(zoom)
    bin_nm = pixel_nm / zoom
    h, w = ny * zoom, nx * zoom
    x = np.asarray(locs.x_nm, dtype=np.float64) / bin_nm
    y = np.asarray(locs.y_nm, dtype=np.float64) / bin_nm
    if sigma_nm is None:
        sigma = np.asarray(locs.uncertainty_xy_nm, dtype=np.float64).copy()
        finite = np.isfinite(sigma) & (sigma >= 0)
        sigma[~finite] = float(np.median(sigma[finite])) if finite.any() else 0.0
    else:
        if not (math.isfinite(sigma_nm) and sigma_nm >= 0):
            raise InputError(f"render blur {sigma_nm} nm: must be >= 0")
        sigma = np.full(x.shape, float(sigma_nm))
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, sigma = x[keep], y[keep], sigma[keep] / bin_nm
    flat = np.zeros(h * w, dtype=np.float64)

    point = sigma < 1e-3  # narrower than a thousandth of a bin: the plain histogram
    col, row = np.floor(x[point]).astype(np.int64), np.floor(y[point]).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat += np.bincount(row[inside] * w + col[inside], minlength=h * w)

    x, y, sigma = x[~point], y[~point], sigma[~point]
    order = np.argsort(sigma)
    x, y, sigma = x[order], y[order], np.minimum(sigma[order], max(h, w) / 4)
    radius_of = lambda s: math.ceil(4.0 * float(s)) + 1  # noqa: E731
    start = 0
    while start < x.size:
        count = max(1, block_bins // (2 * radius_of(sigma[start]) + 1) ** 2)
        radius = radius_of(sigma[min(start + count, x.size) - 1])
        count = max(1, min(count, block_bins // (2 * radius + 1) ** 2))
        part = slice(start, start + count)
        radius = radius_of(sigma[min(start + count, x.size) - 1])
        offsets = np.arange(2 * radius + 1)
        cx, wx = _axis_weights(x[part], sigma[part], radius)
        cy, wy = _axis_weights(y[part], sigma[part], radius)
        cols = cx[:, None] + offsets[None, :]
        rows = cy[:, None] + offsets[None, :]
        weight = wy[:, :, None] * wx[:, None, :]
        ok = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        index = rows[:, :, None] * w + cols[:, None, :]
        flat += np.bincount(index[ok], weights=weight[ok], minlength=h * w)
        start += count
    image = flat.reshape(h, w).astype(np.float32)
    return Rendered(image, (0.0, nx * pixel_nm, ny * pixel_nm, 0.0), bin_nm)
