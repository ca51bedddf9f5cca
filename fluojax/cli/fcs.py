"""``fluojax fcs fit|simulate|train|predict|compare`` and ``fluojax demo``: parse, call
:mod:`fluojax.fcs`, write the outputs.

Only the standard library is imported with this module; each subcommand imports what it needs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path

from fluojax.cli import common
from fluojax.cli.common import add_output, destination, fmt, positive

__all__ = ["HANDLERS", "add_demo_arguments", "add_parsers", "demo_command"]


# ------------------------------------------------------------------------------------------------
# Parsers


_OPTICS_OPTIONS = (
    # option, keyword of fcs.pipeline.default_optics, metavar, default, help
    ("--pixel-size", "camera_pixel_um", "UM", 24.0, "camera pixel pitch in um (default 24)"),
    ("--magnification", "magnification", "M", None, "total magnification (default 100 in 2D, 60 in 3D)"),
    ("--na", "na", None, None, "numerical aperture (default 1.45 in 2D, 1.0 in 3D)"),
    ("--wavelength", "wavelength_nm", "NM", None, "emission wavelength in nm (default 583 in 2D, 515 in 3D)"),
    ("--sigma0", "sigma0", "S0", None, "PSF factor, w = sigma0*lambda/NA (default 0.8 in 2D, 1.1 in 3D)"),
    ("--sigmaz", "sigmaz", "SZ", 2.2, "light-sheet factor, w_z = sigmaz*lambda/NA (3D; default 2.2)"),
    (
        "--refractive-index",
        "refractive_index",
        "N",
        None,
        "3D: sample (and water-dipping immersion) refractive index, NA must stay below it (default 1.333); "
        "2D: the objective's immersion medium index, NA cannot exceed it (default 1.518, oil)",
    ),
)
"""The optics options, as the Imaging FCS plugin takes them."""


def _add_optics(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optics (as the Imaging FCS plugin takes them)")
    for option, _, metavar, default, text in _OPTICS_OPTIONS:
        g.add_argument(option, type=positive(float), default=default, metavar=metavar, help=text)


def _add_fit(f: argparse.ArgumentParser) -> None:
    common.add_stacks(f)
    f.add_argument(
        "--model", choices=["2d", "3d"], default="2d", help="2d = ITIR/TIRF (closed form), 3d = SPIM (numerical)"
    )
    f.add_argument(
        "--frame-time",
        type=positive(float),
        default=None,
        metavar="S",
        help="frame time in s (default: the TIFF's ImageJ finterval)",
    )
    _add_optics(f)
    f.add_argument("--binning", type=positive(int), default=1, metavar="N", help="N x N pixel binning (default 1)")
    f.add_argument("--overlap", action="store_true", help="overlapping (sliding) binning")
    f.add_argument(
        "--bleach",
        default="auto",
        help="bleach correction: auto (default: only when the image-averaged trace "
        "decays significantly, lowest adequate order), polyK (K = 1..8) or none",
    )
    f.add_argument(
        "--backend", choices=["optimistix", "jaxopt"], default="optimistix", help="Levenberg-Marquardt backend"
    )
    add_output(
        f, help="output folder (default STACK_fcs); of several stacks: OUT/<stack name>/ each and OUT/summary.json"
    )


def _add_simulate(s: argparse.ArgumentParser) -> None:
    s.add_argument("--model", choices=["2d", "3d"], default="2d")
    common.add_numbers(
        s,
        ("--frames", positive(int), 20000, None, None),
        ("--size", positive(int), 16, "PX", "image side in pixels"),
        ("--frame-time", positive(float), 1.06e-3, "S", None),
        ("--d", positive(float), 1.0, "UM2_S", "diffusion coefficient in um^2/s"),
        ("--density", positive(float), 0.5, "PER_PX2", "particles per pixel area (object space)"),
        ("--brightness", positive(float), 6.0, None, "photo-electrons per particle per frame"),
    )
    s.add_argument("--read-noise", type=float, default=0.0, metavar="E", help="Gaussian read noise s.d. in electrons")
    s.add_argument("--seed", type=int, default=0)
    _add_optics(s)
    add_output(s, "STACK.tif", required=True, overwrite="file")


def _add_train(t: argparse.ArgumentParser) -> None:
    from fluojax.fcs.learned import RECIPES  # imports jax and flax: only when `fcs train` is parsed

    common.add_training_options(t, sorted(RECIPES))
    pool = "FCSNet: simulated stacks reused every epoch (default: the config's)"
    common.add_numbers(t, ("--pool-stacks", positive(int), None, "N", pool))


def _add_predict(pr: argparse.ArgumentParser) -> None:
    pr.add_argument("stack", help="TIFF stack (frames, Y, X)")
    pr.add_argument("--net", required=True, metavar="CKPT", help="run folder or checkpoint from 'fluojax fcs train'")
    pr.add_argument(
        "--frame-time", type=positive(float), default=None, metavar="S", help="frame time in s (default: the TIFF's)"
    )
    pr.add_argument(
        "--overlap",
        action="store_true",
        help="ImFCSNet: one value per pixel from overlapping 3x3 windows (border marked)",
    )
    pr.add_argument("--bleach", default="auto", help="bleach correction of the ACFs: auto (default), polyK or none")
    add_output(pr, help="output folder (default STACK_net)")


def _add_compare(c: argparse.ArgumentParser) -> None:
    c.add_argument("--fcsnet", default=None, metavar="CKPT", help="FCSNet run folder (optional)")
    c.add_argument("--imfcsnet", default=None, metavar="CKPT", help="ImFCSNet run folder (optional)")
    c.add_argument("--model", choices=["2d", "3d"], default="2d", help="simulated geometry (must match the networks')")
    c.add_argument("--long", type=positive(int), default=50_000, metavar="FRAMES", help="long record (NLS, FCSNet)")
    c.add_argument("--short", type=positive(int), default=2_500, metavar="FRAMES", help="short record (ImFCSNet, NLS)")
    c.add_argument(
        "--d",
        type=positive(float),
        nargs="+",
        default=[0.1, 0.3, 1.0, 3.0, 10.0],
        metavar="UM2_S",
        help="true D values",
    )
    c.add_argument("--samples", type=positive(int), default=16, help="simulated 3x3 stacks per D")
    c.add_argument("--density", type=positive(float), default=0.3, metavar="PER_PX2")
    c.add_argument("--brightness", type=positive(float), default=5.0)
    c.add_argument("--seed", type=int, default=0)
    add_output(c, "REPORT", "folder: report.md, report.csv, report.png", required=True)


def add_parsers(p: argparse.ArgumentParser) -> None:
    """The ``fcs`` subcommands of ``fluojax`` (each one's options added when it is chosen)."""
    fcs = p.add_subparsers(dest="fcs_command", required=True, metavar="COMMAND")
    fcs.add_parser(
        "fit",
        help="per-pixel ACF fits of an image stack -> D, N, G_inf maps",
        build=_add_fit,
        epilog="Outputs in OUT: D.tif, N.tif, Ginf.tif, chi2.tif, status.tif, maps.png, summary.json. Exit codes: "
        "0 fitted, 2 bad input (nothing written), 3 no pixel could be fitted (outputs written). Several stacks "
        "(or a folder): one result folder per stack (OUT/<stack name>/ with -o OUT, else STACK_fcs beside each), "
        "OUT/summary.json and a closing table listing every stack's outcome; the options apply to every stack; "
        "the output folders are checked before any stack is read; a bad stack is reported in one line and the "
        f"others are fitted; exit code {common.EXIT_CODES}.",
    )
    fcs.add_parser("simulate", help="simulate a random-walk Imaging FCS stack", build=_add_simulate)
    fcs.add_parser("train", help="train FCSNet or ImFCSNet on simulated data (resumes a run folder)", build=_add_train)
    fcs.add_parser("predict", help="D map of a stack from a trained network, with a physics check", build=_add_predict)
    fcs.add_parser(
        "compare", help="networks vs least squares on the same simulated 2D/3D stacks -> report", build=_add_compare
    )


def add_demo_arguments(d: argparse.ArgumentParser) -> None:
    """The options of ``fluojax demo``."""
    d.add_argument("--frames", type=positive(int), default=20000)
    add_output(d, help="output folder (default demo_out)", default="demo_out")


# ------------------------------------------------------------------------------------------------
# Helpers


def _optics(args, binning: int = 1):
    """The ``Optics`` of the command line (``fcs.pipeline.default_optics``; InputError if impossible)."""
    from fluojax.fcs.pipeline import default_optics
    from fluojax.io import InputError

    given = {keyword: getattr(args, option[2:].replace("-", "_")) for option, keyword, *_ in _OPTICS_OPTIONS}
    try:
        return default_optics(
            args.model,
            binning=binning,
            **given,
        )
    except ValueError as err:
        raise InputError(f"optics: {err}") from None


def _bleach_order(text: str) -> int | str:
    from fluojax.io import InputError

    if text == "auto":
        return "auto"
    if text == "none":
        return 0
    if text.startswith("poly") and text[4:].isdigit() and 1 <= int(text[4:]) <= 8:
        return int(text[4:])
    raise InputError(f"--bleach {text!r}: use auto, polyK with K from 1 to 8, or none")


def _write_fcs_outputs(folder: Path, maps, settings, extra: dict, figures=None) -> dict:
    """D, N, G_inf, chi^2 and status maps (TIFF), maps.png and summary.json in ``folder``
    (the figure drawn by ``figures``, a :class:`fluojax.plotting.FigureProcess`, when given)."""
    from types import SimpleNamespace

    import numpy as np

    from fluojax import io
    from fluojax.fcs.models import pixel_side_um
    from fluojax.fcs.pipeline import maps_summary
    from fluojax.plotting import plot_d_map

    pixel_um = float(pixel_side_um(settings.optics))
    io.write_map(folder / "D.tif", maps.d_um2_s, "D", "um^2/s", pixel_um)
    io.write_map(folder / "N.tif", maps.n_particles, "N", "", pixel_um)
    io.write_map(folder / "Ginf.tif", maps.g_inf, "G_inf", "", pixel_um)
    io.write_map(folder / "chi2.tif", maps.chi2_reduced, "reduced chi^2", "", pixel_um)
    io.write_map(folder / "status.tif", maps.status, "fit status", "code", pixel_um)
    title = extra.get("title", "Imaging FCS")
    if figures is None:
        plot_d_map(folder / "maps.png", maps, title)
    else:
        figures.draw("plot_d_map", folder / "maps.png", SimpleNamespace(d_um2_s=np.asarray(maps.d_um2_s)), title)
    summary = {**maps_summary(maps, settings), **{k: v for k, v in extra.items() if k != "title"}}
    io.write_json(folder / "summary.json", summary)
    return summary


# ------------------------------------------------------------------------------------------------
# Handlers


def fit_command(args) -> int:
    """``fluojax fcs fit``: one stack or many (:func:`fluojax.cli.common.fit_stacks`). The D maps
    are drawn by a figure process started first, which imports matplotlib while this one imports
    JAX and reads the stacks (:func:`fluojax.plotting.start_figure_process`)."""
    from fluojax.plotting import start_figure_process

    reducer = _start_reducer(args)  # first: the longer way to go
    figures = start_figure_process()
    try:
        return common.fit_stacks(
            args, "fcs-fit", "_fcs", functools.partial(_fit_setup, figures=figures, reducer=reducer)
        )
    finally:
        for helper in (figures, reducer):
            if helper is not None:
                helper.close()


def _start_reducer(args):
    """The helper process that reduces the stacks with the CPU kernel while this one imports JAX
    (:class:`fluojax.fcs.reduction.ReductionProcess`), the first stack asked for at once and each
    later one when the one before has come back; None where it cannot help (binning, a
    multi-host run, a --bleach value refused later, no fork)."""
    from fluojax import distributed
    from fluojax.fcs import reduction
    from fluojax.io import InputError

    if args.binning != 1 or distributed.requested():
        return None
    try:
        bleach = _bleach_order(args.bleach)
    except InputError:
        return None
    try:  # the stacks in the order the command fits them (a folder: its files, as fit_stacks lists them)
        stacks = common.list_stacks([args.stack] if isinstance(args.stack, str | Path) else args.stack)
    except InputError:  # refused by fit_stacks in a moment
        stacks = []
    reducer = reduction.start_reduction_process(args.overlap, bleach)
    if reducer is not None and stacks:
        reducer.expect(stacks)  # each next stack is reduced while the one before is fitted
        reducer.submit(stacks[0])
    return reducer


def _fit_setup(args, figures=None, reducer=None) -> common.StackFit:
    """The options of ``fcs fit`` checked once; returns the fit of one stack."""
    from fluojax.fcs.estimate import fcs_solver

    return functools.partial(
        _fit_stack,
        args,
        _optics(args, args.binning),
        _bleach_order(args.bleach),
        fcs_solver(args.backend),
        figures,
        reducer,
    )


def _fit_stack(
    args, optics, bleach_order, solver, figures, reducer, path: str, out: Path, label: str
) -> tuple[int, str]:
    """``fcs fit`` of the stack at ``path`` into ``out`` (:data:`fluojax.cli.common.StackFit`);
    ``reducer`` (or None) reduces it in a helper process."""
    from fluojax import distributed, io
    from fluojax.fcs.pipeline import AnalysisSettings, analyse_stack_across_processes
    from fluojax.io import InputError

    prepared = None if reducer is None else reducer.prepared(path)
    try:
        stack, frame_time = common.read_timed_stack(path, args.frame_time, "--frame-time")
        settings = AnalysisSettings(
            frame_time_s=frame_time,
            optics=optics,
            model=args.model,
            overlap=args.overlap,
            bleach_order=bleach_order,
            solver=solver,
        )
        t0 = time.perf_counter()
        try:
            maps = analyse_stack_across_processes(stack, settings, prepared=prepared)  # one process: analyse_stack
        except ValueError as err:  # data-dependent problems (too few frames, NaN values, binning)
            raise InputError(f"{path}: {err}") from None
    finally:  # refused, or not reduced in the helper after all (another backend): stop it there
        if prepared is not None:
            prepared.cancel()
    maps.timings_s["total"] = time.perf_counter() - t0
    assert maps.bleach is not None  # analyse_stack records the bleach correction it applied
    settings = dataclasses.replace(settings, bleach_order=int(maps.bleach["order"]))
    if not distributed.is_writer():  # a multi-host run: process 0 writes the gathered maps
        return 0, "fitted; process 0 writes the maps"
    with io.result_folder(out, "fcs-fit", args.overwrite, label) as folder:
        summary = _write_fcs_outputs(
            folder, maps, settings, {"input": str(path), "title": f"{Path(path).name} ({args.model})"}, figures
        )
    result = (
        f"{summary['fitted']}/{summary['pixels']} pixels fitted, median D = {fmt(summary['medians']['D_um2_s'])} um^2/s"
    )
    print(f"{result} in {maps.timings_s['total']:.1f} s -> {out}/")
    if summary["fitted"] == 0:
        return common.failed(path, "no pixel could be fitted", out), result
    return 0, result


def simulate_command(args) -> int:
    """``fluojax fcs simulate``."""
    import jax
    import numpy as np

    from fluojax import io
    from fluojax.fcs import models, simulate
    from fluojax.fcs.models import pixel_side_um
    from fluojax.io import InputError
    from fluojax.noise import GaussianReadNoise, IdealCamera

    io.check_output_file(args.output, args.overwrite)
    if args.read_noise < 0:
        raise InputError("--read-noise must be >= 0")
    optics = _optics(args)
    a = float(pixel_side_um(optics))
    geometry = simulate.StackGeometry(
        frames=args.frames,
        size_px=args.size,
        frame_time_s=args.frame_time,
        n_particles=simulate.particles_for_density(args.density / a**2, args.size, optics),
        three_d=models.as_geometry(args.model).light_sheet,
    )
    camera = GaussianReadNoise(read_noise_e=args.read_noise) if args.read_noise > 0 else IdealCamera()
    t0 = time.perf_counter()
    stack = simulate.simulate_stack(
        jax.random.key(args.seed), simulate.DiffusionSample(args.d, args.brightness), optics, geometry, camera
    )
    frames = np.asarray(stack)
    out = Path(args.output)
    with io.result_file(out, args.overwrite) as tmp:
        io.write_stack(tmp, frames, args.frame_time, a)
    print(
        f"simulated {frames.shape[0]} x {frames.shape[1]} x {frames.shape[2]} ({args.model}, D = {args.d} um^2/s, "
        f"{geometry.n_particles} particles) in {time.perf_counter() - t0:.1f} s -> {out}"
    )
    return 0


def train_command(args) -> int:
    """``fluojax fcs train``."""
    from fluojax.fcs import learned

    return common.run_training(args, learned, "MSE of ln D", "MSE of ln D", pool_stacks=args.pool_stacks)


def predict_command(args) -> int:
    """``fluojax fcs predict``."""
    import numpy as np

    from fluojax import io
    from fluojax.fcs import learned
    from fluojax.io import InputError

    out, label = destination(args, "fcs-predict", "_net")
    net, meta = common.load_network(learned, args.net)
    stack, frame_time = common.read_timed_stack(args.stack, args.frame_time, "--frame-time")
    t0 = time.perf_counter()
    try:
        maps, settings = learned.predict_stack(net, meta, stack, frame_time, args.overlap, _bleach_order(args.bleach))
    except ValueError as err:
        raise InputError(f"{args.stack}: {err}") from None
    maps.timings_s["total"] = time.perf_counter() - t0
    chi2 = maps.chi2_reduced[np.isfinite(maps.chi2_reduced)]
    extra = {
        "title": f"{Path(args.stack).name}: {meta['fluojax_network']} ({meta['recipe']})",
        "network": meta["recipe"],
        "checkpoint_step": meta.get("step"),
        "physics_check": {
            "what": "reduced chi^2 of the model ACF at the predicted D (N, G_inf fitted); >> 1: distrust the prediction",
            "fraction_chi2_above_3": float(np.mean(chi2 > 3)) if chi2.size else None,
        },
    }
    with io.result_folder(out, "fcs-predict", args.overwrite, label) as folder:
        summary = _write_fcs_outputs(folder, maps, settings, extra)
    print(
        f"{meta['recipe']}: {summary['fitted']}/{summary['pixels']} pixels, median D = {fmt(summary['medians']['D_um2_s'])} um^2/s, "
        f"median physics-check chi2 {fmt(summary['medians']['chi2_reduced'], '.3g')} in {maps.timings_s['total']:.1f} s -> {out}/"
    )
    return 0


def compare_command(args) -> int:
    """``fluojax fcs compare``."""
    import jax
    import numpy as np

    from fluojax import compare, io, plotting
    from fluojax.fcs import learned, models, simulate
    from fluojax.io import InputError

    out, label = destination(args, "fcs-compare")
    if args.short < 2304:
        raise InputError(f"--short {args.short}: NLS needs at least 2304 frames for the correlator's lags")
    if args.long < args.short:
        raise InputError("--long must be at least --short")
    loaded, names = {}, {}
    for kind, path in (("fcsnet", args.fcsnet), ("imfcsnet", args.imfcsnet)):
        if path is None:
            continue
        loaded[kind], meta = common.load_network(learned, path, f"--{kind}", expect=kind)
        names[kind] = meta["recipe"]
        if meta["prior"]["three_d"] != models.as_geometry(args.model).light_sheet:
            raise InputError(
                f"--{kind} {path}: trained for {'3D' if meta['prior']['three_d'] else '2D'} data, not --model {args.model}"
            )
    if "imfcsnet" in loaded and args.short < loaded["imfcsnet"].config.min_frames:
        raise InputError(
            f"--short {args.short}: this ImFCSNet needs at least {loaded['imfcsnet'].config.min_frames} frames"
        )
    base = simulate.TrainingPrior.for_geometry(args.model, args.long)
    report = learned.compare_with_least_squares(
        base,
        args.density,
        args.brightness,
        args.short,
        loaded.get("fcsnet"),
        loaded.get("imfcsnet"),
        sorted(args.d),
        args.samples,
        jax.random.key(args.seed),
    )
    with io.result_folder(out, "fcs-compare", args.overwrite, label) as folder:
        (folder / "report.md").write_text(compare.to_markdown(report))
        compare.to_csv(report, folder / "report.csv")
        plotting.plot_report(report, folder / "report.png")
        io.write_json(
            folder / "settings.json",
            {**{k: v for k, v in vars(args).items() if k not in ("func", "overwrite")}, "networks": names},
        )
    print(
        f"{len(report.estimator_names)} estimators x {len(args.d)} D values x {args.samples} stacks -> {args.output}/report.md"
    )
    for e, name in enumerate(report.estimator_names):
        print(
            f"  {name:<34} Spearman {report.spearman[e, 0]:.3f}   median RMSE of ln D {np.nanmedian(report.rmse[e, :, 0]):.3f}"
        )
    return 0


def demo_command(args) -> int:
    """``fluojax demo``."""
    from fluojax import io
    from fluojax.fcs.demo import run_demo

    out, label = destination(args, "demo")
    t0 = time.perf_counter()
    result = run_demo(frames=args.frames)
    with io.result_folder(out, "demo", args.overwrite, label) as folder:
        extra = {
            "title": "fluojax demo: three regions of different D (2D)",
            "regions": result["regions"],
            "simulate_s": result["simulate_s"],
        }
        _write_fcs_outputs(folder, result["maps"], result["settings"], extra)
    print(f"{'region':<8}{'true D':>10}{'median fit D':>15}{'rel. error':>12}{'s.e.':>9}{'dev./s.e.':>11}   (um^2/s)")
    for r in result["regions"]:
        print(
            f"{r['name']:<8}{r['true_d_um2_s']:>10.3g}{r['median_d_um2_s']:>15.3g}{r['relative_error']:>+12.1%}"
            f"{r['median_standard_error_um2_s']:>9.2g}{r['deviation_in_standard_errors']:>+11.1f}"
        )
    print(
        "s.e.: standard error of the median from the pixel-to-pixel spread, 1.2533 sd / sqrt(n). A deviation within\n"
        "~2 s.e. is a statistical draw; a larger one is shared by the region's pixels: noise common to them (the\n"
        "long-lag tail of a short record) or a bias of model or estimator (docs/fcs.md, 'Accuracy of short records')"
    )
    t = result["maps"].timings_s
    print(
        f"simulate {result['simulate_s']:.1f} s, correlate {t['correlate']:.1f} s, fit {t['fit']:.1f} s, "
        f"total {time.perf_counter() - t0:.1f} s -> {out}/ (D.tif, N.tif, Ginf.tif, chi2.tif, status.tif, maps.png, summary.json)"
    )
    return 0


HANDLERS = {
    "fit": fit_command,
    "simulate": simulate_command,
    "train": train_command,
    "predict": predict_command,
    "compare": compare_command,
}
"""``fluojax fcs COMMAND`` -> its handler."""
