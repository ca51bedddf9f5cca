"""Experiment: the quad-plane setting of Aritake et al. 2021 - voxel network, MLE, hybrid and the CRLB.

The setting of the paper (Tables 2-3): 64 x 64 x 4 frames of 192 nm pixels, 50 molecules per frame
of weight U(0.3, 1), z in [-200, 1350) nm, the point-sampled quad-plane PSF, noise
``Poisson(10) + N(0, 9)`` added to the noise-free image, planes 1, 2 and 4 drifting against plane 3
(:func:`fluojax.smlm.simulate.quadplane_paper`; ``--released``: the PSF constants of the authors'
released code). On the same simulated test frames (a key no training run uses):

1. **Voxel confusion matrix** of the network at threshold 0.5 (the paper's Table 4: 500 frames,
   TP 22,878, FN 2,089, FP 1,844, TN 8,165,189: precision 0.925, recall 0.916), over the
   network's voxels (pixels x 4 z bins over [-200, 1350) nm).
2. **SMLM Challenge 2016 metrics** (Sage et al. 2019; one-to-one matching within 250 nm laterally
   and 500 nm axially): the network at thresholds 0.5 and 0.9 (no merging of neighbouring voxels,
   as in the paper), per-spot MLE (:func:`fluojax.smlm.estimate.localize`: detection, 9 x 9 ROIs,
   Poisson-equivalent likelihood of a read-noise camera of 3 e- r.m.s., the paper's N(0, 9)), and
   the hybrid (the network's detections at 0.5 refined by the same MLE), all run on the same
   frames through :func:`fluojax.compare.compare_on_frames`, with their frames/s on this machine.
3. **Cramér-Rao bound** of every true molecule as if it were alone (the bound for the paper's
   noise: Gaussian of variance 10 + 9 per pixel, no shot noise on the signal, so the Fisher
   information is ``J^T J / 19``; :func:`fluojax.fit.crlb`), its root mean square beside each
   estimator's RMSE; and the MLE on isolated molecules (one per frame, same noise) against it,
   which separates the estimator's efficiency from the crowding of 50 molecules per frame.

Writes ``OUT.md`` (tables, settings, command) and ``OUT.png`` (one frame with the truth and each
estimator's localizations; lateral error histograms).

Usage:  python experiments/smlm_quadplane.py --net RUN [--frames 500] [--out docs/smlm_quadplane]
        python experiments/smlm_quadplane.py --net RUN --quick      (40 frames; minutes on a CPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import compare, fit
from fluojax.noise import GaussianReadNoise
from fluojax.smlm import estimate, learned, metrics, pipeline
from fluojax.smlm.models import pixel_grid
from fluojax.smlm.simulate import quadplane_paper, quadplane_released, simulate_frames

PAPER_CONFUSION = metrics.VoxelConfusion.from_counts(tp=22_878, fp=1_844, fn=2_089, tn=8_165_189)
"""Aritake et al. 2021, Table 4 (threshold 0.5, 500 frames of 50 molecules)."""
TEST_KEY = 20_211_103
"""PRNG key of the test frames (training draws its frames from other keys)."""
READ_NOISE_E = 3.0
"""The paper's Gaussian noise s.d. (sigma^2 = 9), the read noise of the MLE's camera model."""


def network_scores(net, meta, frames, truth, threshold: float, three_d: bool = True):
    """The network's localizations at a threshold, as a table (for the harness)."""
    det = learned.localize_with_network(net, meta, frames, threshold, batch=50)
    return pipeline.detections_to_table(det, three_d)


def mle_table(frames, psf, pixel_nm):
    fits = estimate.localize(frames, psf, pixel_nm, camera=GaussianReadNoise(READ_NOISE_E), max_spots=64)
    return pipeline.fits_to_table(fits)[0]


