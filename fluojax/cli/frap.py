"""``fluojax frap fit|simulate|train|predict``: parse, call :mod:`fluojax.frap`, write the outputs.

Only the standard library is imported with this module; each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

from fluojax.cli import common
from fluojax.cli.common import add_output, destination, non_negative, positive

__all__ = ["HANDLERS", "add_parsers"]


# ------------------------------------------------------------------------------------------------
# Parsers

_STACK_HELP = "TIFF stack (frames, Y, X): prebleach frames, then postbleach frames"


def _add_data_args(p: argparse.ArgumentParser, frame_defaults: bool = True, many: bool = False) -> None:
    if many:  # one stack, several or a folder
        common.add_stacks(p, _STACK_HELP)
    else:
        p.add_argument("stack", help=_STACK_HELP)
    p.add_argument(
        "--roi",
        required=True,
        metavar="circle:X,Y,R",
        help="bleach region = ROI, in pixels: x = column, y = row, pixel j spans [j, j+1]",
    )
    pre, bleach = ("10", "4") if frame_defaults else ("the network's", "the network's")
    common.add_numbers(
        p,
        (
            "--prebleach",
            positive(int),
            10 if frame_defaults else None,
            "N",
            f"recorded frames before the bleach (default {pre}); the rest are postbleach",
        ),
        (
            "--bleach",
            positive(int),
            4 if frame_defaults else None,
            "N",
            f"bleach frames, not recorded, each lasting dt (default {bleach})",
        ),
        ("--dt", positive(float), None, "S", "frame interval in s (default: the TIFF's ImageJ finterval)"),
        ("--pixel-size", positive(float), None, "UM", "pixel side in um (default: the TIFF's ImageJ calibration)"),
        (
            "--pad",
            non_negative(int),
            None,
            "PX",
            "padding of the periodic solver grid, pixels per side (default: half the analysed square; at most 4x its side, and the grid side + 2 pad at most 2048)",
        ),
    )


def _add_fit(f: argparse.ArgumentParser) -> None:
    _add_data_args(f, many=True)
    f.add_argument("--starts", type=positive(int), default=30, help="random starts of the LM fit (default 30)")
    f.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    f.add_argument(
        "--d-range",
        type=positive(float),
        nargs=2,
        default=None,
        metavar=("MIN", "MAX"),
        help="D range of the fit in um^2/s (default: DeepFRAP's 1-3000 px^2/s rescaled to dt and R, widened 10x)",
    )
    add_output(
        f, help="output folder (default STACK_frap); of several stacks: OUT/<stack name>/ each and OUT/summary.json"
    )


def _add_simulate(s: argparse.ArgumentParser) -> None:
    from fluojax.frap.models import (
        DEEPFRAP_DT_S,
        DEEPFRAP_PIXEL_UM,
        DEEPFRAP_RADIUS_PX,
    )  # jax: only for `frap simulate`

    common.add_numbers(
        s,
        ("--d", positive(float), 10.0, "UM2_S", "diffusion coefficient in um^2/s (default 10)"),
        ("--c0", positive(float), 0.75, None, "prebleach intensity (default 0.75)"),
        ("--alpha", positive(float), 0.7, None, "fraction left per bleach frame, in (0, 1] (default 0.7)"),
        ("--noise-a", non_negative(float), 0.0, "A", "per-pixel noise variance, intensity^2 (default 0)"),
        ("--prebleach", positive(int), 10, "N", None),
        ("--bleach", positive(int), 4, "N", None),
        ("--postbleach", positive(int), 100, "N", None),
        ("--size", positive(int), 256, "PX", "image side in pixels (default 256)"),
        (
            "--pad",
            non_negative(int),
            None,
            "PX",
            "solver padding per side (default size // 2; at most 4 x size, and size + 2 pad at most 2048)",
        ),
    )
    for option, default, metavar, what in (
        ("--radius", DEEPFRAP_RADIUS_PX, "PX", "bleach radius in pixels, centred in the image"),
        ("--dt", DEEPFRAP_DT_S, "S", "frame interval in s"),
        ("--pixel-size", DEEPFRAP_PIXEL_UM, "UM", "pixel side in um"),
    ):  # DeepFRAP's geometry by default
        s.add_argument(
            option, type=positive(float), default=default, metavar=metavar, help=f"{what} (default {default:.4g})"
        )
    s.add_argument("--seed", type=int, default=0)
    add_output(s, "STACK.tif", required=True, overwrite="file")


def _recipe_names() -> list[str] | None:
    """The names of ``fluojax.frap.learned.RECIPES`` (imports jax and flax), or None when that
    module is missing (``train`` then refuses with one line)."""
    try:
        from fluojax.frap.learned import RECIPES
    except ModuleNotFoundError as err:
        if err.name != "fluojax.frap.learned":
            raise
        return None
    return sorted(RECIPES)


def _add_train(t: argparse.ArgumentParser) -> None:
    common.add_training_options(t, _recipe_names())


def _add_predict(pr: argparse.ArgumentParser) -> None:
    _add_data_args(pr, frame_defaults=False)
    pr.add_argument("--net", required=True, metavar="CKPT", help="run folder or checkpoint from 'fluojax frap train'")
    add_output(pr, help="output folder (default STACK_frapnet)")


def add_parsers(p: argparse.ArgumentParser) -> None:
    """The ``frap`` subcommands of ``fluojax`` (each one's options added when it is chosen)."""
    frap = p.add_subparsers(dest="frap_command", required=True, metavar="COMMAND")
    frap.add_parser(
        "fit",
        help="recovery curve of a circular ROI -> least-squares D, c0, alpha with 95 %% CIs",
        build=_add_fit,
        epilog="Outputs in OUT: summary.json, fit.png, curve.csv. Exit codes: 0 fitted (a warning line when a "
        "parameter is at a bound), 2 bad input (nothing written), 3 the fit did not converge, shows no bleach "
        "or leaves D undetermined (CI wider than a decade) (outputs written, status in summary.json). "
        "A non-square stack is cropped to the largest square around the ROI. Several stacks (or a folder): one "
        "result folder per stack (OUT/<stack name>/ with -o OUT, else STACK_frap beside each), OUT/summary.json "
        "and a closing table listing every stack's outcome; --roi and the other options apply to every stack; the "
        "output folders are checked before any stack is read; a bad stack is reported in one line and the others "
        f"are fitted; exit code {common.EXIT_CODES}.",
    )
    frap.add_parser(
        "simulate", help="simulate a FRAP image stack (full spectral solver + per-pixel noise)", build=_add_simulate
    )
    frap.add_parser(
        "train", help="train a DeepFRAP network on simulated recovery curves (resumes a run folder)", build=_add_train
    )
    frap.add_parser(
        "predict",
        help="a network's (D, c0, alpha) for a ROI, refined by LM, with a physics check",
        build=_add_predict,
        epilog="Outputs in OUT: summary.json (network prediction, refined fit with 95 % CIs, residual_ratio), "
        "fit.png, curve.csv. Exit codes as for 'frap fit'.",
    )


# ------------------------------------------------------------------------------------------------
# Helpers


def _learned():
    from fluojax.io import InputError

    try:
        from fluojax.frap import learned
    except ModuleNotFoundError as err:
        if err.name != "fluojax.frap.learned":
            raise
        raise InputError(
            "FRAP networks are not available: fluojax.frap.learned is missing from this installation"
        ) from None
    return learned


def _read(args, path: str):
    """Read the stack at ``path`` and resolve dt and the pixel size (options first, then the TIFF's metadata)."""
    from fluojax import io
    from fluojax.frap import pipeline
    from fluojax.io import InputError

    roi = pipeline.parse_roi(args.roi)
    stack, dt = common.read_timed_stack(path, args.dt, "--dt")
    pixel_um = args.pixel_size or io.read_pixel_size_um(path)
    if not pixel_um:
        raise InputError("no pixel size: pass --pixel-size UM (the TIFF has no ImageJ micron calibration)")
    return stack, roi, dt, float(pixel_um)


def _d_range(args, pixel_um: float):
    from fluojax.frap.models import d_um2_s_to_px2_s
    from fluojax.io import InputError

    if args.d_range is None:
        return None
    lo, hi = args.d_range
    if not lo < hi:
        raise InputError(f"--d-range {lo:g} {hi:g}: MIN must be below MAX")
    return d_um2_s_to_px2_s(lo, pixel_um), d_um2_s_to_px2_s(hi, pixel_um)


def _write_curve(path: Path, times, columns: dict) -> None:
    """curve.csv: time_s and one column per curve."""
    import numpy as np

    names = ["time_s", *columns]
    table = np.column_stack([times, *columns.values()])
    np.savetxt(path, table, delimiter=",", header=",".join(names), comments="", fmt="%.9g")


def _d_title(name: str, fit_summary: dict) -> str:
    d = fit_summary["D_um2_s"]
    if d["value"] is None:
        return f"{name}: fit failed ({fit_summary['status']})"
    lo, hi = d["ci95"]
    ci = f" (95 % CI {lo:.3g}–{hi:.3g})" if lo is not None and hi is not None else ""
    return (
        f"{name}: D = {d['value']:.3g} µm²/s{ci}, alpha = {fit_summary['alpha']['value']:.3g} [{fit_summary['status']}]"
    )


# ------------------------------------------------------------------------------------------------
# Handlers


def fit_command(args) -> int:
    """``fluojax frap fit``: one stack or many (:func:`fluojax.cli.common.fit_stacks`)."""
    return common.fit_stacks(args, "frap-fit", "_frap", _fit_setup)


def _fit_setup(args) -> common.StackFit:
    """The options of ``frap fit`` checked once (--roi, --d-range); returns the fit of one stack."""
    from fluojax.frap import pipeline

    pipeline.parse_roi(args.roi)
    _d_range(args, 1.0)  # MIN below MAX
    return functools.partial(_fit_stack, args)


def _fit_stack(args, path: str, out: Path, label: str) -> tuple[int, str]:
    """``frap fit`` of the stack at ``path`` into ``out`` (:data:`fluojax.cli.common.StackFit`)."""
    from fluojax import io
    from fluojax.frap import pipeline
    from fluojax.plotting import plot_recovery
    from fluojax.progress import progress

    t0 = time.perf_counter()
    with progress(3, "frap fit", "stages", eta=False) as bar:  # a line per stage in logs, once the run passes ~10 s
        stack, roi, dt, pixel_um = _read(args, path)
        prepared = pipeline.prepare_stack(stack, roi, args.prebleach, args.bleach, dt, args.pad)
        d_range = _d_range(args, pixel_um)
        t_read = time.perf_counter() - t0
        bar.set_postfix_str(f"read; building the curve table on a {prepared.settings.grid_size} px grid")
        bar.update(1)
        table, t_table = pipeline.timed(pipeline.build_table, prepared, d_range)
        bar.set_postfix_str(f"table built; fitting {args.starts} starts")
        bar.update(1)
        result, t_fit = pipeline.timed(pipeline.fit_prepared, prepared, table, n_starts=args.starts, seed=args.seed)
        bar.set_postfix_str("fitted")
        bar.update(1)
    fit_summary, model = pipeline.fit_summary(prepared, table, result, pixel_um)
    settings = pipeline.settings_summary(prepared, table, pixel_um, path)
    settings.update({"n_starts": args.starts, "seed": args.seed})
    warnings = []
    if fit_summary["status"] == "AT_BOUND":
        warnings.append(
            "a parameter is at its bound (D at the edge of the fitted range, or alpha/c0 at a limit): "
            "its interval is not meaningful; try --d-range"
        )
    timings = {"read": t_read, "table": t_table, "fit": t_fit, "total": time.perf_counter() - t0}
    summary = {
        "settings": settings,
        "fit": fit_summary,
        "warnings": warnings,
        "timings_s": timings,
        "model": "DeepFRAP pure diffusion (mobile fraction 1, no imaging bleach), fast tabulated curve",
    }
    times = prepared.settings.frame_times_s()
    with io.result_folder(out, "frap-fit", args.overwrite, label) as folder:
        io.write_json(folder / "summary.json", summary)
        _write_curve(folder / "curve.csv", times, {"data": prepared.curve, "model": model})
        plot_recovery(
            folder / "fit.png",
            prepared.settings,
            times,
            prepared.curve,
            {"least squares": model},
            _d_title(Path(path).name, fit_summary),
        )
    common.warn(warnings)
    if not fit_summary["ok"]:
        reason = fit_summary["status_reason"]
        return common.failed(path, reason, out), f"{fit_summary['status']}: {reason}"
    d = fit_summary["D_um2_s"]
    result_line = (
        f"D = {d['value']:.4g} um^2/s (95 % CI {d['ci95'][0]:.4g} to {d['ci95'][1]:.4g}), "
        f"c0 = {fit_summary['c0']['value']:.4g}, alpha = {fit_summary['alpha']['value']:.4g} [{fit_summary['status']}]"
    )
    print(f"{result_line} in {timings['total']:.1f} s -> {out}/")
    return 0, result_line


def simulate_command(args) -> int:
    """``fluojax frap simulate``."""
    import jax
    import numpy as np

    from fluojax import io
    from fluojax.frap import pipeline
    from fluojax.frap.models import FrapParams, FrapSettings, circular_region, d_um2_s_to_px2_s
    from fluojax.frap.simulate import simulate_image_sequences
    from fluojax.io import InputError
    from fluojax.noise import AffineGaussianNoise

    io.check_output_file(args.output, args.overwrite)
    if args.alpha > 1:
        raise InputError(f"--alpha {args.alpha:g}: the fraction left per bleach frame must be in (0, 1]")
    if args.postbleach < pipeline.MIN_POSTBLEACH:
        raise InputError(f"--postbleach {args.postbleach}: at least {pipeline.MIN_POSTBLEACH} postbleach frames")
    if 2 * args.radius > args.size:
        raise InputError(f"--radius {args.radius:g}: the bleach disk does not fit in a {args.size} px image")
    settings = FrapSettings(
        n_pixels=args.size,
        pad=pipeline.check_pad(args.size, args.pad),
        n_prebleach=args.prebleach,
        n_bleach=args.bleach,
        n_postbleach=args.postbleach,
        dt_s=args.dt,
    )
    geometry = circular_region(settings, args.radius)
    params = FrapParams(d_um2_s_to_px2_s(args.d, args.pixel_size), args.c0, args.alpha)
    t0 = time.perf_counter()
    images = np.asarray(
        simulate_image_sequences(
            jax.random.key(args.seed), params, geometry, settings, AffineGaussianNoise(args.noise_a)
        ),
        np.float32,
    )
    out = Path(args.output)
    with io.result_file(out, args.overwrite) as tmp:
        io.write_stack(tmp, images, args.dt, args.pixel_size)
    c = 0.5 * args.size
    print(
        f"simulated {images.shape[0]} x {images.shape[1]} x {images.shape[2]} (D = {args.d:g} um^2/s = {params.d_px2_s:.4g} px^2/s, "
        f"c0 {args.c0:g}, alpha {args.alpha:g}, noise a {args.noise_a:g}) in {time.perf_counter() - t0:.1f} s -> {out}\n"
        f"fit it with: fluojax frap fit {out} --roi circle:{c:g},{c:g},{args.radius:g} "
        f"--prebleach {args.prebleach} --bleach {args.bleach}"
    )
    return 0


def train_command(args) -> int:
    """``fluojax frap train``."""
    return common.run_training(args, _learned(), "loss", "loss (held out: MSE of D*, c0, alpha)")


def predict_command(args) -> int:
    """``fluojax frap predict``: the network's answer, refined by least squares, with a physics check."""
    from fluojax import io
    from fluojax.frap import pipeline
    from fluojax.frap.models import d_px2_s_to_um2_s
    from fluojax.io import InputError
    from fluojax.plotting import plot_recovery

    out, label = destination(args, "frap-predict", "_frapnet")
    learned = _learned()
    t0 = time.perf_counter()
    net, meta = common.load_network(learned, args.net)
    trained = dict(meta["settings"])
    n_pre = args.prebleach or int(trained["n_prebleach"])
    n_bleach = args.bleach or int(trained["n_bleach"])
    if (n_pre, n_bleach) != (int(trained["n_prebleach"]), int(trained["n_bleach"])):
        raise InputError(
            f"--net {args.net}: trained for {trained['n_prebleach']} prebleach and {trained['n_bleach']} bleach frames, "
            f"not {n_pre} and {n_bleach}"
        )
    stack, roi, dt, pixel_um = _read(args, args.stack)
    n_frames = int(trained["n_prebleach"]) + int(trained["n_postbleach"])
    if stack.shape[0] != n_frames:
        raise InputError(
            f"{args.stack}: {stack.shape[0]} frames; the network takes {n_frames} "
            f"({trained['n_prebleach']} prebleach + {trained['n_postbleach']} postbleach)"
        )
    prepared = pipeline.prepare_stack(stack, roi, n_pre, n_bleach, dt, args.pad)
    t_read = time.perf_counter() - t0
    try:
        network, t_net = pipeline.timed(pipeline.predict_prepared, net, meta, prepared)
    except ValueError as err:
        raise InputError(f"{args.stack}: {err}") from None
    prediction = network.params
    table, t_table = pipeline.timed(pipeline.build_table, prepared)
    refinement, t_fit = pipeline.timed(pipeline.refine_prepared, prepared, table, prediction)
    fit_summary, model = pipeline.fit_summary(prepared, table, refinement.fit, pixel_um)
    ratio = refinement.residual_ratio
    warnings = []
    if abs(network.radius_factor - 1) > 1e-6:
        warnings.append(
            f"the ROI radius {roi.r:g} px differs from the network's {network.net_radius_px:g} px: "
            f"its D was rescaled by (R/R_net)^2 = {network.radius_factor:.3g}"
        )
    if not refinement.trusted:
        warnings.append(
            f"physics check: the residual sum of squares at the network's prediction is {ratio:.3g} times that of the "
            f"refined fit (> {pipeline.RESIDUAL_RATIO_LIMIT:g}): distrust the network's values, use the refined ones"
        )
    scale = prepared.scale
    summary = {
        "settings": pipeline.settings_summary(prepared, table, pixel_um, args.stack),
        "network": {
            "checkpoint": str(args.net),
            "recipe": meta.get("recipe"),
            "checkpoint_step": meta.get("step"),
            "trained_settings": trained,
            "radius_px": network.net_radius_px,
            "prediction": {
                "D_um2_s": pipeline.finite_or_none(d_px2_s_to_um2_s(prediction[0], pixel_um)),
                "D_px2_s": pipeline.finite_or_none(prediction[0]),
                "c0": pipeline.finite_or_none(prediction[1] * scale),
                "alpha": pipeline.finite_or_none(prediction[2]),
            },
        },
        "refined": fit_summary,
        "residual_ratio": pipeline.finite_or_none(ratio),
        "residual_ratio_what": "RSS at the network's prediction / RSS of the LM fit started there; ~1 when the network is right",
        "warnings": warnings,
        "timings_s": {
            "read": t_read,
            "network": t_net,
            "table": t_table,
            "refine": t_fit,
            "total": time.perf_counter() - t0,
        },
    }
    times = prepared.settings.frame_times_s()
    with io.result_folder(out, "frap-predict", args.overwrite, label) as folder:
        io.write_json(folder / "summary.json", summary)
        _write_curve(
            folder / "curve.csv", times, {"data": prepared.curve, "model": model, "network": refinement.start_curve}
        )
        plot_recovery(
            folder / "fit.png",
            prepared.settings,
            times,
            prepared.curve,
            {"refined (LM)": model, "network": refinement.start_curve},
            _d_title(Path(args.stack).name, fit_summary) + f"\nnetwork: D = {prediction[0] * pixel_um**2:.3g} µm²/s, "
            f"residual ratio {ratio:.3g}",
        )
    common.warn(warnings)
    if not fit_summary["ok"]:
        return common.failed(args.stack, f"refined fit: {fit_summary['status_reason']}", out)
    p = summary["network"]["prediction"]
    d = fit_summary["D_um2_s"]
    print(
        f"network D = {p['D_um2_s']:.4g} um^2/s, refined D = {d['value']:.4g} um^2/s (95 % CI {d['ci95'][0]:.4g} to "
        f"{d['ci95'][1]:.4g}), residual ratio {ratio:.3g} in {summary['timings_s']['total']:.1f} s -> {out}/"
    )
    return 0


HANDLERS = {"fit": fit_command, "simulate": simulate_command, "train": train_command, "predict": predict_command}
"""``fluojax frap COMMAND`` -> its handler."""
