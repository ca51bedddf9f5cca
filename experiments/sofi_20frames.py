"""Experiment: SOFI from 20 and 100 frames vs the 20-frame network vs the ground truth (Komen 2024, appendix E).

On simulated microtubules over the thesis's density x SNR grid (:func:`fluojax.sofi.simulate.thesis_preset`:
density levels 0-2 = off-time 600/1200/2400 ms, SNR levels 0-3 = I_on 100/80/60/40 photons per frame,
100 frames, 100-nm pixels, 220-nm PSF; Komen 2024, Tables 5.1-5.2) each movie is reconstructed by

* 2nd-order SOFI (:func:`fluojax.sofi.pipeline.sofi_images`, sofipackage's grid, flattening and 10
  Richardson-Lucy iterations with the simulated PSF width) from the first 20 frames and from all 100,
  adaptively linearized (the thesis's training target; Geissbuehler et al. 2012) and with the square root;
  with ``--simulated-rho`` also adaptively linearized with the simulation's own on-time ratio instead of the
  estimate from orders 2-3, which assumes one emitter per point ("SOFI adaptive-rho");
* the network (``--net RUN``, :func:`fluojax.sofi.learned.load_network`) from the first 20 frames
  (:func:`fluojax.sofi.learned.predict`, first window);
* and compared with the ground truth on the same ``2 N - 7`` grid (``movie.ground_truth``).

Metrics per image (:func:`fluojax.sofi.metrics.image_metrics`; Komen 2024, appendix B): decorrelation
resolution in nm (Descloux et al. 2019; SR pixel = camera pixel / 2), Pearson against the ground truth,
SQUIRREL RSP against the wide-field reference = the mean of the frames used (Culley et al. 2018; ``--reference
std``: their s.d. over time, as Komen 2024, Fig. E.2), TPR and TNR after Li thresholding of the image and of the
ground truth (Li & Tam 1998). The ground truth's own resolution and RSP (against all 100 frames) are listed as
a reference row.

Writes ``OUT.md`` (mean +- s.d. per estimator, overall and per density level, beside Komen 2024's
Table E.1; settings; the command), ``OUT.csv`` (one row per movie and estimator) and ``OUT.png`` (rows:
grid cells; columns: one frame, SOFI 20, SOFI 100, network 20, ground truth).

Usage:  python experiments/sofi_20frames.py --net RUN [--movies 2] [--out docs/sofi_20frames]
        python experiments/sofi_20frames.py --size 32 --movies 1 --cells 2 --out /tmp/sofi20   (smoke test)
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import numpy as np

from fluojax.io import InputError
from fluojax.sofi import learned, metrics, pipeline, simulate

TEST_KEY = 20_240_620
"""PRNG key of the test movies (training pools fold other numbers into their seeds)."""
DENSITIES = (0, 1, 2)
SNRS = (0, 1, 2, 3)
METRICS = ("resolution_nm", "pearson", "pearson_target", "rsp", "tpr", "tnr")
HEADERS = ("resolution (nm)", "Pearson", "Pearson vs SOFI 100", "RSP", "TPR", "TNR")
THESIS_E1 = {
    "network trained on adaptive targets": {
        "resolution_nm": (115.74, 4.03),
        "pearson": (0.89, 0.02),
        "rsp": (0.85, 0.03),
        "tnr": (0.99, 0.01),
        "tpr": (0.79, 0.05),
    },
    "network trained on root targets": {
        "resolution_nm": (146.18, 2.06),
        "pearson": (0.91, 0.02),
        "rsp": (0.83, 0.04),
        "tnr": (0.99, 0.00),
        "tpr": (0.63, 0.06),
    },
}
"""Komen 2024, Table E.1: the 20-frame network (mean +- s.d. over its test movies)."""
THEORY_NM = 110.0
"""Half the 220-nm diffraction limit: the ideal 2nd-order SOFI resolution (Komen 2024)."""


def sofi(frames: np.ndarray, linearize: str, fwhm_px: float, on_ratio: float | None = None) -> np.ndarray:
    """The linearized 2nd-order SOFI image of a stack (pipeline defaults, the simulated PSF width;
    adaptive: rho_on estimated, or ``on_ratio``)."""
    return pipeline.sofi_images(frames, (2,), linearize, fwhm_px=fwhm_px, on_ratio=on_ratio).linearized[2]


def score(image, truth, reference, pixel_nm: float) -> dict:
    """:func:`fluojax.sofi.metrics.image_metrics` of one 2nd-order image on sofipackage's grid."""
    m = metrics.image_metrics(
        image, truth, reference, pixel_nm=pixel_nm / 2, grid=metrics.SRGrid.sofipackage(2), at="reference"
    )
    return m._asdict()


