"""One training loop for every network in fluojax: optax, data simulated on the fly, orbax checkpoints.

A technique supplies a Flax NNX model and a pure, jittable ``sample_batch(key) -> (inputs,
targets)`` (usually its simulator followed by the label transform). :func:`train` then runs

    for step s = start .. steps-1:
        inputs, targets = sample_batch(fold_in(data_key, s))      # fresh data, never reused
        theta <- optax update of  mean loss(model(inputs), targets)

with simulation, forward and backward pass in one compiled step, so on a GPU the training data
never leave the device. Because the batch of step ``s`` depends only on ``(seed, s)``, a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen, and
ends with the same weights. A fixed held-out set (drawn once from a separate key) measures
progress; BatchNorm statistics are updated in training and used frozen in evaluation
(``nnx.view(model, use_running_average=...)``).

Run folder: ``metrics.csv`` and ``metrics.json`` (one row per evaluation) and ``checkpoints/``,
kept by orbax's ``CheckpointManager``: one folder per saved step, ``checkpoints/step_<9 digits>/``
holding ``model/`` and ``optimizer/`` (orbax ``StandardSave`` items) and ``meta.json`` (the
network's description, the training config, the metric history and ``step``), written once orbax
has committed the step, so its presence marks a complete checkpoint. The newest complete
checkpoint is the run's network (what :func:`read_checkpoint_meta` and :func:`restore_checkpoint`
read); :func:`save_checkpoint` writes the same layout (``model/`` and ``meta.json``) for one
network outside a run.

On several devices (all local devices, and with :mod:`fluojax.distributed` those of every
process) training is data-parallel (:func:`data_parallel`): weights and optimizer state are
replicated on a 1-D mesh of the devices, each simulated batch is split along its leading axis
between them, and XLA sums the gradients across devices; the batch of each step is the
one-device batch, so the run is the one-device run up to the order of floating-point sums.

The optimizer is one of the :class:`Optimizer` classes (:class:`Adam`, :class:`AdamW`,
:class:`Sgd`), each a frozen dataclass that makes its optax transformation from the learning-rate
schedule. Nothing here knows about a technique.
"""

from __future__ import annotations

import abc
import contextlib
import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jaxtyping import Array, Float

from fluojax.io import InputError

if TYPE_CHECKING:  # pragma: no cover
    import orbax.checkpoint as ocp

__all__ = [
    "Adam",
    "AdamW",
    "Optimizer",
    "RunMismatch",
    "Sgd",
    "TrainConfig",
    "TrainHistory",
    "check_resume",
    "check_run_folder",
    "data_parallel",
    "evaluate",
    "is_run_folder",
    "latest_checkpoint",
    "learning_rate_schedule",
    "make_optimizer",
    "mse_loss",
    "read_checkpoint_meta",
    "restore_checkpoint",
    "save_checkpoint",
    "train",
]


# ----------------------------------------------------------------------------------------------
# optimizers and config
# ----------------------------------------------------------------------------------------------


