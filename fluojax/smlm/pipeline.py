"""From a recorded stack to a localization table: camera set-up, reading, localizing, evaluating.

The top of the SMLM technique, the library path ``fluojax smlm`` calls and Python users reach the
same way. :func:`camera_from_settings` turns the camera set-up that ThunderSTORM asks for
(Ovesny et al. 2014: pixel size in nm, photoelectrons per A/D count, base level in ADU, EM gain,
quantum efficiency; or sCMOS calibration maps of offset, variance and gain) into a
:class:`fluojax.noise.Camera`. :func:`read_frames` reads a TIFF into ``(frames, planes, y, x)``:
a single-plane stack is one image per frame; a multi-plane stack stores the planes of a frame as
consecutive images (plane index fastest: images ``t P, ..., t P + P - 1`` are frame t's planes,
the order ImageJ gives when a hyperstack's planes are its channels or slices). :func:`check_frames`
refuses stacks that cannot be analysed (a plane count the PSF does not have, a constant stack).
:func:`localize_stack` localizes every frame, by per-spot maximum likelihood
(:func:`fluojax.smlm.estimate.localize`) or by the voxel-wise network
(:func:`fluojax.smlm.learned.localize_with_network`), in chunks of frames with a progress counter,
and returns a :class:`~fluojax.smlm.localizations.Localizations` table with a JSON-ready summary.
:func:`evaluate_tables` scores a table against the truth with the SMLM Challenge 2016 metrics
(Sage et al. 2019), and :func:`simulate_stack` makes a stack and its truth from a named scene
(:data:`PRESETS`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fluojax.io import InputError

if TYPE_CHECKING:  # annotations only: importing jax here would slow down the command line's help
    from jaxtyping import Float

    from fluojax.noise import Camera
    from fluojax.smlm.localizations import Localizations
    from fluojax.smlm.models import PSF
    from fluojax.smlm.simulate import Scene

__all__ = [
    "CHUNK_FRAMES",
    "METHODS",
    "PRESETS",
    "camera_from_settings",
    "check_frames",
    "detections_to_table",
    "evaluate_tables",
    "fits_to_table",
    "frames_to_photons",
    "localize_stack",
    "make_scene",
    "read_calibration_map",
    "read_frames",
    "simulate_stack",
    "truth_table",
]

METHODS = ("mle", "net")
"""Localization methods of :func:`localize_stack`."""

CHUNK_FRAMES = 32
"""Frames localized per call (one compiled shape; the last chunk is padded by repeating its last
frame, whose localizations are dropped)."""


# ------------------------------------------------------------------------------------------------
# Camera set-up


def _finite(value: float, text: str, ok: Callable[[float], bool]) -> float:
    value = float(value)
    if not (math.isfinite(value) and ok(value)):
        raise InputError(text)
    return value


def read_calibration_map(path: str | os.PathLike, what: str) -> np.ndarray:
    """Read one sCMOS calibration map: a single 2D image ``(y, x)`` or a per-plane ``(planes, y, x)`` TIFF.

    Arguments:
        path: the TIFF file.
        what: the map's name for the messages (``"sCMOS offset map"``).

    Returns:
        float64 array of the map.

    Raises:
        InputError: a missing or unreadable file, a map that is not 2D or 3D, or non-finite values.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: no such file")
    try:
        data = np.asarray(tifffile.imread(path), dtype=np.float64)
    except Exception as err:  # tifffile raises several types for corrupt or foreign files
        raise InputError(f"{what} {path}: not a readable TIFF file ({type(err).__name__})") from None
    data = np.squeeze(data)
    if data.ndim not in (2, 3):
        raise InputError(f"{what} {path}: shape {data.shape}; a map is one (y, x) image or (planes, y, x)")
    if not np.all(np.isfinite(data)):
        raise InputError(f"{what} {path}: holds non-finite values")
    return data


