"""FCSNet and ImFCSNet: the networks of Tang et al. 2024 for ln D, in Flax NNX.

Tang et al., "Deep learning reduces data requirements and allows real-time measurements in
imaging FCS" (Biophys J 2024). **FCSNet** reads a pixel's 72-point autocorrelation
function (lags 1..2048 frames of the P=16, Q=8 multi-tau grid); **ImFCSNet** reads the raw
intensity traces of a 3 x 3-pixel window, T frames long (2,500 in the paper), and is fully
convolutional in time, so any T above :meth:`ImFCSNet.min_frames` works. Both output the natural
log of D in um^2/s, one number per sample. Layer lists follow the paper's public TF code (Tang et al. 2024):
1-D convolutions with "valid" padding, BatchNorm (Keras momentum 0.9, epsilon 1e-3) and ReLU,
residual stages whose shortcut is the input cropped at the tail, He-normal convolution kernels
and a Glorot-uniform output layer.

Each sample is z-scored inside the model (FCSNet: over its ACF points; ImFCSNet: over all its
T x 9 values, as Tang et al. 2024 do), so callers pass raw ACFs or raw counts and a network cannot be fed
unnormalised data by mistake.

ImFCSNet's first layer, a Conv3D with a (K, 3, 3) kernel on a 3 x 3 window ("valid", then the
spatial mean of a 1 x 1 map), is the same map as a Conv1D over time with the 9 pixels as input
channels; it is written that way (same weights, same count). The strided Conv1D's stride is a
setting: 8 in the paper and the PyTorch port, 4 in the public TF code (default 8).

Parameter counts follow the paper, which quotes Keras's "total params": trainable weights plus the
BatchNorm running means and variances (``fluojax.networks.keras_parameter_count``). Paper scale:
FCSNet 70,849 (69,825 trainable, ``fluojax.networks.parameter_count``: 16 BatchNorm layers x 32
channels x 2 statistics fewer), ImFCSNet 716,896 (715,276 trainable: 18 x 45 x 2 fewer), for either
stride.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["FCSNet", "FCSNetConfig", "ImFCSNet", "ImFCSNetConfig", "build_network"]

_BN: dict[str, Any] = dict(momentum=0.9, epsilon=1e-3)
_CONV_INIT = jax.nn.initializers.he_normal()
_DENSE_INIT = jax.nn.initializers.glorot_uniform()


@dataclasses.dataclass(frozen=True)
class FCSNetConfig:
    """Size of an FCSNet (immutable).

    Attributes:
        filters: int, channels of every convolution (paper 32).
        kernel: int, kernel length of the residual convolutions (paper 18).
        residual_stages: int, stages of 2 x [Conv(kernel) -> BN -> ReLU] with a tail-cropped
            shortcut (paper 2); each shortens the input by 2 (kernel - 1) points.
        pointwise_stages: int, stages of 2 x [Conv(1) -> BN -> ReLU] with identity shortcut (paper 6).
        acf_points: int, input length (72 for P=16, Q=8).
    """

    filters: int = 32
    kernel: int = 18
    residual_stages: int = 2
    pointwise_stages: int = 6
    acf_points: int = 72
    name: str = "fcsnet"

    @classmethod
    def paper(cls) -> FCSNetConfig:
        """The published network: 70,849 parameters (Keras count)."""
        return cls()

    @classmethod
    def small(cls) -> FCSNetConfig:
        """A CPU-sized network (16 filters, 2 pointwise stages) for tests and quick runs."""
        return cls(filters=16, pointwise_stages=2)

    @property
    def output_length(self) -> int:
        return self.acf_points - self.residual_stages * 2 * (self.kernel - 1)


@dataclasses.dataclass(frozen=True)
class ImFCSNetConfig:
    """Size of an ImFCSNet (immutable).

    Attributes:
        filters: int, channels of every convolution (paper 45).
        first_kernel: int, temporal length of the first (3 x 3 x K) convolution (paper 200).
        strided_kernel: int, kernel of the strided convolution (paper 100).
        stride: int, its stride (paper and PyTorch port 8; public TF code 4).
        kernel: int, kernel of the residual convolutions (paper 50).
        residual_stages: int, tail-cropped residual stages (paper 2).
        pointwise_stages: int, 1 x 1 residual stages (paper 6).
    """

    filters: int = 45
    first_kernel: int = 200
    strided_kernel: int = 100
    stride: int = 8
    kernel: int = 50
    residual_stages: int = 2
    pointwise_stages: int = 6
    name: str = "imfcsnet"

    @classmethod
    def paper(cls, stride: int = 8) -> ImFCSNetConfig:
        """The published network: 716,896 parameters (Keras count) for either stride."""
        return cls(stride=stride)

    @classmethod
    def small(cls) -> ImFCSNetConfig:
        """A CPU-sized network (16 filters, shorter kernels) that still reads 1,000+ frames."""
        return cls(filters=16, first_kernel=50, strided_kernel=25, stride=8, kernel=12, pointwise_stages=2)

    @property
    def min_frames(self) -> int:
        """Shortest input (frames) that leaves at least one time point after the last stage."""
        after_residual = 1 + self.residual_stages * 2 * (self.kernel - 1)
        return self.first_kernel - 1 + self.strided_kernel + self.stride * (after_residual - 1)


def _zscore(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """Per-sample standardisation ``(x - mean) / (sd + 1e-6)`` over ``axes``.

    A sample whose spread is at float32 rounding level of its mean (sd <= 1e-5 |mean|: a constant
    window, such as a saturated or dead pixel) maps to exact zeros; dividing its rounding noise by
    the tiny sd would otherwise give values of order one. Real data (Poisson counts, ACFs) spread far
    more than that, so for them this is the plain z-score.
    """
    mean = jnp.mean(x, axis=axes, keepdims=True)
    sd = jnp.std(x, axis=axes, keepdims=True)
    flat = sd <= 1e-5 * jnp.abs(mean)
    return jnp.where(flat, 0.0, (x - mean) / (sd + 1e-6))


class _ConvBNReLU(nnx.Module):
    """Conv1D ("valid") -> BatchNorm -> ReLU on (batch, length, channels)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, rngs: nnx.Rngs, stride: int = 1):
        self.conv = nnx.Conv(
            c_in, c_out, (kernel,), strides=(stride,), padding="VALID", kernel_init=_CONV_INIT, rngs=rngs
        )
        self.norm = nnx.BatchNorm(c_out, **_BN, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.norm(self.conv(x)))


