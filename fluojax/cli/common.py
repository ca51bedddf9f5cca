"""Option types, shared options and the steps every technique's subcommands share.

A technique's command-line module (``cli/fcs.py``, ``cli/frap.py``) parses its own options and
calls its library; what two of them would otherwise write twice lives here: the number types,
the ``-o``/``--overwrite`` and training options, the checked output folder, reading a stack with
its frame interval, loading a network, the ``train`` command, the closing lines (warnings,
exit code 3) and the loop of a ``fit`` over many stacks (:func:`fit_stacks`).

Nothing here imports jax or numpy at import time: building the parser stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BATCH_SUMMARY",
    "EXIT_CODES",
    "STACK_SUFFIXES",
    "StackFit",
    "add_numbers",
    "add_output",
    "add_overwrite",
    "add_stacks",
    "add_training_options",
    "check_run_folder",
    "destination",
    "failed",
    "fit_stacks",
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
    """``--config`` (one of ``recipes``), ``--steps``, ``--seed``, ``--time-limit`` and ``-o CKPT`` of a ``train``
    subcommand."""
    t.add_argument("--config", required=True, choices=recipes, help="network and scale (-small: CPU-sized)")
    t.add_argument("--steps", type=positive(int), default=None, help="training steps (default: the config's)")
    t.add_argument("--seed", type=int, default=0, help="random seed of the initialisation and the simulations")
    t.add_argument(
        "--time-limit",
        type=positive(float),
        default=None,
        metavar="S",
        help="stop, after a checkpoint, once this many seconds of training have passed (not counting the data "
        "simulated first); the same command resumes",
    )
    add_output(t, "CKPT", "run folder: checkpoints, metrics, loss.png", required=True, overwrite=None)


# ------------------------------------------------------------------------------------------------
# Inputs and outputs


def _default_output(stack: str, default_suffix: str | None) -> tuple[Path, str]:
    """STACK + ``default_suffix`` beside the stack, and its label for messages."""
    out = Path(Path(stack).with_suffix("").as_posix() + str(default_suffix))
    return out, f"output folder {out} (the default; choose another with -o)"


def destination(args, kind: str, default_suffix: str | None = None) -> tuple[Path, str]:
    """The output folder (``-o`` or STACK + ``default_suffix``), checked before any work starts.

    Returns:
        (folder, label for messages); raises InputError when the folder may not be written.
    """
    from fluojax import io

    if args.output is None:
        out, label = _default_output(args.stack, default_suffix)
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
# Many stacks in one command

STACK_SUFFIXES = (".tif", ".tiff")
"""The files a folder argument stands for (any case; hidden files excluded)."""

BATCH_SUMMARY = "summary.json"
"""The overall summary of a many-stack run, in ``-o OUT``."""

EXIT_CODES = (
    "2 when any stack was refused as bad input (one line each, nothing written for it), "
    "else 3 when any stack's fit failed (its results written), else 0"
)
"""The exit code of a many-stack ``fit``."""

StackFit = Callable[[str, Path, str], tuple[int, str]]
"""The ``fit`` of one stack: ``(stack, output folder, its label for messages) -> (exit code,
result)``. The code is 0 (fitted) or 3 (results written, the fit failed, its line printed);
``result`` is a short line for the overall summary. Bad input raises InputError (nothing written)."""

_SIBLING = re.compile(r"\..+\.fluojax-(staging|old|partial)-")
"""A hidden staging, old or partial sibling of a result being written (:mod:`fluojax.io`)."""


def add_stacks(p: argparse.ArgumentParser, what: str = "TIFF stack (frames, Y, X)") -> None:
    """The ``stack`` argument of a ``fit``: one TIFF stack, several, or folders of them."""
    p.add_argument(
        "stack",
        nargs="+",
        help=f"{what}; several stacks, or a folder (its .tif/.tiff files, sorted), give one result folder each",
    )


def fit_stacks(args, kind: str, default_suffix: str, setup: Callable[[Any], StackFit]) -> int:
    """A ``fit`` command of one stack or of many: outputs checked, options checked, stacks fitted in turn.

    One stack (``args.stack`` a single file) is the single-stack command, unchanged: ``-o OUT``
    (default STACK + ``default_suffix``) is its result folder. Several stacks, or a folder (its
    .tif/.tiff files, sorted): each stack gets a complete result folder of its own, written
    atomically by :func:`fluojax.io.result_folder` as a one-stack run writes it:
    ``OUT/<stack name>/`` with ``-o OUT``, plus ``OUT/summary.json`` listing every stack's outcome;
    without ``-o``, where a one-stack run would put it. Before any stack is read, two stacks that
    would write the same folder are refused, ``OUT`` and every result folder are checked
    (:func:`fluojax.io.check_output_folder`'s rules; ``OUT`` may hold only fluojax results of this
    command and their summary) and ``setup`` checks the options the stacks share; any of these
    refuses the whole command (exit 2, nothing written). Then a stack refused as bad input is
    reported in one line on stderr and the next one is fitted; a line per stack on stderr shows
    the overall progress, and a table on stdout ends the run. The library's jitted functions
    compiled for the first stack serve every later stack of the same shape and settings (the
    batched fits compile per power-of-two bucket of the number of fits: docs/refusals.md).

    Arguments:
        args: the parsed options: ``stack`` (a list of paths, or one path), ``output``, ``overwrite``.
        kind: the result kind, e.g. ``"fcs-fit"``.
        default_suffix: of the default output folder, STACK + suffix (``"_fcs"``).
        setup: ``setup(args) -> fit_one`` (:data:`StackFit`): checks the options shared by all
            stacks (an InputError refuses the command) and returns the fit of one stack.

    Returns:
        the exit code: with one stack its own, with many :data:`EXIT_CODES`.
    """
    from fluojax import io

    given = [args.stack] if isinstance(args.stack, str | Path) else list(args.stack)
    if len(given) == 1 and not Path(given[0]).is_dir():
        args.stack = str(given[0])
        out, label = destination(args, kind, default_suffix)
        return setup(args)(args.stack, out, label)[0]
    plan = _plan_outputs(list_stacks(given), args.output, default_suffix)
    batch = None if args.output is None else Path(args.output)
    if batch is not None:
        _check_batch_folder(batch, kind, args.overwrite)
    for _, out, label in plan:
        io.check_output_folder(out, kind, args.overwrite, label)
    return _fit_each(plan, setup(args), kind, batch)


def list_stacks(given: Sequence[str | Path]) -> list[str]:
    """The stacks of the arguments: a file as given, a folder as its .tif/.tiff files (sorted)."""
    from fluojax.io import InputError

    stacks = []
    for arg in map(str, given):
        if not Path(arg).is_dir():
            stacks.append(arg)
            continue
        try:
            names = sorted(
                e.name
                for e in os.scandir(arg)
                if not e.name.startswith(".") and Path(e.name).suffix.lower() in STACK_SUFFIXES and e.is_file()
            )
        except OSError as err:
            raise InputError(f"{arg}: the folder cannot be read ({err.strerror or err})") from None
        if not names:
            raise InputError(f"{arg}: a folder holding no .tif or .tiff stack")
        stacks += [os.path.join(arg, name) for name in names]
    return stacks


def _plan_outputs(stacks: list[str], output: str | None, default_suffix: str) -> list[tuple[str, Path, str]]:
    """(stack, result folder, its label) of each stack; refuses two stacks writing one folder."""
    from fluojax.io import InputError

    plan: list[tuple[str, Path, str]] = []
    seen: dict[str, str] = {}
    for stack in stacks:
        if output is None:
            out, label = _default_output(stack, default_suffix)
        else:
            out = Path(output) / Path(stack).with_suffix("").name
            label = f"output folder {out}"
        key = os.path.abspath(out)
        if key in seen:
            raise InputError(
                f"{seen[key]} and {stack} would both be written to {out}; rename one, or fit them in separate commands"
            )
        seen[key] = stack
        plan.append((stack, out, label))
    return plan


def _is_batch_entry(path: Path, kind: str) -> bool:
    """Whether ``path`` in a many-stack ``OUT`` is fluojax's: a ``kind`` result (or an empty folder), or the summary."""
    import json

    from fluojax import io

    if path.is_symlink():
        return False
    if path.is_dir():
        try:
            io.check_output_folder(path, kind, True)
        except io.InputError:
            return False
        return True
    if path.name != BATCH_SUMMARY or not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("kind") == f"{kind}-batch"