def camera_from_settings(
    *,
    e_per_adu: float = 1.0,
    baseline_adu: float = 0.0,
    em_gain: float | None = None,
    quantum_efficiency: float = 1.0,
    read_noise_e: float = 0.0,
    scmos_offset_adu: np.ndarray | None = None,
    scmos_variance_adu2: np.ndarray | None = None,
    scmos_gain_adu_per_e: np.ndarray | None = None,
    frame_shape: tuple[int, ...] | None = None,
) -> Camera:
    """The camera of ThunderSTORM's camera set-up (Ovesny et al. 2014) as a :class:`fluojax.noise.Camera`.

    ThunderSTORM converts counts to photons as ``photons = (ADU - base level) e_per_adu / (EM gain QE)``;
    the camera returned reads expected photons ``N`` out as mean counts
    ``QE N G / e_per_adu + base level`` (``G`` the EM gain, 1 without EM):

    * no maps, no EM gain: :class:`~fluojax.noise.GaussianReadNoise` (conversion gain
      ``1 / e_per_adu`` ADU/e-, offset = base level, read noise ``read_noise_e``);
    * an EM gain: :class:`~fluojax.noise.EMCCD` (the same, with the gain register, excess noise 2);
    * any sCMOS map: :class:`~fluojax.noise.SCMOS` with per-pixel offset (ADU), read variance
      (the calibration's ADU^2, divided by gain^2 into e-^2, Huang et al. 2013) and gain
      (ADU/e-); a map not given takes the scalar setting (base level, ``read_noise_e^2``,
      ``1 / e_per_adu``).

    Arguments:
        e_per_adu: photoelectrons per A/D count (> 0).
        baseline_adu: base level (offset) in ADU (finite).
        em_gain: EM gain (>= 1) when the EM register is on, else None.
        quantum_efficiency: photo-electrons per photon, in (0, 1].
        read_noise_e: read-noise s.d. in electrons (>= 0).
        scmos_offset_adu, scmos_variance_adu2, scmos_gain_adu_per_e: calibration maps, (y, x) or
            (planes, y, x); None when not given.
        frame_shape: (planes, y, x) of the data, to check the maps against.

    Raises:
        InputError: a value outside its range (the message gives the value and its unit), an EM gain
            with sCMOS maps, a map whose shape does not match the frames, a non-positive gain map
            or a negative variance map.
    """
    from fluojax import noise

    e_per_adu = _finite(e_per_adu, f"photoelectrons per A/D count {e_per_adu} e-/ADU: must be > 0", lambda v: v > 0)
    baseline_adu = _finite(baseline_adu, f"base level {baseline_adu} ADU: must be a finite number", lambda v: True)
    qe = _finite(
        quantum_efficiency, f"quantum efficiency {quantum_efficiency}: must be in (0, 1]", lambda v: 0 < v <= 1
    )
    read_noise_e = _finite(read_noise_e, f"read noise {read_noise_e} e-: must be >= 0", lambda v: v >= 0)
    maps = {
        "sCMOS offset map": scmos_offset_adu,
        "sCMOS variance map": scmos_variance_adu2,
        "sCMOS gain map": scmos_gain_adu_per_e,
    }
    given = {name: np.asarray(m, np.float64) for name, m in maps.items() if m is not None}
    if not given:
        if em_gain is None:
            return noise.GaussianReadNoise(
                read_noise_e=read_noise_e,
                gain_adu_per_e=1.0 / e_per_adu,
                offset_adu=baseline_adu,
                quantum_efficiency=qe,
            )
        em_gain = _finite(em_gain, f"EM gain {em_gain}: must be >= 1 (leave it out when EM is off)", lambda v: v >= 1)
        return noise.EMCCD(
            em_gain=em_gain,
            read_noise_e=read_noise_e,
            gain_adu_per_e=1.0 / e_per_adu,
            offset_adu=baseline_adu,
            quantum_efficiency=qe,
        )
    if em_gain is not None:
        raise InputError(f"EM gain {em_gain} with sCMOS calibration maps: an sCMOS camera has no EM register")
    for name, m in given.items():
        if frame_shape is not None:
            planes, ny, nx = frame_shape
            if m.shape not in ((ny, nx), (planes, ny, nx)):
                want = f"{ny} x {nx}" + (f" or {planes} x {ny} x {nx}" if planes > 1 else "")
                raise InputError(f"{name} of {' x '.join(map(str, m.shape))} pixels: the frames are {want}")
    gain = given.get("sCMOS gain map", np.float64(1.0 / e_per_adu))
    if not np.all(gain > 0):
        raise InputError(f"sCMOS gain map: minimum {float(np.min(gain)):g} ADU/e-, must be > 0")
    variance_adu2 = given.get("sCMOS variance map", np.float64((read_noise_e / e_per_adu) ** 2))
    if not np.all(variance_adu2 >= 0):
        raise InputError(f"sCMOS variance map: minimum {float(np.min(variance_adu2)):g} ADU^2, must be >= 0")
    offset = given.get("sCMOS offset map", np.float64(baseline_adu))
    return noise.SCMOS(
        gain_adu_per_e=gain.astype(np.float32),
        offset_adu=offset.astype(np.float32),
        read_variance_e2=(variance_adu2 / gain**2).astype(np.float32),
        quantum_efficiency=qe,
    )