class Optimizer(abc.ABC):
    """An optimizer: turns a learning-rate schedule into an optax gradient transformation.

    Subclasses are frozen dataclasses of their hyper-parameters (hashable, stored in the run's
    meta by :meth:`TrainConfig.record`); a new optimizer is a new subclass.
    """

    @abc.abstractmethod
    def transformation(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        """The optax transformation with learning rate ``schedule(step)``."""


@dataclasses.dataclass(frozen=True)
class Adam(Optimizer):
    """Adam (Kingma & Ba 2015).

    Attributes:
        eps: float, added to the root of the second-moment estimate (Keras' default 1e-7).
    """

    eps: float = 1e-7

    def transformation(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        return optax.adam(schedule, eps=self.eps)


@dataclasses.dataclass(frozen=True)
class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019).

    Attributes:
        eps: float, as :class:`Adam`.
        weight_decay: float, decay rate per step, multiplied by the learning rate (optax's default).
    """

    eps: float = 1e-7
    weight_decay: float = 1e-4

    def transformation(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(schedule, eps=self.eps, weight_decay=self.weight_decay)


@dataclasses.dataclass(frozen=True)
class Sgd(Optimizer):
    """Stochastic gradient descent with heavy-ball momentum.

    Attributes:
        momentum: float in [0, 1), decay of the velocity (0: plain SGD).
    """

    momentum: float = 0.9

    def transformation(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        return optax.sgd(schedule, momentum=self.momentum)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (immutable; stored with every checkpoint by :meth:`record`).

    Attributes:
        steps: int, total optimizer steps (batches).
        batch_size: int, samples per batch (passed to the sampler by its builder; recorded here
            for throughput and the log).
        learning_rate: float, initial learning rate.
        final_learning_rate: float, learning rate reached at ``steps`` by exponential decay
            (equal to ``learning_rate`` for a constant rate).
        decay_every: int, staircase interval of the decay in steps (1 = smooth).
        warmup_fraction: float in [0, 1), fraction of ``steps`` spent first on a linear ramp
            from ``warmup_learning_rate`` up to ``learning_rate``; the decay then runs over the
            remaining steps.
        warmup_learning_rate: float, learning rate at step 0 of the ramp.
        optimizer: an :class:`Optimizer` (``Adam()``, ``AdamW(weight_decay=...)``,
            ``Sgd(momentum=...)``).
        eval_every: int, steps between held-out evaluations (and log rows).
        eval_batches: int, batches in the fixed held-out set.
        checkpoint_every: int, steps between checkpoints (0: only at the end).
        seed: int, random seed of the data and the held-out set and nothing else (model
            initialisation has its own rngs).
    """

    steps: int
    batch_size: int
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    decay_every: int = 1
    warmup_fraction: float = 0.0
    warmup_learning_rate: float = 0.0
    optimizer: Optimizer = Adam()
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.optimizer, Optimizer):
            raise InputError(f"unknown optimizer {self.optimizer!r}: use an Optimizer such as Adam(), AdamW() or Sgd()")
        counts = {
            "steps": self.steps,
            "batch size": self.batch_size,
            "evaluation interval": self.eval_every,
            "held-out batches": self.eval_batches,
        }
        for name, value in counts.items():
            if value < 1:
                raise InputError(f"{name} {value}: must be >= 1")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise InputError(f"warm-up fraction {self.warmup_fraction}: must be in [0, 1)")

    @property
    def warmup_steps(self) -> int:
        """Steps of the linear warm-up ramp, ``round(warmup_fraction * steps)``."""
        return round(self.warmup_fraction * self.steps)

    def record(self) -> dict:
        """The config as stored in a run's meta (JSON): its fields, the optimizer as
        ``{"name": <class name>, <its fields>}``, so runs with different optimizers differ."""
        fields = dataclasses.asdict(self)
        fields["optimizer"] = {"name": type(self.optimizer).__name__, **vars(self.optimizer)}
        return fields


class TrainHistory(NamedTuple):
    """Metrics of a run, one row per evaluation.

    Attributes:
        step: list of int, steps completed at each row.
        train_loss: list of float, mean training loss since the previous row (NaN in row 0,
            which holds the untrained network's held-out loss).
        eval_loss: list of float, loss on the fixed held-out set (model in eval mode).
        learning_rate: list of float.
        samples_per_s: list of float, training throughput (simulation included) since the
            previous row.
        elapsed_s: list of float, training wall time since the run started, in s (a resumed run
            continues from its checkpoint's last value; the time between the runs is not counted).
    """

    step: list
    train_loss: list
    eval_loss: list
    learning_rate: list
    samples_per_s: list
    elapsed_s: list

    @classmethod
    def empty(cls) -> TrainHistory:
        return cls([], [], [], [], [], [])

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in self._asdict().items()}


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Optional linear warm-up, then exponential (optionally staircase) decay.

    With ``W = warmup_steps`` and ``S = steps - W``:
    lr(s) = lr_w + (lr0 - lr_w) s / W                              for s < W,
    lr(s) = lr0 * (lr1 / lr0) ** (floor((s - W) / k) * k / S)     otherwise,  k = ``decay_every``.
    """
    warmup = config.warmup_steps
    decay_steps = max(config.steps - warmup, 1)
    ratio = config.final_learning_rate / config.learning_rate
    if ratio == 1.0:
        decay = optax.constant_schedule(config.learning_rate)
    else:
        k = max(1, config.decay_every)
        decay = optax.exponential_decay(
            config.learning_rate, transition_steps=k, decay_rate=ratio ** (k / decay_steps), staircase=k > 1
        )
    if warmup == 0:
        return decay
    ramp = optax.linear_schedule(config.warmup_learning_rate, config.learning_rate, warmup)
    return optax.join_schedules([ramp, decay], [warmup])


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """The optax transformation of a config: its optimizer driven by :func:`learning_rate_schedule`."""
    return config.optimizer.transformation(learning_rate_schedule(config))


def mse_loss(prediction: Float[Array, " batch *out"], target: Float[Array, " batch *out"]) -> Float[Array, ""]:
    """Mean squared error over all elements (``target`` is reshaped to ``prediction``'s shape)."""
    return jnp.mean((prediction - jnp.reshape(target, prediction.shape)) ** 2)


def evaluate(model: nnx.Module, batches: Iterable[tuple[Any, Array]], loss: Callable = mse_loss) -> float:
    """Mean loss of ``model`` in eval mode (BatchNorm running statistics) over ``(x, y)`` batches."""
    frozen = nnx.view(model, use_running_average=True, raise_if_not_found=False)
    values = [float(_eval_loss(frozen, x, y, loss)) for x, y in batches]
    return float(np.mean(values))


@nnx.jit(static_argnums=(3,))
def _eval_loss(model, x, y, loss):
    return loss(model(x), y)


# ----------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------

CHECKPOINTS = "checkpoints"
"""The run folder's subfolder of checkpoints (managed by orbax's ``CheckpointManager``)."""

META = "meta.json"
"""The file of a checkpoint's description; its presence marks the checkpoint complete."""


def _step_names() -> Any:
    """Orbax's naming of step folders in ``checkpoints/``: ``step_000000037``."""
    import orbax.checkpoint as ocp

    return ocp.path.step.standard_name_format(step_prefix="step", step_format_fixed_length=9)


def _saved_steps(run_dir: Path) -> list[tuple[int, Path, bool]]:
    """``(step, folder, complete)`` of the steps orbax committed in a run folder, oldest first."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.step), Path(str(m.path))) for m in _step_names().find_all(folder)]
    return [(step, path, (path / META).is_file()) for step, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    done = [path for _, path, complete in _saved_steps(Path(run_dir)) if complete]
    return done[-1] if done else None


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Keep orbax's progress messages (absl INFO and WARNING lines) off stderr while inside; errors
    still show. The absl verbosity is restored on leaving."""
    from absl import logging as absl_logging

    before = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(before)


def _checkpoint_manager(run_dir: Path, keep: int | None) -> ocp.CheckpointManager:
    """Orbax's manager of ``run_dir/checkpoints`` (synchronous saves: a step is on disk when ``save`` returns)."""
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, step_name_format=_step_names(), enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(run_dir.absolute() / CHECKPOINTS, options=options, item_names=("model", "optimizer"))


def _save_step(manager: ocp.CheckpointManager, step: int, model: nnx.Module, optimizer: nnx.Optimizer, meta: dict):
    """One training checkpoint: model and optimizer state through the manager, then ``meta.json``."""
    import orbax.checkpoint as ocp

    state = ocp.args.Composite(
        model=ocp.args.StandardSave(nnx.state(model)), optimizer=ocp.args.StandardSave(nnx.state(optimizer))
    )
    manager.save(step, args=state, force=True)
    manager.wait_until_finished()
    path = Path(str(manager.directory)) / _step_names().build_name(step)
    if jax.process_index() == 0:  # orbax wrote the arrays from every process; one writes the meta
        (path / META).write_text(json.dumps({**meta, "step": int(step)}, indent=1))


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder :func:`train` wrote: a complete checkpoint or ``metrics.json``.

    (A run stopped before its first checkpoint has ``metrics.json`` only; it is still a run.)
    """
    path = Path(path)
    return path.is_dir() and (latest_checkpoint(path) is not None or (path / "metrics.json").is_file())


def check_run_folder(path: str | Path) -> None:
    """Check that ``path`` may be used as a run folder; touches nothing.

    Allowed: nothing there, an empty folder, or an earlier run (which training resumes).

    Raises:
        ValueError: one-line message: a file, or a non-empty folder that is not a run.
    """
    from fluojax.io import describe_entries

    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder; nothing was touched")
    if not path.exists():
        return
    entries = os.listdir(path)
    if entries and not is_run_folder(path):
        raise ValueError(
            f"{path}: a folder that is not a fluojax training run ({describe_entries(entries)}; no checkpoints/ or "
            "metrics.json); nothing was touched; choose a new or empty folder"
        )


def read_checkpoint_meta(path: str | Path) -> tuple[Path, dict]:
    """The checkpoint folder to load from ``path`` (a run folder or a checkpoint) and its meta.

    Raises:
        ValueError: ``path`` holds no complete fluojax checkpoint (no ``meta.json``).
    """
    path = Path(path)
    ckpt = latest_checkpoint(path) or path
    meta_file = ckpt / META
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a fluojax network checkpoint (no meta.json)")
    return ckpt, json.loads(meta_file.read_text())


def save_checkpoint(
    path: str | Path, model: nnx.Module, optimizer: nnx.Optimizer | None, step: int, meta: dict
) -> Path:
    """Write one network outside a run: model (and optimizer) state with orbax, plus ``meta.json``
    (written last: its presence marks the checkpoint complete). Same layout as a run's step folder.

    Arguments:
        path: folder to create (replaced if it exists).
        model: the NNX model (parameters and BatchNorm statistics are saved).
        optimizer: its ``nnx.Optimizer`` or None.
        step: int, steps completed.
        meta: JSON-serialisable dict (network name and config, train config, history, ...).
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    with _quiet_orbax(), contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
        checkpointer.save(path / "model", nnx.state(model))
        if optimizer is not None:
            checkpointer.save(path / "optimizer", nnx.state(optimizer))
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:  # orbax wrote the arrays from every process; one writes the meta
        (path / META).write_text(json.dumps({**meta, "step": int(step)}, indent=1))
    return path


def _leaf_shapes(tree) -> dict:
    """``{"a.b.c": shape}`` of a pytree's array leaves (orbax metadata or shape structs)."""

    def name(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {".".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()) or ()) for path, leaf in flat}


