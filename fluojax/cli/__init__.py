"""The ``fluojax`` command: TIFF stacks in, parameter maps and plots out.

    fluojax fcs fit STACK.tif --frame-time S [optics] [-o OUT]   per-pixel Imaging FCS
    fluojax fcs simulate [settings] -o STACK.tif                 a simulated stack
    fluojax fcs train --config NAME [--steps N] -o CKPT          train FCSNet/ImFCSNet on simulations
    fluojax fcs predict STACK.tif --net CKPT [--overlap] -o OUT  a network's D map + physics check
    fluojax fcs compare [--fcsnet CKPT] [--imfcsnet CKPT] -o REP networks vs least squares on simulations
    fluojax demo [-o OUT]                                        the main job on a built-in stack

    fluojax frap fit STACK.tif --roi circle:X,Y,R [--prebleach 10 --bleach 4] [--dt S]
                     [--pixel-size UM] [--starts 30] [-o OUT]    ROI recovery curve -> D, c0, alpha
    fluojax frap simulate [--d UM2_S --c0 --alpha --noise-a A] [frames, geometry] -o STACK.tif
    fluojax frap train --config NAME [--steps N] [--seed S] -o CKPT   train a DeepFRAP network
    fluojax frap predict STACK.tif --net CKPT --roi circle:X,Y,R [...] [-o OUT]  network + LM refine

Bad input gives one line on stderr and exit code 2 (argparse errors too). Results are written to a
hidden folder beside OUT and moved into place only when complete (an interrupted run, SIGTERM
included, leaves nothing behind). OUT must be new, an empty folder, or -- with ``--overwrite`` --
an earlier fluojax result of the same command (recognised by its ``.fluojax-result.json``, and
holding no other files); anything else at OUT (the input, a file, a folder of your own such as
``.``) is refused before the analysis starts, and nothing is touched. ``simulate -o X.tif``
replaces an existing .tif only with ``--overwrite``; ``train -o RUN`` resumes a fluojax run folder
and refuses any other non-empty folder. ``frap fit``/``frap predict`` exit with code 3 (results
written, status in summary.json, one line on stderr) when the least-squares fit did not converge
or is not meaningful (NO_BLEACH: no bleach visible; UNDETERMINED: D's 95 % CI wider than a decade);
``fcs fit`` exits with code 3 when no pixel could be fitted. docs/refusals.md lists every refusal.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np

from fluojax.io import InputError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fluojax: error: MESSAGE (see 'fluojax SUB --help')``, exit 2."""

    def error(self, message):
        command = self.prog.split(" ", 1)[1] + " " if " " in self.prog else ""
        message = " ".join(str(message).split())
        self.exit(2, f"fluojax: error: {message} (see 'fluojax {command}--help')\n")


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive (got {text})")
        return value

    return parse


def _add_optics(p: argparse.ArgumentParser, three_d_defaults: bool = False) -> None:
    g = p.add_argument_group("optics (as the Imaging FCS plugin takes them)")
    g.add_argument("--pixel-size", type=_positive(float), default=24.0, metavar="UM", help="camera pixel pitch in um (default 24)")
    g.add_argument("--magnification", type=_positive(float), default=None, metavar="M", help="total magnification (default 100 in 2D, 60 in 3D)")
    g.add_argument("--na", type=_positive(float), default=None, help="numerical aperture (default 1.45 in 2D, 1.0 in 3D)")
    g.add_argument("--wavelength", type=_positive(float), default=None, metavar="NM", help="emission wavelength in nm (default 583 in 2D, 515 in 3D)")
    g.add_argument("--sigma0", type=_positive(float), default=None, metavar="S0", help="PSF factor, w = sigma0*lambda/NA (default 0.8 in 2D, 1.1 in 3D)")
    g.add_argument("--sigmaz", type=_positive(float), default=2.2, metavar="SZ", help="light-sheet factor, w_z = sigmaz*lambda/NA (3D; default 2.2)")
    g.add_argument("--refractive-index", type=_positive(float), default=None, metavar="N",
                   help="3D: sample (and water-dipping immersion) refractive index, NA must stay below it (default 1.333); "
                        "2D: the objective's immersion medium index, NA cannot exceed it (default 1.518, oil)")


def _optics(args, binning: int = 1):
    """The ``Optics`` of the command line, checked by ``models.check_optics`` (InputError if impossible).

    ``--refractive-index`` is the sample's index in 3D (a water-dipping objective: the immersion
    index too) and the immersion medium's in 2D, where the model does not use the sample's.
    """
    from fluojax.fcs.models import Optics, check_optics

    three_d = args.model == "3d"
    pick = lambda value, d2, d3: value if value is not None else (d3 if three_d else d2)  # noqa: E731
    index = pick(args.refractive_index, 1.518, 1.333)
    optics = Optics(
        camera_pixel_um=args.pixel_size,
        magnification=pick(args.magnification, 100.0, 60.0),
        na=pick(args.na, 1.45, 1.0),
        wavelength_nm=pick(args.wavelength, 583.0, 515.0),
        sigma0=pick(args.sigma0, 0.8, 1.1),
        sigmaz=args.sigmaz if three_d else 1.0e6,
        refractive_index=index if three_d else Optics._field_defaults["refractive_index"],  # unused in 2D
        binning=binning,
        immersion_index=index,
    )
    try:
        check_optics(optics, three_d)
    except ValueError as err:
        raise InputError(f"optics: {err}") from None
    return optics