def frames_to_photons(frames: Float[np.ndarray, "t p y x"], camera: Camera) -> Float[np.ndarray, "t p y x"]:
    """Counts in ADU to an unbiased estimate of the photons per pixel (``counts / scale`` of the
    camera's :meth:`~fluojax.noise.Camera.poisson_equivalent` data: ``(ADU - offset) / (gain G QE)``).

    Arguments:
        frames: counts, ADU.
        camera: the camera that recorded them.
    """
    equivalent = camera.poisson_equivalent(np.asarray(frames, np.float32))
    return np.asarray(equivalent.counts / equivalent.scale, np.float32)


# ------------------------------------------------------------------------------------------------
# Reading and checking stacks


def read_frames(path: str | os.PathLike, planes: int = 1) -> tuple[Float[np.ndarray, "t p y x"], dict]:
    """Read a TIFF stack as ``(frames, planes, y, x)`` values (the file's type; memory-mapped when
    the file allows it, so a large stack is read a chunk of frames at a time by :func:`localize_stack`).

    A single-plane stack ``(T, y, x)`` gives T frames of one plane. With ``planes = P > 1`` the
    file's images are interleaved, plane index fastest: images ``t P + k`` (k = 0 .. P-1) are the
    planes of frame t (ImageJ's order for a hyperstack whose planes are its channels or slices,
    after Image > Hyperstacks > Hyperstack to Stack), so the image count must divide by P.

    Arguments:
        path: the TIFF file (read by :func:`fluojax.io.read_stack`, with its checks).
        planes: focal planes per frame, P >= 1.

    Returns:
        (frames, ImageJ metadata).

    Raises:
        InputError: every refusal of :func:`fluojax.io.read_stack`, a plane count below 1, or an
            image count that does not divide into ``planes``.
    """
    from fluojax import io

    if planes < 1:
        raise InputError(f"{planes} planes per frame: must be >= 1")
    stack, meta = io.read_stack(path)
    n = stack.shape[0]
    if n % planes:
        raise InputError(
            f"{path}: a stack of {n} images does not divide into frames of {planes} planes "
            f"({n} = {n // planes} x {planes} + {n % planes})"
        )
    return stack.reshape(n // planes, planes, *stack.shape[1:]), meta


def check_frames(frames: Float[np.ndarray, "t p y x"], psf: PSF, name: str = "the stack") -> dict:
    """Check that ``frames`` can be localized with ``psf``; report the empty frames.

    A frame is empty when all its pixels hold one value (a dropped or blank frame): some empty
    frames are fine (they give no localization); a stack whose every frame is constant holds
    nothing to localize and is refused.

    Arguments:
        frames: (frames, planes, y, x) values.
        psf: the PSF kind the frames will be fitted with.
        name: how messages name the stack.

    Returns:
        ``{"frames", "planes", "shape_px", "empty_frames"}``.

    Raises:
        InputError: not 4D, a plane count other than the PSF's, no frame, non-finite values, or a
            constant stack.
    """
    if np.ndim(frames) != 4:
        raise InputError(f"{name}: shape {np.shape(frames)}; expected (frames, planes, y, x)")
    t, p, ny, nx = frames.shape
    if p != psf.planes:
        raise InputError(
            f"{name}: {p} plane(s) per frame, but the {type(psf).__name__} PSF has {psf.planes}"
            + (
                f" (a multi-plane stack stores frame t's planes as images t*{psf.planes} ... )"
                if psf.planes > 1
                else ""
            )
        )
    if t == 0:
        raise InputError(f"{name}: no frame")
    lows, highs = [], []
    for start, stop in _chunks(t, 256):  # a block of frames at a time: a memory-mapped stack stays on disk
        block = np.asarray(frames[start:stop]).reshape(stop - start, -1)
        if not np.all(np.isfinite(block)):
            raise InputError(f"{name}: holds NaN or infinite values")
        lows.append(block.min(axis=1))
        highs.append(block.max(axis=1))
    low, high = np.concatenate(lows), np.concatenate(highs)
    empty = low == high
    if empty.all():
        if np.all(low == low[0]):
            raise InputError(
                f"{name}: every one of the {t} frames holds the single value {float(low[0]):g}: nothing to localize"
            )
        raise InputError(f"{name}: all {t} frames are constant (each a single value): nothing to localize")
    return {"frames": t, "planes": p, "shape_px": [ny, nx], "empty_frames": int(empty.sum())}


# ------------------------------------------------------------------------------------------------
# Localizing


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(start + size, n)


def _padded(frames: np.ndarray, start: int, stop: int, size: int) -> np.ndarray:
    """Frames [start, stop) padded to ``size`` by repeating the last one (one compiled shape)."""
    chunk = np.asarray(frames[start:stop], np.float32)
    if stop - start < size and frames.shape[0] > size:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - (stop - start), axis=0)])
    return chunk