def _tree_difference(saved: dict, wanted: dict) -> str:
    """One-line description of how two ``_leaf_shapes`` dicts differ (empty when they agree)."""

    def some(names):
        names = sorted(names)
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = []
    missing = wanted.keys() - saved.keys()
    extra = saved.keys() - wanted.keys()
    shapes = [k for k in wanted.keys() & saved.keys() if wanted[k] != saved[k]]
    if missing:
        parts.append(f"{len(missing)} arrays of this network are not in it ({some(missing)})")
    if extra:
        parts.append(f"it has {len(extra)} arrays this network lacks ({some(extra)})")
    if shapes:
        k = sorted(shapes)[0]
        parts.append(f"{len(shapes)} arrays differ in shape (e.g. {k}: {saved[k]} saved, {wanted[k]} here)")
    return "; ".join(parts)


def _restore_parts(path: Path, parts: list[tuple[str, nnx.Module | nnx.Optimizer]], read: Callable) -> None:
    """Restore each ``(name, node)`` from the item ``path/name`` with ``read(name, abstract_state)``.

    Raises:
        ValueError: one line naming the folder, the part and what differs.
    """
    import orbax.checkpoint as ocp

    for name, node in parts:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(node))
        try:
            restored = read(name, abstract)
        except Exception as err:  # orbax raises several types for missing parts and structure mismatches
            why = _restore_error(path / name, abstract, err)
            raise ValueError(f"checkpoint {path} does not match this network ({name}): {why}") from None
        nnx.update(node, restored)


