"""Option types and output helpers shared by the ``fluojax`` subcommands.

Nothing here imports jax or numpy at import time: building the parser stays fast.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = [
    "add_overwrite",
    "check_run_folder",
    "destination",
    "fmt",
    "non_negative",
    "positive",
    "resume_refusal",
]


def positive(kind):
    """argparse type: a finite number of ``kind`` (int or float) above 0."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive (got {text})")
        return value

    return parse


def non_negative(kind):
    """argparse type: a finite number of ``kind`` (int or float) >= 0."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0 (got {text})")
        return value

    return parse


def add_overwrite(p: argparse.ArgumentParser, file: bool = False) -> None:
    """``--overwrite``: for a .tif file (``file``) or for an earlier result folder of the command."""
    if file:
        p.add_argument("--overwrite", action="store_true", help="replace an existing .tif file at -o")
    else:
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an earlier result of this command at OUT (nothing else is ever replaced)",
        )


def destination(args, kind: str, default_suffix: str | None = None) -> tuple[Path, str]:
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


def check_run_folder(out: Path) -> None:
    """Refuse (InputError) a ``train -o`` folder that is neither new, empty nor a fluojax run."""
    from fluojax import train as training
    from fluojax.io import InputError

    try:
        training.check_run_folder(out)
    except ValueError as err:
        raise InputError(f"-o {err}") from None


def resume_refusal(out: Path, err, recipes) -> str:
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


def fmt(value, spec: str = ".4g") -> str:
    """A number for a summary line, or "n/a" for None (nothing fitted)."""
    return "n/a" if value is None else format(value, spec)