def _shift_frames(locs: Localizations, start: int, stop: int) -> Localizations:
    frame = np.asarray(locs.frame)
    keep = frame < stop - start
    locs = locs.select(keep)
    return locs._replace(frame=np.asarray(locs.frame) + start)


def fits_to_table(fits) -> tuple[Localizations, dict[str, int]]:
    """The converged per-spot fits of :func:`fluojax.smlm.estimate.localize` as a localization table.

    Fits that did not converge (any :class:`fluojax.fit.Status` other than ``CONVERGED``, e.g. a
    position at the ROI's bound) or have a non-finite position are left out and counted by status.
    ``uncertainty_xy_nm`` is the root mean square of the two lateral Cramér-Rao bounds (s.d.),
    ``uncertainty_z_nm`` the axial one; ``sigma_nm`` is NaN (the PSF width is not fitted).

    Arguments:
        fits: :class:`fluojax.smlm.estimate.SpotFits`.

    Returns:
        (table, {status name: fits left out}).
    """
    from fluojax import fit
    from fluojax.smlm.localizations import Localizations

    status = np.asarray(fits.status)
    x, y = np.asarray(fits.x_nm, np.float64), np.asarray(fits.y_nm, np.float64)
    keep = (status == fit.Status.CONVERGED) & np.isfinite(x) & np.isfinite(y)
    dropped: dict[str, int] = {}
    for code in status[~keep]:
        name = fit.status_name(int(code)) if code != fit.Status.CONVERGED else "NON_FINITE"
        dropped[name] = dropped.get(name, 0) + 1
    cx, cy = (np.asarray(c, np.float64)[keep] for c in (fits.crlb_x_nm, fits.crlb_y_nm))
    table = Localizations.build(
        np.asarray(fits.frame)[keep],
        x[keep],
        y[keep],
        z_nm=np.asarray(fits.z_nm, np.float64)[keep],
        photons=np.asarray(fits.photons, np.float64)[keep],
        background=np.asarray(fits.background, np.float64)[keep],
        uncertainty_xy_nm=np.sqrt(0.5 * (cx**2 + cy**2)),
        uncertainty_z_nm=np.asarray(fits.crlb_z_nm, np.float64)[keep],
    )
    return table, dropped


