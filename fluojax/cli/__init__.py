"""The ``fluojax`` command: TIFF stacks in, parameter maps and plots out.

    fluojax fcs fit STACK.tif --frame-time S [optics] [-o OUT]   per-pixel Imaging FCS
    fluojax fcs fit A.tif B.tif ... | FOLDER [options] [-o OUT]  many stacks: OUT/<name>/ each + OUT/summary.json
    fluojax fcs simulate [settings] -o STACK.tif                 a simulated stack
    fluojax fcs train --config NAME [--steps N] -o CKPT          train FCSNet/ImFCSNet on simulations
    fluojax fcs predict STACK.tif --net CKPT [--overlap] -o OUT  a network's D map + physics check
    fluojax fcs compare [--fcsnet CKPT] [--imfcsnet CKPT] -o REP networks vs least squares on simulations
    fluojax demo [-o OUT]                                        the main job on a built-in stack, each
                                                                 region's median D with its standard error
    fluojax --version                                            the installed version

    fluojax frap fit STACK.tif --roi circle:X,Y,R [--prebleach 10 --bleach 4] [--dt S]
                     [--pixel-size UM] [--starts 30] [-o OUT]    ROI recovery curve -> D, c0, alpha
    fluojax frap fit A.tif B.tif ... | FOLDER --roi circle:X,Y,R [...] [-o OUT]   the same for FRAP (one ROI for all)
    fluojax frap simulate [--d UM2_S --c0 --alpha --noise-a A] [frames, geometry] -o STACK.tif
    fluojax frap train --config NAME [--steps N] [--seed S] -o CKPT   train a DeepFRAP network
    fluojax frap predict STACK.tif --net CKPT --roi circle:X,Y,R [...] [-o OUT]  network + LM refine

    fluojax smlm simulate [--preset 2d|quadplane-paper|...] [--frames N] -o OUT  stack.tif + truth.csv
    fluojax smlm localize STACK.tif [--method mle|net --net CKPT] [--psf ...] [--pixel-size NM]
                     [camera: --baseline --e-per-adu --em-gain --qe | --scmos-*] [-o LOCS.csv]
                                                                 ThunderSTORM CSV + super-resolution PNG
    fluojax smlm train --config NAME [--steps N] -o CKPT        train the voxel-wise network
    fluojax smlm evaluate LOCS.csv --truth TRUTH.csv [-o M.json] SMLM Challenge 2016 metrics

    fluojax sofi STACK.tif [--order 2-4] [--linearize root|adaptive|none] [--bsofi] [--fwhm PX]
                     [--block-frames N] [-o OUT]                SOFI images (TIFF + PNG) and summary.json
    fluojax sofi simulate [--preset NAME] [--frames N] -o OUT    a blinking movie, its truth and emitters
    fluojax sofi train --config NAME [--steps N] -o RUN          train the 20-frame network
    fluojax sofi predict STACK.tif --net RUN [--windows|--stride N] [-o OUT]  the network's order-2 image

Compiled code is kept between runs in JAX's persistent compilation cache (:mod:`fluojax.cache`):
``$XDG_CACHE_HOME/fluojax/jax`` or ``~/.cache/fluojax/jax``, moved by ``FLUOJAX_CACHE_DIR=DIR``,
disabled by ``FLUOJAX_CACHE_DIR=`` (empty) or ``FLUOJAX_NO_CACHE=1``.

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
``fcs fit`` exits with code 3 when no pixel could be fitted. Several stacks or a folder (``fcs fit``,
``frap fit``): one result folder per stack (``OUT/<stack name>/`` with ``-o OUT``, else
``STACK_fcs``/``STACK_frap`` beside each) and ``OUT/summary.json``; every output folder is checked
before the first stack is read; a bad stack is reported in one line and the others are fitted; the
exit code is 2 if any stack was refused as bad input, else 3 if any fit failed, else 0.
docs/refusals.md lists every refusal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = ["main", "run"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``fluojax: error: MESSAGE (see 'fluojax SUB --help')``, exit 2.

    Its subcommands are :class:`_LazySubcommands`: a subcommand's options are added only when it
    is chosen.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _LazySubcommands)

    def _check_value(self, action, value):
        if isinstance(action, _LazySubcommands) and action.takes_implicitly(value):
            return  # the implicit subcommand's argument, not an unknown subcommand
        super()._check_value(action, value)

    def error(self, message):
        command = self.prog.split(" ", 1)[1] + " " if " " in self.prog else ""
        message = " ".join(str(message).split())
        self.exit(2, f"fluojax: error: {message} (see 'fluojax {command}--help')\n")


class _LazySubcommands(argparse._SubParsersAction):
    """Subcommands whose options are added when the subcommand is chosen.

    ``add_parser(name, build=fn, ...)`` registers ``fn(parser)``, called once with the
    subcommand's parser just before it parses its arguments. ``fluojax --help`` and
    ``fluojax fcs --help`` then list the subcommands without importing what their options need
    (jax for the training recipes' names or the DeepFRAP defaults), so they answer at once.
    With :attr:`implicit` set (:func:`imply_subcommand`), a first argument that is neither a
    subcommand's name nor an option is the first argument of that subcommand.
    """

    implicit: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._builders: dict[str, Callable[[argparse.ArgumentParser], None]] = {}

    def add_parser(self, name, *, build=None, **kwargs):
        parser = super().add_parser(name, **kwargs)
        if build is not None:
            self._builders[name] = build
        return parser

    def takes_implicitly(self, value) -> bool:
        """Whether ``value`` is the first argument of the implicit subcommand (not a name, not an option)."""
        return (
            self.implicit is not None
            and isinstance(value, str)
            and value not in self._name_parser_map
            and not value.startswith("-")
        )

    def build(self, name: str) -> None:
        """Add the options of subcommand ``name`` (once)."""
        builder = self._builders.pop(name, None)
        if builder is not None:
            builder(self._name_parser_map[name])

    def __call__(self, parser, namespace, values, option_string=None):
        if self.takes_implicitly(values[0] if values else None):
            values = [self.implicit, *values]
        if values and values[0] in self._builders:
            self.build(values[0])
        super().__call__(parser, namespace, values, option_string)


def imply_subcommand(subparsers: argparse.Action, name: str) -> None:
    """Make a first argument that is neither a subcommand's name nor an option the first argument
    of subcommand ``name``: ``fluojax sofi STACK.tif`` is ``fluojax sofi image STACK.tif``, while
    ``fluojax sofi simulate`` stays ``simulate``.

    Arguments:
        subparsers: what ``add_subparsers`` returned on a parser of this command.
        name: the implied subcommand (already added or added later).
    """
    assert isinstance(subparsers, _LazySubcommands)
    subparsers.implicit = name


class _Version(argparse.Action):
    """``--version``: print ``fluojax VERSION`` and exit 0 (the version is read only when asked for)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import fluojax

        print(f"fluojax {fluojax.__version__}")
        parser.exit(0)


def _build_fcs(p: argparse.ArgumentParser) -> None:
    from fluojax.cli import fcs

    fcs.add_parsers(p)


def _build_frap(p: argparse.ArgumentParser) -> None:
    from fluojax.cli import frap

    frap.add_parsers(p)


def _build_smlm(p: argparse.ArgumentParser) -> None:
    from fluojax.cli import smlm

    smlm.add_parsers(p)


def _build_sofi(p: argparse.ArgumentParser) -> None:
    from fluojax.cli import sofi

    sofi.add_parsers(p)


def _build_demo(p: argparse.ArgumentParser) -> None:
    from fluojax.cli import fcs

    fcs.add_demo_arguments(p)


def _parser() -> argparse.ArgumentParser:
    """The ``fluojax`` parser; each subcommand's options are added when it is chosen."""
    top = _Parser(prog="fluojax", description="Differentiable fluorescence-microscopy analysis in JAX.")
    top.add_argument("--version", action=_Version, help="print the installed version and exit")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("fcs", help="Imaging FCS", build=_build_fcs)
    sub.add_parser("frap", help="FRAP (DeepFRAP's diffusion model)", build=_build_frap)
    sub.add_parser("smlm", help="single-molecule localization (2D and quad-plane)", build=_build_smlm)
    sub.add_parser("sofi", help="SOFI: cross-cumulant images, simulation, the 20-frame network", build=_build_sofi)
    sub.add_parser("demo", help="simulate a stack with three D regions, fit it, compare", build=_build_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    """The ``fluojax`` command with arguments ``argv`` (default ``sys.argv[1:]``); returns its exit
    code. Turns on the compilation cache first (:func:`fluojax.cache.enable_compilation_cache`)."""
    from fluojax.cache import enable_compilation_cache, quiet_cache_load_errors

    quiet_cache_load_errors()  # before parsing, which imports JAX for the `train` commands
    args = _parser().parse_args(argv)
    from fluojax.io import InputError

    enable_compilation_cache()  # compiled code is kept between runs (FLUOJAX_CACHE_DIR, FLUOJAX_NO_CACHE)

    try:
        from fluojax import distributed

        distributed.initialize_from_env()  # a multi-host run (docs/scaling.md); jax only if asked
        if args.command == "demo":
            from fluojax.cli.fcs import demo_command

            return demo_command(args)
        if args.command == "frap":
            from fluojax.cli import frap

            return frap.HANDLERS[args.frap_command](args)
        if args.command == "smlm":
            from fluojax.cli import smlm

            return smlm.HANDLERS[args.smlm_command](args)
        if args.command == "sofi":
            from fluojax.cli import sofi

            return sofi.HANDLERS[args.sofi_command](args)
        from fluojax.cli import fcs

        return fcs.HANDLERS[args.fcs_command](args)
    except InputError as err:
        print(f"fluojax: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fluojax: interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The ``fluojax`` console script and ``python -m fluojax``: :func:`main`, then exit.

    When the command has returned and no other non-daemon thread is running, the process runs
    its ``atexit`` handlers, flushes stdout and stderr and leaves with ``os._exit``, skipping
    the interpreter's teardown (destroying XLA's and numba's runtimes and every module: 0.3-1 s
    on a 2-core machine, which a finished command does not need). An exception or ``SystemExit``
    from :func:`main` (``--help``, argparse errors) leaves the usual way.
    """
    import atexit
    import os
    import threading

    code = main()
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.exit(code)  # work still running in another thread: Python joins it at exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
