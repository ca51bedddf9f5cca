"""Every figure fluojax draws: a D map with its histogram, a training curve, a FRAP recovery
curve with its fits and residuals, the estimator comparison report and a super-resolution image.

Each function draws one PNG file with matplotlib's Agg backend (no display needed); matplotlib
is imported when a figure is drawn, not with this module. A command can instead draw them in a
:class:`FigureProcess` started before its own heavy imports, so that matplotlib's import (~0.35 s
on a 2-core machine) runs beside them on another core.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from fluojax.compare import ComparisonReport

__all__ = [
    "FigureProcess",
    "plot_d_map",
    "plot_recovery",
    "plot_report",
    "plot_super_resolution",
    "plot_training",
    "start_figure_process",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    return matplotlib, plt


def plot_d_map(path: str | Path | BinaryIO, maps, title: str) -> None:
    """A D map (grey: not fitted; colours between its 2nd and 98th percentiles) beside the
    histogram of D on a log axis with its median.

    Arguments:
        path: PNG file to write (or a binary file object).
        maps: anything with a ``d_um2_s`` (H, W) map in um^2/s, NaN where not fitted
            (``fluojax.fcs.pipeline.FCSMaps``).
        title: figure title.
    """
    # drawn on a bare Figure (no pyplot: ~0.1-0.4 s less import on a warm `fluojax fcs fit`) with
    # fixed margins (tight_layout would draw the figure twice)
    import matplotlib
    import matplotlib.ticker
    from matplotlib.figure import Figure

    d = maps.d_um2_s
    fig = Figure(figsize=(10, 4.2))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.13, top=0.86, wspace=0.22)
    ax_map, ax_hist = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    finite = d[np.isfinite(d)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0, 1)
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
        # plain-number labels: at 1, 2 and 5 times each power of ten when the data span at most
        # two decades (a D map rarely spans one), else at the powers of ten
        decades = np.log10(positive.max() / positive.min()) if positive.size > 1 else 0.0
        subs = (1.0, 2.0, 5.0) if decades <= 2 else (1.0,)
        ax_hist.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
        ax_hist.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax_hist.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        median = float(np.median(finite))
        if median > 0:  # a log axis has no place for a median <= 0 (it is in summary.json)
            ax_hist.axvline(median, color="k", ls="--", label=f"median {median:.3g}")
            ax_hist.legend()
    ax_hist.set_xlabel("D (µm²/s)")
    ax_hist.set_ylabel("pixels")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)


def plot_training(path: str | Path, history, ylabel: str = "MSE of ln D") -> None:
    """Training and held-out loss against the step, on a log axis.

    Arguments:
        path: PNG file to write.
        history: ``fluojax.train.TrainHistory`` (``step``, ``train_loss``, ``eval_loss``; the first
            row, before any step, has no training loss).
        ylabel: what the loss is.
    """
    _, plt = _pyplot()

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


def plot_recovery(path: str | Path, settings, times, data, curves: dict, title: str) -> None:
    """A FRAP recovery curve with model curves (no line through the bleach, shaded grey) and their
    residuals below.

    Arguments:
        path: PNG file to write.
        settings: ``fluojax.frap.models.FrapSettings`` (frame counts and dt in s).
        times: (T,) frame times in s.
        data: (T,) ROI curve (stack units).
        curves: label -> (T,) model curve in the units of ``data``; a curve with a NaN is skipped.
        title: figure title.
    """
    _, plt = _pyplot()

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


def plot_super_resolution(path: str | Path, rendered, title: str, label: str | None = None) -> None:
    """A super-resolution image (localizations per bin, e.g. ``fluojax.smlm.localizations.render``)
    in µm, row 0 at the top, its colours clipped at the 99.5th percentile of the non-empty bins.

    Arguments:
        path: PNG file to write.
        rendered: anything with ``image`` (H, W), ``extent_nm`` (left, right, bottom, top) and
            ``bin_nm`` (``fluojax.smlm.localizations.Rendered``).
        title: figure title.
        label: the colour bar's label (None: localizations per bin).
    """
    _, plt = _pyplot()
    image = np.asarray(rendered.image, np.float64)
    filled = image[image > 0]
    top = float(np.percentile(filled, 99.5)) if filled.size else 1.0
    extent = [v / 1000.0 for v in rendered.extent_nm]
    height, width = image.shape
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * height / max(width, 1) + 0.6))
    im = ax.imshow(image, cmap="hot", vmin=0.0, vmax=top if top > 0 else 1.0, extent=extent, interpolation="nearest")
    if label is None:
        label = f"localizations per {rendered.bin_nm:.3g} nm bin"
    fig.colorbar(im, ax=ax, label=label, shrink=0.8)
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def plot_report(report: ComparisonReport, path: str | Path, *, dpi: int = 120) -> Path:
    """PNG figure: per parameter, estimate vs truth and RMSE vs truth.

    Left panel: median estimate against the true value for each estimator, with its 16-84 %
    band and the identity line. Right panel: RMSE (compared coordinate, i.e. of ln theta for
    log-scale parameters) against the truth, with the CRLB as a dashed line where available.
    Log-scale parameters get log axes. Grid points are ordered by that parameter's true value;
    on a multi-parameter grid, points sharing a value are drawn at the same abscissa. Uses a
    bare Agg canvas, so the pyplot backend of the caller is untouched.

    Arguments:
        report: from :func:`fluojax.compare.compare_estimators`.
        path: output PNG file (parent folders are created).
        dpi: resolution.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_params = len(report.param_names)
    fig = Figure(figsize=(10.0, 3.8 * n_params), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_params, 2, squeeze=False)
    colors = [f"C{i % 10}" for i in range(len(report.estimator_names))]
    for p, pname in enumerate(report.param_names):
        ax_est, ax_err = axes[p]
        order = np.argsort(report.grid[:, p], kind="stable")
        x = report.grid[order, p]
        for e, name in enumerate(report.estimator_names):
            c = colors[e]
            ax_est.fill_between(x, report.q16[e, order, p], report.q84[e, order, p], color=c, alpha=0.2, linewidth=0)
            ax_est.plot(x, report.median[e, order, p], "o-", color=c, label=name, markersize=4)
            ax_err.plot(x, report.rmse[e, order, p], "o-", color=c, label=name, markersize=4)
        lo, hi = float(np.min(x)), float(np.max(x))
        ax_est.plot([lo, hi], [lo, hi], ":", color="0.3", label="identity")
        if np.any(np.isfinite(report.crlb[:, p])):
            ax_err.plot(x, report.crlb[order, p], "--", color="k", label="CRLB")
        coord = f"ln {pname}" if report.log_scale[p] else pname
        ax_est.set(xlabel=f"true {pname}", ylabel=f"estimated {pname}", title=f"{pname}: median and 16–84 %")
        ax_err.set(xlabel=f"true {pname}", ylabel=f"RMSE of {coord}", title=f"{pname}: RMSE")
        if report.log_scale[p]:
            ax_est.set_xscale("log")
            ax_est.set_yscale("log")
            ax_err.set_xscale("log")
        finite = report.rmse[:, :, p][np.isfinite(report.rmse[:, :, p])]
        if finite.size and np.all(finite > 0):
            ax_err.set_yscale("log")
        ax_est.legend(fontsize="small")
        ax_err.legend(fontsize="small")
    fig.savefig(path, dpi=dpi)
    return path


