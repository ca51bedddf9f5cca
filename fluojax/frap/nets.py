"""DeepFRAP's networks in Flax NNX, their targets and the noise-weighted loss.

DeepFRAP is Wåhlstrand Skärström et al. 2021 (J. Microsc. 282:146); "the paper" below.

**Joint network.** A fully connected network from the 110-point recovery curve (10 prebleach +
100 postbleach ROI means) to the three targets ``y = (D*, c0, alpha)``, with
``D* = log10(D / (px^2/s))``: 8 hidden Dense(128) layers with ELU
(Wåhlstrand Skärström et al. 2021, eq. 16, gamma = 1) and a linear Dense(3) output;
Glorot-uniform kernels, zero biases (TensorFlow defaults, as in the paper).
Weights: ``110*128 + 128 + 7 (128*128 + 128) + 128*3 + 3 = 14,208 + 115,584 + 387 = 130,179``,
of which all but the output layer's 387, i.e. 129,792, are shared between the three parameters
(both numbers are quoted in the paper).

**Per-parameter ("merged") network.** Three such blocks, each ending in Dense(1), side by side,
one per parameter, sharing nothing: ``3 (129,792 + 128 + 1) = 3 x 129,921 = 389,763`` weights,
the paper's number for the merged network of its Table 4. The blocks are stored as stacked (3, in,
out) kernels and evaluated as one batched product per layer — the "three fully connected blocks
executed in parallel" the paper merges for speed. Trained with the joint loss below, block j
receives gradient only from parameter j's term, so one training run of the merged network is
three separate trainings with the per-parameter loss (Wåhlstrand Skärström et al. 2021, eq. 10),
the 1/3 of eq. 9 aside. (The paper's final network further swaps the joint network's D* part in
for block 0; that is a choice of trained weights, not another architecture.)

**Input normalisation.** None, as in the paper: the network reads the raw ROI means, which are
already O(1) (c0 in [0.5, 1] in the dimensionless intensity units; the paper rescales experimental
data from 16 bit to [0, 1] before background subtraction). The paper lists rescaling of inputs
and outputs as unexplored, keeps c0 as a target rather than dividing it out (the postbleach
values carry information about c0), and does not standardise the targets.

**Loss.** Weighted MSE (Wåhlstrand Skärström et al. 2021, eq. 9),
``(1/3) sum_i zeta_i |y_i - f(x_i)|^2`` with ``zeta_i proportional to 1 / a_i`` (a_i the
per-pixel noise variance of sample i), so that low-noise samples, whose estimates are far more
precise, are not drowned by high-noise ones. Here ``zeta`` is normalised to sum 1 over each batch
(the paper normalises over the data set and also writes a 1/N; normalising per batch keeps the
loss on the scale of a plain MSE, which it equals for constant weights). ``train.py`` calls
``loss(prediction, target)``, so ``inverse_noise_weighted_mse`` takes the weights from an extra
target column: targets are (B, 4) = ``(D*, c0, alpha, a)`` as made by ``network_targets``.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from fluojax import networks
from fluojax.frap.models import FrapParams
from fluojax.frap.simulate import FrapSample
from fluojax.io import InputError

__all__ = [
    "TARGET_NAMES",
    "DeepFrapConfig",
    "DeepFrapNet",
    "build_network",
    "expected_parameter_count",
    "inverse_noise_weighted_mse",
    "network_targets",
    "params_from_prediction",
    "weighted_mse",
]

TARGET_NAMES = ("log10_d_px2_s", "c0", "alpha")
"""Network outputs, in order: D* = log10(D / (px^2/s)), c0, alpha
(Wåhlstrand Skärström et al. 2021)."""


@dataclasses.dataclass(frozen=True)
class DeepFrapConfig:
    """Size of a DeepFRAP network (immutable).

    Attributes:
        inputs: int, curve length (10 prebleach + 100 postbleach = 110).
        width: int, units of every hidden layer (the paper: 128).
        hidden_layers: int, hidden Dense + ELU layers (the paper: 8).
        outputs: int, number of targets (3: D*, c0, alpha).
        per_parameter: bool, one independent block per target (the merged network, 389,763
            weights) instead of one block with ``outputs`` outputs (130,179 weights).
        name: str.
    """

    inputs: int = 110
    width: int = 128
    hidden_layers: int = 8
    outputs: int = 3
    per_parameter: bool = False
    name: str = "deepfrap"

    def __post_init__(self):
        if min(self.inputs, self.width, self.hidden_layers, self.outputs) < 1:
            sizes = (self.inputs, self.width, self.hidden_layers, self.outputs)
            raise InputError(f"network sizes (inputs, width, hidden layers, outputs) = {sizes}: each must be >= 1")

    @classmethod
    def paper(cls, per_parameter: bool = False) -> DeepFrapConfig:
        """DeepFRAP's network: joint (130,179 weights) or per-parameter/merged (389,763)."""
        return cls(per_parameter=per_parameter, name="deepfrap_merged" if per_parameter else "deepfrap")

    @classmethod
    def small(cls, per_parameter: bool = False) -> DeepFrapConfig:
        """A CPU-sized network for tests and quick runs: 3 hidden layers of 64."""
        return cls(width=64, hidden_layers=3, per_parameter=per_parameter, name="deepfrap_small")

    @property
    def blocks(self) -> int:
        """Independent fully connected blocks G: ``outputs`` if per-parameter, else 1."""
        return self.outputs if self.per_parameter else 1

    @property
    def outputs_per_block(self) -> int:
        return 1 if self.per_parameter else self.outputs


