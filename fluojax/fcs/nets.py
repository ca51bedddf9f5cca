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
setting: 8 in the paper and the PyTorch port, 4 in the public TF code (default 8). For a map of
overlapping windows the network also runs in two halves (:meth:`ImFCSNet.pixel_spectra` once per
image, :meth:`ImFCSNet.windows_ln_d` per window), the same map computed with the pixels' spectra
shared between windows and the long convolutions by FFT (:func:`fft_correlate`).

Parameter counts follow the paper, which quotes Keras's "total params": trainable weights plus the
BatchNorm running means and variances (``fluojax.networks.keras_parameter_count``). Paper scale:
FCSNet 70,849 (69,825 trainable, ``fluojax.networks.parameter_count``: 16 BatchNorm layers x 32
channels x 2 statistics fewer), ImFCSNet 716,896 (715,276 trainable: 18 x 45 x 2 fewer), for either
stride.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fluojax import networks

__all__ = ["FCSNet", "FCSNetConfig", "ImFCSNet", "ImFCSNetConfig", "PixelSpectra", "build_network", "fft_correlate"]

_BN: dict[str, Any] = dict(momentum=0.9, epsilon=1e-3)
_CONV_INIT = networks.he_normal()
_DENSE_INIT = networks.glorot_uniform()


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


class PixelSpectra(NamedTuple):
    """The per-pixel part of ImFCSNet over an image (:meth:`ImFCSNet.pixel_spectra`).

    Attributes:
        spectrum: (H, W, F) complex64, rfft of each pixel's centred trace.
        mean: (H, W) each pixel's mean count.
        mean_square: (H, W) mean square of each pixel's centred trace.
        kernel_spectrum: (9, filters, F) complex64, conjugate spectrum of the network's first
            kernel (the same for every window).
    """

    spectrum: jax.Array
    mean: jax.Array
    mean_square: jax.Array
    kernel_spectrum: jax.Array


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