def hybrid_table(net, meta, frames, psf, pixel_nm):
    det = learned.localize_with_network(net, meta, frames, 0.5, batch=50)
    fits = estimate.refine(
        frames, det.frame, det.x_nm, det.y_nm, psf, pixel_nm, z_nm=det.z_nm, camera=GaussianReadNoise(READ_NOISE_E)
    )
    return pipeline.fits_to_table(fits)[0]


def isolated_crlb(psf, truth, pixel_nm, roi: int = 9) -> np.ndarray:
    """(n, 3) bound on the s.d. of x, y, z of every true molecule alone in a ROI centred on it
    (its sub-pixel offset kept), for the paper's noise: Gaussian, variance 19 per pixel."""
    model = estimate.SpotModel(psf)
    args = estimate.SpotArgs(pixel_grid((roi, roi), pixel_nm), jnp.zeros((psf.planes, 2), jnp.float32))
    centre = (roi // 2) * pixel_nm
    local_x = centre + np.mod(truth.x_nm, pixel_nm)
    local_y = centre + np.mod(truth.y_nm, pixel_nm)
    theta = jnp.asarray(np.stack([local_x, local_y, truth.z_nm, truth.photons, np.full(truth.n, 10.0)], 1), jnp.float32)
    sigma = jnp.full((psf.planes, roi, roi), np.sqrt(10.0 + READ_NOISE_E**2), jnp.float32)
    bound = jax.jit(jax.vmap(lambda t: fit.crlb(model, t, sigma, args)))(theta)
    return np.asarray(bound)[:, :3]


def rms(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x**2))) if x.size else float("nan")


def isolated_mle(scene, n_frames: int, key) -> dict:
    """MLE on frames with one molecule each, away from the border and without plane drift (the
    fit assumes none): RMSE vs the isolated CRLB."""
    one = dataclasses.replace(scene, emitters=1, shape=(16, 16), drift=None)
    sim = simulate_frames(key, one, n_frames)
    truth = pipeline.truth_table(sim.emitters, one.psf)
    inside = (truth.x_nm > 4 * one.pixel_nm) & (truth.x_nm < 12 * one.pixel_nm)
    inside &= (
        (truth.y_nm > 4 * one.pixel_nm) & (truth.y_nm < 12 * one.pixel_nm) & (truth.z_nm > 0) & (truth.z_nm < 1200)
    )
    truth = truth.select(inside)
    frames = np.asarray(sim.images)[inside]
    truth = truth._replace(frame=np.arange(truth.n))
    fits = estimate.refine(
        frames,
        truth.frame,
        truth.x_nm + 20.0,
        truth.y_nm - 20.0,
        one.psf,
        one.pixel_nm,
        camera=GaussianReadNoise(READ_NOISE_E),
    )
    ok = np.asarray(fits.status) == fit.Status.CONVERGED
    err = np.stack(
        [np.asarray(fits.x_nm) - truth.x_nm, np.asarray(fits.y_nm) - truth.y_nm, np.asarray(fits.z_nm) - truth.z_nm], 1
    )[ok]
    bound = isolated_crlb(one.psf, truth.select(ok), one.pixel_nm)
    return {
        "n": int(ok.sum()),
        "converged": float(ok.mean()),
        "rmse": [rms(err[:, i]) for i in range(3)],
        "crlb_rms": [rms(bound[:, i]) for i in range(3)],
    }


