"""Reproduce DeepFRAP's benchmark (Wåhlstrand Skärström et al. 2021, Tables 2-3, Figure 6) with fluojax's engines.

Three comparisons of least squares (30 random starts, the paper's baseline), a trained DeepFRAP
network and the hybrid (one LM fit started at the network's answer), all on the same simulated
curves (DeepFRAP settings: 256 px, 10/4/100 frames, dt 0.265 s, r = 15 um, per-pixel noise a):

1. **Table 2/3**: N curves drawn from the paper's Table 1 prior; MSE of ``D* = log10(D px^2/s)``,
   c0 and alpha weighted by 1/a (Wåhlstrand Skärström et al. 2021, eq. 9), and their mean ("All"), through
   ``fluojax.compare.compare_on_draws``; against the paper's LS (Table 2) and network (Table 3, test).
2. **Figure 6**: MAPE of D and alpha on the paper's grid (D in 10^{-11.5..-9.5} m^2/s, alpha in
   0.5..0.9, a in 10^{-4..-2}, c0 = 0.75; 256 curves per point), through
   ``fluojax.compare.compare_estimators``: the three panels, MAPE ranges over the 125 points, the
   correlation of network and LS MAPEs, and the points where the network beats LS.
3. **The Cramer-Rao floor** of the Table 2 MSE: the 1/a-weighted mean of each draw's CRLB^2
   (``fluojax.frap.estimate.recovery_curve_crlb``), on the table's draws and on 65,536 fresh prior
   draws, set against every estimator's MSE (with its standard error) overall and per quintile of D*.
   An efficient unbiased estimator sits on the floor; an MSE far below it means different data.
4. **Training time to reach LS**: from the run's ``metrics.json`` (held-out "All" MSE against
   wall time), a power law fitted to the second half of the curve, solved for the LS value.

Usage (CPU, minutes):   python experiments/frap_deepfrap.py --net RUN --quick
       (GPU, paper N):  python experiments/frap_deepfrap.py --net RUN --table2-curves 65536
Writes OUT.md (tables, the command), OUT_fig6.png, OUT_training.png, OUT_fig6.csv.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import compare
from fluojax.frap import learned
from fluojax.frap.estimate import recovery_curve_crlb
from fluojax.frap.models import FrapParams, FrapSettings, build_fast_curve_table, circular_region, d_um2_s_to_px2_s
from fluojax.frap.simulate import FrapPrior, sample_frap_params, simulate_curves
from fluojax.noise import AffineGaussianNoise

PAPER_LS = {"All": 4.0011e-5, "D*": 1.0429e-4, "c0": 2.0511e-8, "alpha": 1.5723e-5}  # Table 2
PAPER_NN = {"All": 3.8842e-5, "D*": 1.0038e-4, "c0": 6.4995e-8, "alpha": 1.6081e-5}  # Table 3, test set
LN10_SQ = math.log(10.0) ** 2
FIG6_D_M2_S = 10.0 ** np.array([-11.5, -11.0, -10.5, -10.0, -9.5])
FIG6_ALPHA = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
FIG6_A = 10.0 ** np.array([-4.0, -3.5, -3.0, -2.5, -2.0])
FIG6_PANELS = [(10.0**-11.5, 0.5), (10.0**-10.5, 0.7), (10.0**-9.5, 0.9)]


def _args():
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--net", default=None, help="DeepFRAP run folder (fluojax frap train); LS only without it")
    p.add_argument("--table2-curves", type=int, default=4096, help="curves drawn from the prior (paper: 65,536)")
    p.add_argument("--fig6-curves", type=int, default=256, help="curves per Figure-6 grid point (paper: 256)")
    p.add_argument("--starts", type=int, default=30, help="random LS starts (paper: 30)")
    p.add_argument("--quick", action="store_true", help="1,024 prior curves, 32 per grid point")
    p.add_argument("--skip-fig6", action="store_true")
    p.add_argument(
        "--prior-bounds",
        action="store_true",
        help="also run LS with D bounded to the prior's range (1.73-1732 px^2/s) instead of 1-3000",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/frap_deepfrap", help="output prefix")
    args = p.parse_args()
    if args.quick:
        args.table2_curves, args.fig6_curves = 1024, 32
    return args


def _estimators(args, table):
    net = meta = None
    if args.net:
        net, meta = learned.load_network(args.net)
        settings, radius = FrapSettings(**meta["settings"]), meta["radius_px"]
        if settings != FrapSettings() or abs(radius - learned.RECIPES["deepfrap"].radius_px) > 1e-9:
            sys.exit("this benchmark is for networks trained at DeepFRAP settings")
    estimators = learned.comparison_estimators(table, net=net, meta=meta, n_starts=args.starts, seed=args.seed)
    if args.prior_bounds:
        # the same LS with D bounded to the prior's range: a tighter bound acts as prior knowledge
        # at the top of the range, where D and alpha trade off and the CRLB is largest
        prior_table = build_fast_curve_table(
            circular_region(FrapSettings(), radius_px=learned.DEEPFRAP_RADIUS_PX),
            FrapSettings(),
            d_range_px2_s=FrapPrior.deepfrap().d_px2_s_range,
        )
        bounded = learned.comparison_estimators(prior_table, n_starts=args.starts, seed=args.seed)
        estimators[f"ls-{args.starts}start-prior-D"] = next(iter(bounded.values()))
    return estimators, meta


# ----------------------------------------------------------------------------------------------
# 1. Table 2 / 3: weighted MSE over prior draws
# ----------------------------------------------------------------------------------------------


def table2(args, table, n_eff, estimators):
    prior = FrapPrior.deepfrap()

    def draw(key, n):
        k_params, k_noise = jax.random.split(key)
        sample = sample_frap_params(k_params, n, prior)
        curves = simulate_curves(k_noise, sample.params, table, sample.noise, n_eff)
        p = sample.params
        return jnp.stack([p.d_px2_s, p.c0, p.alpha], axis=1), curves, 1.0 / sample.noise.a

    # warm up each estimator on its compiled chunk, so the timed call compiles nothing
    wide = 256 if jax.default_backend() == "cpu" else 8192  # the fitting engine's default chunk width
    warmup = {
        name: (max(1, wide // args.starts) if name.startswith("ls") else wide if name == "hybrid" else 4096)
        for name in estimators
    }
    report = compare.compare_on_draws(
        estimators,
        draw,
        args.table2_curves,
        jax.random.key(args.seed + 1),
        param_names=["D_px2_s", "c0", "alpha"],
        log_scale=["D_px2_s"],
        warmup_samples=warmup,
    )
    mse = report.mse.copy()
    mse[:, 0] /= LN10_SQ  # ln D -> D* = log10 D
    rows = [
        ("paper LS (Table 2)", PAPER_LS, float("nan"), float("nan")),
        ("paper network (Table 3, test)", PAPER_NN, float("nan"), float("nan")),
    ]
    for e, name in enumerate(report.estimator_names):
        values = {
            "All": float(mse[e].mean()),
            "D*": float(mse[e, 0]),
            "c0": float(mse[e, 1]),
            "alpha": float(mse[e, 2]),
        }
        rows.append((f"fluojax {name}", values, float(report.samples_per_s[e]), float(report.failed_fraction[e])))
    lines = [
        f"N = {args.table2_curves} curves from the Table 1 prior; MSE weighted by 1/a (Wåhlstrand Skärström et al. 2021, eq. 9), D in D* = log10(D px^2/s).",
        "",
        "| estimator | All | D* | c0 | alpha | curves/s | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, v, rate, failed in rows:
        fmt = lambda x: "—" if not np.isfinite(x) else f"{x:.4g}"  # noqa: E731
        lines.append(
            f"| {name} | {v['All']:.4e} | {v['D*']:.4e} | {v['c0']:.4e} | {v['alpha']:.4e} | {fmt(rate)} | {fmt(failed)} |"
        )
    return "\n".join(lines), report, mse


# ----------------------------------------------------------------------------------------------
# 1b. The Cramer-Rao floor of the weighted MSE
# ----------------------------------------------------------------------------------------------

FLOOR_DRAWS = 65_536  # the size of the paper's test set


def _crlb_compared(theta, a, table, n_eff, chunk: int = 8192) -> np.ndarray:
    """(N, 3) CRLB^2 in the compared coordinates (D* = log10 D, c0, alpha) for draws theta (N, 3)."""
    parts = []
    for start in range(0, theta.shape[0], chunk):
        t = jnp.asarray(theta[start : start + chunk], jnp.float32)
        parts.append(
            np.asarray(
                recovery_curve_crlb(
                    t, table, AffineGaussianNoise(jnp.asarray(a[start : start + chunk], jnp.float32)), n_eff
                ),
                np.float64,
            )
        )
    bound = np.concatenate(parts)
    bound[:, 0] /= theta[:, 0] * math.log(10.0)
    return bound**2


def crlb_floor(args, table, n_eff, report, mse) -> str:
    """Markdown: the weighted CRLB floor against each estimator's MSE, overall and per D* quintile."""
    a_draws = 1.0 / report.weights
    floor_sq = _crlb_compared(report.truth, a_draws, table, n_eff)
    w = report.weights / report.weights.sum()
    floor = w @ floor_sq
    sample = sample_frap_params(jax.random.key(args.seed + 7), FLOOR_DRAWS, FrapPrior.deepfrap())
    p = sample.params
    fresh_theta = np.stack([np.asarray(p.d_px2_s), np.asarray(p.c0), np.asarray(p.alpha)], axis=1).astype(np.float64)
    fresh_a = np.asarray(sample.noise.a, np.float64)
    fresh_sq = _crlb_compared(fresh_theta, fresh_a, table, n_eff)
    fresh = (1.0 / fresh_a) @ fresh_sq / np.sum(1.0 / fresh_a)
    sem = report.mse_sem.copy()
    sem[:, 0] /= LN10_SQ
    lines = [
        "Weighted CRLB^2 (the MSE of an efficient unbiased estimator) against the weighted MSE ± its standard error.",
        "",
        "| | D* | c0 | alpha |",
        "|---|---|---|---|",
        f"| paper LS (Table 2) | {PAPER_LS['D*']:.3e} | {PAPER_LS['c0']:.3e} | {PAPER_LS['alpha']:.3e} |",
        f"| CRLB floor, {FLOOR_DRAWS:,} fresh prior draws | {fresh[0]:.3e} | {fresh[1]:.3e} | {fresh[2]:.3e} |",
        f"| CRLB floor, the table's {report.truth.shape[0]:,} draws | {floor[0]:.3e} | {floor[1]:.3e} | {floor[2]:.3e} |",
    ]
    for e, name in enumerate(report.estimator_names):
        cells = " | ".join(f"{mse[e, k]:.3e} ± {sem[e, k]:.1e}" for k in range(3))
        lines.append(f"| fluojax {name} | {cells} |")
    d_star = np.log10(report.truth[:, 0])
    edges = np.quantile(d_star, np.linspace(0.0, 1.0, 6))
    lines += [
        "",
        "D* MSE by quintile of the true D* (weighted by 1/a within the quintile):",
        "",
        "| D* range | CRLB floor | " + " | ".join(report.estimator_names) + " |",
        "|---" * (2 + len(report.estimator_names)) + "|",
    ]
    err_sq = (np.log10(np.where(report.valid[..., None], report.estimates, np.nan)[..., 0]) - d_star[None]) ** 2
    for q in range(5):
        inside = (d_star >= edges[q]) & (d_star <= edges[q + 1])
        wq = report.weights[inside] / report.weights[inside].sum()
        cells = []
        for e in range(len(report.estimator_names)):
            ok = np.isfinite(err_sq[e, inside])
            we = wq[ok] / wq[ok].sum()
            cells.append(f"{we @ err_sq[e, inside][ok]:.3e}")
        lines.append(
            f"| {edges[q]:.2f}–{edges[q + 1]:.2f} | {wq @ floor_sq[inside, 0]:.3e} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# 2. Figure 6: MAPE on the paper's grid
# ----------------------------------------------------------------------------------------------


def figure6(args, table, n_eff, estimators):
    d_px = d_um2_s_to_px2_s(FIG6_D_M2_S * 1e12)
    grid = np.array([(d, 0.75, a) for d in d_px for a in FIG6_ALPHA])  # (25, 3): D px^2/s, c0, alpha
    names = list(estimators)
    mape = np.full((len(names), len(FIG6_A), len(grid), 3), np.nan)
    seconds = np.zeros(len(names))
    for i, a in enumerate(FIG6_A):

        def simulate(key, theta, a=a):
            params = FrapParams(theta[:, 0], theta[:, 1], theta[:, 2])
            return simulate_curves(key, params, table, AffineGaussianNoise(jnp.full(theta.shape[0], a)), n_eff)

        report = compare.compare_estimators(
            estimators,
            simulate,
            grid,
            args.fig6_curves,
            jax.random.key(args.seed + 100 + i),
            param_names=["D_px2_s", "c0", "alpha"],
            log_scale=["D_px2_s"],
            progress=False,
        )
        mape[:, i] = report.mape
        seconds += np.nansum(report.seconds, axis=1)
        print(f"  fig 6: a = {a:.2e} done", flush=True)
    return grid, mape, names, seconds


def figure6_summary(grid, mape, names) -> str:
    lines = [
        f"MAPE (%) over the {mape.shape[1] * mape.shape[2]} grid points (5 D x 5 alpha x 5 a, c0 = 0.75).",
        "",
        "| estimator | MAPE D: min–max | MAPE alpha: min–max | MAPE c0: max |",
        "|---|---|---|---|",
    ]
    lines.append("| paper LS | 0.05–22.57 | 0.005–5.07 | < 0.11 |")
    lines.append("| paper network | 0.05–24.02 | 0.006–4.41 | < 0.11 |")
    for e, name in enumerate(names):
        m = mape[e]
        lines.append(
            f"| fluojax {name} | {np.nanmin(m[..., 0]):.3g}–{np.nanmax(m[..., 0]):.3g} | "
            f"{np.nanmin(m[..., 2]):.3g}–{np.nanmax(m[..., 2]):.3g} | {np.nanmax(m[..., 1]):.3g} |"
        )
    if len(names) > 1:
        ls, nn = mape[0], mape[1]
        for p, label, paper_rho, paper_wins in ((0, "D", 0.999, 4), (2, "alpha", 0.997, 7)):
            rho = np.corrcoef(ls[..., p].ravel(), nn[..., p].ravel())[0, 1]
            wins = int(np.sum(nn[..., p] < ls[..., p]))
            lines.append(
                f"\nCorrelation of network and LS MAPE of {label}: rho = {rho:.4f} (paper {paper_rho}); "
                f"network below LS at {wins} of {ls[..., p].size} points (paper {paper_wins})."
            )
    return "\n".join(lines)


def plot_figure6(grid, mape, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=False)
    colours = {"ls": "tab:blue", "deepfrap": "tab:red", "hybrid": "tab:green"}
    for ax, (d_si, alpha) in zip(axes, FIG6_PANELS):
        g = int(
            np.argmin(np.abs(np.log(grid[:, 0]) - np.log(d_um2_s_to_px2_s(d_si * 1e12))) + np.abs(grid[:, 2] - alpha))
        )
        for e, name in enumerate(names):
            colour = colours["ls" if name.startswith("ls") else name]
            ax.loglog(FIG6_A, mape[e, :, g, 0], "o-", color=colour, label=name)
        ax.set_title(f"D = 10^{math.log10(d_si):.1f} m²/s, α = {alpha}")
        ax.set_xlabel("noise variance a (per pixel)")
    axes[0].set_ylabel("MAPE of D (%)")
    axes[0].legend()
    fig.suptitle("DeepFRAP Figure 6 on fluojax simulations: MAPE of D vs noise")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# 3. Training time needed to reach least squares
# ----------------------------------------------------------------------------------------------


def hours_to_reach(run: Path, target: float) -> tuple[str, dict]:
    metrics = json.loads((Path(run) / "metrics.json").read_text())
    t = np.asarray(metrics["elapsed_s"], float)
    loss = np.asarray(metrics["eval_loss"], float)
    ok = (t > 0) & np.isfinite(loss)
    t, loss = t[ok], loss[ok]
    info = {
        "trained_hours": float(t[-1] / 3600),
        "final_loss": float(loss[-1]),
        "best_loss": float(loss.min()),
        "steps": int(metrics["step"][-1]),
    }
    if loss.min() <= target:
        first = float(t[np.argmax(loss <= target)] / 3600)
        info["hours_to_ls"] = first
        return f"reached the LS 'All' MSE after {first:.2f} h of training", info
    half = t >= t[-1] / 2
    slope, intercept = np.polyfit(np.log(t[half]), np.log(np.minimum.accumulate(loss)[half]), 1)
    if slope >= 0:
        return "held-out loss no longer falls: no extrapolation", info
    hours = float(np.exp((np.log(target) - intercept) / slope) / 3600)
    info.update(hours_to_ls=hours, power_law_slope=float(slope))
    return (
        f"best held-out 'All' {loss.min():.3e} after {t[-1] / 3600:.2f} h; a power law (slope {slope:.2f}) "
        f"through the second half reaches the LS value {target:.3e} after ~{hours:.3g} h"
    ), info


def plot_training(run: Path, ls_all: float, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = json.loads((Path(run) / "metrics.json").read_text())
    t = np.asarray(metrics["elapsed_s"], float) / 3600
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(t[1:], metrics["eval_loss"][1:], label="network, held-out weighted MSE (All)")
    ax.axhline(ls_all, color="tab:blue", ls="--", label="fluojax LS, 30 starts")
    ax.axhline(PAPER_LS["All"], color="grey", ls=":", label="paper LS (Table 2)")
    ax.set_xlabel(f"training time (h, {device})")
    ax.set_ylabel("weighted MSE, All")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    args = _args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = f"{jax.devices()[0].platform} ({jax.devices()[0].device_kind})"
    t0 = time.perf_counter()
    table, n_eff = learned.deepfrap_table()
    estimators, meta = _estimators(args, table)
    print(f"device {device}; estimators {list(estimators)}", flush=True)
    text = [
        f"# DeepFRAP benchmark reproduced with fluojax\n\nCommand: `python {' '.join(sys.argv)}`  \nDevice: {device}"
    ]
    if meta:
        text.append(
            f"Network: recipe `{meta['recipe']}`, {meta['train_config']['steps']} steps "
            f"(batch {meta['train_config']['batch_size']}, {meta['train_config']['optimizer']})."
        )

    t2, report, mse = table2(args, table, n_eff, estimators)
    print(t2, flush=True)
    text += ["## Table 2/3: weighted MSE on prior draws", t2]
    floor = crlb_floor(args, table, n_eff, report, mse)
    print(floor, flush=True)
    text += ["## The Cramer-Rao floor of the Table 2 MSE", floor]
    if "hybrid" in estimators:
        rates = dict(zip(report.estimator_names, report.samples_per_s))
        text.append(
            f"\nHybrid vs {args.starts}-start LS: {rates['hybrid'] / rates[report.estimator_names[0]]:.1f}x the curves/s; "
            "weighted MSE in the table above."
        )
    if args.net:
        ls_all = float(mse[0].mean())
        sentence, _info = hours_to_reach(Path(args.net), ls_all)
        plot_training(Path(args.net), ls_all, out.with_name(out.name + "_training.png"), device)
        text += ["## Training time to reach least squares", sentence + ".", f"![training]({out.name}_training.png)"]
        print(sentence, flush=True)

    if not args.skip_fig6:
        grid, mape, names, _ = figure6(args, table, n_eff, estimators)
        summary = figure6_summary(grid, mape, names)
        print(summary, flush=True)
        plot_figure6(grid, mape, names, out.with_name(out.name + "_fig6.png"))
        with open(out.with_name(out.name + "_fig6.csv"), "w") as fh:
            fh.write("estimator,a,D_px2_s,alpha,mape_D,mape_c0,mape_alpha\n")
            for e, name in enumerate(names):
                for i, a in enumerate(FIG6_A):
                    for g, (d, _, alpha) in enumerate(grid):
                        fh.write(
                            f"{name},{a:.4g},{d:.6g},{alpha},{mape[e, i, g, 0]:.5g},{mape[e, i, g, 1]:.5g},{mape[e, i, g, 2]:.5g}\n"
                        )
        text += [
            f"## Figure 6: MAPE on the paper's grid ({args.fig6_curves} curves per point)",
            summary,
            f"![figure 6]({out.name}_fig6.png)",
        ]
    text.append(f"\nTotal time {time.perf_counter() - t0:.0f} s.")
    out.with_suffix(".md").write_text("\n\n".join(text) + "\n")
    print(f"-> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
