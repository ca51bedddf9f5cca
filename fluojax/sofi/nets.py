"""The MISR-GRU network that turns 20 camera frames into a 2nd-order SOFI image, and its Fourier loss.

:class:`MisrGru` is the architecture of the authors' released code (Grussmayer lab,
RESURF_MISRGRU; Komen 2024, chapter 4), itself a reduced MISR-GRU (Arefin et al. 2020): every
frame is encoded on its own (a 3 x 3 convolution, residual blocks, a 3 x 3 convolution), two
stacked convolutional GRU layers run over the frames, the last layer's hidden states are summed
over time, and a transposed-convolution decoder maps the sum to the sofipackage 2nd-order grid,
``2 H - 7`` pixels per side for ``H`` input pixels (``n (H - 4) + 1`` with n = 2: 128 -> 249).
:func:`fourier_loss` is the loss it is trained with: the L1 distances of the amplitudes and of
the phases of the two images' discrete Fourier transforms (Fuoli et al. 2021; Komen 2024,
eq. 4.5, without frequency normalisation). Layout: the network reads ``(batch, frames, y, x)``
and returns ``(batch, 2 y - 7, 2 x - 7)``; inside it works channels-last.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float

from fluojax import networks
from fluojax.io import require

__all__ = [
    "MisrGru",
    "MisrGruConfig",
    "build_network",
    "fourier_amplitude_loss",
    "fourier_loss",
    "output_size",
]

_PRELU_SLOPE = 0.25  # PyTorch's nn.PReLU initial slope, as in the released code
_CONV_INIT = networks.he_normal()  # the released code's "hess" option (Kaiming normal, fan in)
_OUT_INIT = networks.variance_scaling(2e-4, "fan_in", "truncated_normal")  # Kaiming / 100


@dataclasses.dataclass(frozen=True)
class MisrGruConfig:
    """Size of a :class:`MisrGru` (immutable).

    Attributes:
        channels: C, feature maps of every layer (released code: 24; variants 16 and 8).
        residual_blocks: residual blocks of the encoder (2).
        gru_layers: stacked ConvGRU layers (2).
        kernel: square kernel of the encoder and ConvGRU convolutions (3).
        frames: frames the network was trained on (20); the architecture reads any number, the
            recipes feed it this many.
        decoder_kernel: kernel of the transposed convolution (3).
        decoder_stride: its stride, the upsampling factor (2).
        decoder_padding: its padding in PyTorch's ``ConvTranspose2d`` sense (4): the output has
            ``(H - 1) stride - 2 padding + kernel`` pixels per side.
        head_convs: 1 x 1 convolutions with PReLU after the transposed one (2).
        head_kernel: their kernel (1: the released code sizes them from the final layer's kernel).
    """

    channels: int = 24
    residual_blocks: int = 2
    gru_layers: int = 2
    kernel: int = 3
    frames: int = 20
    decoder_kernel: int = 3
    decoder_stride: int = 2
    decoder_padding: int = 4
    head_convs: int = 2
    head_kernel: int = 1

    def __post_init__(self):
        require(self.channels >= 1, f"{self.channels} channels: must be >= 1")
        require(self.gru_layers >= 1, f"{self.gru_layers} ConvGRU layers: must be >= 1")
        require(self.frames >= 1, f"{self.frames} frames: must be >= 1")
        require(self.kernel % 2 == 1 and self.head_kernel % 2 == 1, "kernels must be odd (same-size convolutions)")
        require(self.decoder_stride >= 1, f"decoder stride {self.decoder_stride}: must be >= 1")

    @classmethod
    def paper(cls) -> MisrGruConfig:
        """The released network (config "network_hidden_channel_24"): 95,073 trainable weights."""
        return cls()


def output_size(pixels: int, config: MisrGruConfig | None = None) -> int:
    """Output pixels per side for ``pixels`` input pixels: ``(pixels - 1) s - 2 p + k`` (2 pixels - 7
    for the released decoder; 128 -> 249, the sofipackage 2nd-order grid ``2 (pixels - 4) + 1``).

    Arguments:
        pixels: input rows (or columns).
        config: :class:`MisrGruConfig` (None: the released one).
    """
    c = config or MisrGruConfig()
    return (pixels - 1) * c.decoder_stride - 2 * c.decoder_padding + c.decoder_kernel


def _conv(c_in: int, c_out: int, kernel: int, rngs: nnx.Rngs, kernel_init=_CONV_INIT) -> nnx.Conv:
    return nnx.Conv(c_in, c_out, (kernel, kernel), padding="SAME", kernel_init=kernel_init, rngs=rngs)


def _prelu() -> nnx.PReLU:
    return nnx.PReLU(negative_slope_init=_PRELU_SLOPE)


class _ResidualBlock(nnx.Module):
    """``x + PReLU(conv(PReLU(conv(x))))`` (two 3 x 3 convolutions, a PReLU after each)."""

    def __init__(self, channels: int, kernel: int, rngs: nnx.Rngs):
        self.conv1, self.act1 = _conv(channels, channels, kernel, rngs), _prelu()
        self.conv2, self.act2 = _conv(channels, channels, kernel, rngs), _prelu()

    def __call__(self, x):
        return x + self.act2(self.conv2(self.act1(self.conv1(x))))


class _Encoder(nnx.Module):
    """Per frame: conv (1 -> C) + PReLU, residual blocks, conv (C -> C) without activation."""

    def __init__(self, config: MisrGruConfig, rngs: nnx.Rngs):
        c, k = config.channels, config.kernel
        self.first, self.act = _conv(1, c, k, rngs), _prelu()
        self.blocks = nnx.List([_ResidualBlock(c, k, rngs) for _ in range(config.residual_blocks)])
        self.last = _conv(c, c, k, rngs)

    def __call__(self, x):
        x = self.act(self.first(x))
        for block in self.blocks:
            x = block(x)
        return self.last(x)


class _ConvGruCell(nnx.Module):
    """One convolutional GRU step (Komen 2024, eq. 4.2; Ballas et al. 2016):

        z = sigma(W_z * [x, h] + b_z),  r = sigma(W_r * [x, h] + b_r)
        c = tanh(W_c * [x, r h] + b_c),  h' = (1 - z) h + z c

    The update and reset gates are one convolution with 2 C outputs (the released code's layout).
    """

    def __init__(self, channels: int, kernel: int, rngs: nnx.Rngs):
        self.gates = _conv(2 * channels, 2 * channels, kernel, rngs)
        self.candidate = _conv(2 * channels, channels, kernel, rngs)

    def __call__(self, h, x):
        z, r = jnp.split(jax.nn.sigmoid(self.gates(jnp.concatenate([x, h], axis=-1))), 2, axis=-1)
        c = jnp.tanh(self.candidate(jnp.concatenate([x, r * h], axis=-1)))
        return (1.0 - z) * h + z * c


def _run_gru(cell: _ConvGruCell, sequence):
    """Hidden states of ``cell`` over ``sequence`` (T, B, y, x, C) from h0 = 0 (``lax.scan``)."""

    def step(h, x):
        h = cell(h, x)
        return h, h

    # fully unrolled: XLA:CPU differentiates a rolled loop of convolutions ~10x slower (measured)
    _, hidden = jax.lax.scan(step, jnp.zeros_like(sequence[0]), sequence, unroll=True)
    return hidden


class MisrGru(nnx.Module):
    """The 2nd-order SOFI network of the authors' released code (Grussmayer lab, RESURF_MISRGRU).

    Layers (C = ``config.channels``):

    - encoder, per frame: Conv3x3(1 -> C) + PReLU; 2 x [Conv3x3 + PReLU + Conv3x3 + PReLU] + skip;
      Conv3x3(C -> C);
    - fusion: 2 stacked ConvGRU layers (:class:`_ConvGruCell`, h0 = 0, the second reads the
      first's hidden states), run over the frames with ``jax.lax.scan``; the fused map is the
      SUM over time of the last layer's hidden states (the released code; Komen 2024, eq. 4.3b,
      writes an average);
    - decoder: ConvTranspose(C -> C, kernel 3, stride 2, PyTorch padding 4) + PReLU; 2 x
      [Conv1x1 + PReLU]; Conv1x1(C -> 1), no output activation.

    Every PReLU has one learnable slope (PyTorch's default, initialised at 0.25); convolutions
    use Kaiming-normal weights and zero biases, except the last 1 x 1 convolution, whose weights
    are drawn 100 times smaller (a choice: the untrained network's images then have s.d. ~0.04
    instead of ~4 against targets of maximum 1; the released code draws them as the others). For C = 24 the network has 95,073 trainable
    weights: encoder 26,285, ConvGRU 62,352, decoder 6,436.

    PyTorch's ``ConvTranspose2d(k, stride s, padding p)`` is the convolution of the input
    dilated by s (s - 1 zeros between pixels) padded by ``k - 1 - p`` on each side with the
    spatially flipped kernel; flax's ``ConvTranspose`` with ``transpose_kernel=True`` flips the
    kernel and takes the padding of the dilated input, so ``k - 1 - p`` (-2: a crop of 2) is
    passed. Output ``(H - 1) s - 2 p + k`` = 2 H - 7.

    Arguments:
        config: :class:`MisrGruConfig`.
        rngs: ``nnx.Rngs`` of the weight initialisation.

    Call: ``net(frames)`` with ``frames`` (B, T, y, x) (scaled as the recipe says,
    ``fluojax.sofi.learned.network_input``) -> (B, 2 y - 7, 2 x - 7).
    """

    def __init__(self, config: MisrGruConfig, *, rngs: nnx.Rngs):
        self.config = config
        c, k = config.channels, config.kernel
        self.encoder = _Encoder(config, rngs)
        self.fusion = nnx.List([_ConvGruCell(c, k, rngs) for _ in range(config.gru_layers)])
        edge = config.decoder_kernel - 1 - config.decoder_padding
        self.upsample = nnx.ConvTranspose(
            c,
            c,
            (config.decoder_kernel, config.decoder_kernel),
            strides=(config.decoder_stride, config.decoder_stride),
            padding=((edge, edge), (edge, edge)),
            transpose_kernel=True,
            kernel_init=_CONV_INIT,
            rngs=rngs,
        )
        self.upsample_act = _prelu()
        self.head = nnx.List([_conv(c, c, config.head_kernel, rngs) for _ in range(config.head_convs)])
        self.head_acts = nnx.List([_prelu() for _ in range(config.head_convs)])
        # Kaiming normal scaled by 1/100: the untrained network's images have s.d. ~0.04 rather
        # than ~4 against targets of maximum 1 (not zero: the Fourier loss has no gradient at 0)
        self.out = _conv(c, 1, 1, rngs, kernel_init=_OUT_INIT)

    def fuse(self, frames: Float[Array, "b t y x"]) -> Float[Array, "b y x c"]:
        """Encoder and fusion: the sum over time of the last ConvGRU layer's hidden states (B, y, x, C)."""
        require(
            frames.ndim == 4 and frames.shape[1] >= 1,
            f"frames of shape {tuple(frames.shape)}: the network reads (batch, frames, rows, columns)",
        )
        b, t, ny, nx = frames.shape
        x = jnp.asarray(frames, jnp.float32).reshape(b * t, ny, nx, 1)  # frames folded into the batch
        x = self.encoder(x).reshape(b, t, ny, nx, -1)
        sequence = jnp.moveaxis(x, 1, 0)  # (T, B, y, x, C): scanned over T
        for cell in self.fusion:
            sequence = _run_gru(cell, sequence)
        return jnp.sum(sequence, axis=0)

    def decode(self, fused: Float[Array, "b y x c"]) -> Float[Array, "b y2 x2"]:
        """Decoder: the fused map (B, y, x, C) to the image (B, 2 y - 7, 2 x - 7)."""
        y = self.upsample_act(self.upsample(fused))
        for conv, act in zip(self.head, self.head_acts):
            y = act(conv(y))
        return self.out(y)[..., 0]

    def __call__(self, frames: Float[Array, "b t y x"]) -> Float[Array, "b y2 x2"]:
        return self.decode(self.fuse(frames))


def build_network(config: MisrGruConfig, seed: int = 0) -> MisrGru:
    """A freshly initialised :class:`MisrGru`.

    Arguments:
        config: :class:`MisrGruConfig`.
        seed: int, seed of the initial weights.
    """
    return MisrGru(config, rngs=nnx.Rngs(seed))


def _amplitude_phase(image):
    """|F| and angle(F) of ``rfft2(image)`` with finite gradients where F = 0 (both are then 0,
    as NumPy's ``abs`` and ``angle`` give, and their gradients are set to 0 there)."""
    f = jnp.fft.rfft2(image, axes=(-2, -1))
    re, im = jnp.real(f), jnp.imag(f)
    im = jnp.where(im == 0, 0.0, im)  # -0.0 -> +0.0: a purely real negative bin has phase +pi, as NumPy
    power = re * re + im * im
    nonzero = power > 0
    amplitude = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, power, 1.0)), 0.0)
    phase = jnp.arctan2(jnp.where(nonzero, im, 0.0), jnp.where(nonzero, re, 1.0))
    return amplitude, phase