def mean_sd(values) -> tuple[float, float, int]:
    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    if not x.size:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def cell_text(values, name: str) -> str:
    """``mean ± s.d.`` of the finite values, with ``(k of n)`` when some are NaN (e.g. no decorrelation peak)."""
    mu, sd, k = mean_sd(values)
    if not k:
        return "-"
    digits = 1 if name == "resolution_nm" else 3
    text = f"{mu:.{digits}f}" + (f" ± {sd:.{digits}f}" if math.isfinite(sd) else "")
    return text + (f" ({k} of {len(values)})" if k < len(values) else "")


def summary_rows(rows: list[dict], estimators: list[str], label: str = "") -> list[str]:
    lines = []
    for est in estimators:
        mine = [r for r in rows if r["estimator"] == est]
        if not mine:
            continue
        cells = [cell_text([r[k] for r in mine], k) for k in METRICS]
        lines.append(f"| {label}{est} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines


def plot(path: Path, panels: list[dict], pixel_nm: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in ("frame", "SOFI 20", "SOFI 100", "network 20", "ground truth") if c in panels[0]]
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(2.6 * len(columns), 2.6 * len(panels)), squeeze=False)
    sr_extent = np.asarray(pipeline.image_extent_nm(np.shape(panels[0]["ground truth"]), 2, pixel_nm)) / 1000
    for row, panel in zip(axes, panels):
        for ax, col in zip(row, columns):
            image = np.asarray(panel[col])
            order = 1 if col == "frame" else 2
            extent = np.asarray(pipeline.image_extent_nm(image.shape, order, pixel_nm)) / 1000
            if col == "frame":  # the camera frame's own pixels, from the origin
                extent = (0, image.shape[1] * pixel_nm / 1000, image.shape[0] * pixel_nm / 1000, 0)
            ax.imshow(image, cmap="magma" if col != "frame" else "gray", extent=tuple(extent))
            ax.set_xlim(*sr_extent[:2])  # the camera frame cropped to the field the SR grid covers
            ax.set_ylim(*sr_extent[2:])
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is panels[0]:
                ax.set_title(col, fontsize=9)
        row[0].set_ylabel(panel["label"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", default=None, help="run folder or checkpoint of 'fluojax sofi train' (none: no network)")
    ap.add_argument("--size", type=int, default=128, help="field side in camera pixels (the thesis: 128)")
    ap.add_argument("--movies", type=int, default=2, help="movies per density x SNR cell")
    ap.add_argument("--cells", type=int, default=None, help="use only the first N of the 12 cells (smoke tests)")
    ap.add_argument("--frames", type=int, default=20, help="frames of the short SOFI (and the network's window)")
    ap.add_argument(
        "--reference",
        choices=("mean", "std"),
        default="mean",
        help="SQUIRREL's wide-field reference: the mean or the s.d. over time of the frames used "
        "(Komen 2024, Fig. E.2 uses the s.d.)",
    )
    ap.add_argument(
        "--filament-width",
        type=float,
        default=None,
        metavar="NM",
        help="labelled filament width over which the 5000 emitters/um^2 lie (default 10 nm, 50 per um; "
        "thesis_preset's filament_width_nm)",
    )
    ap.add_argument(
        "--simulated-rho",
        action="store_true",
        help="also SOFI adaptively linearized with the simulation's on-time ratio ('SOFI adaptive-rho'; the "
        "default estimate assumes one emitter per point)",
    )
    ap.add_argument("--figure-cells", type=int, default=3, help="grid cells shown in the figure")
    ap.add_argument("--seed", type=int, default=TEST_KEY, help="random seed of the test movies")
    ap.add_argument("--out", default="docs/sofi_20frames", help="output stem: OUT.md, OUT.csv, OUT.png")
    args = ap.parse_args(argv)

    def preset(d: int, s: int) -> simulate.SofiSettings:
        return simulate.thesis_preset(d, s, (args.size, args.size), filament_width_nm=args.filament_width)

    try:
        test_width = preset(0, 0).sample.width_nm
    except InputError as err:  # e.g. a filament width outside (0, 1000] nm
        ap.error(str(err))
    t_start = time.perf_counter()

    grid_cells = [(d, s) for d in DENSITIES for s in SNRS]
    if args.cells is not None:
        grid_cells = grid_cells[: max(1, args.cells)]
    shown = {
        grid_cells[round(i * (len(grid_cells) - 1) / max(1, args.figure_cells - 1))] for i in range(args.figure_cells)
    }

    net = meta = None
    if args.net:
        net, meta = learned.load_network(args.net)
        print(
            f"network: {meta.get('recipe')} at step {meta.get('step')}, {net.config.frames} frames, "
            f"{meta.get('linearization')} targets",
            flush=True,
        )
        trained_width = meta.get("filament_width_nm", simulate.KOMEN_2024.grid_nm)  # older runs: the default
        if abs(trained_width - test_width) > 1e-6:
            print(
                f"the network was trained on filaments {trained_width:g} nm wide, the test movies' are {test_width:g} nm",
                flush=True,
            )
    rho_targets = meta is not None and meta.get("target_rho") == "simulated"
    if rho_targets and not args.simulated_rho:
        print("the network's targets used the simulated on-time ratio: adding the SOFI adaptive-rho rows", flush=True)
        args.simulated_rho = True
    n_short = net.config.frames if net is not None else args.frames
    if net is not None and n_short != args.frames:
        print(f"the network reads {n_short} frames: the short SOFI uses {n_short} too", flush=True)

    n_all = preset(0, 0).n_frames  # 100, as every cell
    estimators = [
        f"SOFI adaptive {n_short}",
        f"SOFI adaptive {n_all}",
        f"SOFI root {n_short}",
        f"SOFI root {n_all}",
        *([f"SOFI adaptive-rho {n_short}", f"SOFI adaptive-rho {n_all}"] if args.simulated_rho else []),
        *([f"network {n_short}"] if net is not None else []),
        "ground truth",
    ]
    rows: list[dict] = []
    panels: list[dict] = []
    key = jax.random.key(args.seed)
    widefield = np.mean if args.reference == "mean" else np.std
    total = len(grid_cells) * args.movies
    done = 0
    settings = None
    for d, s in grid_cells:
        settings = preset(d, s)
        fwhm_px = settings.fwhm_nm / settings.pixel_nm
        pixel_nm = settings.pixel_nm
        for m in range(args.movies):
            t0 = time.perf_counter()
            movie = simulate.simulate_movie(jax.random.fold_in(key, 1000 * (4 * d + s) + m), settings)
            frames = np.asarray(movie.frames)
            truth = np.asarray(movie.ground_truth)
            short = frames[:n_short]
            wide_short, wide_all = widefield(short, axis=0), widefield(frames, axis=0)
            sim_s = time.perf_counter() - t0
            images: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
            variants = [("adaptive", "adaptive", None), ("root", "root", None)]  # (label, linearization, rho_on)
            if args.simulated_rho:
                variants.append(("adaptive-rho", "adaptive", settings.blinking.on_fraction))
            for label, lin, rho in variants:
                for n, stack, wide in ((n_short, short, wide_short), (n_all, frames, wide_all)):
                    t1 = time.perf_counter()
                    image = sofi(stack, lin, fwhm_px, rho)
                    images[f"SOFI {label} {n}"] = (image, wide, time.perf_counter() - t1)
            if net is not None:
                t1 = time.perf_counter()
                image = learned.predict(net, frames[:n_short])[0]
                images[f"network {n_short}"] = (image, wide_short, time.perf_counter() - t1)
            images["ground truth"] = (truth, wide_all, 0.0)
            # the adaptive recipes' training target (with the simulated rho for target_rho="simulated")
            target = images[f"SOFI adaptive{'-rho' if rho_targets else ''} {n_all}"][0]
            for est, (image, wide, seconds) in images.items():
                rows.append(
                    {
                        "density": d,
                        "snr": s,
                        "movie": m,
                        "estimator": est,
                        "emitters": int(np.asarray(movie.mask).sum()),
                        **score(image, truth, wide, pixel_nm),
                        "pearson_target": float(metrics.pearson(image, target)),
                        "seconds": seconds,
                    }
                )
            if m == 0 and (d, s) in shown:
                panel = {"label": f"density {d}, SNR {s}", "frame": frames[0]}
                panel["SOFI 20"] = images[f"SOFI adaptive {n_short}"][0]
                panel["SOFI 100"] = images[f"SOFI adaptive {n_all}"][0]
                if net is not None:
                    panel["network 20"] = images[f"network {n_short}"][0]
                panel["ground truth"] = truth
                panels.append(panel)
            done += 1
            print(
                f"[{done}/{total}] density {d} SNR {s} movie {m}: simulated in {sim_s:.1f} s, "
                f"scored in {time.perf_counter() - t0 - sim_s:.1f} s; "
                + ", ".join(
                    f"{r['estimator']} {r['resolution_nm']:.0f} nm / r {r['pearson']:.2f}" for r in rows[-len(images) :]
                ),
                flush=True,
            )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(out.with_suffix(".png"), panels, pixel_nm)

    assert settings is not None
    head = "| estimator | images | " + " | ".join(HEADERS) + " |"
    rule = "|---|---:|" + "---:|" * len(HEADERS)
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    lines = [
        f"# SOFI from {n_short} frames: SOFI 20 and 100 vs the network vs the ground truth",
        "",
        f"Command: `{command}`  ",
        f"Host: {platform.machine()}, {jax.devices()[0].platform}, JAX {jax.__version__}; "
        f"{time.perf_counter() - t_start:.0f} s in all.  ",
        f"Movies: {args.movies} per cell x {len(grid_cells)} density x SNR cells of "
        f"`thesis_preset` (Komen 2024, Tables 5.1-5.2) at {args.size} x {args.size} camera pixels of "
        f"{settings.pixel_nm:g} nm, {settings.n_frames} frames, PSF FWHM {settings.fwhm_nm:g} nm, filaments labelled "
        f"over {settings.sample.width_nm:g} nm ({settings.sample.density_per_um2 * settings.sample.width_nm / 1000:g} "
        f"emitters per um); seed {args.seed}.  ",
        f"SR grid: 2 N - 7 = {2 * args.size - 7} pixels per side of {settings.pixel_nm / 2:g} nm. "
        f"SOFI: 2nd order, sofipackage grid and flattening, 10 Richardson-Lucy iterations with the simulated PSF.  ",
        (
            f"Network: `{meta.get('recipe')}` at step {meta.get('step')} ({meta.get('linearization')} targets"
            + (", linearized with the simulated on-time ratio" if rho_targets else "")
            + (
                f"; continued for {meta['finetune']['steps']} steps from `{meta['finetune']['from_recipe']}` at "
                f"step {meta['finetune']['from_step']}, loss: {meta['finetune']['loss']}"
                if meta.get("finetune")
                else ""
            )
            + (f"; {meta['description']}" if meta.get("description") else "")
            + f"); first {n_short}-frame window."
            if meta is not None
            else "Network: none given (`--net RUN` adds it)."
        ),
        "",
        "## All cells (mean ± s.d. over movies)",
        "",
        "Resolution: decorrelation analysis (Descloux et al. 2019); Pearson, TPR and TNR (Li thresholds) "
        "against the ground truth; Pearson vs SOFI 100: against the adaptive SOFI image of all frames (what a "
        "network trained on adaptive targets learns to make"
        + ("; here with the simulated on-time ratio, the network's targets" if rho_targets else "")
        + "); RSP: SQUIRREL against the "
        f"{'mean' if args.reference == 'mean' else 's.d. over time'} of the frames used (Culley et al. 2018; "
        "Komen 2024 uses the s.d.). "
        f"Theory: {THEORY_NM:g} nm, half the 220-nm diffraction limit. The ground-truth row gives the ground "
        "truth's own resolution and RSP (its Pearson, TPR and TNR are 1 by construction).",
        "",
        head,
        rule,
        *summary_rows(rows, estimators),
        *[
            f"| Komen 2024, Table E.1: {name} | - | "
            + " | ".join(f"{v[k][0]:.2f} ± {v[k][1]:.2f}" if k in v else "-" for k in METRICS)
            + " |"
            for name, v in THESIS_E1.items()
        ],
        f"| theory (2nd-order SOFI) | - | {THEORY_NM:g} |" + " |" * (len(METRICS) - 1),
        "",
        "## Per density level",
        "",
        "Density levels 0/1/2: off-time 600/1200/2400 ms (densest first).",
        "",
        head,
        rule,
    ]
    for d in sorted({c[0] for c in grid_cells}):
        lines += summary_rows([r for r in rows if r["density"] == d], estimators, label=f"density {d}: ")
    timed = rows[len(estimators) :] or rows  # the first movie's images include the compilations
    times = {est: np.median([r["seconds"] for r in timed if r["estimator"] == est]) for est in estimators[:-1]}
    lines += [
        "",
        "Median seconds per image on this machine (after the first movie, which compiles, when there are more): "
        + ", ".join(f"{est} {t:.3f}" for est, t in times.items())
        + ".",
        "",
        f"Per-movie rows: `{out.with_suffix('.csv').name}`.",
        "",
        f"![frames, SOFI and network images]({out.with_suffix('.png').name})",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
