"""The networks engine: what every learned estimator shares, whatever the technique.

A technique writes its networks (``<technique>/nets.py``) and, in ``<technique>/learned.py``, a
subclass of :class:`Recipe` that says how to build its network (:meth:`Recipe.build`), how to make
its training data (:meth:`Recipe.training_data`) and what else its checkpoints must remember
(:meth:`Recipe.meta_fields`). This module does the rest, the same way for every technique:

- :func:`train_recipe` trains a recipe with :func:`fluojax.train.train`, refusing a run folder of
  another recipe before anything is built or simulated;
- :func:`network_meta` is the description stored in every checkpoint's ``meta.json``
  (``fluojax_network``, ``recipe``, ``net_config`` and the recipe's own entries);
  :func:`save_network` writes a checkpoint, :func:`load_network` rebuilds a network from one
  with the builder the technique registers for that network kind;
- :func:`predict` runs a network over any number of samples in batches of one fixed size (the
  last one padded, :func:`fluojax.batching.map_padded`), so one compilation serves them all;
- :func:`parameter_count` (trainable weights, the one parameter count) and
  :func:`keras_parameter_count` (plus the BatchNorm running statistics: Keras's "Total params",
  to compare with papers that quote it);
- :func:`log_uniform`, the draw of scale parameters (D, densities, noise levels) in training priors;
- :func:`variance_scaling` and its named cases (:func:`he_normal`, :func:`lecun_normal`,
  :func:`glorot_uniform`): the weight initializers of ``jax.nn.initializers`` with the same values,
  drawn over the flattened shape (see :func:`variance_scaling` for why).

Nothing here names a technique. Flax and the training engine are imported when first needed, so
importing this module costs only NumPy and JAX.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from fluojax import draws
from fluojax.batching import local_devices, map_padded

if TYPE_CHECKING:  # pragma: no cover
    from flax import nnx

    from fluojax.train import TrainConfig, TrainHistory

__all__ = [
    "Recipe",
    "TrainingData",
    "eval_view",
    "glorot_uniform",
    "he_normal",
    "keras_parameter_count",
    "lecun_normal",
    "load_network",
    "log_uniform",
    "network_meta",
    "parameter_count",
    "predict",
    "save_network",
    "train_recipe",
    "variance_scaling",
]


# ----------------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """What :func:`fluojax.train.train` needs besides the network and its config (immutable).

    Attributes:
        sample_batch: pure, jittable ``key -> (inputs, targets)`` (or ``(key, data) -> ...``
            with ``data``).
        loss: ``loss(prediction, target) -> scalar``; None: the training engine's MSE.
        data: optional pytree of arrays (a fixed training pool) passed to every ``sample_batch``.
        held_out: optional list of ``(inputs, targets)`` held-out batches.
    """

    sample_batch: Callable
    loss: Callable | None = None
    data: Any = None
    held_out: list | None = None


@dataclasses.dataclass(frozen=True)
class Recipe(abc.ABC):
    """Base of every technique's training recipe: a network size, a training schedule, and hooks.

    A technique subclasses it (a frozen dataclass too), adds the fields its simulator needs (a
    prior, the experiment's settings, ...) and implements :attr:`network`, :meth:`build` and
    :meth:`training_data`; :meth:`meta_fields` and :meth:`with_steps` have defaults.

    Attributes:
        name: str, the recipe's name (e.g. ``"imfcsnet-2d-small"``), stored in checkpoints.
        net: the network's config, a frozen dataclass (stored as ``net_config``).
        train: ``fluojax.train.TrainConfig``.
    """

    name: str
    net: Any
    train: TrainConfig

    @property
    @abc.abstractmethod
    def network(self) -> str:
        """The network kind, stored as ``meta["fluojax_network"]`` and the key of its builder."""

    @abc.abstractmethod
    def build(self, seed: int) -> nnx.Module:
        """A freshly initialised network of this recipe (weights drawn from ``seed``)."""

    @abc.abstractmethod
    def training_data(self, seed: int, progress: bool | None) -> TrainingData:
        """The sampler (and pool, loss, held-out set) to train on; called after the run folder is checked."""

    def meta_fields(self) -> dict:
        """Technique entries stored in checkpoints after the common ones (e.g. the training prior)."""
        return {}

    def with_steps(self, steps: int) -> Recipe:
        """The same recipe trained for ``steps`` optimizer steps."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, steps=int(steps)))


def recipe_named(recipes: Mapping[str, Recipe], recipe: Recipe | str) -> Recipe:
    """``recipe`` itself, or the recipe of that name in a technique's registry ``recipes``.

    Raises:
        InputError: a name that is not in ``recipes``.
    """
    if isinstance(recipe, str):
        from fluojax.io import require  # io reads TIFFs: imported only when a name is looked up

        require(recipe in recipes, f"recipe {recipe!r}: unknown; choose from {', '.join(sorted(recipes))}")
        return recipes[recipe]
    return recipe


def describe(value: Any) -> Any:
    """A JSON-ready description of a (nested) frozen dataclass, ``{"kind": class name, fields...}``,
    for a checkpoint's ``meta.json`` (a recipe's simulation settings); arrays are named by type."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "kind": type(value).__name__,
            **{f.name: describe(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, (tuple, list)):
        return [describe(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return type(value).__name__


def network_meta(recipe: Recipe) -> dict:
    """The network description stored in a checkpoint's ``meta.json``.

    ``fluojax_network`` (the kind), ``recipe`` (its name), ``net_config`` (the config's fields),
    then the recipe's :meth:`Recipe.meta_fields`. The training engine adds ``train_config``,
    ``history`` and ``step``.
    """
    return {
        "fluojax_network": recipe.network,
        "recipe": recipe.name,
        "net_config": dataclasses.asdict(recipe.net),
        **recipe.meta_fields(),
    }


def train_recipe(
    recipe: Recipe,
    run_dir: str | Path | None = None,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
    stop_after: int | None = None,
    time_limit_s: float | None = None,
) -> tuple[nnx.Module, TrainHistory]:
    """Train a recipe's network with :func:`fluojax.train.train`.

    The run folder is checked against the recipe first (:func:`fluojax.train.check_resume`), so
    a folder of another recipe is refused before the network is built or data simulated.

    Arguments:
        recipe: a technique's :class:`Recipe`.
        run_dir: folder for checkpoints and metrics (resumes if it holds a checkpoint); None:
            nothing is written.
        steps: override the number of steps (:meth:`Recipe.with_steps`).
        seed: int, random seed of the weights and of the training data.
        progress: progress bars (None: only on a terminal).
        stop_after: stop after this many steps in total (see ``fluojax.train.train``).
        time_limit_s: stop, after a checkpoint, once this many seconds of training have passed
            (see ``fluojax.train.train``; simulating the data comes first and is not counted).

    Returns:
        (network, ``TrainHistory``).
    """
    from fluojax import train as training

    if steps:
        recipe = recipe.with_steps(steps)
    config = dataclasses.replace(recipe.train, seed=seed)
    meta = network_meta(recipe)
    training.check_resume(run_dir, meta, config)  # before anything is built or simulated
    net = recipe.build(seed)
    data = recipe.training_data(seed, progress)
    history = training.train(
        net,
        data.sample_batch,
        config,
        run_dir=run_dir,
        meta=meta,
        progress=progress,
        stop_after=stop_after,
        time_limit_s=time_limit_s,
        data=data.data,
        held_out=data.held_out,
        loss=training.mse_loss if data.loss is None else data.loss,
    )
    return net, history


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------


def save_network(path: str | Path, net: nnx.Module, meta: dict, step: int = 0) -> Path:
    """Write a network checkpoint (weights with orbax, then ``meta.json``) that :func:`load_network` reads.

    Arguments:
        path: checkpoint folder to create (replaced if it exists).
        net: the network.
        meta: JSON-serialisable dict with at least ``fluojax_network`` (e.g. :func:`network_meta`).
        step: int, training steps done (stored as ``meta["step"]``).

    Returns:
        the checkpoint folder (absolute).
    """
    from fluojax import train as training

    if "fluojax_network" not in meta:
        raise ValueError("a network checkpoint's meta needs 'fluojax_network' (the key of its builder)")
    return training.save_checkpoint(path, net, None, step, meta)


def load_network(
    path: str | Path,
    builders: Mapping[str, Callable[[dict], nnx.Module]],
    *,
    expect: str | None = None,
    accepted: str = "known network",
) -> tuple[nnx.Module, dict]:
    """Rebuild a trained network from a checkpoint: a run folder (its newest checkpoint) or one checkpoint.

    Arguments:
        path: run folder or checkpoint folder.
        builders: network kind (``meta["fluojax_network"]``) -> ``build(meta)``, a function that
            makes an untrained network of the checkpoint's shape from its meta (its
            ``net_config``). A technique passes the builders of its own networks.
        expect: a kind to insist on (refuse a checkpoint of any other), or None.
        accepted: words for the kinds in ``builders``, for the refusal (e.g. ``"DeepFRAP network"``).

    Returns:
        (network in evaluation mode (:func:`eval_view`), checkpoint meta dict, with ``step``).

    Raises:
        ValueError: no ``meta.json`` there, a kind not in ``builders``, not ``expect``, or
            weights that do not fit the rebuilt network.
    """
    from fluojax import train as training

    ckpt, meta = training.read_checkpoint_meta(path)
    kind: str = meta.get("fluojax_network") or ""
    if kind not in builders:
        raise ValueError(f"{path} holds a {kind or 'non-network'} checkpoint, not a {accepted}")
    if expect is not None and kind != expect:
        raise ValueError(f"{path} holds a {kind} checkpoint, not a {expect}")
    net = builders[kind](meta)
    training.restore_checkpoint(ckpt, net)
    return eval_view(net), meta


def eval_view(net: nnx.Module) -> nnx.Module:
    """The network in evaluation mode: BatchNorm layers use their running statistics, so every
    sample's output is independent of the others in its batch (a network without such layers is
    returned as it computes)."""
    from flax import nnx

    return nnx.view(net, use_running_average=True, raise_if_not_found=False)


# ----------------------------------------------------------------------------------------------
# batched prediction with one compilation
# ----------------------------------------------------------------------------------------------


@functools.cache
def _compiled_forward() -> Callable:
    from flax import nnx

    @functools.partial(jax.jit, static_argnums=0)
    def forward(graphdef, state, x):
        return nnx.merge(graphdef, state)(x)

    return forward


def predict(
    net: nnx.Module,
    inputs: Float[ArrayLike, "n ..."],
    batch: int,
    dtype: Any = np.float32,
    devices: Sequence[Any] | None = None,
) -> Float[np.ndarray, "n ..."]:
    """A network's outputs for many samples, in calls of exactly ``batch`` samples (one compilation).

    The weights are copied once to each device and the calls dealt out to the devices
    (:func:`fluojax.batching.map_padded`); each sample's output is the one-device output.

    Arguments:
        net: the network, in evaluation mode (:func:`eval_view`; in training mode BatchNorm
            would mix the padding into the real samples' outputs).
        inputs: (n, ...) samples, n >= 1; converted to ``dtype``.
        batch: int, samples per compiled call. A caller that wants no padding for inputs
            smaller than one batch passes ``min(batch, n)`` (a compilation per such size).
        dtype: input dtype (float32).
        devices: devices to use (None: all local devices, :func:`fluojax.batching.local_devices`).

    Returns:
        (n, ...) NumPy array of the network's outputs.
    """
    from flax import nnx

    forward = _compiled_forward()
    chosen = local_devices(devices)
    graphdef, state = nnx.split(net)
    weights = {device: jax.device_put(state, device) for device in chosen}

    def run(x, _count):
        x = jnp.asarray(x)
        return forward(graphdef, weights[next(iter(x.devices()))], x)

    return map_padded(run, np.asarray(inputs, dtype), batch, devices=chosen)


# ----------------------------------------------------------------------------------------------
# sizes and priors
# ----------------------------------------------------------------------------------------------


def parameter_count(model: nnx.Module) -> int:
    """Number of trainable weights: all ``nnx.Param`` leaves (kernels, biases, BatchNorm scale and offset).

    The one parameter count of a network; :func:`keras_parameter_count` adds what is not trained.
    Works on an abstract model (``nnx.eval_shape``) too.

    Arguments:
        model: a flax network.
    """
    from flax import nnx

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def keras_parameter_count(model: nnx.Module) -> int:
    """Keras's "Total params": :func:`parameter_count` plus the BatchNorm running means and
    variances (``nnx.BatchStat`` leaves, 2 numbers per normalised feature, updated by averaging,
    not by gradients). Only this sum can be compared with counts that papers written with Keras
    quote; for a network without BatchNorm it equals :func:`parameter_count`.

    Works on an abstract model (``nnx.eval_shape``) too.

    Arguments:
        model: a flax network.
    """
    from flax import nnx

    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))))


def log_uniform(key: jax.Array, shape: tuple[int, ...], lo: float, hi: float) -> Float[Array, "*shape"]:
    """Draws whose logarithm is uniform: ``exp(U[ln lo, ln hi])``, clipped to ``[lo, hi]``.

    The clip only returns draws that float32 rounding of exp/log pushed a hair outside the range.

    Arguments:
        key: PRNG key.
        shape: tuple of ints.
        lo, hi: floats, 0 < lo <= hi, in the units of the drawn quantity.

    Returns:
        array of ``shape`` (default float type).
    """
    x = jnp.exp(draws.uniform(key, shape, minval=np.log(lo), maxval=np.log(hi)))
    return jnp.clip(x, lo, hi)


# ----------------------------------------------------------------------------------------------
# weight initializers
# ----------------------------------------------------------------------------------------------


def _fans(shape: Sequence[int], in_axis, out_axis, batch_axis) -> tuple[float, float]:
    """(fan_in, fan_out) of a weight array: its input and output sizes times the receptive field
    (the axes that are neither input, output nor batch), as ``jax.nn.initializers`` counts them."""

    def size(axis) -> int:
        return shape[axis] if isinstance(axis, int) else int(np.prod([shape[i] for i in axis]))

    in_size, out_size, batch_size = size(in_axis), size(out_axis), size(batch_axis)
    receptive_field = int(np.prod(shape)) / in_size / out_size / batch_size
    return in_size * receptive_field, out_size * receptive_field


def variance_scaling(
    scale: float,
    mode: str,
    distribution: str,
    in_axis: int | Sequence[int] = -2,
    out_axis: int | Sequence[int] = -1,
    batch_axis: int | Sequence[int] = (),
) -> Callable:
    """``jax.nn.initializers.variance_scaling(scale, mode, distribution, ...)`` with the same values,
    its random numbers drawn as a flat vector and reshaped.

    Weights are drawn with variance ``scale / n``, n the fan in, fan out or their mean (``mode``
    ``"fan_in"``, ``"fan_out"``, ``"fan_avg"``): from a normal truncated to +-2 s.d. and rescaled
    (``"truncated_normal"``), a normal, or a uniform on +-sqrt(3 scale / n) (He et al. 2015;
    Glorot & Bengio 2010). The draws are :mod:`fluojax.draws`' (``jax.random``'s values, drawn flat),
    so the weights equal ``jax.nn.initializers``' bit for bit while XLA compiles them several
    times faster on a CPU (each weight shape is compiled once per process: seconds per network
    built; docs/benchmarks.md, "Building a network").

    Arguments:
        scale: float, the variance's numerator (2 for He, 1 for LeCun and Glorot).
        mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``.
        distribution: ``"truncated_normal"``, ``"normal"`` or ``"uniform"``.
        in_axis, out_axis, batch_axis: the weight array's input, output and batch axes.

    Returns:
        ``init(key, shape, dtype=float32) -> array``, a floating-point initializer.
    """
    denominators = {"fan_in": lambda i, o: i, "fan_out": lambda i, o: o, "fan_avg": lambda i, o: (i + o) / 2}
    if mode not in denominators or distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(f"variance_scaling: mode {mode!r} or distribution {distribution!r} not supported")

    def init(key, shape, dtype=jnp.float32):
        shape = tuple(int(n) for n in shape)
        variance = jnp.array(scale / denominators[mode](*_fans(shape, in_axis, out_axis, batch_axis)), dtype=dtype)
        if distribution == "truncated_normal":
            stddev = jnp.sqrt(variance) / jnp.array(0.87962566103423978, dtype)  # s.d. of N(0, 1) cut at +-2
            return draws.truncated_normal(key, -2, 2, shape, dtype) * stddev
        if distribution == "normal":
            return draws.normal(key, shape, dtype) * jnp.sqrt(variance)
        return draws.uniform(key, shape, dtype, -1) * jnp.sqrt(3 * variance)

    return init


def he_normal(in_axis=-2, out_axis=-1, batch_axis=()) -> Callable:
    """He (Kaiming) normal: truncated normal of variance 2 / fan_in (``jax.nn.initializers.he_normal``)."""
    return variance_scaling(2.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis)


def lecun_normal(in_axis=-2, out_axis=-1, batch_axis=()) -> Callable:
    """LeCun normal: truncated normal of variance 1 / fan_in (flax's default kernel initializer)."""
    return variance_scaling(1.0, "fan_in", "truncated_normal", in_axis, out_axis, batch_axis)


def glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=()) -> Callable:
    """Glorot (Xavier) uniform: variance 2 / (fan_in + fan_out) (``jax.nn.initializers.glorot_uniform``)."""
    return variance_scaling(1.0, "fan_avg", "uniform", in_axis, out_axis, batch_axis)