def detections_to_table(detections, three_d: bool = True) -> Localizations:
    """A network's decoded detections (:class:`fluojax.smlm.nets.Detections`, compacted) as a
    localization table: positions in nm, the voxel probability as ``score``; photons, background
    and uncertainties unknown (NaN). ``three_d`` False sets z to NaN (a single-plane network).

    Arguments:
        detections: 1D arrays ``frame``, ``x_nm``, ``y_nm``, ``z_nm``, ``probability``.
        three_d: whether the network measures z.
    """
    from fluojax.smlm.localizations import Localizations

    return Localizations.build(
        np.asarray(detections.frame),
        np.asarray(detections.x_nm),
        np.asarray(detections.y_nm),
        z_nm=np.asarray(detections.z_nm) if three_d else np.nan,
        score=np.asarray(detections.probability),
    )


def localize_stack(
    frames: Float[np.ndarray, "t p y x"],
    psf: PSF,
    pixel_nm: float,
    camera: Camera | None = None,
    method: str = "mle",
    *,
    network: tuple[Any, dict] | None = None,
    threshold: float = 0.5,
    chunk_frames: int = CHUNK_FRAMES,
    progress: bool | None = None,
    name: str = "the stack",
    **options,
) -> tuple[Localizations, dict]:
    """Localize every frame of a stack: one table of molecules in nm, photons and precisions.

    ``mle``: spot detection and per-spot maximum-likelihood fits of ``psf`` with the camera's
    likelihood (:func:`fluojax.smlm.estimate.localize`; the precisions are the Cramér-Rao bounds
    at the fitted values). ``net``: the voxel-wise network of Aritake et al. 2021
    (:func:`fluojax.smlm.learned.localize_with_network`) on the frames converted to photons
    (:func:`frames_to_photons`), keeping voxels whose probability exceeds ``threshold``.

    Frames go through in chunks of ``chunk_frames`` (a progress counter over frames); each
    table's 0-based frame index is the stack's.

    Arguments:
        frames: (frames, planes, y, x) counts in ADU (photons for an ideal camera).
        psf: the PSF kind (:data:`fluojax.smlm.models.PSFS`); its plane count must match.
        pixel_nm: pixel size, nm (> 0).
        camera: the camera (:func:`camera_from_settings`); None: an ideal camera (counts = photons).
        method: ``"mle"`` or ``"net"``.
        network: ``(net, meta)`` of :func:`fluojax.smlm.learned.load_network`, for ``"net"``.
        threshold: detection probability of ``"net"``, in (0, 1).
        chunk_frames: frames per call (>= 1).
        progress: None (auto), True or False (silent); see :func:`fluojax.progress.progress`.
        name: how messages name the stack (e.g. its file).
        **options: further keywords of the method's function (e.g. a detection threshold).

    Returns:
        (table, summary): the :class:`~fluojax.smlm.localizations.Localizations` and a JSON-ready
        dict (``method``, ``frames``, ``localizations``, ``per_frame``, ``empty_frames``,
        ``time_s``, ``frames_per_s``, ``settings``).

    Raises:
        InputError: an unknown method, a missing network, a bad pixel size or threshold, or frames
            :func:`check_frames` refuses.
    """
    from fluojax.noise import IdealCamera
    from fluojax.progress import progress as counter
    from fluojax.smlm.localizations import concatenate

    if method not in METHODS:
        raise InputError(f"localization method {method!r}: choose from {', '.join(METHODS)}")
    pixel_nm = _finite(pixel_nm, f"pixel size {pixel_nm} nm: must be > 0", lambda v: v > 0)
    if chunk_frames < 1:
        raise InputError(f"{chunk_frames} frames per chunk: must be >= 1")
    checked = check_frames(frames, psf, name)
    camera = camera if camera is not None else IdealCamera()
    if method == "net":
        if network is None:
            raise InputError("the network method needs a trained network (a run folder or checkpoint)")
        _finite(threshold, f"detection threshold {threshold}: must be in (0, 1)", lambda v: 0 < v < 1)
        from fluojax.smlm import learned

        net, meta = network
        trained_nm = float(meta["pixel_nm"])
        if abs(pixel_nm - trained_nm) > 0.01 * trained_nm:
            raise InputError(f"pixel size {pixel_nm:g} nm: the network was trained on {trained_nm:g} nm pixels")
        in_planes = int(net.config.in_planes)
        if in_planes != frames.shape[1]:
            raise InputError(f"frames of {frames.shape[1]} plane(s): the network reads {in_planes}")
        three_d = bool(psf.three_d and in_planes > 1)

        def run(chunk, real):
            photons = frames_to_photons(chunk, camera)
            detections = learned.localize_with_network(net, meta, photons, threshold, **options)
            return detections_to_table(detections, three_d)

    else:
        from fluojax.smlm import estimate

        def run(chunk, real):
            fits = estimate.localize(chunk, psf, pixel_nm, camera=camera, **options)
            fits = type(fits)(*(np.asarray(c)[np.asarray(fits.frame) < real] for c in fits))  # not the padding
            table, dropped = fits_to_table(fits)
            for name, count in dropped.items():
                left_out[name] = left_out.get(name, 0) + count
            return table

    left_out: dict[str, int] = {}
    t0 = time.perf_counter()
    tables = []
    size = min(chunk_frames, frames.shape[0])
    with counter(frames.shape[0], f"localize ({method})", "frames", enabled=progress) as bar:
        for start, stop in _chunks(frames.shape[0], size):
            tables.append(_shift_frames(run(_padded(frames, start, stop, size), stop - start), start, stop))
            bar.update(stop - start)
    locs = concatenate(tables)
    seconds = time.perf_counter() - t0
    summary = {
        "method": method,
        "frames": checked["frames"],
        "planes": checked["planes"],
        "shape_px": checked["shape_px"],
        "empty_frames": checked["empty_frames"],
        "localizations": locs.n,
        "per_frame": locs.n / checked["frames"],
        "fits_left_out": left_out if method == "mle" else None,
        "time_s": seconds,
        "frames_per_s": checked["frames"] / seconds if seconds > 0 else None,
        "settings": {
            "psf": repr(psf),
            "pixel_nm": pixel_nm,
            "camera": repr(camera) if not type(camera).__name__ == "SCMOS" else "SCMOS (calibration maps)",
            "threshold": threshold if method == "net" else None,
            "chunk_frames": size,
            **{k: v for k, v in options.items() if isinstance(v, int | float | str | bool)},
        },
    }
    return locs, summary


