"""Reproduce DeepFRAP's benchmark (seed 001, Tables 2-3, Figure 6) with fluojax's engines.

Three comparisons of least squares (30 random starts, the seed's baseline), a trained DeepFRAP
network and the hybrid (one LM fit started at the network's answer), all on the same simulated
curves (DeepFRAP settings: 256 px, 10/4/100 frames, dt 0.265 s, r = 15 um, per-pixel noise a):

1. **Table 2/3**: N curves drawn from the seed's Table 1 prior; MSE of ``D* = log10(D px^2/s)``,
   c0 and alpha weighted by 1/a (seed eq. 9), and their mean ("All"), through
   ``fluojax.compare.compare_on_draws``; against the seed's LS (Table 2) and network (Table 3, test).
2. **Figure 6**: MAPE of D and alpha on the seed's grid (D in 10^{-11.5..-9.5} m^2/s, alpha in
   0.5..0.9, a in 10^{-4..-2}, c0 = 0.75; 256 curves per point), through
   ``fluojax.compare.compare_estimators``: the three panels, MAPE ranges over the 125 points, the
   correlation of network and LS MAPEs, and the points where the network beats LS.
3. **Training time to reach LS**: from the run's ``metrics.json`` (held-out "All" MSE against
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
from fluojax.frap.models import FrapParams, FrapSettings, d_um2_s_to_px2_s
from fluojax.frap.simulate import FrapPrior, PixelNoise, sample_frap_params, simulate_curves

PAPER_LS = {"All": 4.0011e-5, "D*": 1.0429e-4, "c0": 2.0511e-8, "alpha": 1.5723e-5}  # Table 2
PAPER_NN = {"All": 3.8842e-5, "D*": 1.0038e-4, "c0": 6.4995e-8, "alpha": 1.6081e-5}  # Table 3, test set
LN10_SQ = math.log(10.0) ** 2
FIG6_D_M2_S = 10.0 ** np.array([-11.5, -11.0, -10.5, -10.0, -9.5])
FIG6_ALPHA = np.array([0.5, 0.6, 0.7, 0.8, 0.9])
FIG6_A = 10.0 ** np.array([-4.0, -3.5, -3.0, -2.5, -2.0])
FIG6_PANELS = [(10.0**-11.5, 0.5), (10.0**-10.5, 0.7), (10.0**-9.5, 0.9)]


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", default=None, help="DeepFRAP run folder (fluojax frap train); LS only without it")
    p.add_argument("--table2-curves", type=int, default=4096, help="curves drawn from the prior (seed: 65,536)")
    p.add_argument("--fig6-curves", type=int, default=256, help="curves per Figure-6 grid point (seed: 256)")
    p.add_argument("--starts", type=int, default=30, help="random LS starts (seed: 30)")
    p.add_argument("--quick", action="store_true", help="1,024 prior curves, 32 per grid point")
    p.add_argument("--skip-fig6", action="store_true")
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
    return learned.comparison_estimators(table, net=net, meta=meta, n_starts=args.starts, seed=args.seed), meta


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
    warmup = {name: (max(1, wide // args.starts) if name.startswith("ls") else wide if name == "hybrid" else 4096) for name in estimators}
    report = compare.compare_on_draws(estimators, draw, args.table2_curves, jax.random.key(args.seed + 1),
                                      param_names=["D_px2_s", "c0", "alpha"], log_scale=["D_px2_s"], warmup_samples=warmup)
    mse = report.mse.copy()
    mse[:, 0] /= LN10_SQ  # ln D -> D* = log10 D
    rows = [("seed LS (Table 2)", PAPER_LS, float("nan"), float("nan")),
            ("seed network (Table 3, test)", PAPER_NN, float("nan"), float("nan"))]
    for e, name in enumerate(report.estimator_names):
        values = {"All": float(mse[e].mean()), "D*": float(mse[e, 0]), "c0": float(mse[e, 1]), "alpha": float(mse[e, 2])}
        rows.append((f"fluojax {name}", values, float(report.samples_per_s[e]), float(report.failed_fraction[e])))
    lines = [f"N = {args.table2_curves} curves from the Table 1 prior; MSE weighted by 1/a (seed eq. 9), D in D* = log10(D px^2/s).", "",
             "| estimator | All | D* | c0 | alpha | curves/s | failed |", "|---|---|---|---|---|---|---|"]
    for name, v, rate, failed in rows:
        fmt = lambda x: "—" if not np.isfinite(x) else f"{x:.4g}"  # noqa: E731
        lines.append(f"| {name} | {v['All']:.4e} | {v['D*']:.4e} | {v['c0']:.4e} | {v['alpha']:.4e} | {fmt(rate)} | {fmt(failed)} |")
    return "\n".join(lines), report, mse


# ----------------------------------------------------------------------------------------------
# 2. Figure 6: MAPE on the seed's grid
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
            return simulate_curves(key, params, table, PixelNoise(jnp.full(theta.shape[0], a)), n_eff)

        report = compare.compare_estimators(estimators, simulate, grid, args.fig6_curves, jax.random.key(args.seed + 100 + i),
                                            param_names=["D_px2_s", "c0", "alpha"], log_scale=["D_px2_s"], progress=False)
        mape[:, i] = report.mape
        seconds += np.nansum(report.seconds, axis=1)
        print(f"  fig 6: a = {a:.2e} done", flush=True)
    return grid, mape, names, seconds


def figure6_summary(grid, mape, names) -> str:
    lines = [f"MAPE (%) over the {mape.shape[1] * mape.shape[2]} grid points (5 D x 5 alpha x 5 a, c0 = 0.75).", "",
             "| estimator | MAPE D: min–max | MAPE alpha: min–max | MAPE c0: max |", "|---|---|---|---|"]
    lines.append("| seed LS | 0.05–22.57 | 0.005–5.07 | < 0.11 |")
    lines.append("| seed network | 0.05–24.02 | 0.006–4.41 | < 0.11 |")
    for e, name in enumerate(names):
        m = mape[e]
        lines.append(f"| fluojax {name} | {np.nanmin(m[..., 0]):.3g}–{np.nanmax(m[..., 0]):.3g} | "
                     f"{np.nanmin(m[..., 2]):.3g}–{np.nanmax(m[..., 2]):.3g} | {np.nanmax(m[..., 1]):.3g} |")
    if len(names) > 1:
        ls, nn = mape[0], mape[1]
        for p, label, seed_rho, seed_wins in ((0, "D", 0.999, 4), (2, "alpha", 0.997, 7)):
            rho = np.corrcoef(ls[..., p].ravel(), nn[..., p].ravel())[0, 1]
            wins = int(np.sum(nn[..., p] < ls[..., p]))
            lines.append(f"\nCorrelation of network and LS MAPE of {label}: rho = {rho:.4f} (seed {seed_rho}); "
                         f"network below LS at {wins} of {ls[..., p].size} points (seed {seed_wins}).")
    return "\n".join(lines)


def plot_figure6(grid, mape, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=False)
    colours = {"ls": "tab:blue", "deepfrap": "tab:red", "hybrid": "tab:green"}
    for ax, (d_si, alpha) in zip(axes, FIG6_PANELS):
        g = int(np.argmin(np.abs(np.log(grid[:, 0]) - np.log(d_um2_s_to_px2_s(d_si * 1e12))) + np.abs(grid[:, 2] - alpha)))
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
    info = {"trained_hours": float(t[-1] / 3600), "final_loss": float(loss[-1]), "best_loss": float(loss.min()),
            "steps": int(metrics["step"][-1])}
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
    return (f"best held-out 'All' {loss.min():.3e} after {t[-1] / 3600:.2f} h; a power law (slope {slope:.2f}) "
            f"through the second half reaches the LS value {target:.3e} after ~{hours:.3g} h"), info


def plot_training(run: Path, ls_all: float, path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = json.loads((Path(run) / "metrics.json").read_text())
    t = np.asarray(metrics["elapsed_s"], float) / 3600
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(t[1:], metrics["eval_loss"][1:], label="network, held-out weighted MSE (All)")
    ax.axhline(ls_all, color="tab:blue", ls="--", label="fluojax LS, 30 starts")
    ax.axhline(PAPER_LS["All"], color="grey", ls=":", label="seed LS (Table 2)")
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
    text = [f"# DeepFRAP benchmark reproduced with fluojax\n\nCommand: `python {' '.join(sys.argv)}`  \nDevice: {device}"]
    if meta:
        text.append(f"Network: recipe `{meta['recipe']}`, {meta['train_config']['steps']} steps "
                    f"(batch {meta['train_config']['batch_size']}, {meta['train_config']['optimizer']}).")

    t2, report, mse = table2(args, table, n_eff, estimators)
    print(t2, flush=True)
    text += ["## Table 2/3: weighted MSE on prior draws", t2]
    if "hybrid" in estimators:
        rates = dict(zip(report.estimator_names, report.samples_per_s))
        text.append(f"\nHybrid vs {args.starts}-start LS: {rates['hybrid'] / rates[report.estimator_names[0]]:.1f}x the curves/s; "
                    "weighted MSE in the table above.")
    if args.net:
        ls_all = float(mse[0].mean())
        sentence, info = hours_to_reach(Path(args.net), ls_all)
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
                        fh.write(f"{name},{a:.4g},{d:.6g},{alpha},{mape[e, i, g, 0]:.5g},{mape[e, i, g, 1]:.5g},{mape[e, i, g, 2]:.5g}\n")
        text += [f"## Figure 6: MAPE on the seed's grid ({args.fig6_curves} curves per point)", summary,
                 f"![figure 6]({out.name}_fig6.png)"]
    text.append(f"\nTotal time {time.perf_counter() - t0:.0f} s.")
    out.with_suffix(".md").write_text("\n\n".join(text) + "\n")
    print(f"-> {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
