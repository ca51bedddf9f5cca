"""Helper processes forked before a command imports JAX, to work on the other core meanwhile.

A command spends its first half second importing JAX on one core. A process forked before that
import (a copy of the command as it is then: NumPy and the command line parsed, nothing of JAX)
can meanwhile import and load what it needs on another core: matplotlib to draw the figures
(:class:`fluojax.plotting.FigureProcess`), numba and the correlator's CPU kernel to reduce the
first stack (:class:`fluojax.fcs.reduction.ReductionProcess`). The helper talks to the command
over a pipe; the command falls back to doing the work itself should the helper be gone.

Forking needs Linux (``fork``), and must happen before JAX is imported: forking a process that
runs JAX's threads is unsafe, so :func:`start` then returns None.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["start"]


def start(serve: Callable[[Any], None], name: str) -> tuple[Any, Any] | None:
    """Fork a daemon process running ``serve(connection)``; returns ``(process, connection)``.

    Arguments:
        serve: the helper's main function; it gets its end of a duplex pipe and returns when done.
        name: the process's name (``ps``).

    Returns:
        (``multiprocessing.Process``, the command's end of the pipe), or None outside Linux or
        once JAX is imported.
    """
    if sys.platform != "linux" or "jax" in sys.modules:
        return None
    import multiprocessing

    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_run, args=(serve, child, parent, os.getpid()), name=name, daemon=True)
    process.start()
    child.close()
    return process, parent


def _run(serve: Callable[[Any], None], connection, command_end, command_pid: int) -> None:
    """The helper's start: end with the command, close the command's end of the pipe, serve
    (should ``serve`` fail, the helper ends quietly; the command sees its pipe close).

    The kernel kills the helper when the command ends, however it ends (``PR_SET_PDEATHSIG``:
    a batch system's SIGTERM or SIGKILL to the command included; without it the helper, blocked
    reading the pipe, would live on: its copy of the command's end, or another helper's, keeps
    the pipe open).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the helper then ends when its pipe closes
        pass
    if os.getppid() != command_pid:  # the command ended before prctl took effect
        os._exit(0)
    command_end.close()
    try:
        serve(connection)
    except BaseException:  # no traceback on the command's terminal: it does the work itself
        os._exit(1)


_PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the kernel sends this process when its parent ends."""
