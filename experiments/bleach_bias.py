"""Bias of the per-pixel polynomial bleach correction on bleach-free stacks (issue 17).

Simulates bleach-free 2D ITIR stacks with fluojax's simulator (default optics, 1.06 ms frames,
density 0.5 particles/px^2, brightness 6), fits them with bleach correction none / poly1 / poly2 /
poly4 and prints the median D per stack.

    PYTHONPATH=. JAX_PLATFORMS=cpu python experiments/bleach_bias.py [--frames 3000 20000] [--d 1] [--seeds 3]
"""

import argparse

import jax
import numpy as np

from fluojax.fcs import models, pipeline, simulate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, nargs="+", default=[3000, 20000])
    ap.add_argument("--d", type=float, nargs="+", default=[1.0])
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2, 4])
    args = ap.parse_args()
    optics = models.Optics()
    for frames in args.frames:
        for d in args.d:
            geo = simulate.StackGeometry(
                frames=frames,
                size_px=args.size,
                frame_time_s=1.06e-3,
                n_particles=simulate.particles_for_density(
                    0.5 / float(models.pixel_side_um(optics)) ** 2, args.size, optics
                ),
            )
            rows = {k: [] for k in args.orders}
            for seed in range(args.seeds):
                stack = np.asarray(
                    simulate.simulate_stack(jax.random.key(seed), simulate.DiffusionSample(d, 6.0), optics, geo)
                )
                for k in args.orders:
                    s = pipeline.AnalysisSettings(frame_time_s=1.06e-3, optics=optics, bleach_order=k)
                    rows[k].append(float(np.nanmedian(pipeline.analyse_stack(stack, s, progress=False).d_um2_s)))
            for k in args.orders:
                print(
                    f"T={frames:6d} D={d:5.2f} {'none' if k == 0 else f'poly{k}':5s} median D per seed: "
                    + " ".join(f"{v:.3f}" for v in rows[k]),
                    flush=True,
                )


if __name__ == "__main__":
    main()
