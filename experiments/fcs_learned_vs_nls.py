"""The comparison of Tang et al. 2024 on our simulator: NLS vs FCSNet at many frames, NLS vs ImFCSNet at few.

Seed 000 (Tang et al. 2024) claims that FCSNet on 50,000-frame ACFs estimates D as well as
least squares (NLS) on the same ACFs, and that ImFCSNet on 2,500 frames of a 3 x 3 window does
far better than NLS on 2,500 frames. This script tests both claims on simulated 2D (TIRF) data
with D log-spaced from 0.1 to 10 um^2/s, through ``fluojax.compare`` (every estimator sees the
same stacks):

* ``NLS 1x1 @ long``: the centre pixel's ACF (T_long frames) fitted with the 2D ITIR model;
* ``FCSNet 1x1 @ long``: the same ACF through FCSNet;
* ``NLS 3x3 @ short``: the 3 x 3 sum's ACF over the first T_short frames, fitted (binning 3);
* ``ImFCSNet @ short``: the first T_short frames of the 3 x 3 window;
* ``ImFCSNet avg @ long``: mean ln D over the T_long / T_short non-overlapping windows;
* ``hybrid @ short``: NLS 3x3 @ short started from ImFCSNet's D.

Networks: ``--fcsnet``/``--imfcsnet`` take run folders from ``fluojax fcs train``; without them
the CPU-sized recipes are trained here first (``--train-steps``).

Usage (CPU, ~1 h):  python experiments/fcs_learned_vs_nls.py -o docs/fcs_learned
       (quick):     python experiments/fcs_learned_vs_nls.py --long 10000 --samples 4 --points 3 --train-steps 50 -o /tmp/x
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from fluojax import compare, plotting
from fluojax.fcs import learned, simulate


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", type=int, default=50_000, help="frames for NLS/FCSNet (paper 50,000)")
    ap.add_argument("--short", type=int, default=2_500, help="frames for ImFCSNet and short NLS (paper 2,500)")
    ap.add_argument("--points", type=int, default=5, help="D grid points, log-spaced 0.1-10 um^2/s")
    ap.add_argument("--samples", type=int, default=16, help="simulated 3x3 stacks per grid point")
    ap.add_argument("--density", type=float, default=0.3, help="particles per px^2")
    ap.add_argument("--brightness", type=float, default=5.0, help="counts per particle per frame")
    ap.add_argument("--fcsnet", default=None, help="FCSNet run folder (default: train fcsnet-2d-small here)")
    ap.add_argument("--imfcsnet", default=None, help="ImFCSNet run folder (default: train imfcsnet-2d-small here)")
    ap.add_argument("--train-steps", type=int, default=None, help="steps when training here (default: the recipe's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    nets = {}
    for kind, given, recipe in (
        ("fcsnet", args.fcsnet, "fcsnet-2d-small"),
        ("imfcsnet", args.imfcsnet, "imfcsnet-2d-small"),
    ):
        if given is None:
            t0 = time.perf_counter()
            run = out / f"run_{recipe}"
            learned.train_recipe(recipe, run, steps=args.train_steps, seed=args.seed)
            timings[f"train {recipe} s"] = time.perf_counter() - t0
            given = run
        nets[kind], meta = learned.load_network(given, expect=kind)
        nets[f"{kind}_meta"] = {"recipe": meta["recipe"], "step": meta["step"], "path": str(given)}

    t0 = time.perf_counter()
    report = learned.compare_with_least_squares(
        simulate.TrainingPrior.itir_2d(args.long),
        args.density,
        args.brightness,
        args.short,
        nets["fcsnet"],
        nets["imfcsnet"],
        np.geomspace(0.1, 10.0, args.points),
        args.samples,
        jax.random.key(args.seed),
    )
    timings["compare s"] = time.perf_counter() - t0
    (out / "report.md").write_text(compare.to_markdown(report))
    compare.to_csv(report, out / "report.csv")
    plotting.plot_report(report, out / "report.png")
    settings = {k: v for k, v in vars(args).items()}
    settings.update(
        nets={k: v for k, v in nets.items() if k.endswith("_meta")}, timings=timings, jax_backend=jax.default_backend()
    )
    (out / "settings.json").write_text(json.dumps(settings, indent=1, default=str))
    print(compare.to_markdown(report))
    print(json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
