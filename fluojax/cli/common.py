"""Option types, shared options and the steps every technique's subcommands share.

A technique's command-line module (``cli/fcs.py``, ``cli/frap.py``) parses its own options and
calls its library; what two of them would otherwise write twice lives here: the number types,
the ``-o``/``--overwrite`` and training options, the checked output folder, reading a stack with
its frame interval, loading a network, the ``train`` command and the closing lines (warnings,
exit code 3).

Nothing here imports jax or numpy at import time: building the parser stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "add_numbers",
    "add_output",
    "add_overwrite",
    "add_training_options",
    "check_run_folder",
    "destination",
    "failed",
    "fmt",
    "learned_module",
    "load_network",
    "non_negative",
    "positive",
    "read_timed_stack",
    "recipe_names",
    "resume_refusal",
    "run_training",
    "warn",
]


# ------------------------------------------------------------------------------------------------
# Option types and shared options


def _number(kind: Callable[[str], Any], ok: Callable[[float], bool], rule: str) -> Callable[[str], Any]:
    """argparse type: a finite number of ``kind`` (int or float) for which ``ok`` holds, else ``rule``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"{rule} (got {text})")
        return value

    return parse


def positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type: a finite number of ``kind`` (int or float) above 0."""
    return _number(kind, lambda v: v > 0, "must be positive")


def non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse type: a finite number of ``kind`` (int or float) >= 0."""
    return _number(kind, lambda v: v >= 0, "must be >= 0")


def add_numbers(p: argparse.ArgumentParser, *rows: tuple) -> None:
    """Numeric options, one ``(option, type, default, metavar, help)`` row each (``type``:
    :func:`positive` or :func:`non_negative` of int or float; ``metavar`` may be None)."""
    for option, kind, default, metavar, text in rows:
        p.add_argument(option, type=kind, default=default, metavar=metavar, help=text)


def add_overwrite(p: argparse.ArgumentParser, file: bool = False) -> None:
    """``--overwrite``: for a .tif file (``file``) or for an earlier result folder of the command."""
    what = (
        "an existing .tif file at -o"
        if file
        else "an earlier result of this command at OUT (nothing else is ever replaced)"
    )
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_output(
    p: argparse.ArgumentParser,
    metavar: str = "OUT",
    help: str | None = None,
    *,
    default: str | None = None,
    required: bool = False,
    overwrite: str | None = "folder",
) -> None:
    """``-o/--output`` and its ``--overwrite``.

    Arguments:
        p: the subcommand's parser.
        metavar: the value's name in the help (``OUT``, ``STACK.tif``, ``CKPT``, ...).
        help: the option's help.
        default: the default value (None: ``-o`` absent, the command chooses, e.g. STACK_fcs).
        required: whether ``-o`` must be given.
        overwrite: ``"folder"`` (an earlier result folder of the command may be replaced),
            ``"file"`` (an existing .tif) or None (no ``--overwrite``: a training run folder is
            resumed instead).
    """
    p.add_argument("-o", "--output", required=required, default=default, metavar=metavar, help=help)
    if overwrite is not None:
        add_overwrite(p, file=overwrite == "file")


def add_training_options(t: argparse.ArgumentParser, recipes: Iterable[str] | None) -> None:
    """``--config`` (one of ``recipes``), ``--steps``, ``--seed`` and ``-o CKPT`` of a ``train`` subcommand."""
    t.add_argument("--config", required=True, choices=recipes, help="network and scale (-small: CPU-sized)")
    t.add_argument("--steps", type=positive(int), default=None, help="training steps (default: the config's)")
    t.add_argument("--seed", type=int, default=0, help="random seed of the initialisation and the simulations")
    add_output(t, "CKPT", "run folder: checkpoints, metrics, loss.png", required=True, overwrite=None)


# ------------------------------------------------------------------------------------------------
# Inputs and outputs


def destination(args, kind: str, default_suffix: str | None = None) -> tuple[Path, str]:
    """The output folder (``-o`` or STACK + ``default_suffix``), checked before any work starts.

    Returns:
        (folder, label for messages); raises InputError when the folder may not be written.
    """
    from fluojax import io

    if args.output is None:
        out = Path(Path(args.stack).with_suffix("").as_posix() + str(default_suffix))
        label = f"output folder {out} (the default; choose another with -o)"
    else:
        out, label = Path(args.output), f"-o {args.output}"
    io.check_output_folder(out, kind, args.overwrite, label)
    return out, label


def read_timed_stack(path: str, frame_interval: float | None, option: str):
    """Read the TIFF stack at ``path`` and its frame interval (``frame_interval`` from ``option``,
    else the TIFF's ImageJ metadata; :func:`fluojax.io.frame_interval_s`).

    Returns:
        (stack (T, Y, X), frame interval in s).
    """
    from fluojax import io

    stack, meta = io.read_stack(path)
    return stack, io.frame_interval_s(frame_interval, meta, option, path)