# ------------------------------------------------------------------------------------------------
# Drawing in a helper process


class FigureProcess:
    """A forked process that has imported matplotlib and draws this module's figures on request.

    Started by :func:`start_figure_process` while the command imports JAX and reads its data, it
    imports matplotlib on another core; :meth:`draw` then sends it one figure's arguments and
    returns once the file is written (so a result folder is complete before it is moved into
    place). Should the process be gone, the figure is drawn in the calling process instead.
    """

    def __init__(self, process, connection):
        self._process = process
        self._connection = connection

    def draw(self, name: str, *args) -> None:
        """``name(*args)`` (a drawing function of this module, e.g. ``"plot_d_map"``) in the process.

        Arguments:
            name: the function's name.
            args: its arguments (picklable: paths, NumPy arrays, simple objects).

        Raises:
            RuntimeError: the function failed in the process (its message).
        """
        if self._connection is not None:
            try:
                self._connection.send((name, args))
                error = self._connection.recv()
            except (EOFError, OSError):  # the process is gone: draw here
                self._connection = None
            else:
                if error is not None:
                    raise RuntimeError(f"{name}: {error}")
                return
        globals()[name](*args)

    def close(self) -> None:
        """End the process (every figure asked for is already written; it holds nothing else)."""
        self._connection = None
        self._process.terminate()
        self._process.join(timeout=5)


def start_figure_process() -> FigureProcess | None:
    """A :class:`FigureProcess`, or None where drawing in the calling process is the better choice:
    outside Linux (no ``fork``) and once JAX is imported (forking its threads is unsafe).
    """
    from fluojax import forked

    started = forked.start(_serve, "fluojax-figures")
    return None if started is None else FigureProcess(*started)


def _serve(connection) -> None:
    """The figure process: import matplotlib and draw one throw-away D map (a process's first
    figure loads fonts and fills matplotlib's caches, so the real one is drawn faster), then draw
    each requested figure until told to stop. Ctrl-C is left to the command, which ends this
    process (no second traceback from here)."""
    import io
    import os
    import signal
    from types import SimpleNamespace

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(10)  # the command and its other helper go first: they are on the way to the result
    try:
        import matplotlib

        matplotlib.use("Agg")
        plot_d_map(io.BytesIO(), SimpleNamespace(d_um2_s=np.array([[0.5, 1.0], [2.0, np.nan]])), "warm-up")
    except Exception:  # reported by the first figure that needs it
        pass
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        name, args = job
        try:
            globals()[name](*args)
        except Exception as err:
            connection.send(f"{type(err).__name__}: {' '.join(str(err).split())}")
        else:
            connection.send(None)
