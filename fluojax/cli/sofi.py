"""``fluojax sofi [image] STACK.tif | simulate | train | predict``: parse, call :mod:`fluojax.sofi.pipeline`, write the outputs.

``fluojax sofi STACK.tif`` is ``fluojax sofi image STACK.tif``: a first argument that is not a
subcommand's name is the stack of ``image`` (:func:`fluojax.cli.imply_subcommand`; a stack file
named like a subcommand is given as ``fluojax sofi image simulate``). Only the standard library
is imported with this module; each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from fluojax.cli import common, imply_subcommand
from fluojax.cli.common import add_output, positive

__all__ = ["HANDLERS", "SUBCOMMANDS", "add_parsers"]

SUBCOMMANDS = ("image", "simulate", "train", "predict")
"""``fluojax sofi`` subcommands (``image`` is implied by a first argument that is none of them)."""

PRESET_NAMES = ("thesis", "small")
"""``simulate --preset`` choices: ``fluojax.sofi.pipeline.PRESETS`` (listed here so that the help
imports no jax; a test checks that they are the library's)."""

CAMERA_NAMES = ("scmos", "emccd", "ideal")
"""``simulate --camera`` choices: ``fluojax.sofi.pipeline.CAMERAS`` (checked by a test)."""

LINEARIZE_NAMES = ("root", "adaptive", "none")
"""``--linearize`` choices: ``fluojax.sofi.pipeline.LINEARIZATIONS`` and ``none`` (checked by a test)."""

USAGE = """fluojax sofi [image] STACK.tif [STACK ...] [--order 2-4] [--linearize root|adaptive|none] [--on-ratio RHO] [--bsofi] [--fwhm PX] [--uint16] [-o OUT]
       fluojax sofi simulate [--preset thesis|small] [--density 0-2] [--snr 0-3] [--frames N] [--camera scmos|emccd|ideal] -o OUT
       fluojax sofi train --config NAME [--steps N] -o RUN
       fluojax sofi predict STACK.tif --net RUN [--windows | --stride N] [-o OUT]"""


# ------------------------------------------------------------------------------------------------
# Parsers


def _add_image(p: argparse.ArgumentParser) -> None:
    common.add_stacks(p, "TIFF stack (frames, Y, X) of blinking emitters")
    p.add_argument(
        "--order",
        type=str,
        default="2-4",
        metavar="ORDERS",
        help="cumulant orders in 2-4: one (2), a range (2-4, 2..4) or a list (2,4) (default 2-4)",
    )
    p.add_argument(
        "--linearize",
        choices=LINEARIZE_NAMES,
        default="root",
        help="after Richardson-Lucy deconvolution: the n-th root (default), the adaptive exponent, or none "
        "(flat cumulants only)",
    )
    p.add_argument("--bsofi", action="store_true", help="balanced SOFI and the on-ratio, brightness and density maps")
    p.add_argument(
        "--uint16",
        action="store_true",
        help="SOFI image TIFFs as sofipackage saves them: uint16, 65535 x image / max (default float32)",
    )
    common.add_numbers(
        p,
        ("--fwhm", positive(float), None, "PX", "PSF FWHM in camera pixels (default: estimated from the cumulants)"),
        ("--iterations", positive(int), 10, "N", "Richardson-Lucy iterations (default 10)"),
        (
            "--on-ratio",
            positive(float),
            None,
            "RHO",
            "on-time ratio of the emitters for --linearize adaptive, if known (e.g. from single-molecule data); "
            "default: estimated from orders 2-3 with one emitter per point, which reads about N rho where N "
            "emitters share a point (the bSOFI maps estimate their own)",
        ),
        (
            "--block-frames",
            positive(int),
            None,
            "N",
            "frames per block, read one at a time, for long stacks: each block's cumulants are taken around its own "
            "mean and the blocks averaged (sofipackage's subsequences; default: all frames in one block)",
        ),
        ("--pixel-size", positive(float), None, "NM", "camera pixel size in nm (default: the TIFF's calibration)"),
    )
    add_output(p, help="output folder (default STACK_sofi): TIFFs, PNGs, summary.json")


def _add_simulate(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="thesis",
        help="Komen 2024's settings (128 x 128, 100 frames; the default) or a CPU-sized 32 x 32 variant",
    )
    s.add_argument("--density", type=int, choices=(0, 1, 2), default=0, help="density level, densest first (default 0)")
    s.add_argument("--snr", type=int, choices=(0, 1, 2, 3), default=0, help="SNR level, brightest first (default 0)")
    common.add_numbers(
        s,
        ("--frames", positive(int), None, "N", "frames (default: the preset's, 100)"),
        ("--size", positive(int), None, "PX", "square field side in camera pixels (default: the preset's)"),
        (
            "--filament-width",
            positive(float),
            None,
            "NM",
            "labelled filament width over which the 5000 emitters/um^2 lie (default 10 nm: 50 emitters per um; "
            "50 nm gives 250 per um)",
        ),
    )
    s.add_argument(
        "--camera",
        choices=CAMERA_NAMES,
        default="scmos",
        help="read-out: the preset's sCMOS (per-pixel offset, noise and gain; the default), the EMCCD of the SMLM "
        "Challenge 2016 (EM gain 300, 45 e-/ADU, baseline 100 ADU) or an ideal photon counter (shot noise only)",
    )
    s.add_argument("--seed", type=int, default=0, help="random seed")
    add_output(s, "OUT", "output folder: stack.tif, truth.tif, emitters.csv, summary.json", required=True)


def _add_train(t: argparse.ArgumentParser) -> None:
    common.add_training_options(t, common.recipe_names("sofi"))


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("stack", help="TIFF stack (frames, Y, X) with at least the network's window of frames (20)")
    p.add_argument("--net", required=True, metavar="RUN", help="run folder or checkpoint of 'fluojax sofi train'")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--windows",
        action="store_true",
        help="one image per disjoint window of the network's frames (a time series) and their mean "
        "(default: the first window only)",
    )
    g.add_argument(
        "--stride", type=positive(int), default=None, metavar="N", help="rolling windows starting every N frames"
    )
    p.add_argument("--pixel-size", type=positive(float), default=None, metavar="NM", help="camera pixel size in nm")
    add_output(p, help="output folder (default STACK_sofinet): TIFFs, PNG, summary.json")