def restore_checkpoint(path: str | Path, model: nnx.Module, optimizer: nnx.Optimizer | None = None) -> dict:
    """Load a checkpoint (a run's step folder or a :func:`save_checkpoint` folder) into an already
    built ``model`` (and ``optimizer``) of the same structure.

    Returns:
        the checkpoint's ``meta.json`` dict (includes ``step``).

    Raises:
        ValueError: the checkpoint is missing, incomplete, or holds a different structure (one
            line naming the folder and what differs).
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not (path / META).is_file():
        raise ValueError(f"{path} is not a complete fluojax checkpoint (no meta.json)")
    parts: list[tuple[str, nnx.Module | nnx.Optimizer]] = [("model", model)]
    if optimizer is not None:
        parts.append(("optimizer", optimizer))
    with _quiet_orbax(), contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
        _restore_parts(path, parts, lambda name, abstract: checkpointer.restore(path / name, abstract))
    return json.loads((path / META).read_text())


def _restore_step(manager: ocp.CheckpointManager, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> dict:
    """Resume: model and optimizer state of ``step`` through the manager; returns its meta."""
    import orbax.checkpoint as ocp

    path = Path(str(manager.directory)) / _step_names().build_name(step)

    def read(name, abstract):
        return manager.restore(step, args=ocp.args.Composite(**{name: ocp.args.StandardRestore(abstract)}))[name]

    _restore_parts(path, [("model", model), ("optimizer", optimizer)], read)
    return json.loads((path / META).read_text())


def _restore_error(path: Path, abstract, err: Exception) -> str:
    """Why a restore failed, in one line: the arrays that differ, else the error's non-empty text."""
    import orbax.checkpoint as ocp

    if not path.exists():
        return "this part was not saved"
    try:
        with contextlib.closing(ocp.StandardCheckpointer()) as checkpointer:
            metadata = checkpointer.metadata(path)
        difference = _tree_difference(
            _leaf_shapes(getattr(metadata, "item_metadata", metadata)), _leaf_shapes(abstract)
        )
    except Exception:  # unreadable metadata: fall back on orbax's own words
        difference = ""
    if difference:
        return difference
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return (text[:300] + " ...") if len(text) > 300 else (text or type(err).__name__)


