"""Specification of the FCS networks (fluojax.fcs.nets): sizes, shapes, normalisation, eval mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fluojax import networks
from fluojax.fcs import nets


@functools.cache
def _evaluation_view(config):
    """One network per config, shared by the tests that only evaluate it (building compiles ~5 s)."""
    return nnx.view(nets.build_network(config), use_running_average=True)


def _abstract(config):
    """The network's variables as shapes only (``nnx.eval_shape``: nothing is initialised)."""
    return nnx.eval_shape(lambda: nets.build_network(config))


def test_fcsnet_parameter_count_matches_paper():
    # paper / Keras "total params" (weights + BatchNorm scale, offset, running mean, variance)
    assert networks.keras_parameter_count(_abstract(nets.FCSNetConfig.paper())) == 70_849


@pytest.mark.parametrize("stride", [4, 8])
def test_imfcsnet_parameter_count_matches_paper(stride):
    # the stride changes lengths, not weights: 716,896 for the TF code's 4 and the paper's 8
    assert networks.keras_parameter_count(_abstract(nets.ImFCSNetConfig.paper(stride))) == 716_896


def test_trainable_count_leaves_out_batchnorm_running_statistics():
    net = _abstract(nets.FCSNetConfig.paper())
    # 16 BatchNorm layers x 32 channels x (mean, var) are not trainable
    assert networks.parameter_count(net) == 70_849 - 16 * 32 * 2


def test_fcsnet_maps_a_batch_of_acfs_to_one_number_each():
    net = _evaluation_view(nets.FCSNetConfig.small())
    out = net(jax.random.normal(jax.random.key(0), (5, 72)))
    assert out.shape == (5,) and np.all(np.isfinite(out))
    with pytest.raises(ValueError, match="72"):
        net(np.zeros((5, 60)))


@pytest.mark.parametrize("frames", [1000, 2500])
def test_imfcsnet_accepts_variable_length_input(frames):
    net = _evaluation_view(nets.ImFCSNetConfig.small())
    out = net(jax.random.poisson(jax.random.key(1), 5.0, (3, frames, 3, 3)).astype(np.float32))
    assert out.shape == (3,) and np.all(np.isfinite(out))


def test_imfcsnet_refuses_windows_shorter_than_its_receptive_field():
    # paper scale: first kernel, strided kernel, then stride x the residual crops (2 x 98)
    assert nets.ImFCSNetConfig.paper().min_frames == 199 + 100 + 8 * 2 * 98 == 1_867
    assert nets.ImFCSNetConfig.paper(stride=4).min_frames == 199 + 100 + 4 * 2 * 98 == 1_083
    cfg = nets.ImFCSNetConfig.small()  # same rule, cheaper to run
    net = _evaluation_view(cfg)
    net(np.ones((1, cfg.min_frames, 3, 3), np.float32))  # exactly long enough
    with pytest.raises(ValueError, match=str(cfg.min_frames)):
        net(np.ones((1, cfg.min_frames - 1, 3, 3), np.float32))


@pytest.mark.parametrize("config", [nets.FCSNetConfig.small(), nets.ImFCSNetConfig.small()], ids=["fcsnet", "imfcsnet"])
def test_prediction_is_invariant_to_affine_rescaling_of_the_input(config):
    net = _evaluation_view(config)
    shape = (4, 72) if isinstance(config, nets.FCSNetConfig) else (4, 600, 3, 3)
    x = jax.random.uniform(jax.random.key(2), shape, minval=1.0, maxval=3.0)
    # the in-model z-score removes gain and offset; float32 rounding of the standardised
    # input (~1e-6 relative) propagates to ~1e-5 in the output
    np.testing.assert_allclose(net(7.0 * x + 100.0), net(x), rtol=1e-4, atol=1e-4)


def test_a_constant_window_is_standardised_to_zeros():
    # a saturated (65,535 counts) and an empty window carry no information: both become all-zero
    # input rather than float32 rounding noise divided by a near-zero sd
    net = _evaluation_view(nets.FCSNetConfig.small())
    np.testing.assert_array_equal(net(np.full((1, 72), 65_535.0, np.float32)), net(np.zeros((1, 72), np.float32)))


def test_eval_mode_predictions_do_not_depend_on_the_rest_of_the_batch():
    net = nets.build_network(nets.FCSNetConfig.small())
    x = jax.random.normal(jax.random.key(3), (8, 72))
    others = x.at[1:].set(jax.random.normal(jax.random.key(4), (7, 72)))  # same first sample
    train_view = nnx.view(net, use_running_average=False)
    train_view(x)  # one training-mode call updates the running statistics
    frozen = nnx.view(net, use_running_average=True)
    np.testing.assert_allclose(frozen(x)[0], frozen(others)[0], rtol=1e-6, atol=1e-6)
    # in training mode the batch statistics couple the samples
    assert not np.allclose(train_view(x)[0], train_view(others)[0])


def test_training_step_under_nnx_jit_updates_running_statistics_as_keras_does():
    net = nets.build_network(nets.FCSNetConfig.small())
    x = jax.random.normal(jax.random.key(5), (8, 72))
    eager = nnx.view(net, use_running_average=True)(x)
    nnx.jit(lambda m, x: m(x))(nnx.view(net, use_running_average=False), x)
    # Keras momentum 0.9: running = 0.9 running + 0.1 batch, from running mean 0 at initialisation
    first = net.residual[0].first
    batch_mean = jnp.mean(first.conv(nets._zscore(x, (1,))[:, :, None]), axis=(0, 1))
    np.testing.assert_allclose(first.norm.mean[...], 0.1 * batch_mean, rtol=1e-5, atol=1e-7)
    # the jitted evaluation view reads the updated statistics
    jitted = nnx.jit(lambda m, x: m(x))(nnx.view(net, use_running_average=True), x)
    assert not np.allclose(jitted, eager)
    np.testing.assert_allclose(jitted, nnx.view(net, use_running_average=True)(x), rtol=1e-5, atol=1e-5)