def add_parsers(p: argparse.ArgumentParser) -> None:
    """The ``sofi`` subcommands of ``fluojax`` (each one's options added when it is chosen)."""
    sofi = p.add_subparsers(dest="sofi_command", required=True, metavar="COMMAND")
    imply_subcommand(sofi, "image")
    p.usage = USAGE  # after add_subparsers, which names the subcommands' programs after the usage
    p.description = (
        "SOFI: cross-cumulant images with virtual pixels (orders 2-4), a blinking-movie simulator and a network "
        "that makes the 2nd-order image from 20 frames. 'fluojax sofi STACK.tif' is 'fluojax sofi image STACK.tif'."
    )
    sofi.add_parser(
        "image",
        help="a stack -> SOFI images (the default: 'fluojax sofi STACK.tif')",
        build=_add_image,
        epilog="Outputs in OUT: mean.tif; per order n, sofi_c<n>.tif/.png (flat cumulants, n(N-4)+1 pixels per "
        "side of N) and sofi<n>.tif/.png (root) or sofi_lin<n>.tif/.png (adaptive); with --bsofi, bsofi.tif/.png "
        "and its parameter maps; summary.json. Exit codes: 0 done, 2 bad input (nothing written).",
    )
    sofi.add_parser(
        "simulate",
        help="a simulated blinking movie, its ground truth and emitters",
        build=_add_simulate,
    )
    sofi.add_parser(
        "train", help="train the 20-frame network on simulated movies (resumes a run folder)", build=_add_train
    )
    sofi.add_parser("predict", help="the network's 2nd-order SOFI image of a stack", build=_add_predict)


# ------------------------------------------------------------------------------------------------
# Helpers


def _learned():
    return common.learned_module("sofi", "SOFI networks")


def _pixel_nm(args, meta_path: str) -> float | None:
    """The camera pixel size in nm: ``--pixel-size``, else the TIFF's ImageJ calibration, else None."""
    from fluojax import io

    if args.pixel_size is not None:
        return float(args.pixel_size)
    pixel_um = io.read_pixel_size_um(meta_path)
    return None if not pixel_um else 1000.0 * pixel_um


def _missing_stack(path: str) -> None:
    """A missing stack whose name looks like a mistyped subcommand gets a hint."""
    from fluojax.io import InputError

    if not Path(path).exists() and not Path(path).suffix:
        raise InputError(f"{path}: no such file (and not a subcommand: {', '.join(SUBCOMMANDS)})")


# ------------------------------------------------------------------------------------------------
# Handlers


def image_command(args) -> int:
    """``fluojax sofi [image] STACK.tif [STACK ...]``: one stack or many, each with its own result
    folder (:func:`fluojax.cli.common.fit_stacks`)."""
    for path in args.stack:
        _missing_stack(path)
    return common.fit_stacks(args, "sofi-image", "_sofi", _image_setup)