class RunMismatch(ValueError):
    """A run folder holds a checkpoint of another network or training config than the one asked for.

    Attributes:
        run_dir: the folder.
        step: steps completed in its newest checkpoint.
        saved: that checkpoint's meta dict.
        differs: names of the meta entries that differ (``"recipe"``, ``"train_config.steps"``, ...).
    """

    def __init__(self, run_dir: Path, step: int, saved: dict, differs: list[str]):
        self.run_dir, self.step, self.saved, self.differs = run_dir, step, saved, differs
        what = saved.get("recipe") or saved.get("fluojax_network") or saved.get("network") or "another"
        listed = f"{', '.join(differs)} differ{'s' if len(differs) == 1 else ''}"
        if any(not d.startswith("train_config") for d in differs):
            text = (
                f"{run_dir} holds a {what} run (step {step}), not this network ({listed}); "
                "resume it with its own settings, or use another folder"
            )
        else:
            text = f"{run_dir} holds a run with another training config ({listed}; step {step}); use the same settings or a new folder"
        super().__init__(text)


def check_resume(run_dir: str | Path | None, meta: dict, config: TrainConfig | None = None) -> int:
    """Before anything is built: whether ``run_dir`` can be resumed with this network and config.

    Reads only the newest checkpoint's ``meta.json`` (milliseconds), so a run folder of another
    network or training config is refused before networks are built, data simulated or steps compiled.

    Arguments:
        run_dir: run folder, or None (nothing to resume).
        meta: the network's meta as passed to :func:`train` (entries present in both metas are compared;
            ``step`` and ``history`` are not).
        config: the ``TrainConfig`` to resume with (compared field by field, as :meth:`TrainConfig.record`), or None.

    Returns:
        steps completed in the newest checkpoint (0 when there is none).

    Raises:
        RunMismatch: (a ValueError) a meta entry or config field differs.
    """
    if run_dir is None or latest_checkpoint(run_dir) is None:
        return 0
    _, saved = read_checkpoint_meta(run_dir)
    step = int(saved.get("step", 0))
    differs = [
        k for k in meta if k not in ("step", "history", "train_config") and k in saved and not _same(meta[k], saved[k])
    ]
    if config is not None and "train_config" in saved:
        wanted = config.record()
        differs += [f"train_config.{k}" for k in wanted if not _same(wanted[k], saved["train_config"].get(k))]
    if differs:
        raise RunMismatch(Path(run_dir), step, saved, differs)
    return step


def _same(value, saved) -> bool:
    """Whether ``value`` equals ``saved`` as read back from JSON (tuples as lists, NaN equal to NaN)."""
    return json.dumps(value, sort_keys=True) == json.dumps(saved, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------


def data_parallel() -> tuple[Any, Any]:
    """Shardings of data-parallel training over all devices of all processes: a 1-D mesh
    ``("batch",)`` over ``jax.devices()``, weights and optimizer state replicated
    (``PartitionSpec()``), each batch's leading axis split (``PartitionSpec("batch")``).

    Returns:
        ``(replicated, split)`` ``NamedSharding``s, or ``(None, None)`` on a single device.
    """
    if jax.device_count() == 1:
        return None, None
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((jax.device_count(),), ("batch",), axis_types=(AxisType.Auto,))
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("batch"))


