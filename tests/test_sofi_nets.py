"""The MISR-GRU SOFI network: weight count of the authors' released code (PyTorch's per-layer
formula), the 2 H - 7 output grid, the transposed convolution against PyTorch's definition written
as a NumPy scatter, the ConvGRU fusion against its closed form for constant gates, and the Fourier
loss against NumPy and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fluojax.io import InputError
from fluojax.networks import parameter_count
from fluojax.sofi import nets


def _torch_counts(c: int, k: int = 3, blocks: int = 2, layers: int = 2, heads: int = 2) -> dict:
    """PyTorch's count per part: Conv2d(i, o, k) has k^2 i o + o weights, nn.PReLU() one slope."""

    def conv(i, o, kk):
        return kk * kk * i * o + o

    encoder = conv(1, c, k) + 1 + blocks * (2 * conv(c, c, k) + 2) + conv(c, c, k)
    fusion = layers * (conv(2 * c, 2 * c, k) + conv(2 * c, c, k))  # gates (z, r) and candidate
    decoder = conv(c, c, 3) + 1 + heads * (conv(c, c, 1) + 1) + conv(c, 1, 1)  # ConvTranspose2d counts as conv
    return {"encoder": encoder, "fusion": fusion, "decoder": decoder}


def _abstract(config):
    return nnx.eval_shape(lambda: nets.build_network(config))


def test_released_network_has_95073_weights():
    # RESURF_MISRGRU, config network_hidden_channel_24: 26,285 + 62,352 + 6,436 used weights
    assert parameter_count(_abstract(nets.MisrGruConfig.paper())) == 95_073


@pytest.mark.parametrize("channels", [8, 16, 24])
def test_each_part_counts_as_pytorch_does(channels):
    net = _abstract(nets.MisrGruConfig(channels=channels))
    expected = _torch_counts(channels)
    assert parameter_count(net.encoder) == expected["encoder"]
    assert parameter_count(net.fusion) == expected["fusion"]
    assert parameter_count(net) == sum(expected.values())


@pytest.mark.parametrize(("pixels", "out"), [(128, 249), (64, 121), (32, 57)])
def test_output_is_the_sofipackage_second_order_grid(pixels, out):
    config = nets.MisrGruConfig.paper()
    shape = nnx.eval_shape(lambda: nets.build_network(config)(jnp.zeros((2, 20, pixels, pixels + 4)))).shape
    assert shape == (2, out, 2 * (pixels + 4) - 7)
    assert out == 2 * (pixels - 4) + 1 == nets.output_size(pixels)


def _pytorch_conv_transpose(x, weight, stride, padding):
    """PyTorch's ConvTranspose2d by its definition: every input pixel (i, j) adds ``x[i, j] W``
    to the output block starting at (i s - p, j s - p); weight (in, out, k, k), x (y, x, in)."""
    h, w, _ = x.shape
    k = weight.shape[-1]
    full = np.zeros(((h - 1) * stride + k, (w - 1) * stride + k, weight.shape[1]))
    for i in range(h):
        for j in range(w):
            full[i * stride : i * stride + k, j * stride : j * stride + k] += np.einsum("c,cokl->klo", x[i, j], weight)
    out_h, out_w = (h - 1) * stride - 2 * padding + k, (w - 1) * stride - 2 * padding + k
    return full[padding : padding + out_h, padding : padding + out_w]


def test_upsampling_layer_is_pytorchs_conv_transpose_with_padding_4():
    net = nets.build_network(nets.MisrGruConfig(channels=4), seed=3)
    layer = net.upsample
    x = np.random.default_rng(0).normal(size=(9, 12, 4)).astype(np.float32)
    got = np.asarray(layer(jnp.asarray(x)[None]))[0]
    weight = np.transpose(np.asarray(layer.kernel[...]), (3, 2, 0, 1))  # flax (k, k, out, in) -> torch (in, out, k, k)
    want = _pytorch_conv_transpose(x.astype(np.float64), weight, 2, 4) + np.asarray(layer.bias[...])
    assert got.shape == (2 * 9 - 7, 2 * 12 - 7, 4)
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 sums of 36 products of order 1