def _check_batch_folder(batch: Path, kind: str, overwrite: bool) -> None:
    """Refuse (InputError) a many-stack ``-o OUT`` that is neither new, empty nor results of this command.

    ``OUT`` holding earlier results of this command needs ``overwrite``; the results of these
    stacks are then replaced, the others left as they are, and ``summary.json`` rewritten.
    """
    from fluojax import io

    label = f"-o {batch}"
    path = Path(os.path.abspath(batch))
    if not path.is_dir() or path.is_symlink():
        io.check_output_folder(path, kind, overwrite, label)  # new, or refused (a file, a link, a bad parent)
        return
    try:
        entries = [e for e in os.listdir(path) if not _SIBLING.match(e)]
    except OSError as err:
        raise io.InputError(f"{label}: cannot be read ({err.strerror}); nothing was touched") from None
    if not entries:
        return
    if io.RESULT_MARKER in entries:
        raise io.InputError(
            f"{label}: holds a fluojax result of one stack, not the results of several; nothing was touched; "
            "choose another folder"
        )
    foreign = [e for e in entries if not _is_batch_entry(path / e, kind)]
    if foreign:
        raise io.InputError(
            f"{label}: a folder that is not a fluojax {kind} result of several stacks ({io.describe_entries(foreign)}); "
            "nothing was touched; choose a new or empty folder"
        )
    if not overwrite:
        raise io.InputError(f"{label}: holds earlier fluojax {kind} results; pass --overwrite to replace them")


