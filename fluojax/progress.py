"""Progress of long work, on a terminal and in logs: one counter for every long loop in fluojax.

``progress(total, desc, unit)`` returns a context-managed counter with ``update(n)``:

* on a terminal (the stream is a tty) it is a tqdm bar;
* otherwise (stderr redirected to a log file, a pipe, a batch system) it writes plain lines such as
  ``fluojax: correlate 12/64 bands (19 %), 3 s elapsed, ~13 s left`` to the stream, at most every
  ``every_s`` seconds (default 10 s) while work is left, plus one line at the end of a report so
  begun. Work that ends before its first line is due (shorter than ``every_s``, or done in one
  step, such as one band behind a long first compilation) writes nothing, so quick commands and
  refusals keep a clean stderr (their one error line stays the only one);
* ``enabled=False`` silences it.

The callers' ``progress: bool | None`` arguments map onto ``enabled``: None (auto) and True give a
bar on a terminal and lines elsewhere, False gives nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["EVERY_S", "Progress", "format_line", "progress"]

EVERY_S = 10.0
"""Shortest interval between two plain progress lines, in s."""


def format_line(
    desc: str,
    n: int,
    total: int | None,
    unit: str,
    elapsed_s: float,
    start: int = 0,
    postfix: str = "",
    eta: bool = True,
) -> str:
    """One plain progress line, e.g. ``fluojax: correlate 12/64 bands (19 %), 3 s elapsed, ~13 s left``.

    Arguments:
        desc: what is counted (``"correlate"``).
        n: items done so far (including ``start``).
        total: items in all, or None when unknown (no percentage, no estimate).
        unit: plural name of the items (``"bands"``), may be empty.
        elapsed_s: seconds since the counter started.
        start: items already done when the counter started (a resumed run); the time left is
            estimated from the rate since then.
        postfix: extra text appended after a comma (e.g. ``"loss=0.12"``).
        eta: include the estimated time left (off for items of very unequal cost, e.g. stages).

    Returns:
        the line, without a newline.
    """
    unit = f" {unit}" if unit else ""
    if total:
        text = f"fluojax: {desc} {n}/{total}{unit} ({100.0 * n / total:.0f} %), {elapsed_s:.0f} s elapsed"
        done = n - start
        if eta and 0 < done and n < total and elapsed_s > 0:
            text += f", ~{(total - n) * elapsed_s / done:.0f} s left"
    else:
        text = f"fluojax: {desc} {n}{unit}, {elapsed_s:.0f} s elapsed"
    return f"{text}, {postfix}" if postfix else text


class Progress:
    """Counter behind :func:`progress` (plain-line or tqdm mode); use it as a context manager.

    Methods:
        update(n=1): n more items done.
        set_postfix(**values): extra ``key=value`` text shown with the count (e.g. the loss).
        set_postfix_str(text): extra free text shown with the count (e.g. the next stage).
        close(): finish (in plain mode, writes the final count unless the last line showed it,
            if any line was written before).
    """

    def __init__(self, total, desc, unit, *, mode, start, stream, clock, every_s, eta=True):
        self.total, self.desc, self.unit, self.mode, self.eta = total, desc, unit, mode, eta
        self.n, self.start, self.stream, self.clock, self.every_s = start, start, stream, clock, every_s
        self.t0 = self.t_last = clock()
        self.lines = 0
        self.n_written = None  # the count of the last line written
        self.postfix = ""
        self.closed = False
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=start, desc=desc, unit=unit or "it", file=stream)

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        if self.bar is not None:
            self.bar.update(int(n))
        elif self.mode == "lines":
            now = self.clock()
            unfinished = self.total is None or self.n < self.total
            if now - self.t_last >= self.every_s and (unfinished or self.lines):
                self._write(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = str(text)
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix)

    def _write(self, now: float) -> None:
        line = format_line(self.desc, self.n, self.total, self.unit, now - self.t0, self.start, self.postfix, self.eta)
        print(line, file=self.stream, flush=True)
        self.t_last, self.n_written = now, self.n
        self.lines += 1

    def close(self, finished: bool = True) -> None:
        """Finish; ``finished=False`` (an exception) writes no final line."""
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "lines" and finished:
            now = self.clock()
            if self.n != self.n_written and self.lines:
                self._write(now)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(finished=exc_type is None)


def progress(
    total: int | None,
    desc: str,
    unit: str = "",
    *,
    enabled: bool | None = None,
    start: int = 0,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    every_s: float = EVERY_S,
    eta: bool = True,
) -> Progress:
    """A progress counter: tqdm bar on a terminal, plain lines on other streams, nothing when disabled.

    Arguments:
        total: number of items, or None when unknown.
        desc: what is counted, e.g. ``"correlate"``.
        unit: plural item name, e.g. ``"bands"``.
        enabled: None or True: bar on a terminal, lines otherwise; False: silent.
        start: items already done (a resumed run).
        stream: where to write (default ``sys.stderr``, looked up at call time).
        clock: time source in s (``time.monotonic``; tests pass a fake one).
        every_s: shortest interval between plain lines, in s.
        eta: show the estimated time left in plain lines (False for items of unequal cost).

    Returns:
        :class:`Progress` (a context manager with ``update(n)`` and ``set_postfix(**values)``).
    """
    stream = sys.stderr if stream is None else stream
    if enabled is False:
        mode = "off"
    else:
        isatty = getattr(stream, "isatty", None)
        mode = "bar" if callable(isatty) and isatty() else "lines"
    return Progress(total, desc, unit, mode=mode, start=start, stream=stream, clock=clock, every_s=every_s, eta=eta)