def test_fusion_is_the_sum_over_time_of_the_gru_hidden_states():
    """All ConvGRU kernels 0: each layer has constant gates z = sigmoid(b_z) and candidate
    c = tanh(b_c), so from h0 = 0, h_t = c (1 - (1 - z)^t) and the fused map is
    sum_{t=1..T} h_t = c (T - (1 - z)(1 - (1 - z)^T) / z) whatever the frames."""
    config = nets.MisrGruConfig(channels=4, frames=5)
    net = nets.build_network(config, seed=0)
    b_z, b_c = 0.3, -0.7
    for cell in net.fusion:
        cell.gates.kernel[...] = jnp.zeros_like(cell.gates.kernel[...])
        cell.candidate.kernel[...] = jnp.zeros_like(cell.candidate.kernel[...])
        cell.gates.bias[...] = jnp.full((8,), b_z)  # z and r: r is irrelevant with zero kernels
        cell.candidate.bias[...] = jnp.full((4,), b_c)
    fused = net.fuse(jax.random.normal(jax.random.key(0), (1, 5, 8, 8)))
    z, c, t = 1 / (1 + np.exp(-b_z)), np.tanh(b_c), 5
    expected = c * (t - (1 - z) * (1 - (1 - z) ** t) / z)
    assert fused.shape == (1, 8, 8, 4)
    np.testing.assert_allclose(np.asarray(fused), expected, rtol=1e-5)  # float32 of 5 terms


def test_frames_must_come_as_batch_frames_rows_columns():
    net = nets.build_network(nets.MisrGruConfig(channels=4))
    with pytest.raises(InputError, match="batch, frames, rows, columns"):
        net(jnp.zeros((20, 16, 16)))


def _numpy_fourier_loss(pred, target):
    fp, ft = np.fft.rfft2(pred), np.fft.rfft2(target)
    return np.mean(np.abs(np.abs(fp) - np.abs(ft))) + np.mean(np.abs(np.angle(fp) - np.angle(ft)))


def test_fourier_loss_is_the_l1_of_amplitudes_and_unwrapped_phases():
    rng = np.random.default_rng(1)
    # odd sizes (as the network's 2 H - 7): only the DC bin is purely real, positive here, so no
    # bin sits on the +-pi branch cut where the sign of a zero imaginary part decides the phase
    pred = rng.uniform(0, 1, (3, 25, 19)).astype(np.float32)
    target = rng.uniform(0, 1, (3, 25, 19)).astype(np.float32)
    got = float(nets.fourier_loss(jnp.asarray(pred), jnp.asarray(target)))
    want = _numpy_fourier_loss(pred.astype(np.float64), target.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-5)  # float32 FFT of 475 values of order 1


def test_fourier_loss_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        pred = jnp.asarray(rng.normal(size=(7, 9)))
        target = jnp.asarray(rng.normal(size=(7, 9)))
        loss = jax.jit(nets.fourier_loss)
        grad = np.asarray(jax.jit(jax.grad(nets.fourier_loss))(pred, target))
        eps = 1e-6
        for i, j in [(0, 0), (3, 4), (6, 8)]:
            step = jnp.zeros_like(pred).at[i, j].set(eps)
            fd = (loss(pred + step, target) - loss(pred - step, target)) / (2 * eps)
            np.testing.assert_allclose(grad[i, j], float(fd), rtol=1e-5, atol=1e-8)  # central difference O(eps^2)


def test_fourier_loss_gradient_is_finite_where_the_spectrum_vanishes():
    """A zero prediction has |F| = 0 and no defined phase in every bin: sqrt and atan2 have
    infinite or undefined derivatives there, the loss must still give a finite gradient."""
    target = jax.random.uniform(jax.random.key(0), (2, 9, 9))
    gradient = jax.jit(jax.grad(nets.fourier_loss))
    for pred in (jnp.zeros((2, 9, 9)), target):
        grad = gradient(pred, target)
        assert bool(jnp.all(jnp.isfinite(grad)))
    assert float(nets.fourier_loss(target, target)) == 0.0