def _parser() -> argparse.ArgumentParser:
    top = _Parser(prog="fluojax", description="Differentiable fluorescence-microscopy analysis in JAX.")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fcs = sub.add_parser("fcs", help="Imaging FCS").add_subparsers(dest="fcs_command", required=True, metavar="COMMAND")
    f = fcs.add_parser("fit", help="per-pixel ACF fits of an image stack -> D, N, G_inf maps")
    f.add_argument("stack", help="TIFF stack (frames, Y, X)")
    f.add_argument("--model", choices=["2d", "3d"], default="2d", help="2d = ITIR/TIRF (closed form), 3d = SPIM (numerical)")
    f.add_argument("--frame-time", type=_positive(float), default=None, metavar="S", help="frame time in s (default: the TIFF's ImageJ finterval)")
    _add_optics(f)
    f.add_argument("--binning", type=_positive(int), default=1, metavar="N", help="N x N pixel binning (default 1)")
    f.add_argument("--overlap", action="store_true", help="overlapping (sliding) binning")
    f.add_argument("--bleach", default="auto", help="bleach correction: auto (default: only when the image-averaged trace "
                   "decays significantly, lowest adequate order), polyK (K = 1..8) or none")
    f.add_argument("--backend", choices=["optimistix", "jaxopt"], default="optimistix", help="Levenberg-Marquardt backend")
    f.add_argument("-o", "--output", default=None, metavar="OUT", help="output folder (default STACK_fcs)")
    _add_overwrite(f)

    s = fcs.add_parser("simulate", help="simulate a random-walk Imaging FCS stack")
    s.add_argument("--model", choices=["2d", "3d"], default="2d")
    s.add_argument("--frames", type=_positive(int), default=20000)
    s.add_argument("--size", type=_positive(int), default=16, metavar="PX", help="image side in pixels")
    s.add_argument("--frame-time", type=_positive(float), default=1.06e-3, metavar="S")
    s.add_argument("--d", type=_positive(float), default=1.0, metavar="UM2_S", help="diffusion coefficient in um^2/s")
    s.add_argument("--density", type=_positive(float), default=0.5, metavar="PER_PX2", help="particles per pixel area (object space)")
    s.add_argument("--brightness", type=_positive(float), default=6.0, help="photo-electrons per particle per frame")
    s.add_argument("--read-noise", type=float, default=0.0, metavar="E", help="Gaussian read noise s.d. in electrons")
    s.add_argument("--seed", type=int, default=0)
    _add_optics(s)
    s.add_argument("-o", "--output", required=True, metavar="STACK.tif")
    _add_overwrite(s, file=True)

    from fluojax.fcs.learned import RECIPES

    t = fcs.add_parser("train", help="train FCSNet or ImFCSNet on simulated data (resumes a run folder)")
    t.add_argument("--config", required=True, choices=sorted(RECIPES), help="network and scale (-small: CPU-sized)")
    t.add_argument("--steps", type=_positive(int), default=None, help="training steps (default: the config's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--pool-stacks", type=_positive(int), default=None, metavar="N", help="FCSNet: simulated stacks reused every epoch (default: the config's)")
    t.add_argument("-o", "--output", required=True, metavar="CKPT", help="run folder: checkpoints, metrics.csv, loss.png")

    pr = fcs.add_parser("predict", help="D map of a stack from a trained network, with a physics check")
    pr.add_argument("stack", help="TIFF stack (frames, Y, X)")
    pr.add_argument("--net", required=True, metavar="CKPT", help="run folder or checkpoint from 'fluojax fcs train'")
    pr.add_argument("--frame-time", type=_positive(float), default=None, metavar="S", help="frame time in s (default: the TIFF's)")
    pr.add_argument("--overlap", action="store_true", help="ImFCSNet: one value per pixel from overlapping 3x3 windows (border marked)")
    pr.add_argument("--bleach", default="auto", help="bleach correction of the ACFs: auto (default), polyK or none")
    pr.add_argument("-o", "--output", default=None, metavar="OUT", help="output folder (default STACK_net)")
    _add_overwrite(pr)

    c = fcs.add_parser("compare", help="networks vs least squares on the same simulated 2D/3D stacks -> report")
    c.add_argument("--fcsnet", default=None, metavar="CKPT", help="FCSNet run folder (optional)")
    c.add_argument("--imfcsnet", default=None, metavar="CKPT", help="ImFCSNet run folder (optional)")
    c.add_argument("--model", choices=["2d", "3d"], default="2d", help="simulated geometry (must match the networks')")
    c.add_argument("--long", type=_positive(int), default=50_000, metavar="FRAMES", help="long record (NLS, FCSNet)")
    c.add_argument("--short", type=_positive(int), default=2_500, metavar="FRAMES", help="short record (ImFCSNet, NLS)")
    c.add_argument("--d", type=_positive(float), nargs="+", default=[0.1, 0.3, 1.0, 3.0, 10.0], metavar="UM2_S", help="true D values")
    c.add_argument("--samples", type=_positive(int), default=16, help="simulated 3x3 stacks per D")
    c.add_argument("--density", type=_positive(float), default=0.3, metavar="PER_PX2")
    c.add_argument("--brightness", type=_positive(float), default=5.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("-o", "--output", required=True, metavar="REPORT", help="folder: report.md, report.csv, report.png")
    _add_overwrite(c)

    _add_frap_parsers(sub)

    d = sub.add_parser("demo", help="simulate a stack with three D regions, fit it, compare")
    d.add_argument("--frames", type=_positive(int), default=20000)
    d.add_argument("-o", "--output", default="demo_out", metavar="OUT", help="output folder (default demo_out)")
    _add_overwrite(d)
    return top


def _add_overwrite(p: argparse.ArgumentParser, file: bool = False) -> None:
    if file:
        p.add_argument("--overwrite", action="store_true", help="replace an existing .tif file at -o")
    else:
        p.add_argument("--overwrite", action="store_true",
                       help="replace an earlier result of this command at OUT (nothing else is ever replaced)")


# ------------------------------------------------------------------------------------------------


def _destination(args, kind: str, default_suffix: str | None = None) -> tuple[Path, str]:
    """The output folder (``-o`` or STACK + ``default_suffix``), checked before any work starts.

    Returns:
        (folder, label for messages); raises InputError when the folder may not be written.
    """
    from fluojax import io

    if args.output is None:
        out = Path(Path(args.stack).with_suffix("").as_posix() + default_suffix)
        label = f"output folder {out} (the default; choose another with -o)"
    else:
        out, label = Path(args.output), f"-o {args.output}"
    io.check_output_folder(out, kind, args.overwrite, label)
    return out, label


def _check_run_folder(out: Path) -> None:
    from fluojax import train as training

    try:
        training.check_run_folder(out)
    except ValueError as err:
        raise InputError(f"-o {err}") from None


def _bleach_order(text: str) -> int | str:
    if text == "auto":
        return "auto"
    if text == "none":
        return 0
    if text.startswith("poly") and text[4:].isdigit() and 1 <= int(text[4:]) <= 8:
        return int(text[4:])
    raise InputError(f"--bleach {text!r}: use auto, polyK with K from 1 to 8, or none")


def _plot_maps(path: Path, maps, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    d = maps.d_um2_s
    fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
    finite = d[np.isfinite(d)]
    lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0, 1))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.6")
    im = ax_map.imshow(d, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
    fig.colorbar(im, ax=ax_map, label="D (µm²/s)")
    ax_map.set_title("D map (grey: not fitted)")
    ax_map.set_xlabel("x (pixel)")
    ax_map.set_ylabel("y (pixel)")
    if finite.size:
        positive = finite[finite > 0]
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()), 40) if positive.size > 1 else 20
        ax_hist.hist(positive, bins=bins, color="C0")
        ax_hist.set_xscale("log")
        ax_hist.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax_hist.axvline(np.median(finite), color="k", ls="--", label=f"median {np.median(finite):.3g}")
        ax_hist.legend()
    ax_hist.set_xlabel("D (µm²/s)")
    ax_hist.set_ylabel("pixels")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_fcs_outputs(folder: Path, maps, settings, extra: dict) -> dict:
    from fluojax import io
    from fluojax.fcs.models import pixel_side_um
    from fluojax.fcs.pipeline import PixelStatus

    pixel_um = float(pixel_side_um(settings.optics))
    io.write_map(folder / "D.tif", maps.d_um2_s, "D", "um^2/s", pixel_um)
    io.write_map(folder / "N.tif", maps.n_particles, "N", "", pixel_um)
    io.write_map(folder / "Ginf.tif", maps.g_inf, "G_inf", "", pixel_um)
    io.write_map(folder / "chi2.tif", maps.chi2_reduced, "reduced chi^2", "", pixel_um)
    io.write_map(folder / "status.tif", maps.status, "fit status", "code", pixel_um)
    _plot_maps(folder / "maps.png", maps, extra.get("title", "Imaging FCS"))
    counts = np.bincount(maps.status.ravel(), minlength=len(PixelStatus.DESCRIPTION))
    ok = np.isfinite(maps.d_um2_s)
    summary = {
        "settings": {
            "model": settings.model,
            "frame_time_s": settings.frame_time_s,
            "optics": settings.optics._asdict(),
            "object_pixel_um": pixel_um,
            "overlap": settings.overlap,
            "bleach_order": settings.bleach_order,  # applied (0 = none); "bleach" says what was asked and why
            "bleach": maps.bleach,
            "correlator": {"P": settings.p, "Q": settings.q},
            "backend": settings.solver.backend,
        },
        "timings_s": maps.timings_s,
        "pixels": int(maps.status.size),
        "fitted": int(ok.sum()),
        "status_counts": {PixelStatus.DESCRIPTION[k]: int(c) for k, c in enumerate(counts) if c},
        "status_codes": PixelStatus.DESCRIPTION,
        "medians": {
            "D_um2_s": float(np.nanmedian(maps.d_um2_s)) if ok.any() else None,
            "N": float(np.nanmedian(maps.n_particles)) if ok.any() else None,
            "G_inf": float(np.nanmedian(maps.g_inf)) if ok.any() else None,
            "chi2_reduced": float(np.nanmedian(maps.chi2_reduced)) if ok.any() else None,
        },
        "units": {"D": "um^2/s", "N": "particles per pixel observation area", "G_inf": "dimensionless", "lag": "s"},
        **{k: v for k, v in extra.items() if k != "title"},
    }
    io.write_json(folder / "summary.json", summary)
    return summary