# ------------------------------------------------------------------------------------------------
# Evaluating


def evaluate_tables(
    locs: Localizations,
    truth: Localizations,
    tolerance_lateral_nm: float | None = None,
    tolerance_axial_nm: float | None = None,
    **options,
):
    """The SMLM Challenge 2016 metrics of ``locs`` against ``truth`` (Sage et al. 2019).

    One-to-one matching per frame within ``tolerance_lateral_nm`` (default 250 nm) and, when both
    tables are 3D, ``tolerance_axial_nm`` (default 500 nm); then Jaccard index, precision,
    recall, lateral/axial RMSE and the efficiencies (:func:`fluojax.smlm.metrics.evaluate`).

    Arguments:
        locs: the localizations.
        truth: the ground truth.
        tolerance_lateral_nm, tolerance_axial_nm: matching radii in nm (None: the challenge's).
        **options: further keywords of :func:`fluojax.smlm.metrics.evaluate`.

    Returns:
        :class:`fluojax.smlm.metrics.ChallengeMetrics`.
    """
    from fluojax.smlm import metrics

    for value, what in ((tolerance_lateral_nm, "lateral"), (tolerance_axial_nm, "axial")):
        if value is not None:
            _finite(value, f"{what} matching tolerance {value} nm: must be > 0", lambda v: v > 0)
    if tolerance_lateral_nm is not None:
        options["tolerance_lateral_nm"] = tolerance_lateral_nm
    if tolerance_axial_nm is not None:
        options["tolerance_axial_nm"] = tolerance_axial_nm
    if truth.n == 0:
        raise InputError("the truth table holds no molecule: nothing to evaluate against")
    return metrics.evaluate(truth, locs, **options)