def expected_parameter_count(config: DeepFrapConfig) -> int:
    """Closed-form weight count: ``G [n_in w + w + (L - 1)(w^2 + w) + w k + k]``.

    With G blocks, n_in inputs, L hidden layers of width w and k outputs per block; 130,179 for
    ``paper()``, 389,763 for ``paper(per_parameter=True)``.
    """
    w, k = config.width, config.outputs_per_block
    per_block = config.inputs * w + w + (config.hidden_layers - 1) * (w * w + w) + w * k + k
    return config.blocks * per_block


_KERNEL_INIT = networks.glorot_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,))


class _BlockDense(nnx.Module):
    """G independent Dense layers evaluated together: ``h_g -> h_g W_g + b_g``.

    Kernel (G, n_in, n_out), Glorot-uniform per block (fans n_in, n_out); bias (G, n_out), zeros.
    Input (G, B, n_in), or (B, n_in) shared by all blocks (the first layer); output (G, B, n_out).
    """

    def __init__(self, blocks: int, n_in: int, n_out: int, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_KERNEL_INIT(rngs.params(), (blocks, n_in, n_out), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((blocks, n_out), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        spec = "bi,gio->gbo" if x.ndim == 2 else "gbi,gio->gbo"
        return jnp.einsum(spec, x, self.kernel[...]) + self.bias[...][:, None, :]


class DeepFrapNet(nnx.Module):
    """DeepFRAP MLP (Wåhlstrand Skärström et al. 2021): curve -> (D*, c0, alpha).

    Layers per block: Dense(width) -> ELU, ``hidden_layers`` times, then a linear Dense to the
    block's outputs; blocks (1 for the joint network, 3 for the per-parameter one) run in parallel
    on the same input and their outputs are concatenated in ``TARGET_NAMES`` order. No input
    normalisation (see the module docstring).

    Arguments:
        config: ``DeepFrapConfig``.
        rngs: ``nnx.Rngs`` for the weight initialisation.

    Call: ``net(curves)`` with ``curves`` (batch, inputs) raw ROI means -> (batch, outputs)
    ``[log10(D / (px^2/s)), c0, alpha]``.
    """

    def __init__(self, config: DeepFrapConfig, *, rngs: nnx.Rngs):
        self.config = config
        g, w = config.blocks, config.width
        sizes = [config.inputs] + [w] * config.hidden_layers
        self.hidden = nnx.List([_BlockDense(g, n_in, n_out, rngs) for n_in, n_out in itertools.pairwise(sizes)])
        self.head = _BlockDense(g, w, config.outputs_per_block, rngs)

    def __call__(self, curves: jax.Array) -> jax.Array:
        if curves.ndim != 2 or curves.shape[1] != self.config.inputs:
            raise InputError(f"curves of shape {curves.shape}: DeepFrapNet reads (batch, {self.config.inputs})")
        h = curves.astype(jnp.float32)
        for layer in self.hidden:
            h = jax.nn.elu(layer(h))
        out = self.head(h)  # (G, B, k)
        return jnp.transpose(out, (1, 0, 2)).reshape(curves.shape[0], self.config.outputs)


def build_network(config: DeepFrapConfig, seed: int = 0) -> DeepFrapNet:
    """A freshly initialised network of a config (weights from ``nnx.Rngs(seed)``)."""
    return DeepFrapNet(config, rngs=nnx.Rngs(seed))


# ----------------------------------------------------------------------------------------------
# Targets and loss
# ----------------------------------------------------------------------------------------------


def network_targets(sample: FrapSample) -> jax.Array:
    """Training targets with the loss weights' noise level: (..., 4) = ``(D*, c0, alpha, a)``.

    ``D* = log10(D / (px^2/s))`` (Wåhlstrand Skärström et al. 2021); the last column, the per-pixel
    noise variance a,
    is not predicted: ``inverse_noise_weighted_mse`` uses it for the weights ``zeta = 1/a``.

    Arguments:
        sample: ``FrapSample`` (e.g. from ``sample_frap_params``).

    Returns:
        float32 array (..., 4).
    """
    p = sample.params
    columns = (jnp.log10(p.d_px2_s), p.c0, p.alpha, jnp.broadcast_to(sample.noise.a, jnp.shape(p.c0)))
    return jnp.stack([jnp.asarray(c, jnp.float32) for c in columns], axis=-1)


def params_from_prediction(prediction: jax.Array) -> FrapParams:
    """``FrapParams`` (D = 10^D* in px^2/s, c0, alpha; phi = beta = 1, gamma = 0) from outputs.

    Arguments:
        prediction: (..., 3) network output ``[D*, c0, alpha]``.

    Returns:
        ``FrapParams`` with leaves of shape ``...``.
    """
    return FrapParams(d_px2_s=10.0 ** prediction[..., 0], c0=prediction[..., 1], alpha=prediction[..., 2])


def weighted_mse(prediction: jax.Array, target: jax.Array, weights: jax.Array) -> jax.Array:
    """Weighted mean squared error ``(1/P) sum_i zeta_i sum_j (f_ij - y_ij)^2``
    (Wåhlstrand Skärström et al. 2021, eq. 9).

    ``zeta_i = weights_i / sum_k weights_k`` (normalised over the batch), P = number of targets per
    sample. Equals the plain MSE for constant weights; for one target (P = 1) it is the
    per-parameter loss (Wåhlstrand Skärström et al. 2021, eq. 10).

    Arguments:
        prediction: (B, P) network outputs f(x_i).
        target: (B, P) targets y_i.
        weights: (B,) non-negative sample weights (not all zero).

    Returns:
        scalar loss.
    """
    zeta = weights / jnp.sum(weights)
    squared = jnp.square(prediction - target).reshape(prediction.shape[0], -1)
    return jnp.sum(zeta * jnp.mean(squared, axis=1))


def inverse_noise_weighted_mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
    """DeepFRAP's training loss with ``train.py``'s signature ``loss(prediction, target)``.

    ``weighted_mse(prediction, target[:, :P], 1 / target[:, P])``: the target carries the
    per-pixel noise variance a of each sample as its last column (``network_targets``), and the
    weights are ``zeta_i proportional to 1 / a_i`` (Wåhlstrand Skärström et al. 2021).

    Arguments:
        prediction: (B, P) network outputs.
        target: (B, P + 1) targets with a in the last column (a > 0).

    Returns:
        scalar loss.
    """
    n_out = prediction.shape[-1]
    if target.shape[-1] != n_out + 1:
        raise InputError(f"targets of shape {target.shape}: expected (batch, {n_out} + 1), the noise variance a last")
    return weighted_mse(prediction, target[:, :n_out], 1.0 / target[:, n_out])