def _fcs_fit(args) -> int:
    from fluojax import fit, io
    from fluojax.fcs.pipeline import FCS_SOLVER, AnalysisSettings, analyse_stack

    out, label = _destination(args, "fcs-fit", "_fcs")
    stack, meta = io.read_stack(args.stack)
    frame_time = io.frame_interval_s(args.frame_time, meta, "--frame-time", args.stack)
    settings = AnalysisSettings(
        frame_time_s=frame_time,
        optics=_optics(args, args.binning),
        model=args.model,
        overlap=args.overlap,
        bleach_order=_bleach_order(args.bleach),
        solver=FCS_SOLVER if args.backend == "optimistix" else fit.LevenbergMarquardt(backend=args.backend),
    )
    t0 = time.perf_counter()
    try:
        maps = analyse_stack(stack, settings)
    except ValueError as err:  # data-dependent problems (too few frames, NaN values, binning)
        raise InputError(f"{args.stack}: {err}") from None
    maps.timings_s["total"] = time.perf_counter() - t0
    settings = dataclasses.replace(settings, bleach_order=int(maps.bleach["order"]))
    with io.result_folder(out, "fcs-fit", args.overwrite, label) as folder:
        summary = _write_fcs_outputs(folder, maps, settings, {"input": str(args.stack), "title": f"{Path(args.stack).name} ({args.model})"})
    print(f"{summary['fitted']}/{summary['pixels']} pixels fitted, median D = {_fmt(summary['medians']['D_um2_s'])} um^2/s "
          f"in {maps.timings_s['total']:.1f} s -> {out}/")
    if summary["fitted"] == 0:
        print(f"fluojax: error: {args.stack}: no pixel could be fitted; statuses in {out}/summary.json (exit code 3)", file=sys.stderr)
        return 3
    return 0


def _fcs_simulate(args) -> int:
    import jax

    from fluojax import io
    from fluojax.fcs import simulate
    from fluojax.fcs.models import pixel_side_um
    from fluojax.noise import Camera

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
        three_d=args.model == "3d",
    )
    camera = Camera("gaussian", read_noise_e=args.read_noise) if args.read_noise > 0 else Camera()
    t0 = time.perf_counter()
    stack = simulate.simulate_stack(jax.random.key(args.seed), simulate.DiffusionSample(args.d, args.brightness), optics, geometry, camera)
    stack = np.asarray(stack)
    out = Path(args.output)
    with io.result_file(out, args.overwrite) as tmp:
        io.write_stack(tmp, stack, args.frame_time, a)
    print(f"simulated {stack.shape[0]} x {stack.shape[1]} x {stack.shape[2]} ({args.model}, D = {args.d} um^2/s, "
          f"{geometry.n_particles} particles) in {time.perf_counter() - t0:.1f} s -> {out}")
    return 0


def _plot_training(path: Path, history, ylabel: str = "MSE of ln D") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(history.step[1:], history.train_loss[1:], "o-", label="training (mean since last row)")
    ax.plot(history.step, history.eval_loss, "s-", label="held out")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _resume_refusal(out: Path, err, recipes) -> str:
    """The one-line refusal for ``train`` on a run folder holding another run (``fluojax.train.RunMismatch``)."""
    recipe, step = err.saved.get("recipe"), err.step
    if recipe not in recipes:
        return f"-o {out} holds a {recipe or 'non-fluojax'} run (step {step}) of another command; use another folder"
    if any(not d.startswith("train_config.") for d in err.differs):
        return f"-o {out} holds a {recipe} run (step {step}); use --config {recipe} to resume it, or another folder"
    saved = err.saved.get("train_config", {})
    options = {"steps": "--steps", "seed": "--seed"}
    fields = [d.split(".", 1)[1] for d in err.differs]
    if "steps" in fields:  # the schedule's stairs follow --steps (frap recipes)
        fields = [f for f in fields if f != "decay_every"]
    if all(f in options for f in fields):
        hint = " ".join(f"{options[f]} {saved.get(f)}" for f in fields)
        return f"-o {out} holds a {recipe} run (step {step}) with {hint}; use {hint} to resume it, or another folder"
    return f"-o {out} holds a {recipe} run (step {step}) trained with another training config ({', '.join(fields)}); use another folder"