def fourier_amplitude_loss(prediction: Float[Array, "*b y x"], target: Float[Array, "*b y x"]) -> Float[Array, ""]:
    """The amplitude half of :func:`fourier_loss`: ``mean |(|F(pred)| - |F(target)|)|`` over the
    batch and the ``rfft2`` half plane (F unnormalised; Komen 2024, eq. 4.5). It ignores where
    things are: any image with the target's amplitude spectrum scores 0.

    Arguments:
        prediction: (..., y, x) network output.
        target: (..., y, x) target images, the same shape.
    """
    return _fourier_terms(prediction, target)[0]


def _fourier_terms(prediction, target) -> tuple[Array, Array]:
    """The amplitude and phase L1 terms of eq. 4.5, from one transform of each image."""
    a_pred, p_pred = _amplitude_phase(prediction)
    a_true, p_true = _amplitude_phase(jnp.reshape(target, prediction.shape))
    return jnp.mean(jnp.abs(a_pred - a_true)), jnp.mean(jnp.abs(p_pred - p_true))


def fourier_loss(prediction: Float[Array, "*b y x"], target: Float[Array, "*b y x"]) -> Float[Array, ""]:
    """The Fourier-space L1 loss the released network is trained with (Fuoli et al. 2021; Komen
    2024, eq. 4.5):

        L = mean |(|F(pred)| - |F(target)|)| + mean |angle F(pred) - angle F(target)|

    F is the unnormalised 2D DFT over the last two axes, kept on the half plane ``rfft2`` returns
    (Hermitian symmetry), no window; the means run over the batch and those frequencies. The
    phase difference is not wrapped (it lies in (-2 pi, 2 pi)), as in the released code. Where
    a transform vanishes its amplitude and phase are 0 with zero gradient, so the gradient is
    finite everywhere.

    Arguments:
        prediction: (..., y, x) network output.
        target: (..., y, x) target images, the same shape.

    Returns:
        scalar loss.
    """
    amplitude, phase = _fourier_terms(prediction, target)
    return amplitude + phase
