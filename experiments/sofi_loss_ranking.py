"""Experiment: does the Fourier loss rank 20-frame images by structure? (Komen 2024, eq. 4.5)

The released MISR-GRU trains on L = mean |(|F(pred)| - |F(target)|)| + mean |angle F(pred) - angle F(target)|
(rfft2 half plane, unwrapped phase). A loss that guides a network towards the structure should score an
image that resembles the target (here the 20-frame SOFI image of the same movie, which correlates with the
100-frame target) clearly better than images that do not: an all-zero image (phase 0 everywhere, so its phase
term is E|phi| = pi/2 for uniform target phases) and another movie's target (independent phases: E|dphi| =
2 pi / 3). The pixel MSE and Pearson are printed beside it.

For each recipe's simulated movies (``misrgru-small``: filaments labelled over 10 nm; ``misrgru-small-wide``:
over 50 nm) and three density x SNR cells, ``--movies`` movies per cell are turned into training pairs
(:func:`fluojax.sofi.learned.training_pairs`: adaptive 2nd-order SOFI of all 100 frames, max 1) and the
20-frame SOFI image is made the same way from the first 20 frames. Amplitude and phase terms are computed here
with NumPy's FFT, independently of :func:`fluojax.sofi.nets.fourier_loss`.

Usage:  python experiments/sofi_loss_ranking.py [--movies 16]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from fluojax.sofi import learned

CELLS = ((0, 0), (1, 2), (2, 3))
"""(density, SNR) levels: densest and brightest, middle, sparsest and dimmest."""


def fourier_terms(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Mean amplitude and phase L1 terms of eq. 4.5 over a batch (rfft2, unwrapped phase difference)."""
    fp, ft = np.fft.rfft2(pred), np.fft.rfft2(target)
    return float(np.mean(np.abs(np.abs(fp) - np.abs(ft)))), float(np.mean(np.abs(np.angle(fp) - np.angle(ft))))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the batch of each pair's Pearson correlation."""
    return float(np.mean([np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--movies", type=int, default=16, help="movies per density x SNR cell")
    ap.add_argument("--seed", type=int, default=7, help="random seed")
    args = ap.parse_args(argv)
    print("| movies | candidate vs 100-frame target | Pearson | pixel MSE | amplitude term | phase term |")
    print("|---|---|---:|---:|---:|---:|")
    for name in ("misrgru-small", "misrgru-small-wide"):
        recipe = learned.RECIPES[name]
        keys = jax.random.key_data(jax.random.split(jax.random.key(args.seed), args.movies))
        scores: dict[str, list] = {"20-frame SOFI": [], "all-zero image": [], "another movie's target": []}
        for d, s in CELLS:
            movies = recipe.movies(keys, d, s)
            _, target = learned.training_pairs(movies, 20, recipe.fwhm_px(), recipe.linearization)
            _, short = learned.training_pairs(movies[:, :20], 20, recipe.fwhm_px(), recipe.linearization)
            target, short = np.asarray(target, np.float64), np.asarray(short, np.float64)
            candidates = {
                "20-frame SOFI": short,
                "all-zero image": np.zeros_like(target),
                "another movie's target": np.roll(target, 1, axis=0),
            }
            for label, image in candidates.items():
                r = pearson(image, target) if image.any() else float("nan")
                scores[label].append((r, float(np.mean((image - target) ** 2)), *fourier_terms(image, target)))
        width = recipe.settings(0, 0).sample.width_nm
        for label, rows in scores.items():
            r, mse, amp, phase = np.asarray(rows).mean(axis=0)  # Pearson: NaN for the all-zero image
            r_text = "-" if np.isnan(r) else f"{r:.3f}"
            print(f"| `{name}` ({width:g}-nm filaments) | {label} | {r_text} | {mse:.4f} | {amp:.3f} | {phase:.3f} |")
    print(
        f"\nExpected phase terms for phases unrelated to the target: pi/2 = {np.pi / 2:.3f} (all zero), 2 pi/3 = "
        f"{2 * np.pi / 3:.3f} (independent)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