def plot(path: Path, frames, truth, tables: dict, pixel_nm: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.4))
    frame0 = np.asarray(frames[0]).sum(axis=0)
    extent = (0, frame0.shape[1] * pixel_nm / 1000, frame0.shape[0] * pixel_nm / 1000, 0)
    ax = axes[0]
    ax.imshow(frame0, cmap="gray", extent=extent)
    t0 = truth.select(truth.frame == 0)
    ax.scatter(t0.x_nm / 1000, t0.y_nm / 1000, s=40, facecolors="none", edgecolors="yellow", label="truth")
    marks = {"network 0.5": ("+", "tab:red"), "MLE": ("x", "tab:cyan"), "hybrid": ("1", "tab:green")}
    for name, (m, c) in marks.items():
        if name in tables:
            tab = tables[name].select(tables[name].frame == 0)
            ax.scatter(tab.x_nm / 1000, tab.y_nm / 1000, s=30, marker=m, c=c, label=name)
    ax.set_title("frame 0, sum of the 4 planes")
    ax.set_xlabel("x (um)")
    ax.set_ylabel("y (um)")
    ax.legend(fontsize=7, loc="lower right")
    for ax, axis in zip(axes[1:], ("lateral", "axial")):
        bins = np.linspace(-150, 150, 61) if axis == "lateral" else np.linspace(-400, 400, 61)
        for name, tab in tables.items():
            result = metrics.match(truth, tab)
            err = result.dx_nm if axis == "lateral" else result.dz_nm
            if np.size(err):
                ax.hist(err, bins=bins, histtype="step", label=f"{name} (n={np.size(err)})")
        ax.set_xlabel("x error (nm)" if axis == "lateral" else "z error (nm)")
        ax.set_ylabel("matched localizations")
        ax.set_title(f"{axis} errors of matched localizations")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--net", required=True, help="run folder or checkpoint of a voxel-wise network (fluojax smlm train)"
    )
    ap.add_argument("--frames", type=int, default=500, help="test frames (the paper: 500)")
    ap.add_argument(
        "--released", action="store_true", help="the PSF constants of the authors' released code (B = 0.122484)"
    )
    ap.add_argument("--quick", action="store_true", help="40 frames")
    ap.add_argument("--out", default="docs/smlm_quadplane", help="output stem: OUT.md, OUT.png")
    args = ap.parse_args(argv)
    n_frames = 40 if args.quick else args.frames
    scene = quadplane_released() if args.released else quadplane_paper()
    psf, pixel_nm = scene.psf, scene.pixel_nm
    t_start = time.perf_counter()

    sim = simulate_frames(jax.random.key(TEST_KEY), scene, n_frames)
    frames = np.asarray(sim.images)
    truth = pipeline.truth_table(sim.emitters, psf)
    net, meta = learned.load_network(args.net)
    print(
        f"network: {meta.get('recipe')} at step {meta.get('step')}; {n_frames} test frames, {truth.n} molecules",
        flush=True,
    )

    # 1. voxel confusion matrix at 0.5 over the network's own voxels
    z_lo, z_hi = (float(v) for v in meta["z_range_nm"])
    z_bins = net.config.z_bins
    grid = metrics.VoxelGrid(
        (z_bins, *frames.shape[2:]), ((z_hi - z_lo) / z_bins, pixel_nm, pixel_nm), (z_lo, 0.0, 0.0)
    )
    probability = learned.predict_voxels(net, meta, frames, batch=50)[..., 0]
    confusion = metrics.voxel_confusion(probability, metrics.voxel_labels(truth, n_frames, grid), 0.5)

    # 2. every estimator on the same frames
    estimators = {
        "network 0.5": lambda f: network_scores(net, meta, f, truth, 0.5),
        "network 0.9": lambda f: network_scores(net, meta, f, truth, 0.9),
        "MLE": lambda f: mle_table(f, psf, pixel_nm),
        "hybrid": lambda f: hybrid_table(net, meta, f, psf, pixel_nm),
    }
    report = compare.compare_on_frames(
        estimators, frames, lambda table: metrics.evaluate(truth, table)._asdict(), warmup=frames[: min(8, n_frames)]
    )
    tables = dict(zip(report.estimator_names, report.results))

    # 3. the bound
    bound = isolated_crlb(psf, truth, pixel_nm)
    crlb_lat = rms(np.sqrt(bound[:, 0] ** 2 + bound[:, 1] ** 2))
    crlb_ax = rms(bound[:, 2])
    alone = isolated_mle(scene, 1000 if args.quick else 5000, jax.random.key(TEST_KEY + 1))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(out.with_suffix(".png"), frames, truth, tables, pixel_nm)

    p = confusion
    q = PAPER_CONFUSION
    lines = [
        "# SMLM: the quad-plane setting of Aritake et al. 2021",
        "",
        f"Command: `{' '.join(shlex.quote(a) for a in [sys.executable.split('/')[-1], *sys.argv])}`  ",
        f"Host: {platform.machine()}, {jax.devices()[0].platform}, JAX {jax.__version__}; "
        f"{time.perf_counter() - t_start:.0f} s in all.  ",
        f"Scene: {'released-code' if args.released else 'Table 2'} PSF constants (B = {psf.b4:g}), "
        f"{n_frames} test frames of 64 x 64 x 4 at 192 nm, 50 molecules each ({truth.n} in all), "
        "Poisson(10) + N(0, 9) noise, plane drift.  ",
        f"Network: `{meta.get('recipe')}` at step {meta.get('step')} ({meta.get('description', '')})",
        "",
        "## Voxel confusion matrix at threshold 0.5 (the paper's Table 4)",
        "",
        "| | TP | FN | FP | TN | precision | recall | Jaccard |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| Aritake et al. 2021 (500 frames) | {q.tp:,} | {q.fn:,} | {q.fp:,} | {q.tn:,} | {q.precision:.3f} | {q.recall:.3f} | {q.jaccard:.3f} |",
        f"| fluojax ({n_frames} frames) | {p.tp:,} | {p.fn:,} | {p.fp:,} | {p.tn:,} | {p.precision:.3f} | {p.recall:.3f} | {p.jaccard:.3f} |",
        "",
        "## SMLM Challenge 2016 metrics on the same frames",
        "",
        "Matching within 250 nm laterally and 500 nm axially (Sage et al. 2019); Jaccard and "
        "efficiencies in percent, RMSE in nm; frames/s on this machine (compilation excluded).",
        "",
        "| estimator | precision | recall | Jaccard % | RMSE lat | RMSE ax | eff. lat | eff. ax | frames/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(report.estimator_names):
        s = dict(zip(report.score_names, report.scores[i]))
        lines.append(
            f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['jaccard']:.1f} | {s['rmse_lateral_nm']:.1f} | "
            f"{s['rmse_axial_nm']:.1f} | {s['efficiency_lateral']:.1f} | {s['efficiency_axial']:.1f} | {report.items_per_s[i]:.1f} |"
        )
    lines += [
        "",
        "## Against the Cramér-Rao bound",
        "",
        f"Root mean square over the {truth.n} true molecules of the bound each would have alone "
        f"(paper noise, 9 x 9 ROI): lateral {crlb_lat:.1f} nm, axial {crlb_ax:.1f} nm. With 50 "
        "molecules per frame their images overlap, so no estimator reaches it there; the MLE also "
        "assumes no plane drift, while the frames carry the paper's (up to 48 nm), which the network "
        "learned from its training frames.",
        "",
        f"MLE on isolated molecules (one per 16 x 16 frame, same PSF, photons and noise, no drift; {alone['n']} "
        f"fits, {100 * alone['converged']:.1f} % converged): RMSE x {alone['rmse'][0]:.1f}, "
        f"y {alone['rmse'][1]:.1f}, z {alone['rmse'][2]:.1f} nm against the bound's RMS "
        f"{alone['crlb_rms'][0]:.1f}, {alone['crlb_rms'][1]:.1f}, {alone['crlb_rms'][2]:.1f} nm "
        f"(ratios {alone['rmse'][0] / alone['crlb_rms'][0]:.2f}, {alone['rmse'][1] / alone['crlb_rms'][1]:.2f}, "
        f"{alone['rmse'][2] / alone['crlb_rms'][2]:.2f}; the MLE's likelihood treats the signal as "
        "Poisson, which the paper's noise is not, so a ratio slightly above 1 is expected).",
        "",
        f"![frame and errors]({out.with_suffix('.png').name})",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