def _image_setup(args) -> common.StackFit:
    """The options of ``sofi image`` checked once; returns the images of one stack."""
    from fluojax.sofi import pipeline

    orders = pipeline.parse_orders(args.order)
    linearize = None if args.linearize == "none" else args.linearize
    settings = pipeline.ImageSettings(
        orders, linearize, args.bsofi, args.fwhm, args.iterations, args.block_frames, on_ratio=args.on_ratio
    )
    pipeline.check_settings(settings)
    return functools.partial(_image_stack, args, settings)


def _image_stack(args, settings, path: str, out: Path, label: str) -> tuple[int, str]:
    """The SOFI images of the stack at ``path`` into ``out`` (:data:`fluojax.cli.common.StackFit`)."""
    from fluojax import io
    from fluojax.sofi import estimate, pipeline

    t0 = time.perf_counter()
    # blocks as stored (a memory map's are views): the CPU kernel reads camera counts as they are
    shape, _, blocks = io.read_stack_blocks(path, settings.block_frames or 2**31 - 1, dtype=None)
    pipeline.check_stack_shape(shape, settings.computed_orders, path, settings.linearize)
    pixel_nm = _pixel_nm(args, path)
    result = pipeline.sofi_images(
        blocks,
        settings.orders,
        settings.linearize,
        settings.bsofi,
        settings.fwhm_px,
        settings.iterations,
        settings.block_frames,
        name=path,
        on_ratio=settings.on_ratio,
    )
    summary = pipeline.images_summary(result, str(path))
    summary["pixel_nm"] = pixel_nm
    warnings = []
    if settings.fwhm_px is None and result.fwhm_px is not None and estimate.fwhm_at_bound(result.fwhm_px):
        warnings.append(
            f"{path}: the PSF FWHM estimate sits at its bound, {result.fwhm_px:g} px: the sub-lattice means do not "
            "determine it (too few frames or too little signal); pass --fwhm"
        )
    summary["warnings"] = warnings
    summary["total_s"] = time.perf_counter() - t0
    with io.result_folder(out, "sofi-image", args.overwrite, label) as folder:
        summary["files"] = pipeline.write_images(folder, result, pixel_nm, Path(path).name, args.uint16)
        io.write_json(folder / "summary.json", summary)
    sizes = ", ".join(f"order {o}: {im.shape[0]} x {im.shape[1]}" for o, im in result.cumulants.items())
    fwhm = (
        ""
        if result.fwhm_px is None
        else f", PSF FWHM {result.fwhm_px:.3g} px" + (" (estimated)" if settings.fwhm_px is None else "")
    )
    print(
        f"{result.frames} frames of {shape[1]} x {shape[2]} pixels in {result.blocks} block(s) -> {sizes}{fwhm} "
        f"in {summary['total_s']:.1f} s -> {out}/"
    )
    common.warn(warnings)
    return 0, f"{sizes}{fwhm}"


def simulate_command(args) -> int:
    """``fluojax sofi simulate``."""
    import jax
    import numpy as np

    from fluojax import io, networks
    from fluojax.sofi import pipeline, simulate

    out = Path(args.output)
    label = f"-o {args.output}"
    io.check_output_folder(out, "sofi-simulate", args.overwrite, label)
    settings = pipeline.simulation_settings(
        args.preset, args.density, args.snr, args.size, args.filament_width, args.camera
    )
    frames = args.frames or settings.n_frames
    t0 = time.perf_counter()
    movie = simulate.simulate_movie(jax.random.key(args.seed), settings, frames)
    stack = np.asarray(movie.frames, np.float32)
    fwhm_px = settings.fwhm_nm / settings.pixel_nm
    emitters = int(np.asarray(movie.mask).sum())
    summary = {
        "preset": args.preset,
        "density_level": args.density,
        "snr_level": args.snr,
        "frames": frames,
        "shape_px": list(stack.shape[1:]),
        "pixel_nm": settings.pixel_nm,
        "fwhm_nm": settings.fwhm_nm,
        "fwhm_px": fwhm_px,
        "on_fraction": settings.blinking.on_fraction,
        "background_photons": settings.background,
        "emitters": emitters,
        "emitters_drawn": int(movie.n_drawn),
        "filament_width_nm": settings.sample.width_nm,
        "camera": args.camera,
        "seed": args.seed,
        "settings": networks.describe(settings),
        "units": "stack in ADU of the camera (photo-electrons for the ideal one); truth.tif: the emitters on the order-2 SOFI grid "
        "(2 (N - 4) + 1 pixels per side) with a PSF narrowed 2-fold, max 1; emitters.csv in nm",
    }
    frame_s = 1.0 / simulate.KOMEN_2024.fps
    pixel_um = settings.pixel_nm / 1000.0
    with io.result_folder(out, "sofi-simulate", args.overwrite, label) as folder:
        io.write_stack(folder / "stack.tif", stack, frame_s, pixel_um)
        truth = np.asarray(movie.ground_truth, np.float32)
        io.write_map(folder / "truth.tif", truth, "ground truth", "", pixel_um / settings.gt_order)
        (folder / "emitters.csv").write_text(pipeline.emitters_csv(movie))
        io.write_json(folder / "summary.json", summary)
    print(
        f"simulated {frames} frames of {stack.shape[1]} x {stack.shape[2]} pixels ({args.preset}), {emitters} emitters, "
        f"in {time.perf_counter() - t0:.1f} s -> {out}/\n"
        f"SOFI of it with: fluojax sofi {out / 'stack.tif'} --fwhm {fwhm_px:.3g} -o {out}_sofi"
    )
    if int(movie.n_drawn) > emitters:
        common.warn(
            [f"{int(movie.n_drawn)} emitters were drawn, {emitters} simulated: the preset's emitter slots are full"]
        )
    return 0


