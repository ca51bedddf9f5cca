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
(``nnx.view(model, use_running_average=...)``). Checkpoints (model state, optimizer state,
step, metric history) are written with orbax's ``StandardCheckpointer``; metrics go to
``metrics.csv`` and ``metrics.json`` in the run folder.

Nothing here knows about FCS, FRAP, SMLM or SOFI.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

__all__ = [
    "RunMismatch",
    "TrainConfig",
    "TrainHistory",
    "check_resume",
    "check_run_folder",
    "evaluate",
    "is_run_folder",
    "latest_checkpoint",
    "make_optimizer",
    "mse_loss",
    "read_checkpoint_meta",
    "restore_checkpoint",
    "save_checkpoint",
    "train",
]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (immutable; stored with every checkpoint).

    Attributes:
        steps: int, total optimizer steps (batches).
        batch_size: int, samples per batch (passed to the sampler by its builder; recorded here
            for throughput and the log).
        learning_rate: float, initial learning rate.
        final_learning_rate: float, learning rate reached at ``steps`` by exponential decay
            (equal to ``learning_rate`` for a constant rate).
        decay_every: int, staircase interval of the decay in steps (1 = smooth). The seed's
            ImFCSNet schedule: 1e-3 -> 1e-5, factor applied every 32 batches (fcs.md §1.5).
        warmup_fraction: float in [0, 1), fraction of ``steps`` spent first on a linear ramp
            from ``warmup_learning_rate`` up to ``learning_rate`` (the DeepFRAP seed ramps
            1e-3 -> 1e-1 before its step decay); the decay then runs over the remaining steps.
        warmup_learning_rate: float, learning rate at step 0 of the ramp.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with ``momentum``; the DeepFRAP seed
            used SGD with momentum 0.99).
        weight_decay: float, AdamW weight decay (ignored by the others).
        momentum: float, SGD momentum (ignored by Adam/AdamW).
        adam_eps: float, epsilon of Adam (Keras default 1e-7).
        eval_every: int, steps between held-out evaluations (and log rows).
        eval_batches: int, batches in the fixed held-out set.
        checkpoint_every: int, steps between checkpoints (0: only at the end).
        seed: int, seeds data, held-out set and nothing else (model init has its own rngs).
    """

    steps: int
    batch_size: int
    learning_rate: float = 1e-3
    final_learning_rate: float = 1e-5
    decay_every: int = 1
    warmup_fraction: float = 0.0
    warmup_learning_rate: float = 0.0
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    adam_eps: float = 1e-7
    eval_every: int = 100
    eval_batches: int = 4
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use 'adam', 'adamw' or 'sgd'")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.eval_batches < 1:
            raise ValueError("steps, batch_size, eval_every and eval_batches must be >= 1")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError("warmup_fraction must be in [0, 1)")

    @property
    def warmup_steps(self) -> int:
        """Steps of the linear warm-up ramp, ``round(warmup_fraction * steps)``."""
        return round(self.warmup_fraction * self.steps)


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
    """The optax transformation of a config (Adam, AdamW or SGD with momentum, and its schedule)."""
    schedule = learning_rate_schedule(config)
    if config.optimizer == "sgd":
        return optax.sgd(schedule, momentum=config.momentum)
    if config.optimizer == "adamw":
        return optax.adamw(schedule, eps=config.adam_eps, weight_decay=config.weight_decay)
    return optax.adam(schedule, eps=config.adam_eps)


def mse_loss(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """Mean squared error (the seed networks' loss, on ln D)."""
    return jnp.mean((prediction - jnp.reshape(target, prediction.shape)) ** 2)


def evaluate(model: nnx.Module, batches, loss: Callable = mse_loss) -> float:
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


def _checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:09d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("step_*") if (p / "meta.json").is_file())
    return done[-1] if done else None


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
    meta_file = ckpt / "meta.json"
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a fluojax network checkpoint (no meta.json)")
    return ckpt, json.loads(meta_file.read_text())