def _place(tree: Any, sharding: Any) -> Any:
    """``jax.device_put(tree, sharding)``, PRNG key arrays moved as their bits (a key array cannot
    be placed on another process's devices)."""

    def place(x):
        if jnp.issubdtype(jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype, jax.dtypes.prng_key):
            bits = jax.device_put(jax.random.key_data(x), sharding)
            return jax.random.wrap_key_data(bits, impl=jax.random.key_impl(x))
        return jax.device_put(x, sharding)

    return jax.tree.map(place, tree)


def _shard_batch(batch: Any, split: Any) -> Any:
    """Constrain every array of a batch whose leading axis the device count divides to be split
    along it (inside the compiled step; others stay replicated)."""
    if split is None:
        return batch
    count = split.mesh.size

    def place(a):
        if jnp.ndim(a) >= 1 and a.shape[0] % count == 0:
            return jax.lax.with_sharding_constraint(a, split)
        return a

    return jax.tree.map(place, batch)


def _write_metrics(run_dir: Path, history: TrainHistory) -> None:
    d = history.to_dict()
    (run_dir / "metrics.json").write_text(json.dumps(d, indent=1))
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(d))
        writer.writerows(zip(*d.values()))


def _time_is_up(t_run: float, limit_s: float, step: int, config: TrainConfig) -> bool:
    """Whether ``limit_s`` seconds have passed since ``t_run``: read every step on one process; on
    several, process 0's reading is shared with all every 100 steps and at each evaluation (one
    small collective), so that every process stops at the same step."""
    if jax.process_count() == 1:
        return time.perf_counter() - t_run >= limit_s
    if step % 100 and step % config.eval_every:
        return False
    from jax.experimental import multihost_utils

    up = np.int32(time.perf_counter() - t_run >= limit_s)
    return bool(multihost_utils.broadcast_one_to_all(up))


