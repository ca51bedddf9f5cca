"""Figures written by the ``fluojax`` command: a D map with its histogram, a training curve, a
FRAP recovery curve with its fits and residuals.

Each function draws one PNG file with matplotlib's Agg backend (no display needed); matplotlib
is imported when a figure is drawn, not with this module. (``fluojax.compare.plot_report`` draws
the comparison report.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["plot_d_map", "plot_recovery", "plot_training"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    return matplotlib, plt


def plot_d_map(path: str | Path, maps, title: str) -> None:
    """A D map (grey: not fitted; colours between its 2nd and 98th percentiles) beside the
    histogram of D on a log axis with its median.

    Arguments:
        path: PNG file to write.
        maps: anything with a ``d_um2_s`` (H, W) map in um^2/s, NaN where not fitted
            (``fluojax.fcs.pipeline.FCSMaps``).
        title: figure title.
    """
    matplotlib, plt = _pyplot()
    d = maps.d_um2_s
    fig, (ax_map, ax_hist) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.1, 1]})
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
        ax_hist.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax_hist.axvline(np.median(finite), color="k", ls="--", label=f"median {np.median(finite):.3g}")
        ax_hist.legend()
    ax_hist.set_xlabel("D (µm²/s)")
    ax_hist.set_ylabel("pixels")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