class _ResidualStage(nnx.Module):
    """2 x [Conv(k) -> BN -> ReLU] plus the input cropped at the tail by 2 (k - 1) points."""

    def __init__(self, c_in: int, c_out: int, kernel: int, rngs: nnx.Rngs):
        self.first = _ConvBNReLU(c_in, c_out, kernel, rngs)
        self.second = _ConvBNReLU(c_out, c_out, kernel, rngs)
        self.crop = 2 * (kernel - 1)

    def __call__(self, x):
        y = self.second(self.first(x))
        return y + x[:, : x.shape[1] - self.crop]  # a 1-channel input broadcasts over channels


class _PointwiseStages(nnx.Module):
    def __init__(self, channels: int, stages: int, rngs: nnx.Rngs):
        self.stages = nnx.List([_ResidualStage(channels, channels, 1, rngs) for _ in range(stages)])

    def __call__(self, x):
        for stage in self.stages:
            x = stage(x)
        return x


class FCSNet(nnx.Module):
    """ln D from a 72-point ACF (FCSNet of Tang et al. 2024).

    Layers (paper scale, shapes for one sample): z-score, (72,) -> (72, 1);
    2 residual stages of 2 x [Conv1D(32, 18) -> BN -> ReLU], shortcut = input cropped at the tail
    by 34 points: (38, 32), (4, 32); 6 stages of 2 x [Conv1D(32, 1) -> BN -> ReLU] + identity;
    flatten (128,) -> Dense(1) = ln(D / (um^2/s)).

    Arguments:
        config: ``FCSNetConfig``.
        rngs: ``nnx.Rngs`` for the weight initialisation.

    Call: ``net(acf)`` with ``acf`` (batch, acf_points) raw ACF values G(tau_1..tau_72)
    -> (batch,) ln D.
    """

    def __init__(self, config: FCSNetConfig, *, rngs: nnx.Rngs):
        if config.output_length < 1:
            raise ValueError(
                f"FCSNet: {config.acf_points} ACF points are too few for {config.residual_stages} stages of kernel {config.kernel}"
            )
        self.config = config
        f = config.filters
        self.residual = nnx.List(
            [_ResidualStage(1 if i == 0 else f, f, config.kernel, rngs) for i in range(config.residual_stages)]
        )
        self.pointwise = _PointwiseStages(f, config.pointwise_stages, rngs)
        self.head = nnx.Linear(config.output_length * f, 1, kernel_init=_DENSE_INIT, rngs=rngs)

    def __call__(self, acf: jax.Array) -> jax.Array:
        if acf.ndim != 2 or acf.shape[1] != self.config.acf_points:
            raise ValueError(f"FCSNet expects ACFs of shape (batch, {self.config.acf_points}), got {acf.shape}")
        x = _zscore(acf.astype(jnp.float32), (1,))[:, :, None]
        for stage in self.residual:
            x = stage(x)
        x = self.pointwise(x)
        return self.head(x.reshape(x.shape[0], -1))[:, 0]