def _fcs_train(args) -> int:
    from fluojax import train as training
    from fluojax.fcs import learned

    out = Path(args.output)
    _check_run_folder(out)
    t0 = time.perf_counter()
    try:
        _, history = learned.train_recipe(args.config, out, steps=args.steps, seed=args.seed, pool_stacks=args.pool_stacks)
    except training.RunMismatch as err:  # checked before anything is built
        raise InputError(_resume_refusal(out, err, learned.RECIPES)) from None
    except ValueError as err:  # e.g. a checkpoint that does not fit the network
        raise InputError(str(err)) from None
    _plot_training(out / "loss.png", history)
    rate = [r for r in history.samples_per_s if r == r]
    print(f"{args.config}: {history.step[-1]} steps, held-out MSE of ln D {history.eval_loss[0]:.3g} -> {history.eval_loss[-1]:.3g}, "
          f"{np.median(rate) if rate else float('nan'):.0f} samples/s, {time.perf_counter() - t0:.0f} s -> {out}/")
    return 0


def _fcs_predict(args) -> int:
    from fluojax import io
    from fluojax.fcs import learned

    out, label = _destination(args, "fcs-predict", "_net")
    try:
        net, meta = learned.load_network(args.net)
    except ValueError as err:
        raise InputError(f"--net {args.net}: {err}") from None
    stack, tiff_meta = io.read_stack(args.stack)
    frame_time = io.frame_interval_s(args.frame_time, tiff_meta, "--frame-time", args.stack)
    t0 = time.perf_counter()
    try:
        maps, settings = learned.predict_stack(net, meta, stack, frame_time, args.overlap, _bleach_order(args.bleach))
    except ValueError as err:
        raise InputError(f"{args.stack}: {err}") from None
    maps.timings_s["total"] = time.perf_counter() - t0
    chi2 = maps.chi2_reduced[np.isfinite(maps.chi2_reduced)]
    extra = {"title": f"{Path(args.stack).name}: {meta['fluojax_network']} ({meta['recipe']})", "network": meta["recipe"],
             "checkpoint_step": meta.get("step"), "physics_check": {
                 "what": "reduced chi^2 of the model ACF at the predicted D (N, G_inf fitted); >> 1: distrust the prediction",
                 "fraction_chi2_above_3": float(np.mean(chi2 > 3)) if chi2.size else None}}
    with io.result_folder(out, "fcs-predict", args.overwrite, label) as folder:
        summary = _write_fcs_outputs(folder, maps, settings, extra)
    print(f"{meta['recipe']}: {summary['fitted']}/{summary['pixels']} pixels, median D = {_fmt(summary['medians']['D_um2_s'])} um^2/s, "
          f"median physics-check chi2 {_fmt(summary['medians']['chi2_reduced'], '.3g')} in {maps.timings_s['total']:.1f} s -> {out}/")
    return 0


def _fcs_compare(args) -> int:
    import jax

    from fluojax import compare, io
    from fluojax.fcs import learned, simulate

    out, label = _destination(args, "fcs-compare")
    if args.short < 2304:
        raise InputError(f"--short {args.short}: NLS needs at least 2304 frames for the correlator's lags")
    if args.long < args.short:
        raise InputError("--long must be at least --short")
    loaded, names = {}, {}
    for kind, path in (("fcsnet", args.fcsnet), ("imfcsnet", args.imfcsnet)):
        if path is None:
            continue
        try:
            loaded[kind], meta = learned.load_network(path, expect=kind)
        except ValueError as err:
            raise InputError(f"--{kind} {path}: {err}") from None
        names[kind] = meta["recipe"]
        if meta["prior"]["three_d"] != (args.model == "3d"):
            raise InputError(f"--{kind} {path}: trained for {'3D' if meta['prior']['three_d'] else '2D'} data, not --model {args.model}")
    if "imfcsnet" in loaded and args.short < loaded["imfcsnet"].config.min_frames:
        raise InputError(f"--short {args.short}: this ImFCSNet needs at least {loaded['imfcsnet'].config.min_frames} frames")
    base = simulate.TrainingPrior.spim_3d(args.long) if args.model == "3d" else simulate.TrainingPrior.itir_2d(args.long)
    simulate_point, prior = learned.comparison_simulator(base, args.density, args.brightness)
    estimators = learned.comparison_estimators(prior, args.short, loaded.get("fcsnet"), loaded.get("imfcsnet"))
    grid = np.asarray(sorted(args.d), np.float64)[:, None]
    report = compare.compare_estimators(estimators, simulate_point, grid, args.samples, jax.random.key(args.seed),
                                        param_names=("D_um2_s",), log_scale=("D_um2_s",))
    with io.result_folder(out, "fcs-compare", args.overwrite, label) as folder:
        (folder / "report.md").write_text(compare.to_markdown(report))
        compare.to_csv(report, folder / "report.csv")
        compare.plot_report(report, folder / "report.png")
        io.write_json(folder / "settings.json", {**{k: v for k, v in vars(args).items() if k not in ("func", "overwrite")}, "networks": names})
    print(f"{len(estimators)} estimators x {len(grid)} D values x {args.samples} stacks -> {args.output}/report.md")
    for e, name in enumerate(report.estimator_names):
        print(f"  {name:<34} Spearman {report.spearman[e, 0]:.3f}   median RMSE of ln D {np.nanmedian(report.rmse[e, :, 0]):.3f}")
    return 0


def _demo(args) -> int:
    from fluojax import io
    from fluojax.fcs.demo import run_demo

    out, label = _destination(args, "demo")
    t0 = time.perf_counter()
    result = run_demo(frames=args.frames)
    with io.result_folder(out, "demo", args.overwrite, label) as folder:
        extra = {"title": "fluojax demo: three regions of different D (2D)", "regions": result["regions"], "simulate_s": result["simulate_s"]}
        _write_fcs_outputs(folder, result["maps"], result["settings"], extra)
    print(f"{'region':<8}{'true D':>10}{'median fit D':>15}{'rel. error':>12}   (um^2/s)")
    for r in result["regions"]:
        print(f"{r['name']:<8}{r['true_d_um2_s']:>10.3g}{r['median_d_um2_s']:>15.3g}{r['relative_error']:>+12.1%}")
    t = result["maps"].timings_s
    print(f"simulate {result['simulate_s']:.1f} s, correlate {t['correlate']:.1f} s, fit {t['fit']:.1f} s, "
          f"total {time.perf_counter() - t0:.1f} s -> {out}/ (D.tif, N.tif, Ginf.tif, chi2.tif, status.tif, maps.png, summary.json)")
    return 0