def _about(stack: str, message: str) -> str:
    """``message`` with the stack's name in front (once)."""
    return message if message.startswith(f"{stack}:") else f"{stack}: {message}"


def _fit_each(plan: list[tuple[str, Path, str]], fit_one: StackFit, kind: str, batch: Path | None) -> int:
    """Fit each planned stack, past refusals and failures; the overall summary; the exit code."""
    from fluojax import io

    rows: list[dict] = []
    t0 = time.perf_counter()
    for i, (stack, out, label) in enumerate(plan, 1):
        elapsed = time.perf_counter() - t0
        left = f", ~{elapsed / (i - 1) * (len(plan) - i + 1):.0f} s left" if i > 1 else ""
        print(f"fluojax: stack {i}/{len(plan)}: {stack}, {elapsed:.0f} s elapsed{left}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        written = False
        try:
            code, result = fit_one(stack, out, label)
            status, written = ("fitted" if code == 0 else "failed"), True
        except io.InputError as err:
            message = _about(stack, str(err))
            print(f"fluojax: error: {message}", file=sys.stderr)
            status, code, result = "refused", 2, message
        except Exception as err:  # one stack's unexpected failure must not cost the others theirs
            message = _about(stack, f"unexpected {type(err).__name__}: {' '.join(str(err).split())}")
            print(f"fluojax: error: {message} (exit code 3)", file=sys.stderr)
            status, code, result = "failed", 3, message
        rows.append(
            {
                "input": stack,
                "output": (out.name if batch is not None else str(out)) if written else None,
                "status": status,
                "exit_code": code,
                "result": result.removeprefix(f"{stack}: "),
                "seconds": round(time.perf_counter() - t, 3),
            }
        )
    codes = {row["exit_code"] for row in rows}
    code = 2 if 2 in codes else 3 if 3 in codes else 0
    counts = {s: sum(row["status"] == s for row in rows) for s in ("fitted", "failed", "refused")}
    summary = {
        "kind": f"{kind}-batch",
        "stacks": len(rows),
        **counts,
        "exit_code": code,
        "exit_code_rule": EXIT_CODES,
        "results": rows,
        "timings_s": {"total": time.perf_counter() - t0},
    }
    where = ""
    from fluojax import distributed

    if batch is not None and any(row["output"] for row in rows) and distributed.is_writer():
        with io.result_file(batch / BATCH_SUMMARY, True, (".json",), f"-o {batch}") as tmp:
            io.write_json(tmp, summary)
        where = f" -> {batch / BATCH_SUMMARY}"
    print(
        f"{len(rows)} stacks: {counts['fitted']} fitted, {counts['failed']} failed, {counts['refused']} refused "
        f"in {summary['timings_s']['total']:.1f} s (exit code {code}){where}"
    )
    width = max(len(row["input"]) for row in rows)
    for row in rows:
        print(f"  {row['status']:<8} {row['input']:<{width}}  {row['result']}")
    return code


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
        args: the parsed ``config``, ``steps``, ``seed``, ``time_limit`` and ``output``.
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
        _, history = learned.train_recipe(
            args.config, out, steps=args.steps, seed=args.seed, time_limit_s=args.time_limit, **kwargs
        )
    except training.RunMismatch as err:  # checked before anything is built
        raise InputError(resume_refusal(out, err, learned.RECIPES, args.config)) from None
    except ValueError as err:  # e.g. a checkpoint that does not fit the network
        raise InputError(str(err)) from None
    from fluojax import distributed

    if not distributed.is_writer():  # a multi-host run: process 0 writes the figure and the line
        return 0
    plot_training(out / "loss.png", history, ylabel=ylabel)
    rate = [r for r in history.samples_per_s if r == r]
    total = args.steps or learned.RECIPES[args.config].train.steps
    done = int(history.step[-1])
    stopped = f" (of {total}: time limit; the same command resumes)" if done < total else ""
    print(
        f"{args.config}: {done} step{'' if done == 1 else 's'}{stopped}, held-out {loss} {history.eval_loss[0]:.3g} -> "
        f"{history.eval_loss[-1]:.3g}, {np.median(rate) if rate else float('nan'):.0f} samples/s, "
        f"{time.perf_counter() - t0:.0f} s -> {out}/"
    )
    return 0