class ImFCSNet(nnx.Module):
    """ln D from the intensity traces of a 3 x 3-pixel window (ImFCSNet of Tang et al. 2024).

    Layers (paper scale, T = 2,500, stride 8): z-score over all T x 9 values;
    Conv(45, 200 frames x 3 x 3) -> BN -> ReLU: (2301, 45); Conv1D(45, 100, stride 8) -> BN ->
    ReLU: (276, 45); 2 residual stages of 2 x [Conv1D(45, 50) -> BN -> ReLU], shortcut cropped by
    98: (178, 45), (80, 45); 6 stages of 2 x [Conv1D(45, 1) -> BN -> ReLU] + identity; mean over
    time (45,) -> Dense(1) = ln(D / (um^2/s)).

    Arguments:
        config: ``ImFCSNetConfig``.
        rngs: ``nnx.Rngs``.

    Call: ``net(stack)`` with ``stack`` (batch, T, 3, 3) raw counts, T >= ``config.min_frames``
    (1,867 at paper scale with stride 8, 1,083 with stride 4; shorter raises ValueError)
    -> (batch,) ln D.

    The first layer is stored as a Conv1D over time with the 9 pixels (row-major) as channels:
    a Keras Conv3D kernel of shape (200, 3, 3, 1, 45) maps onto it by reshaping to (200, 9, 45).
    """

    def __init__(self, config: ImFCSNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        f = config.filters
        self.first = _ConvBNReLU(9, f, config.first_kernel, rngs)
        self.strided = _ConvBNReLU(f, f, config.strided_kernel, rngs, stride=config.stride)
        self.residual = nnx.List([_ResidualStage(f, f, config.kernel, rngs) for _ in range(config.residual_stages)])
        self.pointwise = _PointwiseStages(f, config.pointwise_stages, rngs)
        self.head = nnx.Linear(f, 1, kernel_init=_DENSE_INIT, rngs=rngs)

    def __call__(self, stack: jax.Array) -> jax.Array:
        if stack.ndim != 4 or stack.shape[2:] != (3, 3):
            raise ValueError(f"ImFCSNet expects stacks of shape (batch, frames, 3, 3), got {stack.shape}")
        if stack.shape[1] < self.config.min_frames:
            raise ValueError(
                f"ImFCSNet needs at least {self.config.min_frames} frames per window, got {stack.shape[1]}"
            )
        x = _zscore(stack.astype(jnp.float32), (1, 2, 3)).reshape(stack.shape[0], stack.shape[1], 9)
        x = self.strided(self.first(x))
        for stage in self.residual:
            x = stage(x)
        x = self.pointwise(x)
        return self.head(jnp.mean(x, axis=1))[:, 0]


def build_network(config: FCSNetConfig | ImFCSNetConfig, seed: int = 0) -> FCSNet | ImFCSNet:
    """A freshly initialised network of a config.

    Arguments:
        config: ``FCSNetConfig`` (gives an ``FCSNet``) or ``ImFCSNetConfig`` (an ``ImFCSNet``).
        seed: int, seed of the ``nnx.Rngs`` that draws the initial weights.

    Returns:
        the network, in training mode; ``nnx.view(net, use_running_average=True)`` is its
        evaluation view (running BatchNorm statistics, samples independent of each other).
    """
    if isinstance(config, FCSNetConfig):
        return FCSNet(config, rngs=nnx.Rngs(seed))
    return ImFCSNet(config, rngs=nnx.Rngs(seed))