# ------------------------------------------------------------------------------------------------
# FRAP


FRAP_CONFIGS = ("deepfrap", "deepfrap-merged", "deepfrap-small")


def _non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
        return value

    return parse


def _add_frap_data_args(p: argparse.ArgumentParser, frame_defaults: bool = True) -> None:
    p.add_argument("stack", help="TIFF stack (frames, Y, X): prebleach frames, then postbleach frames")
    p.add_argument("--roi", required=True, metavar="circle:X,Y,R",
                   help="bleach region = ROI, in pixels: x = column, y = row, pixel j spans [j, j+1]")
    hint = "" if frame_defaults else " (default: the network's)"
    p.add_argument("--prebleach", type=_positive(int), default=10 if frame_defaults else None, metavar="N",
                   help=f"recorded frames before the bleach{' (default 10)' if frame_defaults else hint}; the rest are postbleach")
    p.add_argument("--bleach", type=_positive(int), default=4 if frame_defaults else None, metavar="N",
                   help=f"bleach frames, not recorded, each lasting dt{' (default 4)' if frame_defaults else hint}")
    p.add_argument("--dt", type=_positive(float), default=None, metavar="S",
                   help="frame interval in s (default: the TIFF's ImageJ finterval)")
    p.add_argument("--pixel-size", type=_positive(float), default=None, metavar="UM",
                   help="pixel side in um (default: the TIFF's ImageJ calibration)")
    p.add_argument("--pad", type=_non_negative(int), default=None, metavar="PX",
                   help="padding of the periodic solver grid, pixels per side (default: half the analysed square; "
                        "at most 4x its side, and the grid side + 2 pad at most 2048)")


