"""``fluojax smlm simulate|localize|train|evaluate``: parse, call :mod:`fluojax.smlm.pipeline`, write the outputs.

Only the standard library is imported with this module; each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fluojax.cli import common
from fluojax.cli.common import add_output, non_negative, positive

__all__ = ["HANDLERS", "add_parsers"]

PSF_NAMES = ("gaussian", "astigmatic", "quadplane", "quadplane-released")
"""``--psf`` choices: the names of ``fluojax.smlm.models.PSFS`` (listed here so that the help
imports no jax; a test checks that they are the library's)."""

PRESET_NAMES = ("2d", "quadplane-paper", "quadplane-released", "quadplane-physical")
"""``simulate --preset`` choices: ``fluojax.smlm.pipeline.PRESETS`` (checked by a test)."""


# ------------------------------------------------------------------------------------------------
# Parsers


def _add_camera(p: argparse.ArgumentParser, simulate: bool = False) -> None:
    """The camera set-up as ThunderSTORM asks for it (Ovesny et al. 2014)."""
    g = p.add_argument_group(
        "camera",
        "the camera as ThunderSTORM's camera set-up describes it"
        + (" (presets 2d and quadplane-physical; default: ideal, counts = photons)" if simulate else ""),
    )
    rows = [
        ("--e-per-adu", positive(float), None, "X", "photoelectrons per A/D count (default 1)"),
        ("--baseline", float, None, "ADU", "base level (offset) in ADU (default 0)"),
        ("--em-gain", positive(float), None, "G", "EM gain, when the EM register is on (default: off)"),
        ("--qe", positive(float), None, "Q", "quantum efficiency in (0, 1] (default 1)"),
        ("--read-noise", non_negative(float), None, "E", "read-noise s.d. in electrons (default 0)"),
    ]
    for option, kind, default, metavar, text in rows:
        g.add_argument(option, type=kind, default=default, metavar=metavar, help=text)
    if not simulate:
        for what, unit in (("offset", "ADU"), ("variance", "ADU^2"), ("gain", "ADU/e-")):
            g.add_argument(
                f"--scmos-{what}",
                metavar="TIFF",
                default=None,
                help=f"sCMOS calibration map of the {what} in {unit}, (y, x) or (planes, y, x)",
            )


def _add_simulate(s: argparse.ArgumentParser) -> None:
    s.add_argument("--preset", choices=PRESET_NAMES, default="2d", help="scene (default 2d)")
    common.add_numbers(
        s,
        ("--frames", positive(int), 100, "N", "frames (default 100)"),
        ("--emitters", non_negative(int), None, "M", "molecules per frame (default: the preset's)"),
        ("--size", positive(int), None, "PX", "square field side in pixels (default: the preset's, 64)"),
    )
    s.add_argument("--seed", type=int, default=0, help="random seed")
    _add_camera(s, simulate=True)
    add_output(s, "OUT", "output folder: stack.tif, truth.csv, summary.json", required=True)


def _add_localize(lo: argparse.ArgumentParser) -> None:
    lo.add_argument(
        "stack",
        help="TIFF stack: (frames, Y, X), or a multi-plane stack with frame t's planes as images t*P ... t*P+P-1",
    )
    lo.add_argument("--method", choices=("mle", "net"), default="mle", help="per-spot MLE (default) or the network")
    lo.add_argument(
        "--net", metavar="CKPT", default=None, help="run folder or checkpoint of 'fluojax smlm train' (--method net)"
    )
    lo.add_argument(
        "--threshold", type=positive(float), default=0.5, help="network detection probability (default 0.5)"
    )
    lo.add_argument("--psf", choices=PSF_NAMES, default="gaussian", help="PSF model (default gaussian)")
    common.add_numbers(
        lo,
        ("--psf-sigma", positive(float), None, "NM", "s.d. of the gaussian PSF in nm (default 130)"),
        ("--planes", positive(int), None, "N", "focal planes per frame (default: the PSF's: 4 for quadplane, else 1)"),
        ("--pixel-size", positive(float), None, "NM", "pixel size in nm (default: the TIFF's ImageJ calibration)"),
        ("--zoom", positive(int), 8, "N", "super-resolution bins per camera pixel of locs.png (default 8)"),
    )
    _add_camera(lo)
    add_output(
        lo, "LOCS.csv", "ThunderSTORM CSV; LOCS.png and LOCS.json are written beside it (default STACK_locs.csv)"
    )


def _add_train(t: argparse.ArgumentParser) -> None:
    common.add_training_options(t, common.recipe_names("smlm"))


def _add_evaluate(e: argparse.ArgumentParser) -> None:
    e.add_argument("locs", help="localizations: a ThunderSTORM CSV")
    e.add_argument(
        "--truth", required=True, help="ground truth: a ThunderSTORM CSV or an SMLM Challenge activations.csv"
    )
    common.add_numbers(
        e,
        ("--pixel-size", positive(float), None, "NM", "pixel size in nm, for columns given in px"),
        ("--tolerance-lateral", positive(float), None, "NM", "lateral matching radius in nm (default 250)"),
        ("--tolerance-axial", positive(float), None, "NM", "axial matching distance in nm (default 500)"),
    )
    add_output(e, "METRICS.json", "write the metrics as JSON too", overwrite="file")


def add_parsers(p: argparse.ArgumentParser) -> None:
    """The ``smlm`` subcommands of ``fluojax`` (each one's options added when it is chosen)."""
    smlm = p.add_subparsers(dest="smlm_command", required=True, metavar="COMMAND")
    smlm.add_parser(
        "simulate",
        help="simulated single-molecule frames and their truth (2D or quad-plane)",
        build=_add_simulate,
        epilog="Outputs in OUT: stack.tif (multi-plane frames interleaved, plane index fastest, with the pixel "
        "size in its calibration), truth.csv (ThunderSTORM columns, nm), summary.json.",
    )
    smlm.add_parser(
        "localize",
        help="a stack -> localizations (ThunderSTORM CSV) and a super-resolution image",
        build=_add_localize,
        epilog="Outputs: LOCS.csv (ThunderSTORM columns: frame 1-based, x/y/z and uncertainties in nm, photons), "
        "LOCS.png (super-resolution image), LOCS.json (settings, counts, timings). Exit codes: 0 done, 2 bad input "
        "(nothing written).",
    )
    smlm.add_parser(
        "train", help="train the voxel-wise network on simulated frames (resumes a run folder)", build=_add_train
    )
    smlm.add_parser(
        "evaluate",
        help="SMLM Challenge 2016 metrics of localizations against the truth",
        build=_add_evaluate,
    )


# ------------------------------------------------------------------------------------------------
# Helpers


def _learned():
    return common.learned_module("smlm", "SMLM networks")


_CAMERA_OPTIONS = ("e_per_adu", "baseline", "em_gain", "qe", "read_noise")


def _camera(args, frame_shape=None, default_ideal: bool = False):
    """The camera of the options (:func:`fluojax.smlm.pipeline.camera_from_settings`); None when
    ``default_ideal`` and no camera option was given."""
    from fluojax.smlm import pipeline

    maps = {what: getattr(args, f"scmos_{what}", None) for what in ("offset", "variance", "gain")}
    if default_ideal and all(getattr(args, o) is None for o in _CAMERA_OPTIONS) and not any(maps.values()):
        return None
    read = {
        what: pipeline.read_calibration_map(path, f"sCMOS {what} map") if path else None for what, path in maps.items()
    }
    return pipeline.camera_from_settings(
        e_per_adu=1.0 if args.e_per_adu is None else args.e_per_adu,
        baseline_adu=0.0 if args.baseline is None else args.baseline,
        em_gain=args.em_gain,
        quantum_efficiency=1.0 if args.qe is None else args.qe,
        read_noise_e=0.0 if args.read_noise is None else args.read_noise,
        scmos_offset_adu=read["offset"],
        scmos_variance_adu2=read["variance"],
        scmos_gain_adu_per_e=read["gain"],
        frame_shape=frame_shape,
    )


def _psf(args):
    import dataclasses

    from fluojax.io import InputError
    from fluojax.smlm.models import PSFS

    psf = PSFS[args.psf]
    if args.psf_sigma is not None:
        if args.psf != "gaussian":
            raise InputError(f"a PSF s.d. of {args.psf_sigma:g} nm applies to the gaussian PSF, not {args.psf}")
        psf = dataclasses.replace(psf, sigma_nm=args.psf_sigma)
    return psf


# ------------------------------------------------------------------------------------------------
# Handlers


def simulate_command(args) -> int:
    """``fluojax smlm simulate``."""
    import jax

    from fluojax import io
    from fluojax.smlm import pipeline
    from fluojax.smlm.localizations import thunderstorm_csv

    out = Path(args.output)
    label = f"-o {args.output}"
    io.check_output_folder(out, "smlm-simulate", args.overwrite, label)
    camera = _camera(args, default_ideal=True)
    shape = None if args.size is None else (args.size, args.size)
    t0 = time.perf_counter()
    stack, truth, scene = pipeline.simulate_stack(
        args.preset, args.frames, jax.random.key(args.seed), camera, args.emitters, shape
    )
    t, planes, ny, nx = stack.shape
    summary = {
        "preset": args.preset,
        "frames": t,
        "planes": planes,
        "shape_px": [ny, nx],
        "pixel_nm": scene.pixel_nm,
        "molecules": truth.n,
        "seed": args.seed,
        "scene": repr(scene),
        "layout": "stack.tif holds frames x planes images, plane index fastest (image t*planes + k)",
        "units": "stack in ADU (photons for an ideal camera or the paper's noise); truth in nm and photons per plane",
    }
    with io.result_folder(out, "smlm-simulate", args.overwrite, label) as folder:
        io.write_stack(folder / "stack.tif", stack.reshape(t * planes, ny, nx), 0.01, scene.pixel_nm / 1000.0)
        (folder / "truth.csv").write_text(thunderstorm_csv(truth))
        io.write_json(folder / "summary.json", summary)
    psf = {1: "--psf gaussian", 4: "--psf quadplane"}.get(planes, "")
    cam = "" if camera is None else " plus the same camera options"
    print(
        f"simulated {t} frames of {planes} x {ny} x {nx} pixels ({args.preset}), {truth.n} molecules, in "
        f"{time.perf_counter() - t0:.1f} s -> {out}/\n"
        f"localize it with: fluojax smlm localize {out / 'stack.tif'} {psf}{cam} -o {out / 'locs.csv'}"
    )
    return 0


def localize_command(args) -> int:
    """``fluojax smlm localize``."""
    from fluojax import io
    from fluojax.io import InputError
    from fluojax.plotting import plot_super_resolution
    from fluojax.smlm import pipeline
    from fluojax.smlm.localizations import render, thunderstorm_csv

    out = Path(args.output) if args.output else Path(Path(args.stack).with_suffix("").as_posix() + "_locs.csv")
    label = f"-o {args.output}" if args.output else f"output {out} (the default; choose another with -o)"
    beside = {suffix: out.with_suffix(suffix) for suffix in (".png", ".json")}
    io.check_output_file(out, args.overwrite, (".csv",), label)
    for suffix, path in beside.items():
        io.check_output_file(path, args.overwrite, (suffix,), f"{path} (beside {out.name})")
    if args.method == "net" and not args.net:
        raise InputError("--method net needs --net CKPT (a run folder of 'fluojax smlm train')")
    if args.method == "mle" and args.net:
        raise InputError("--net applies to --method net")
    psf = _psf(args)
    planes = args.planes if args.planes is not None else psf.planes
    if planes != psf.planes:
        raise InputError(f"{planes} planes per frame, but the {args.psf} PSF has {psf.planes}")
    network = common.load_network(_learned(), args.net) if args.method == "net" else None
    t0 = time.perf_counter()
    frames, _ = pipeline.read_frames(args.stack, planes)
    pixel_nm = args.pixel_size
    if pixel_nm is None:
        pixel_um = io.read_pixel_size_um(args.stack)
        if not pixel_um:
            raise InputError(
                f"{args.stack}: no pixel size: pass --pixel-size NM (the TIFF has no ImageJ micron calibration)"
            )
        pixel_nm = 1000.0 * pixel_um
    camera = _camera(args, frame_shape=frames.shape[1:])
    locs, summary = pipeline.localize_stack(
        frames, psf, pixel_nm, camera, args.method, network=network, threshold=args.threshold, name=args.stack
    )
    summary["stack"] = str(args.stack)
    summary["net"] = args.net
    summary["total_s"] = time.perf_counter() - t0
    rendered = render(locs, pixel_nm, frames.shape[2:], zoom=args.zoom)
    title = f"{Path(args.stack).name}: {locs.n} localizations ({args.method}), {summary['frames']} frames"
    with (
        io.result_file(out, args.overwrite, (".csv",), label) as csv,
        io.result_file(beside[".png"], args.overwrite, (".png",)) as png,
        io.result_file(beside[".json"], args.overwrite, (".json",)) as js,
    ):
        csv.write_text(thunderstorm_csv(locs))
        plot_super_resolution(png, rendered, title)
        io.write_json(js, summary)
    empty = f", {summary['empty_frames']} empty frames" if summary["empty_frames"] else ""
    print(
        f"{locs.n} localizations in {summary['frames']} frames ({summary['per_frame']:.3g} per frame{empty}, "
        f"{args.method}) in {summary['total_s']:.1f} s -> {out} (+ {beside['.png'].name}, {beside['.json'].name})"
    )
    return 0


def train_command(args) -> int:
    """``fluojax smlm train``."""
    return common.run_training(args, _learned(), "loss", "loss (held out: BCE + L1 of the voxel maps)")


def evaluate_command(args) -> int:
    """``fluojax smlm evaluate``."""
    from fluojax import io
    from fluojax.smlm import pipeline
    from fluojax.smlm.localizations import read_localizations
    from fluojax.smlm.metrics import metrics_table

    if args.output:
        io.check_output_file(args.output, args.overwrite, (".json",))
    locs = read_localizations(args.locs, args.pixel_size)
    truth = read_localizations(args.truth, args.pixel_size)
    result = pipeline.evaluate_tables(locs, truth, args.tolerance_lateral, args.tolerance_axial)
    print(metrics_table({Path(args.locs).name: result}), end="")
    if args.output:
        with io.result_file(args.output, args.overwrite, (".json",)) as tmp:
            io.write_json(tmp, {"locs": str(args.locs), "truth": str(args.truth), "metrics": result._asdict()})
    written = f" -> {args.output}" if args.output else ""
    print(
        f"Jaccard {result.jaccard:.1f} %, lateral RMSE {result.rmse_lateral_nm:.1f} nm "
        f"({result.tp} matched of {result.n_truth} true, {result.n_estimate} found){written}"
    )
    return 0


HANDLERS = {
    "simulate": simulate_command,
    "localize": localize_command,
    "train": train_command,
    "evaluate": evaluate_command,
}
"""``fluojax smlm COMMAND`` -> its handler."""