# ------------------------------------------------------------------------------------------------
# Simulating


PRESETS = ("2d", "quadplane-paper", "quadplane-released", "quadplane-physical")
"""Scenes of :func:`make_scene`: a single-plane 2D field, and the quad-plane data of Aritake et
al. 2021 with the paper's Table 2 constants, the authors' released code's constants, or physical
noise (:mod:`fluojax.smlm.simulate`)."""


def make_scene(
    preset: str,
    camera: Camera | None = None,
    emitters: int | None = None,
    shape: tuple[int, int] | None = None,
) -> Scene:
    """The :class:`~fluojax.smlm.simulate.Scene` of a preset, with optional changes.

    Arguments:
        preset: one of :data:`PRESETS`.
        camera: the camera of the presets with shot noise (``2d``, ``quadplane-physical``); None:
            ideal. The paper's presets add the paper's noise in photons and take no camera.
        emitters: molecules per frame (None: the preset's).
        shape: (ny, nx) pixels (None: the preset's).

    Raises:
        InputError: an unknown preset, a camera for a paper preset, or bad numbers.
    """
    import dataclasses

    from fluojax.noise import IdealCamera
    from fluojax.smlm import simulate

    if preset not in PRESETS:
        raise InputError(f"simulation preset {preset!r}: choose from {', '.join(PRESETS)}")
    if preset in ("quadplane-paper", "quadplane-released"):
        if camera is not None:
            raise InputError(
                f"the {preset} preset adds the paper's noise in photons (Poisson(10) + N(0, 9)): it takes no camera; "
                "use quadplane-physical for a camera"
            )
        scene = simulate.quadplane_paper() if preset == "quadplane-paper" else simulate.quadplane_released()
    else:
        cam = camera if camera is not None else IdealCamera()
        scene = simulate.gaussian_2d(cam) if preset == "2d" else simulate.quadplane_physical(cam)
    changes: dict[str, Any] = {}
    if emitters is not None:
        changes["emitters"] = int(emitters)
    if shape is not None:
        changes["shape"] = (int(shape[0]), int(shape[1]))
    return dataclasses.replace(scene, **changes) if changes else scene


def truth_table(emitters, psf: PSF) -> Localizations:
    """The truth of simulated frames as a table: emitters with ``photons > 0``, z NaN for a 2D PSF.

    Arguments:
        emitters: :class:`~fluojax.smlm.models.Emitters` with leaves (frames, M).
        psf: the PSF they were imaged with.
    """
    from fluojax.smlm.localizations import Localizations

    x, y, z, n = (np.asarray(leaf, np.float64) for leaf in emitters)
    frame = np.broadcast_to(np.arange(x.shape[0])[:, None], x.shape)
    present = n > 0
    return Localizations.build(
        frame[present],
        x[present],
        y[present],
        z_nm=z[present] if psf.three_d else np.nan,
        photons=n[present],
    )


def simulate_stack(
    preset: str,
    n_frames: int,
    key,
    camera: Camera | None = None,
    emitters: int | None = None,
    shape: tuple[int, int] | None = None,
) -> tuple[Float[np.ndarray, "t p y x"], Localizations, Scene]:
    """Simulate ``n_frames`` frames of a preset scene: the recorded stack and its truth.

    Arguments:
        preset: one of :data:`PRESETS`.
        n_frames: frames (>= 1).
        key: JAX PRNG key.
        camera, emitters, shape: as for :func:`make_scene`.

    Returns:
        (stack (frames, planes, y, x) float32 in ADU or photons, truth table, scene).
    """
    from fluojax.smlm.simulate import simulate_frames

    if n_frames < 1:
        raise InputError(f"{n_frames} frames: must be >= 1")
    scene = make_scene(preset, camera, emitters, shape)
    simulated = simulate_frames(key, scene, int(n_frames))
    return np.asarray(simulated.images, np.float32), truth_table(simulated.emitters, scene.psf), scene
