"""Experiment: fine-tune a trained MISR-GRU on another recipe's training pairs, or with a Fourier-amplitude term.

Two questions about the gap between the 20-frame network's decorrelation resolution and Komen
2024's (Table E.1; the figures are in docs/sofi.md, section 10) are answered by continuing the
training of a finished run (``--net RUN``) rather than training from scratch:

* **Targets.** ``--recipe misrgru-small-wide-rho`` draws the pool of that recipe, whose adaptive
  targets use the simulation's own on-time ratio instead of the one-emitter estimate
  (:attr:`fluojax.sofi.learned.MisrGruRecipe.target_rho`).
* **Loss.** ``--amplitude-weight W`` adds ``W x (L / A)`` times the Fourier-amplitude L1 term of
  Komen 2024's loss (eq. 4.5, without the phase term; ortho-normalised by sqrt(H W)) to the
  recipe's loss L (the pixel MSE), where ``L / A`` is the ratio of the two terms on the first
  held-out batch before fine-tuning (W = 1: equal weights at the start).

The training is the engine's (:func:`fluojax.train.train`: the recipe's optimizer, batch and
held-out pool; a learning rate decaying exponentially from ``--lr`` to ``--lr-final`` over
``--steps``); the network is saved as a checkpoint (``--out``) that ``experiments/sofi_20frames.py
--net`` and ``fluojax sofi predict --net`` read. The meta records the recipe, the starting run
and the loss.

Usage:  python experiments/sofi_finetune.py --net RUN --recipe misrgru-small-wide-rho --steps 600 \\
            --lr 3e-4 --lr-final 1e-4 --out runs/misrgru-small-wide-rho-ft
        python experiments/sofi_finetune.py --net RUN --amplitude-weight 4 --steps 400 --lr 1e-4 --out OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time

import jax.numpy as jnp

from fluojax import networks
from fluojax import train as training
from fluojax.sofi import learned, nets


def amplitude_term(prediction, target):
    """The amplitude half of Komen 2024's eq. 4.5 (:func:`fluojax.sofi.nets.fourier_amplitude_loss`), / sqrt(H W)."""
    return nets.fourier_amplitude_loss(prediction, target) / jnp.sqrt(prediction.shape[-1] * prediction.shape[-2])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", required=True, help="run folder or checkpoint of 'fluojax sofi train' to start from")
    ap.add_argument("--recipe", default=None, help="recipe whose pool is drawn (default: the network's own)")
    ap.add_argument("--amplitude-weight", type=float, default=0.0, help="W of the Fourier-amplitude term (0: MSE)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-4, help="learning rate at the first step")
    ap.add_argument("--lr-final", type=float, default=None, help="learning rate at the last step (default --lr)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the pool (the recipe's training seed: 0)")
    ap.add_argument("--out", required=True, help="checkpoint folder to write")
    args = ap.parse_args(argv)

    net, meta = learned.load_network(args.net)
    recipe = networks.recipe_named(learned.RECIPES, args.recipe or meta["recipe"])
    if meta["net_config"] != dataclasses.asdict(recipe.net):
        ap.error(f"{args.net} holds a network of another shape than recipe {recipe.name}'s: {meta['net_config']}")
    print(f"start: {meta.get('recipe')} at step {meta.get('step')}; pool of {recipe.name}", flush=True)
    data = recipe.training_data(args.seed, None)
    x0, y0 = data.held_out[0]
    before = net(x0)
    loss0, amp0 = float(data.loss(before, y0)), float(amplitude_term(before, y0))
    weight = args.amplitude_weight * loss0 / amp0

    def loss(prediction, target):
        value = data.loss(prediction, target)  # the recipe's (the pixel MSE for all but a Fourier-loss recipe)
        return value if weight == 0 else value + weight * amplitude_term(prediction, target)

    config = dataclasses.replace(
        recipe.train,
        steps=args.steps,
        learning_rate=args.lr,
        final_learning_rate=args.lr_final or args.lr,
        seed=args.seed + 1,  # other batches than the run being continued drew
    )
    t0 = time.perf_counter()
    history = training.train(net, data.sample_batch, config, loss=loss, data=data.data, held_out=data.held_out)
    after = net(x0)
    print(
        f"{args.steps} steps in {time.perf_counter() - t0:.0f} s; first held-out batch: {recipe.loss} {loss0:.5f} -> "
        f"{float(data.loss(after, y0)):.5f}, amplitude term {amp0:.5f} -> {float(amplitude_term(after, y0)):.5f}; "
        f"held-out loss {history.eval_loss[0]:.5f} -> {history.eval_loss[-1]:.5f}",
        flush=True,
    )
    saved = {
        **meta,
        **networks.network_meta(recipe),
        "finetune": {
            "from": str(args.net),
            "from_recipe": meta.get("recipe"),
            "from_step": meta.get("step"),
            "steps": args.steps,
            "loss": recipe.loss if weight == 0 else f"{recipe.loss} + {weight:.4g} x Fourier amplitude L1 / sqrt(HW)",
            "learning_rate": [args.lr, args.lr_final or args.lr],
            "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        },
    }
    path = networks.save_network(args.out, net, saved, step=int(meta.get("step", 0)) + args.steps)
    print(f"saved {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