def train(
    model: nnx.Module,
    sample_batch: Callable[..., tuple[Any, Array]],
    config: TrainConfig,
    *,
    loss: Callable[[Array, Array], Array] = mse_loss,
    run_dir: str | Path | None = None,
    meta: dict | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    time_limit_s: float | None = None,
    data: Any = None,
    held_out: list | None = None,
    keep_checkpoints: int | None = None,
) -> TrainHistory:
    """Train ``model`` in place on batches simulated on the fly.

    Arguments:
        model: Flax NNX module mapping a batch of inputs to predictions; trained in place.
        sample_batch: pure, jittable ``key -> (inputs, targets)``; called inside the compiled
            training step with ``fold_in(data_key, step)``, and once per held-out batch. With
            ``data``, it is called as ``sample_batch(key, data)``.
        config: ``TrainConfig``.
        loss: ``loss(prediction, target) -> scalar``; MSE by default.
        run_dir: folder for checkpoints and metrics; if it holds a checkpoint, training resumes
            from the newest one. None: nothing is written.
        meta: JSON-serialisable description stored with each checkpoint (e.g. network name and
            config), so a checkpoint can be rebuilt and checked later.
        progress: progress with loss and samples/s (:func:`fluojax.progress.progress`: None or
            True, a bar on a terminal and a line every ~10 s in logs; False: nothing).
        stop_after: int, stop (after checkpointing) once this many steps are done in total
            (simulates an interruption; for tests and for splitting long runs).
        time_limit_s: float >= 0, stop once this many seconds have passed since this call's
            first step, after a held-out evaluation and a checkpoint at the step reached (a
            wall-clock allowance, e.g. a batch job's; the next call with the same ``run_dir``
            resumes exactly). On several hosts process 0's clock decides, every 100 steps.
        data: optional pytree of arrays passed to every ``sample_batch`` call as an argument of
            the compiled step (not baked in as a constant): a fixed pool of simulated samples to
            draw from, for networks trained on reused data.
        held_out: optional list of ``(inputs, targets)`` batches to evaluate on instead of
            batches drawn from ``sample_batch`` with the held-out key (needed when
            ``sample_batch`` draws from a training pool).
        keep_checkpoints: int, the newest checkpoints orbax keeps in ``run_dir`` (older ones
            are deleted); None: all.

    Returns:
        ``TrainHistory`` (the whole run's, including rows restored from a checkpoint).

    Raises:
        RunMismatch: ``run_dir`` holds a checkpoint of another network or config (:func:`check_resume`).
        ValueError: its checkpoint does not fit ``model`` (one line, see :func:`restore_checkpoint`).
    """
    from fluojax.progress import progress as progress_counter

    if time_limit_s is not None and not (math.isfinite(time_limit_s) and time_limit_s >= 0):
        raise ValueError(f"time limit {time_limit_s} s: must be a finite number >= 0")

    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    data_key, eval_key = jax.random.split(jax.random.key(config.seed))
    meta = dict(meta or {}, train_config=config.record())
    history = TrainHistory.empty()
    start = 0
    run_path = Path(run_dir) if run_dir is not None else None
    manager = None
    with contextlib.ExitStack() as stack:
        if run_path is not None:
            check_run_folder(run_path)
            run_path.mkdir(parents=True, exist_ok=True)
            check_resume(run_path, meta, config)
            stack.enter_context(_quiet_orbax())
            manager = _checkpoint_manager(run_path, keep_checkpoints)
            stack.callback(manager.close)
            saved = _saved_steps(run_path)
            done = [step for step, _, complete in saved if complete]
            if done:
                restored = _restore_step(manager, done[-1], model, optimizer)
                start = int(restored["step"])
                history = TrainHistory(**restored["history"])
            for step, _, _ in saved:  # steps interrupted before their meta.json: redone from `start`
                if step > start:
                    manager.delete(step)
        if held_out is None:
            sample = jax.jit(sample_batch)
            held_out = [
                sample(jax.random.fold_in(eval_key, i), *(() if data is None else (data,)))
                for i in range(config.eval_batches)
            ]
        schedule = learning_rate_schedule(config)
        replicated, split = data_parallel()
        if replicated is not None:  # weights, optimizer state and fixed data on every device
            nnx.update((model, optimizer), _place(nnx.state((model, optimizer)), replicated))
            held_out = _place(held_out, replicated)
            data = None if data is None else _place(data, replicated)
        seed_bits = jax.device_put(jax.random.key_data(data_key), replicated)
        trainable = nnx.view(model, use_running_average=False, raise_if_not_found=False)

        @nnx.jit
        def train_step(net, opt, bits, step, pool):
            key = jax.random.fold_in(jax.random.wrap_key_data(bits), step)
            x, y = sample_batch(key) if pool is None else sample_batch(key, pool)
            x, y = _shard_batch((x, y), split)
            value, grads = nnx.value_and_grad(lambda m: loss(m(x), y))(net)
            opt.update(net, grads)
            return value

        if start == 0:  # row 0: the untrained network on the held-out set
            for column, value in zip(
                history, (0, float("nan"), evaluate(model, held_out, loss), float(schedule(0)), float("nan"), 0.0)
            ):
                column.append(value)
        end = config.steps if stop_after is None else min(config.steps, stop_after)
        bar = progress_counter(config.steps, "train", "steps", enabled=progress, start=start)
        elapsed_before = float(history.elapsed_s[-1]) if history.elapsed_s else 0.0  # a resumed run's time so far
        t_run = t_row = time.perf_counter()
        losses = []
        step = start
        with bar:
            while step < end:
                at = np.int32(step) if replicated is None else jax.device_put(np.int32(step), replicated)
                losses.append(train_step(trainable, optimizer, seed_bits, at, data))
                step += 1
                bar.update(1)
                if time_limit_s is not None and step < end and _time_is_up(t_run, time_limit_s, step, config):
                    end = step  # the row, the checkpoint and the stop below
                if step % config.eval_every == 0 or step == end:
                    train_loss = float(np.mean(jax.device_get(losses)))
                    now = time.perf_counter()
                    rate = len(losses) * config.batch_size / (now - t_row)
                    eval_loss = evaluate(model, held_out, loss)
                    row = (step, train_loss, eval_loss, float(schedule(step)), rate, elapsed_before + now - t_run)
                    for column, value in zip(history, row):
                        column.append(value)
                    bar.set_postfix(loss=f"{train_loss:.4g}", held_out=f"{eval_loss:.4g}", samples_s=f"{rate:.0f}")
                    losses, t_row = [], time.perf_counter()
                    if not math.isfinite(train_loss):
                        raise FloatingPointError(f"training loss became {train_loss} at step {step}")
                    if run_path is not None and jax.process_index() == 0:
                        _write_metrics(run_path, history)
                due = config.checkpoint_every and step % config.checkpoint_every == 0
                if manager is not None and (due or step == end):
                    _save_step(manager, step, model, optimizer, {**meta, "history": history.to_dict()})
        return history