def save_checkpoint(
    path: str | Path, model: nnx.Module, optimizer: nnx.Optimizer | None, step: int, meta: dict
) -> Path:
    """Write model (and optimizer) state with orbax, plus ``meta.json`` (written last: its presence
    marks the checkpoint complete).

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
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / "model", nnx.state(model))
    if optimizer is not None:
        checkpointer.save(path / "optimizer", nnx.state(optimizer))
    checkpointer.wait_until_finished()
    (path / "meta.json").write_text(json.dumps({**meta, "step": int(step)}, indent=1))
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


def restore_checkpoint(path: str | Path, model: nnx.Module, optimizer: nnx.Optimizer | None = None) -> dict:
    """Load a checkpoint into an already built ``model`` (and ``optimizer``) of the same structure.

    Returns:
        the checkpoint's ``meta.json`` dict (includes ``step``).

    Raises:
        ValueError: the checkpoint is missing, incomplete, or holds a different structure (one
            line naming the folder and what differs).
    """
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not (path / "meta.json").is_file():
        raise ValueError(f"{path} is not a complete fluojax checkpoint (no meta.json)")
    checkpointer = ocp.StandardCheckpointer()
    parts = [("model", model)] + ([("optimizer", optimizer)] if optimizer is not None else [])
    for name, node in parts:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(node))
        try:
            restored = checkpointer.restore(path / name, abstract)
        except Exception as err:  # orbax raises several types for missing parts and structure mismatches
            why = _restore_error(checkpointer, path / name, abstract, err)
            raise ValueError(f"checkpoint {path} does not match this network ({name}): {why}") from None
        nnx.update(node, restored)
    return json.loads((path / "meta.json").read_text())


def _restore_error(checkpointer, path: Path, abstract, err: Exception) -> str:
    """Why a restore failed, in one line: the arrays that differ, else the error's non-empty text."""
    if not path.exists():
        return "this part was not saved"
    try:
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
        config: the ``TrainConfig`` to resume with (compared field by field), or None.

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
        wanted = dataclasses.asdict(config)
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


def _write_metrics(run_dir: Path, history: TrainHistory) -> None:
    d = history.to_dict()
    (run_dir / "metrics.json").write_text(json.dumps(d, indent=1))
    with open(run_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(d))
        writer.writerows(zip(*d.values()))


def train(
    model: nnx.Module,
    sample_batch: Callable[[jax.Array], tuple[Any, jax.Array]],
    config: TrainConfig,
    *,
    loss: Callable[[jax.Array, jax.Array], jax.Array] = mse_loss,
    run_dir: str | Path | None = None,
    meta: dict | None = None,
    progress: bool | None = None,
    stop_after: int | None = None,
    data: Any = None,
    held_out: list | None = None,
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
        data: optional pytree of arrays passed to every ``sample_batch`` call as an argument of
            the compiled step (not baked in as a constant): a fixed pool of simulated samples to
            draw from, for networks trained on reused data (the seed's FCSNet).
        held_out: optional list of ``(inputs, targets)`` batches to evaluate on instead of
            batches drawn from ``sample_batch`` with the held-out key (needed when
            ``sample_batch`` draws from a training pool).

    Returns:
        ``TrainHistory`` (the whole run's, including rows restored from a checkpoint).

    Raises:
        RunMismatch: ``run_dir`` holds a checkpoint of another network or config (:func:`check_resume`).
        ValueError: its checkpoint does not fit ``model`` (one line, see :func:`restore_checkpoint`).
    """
    from fluojax.progress import progress as progress_counter

    optimizer = nnx.Optimizer(model, make_optimizer(config), wrt=nnx.Param)
    data_key, eval_key = jax.random.split(jax.random.key(config.seed))
    meta = dict(meta or {}, train_config=dataclasses.asdict(config))
    history = TrainHistory.empty()
    start = 0
    run_path = Path(run_dir) if run_dir is not None else None
    if run_path is not None:
        check_run_folder(run_path)
        run_path.mkdir(parents=True, exist_ok=True)
        check_resume(run_path, meta, config)
        last = latest_checkpoint(run_path)
        if last is not None:
            saved = restore_checkpoint(last, model, optimizer)
            start = int(saved["step"])
            history = TrainHistory(**saved["history"])

    if held_out is None:
        sample = jax.jit(sample_batch)
        held_out = [
            sample(jax.random.fold_in(eval_key, i), *(() if data is None else (data,)))
            for i in range(config.eval_batches)
        ]
    schedule = learning_rate_schedule(config)
    trainable = nnx.view(model, use_running_average=False, raise_if_not_found=False)

    @nnx.jit
    def train_step(net, opt, key, pool):
        x, y = sample_batch(key) if pool is None else sample_batch(key, pool)
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
            losses.append(train_step(trainable, optimizer, jax.random.fold_in(data_key, step), data))
            step += 1
            bar.update(1)
            if step % config.eval_every == 0 or step == end:
                train_loss = float(np.mean(jax.device_get(losses)))
                now = time.perf_counter()
                rate = len(losses) * config.batch_size / (now - t_row)
                eval_loss = evaluate(model, held_out, loss)
                for column, value in zip(
                    history, (step, train_loss, eval_loss, float(schedule(step)), rate, elapsed_before + now - t_run)
                ):
                    column.append(value)
                bar.set_postfix(loss=f"{train_loss:.4g}", held_out=f"{eval_loss:.4g}", samples_s=f"{rate:.0f}")
                losses, t_row = [], time.perf_counter()
                if not math.isfinite(train_loss):
                    raise FloatingPointError(f"training loss became {train_loss} at step {step}")
                if run_path is not None:
                    _write_metrics(run_path, history)
            due = config.checkpoint_every and step % config.checkpoint_every == 0
            if run_path is not None and (due or step == end):
                save_checkpoint(
                    _checkpoint_dir(run_path, step), model, optimizer, step, {**meta, "history": history.to_dict()}
                )
    return history
