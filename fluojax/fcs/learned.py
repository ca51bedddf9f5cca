"""Learned Imaging FCS estimators (FCSNet, ImFCSNet) as users run them: training recipes, maps, checks.

This module joins the shared engines to the FCS pieces. A *recipe* names a network size, the
training prior of its simulator and the training schedule (``fcsnet-2d``, ``imfcsnet-2d-small``,
...); :func:`train_recipe` trains it with :func:`fluojax.train.train` on batches simulated on the
fly; :func:`load_network` rebuilds a trained network from its checkpoint and refuses one of
another kind. :func:`predict_imfcsnet_map` slides the 3 x 3-pixel network over a whole stack;
:func:`predict_fcsnet` reads the 72-point ACFs of the correlator.

Every prediction on measured data comes with a physics check (the review seed warns that a
network answers in range for input outside its training range): with D fixed at the prediction,
the model ACF ``G(tau) = S(D tau) / N + G_inf`` is linear in ``1/N`` and ``G_inf``, so its best
weighted fit to the measured ACF is a 2 x 2 linear solve, and the reduced chi^2 of that fit
(:func:`physics_check_chi2`) says whether the predicted D can describe the data at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["physics_check_chi2"]


def physics_check_chi2(
    acf: np.ndarray, sem: np.ndarray, lag_s: np.ndarray, d_um2_s: np.ndarray, shape: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reduced chi^2 of the model ACF at a given D, amplitude and offset fitted in closed form.

    With ``s_k = S(D tau_k)`` (the model's normalised shape) and weights ``w_k = 1/sem_k^2``,
    ``G_k ~ a s_k + g`` is solved by weighted linear least squares for ``a = 1/N`` and
    ``g = G_inf``; ``chi^2_red = sum_k w_k (G_k - a s_k - g)^2 / (K - 3)`` (three numbers, D
    included, were taken from the data). Values near 1 mean the predicted D explains the ACF as
    well as a full fit would; values far above 1 flag a prediction to distrust.

    Arguments:
        acf, sem: (B, K) measured ACFs and their standard errors.
        lag_s: (K,) lag times in s.
        d_um2_s: (B,) predicted diffusion coefficients in um^2/s.
        shape: vectorised NumPy ``S(D tau)`` of the model (``pipeline._shape_fn``).

    Returns:
        (chi2_reduced, n_particles, g_inf), each (B,); NaN where D or the data are not usable.
    """
    acf = np.asarray(acf, np.float64)
    sem = np.asarray(sem, np.float64)
    d = np.asarray(d_um2_s, np.float64).reshape(-1)
    ok_d = np.isfinite(d) & (d > 0)
    s = shape(np.where(ok_d, d, 1.0)[:, None] * np.asarray(lag_s, np.float64)[None, :])
    good = np.isfinite(acf) & np.isfinite(sem) & (sem > 0)
    w = np.where(good, 1.0 / np.where(good, sem, 1.0) ** 2, 0.0)
    g = np.where(good, acf, 0.0)
    sww, sw1, s11 = (w * s * s).sum(1), (w * s).sum(1), w.sum(1)
    bw, b1 = (w * s * g).sum(1), (w * g).sum(1)
    det = sww * s11 - sw1**2
    with np.errstate(invalid="ignore", divide="ignore"):
        amp = (bw * s11 - b1 * sw1) / det
        offset = (sww * b1 - sw1 * bw) / det
        chi2 = (w * (g - amp[:, None] * s - offset[:, None]) ** 2).sum(1) / (good.sum(1) - 3)
        n = 1.0 / amp
    bad = ~ok_d | (good.sum(1) <= 3) | ~(det > 0)
    return tuple(np.where(bad, np.nan, v) for v in (chi2, n, offset))
