"""DeepFRAP networks: the paper's weight counts (Wåhlstrand Skärström et al. 2021), shapes, block
independence of the merged network, the 1/a-weighted MSE, and a short training run on curves
simulated on the fly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fluojax.frap import models as fm
from fluojax.frap import nets as fn
from fluojax.frap import simulate as fs
from fluojax.networks import parameter_count
from fluojax.train import TrainConfig, mse_loss, train


def test_paper_networks_have_the_papers_weight_counts():
    joint = fn.build_network(fn.DeepFrapConfig.paper())
    merged = fn.build_network(fn.DeepFrapConfig.paper(per_parameter=True))
    assert parameter_count(joint) == 130_179  # Wåhlstrand Skärström et al. 2021
    assert parameter_count(merged) == 389_763  # Wåhlstrand Skärström et al. 2021, merged network of Table 4
    # 129,792 of the joint network's weights are shared by the three outputs (all but the last layer)
    assert parameter_count(joint.hidden) == 129_792
    assert parameter_count(merged) == 3 * (129_792 + 128 + 1)
    for config in (
        fn.DeepFrapConfig.paper(),
        fn.DeepFrapConfig.paper(True),
        fn.DeepFrapConfig.small(),
        fn.DeepFrapConfig.small(True),
    ):
        assert parameter_count(fn.build_network(config)) == fn.expected_parameter_count(config)
    c = fn.DeepFrapConfig.paper()
    assert (c.inputs, c.width, c.hidden_layers, c.outputs) == (110, 128, 8, 3)
    hash(c)


@pytest.mark.parametrize(
    "config", [fn.DeepFrapConfig.small(), fn.DeepFrapConfig.small(True), fn.DeepFrapConfig.paper(True)]
)
def test_output_shapes_and_input_check(config):
    net = fn.build_network(config, seed=1)
    out = net(jnp.ones((5, 110)))
    assert out.shape == (5, 3) and out.dtype == jnp.float32
    with pytest.raises(ValueError, match="110"):
        net(jnp.ones((5, 100)))
    params = fn.params_from_prediction(out)
    np.testing.assert_allclose(params.d_px2_s, 10.0 ** out[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(params.alpha, out[:, 2])


def test_initialisation_is_glorot_uniform_with_zero_biases():
    net = fn.build_network(fn.DeepFrapConfig.paper(True), seed=0)
    kernel = np.asarray(net.hidden[3].kernel[...])  # (3, 128, 128)
    limit = np.sqrt(6.0 / (128 + 128))
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.99 * limit
    assert np.std(kernel) == pytest.approx(limit / np.sqrt(3), rel=0.02)
    assert not np.allclose(kernel[0], kernel[1])  # blocks initialised independently
    assert np.all(np.asarray(net.head.bias[...]) == 0)


def test_merged_blocks_are_independent():
    net = fn.build_network(fn.DeepFrapConfig.small(per_parameter=True))
    x = jax.random.normal(jax.random.key(0), (4, 110))
    graphdef, params = nnx.split(net, nnx.Param)

    def output(p, j):
        return jnp.sum(nnx.merge(graphdef, p)(x)[:, j])

    for j in range(3):
        grads = jax.grad(output)(params, j)
        for leaf in jax.tree.leaves(grads):
            norms = np.abs(np.asarray(leaf)).reshape(3, -1).sum(axis=1)
            assert norms[j] > 0 and np.all(np.delete(norms, j) == 0)


def test_weighted_mse_is_the_papers_eq_9():
    key1, key2 = jax.random.split(jax.random.key(0))
    pred, target = jax.random.normal(key1, (6, 3)), jax.random.normal(key2, (6, 3))
    # constant weights: the plain MSE, whatever the constant
    np.testing.assert_allclose(fn.weighted_mse(pred, target, jnp.full((6,), 7.0)), mse_loss(pred, target), rtol=1e-6)
    # by hand: (1/3) sum_i zeta_i |y_i - f_i|^2, zeta = w / sum w
    w = jnp.array([1.0, 2.0, 0.0, 4.0, 1.0, 0.5])
    expected = np.sum(np.asarray(w / w.sum()) * np.sum(np.asarray(pred - target) ** 2, axis=1)) / 3
    np.testing.assert_allclose(fn.weighted_mse(pred, target, w), expected, rtol=1e-6)
    np.testing.assert_allclose(fn.weighted_mse(pred, target, 10 * w), expected, rtol=1e-6)
    # train.py signature: the noise variance a rides along as the last target column, weight 1/a
    a = jnp.array([1e-4, 1e-3, 1e-2, 3e-3, 2e-4, 5e-3])
    with_a = jnp.concatenate([target, a[:, None]], axis=1)
    np.testing.assert_allclose(
        fn.inverse_noise_weighted_mse(pred, with_a), fn.weighted_mse(pred, target, 1 / a), rtol=1e-6
    )
    with pytest.raises(ValueError):
        fn.inverse_noise_weighted_mse(pred, target)


def test_network_targets_carry_log10_d_c0_alpha_and_a():
    prior = fs.FrapPrior.deepfrap()
    sample = fs.sample_frap_params(jax.random.key(1), 100, prior)
    y = np.asarray(fn.network_targets(sample))
    assert y.shape == (100, 4) and y.dtype == np.float32
    lo, hi = prior.log10_d_px2_s_range
    assert lo - 1e-5 <= y[:, 0].min() and y[:, 0].max() <= hi + 1e-5
    np.testing.assert_array_equal(y[:, 1], sample.params.c0)
    np.testing.assert_array_equal(y[:, 3], sample.noise.a)


def test_small_network_training_on_simulated_curves_lowers_held_out_loss():
    # 110-frame DeepFRAP protocol (10/4/100, dt 0.265 s) on a 64 px image (CPU-sized table build)
    settings = fm.FrapSettings(n_pixels=64, pad=32)
    geometry = fm.circular_region(settings, radius_px=8.0)
    table = fm.build_fast_curve_table(geometry, settings, n_nodes=48)
    n_eff = fs.roi_effective_pixels(geometry)
    prior = fs.FrapPrior.deepfrap()
    batch = 256

    def sample_batch(key):
        k_params, k_noise = jax.random.split(key)
        sample = fs.sample_frap_params(k_params, batch, prior)
        curves = fs.simulate_curves(k_noise, sample.params, table, sample.noise, n_eff)
        return curves, fn.network_targets(sample)

    net = fn.build_network(fn.DeepFrapConfig.small(), seed=0)
    config = TrainConfig(
        steps=400, batch_size=batch, learning_rate=1e-3, final_learning_rate=1e-4, eval_every=100, eval_batches=4
    )
    history = train(net, sample_batch, config, loss=fn.inverse_noise_weighted_mse, progress=False)
    first, last = history.eval_loss[0], history.eval_loss[-1]
    assert last < 0.25 * first
    # better than the best constant guess (the prior means): mean prior variance of the targets,
    # (3^2 / 12 + 0.5^2 / 12 + 0.5^2 / 12) / 3 = 0.264 (a is independent of the targets)
    constant_guess = (9 / 12 + 0.25 / 12 + 0.25 / 12) / 3
    assert last < 0.5 * constant_guess
