"""Specification of the networks engine (fluojax.networks) on a tiny model that knows no technique:
the padded batched predict, checkpoints, recipes, parameter counts and the log-uniform draw."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fluojax import batching, networks
from fluojax.train import TrainConfig

TRACES = []  # one entry per trace of TinyNet.__call__ (a Python side effect runs only while tracing)


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    inputs: int = 5
    hidden: int = 6
    name: str = "tiny"


class TinyNet(nnx.Module):
    """Dense -> BatchNorm -> tanh -> Dense(2): BatchNorm makes eval mode matter."""

    def __init__(self, config: TinyConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.hidden = nnx.Linear(config.inputs, config.hidden, rngs=rngs)
        self.norm = nnx.BatchNorm(config.hidden, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(config.hidden, 2, rngs=rngs)

    def __call__(self, x):
        TRACES.append(x.shape)
        return self.out(jnp.tanh(self.norm(self.hidden(x))))


def _build(meta):
    return TinyNet(TinyConfig(**meta["net_config"]), rngs=nnx.Rngs(123))  # other weights than any saved net


BUILDERS = {"tiny": _build}


def _trained_like(seed=0):
    """A TinyNet whose BatchNorm statistics are not the initial ones (one training-mode pass)."""
    net = TinyNet(TinyConfig(), rngs=nnx.Rngs(seed))
    net(jax.random.normal(jax.random.key(seed + 1), (16, 5)) * 3.0 + 1.0)  # updates the running statistics
    return networks.eval_view(net)


def test_padded_predict_matches_the_plain_forward_pass_and_compiles_once():
    net = _trained_like()
    x = np.asarray(jax.random.normal(jax.random.key(7), (33, 5)), np.float32)
    sizes = (1, 7, 8, 9, 33)  # below, at, just above and several times the batch of 8
    TRACES.clear()
    predictions = {n: networks.predict(net, x[:n], batch=8) for n in sizes}
    assert TRACES == [(8, 5)]  # one trace, of one padded batch, for all five sizes
    for n in sizes:
        # the reference runs every sample in one eager call, unpadded; float32 matmul orders
        # may differ between the compiled batch of 8 and the eager batch of n: a few ulp
        np.testing.assert_allclose(predictions[n], np.asarray(net(jnp.asarray(x[:n]))), rtol=1e-5, atol=1e-6)
        assert predictions[n].shape == (n, 2)


def test_map_padded_pads_with_the_last_row_and_drops_the_padding():
    seen = []

    def fn(chunk, count):
        a, b = chunk
        seen.append((a.shape[0], count, a[-1].copy()))
        return {"sum": a + b, "count": np.full(a.shape[0], count)}

    a = np.arange(10.0).reshape(5, 2)
    b = np.ones(5)[:, None]
    out = batching.map_padded(fn, (a, b), 3)
    np.testing.assert_array_equal(out["sum"], a + 1)
    np.testing.assert_array_equal(out["count"], [3, 3, 3, 2, 2])
    assert [s[:2] for s in seen] == [(3, 3), (3, 2)]
    np.testing.assert_array_equal(seen[1][2], a[-1])  # the padding row repeats the last real row


def test_map_padded_refuses_inputs_of_different_lengths_and_no_input():
    with pytest.raises(ValueError, match="share their first axis"):
        batching.map_padded(lambda c, n: c, (np.zeros(3), np.zeros(4)), 2)
    with pytest.raises(ValueError, match="0 samples"):
        batching.map_padded(lambda c, n: c, np.zeros((0, 2)), 2)


def test_save_and_load_round_trip_restores_identical_outputs(tmp_path):
    net = _trained_like(seed=3)
    meta = {"fluojax_network": "tiny", "recipe": "by hand", "net_config": dataclasses.asdict(TinyConfig())}
    networks.save_network(tmp_path / "ckpt", net, meta, step=5)
    loaded, saved = networks.load_network(tmp_path / "ckpt", BUILDERS)
    x = jax.random.normal(jax.random.key(9), (4, 5))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(net(x)))  # same weights, same statistics
    assert saved == {**meta, "step": 5}
    fresh = _build(meta)
    assert not np.allclose(np.asarray(networks.eval_view(fresh)(x)), np.asarray(net(x)))  # the restore did the work


def test_load_refuses_an_unknown_or_unexpected_kind(tmp_path):
    net = _trained_like()
    networks.save_network(
        tmp_path / "ckpt", net, {"fluojax_network": "tiny", "net_config": dataclasses.asdict(TinyConfig())}
    )
    with pytest.raises(ValueError, match="holds a tiny checkpoint, not a toy network"):
        networks.load_network(tmp_path / "ckpt", {"other": _build}, accepted="toy network")
    with pytest.raises(ValueError, match="holds a tiny checkpoint, not a other"):
        networks.load_network(tmp_path / "ckpt", {"tiny": _build, "other": _build}, expect="other")
    with pytest.raises(ValueError, match="no meta.json"):  # noqa: RUF043
        networks.load_network(tmp_path, BUILDERS)


@dataclasses.dataclass(frozen=True)
class TinyRecipe(networks.Recipe):
    """y = sum(x): a technique in five lines, through the recipe hooks."""

    noise: float = 0.0
    network = "tiny"

    def meta_fields(self):
        return {"noise": self.noise}

    def build(self, seed):
        return TinyNet(self.net, rngs=nnx.Rngs(seed))

    def training_data(self, seed, progress):
        def sample(key):
            x = jax.random.normal(key, (self.train.batch_size, 5))
            return x, jnp.stack([x.sum(1), -x.sum(1)], axis=1)

        return networks.TrainingData(sample)


def test_a_recipe_trains_stores_its_meta_and_reloads(tmp_path):
    recipe = TinyRecipe(
        "tiny-sum",
        TinyConfig(),
        TrainConfig(
            steps=40, batch_size=32, learning_rate=1e-2, final_learning_rate=1e-3, eval_every=20, eval_batches=1
        ),
        noise=0.5,
    )
    net, history = networks.train_recipe(recipe, tmp_path / "run", steps=30, seed=1, progress=False)
    loaded, meta = networks.load_network(tmp_path / "run", BUILDERS)
    assert meta["step"] == 30 and meta["train_config"]["steps"] == 30  # the steps override reached the schedule
    assert {k: meta[k] for k in ("fluojax_network", "recipe", "net_config", "noise")} == networks.network_meta(recipe)
    x = jax.random.normal(jax.random.key(5), (6, 5))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(networks.eval_view(net)(x)))
    assert history.eval_loss[-1] < history.eval_loss[0]


def test_the_recipe_base_cannot_be_used_without_its_hooks():
    with pytest.raises(TypeError):
        networks.Recipe("x", TinyConfig(), TrainConfig())


def test_parameter_counts_name_trainable_and_keras_totals():
    net = TinyNet(TinyConfig(), rngs=nnx.Rngs(0))
    trainable = (5 * 6 + 6) + 2 * 6 + (6 * 2 + 2)  # two Dense layers and BatchNorm's scale and offset
    assert networks.parameter_count(net) == trainable
    assert networks.keras_parameter_count(net) == trainable + 2 * 6  # + running mean and variance


def test_log_uniform_stays_in_range_with_a_uniform_logarithm():
    x = np.asarray(networks.log_uniform(jax.random.key(0), (20_000,), 0.02, 50.0))
    assert x.min() >= 0.02 and x.max() <= 50.0
    # ln x uniform on [ln 0.02, ln 50]: the mean of ln x is the midpoint; s.d. of the mean of
    # 20,000 draws = range / sqrt(12 * 20,000) ~ 0.016, so 0.06 is ~4 s.d.
    assert abs(np.mean(np.log(x)) - 0.5 * (np.log(0.02) + np.log(50.0))) < 0.06
    # and its quartiles split the log-range in four equal parts
    q = np.quantile(np.log(x), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(np.diff(q), np.log(2500.0) / 4, rtol=0.05)


# ---------------------------------------------------------------------------------------------
# weight initializers: jax.nn.initializers' values, drawn flat
# ---------------------------------------------------------------------------------------------

INITIALIZERS = [  # (ours, JAX's reference), as the technique networks use them
    (networks.he_normal(), jax.nn.initializers.he_normal()),
    (networks.lecun_normal(), jax.nn.initializers.lecun_normal()),
    (networks.glorot_uniform(), jax.nn.initializers.glorot_uniform()),
    (
        networks.glorot_uniform(batch_axis=(0,)),
        jax.nn.initializers.glorot_uniform(batch_axis=(0,)),
    ),
    (
        networks.variance_scaling(2e-4, "fan_in", "truncated_normal"),
        jax.nn.initializers.variance_scaling(2e-4, "fan_in", "truncated_normal"),
    ),
    (
        networks.variance_scaling(0.5, "fan_out", "normal"),
        jax.nn.initializers.variance_scaling(0.5, "fan_out", "normal"),
    ),
]


@pytest.mark.parametrize(
    ("shape", "dtype"), [((7, 3), jnp.float32), ((7, 3), jnp.float64), ((3, 3, 8, 16), jnp.float32)]
)
@pytest.mark.parametrize("pair", INITIALIZERS, ids=["he", "lecun", "glorot", "glorot-batch", "kaiming/100", "normal"])
def test_initializers_equal_jax_initializers_bit_for_bit(pair, shape, dtype):
    # the same key and shape give the same weights as jax.nn.initializers: the fans of a dense
    # and a convolution kernel, in both dtypes (the draws themselves, flat and reshaped, are
    # checked against jax.random for every shape and dtype in test_draws.py)
    ours, reference = pair
    with jax.enable_x64(dtype == jnp.float64):
        key = jax.random.key(11)
        a, b = ours(key, shape, dtype), reference(key, shape, dtype)
        assert a.shape == b.shape == shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_initializer_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="fan_geo"):
        networks.variance_scaling(1.0, "fan_geo", "normal")