def learned_module(technique: str, what: str):
    """``fluojax.TECHNIQUE.learned``, or one InputError line when this installation lacks it.

    Arguments:
        technique: ``"fcs"``, ``"frap"``, ``"smlm"``.
        what: what its networks are called in the message (``"SMLM networks"``).
    """
    import importlib

    from fluojax.io import InputError

    name = f"fluojax.{technique}.learned"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        raise InputError(f"{what} are not available: {name} is missing from this installation") from None


def recipe_names(technique: str) -> list[str] | None:
    """The names of ``fluojax.TECHNIQUE.learned.RECIPES`` for ``train --config`` (imports jax and
    flax), or None when that module is missing (``train`` then refuses with one line)."""
    import importlib

    name = f"fluojax.{technique}.learned"
    try:
        return sorted(importlib.import_module(name).RECIPES)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        return None


def load_network(learned, path: str, option: str = "--net", **kwargs):
    """``learned.load_network(path, **kwargs)``, its refusals (ValueError) as one-line InputErrors."""
    from fluojax.io import InputError

    try:
        return learned.load_network(path, **kwargs)
    except ValueError as err:
        raise InputError(f"{option} {path}: {err}") from None


def warn(warnings: Iterable[str]) -> None:
    """One ``fluojax: warning:`` line on stderr per warning."""
    for w in warnings:
        print(f"fluojax: warning: {w}", file=sys.stderr)


def failed(stack: str, reason: str, out: Path) -> int:
    """The line on stderr for a run whose results are written but whose fit failed; returns exit code 3."""
    print(f"fluojax: error: {stack}: {reason}; details in {out}/summary.json (exit code 3)", file=sys.stderr)
    return 3


def fmt(value, spec: str = ".4g") -> str:
    """A number for a summary line, or "n/a" for None (nothing fitted)."""
    return "n/a" if value is None else format(value, spec)


# ------------------------------------------------------------------------------------------------
# Training


def check_run_folder(out: Path) -> None:
    """Refuse (InputError) a ``train -o`` folder that is neither new, empty nor a fluojax run."""
    from fluojax import train as training
    from fluojax.io import InputError

    try:
        training.check_run_folder(out)
    except ValueError as err:
        raise InputError(f"-o {err}") from None


def resume_refusal(out: Path, err, recipes, config: str | None = None) -> str:
    """The one-line refusal for ``train`` on a run folder holding another run (``fluojax.train.RunMismatch``).

    ``config``: the recipe asked for; when it is the saved run's own, the recipe's definition
    differs from the run's (a run of another fluojax version) and no option can resume it.
    """
    recipe, step = err.saved.get("recipe"), err.step
    if recipe not in recipes:
        return f"-o {out} holds a {recipe or 'non-fluojax'} run (step {step}) of another command; use another folder"
    if any(not d.startswith("train_config.") for d in err.differs):
        if recipe == config:
            return (
                f"-o {out} holds a {recipe} run (step {step}) whose recipe differs from this version's "
                f"({', '.join(err.differs)}); use another folder"
            )
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


def run_training(args, learned, loss: str, ylabel: str, **kwargs) -> int:
    """``fluojax TECHNIQUE train``: train (or resume) ``learned.RECIPES[args.config]`` in ``-o``.

    Writes the run folder (checkpoints and metrics, by ``learned.train_recipe``) and ``loss.png``,
    and prints one line.

    Arguments:
        args: the parsed ``config``, ``steps``, ``seed`` and ``output``.
        learned: the technique's ``learned`` module (``RECIPES``, ``train_recipe``).
        loss: what the held-out loss is, for the printed line (e.g. ``"MSE of ln D"``).
        ylabel: the loss axis of ``loss.png``.
        **kwargs: further arguments of ``learned.train_recipe`` (e.g. ``pool_stacks``).

    Returns:
        exit code 0; bad input raises InputError.
    """
    import numpy as np

    from fluojax import train as training
    from fluojax.io import InputError
    from fluojax.plotting import plot_training

    if args.config not in learned.RECIPES:
        raise InputError(f"--config {args.config}: unknown; choose from {', '.join(sorted(learned.RECIPES))}")
    out = Path(args.output)
    check_run_folder(out)
    t0 = time.perf_counter()
    try:
        _, history = learned.train_recipe(args.config, out, steps=args.steps, seed=args.seed, **kwargs)
    except training.RunMismatch as err:  # checked before anything is built
        raise InputError(resume_refusal(out, err, learned.RECIPES, args.config)) from None
    except ValueError as err:  # e.g. a checkpoint that does not fit the network
        raise InputError(str(err)) from None
    from fluojax import distributed

    if not distributed.is_writer():  # a multi-host run: process 0 writes the figure and the line
        return 0
    plot_training(out / "loss.png", history, ylabel=ylabel)
    rate = [r for r in history.samples_per_s if r == r]
    print(
        f"{args.config}: {history.step[-1]} steps, held-out {loss} {history.eval_loss[0]:.3g} -> {history.eval_loss[-1]:.3g}, "
        f"{np.median(rate) if rate else float('nan'):.0f} samples/s, {time.perf_counter() - t0:.0f} s -> {out}/"
    )
    return 0