def _add_frap_parsers(sub) -> None:
    from fluojax.frap.models import DEEPFRAP_DT_S, DEEPFRAP_PIXEL_UM, DEEPFRAP_RADIUS_PX

    frap = sub.add_parser("frap", help="FRAP (DeepFRAP's diffusion model)").add_subparsers(dest="frap_command", required=True, metavar="COMMAND")
    f = frap.add_parser("fit", help="recovery curve of a circular ROI -> least-squares D, c0, alpha with 95 %% CIs",
                        epilog="Outputs in OUT: summary.json, fit.png, curve.csv. Exit codes: 0 fitted (a warning line when a "
                               "parameter is at a bound), 2 bad input (nothing written), 3 the fit did not converge, shows no bleach "
                               "or leaves D undetermined (CI wider than a decade) (outputs written, status in summary.json). "
                               "A non-square stack is cropped to the largest square around the ROI.")
    _add_frap_data_args(f)
    f.add_argument("--starts", type=_positive(int), default=30, help="random starts of the LM fit (default 30)")
    f.add_argument("--seed", type=int, default=0, help="seed of the random starts")
    f.add_argument("--d-range", type=_positive(float), nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="D range of the fit in um^2/s (default: DeepFRAP's 1-3000 px^2/s rescaled to dt and R, widened 10x)")
    f.add_argument("-o", "--output", default=None, metavar="OUT", help="output folder (default STACK_frap)")
    _add_overwrite(f)

    s = frap.add_parser("simulate", help="simulate a FRAP image stack (full spectral solver + per-pixel noise)")
    s.add_argument("--d", type=_positive(float), default=10.0, metavar="UM2_S", help="diffusion coefficient in um^2/s (default 10)")
    s.add_argument("--c0", type=_positive(float), default=0.75, help="prebleach intensity (default 0.75)")
    s.add_argument("--alpha", type=_positive(float), default=0.7, help="fraction left per bleach frame, in (0, 1] (default 0.7)")
    s.add_argument("--noise-a", type=_non_negative(float), default=0.0, metavar="A",
                   help="per-pixel noise variance, intensity^2 (default 0)")
    s.add_argument("--prebleach", type=_positive(int), default=10, metavar="N")
    s.add_argument("--bleach", type=_positive(int), default=4, metavar="N")
    s.add_argument("--postbleach", type=_positive(int), default=100, metavar="N")
    s.add_argument("--size", type=_positive(int), default=256, metavar="PX", help="image side in pixels (default 256)")
    s.add_argument("--pad", type=_non_negative(int), default=None, metavar="PX",
                   help="solver padding per side (default size // 2; at most 4 x size, and size + 2 pad at most 2048)")
    s.add_argument("--radius", type=_positive(float), default=DEEPFRAP_RADIUS_PX, metavar="PX",
                   help=f"bleach radius in pixels, centred in the image (default {DEEPFRAP_RADIUS_PX:.3f})")
    s.add_argument("--dt", type=_positive(float), default=DEEPFRAP_DT_S, metavar="S", help=f"frame interval in s (default {DEEPFRAP_DT_S})")
    s.add_argument("--pixel-size", type=_positive(float), default=DEEPFRAP_PIXEL_UM, metavar="UM",
                   help=f"pixel side in um (default {DEEPFRAP_PIXEL_UM})")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-o", "--output", required=True, metavar="STACK.tif")
    _add_overwrite(s, file=True)

    t = frap.add_parser("train", help="train a DeepFRAP network on simulated recovery curves (resumes a run folder)")
    t.add_argument("--config", required=True, choices=FRAP_CONFIGS, help="network and scale (-small: CPU-sized)")
    t.add_argument("--steps", type=_positive(int), default=None, help="training steps (default: the config's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("-o", "--output", required=True, metavar="CKPT", help="run folder: checkpoints, metrics, loss.png")

    pr = frap.add_parser("predict", help="a network's (D, c0, alpha) for a ROI, refined by LM, with a physics check",
                         epilog="Outputs in OUT: summary.json (network prediction, refined fit with 95 % CIs, residual_ratio), "
                                "fit.png, curve.csv. Exit codes as for 'frap fit'.")
    _add_frap_data_args(pr, frame_defaults=False)
    pr.add_argument("--net", required=True, metavar="CKPT", help="run folder or checkpoint from 'fluojax frap train'")
    pr.add_argument("-o", "--output", default=None, metavar="OUT", help="output folder (default STACK_frapnet)")
    _add_overwrite(pr)


def _frap_learned():
    try:
        from fluojax.frap import learned
    except ModuleNotFoundError as err:
        if err.name != "fluojax.frap.learned":
            raise
        raise InputError("FRAP networks are not available: fluojax.frap.learned is missing from this installation") from None
    return learned


def _frap_read(args):
    """Read the stack and resolve dt and the pixel size (options first, then the TIFF's metadata)."""
    from fluojax import io
    from fluojax.frap import pipeline

    roi = pipeline.parse_roi(args.roi)
    stack, meta = io.read_stack(args.stack)
    dt = io.frame_interval_s(args.dt, meta, "--dt", args.stack)
    pixel_um = args.pixel_size or io.read_pixel_size_um(args.stack)
    if not pixel_um:
        raise InputError("no pixel size: pass --pixel-size UM (the TIFF has no ImageJ micron calibration)")
    return stack, roi, dt, float(pixel_um)


def _fmt(value, spec: str = ".4g") -> str:
    """A number for a summary line, or "n/a" for None (nothing fitted)."""
    return "n/a" if value is None else format(value, spec)


def _num(value):
    """float, or None for NaN/inf (strict JSON)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _frap_fit_summary(prepared, table, result, pixel_um: float) -> dict:
    """The fitted parameters in physical units (D um^2/s and px^2/s, c0 in stack units, alpha)."""
    from fluojax.frap import pipeline
    from fluojax.frap.models import d_px2_s_to_um2_s
    from fluojax.frap.simulate import roi_effective_pixels

    p, lo, hi, sd = (np.asarray(a, np.float64)[0] for a in (result.params, result.ci_lower, result.ci_upper, result.stderr))
    scale = prepared.scale
    um = lambda v: d_px2_s_to_um2_s(v, pixel_um)  # noqa: E731

    def est(value, lower, upper, stderr, unit):
        return {"value": _num(value), "ci95": [_num(lower), _num(upper)], "stderr": _num(stderr), "unit": unit}

    status = int(pipeline.fit_status(result)[0])
    noise = float(result.noise_variance[0]) * scale**2
    model = pipeline.model_curve(p, table) * scale
    return {
        "status": pipeline.FrapStatus.NAMES.get(status, str(status)),
        "status_code": status,
        "ok": pipeline.fit_ok(status, p),
        "status_reason": pipeline.status_reason(status, p, lo, hi) or None,
        "engine_status": pipeline.FrapStatus.NAMES.get(int(result.status[0])),
        "D_um2_s": est(um(p[0]), um(lo[0]), um(hi[0]), um(sd[0]), "um^2/s"),
        "D_px2_s": est(p[0], lo[0], hi[0], sd[0], "px^2/s"),
        "c0": est(p[1] * scale, lo[1] * scale, hi[1] * scale, sd[1] * scale, "stack intensity"),
        "c0_over_prebleach_mean": _num(p[1] / pipeline.NORMALISED_LEVEL),
        "alpha": est(p[2], lo[2], hi[2], sd[2], "fraction left per bleach frame"),
        "noise_variance": {
            "curve": _num(noise),
            "pixel_equivalent": _num(noise * roi_effective_pixels(prepared.geometry)),
            "unit": "stack intensity^2",
            "what": "residual variance of one ROI-curve value, RSS/(n - 3); pixel_equivalent = curve x effective ROI pixels "
                    "(the per-pixel variance a if pixel noise is independent and constant)",
        },
        "chi2_reduced": _num(result.chi2_reduced[0]),
        "rss": _num(np.sum((prepared.curve - model) ** 2)),
    }, model


def _frap_settings_summary(prepared, table, pixel_um: float, stack_path) -> dict:
    from fluojax.frap import pipeline
    from fluojax.frap.models import d_px2_s_to_um2_s
    from fluojax.frap.simulate import roi_effective_pixels

    s = prepared.settings
    x0, y0, n = prepared.window
    d_lo, d_hi = table.d_range_px2_s
    return {
        "input": str(stack_path),
        "n_prebleach": s.n_prebleach,
        "n_bleach": s.n_bleach,
        "n_postbleach": s.n_postbleach,
        "dt_s": s.dt_s,
        "pixel_size_um": pixel_um,
        "roi_px": {"shape": "circle", "x": prepared.roi.x, "y": prepared.roi.y, "r": prepared.roi.r},
        "window_px": {"x0": x0, "y0": y0, "size": n, "what": "square analysed by the model (whole image when square)"},
        "pad_px": s.pad,
        "grid_size_px": s.grid_size,
        "effective_roi_pixels": roi_effective_pixels(prepared.geometry),
        "normalisation": {"prebleach_mean": prepared.prebleach_mean, "level": pipeline.NORMALISED_LEVEL},
        "d_range_px2_s": [d_lo, d_hi],
        "d_range_um2_s": [d_px2_s_to_um2_s(d_lo, pixel_um), d_px2_s_to_um2_s(d_hi, pixel_um)],
        "table_error_estimate": table.tail,
    }


def _write_frap_curve(path: Path, times, columns: dict) -> None:
    names = ["time_s", *columns]
    table = np.column_stack([times, *columns.values()])
    np.savetxt(path, table, delimiter=",", header=",".join(names), comments="", fmt="%.9g")


def _plot_frap(path: Path, settings, times, data, curves: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_res) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    bleach = (settings.n_prebleach * settings.dt_s, (settings.n_prebleach + settings.n_bleach) * settings.dt_s)
    for a in (ax, ax_res):
        a.axvspan(*bleach, color="0.85", lw=0)
    ax.plot(times, data, "o", ms=3, color="k", label="ROI mean")
    pre = settings.n_prebleach
    for k, (label, model) in enumerate(curves.items()):
        if np.all(np.isfinite(model)):
            for part, name in ((slice(0, pre), label), (slice(pre, None), None)):  # no line through the bleach
                ax.plot(times[part], model[part], "-", color=f"C{k}", label=name)
                ax_res.plot(times[part], (data - model)[part], "o-", ms=2, lw=0.6, color=f"C{k}")
    ax_res.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("intensity (stack units)")
    ax.legend()
    ax_res.set_xlabel("time (s); grey: bleach frames")
    ax_res.set_ylabel("residual")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _d_title(name: str, fit_summary: dict) -> str:
    d = fit_summary["D_um2_s"]
    if d["value"] is None:
        return f"{name}: fit failed ({fit_summary['status']})"
    lo, hi = d["ci95"]
    ci = f" (95 % CI {lo:.3g}–{hi:.3g})" if lo is not None and hi is not None else ""
    return f"{name}: D = {d['value']:.3g} µm²/s{ci}, alpha = {fit_summary['alpha']['value']:.3g} [{fit_summary['status']}]"


def _frap_d_range(args, pixel_um: float):
    from fluojax.frap.models import d_um2_s_to_px2_s

    if args.d_range is None:
        return None
    lo, hi = args.d_range
    if not lo < hi:
        raise InputError(f"--d-range {lo:g} {hi:g}: MIN must be below MAX")
    return d_um2_s_to_px2_s(lo, pixel_um), d_um2_s_to_px2_s(hi, pixel_um)


def _frap_fit(args) -> int:
    from fluojax import io
    from fluojax.frap import pipeline

    from fluojax.progress import progress

    out, label = _destination(args, "frap-fit", "_frap")
    t0 = time.perf_counter()
    with progress(3, "frap fit", "stages", eta=False) as bar:  # a line per stage in logs, once the run passes ~10 s
        stack, roi, dt, pixel_um = _frap_read(args)
        prepared = pipeline.prepare_stack(stack, roi, args.prebleach, args.bleach, dt, args.pad)
        d_range = _frap_d_range(args, pixel_um)
        t_read = time.perf_counter() - t0
        bar.set_postfix_str(f"read; building the curve table on a {prepared.settings.grid_size} px grid")
        bar.update(1)
        table, t_table = pipeline.timed(pipeline.build_table, prepared, d_range)
        bar.set_postfix_str(f"table built; fitting {args.starts} starts")
        bar.update(1)
        result, t_fit = pipeline.timed(pipeline.fit_prepared, prepared, table, n_starts=args.starts, seed=args.seed)
        bar.set_postfix_str("fitted")
        bar.update(1)
    fit_summary, model = _frap_fit_summary(prepared, table, result, pixel_um)
    settings = _frap_settings_summary(prepared, table, pixel_um, args.stack)
    settings.update({"n_starts": args.starts, "seed": args.seed})
    warnings = []
    if fit_summary["status"] == "AT_BOUND":
        warnings.append("a parameter is at its bound (D at the edge of the fitted range, or alpha/c0 at a limit): "
                        "its interval is not meaningful; try --d-range")
    timings = {"read": t_read, "table": t_table, "fit": t_fit, "total": time.perf_counter() - t0}
    summary = {"settings": settings, "fit": fit_summary, "warnings": warnings, "timings_s": timings,
               "model": "DeepFRAP pure diffusion (mobile fraction 1, no imaging bleach), fast tabulated curve"}
    times = prepared.settings.frame_times_s()
    with io.result_folder(out, "frap-fit", args.overwrite, label) as folder:
        io.write_json(folder / "summary.json", summary)
        _write_frap_curve(folder / "curve.csv", times, {"data": prepared.curve, "model": model})
        _plot_frap(folder / "fit.png", prepared.settings, times, prepared.curve, {"least squares": model},
                   _d_title(Path(args.stack).name, fit_summary))
    for w in warnings:
        print(f"fluojax: warning: {w}", file=sys.stderr)
    if not fit_summary["ok"]:
        print(f"fluojax: error: {args.stack}: {fit_summary['status_reason']}; details in {out}/summary.json (exit code 3)",
              file=sys.stderr)
        return 3
    d = fit_summary["D_um2_s"]
    print(f"D = {d['value']:.4g} um^2/s (95 % CI {d['ci95'][0]:.4g} to {d['ci95'][1]:.4g}), "
          f"c0 = {fit_summary['c0']['value']:.4g}, alpha = {fit_summary['alpha']['value']:.4g} "
          f"[{fit_summary['status']}] in {timings['total']:.1f} s -> {out}/")
    return 0


def _frap_simulate(args) -> int:
    import jax

    from fluojax import io
    from fluojax.frap import pipeline
    from fluojax.frap.models import FrapParams, FrapSettings, circular_region, d_um2_s_to_px2_s
    from fluojax.frap.simulate import PixelNoise, simulate_image_sequences

    io.check_output_file(args.output, args.overwrite)
    if args.alpha > 1:
        raise InputError(f"--alpha {args.alpha:g}: the fraction left per bleach frame must be in (0, 1]")
    if args.postbleach < pipeline.MIN_POSTBLEACH:
        raise InputError(f"--postbleach {args.postbleach}: at least {pipeline.MIN_POSTBLEACH} postbleach frames")
    if 2 * args.radius > args.size:
        raise InputError(f"--radius {args.radius:g}: the bleach disk does not fit in a {args.size} px image")
    settings = FrapSettings(n_pixels=args.size, pad=pipeline.check_pad(args.size, args.pad), n_prebleach=args.prebleach,
                            n_bleach=args.bleach, n_postbleach=args.postbleach, dt_s=args.dt)
    geometry = circular_region(settings, args.radius)
    params = FrapParams(d_um2_s_to_px2_s(args.d, args.pixel_size), args.c0, args.alpha)
    t0 = time.perf_counter()
    images = simulate_image_sequences(jax.random.key(args.seed), params, geometry, settings, PixelNoise(args.noise_a))
    images = np.asarray(images, np.float32)
    out = Path(args.output)
    with io.result_file(out, args.overwrite) as tmp:
        io.write_stack(tmp, images, args.dt, args.pixel_size)
    c = 0.5 * args.size
    print(f"simulated {images.shape[0]} x {images.shape[1]} x {images.shape[2]} (D = {args.d:g} um^2/s = {params.d_px2_s:.4g} px^2/s, "
          f"c0 {args.c0:g}, alpha {args.alpha:g}, noise a {args.noise_a:g}) in {time.perf_counter() - t0:.1f} s -> {out}\n"
          f"fit it with: fluojax frap fit {out} --roi circle:{c:g},{c:g},{args.radius:g} "
          f"--prebleach {args.prebleach} --bleach {args.bleach}")
    return 0


def _frap_train(args) -> int:
    from fluojax import train as training

    learned = _frap_learned()
    if args.config not in learned.RECIPES:
        raise InputError(f"--config {args.config}: unknown; choose from {', '.join(sorted(learned.RECIPES))}")
    out = Path(args.output)
    _check_run_folder(out)
    t0 = time.perf_counter()
    try:
        _, history = learned.train_recipe(args.config, out, steps=args.steps, seed=args.seed)
    except training.RunMismatch as err:  # checked before anything is built
        raise InputError(_resume_refusal(out, err, learned.RECIPES)) from None
    except ValueError as err:  # e.g. a checkpoint that does not fit the network
        raise InputError(str(err)) from None
    _plot_training(out / "loss.png", history, ylabel="loss (held out: MSE of D*, c0, alpha)")
    print(f"{args.config}: {history.step[-1]} steps, held-out loss {history.eval_loss[0]:.3g} -> {history.eval_loss[-1]:.3g}, "
          f"{time.perf_counter() - t0:.0f} s -> {out}/")
    return 0


def _frap_predict(args) -> int:
    from fluojax import io
    from fluojax.frap import pipeline
    from fluojax.frap.estimate import frap_bounds
    from fluojax.frap.models import d_px2_s_to_um2_s

    out, label = _destination(args, "frap-predict", "_frapnet")
    learned = _frap_learned()
    t0 = time.perf_counter()
    try:
        net, meta = learned.load_network(args.net)
    except ValueError as err:
        raise InputError(f"--net {args.net}: {err}") from None
    trained = dict(meta["settings"])
    n_pre = args.prebleach or int(trained["n_prebleach"])
    n_bleach = args.bleach or int(trained["n_bleach"])
    if (n_pre, n_bleach) != (int(trained["n_prebleach"]), int(trained["n_bleach"])):
        raise InputError(f"--net {args.net}: trained for {trained['n_prebleach']} prebleach and {trained['n_bleach']} bleach frames, "
                         f"not {n_pre} and {n_bleach}")
    stack, roi, dt, pixel_um = _frap_read(args)
    n_frames = int(trained["n_prebleach"]) + int(trained["n_postbleach"])
    if stack.shape[0] != n_frames:
        raise InputError(f"{args.stack}: {stack.shape[0]} frames; the network takes {n_frames} "
                         f"({trained['n_prebleach']} prebleach + {trained['n_postbleach']} postbleach)")
    prepared = pipeline.prepare_stack(stack, roi, n_pre, n_bleach, dt, args.pad)
    curves = prepared.normalised[None]
    t_read = time.perf_counter() - t0
    t1 = time.perf_counter()
    try:
        raw = np.asarray(learned.predict_curves(net, meta, curves, dt_s=dt), np.float64)[0]
    except ValueError as err:
        raise InputError(f"{args.stack}: {err}") from None
    # predict_curves rescales D for dt; the curve depends on D dt / R^2, so rescale for the ROI radius too
    net_radius = float(meta.get("radius_px", roi.r))
    radius_factor = (roi.r / net_radius) ** 2
    prediction = raw * np.array([radius_factor, 1.0, 1.0])
    t_net = time.perf_counter() - t1
    table, t_table = pipeline.timed(pipeline.build_table, prepared)
    # the same bounds as `frap fit` (alpha down to 0.05), not the network's training prior
    prior = pipeline.fit_prior(prepared.settings.dt_s, prepared.roi.r, table.d_range_px2_s)
    refined, t_fit = pipeline.timed(learned.refine, curves, table, prediction[None], prior=prior)
    fit_summary, model = _frap_fit_summary(prepared, table, refined.fit, pixel_um)
    lower, upper = frap_bounds(table, prior)  # refine's start clipping
    start = np.clip(np.nan_to_num(prediction, nan=1.0), [lower[0] * 1.001, lower[1], lower[2]], [upper[0] / 1.001, upper[1], upper[2]])
    net_model = pipeline.model_curve(start, table)
    ratio = float(np.asarray(refined.residual_ratio).ravel()[0])
    warnings = []
    if abs(radius_factor - 1) > 1e-6:
        warnings.append(f"the ROI radius {roi.r:g} px differs from the network's {net_radius:g} px: "
                        f"its D was rescaled by (R/R_net)^2 = {radius_factor:.3g}")
    if ratio > 2:
        warnings.append(f"physics check: the residual sum of squares at the network's prediction is {ratio:.3g} times that of the "
                        "refined fit (> 2): distrust the network's values, use the refined ones")
    scale = prepared.scale
    summary = {
        "settings": _frap_settings_summary(prepared, table, pixel_um, args.stack),
        "network": {
            "checkpoint": str(args.net),
            "recipe": meta.get("recipe"),
            "checkpoint_step": meta.get("step"),
            "trained_settings": trained,
            "radius_px": net_radius,
            "prediction": {
                "D_um2_s": _num(d_px2_s_to_um2_s(prediction[0], pixel_um)),
                "D_px2_s": _num(prediction[0]),
                "c0": _num(prediction[1] * scale),
                "alpha": _num(prediction[2]),
            },
        },
        "refined": fit_summary,
        "residual_ratio": _num(ratio),
        "residual_ratio_what": "RSS at the network's prediction / RSS of the LM fit started there; ~1 when the network is right",
        "warnings": warnings,
        "timings_s": {"read": t_read, "network": t_net, "table": t_table, "refine": t_fit, "total": time.perf_counter() - t0},
    }
    times = prepared.settings.frame_times_s()
    with io.result_folder(out, "frap-predict", args.overwrite, label) as folder:
        io.write_json(folder / "summary.json", summary)
        _write_frap_curve(folder / "curve.csv", times, {"data": prepared.curve, "model": model, "network": net_model * scale})
        _plot_frap(folder / "fit.png", prepared.settings, times, prepared.curve,
                   {"refined (LM)": model, "network": net_model * scale},
                   _d_title(Path(args.stack).name, fit_summary) + f"\nnetwork: D = {prediction[0] * pixel_um**2:.3g} µm²/s, "
                   f"residual ratio {ratio:.3g}")
    for w in warnings:
        print(f"fluojax: warning: {w}", file=sys.stderr)
    if not fit_summary["ok"]:
        print(f"fluojax: error: {args.stack}: refined fit: {fit_summary['status_reason']}; details in {out}/summary.json "
              f"(exit code 3)", file=sys.stderr)
        return 3
    p = summary["network"]["prediction"]
    d = fit_summary["D_um2_s"]
    print(f"network D = {p['D_um2_s']:.4g} um^2/s, refined D = {d['value']:.4g} um^2/s (95 % CI {d['ci95'][0]:.4g} to "
          f"{d['ci95'][1]:.4g}), residual ratio {ratio:.3g} in {summary['timings_s']['total']:.1f} s -> {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fluojax`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "frap":
            frap = {"fit": _frap_fit, "simulate": _frap_simulate, "train": _frap_train, "predict": _frap_predict}
            return frap[args.frap_command](args)
        handlers = {"fit": _fcs_fit, "simulate": _fcs_simulate, "train": _fcs_train, "predict": _fcs_predict, "compare": _fcs_compare}
        return handlers[args.fcs_command](args)
    except InputError as err:
        print(f"fluojax: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fluojax: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