def train_command(args) -> int:
    """``fluojax sofi train``."""
    learned = _learned()
    return common.run_training(args, learned, *_LOSS_LABELS[learned.RECIPES[args.config].loss])


#: the recipes' losses (``sofi.learned.LOSSES``) as the training summary and loss plot name them
_LOSS_LABELS = {
    "mse": ("pixel MSE", "pixel MSE (held out)"),
    "fourier": ("Fourier loss", "loss (held out: Fourier amplitude + phase L1)"),
}


def predict_command(args) -> int:
    """``fluojax sofi predict``."""
    from fluojax import io
    from fluojax.io import InputError
    from fluojax.sofi import pipeline

    learned = _learned()
    out, label = common.destination(args, "sofi-predict", "_sofinet")
    t0 = time.perf_counter()
    net, meta = common.load_network(learned, args.net)
    window = net.config.frames
    stack, _ = io.read_stack(args.stack)
    if stack.shape[0] < window:
        raise InputError(
            f"{args.stack}: {stack.shape[0]} frames; the network in {args.net} was trained on {window}-frame windows "
            f"and needs at least {window}"
        )
    stride = args.stride or (window if args.windows else None)
    frames = stack if stride else stack[:window]
    try:
        images = learned.predict(net, frames, stride=stride)
    except InputError as err:  # name the stack, as the other refusals do
        raise InputError(f"{args.stack}: {err}") from None
    pixel_nm = _pixel_nm(args, args.stack)
    warnings = []
    trained_nm = meta.get("pixel_nm")
    if pixel_nm and trained_nm and abs(pixel_nm - trained_nm) > 1e-3 * trained_nm:
        warnings.append(
            f"pixel size {pixel_nm:g} nm: the network was trained on {trained_nm:g} nm pixels "
            f"(a PSF FWHM of {meta.get('fwhm_nm', float('nan')):g} nm); its image may be wrong"
        )
    image = images.mean(axis=0)
    summary = {
        "stack": str(args.stack),
        "net": str(args.net),
        "recipe": meta.get("recipe"),
        "checkpoint_step": meta.get("step"),
        "target": f"order-2 SOFI, {meta.get('linearization')} linearization, of {meta.get('movie_frames')} frames, max 1",
        "window_frames": window,
        "stride": stride,
        "windows": len(images),
        "frames_used": window if stride is None else window + (len(images) - 1) * stride,
        "frames": stack.shape[0],
        "shape": list(image.shape),
        "pixel_nm": pixel_nm,
        "trained_pixel_nm": trained_nm,
        "warnings": warnings,
    }
    name = Path(args.stack).name
    with io.result_folder(out, "sofi-predict", args.overwrite, label) as folder:
        what = f"first {window} frames" if stride is None else f"mean of {len(images)} windows of {window} frames"
        title = f"{name}: network's order-2 SOFI ({what})"
        files = pipeline.write_image(folder, "sofinet2", image, 2, "network order-2 SOFI", "", pixel_nm, title)
        if stride is not None:
            files += pipeline.write_image(folder, "sofinet2_windows", images, 2, "network order-2 SOFI", "", pixel_nm)
        summary["files"] = files
        summary["total_s"] = time.perf_counter() - t0
        io.write_json(folder / "summary.json", summary)
    print(
        f"network image {image.shape[0]} x {image.shape[1]} from {summary['frames_used']} of {stack.shape[0]} frames "
        f"({len(images)} window(s)) in {summary['total_s']:.1f} s -> {out}/"
    )
    common.warn(warnings)
    return 0


HANDLERS = {
    "image": image_command,
    "simulate": simulate_command,
    "train": train_command,
    "predict": predict_command,
}
"""``fluojax sofi COMMAND`` -> its handler."""
