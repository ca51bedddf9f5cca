"""DeepFRAP as users run it: training recipes, predictions on recovery curves, the hybrid, a check.

DeepFRAP is Wåhlstrand Skärström et al. 2021 (J. Microsc. 282:146); "the paper" below.

A *recipe* names a network size (``fluojax.frap.nets``), the prior its training curves are drawn
from (``FrapPrior``, Wåhlstrand Skärström et al. 2021, Table 1), the experiment it is trained for
(``FrapSettings`` and the bleach radius: the network only understands curves of that geometry and
length) and the training schedule. :func:`train_recipe` trains it with :func:`fluojax.train.train`
on noisy recovery curves generated inside every compiled step from the fast tabulated solver
(``recovery_curve_fast`` + curve-level noise, the exact distribution of the image pipeline's ROI
curve, ``fluojax.frap.simulate``), with DeepFRAP's loss weighted by 1/a
(Wåhlstrand Skärström et al. 2021, eq. 9).

Recipes:

``deepfrap`` / ``deepfrap-merged``
    The paper's joint network (130,179 weights) and its merged per-parameter variant (389,763),
    batch 1024, trained with Adam, learning rate 1e-3 -> 1e-5 in six log-linear stairs, 4e5 steps
    (~4e8 fresh curves). The paper used SGD with momentum 0.99, a warm-up 1e-3 -> 1e-1 over 50
    epochs and stairs of log10 lr = -1, -1.25, ..., for 48,000 epochs of 2^20 curves. With our
    loss, whose 1/a weights are normalised to mean 1 per batch (the scale of a plain MSE), that
    optimizer diverges (docs/frap.md, "2. Estimators"; the runs are in docs/benchmarks.md). The
    paper's weights, normalised to sum 1 over the 2^20 curves, may have scaled its loss, and so
    its effective rate, far down; Adam is insensitive to that scale (and
    ``TrainConfig(optimizer=Sgd(momentum=0.99), warmup_fraction=...)`` remains available).
    A shorter run (``steps``) compresses the schedule (six equal stairs).
``deepfrap-small``
    3 hidden layers of 64, Adam 3e-3 -> 1e-4, batch 256, 3,000 steps, for tests and quick looks.

Units: the network reads the 110 ROI values in the intensity units of the training data (c0 in
[0.5, 1]) and returns ``D* = log10(D / (px^2/s))``, c0 and alpha; :func:`predict_curves` gives
(D px^2/s, c0, alpha) and rescales D to another frame interval (the model depends on D dt only).

The *hybrid* (:func:`refine`) starts one Levenberg-Marquardt fit at the network's answer. Its
residual sum of squares against that at the network's answer alone, :func:`refine`'s
``residual_ratio`` (>= 1 up to rounding, about 1 when the network is right), is the physics check
every prediction on measured data carries: a network returns in-range answers for out-of-range
curves, the fit says how far from the best model curve that answer is.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fluojax import networks
from fluojax import train as training
from fluojax.frap import estimate, nets
from fluojax.frap.models import (
    DEEPFRAP_RADIUS_PX,
    FastCurveTable,
    FrapSettings,
    build_fast_curve_table,
    circular_region,
)
from fluojax.frap.simulate import FrapPrior, roi_effective_pixels, sample_frap_params, simulate_curves
from fluojax.io import InputError

__all__ = [
    "BUILDERS",
    "RECIPES",
    "Recipe",
    "Refined",
    "comparison_estimators",
    "deepfrap_table",
    "load_network",
    "predict_curves",
    "refine",
    "train_recipe",
]

NETWORK_KIND = "deepfrap"
"""``meta["fluojax_network"]`` of every DeepFRAP checkpoint."""


@dataclasses.dataclass(frozen=True)
class Recipe(networks.Recipe):
    """Everything needed to train one DeepFRAP network (immutable; a ``fluojax.networks.Recipe``
    whose ``net`` is a ``nets.DeepFrapConfig``).

    Attributes, besides the base's ``name``, ``net`` and ``train``:
        prior: ``FrapPrior`` of the training curves (default DeepFRAP's Table 1).
        settings: ``FrapSettings`` of the experiment (frame counts, dt in s, grid).
        radius_px: float, bleach-disk radius in pixels (centred in the image).
        stairs: int, number of equal learning-rate stairs after the warm-up (0: the config's
            ``decay_every`` as given); kept when ``steps`` is overridden.
        description: str.
    """

    prior: FrapPrior = FrapPrior()
    settings: FrapSettings = FrapSettings()
    radius_px: float = DEEPFRAP_RADIUS_PX
    stairs: int = 0
    description: str = ""

    network = NETWORK_KIND

    def with_steps(self, steps: int) -> Recipe:
        """The same recipe with ``steps`` optimizer steps (schedule compressed or stretched)."""
        config = dataclasses.replace(self.train, steps=int(steps))
        if self.stairs:
            config = dataclasses.replace(
                config, decay_every=max(1, (config.steps - config.warmup_steps) // self.stairs)
            )
        return dataclasses.replace(self, train=config)

    def meta_fields(self) -> dict:
        return {
            "settings": dataclasses.asdict(self.settings),
            "radius_px": self.radius_px,
            "prior": dataclasses.asdict(self.prior),
        }

    def build(self, seed: int):
        return nets.build_network(self.net, seed=seed)

    def training_data(self, seed: int, progress: bool | None) -> networks.TrainingData:
        """Noisy curves made inside every step from the fast-curve table, and the 1/a-weighted loss."""
        table, n_eff = deepfrap_table(self.settings, self.radius_px)
        return networks.TrainingData(_curve_sampler(self, table, n_eff), loss=nets.inverse_noise_weighted_mse)


def _paper_schedule(steps: int) -> training.TrainConfig:
    """The paper's batch (1024) with Adam, 1e-3 -> 1e-5 in six stairs (see the module docstring)."""
    return training.TrainConfig(
        steps=steps,
        batch_size=1024,
        optimizer=training.Adam(),
        learning_rate=1e-3,
        final_learning_rate=1e-5,
        eval_every=5000,
        eval_batches=16,
        checkpoint_every=50_000,
    )


def _paper_recipe(name: str, per_parameter: bool) -> Recipe:
    return Recipe(
        name,
        nets.DeepFrapConfig.paper(per_parameter=per_parameter),
        _paper_schedule(400_000),
        stairs=6,
        description="DeepFRAP's network and batch, Adam, 4e5 steps (GPU)",
    ).with_steps(400_000)


RECIPES: dict[str, Recipe] = {
    "deepfrap": _paper_recipe("deepfrap", per_parameter=False),
    "deepfrap-merged": _paper_recipe("deepfrap-merged", per_parameter=True),
    "deepfrap-small": Recipe(
        "deepfrap-small",
        nets.DeepFrapConfig.small(),
        training.TrainConfig(
            steps=3000,
            batch_size=256,
            optimizer=training.Adam(),
            learning_rate=3e-3,
            final_learning_rate=1e-4,
            eval_every=250,
            eval_batches=8,
        ),
        description="3 x 64 ELU, Adam; about a minute on a 2-core CPU",
    ),
}


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def deepfrap_table(
    settings: FrapSettings = FrapSettings(), radius_px: float = DEEPFRAP_RADIUS_PX
) -> tuple[FastCurveTable, float]:
    """The fast-curve table of a centred bleach disk, and its effective ROI pixel count n_eff.

    D range 1-3000 px^2/s (covers the DeepFRAP prior, 1.73-1732 px^2/s). Cached per process:
    building costs K = 64 spectral solves on the (N + 2M)^2 grid.

    Returns:
        (``FastCurveTable``, n_eff).
    """
    geometry = circular_region(settings, radius_px=radius_px)
    return build_fast_curve_table(geometry, settings), roi_effective_pixels(geometry)


def _curve_sampler(recipe: Recipe, table: FastCurveTable, n_eff: float):
    batch, prior = recipe.train.batch_size, recipe.prior

    def sample_curves(key):
        k_params, k_noise = jax.random.split(key)
        sample = sample_frap_params(k_params, batch, prior)
        curves = simulate_curves(k_noise, sample.params, table, sample.noise, n_eff)
        return curves, nets.network_targets(sample)

    return sample_curves


def train_recipe(recipe: Recipe | str, run_dir: str | Path | None = None, **options: Any):
    """Train a recipe's network on noisy recovery curves generated on the fly.

    Every step draws ``batch_size`` parameter sets from the prior and makes their noisy curves
    inside the compiled step (nothing is stored or reused); the loss is the 1/a-weighted MSE of
    (D*, c0, alpha) (``nets.inverse_noise_weighted_mse``); the held-out loss, on a fixed set of
    ``eval_batches`` batches, is DeepFRAP's weighted "All" MSE (Wåhlstrand Skärström et al. 2021,
    Tables 2-4).

    Arguments:
        recipe: ``Recipe`` or a name in ``RECIPES``.
        run_dir: folder for checkpoints and metrics (resumes if it holds a checkpoint).
        **options: ``steps``, ``seed``, ``progress``, ``stop_after``, ``time_limit_s``, as for
            :func:`fluojax.networks.train_recipe`.

    Returns:
        (network, ``TrainHistory``).

    Raises:
        InputError: a name that is not in ``RECIPES``.
    """
    return networks.train_recipe(networks.recipe_named(RECIPES, recipe), run_dir, **options)


BUILDERS = {NETWORK_KIND: lambda meta: nets.build_network(nets.DeepFrapConfig(**meta["net_config"]))}
"""``meta["fluojax_network"]`` -> ``build(meta)``: the network ``load_network`` rebuilds."""


def load_network(path: str | Path):
    """Rebuild a trained DeepFRAP network from a checkpoint (a run folder or one of its checkpoints).

    Returns:
        (network, checkpoint meta dict with ``settings``, ``radius_px``, ``prior``, ``recipe``).

    Raises:
        ValueError: not a fluojax network checkpoint, or not a DeepFRAP one.
    """
    return networks.load_network(path, BUILDERS, accepted="DeepFRAP network")


# ----------------------------------------------------------------------------------------------
# Prediction, the hybrid and its physics check
# ----------------------------------------------------------------------------------------------


def predict_curves(net, meta: dict, curves, dt_s: float | None = None, batch: int = 4096) -> np.ndarray:
    """(D px^2/s, c0, alpha) of recovery curves from a trained network.

    The curves are run in fixed batches of ``batch`` (the last one padded), so one compilation
    serves any number of curves. With ``dt_s`` different from the training frame interval
    ``meta["settings"]["dt_s"]``, D is rescaled by ``dt_train / dt_s`` (the curves depend on D and
    dt only through D dt; geometry and frame counts must match the training's).

    Arguments:
        net: network from :func:`load_network` or :func:`train_recipe`.
        meta: its checkpoint meta (for ``dt_s`` and the curve length).
        curves: (B, n) or (n,) curves, n = n_prebleach + n_postbleach of the training settings.
        dt_s: frame interval of the data in s (None: the training's).
        batch: curves per compiled call (fewer curves: one call of their number).

    Returns:
        (B, 3) float64 array: D in px^2/s, c0, alpha.
    """
    curves = np.atleast_2d(np.asarray(curves, np.float32))
    n_values = int(meta["settings"]["n_prebleach"]) + int(meta["settings"]["n_postbleach"])
    if curves.shape[1] != n_values:
        raise InputError(
            f"curves of {curves.shape[1]} values: the network reads curves of {n_values} values (its training settings)"
        )
    out = networks.predict(net, curves, min(int(batch), max(curves.shape[0], 1))).astype(np.float64)
    scale = 1.0 if dt_s is None else float(meta["settings"]["dt_s"]) / float(dt_s)
    return np.stack([10.0 ** out[:, 0] * scale, out[:, 1], out[:, 2]], axis=1)


class Refined(NamedTuple):
    """The hybrid estimate and its physics check.

    Attributes:
        fit: ``estimate.FrapFit`` of the LM fit started at the network's answer.
        residual_ratio: (B,) RSS at the network's answer / RSS of the refined fit (>= 1 up to
            rounding; ~1 when the network's answer is already the best fit; NaN if the fit failed).
        start: (B, 3) the network's answer moved into the fit's bounds
            (``estimate.start_in_bounds``): where the RSS of the numerator is taken.
    """

    fit: estimate.FrapFit
    residual_ratio: np.ndarray
    start: np.ndarray


@jax.jit
def _rss(params, curves, table):
    model = jax.vmap(lambda theta: estimate.frap_curve_model(theta, table))(params)
    return jnp.sum(jnp.square(model - curves), axis=1)


def refine(
    curves, table: FastCurveTable, start, noise_variance=None, level: float = 0.95, prior: FrapPrior | None = None
) -> Refined:
    """The hybrid estimator: one Levenberg-Marquardt fit per curve, started at ``start``.

    Arguments:
        curves: (B, n) or (n,) recovery curves.
        table: ``FastCurveTable`` of the data's geometry and settings.
        start: (B, 3) or (3,) starts (D px^2/s, c0, alpha), e.g. :func:`predict_curves` output;
            clipped into the fit's bounds (``estimate.frap_bounds``).
        noise_variance: as for ``estimate.fit_recovery_curves`` (None: estimated).
        level: confidence level of the intervals.
        prior: ``FrapPrior`` whose c0 and alpha ranges set the bounds, as for
            ``estimate.fit_recovery_curves`` (None: DeepFRAP's Table 1 prior).

    Returns:
        :class:`Refined`.
    """
    curves = np.atleast_2d(np.asarray(curves))
    start = np.broadcast_to(np.asarray(start, np.float64), (curves.shape[0], 3))
    prior = FrapPrior() if prior is None else prior
    result = estimate.fit_recovery_curves(
        curves, table, starts=start[:, None, :], noise_variance=noise_variance, level=level, prior=prior
    )
    clipped = estimate.start_in_bounds(start, table, prior)
    dtype = jnp.zeros(()).dtype
    at_start = np.asarray(_rss(jnp.asarray(clipped, dtype), jnp.asarray(curves, dtype), table), np.float64)
    at_fit = np.asarray(
        _rss(jnp.asarray(np.nan_to_num(result.params, nan=1.0), dtype), jnp.asarray(curves, dtype), table), np.float64
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.all(np.isfinite(result.params), axis=1), at_start / at_fit, np.nan)
    return Refined(result, ratio, clipped)


# ----------------------------------------------------------------------------------------------
# Estimators for fluojax.compare (data: (N, n) curves; estimates: (N, 3) D px^2/s, c0, alpha)
# ----------------------------------------------------------------------------------------------


def comparison_estimators(
    table: FastCurveTable,
    *,
    net=None,
    meta: dict | None = None,
    n_starts: int = 30,
    seed: int = 0,
    chunk: int | None = None,
) -> dict:
    """Estimators of (D px^2/s, c0, alpha) from curves, for ``fluojax.compare``.

    ``ls-{n_starts}start``: multistart least squares (the paper's baseline, 30 starts);
    with a network, ``deepfrap``: its prediction, and ``hybrid``: one LM fit started there.

    Arguments:
        table: ``FastCurveTable`` of the simulated experiment.
        net, meta: optional network and its checkpoint meta (from :func:`load_network`).
        n_starts: random starts of the LS baseline.
        seed: random seed of the LS starts.
        chunk: curves per compiled LS call (default: the fitting engine's).

    Returns:
        dict name -> ``estimate(curves) -> (N, 3)``.
    """
    key = jax.random.key(seed)

    def least_squares(curves):
        return estimate.fit_recovery_curves(np.asarray(curves), table, key=key, n_starts=n_starts, chunk=chunk).params

    estimators = {f"ls-{n_starts}start": least_squares}
    if net is not None:

        def network(curves):
            return predict_curves(net, meta, np.asarray(curves))

        def hybrid(curves):
            return refine(np.asarray(curves), table, predict_curves(net, meta, np.asarray(curves))).fit.params

        estimators.update({"deepfrap": network, "hybrid": hybrid})
    return estimators