def _fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (a length the FFT handles fast)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def fft_correlate(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """A "valid" strided 1-D convolution (cross-correlation, as ``nnx.Conv``) computed by FFT.

    ``y[b, n, o] = sum_{k < K} sum_i kernel[k, i, o] x[b, s n + k, i]`` for ``n < (L - K) // s + 1``,
    the map of ``nnx.Conv(padding="VALID", strides=s)`` without its bias. A stride s > 1 is first
    rewritten without a stride by its polyphase decomposition: with ``x_r[m] = x[s m + r]`` and
    ``w_r[j] = w[s j + r]``, ``y[n] = sum_r sum_j w_r[j] x_r[n + j]``, a stride-1 correlation with
    ``s C_in`` channels and a kernel of ``ceil(K / s)``. The stride-1 correlation is then the circular
    one of length ``N >= L`` (``y = IFFT(FFT(x) conj(FFT(w)))``, zero-padded): every product with a
    non-zero kernel tap reads an index below L, so no term wraps around. Cost per sample: ~N/2
    frequencies x C_in x C_out complex products against L_out x K x C_in x C_out for the direct
    sum, plus the FFTs (O(N log N) per channel).

    Arguments:
        x: (batch, L, C_in) float32.
        kernel: (K, C_in, C_out), K <= L.
        stride: int >= 1.

    Returns:
        (batch, (L - K) // stride + 1, C_out) float32.
    """
    b, length, c_in = x.shape
    k, _, c_out = kernel.shape
    out_len = (length - k) // stride + 1
    if stride > 1:
        phases, taps = -(-length // stride), -(-k // stride)
        x = jnp.pad(x, ((0, 0), (0, phases * stride - length), (0, 0))).reshape(b, phases, stride * c_in)
        kernel = jnp.pad(kernel, ((0, taps * stride - k), (0, 0), (0, 0))).reshape(taps, stride * c_in, c_out)
        length = phases
    n = _fft_length(length)
    spectrum = jnp.einsum("bfi,fio->bfo", jnp.fft.rfft(x, n, axis=1), jnp.conj(jnp.fft.rfft(kernel, n, axis=0)))
    return jnp.fft.irfft(spectrum, n, axis=1)[:, :out_len]


class _ConvBNReLU(nnx.Module):
    """Conv1D ("valid") -> BatchNorm -> ReLU on (batch, length, channels); ``fft=True`` computes the
    same convolution by FFT (:func:`fft_correlate`)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, rngs: nnx.Rngs, stride: int = 1):
        self.conv = nnx.Conv(
            c_in, c_out, (kernel,), strides=(stride,), padding="VALID", kernel_init=_CONV_INIT, rngs=rngs
        )
        self.norm = nnx.BatchNorm(c_out, **_BN, rngs=rngs)
        self.stride = stride

    def __call__(self, x, fft: bool = False):
        if fft:
            y = fft_correlate(x, self.conv.kernel[...], self.stride) + self.bias()
        else:
            y = self.conv(x)
        return self.activate(y)

    def bias(self) -> jax.Array:
        """The convolution's bias (C_out,)."""
        assert self.conv.bias is not None  # built with use_bias (nnx.Conv's default)
        return self.conv.bias[...]

    def activate(self, y):
        """BatchNorm -> ReLU of the convolution's output ``y`` (bias included)."""
        return jax.nn.relu(self.norm(y))


class _ResidualStage(nnx.Module):
    """2 x [Conv(k) -> BN -> ReLU] plus the input cropped at the tail by 2 (k - 1) points."""

    def __init__(self, c_in: int, c_out: int, kernel: int, rngs: nnx.Rngs):
        self.first = _ConvBNReLU(c_in, c_out, kernel, rngs)
        self.second = _ConvBNReLU(c_out, c_out, kernel, rngs)
        self.crop = 2 * (kernel - 1)

    def __call__(self, x, fft: bool = False):
        fft = fft and self.crop > 0  # a 1-point kernel is a matrix product: no FFT
        y = self.second(self.first(x, fft), fft)
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

    Many windows of one image: ``net.windows_ln_d(net.pixel_spectra(frames), rows, cols, T)``
    equals ``net(windows)`` within float32 rounding, with each pixel's spectrum computed once and
    the long convolutions by FFT (inference only: eval mode).
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
        # the default float: float32 (float64 only inside jax.enable_x64, for reference computations)
        x = _zscore(stack.astype(jnp.result_type(float)), (1, 2, 3)).reshape(stack.shape[0], stack.shape[1], 9)
        return self._after_first(self.first(x))

    def _after_first(self, x: jax.Array, fft: bool = False) -> jax.Array:
        """The layers after the first, (batch, T - first_kernel + 1, filters) -> (batch,) ln D;
        ``fft``: the long convolutions by FFT (:func:`fft_correlate`), the same map."""
        # the strided convolution stays direct: on a CPU the FFT of its input alone costs half the direct sum
        x = self.strided(x)
        for stage in self.residual:
            x = stage(x, fft)
        x = self.pointwise(x)
        return self.head(jnp.mean(x, axis=1))[:, 0]

    def pixel_spectra(self, frames: jax.Array) -> PixelSpectra:
        """Per-pixel part of the network over a whole image, computed once for all its windows.

        For each pixel p of ``frames`` (T, H, W): its mean ``mu_p``, the mean square ``v_p`` of
        ``x_p - mu_p`` and the spectrum ``rfft(x_p - mu_p, N)`` with N the even FFT length >= T
        that :meth:`windows_ln_d` reads; and the first kernel's spectrum at that length.

        Arguments:
            frames: (T, H, W) counts, T >= ``config.min_frames``.

        Returns:
            ``PixelSpectra`` (spectrum (H, W, N/2 + 1) complex64, mean and mean_square (H, W),
            kernel_spectrum (9, filters, N/2 + 1)).
        """
        t = frames.shape[0]
        if t < self.config.min_frames:
            raise ValueError(f"ImFCSNet needs at least {self.config.min_frames} frames per window, got {t}")
        traces = jnp.moveaxis(frames.astype(jnp.float32), 0, -1)  # (H, W, T)
        mean = jnp.mean(traces, axis=-1)
        centred = traces - mean[..., None]
        n = 2 * _fft_length(-(-t // 2))
        kernel = jnp.transpose(self.first.conv.kernel[...], (1, 2, 0))  # (9, filters, K)
        return PixelSpectra(
            jnp.fft.rfft(centred, n, axis=-1),
            mean,
            jnp.mean(centred**2, axis=-1),
            jnp.conj(jnp.fft.rfft(kernel, n, axis=-1)),
        )

    def windows_ln_d(self, pixels: PixelSpectra, rows: jax.Array, cols: jax.Array, frames: int) -> jax.Array:
        """ln D of the 3 x 3 windows with top-left corners ``(rows, cols)``: the network's map
        (``net(stack[:, r:r+3, c:c+3])``) computed from the pixels' shared spectra.

        The z-score and the first convolution are linear, so with the window's mean m and
        standard deviation sd over its T x 9 values (from the pixels' ``mu_p`` and ``v_p``:
        ``sd^2 = mean_p (v_p + (mu_p - m)^2)``), the first layer's convolution of the z-scored
        window is ``(sum_p w_p * (x_p - mu_p) + sum_p (mu_p - m) sum_k w_p[k]) / (sd + 1e-6)``,
        ``*`` the "valid" correlation of :func:`fft_correlate` with the pixel's kernel ``w_p``:
        it is summed over the 9 pixels in the frequency domain from :meth:`pixel_spectra`, one
        inverse FFT per channel, and a window at float32 rounding of constant gives 0, as in the
        direct z-score. The later layers run as in ``__call__`` with their long convolutions by
        FFT. Equal to the direct network within float32 rounding.

        Arguments:
            pixels: ``PixelSpectra`` of the image (:meth:`pixel_spectra`).
            rows, cols: (B,) int top-left corners of the windows.
            frames: int, static, T of the frames ``pixels`` came from.

        Returns:
            (B,) ln D.
        """
        n = 2 * (pixels.spectrum.shape[-1] - 1)
        kernel = self.first.conv.kernel[...]  # (K, 9, filters), pixels row-major
        ii = rows[:, None] + jnp.repeat(jnp.arange(3), 3)[None, :]
        jj = cols[:, None] + jnp.tile(jnp.arange(3), 3)[None, :]
        mu, v = pixels.mean[ii, jj], pixels.mean_square[ii, jj]  # (B, 9)
        m = jnp.mean(mu, axis=1)
        sd = jnp.sqrt(jnp.mean(v + (mu - m[:, None]) ** 2, axis=1))
        # sum over the 9 pixels as broadcast products (a batched matrix product of 9 x filters per frequency is slower)
        spectrum = jnp.sum(pixels.spectrum[ii, jj][:, :, None, :] * pixels.kernel_spectrum[None], axis=1)
        y = jnp.swapaxes(jnp.fft.irfft(spectrum, n, axis=-1)[..., : frames - kernel.shape[0] + 1], 1, 2)
        y = y + ((mu - m[:, None]) @ jnp.sum(kernel, axis=0))[:, None, :]
        flat = (sd <= 1e-5 * jnp.abs(m))[:, None, None]
        y = jnp.where(flat, 0.0, y / (sd + 1e-6)[:, None, None]) + self.first.bias()
        return self._after_first(self.first.activate(y), fft=True)


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
