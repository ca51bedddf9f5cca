"""The voxel-wise regression network of Aritake et al. 2021: architecture, targets, loss, decoding.

The field is cut into voxels: the image's pixels laterally (side ``a`` nm) times ``Z`` bins in z
over ``[z_lo, z_hi)`` (side ``s_z = (z_hi - z_lo) / Z``). For every voxel (z bin k, row i, column j)
the fully convolutional :class:`VoxelNet` returns four numbers in [0, 1]: the probability ``c``
that the voxel holds a molecule and the molecule's position inside the voxel relative to its
size, ``zeta = (position - voxel min corner) / voxel size`` per axis (Aritake et al. 2021, section
3.2 and eq. 9; their ``(z - centre) / s + 1/2`` is the same number). :func:`voxel_targets` makes the
training labels from the true emitters, :func:`voxel_loss` is the paper's loss (L1 of the offsets
over positive voxels plus the binary cross-entropy over positives and the hardest negatives,
eqs. 10-11), and :func:`decode` turns an output back into localizations in nm (every voxel above
a threshold, no merging, as in the paper; an optional local-maximum suppression).

Output layout: ``(B, Z, ny, nx, 4)`` with the last axis ``(c, zeta_x, zeta_y, zeta_z)``; the
network's input is ``(B, planes, ny, nx)``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from fluojax import networks
from fluojax.io import InputError
from fluojax.smlm.models import Emitters

__all__ = [
    "HARD_NEGATIVE_RATIO",
    "Detections",
    "VoxelNet",
    "VoxelNetConfig",
    "build_network",
    "compact_detections",
    "decode",
    "shadowed_emitters",
    "voxel_loss",
    "voxel_targets",
]

HARD_NEGATIVE_RATIO = 3
"""Negative voxels kept per positive voxel by hard-negative mining (Aritake et al. 2021, released code)."""

_BN: dict[str, Any] = dict(momentum=0.9, epsilon=1e-5)  # PyTorch BatchNorm2d defaults (running-average momentum 0.1)
_CONV_INIT = networks.he_normal()
_HEAD_INIT = networks.lecun_normal()  # flax's default for nnx.Conv
_TINY = float(np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True)
class VoxelNetConfig:
    """Size of a :class:`VoxelNet` (immutable).

    Attributes:
        channels: output channels of the convolution blocks (paper: 16, 32, 64, 128, 64, 32, 16).
        kernels: their square kernel sizes (paper: 5, 5, 3, 3, 3, 3, 3).
        z_bins: Z, voxels along z (paper 4; 1 for 2D data).
        in_planes: input focal planes (paper 4).
        head_kernel: kernel of the two output convolutions (paper 3).
    """

    channels: tuple[int, ...] = (16, 32, 64, 128, 64, 32, 16)
    kernels: tuple[int, ...] = (5, 5, 3, 3, 3, 3, 3)
    z_bins: int = 4
    in_planes: int = 4
    head_kernel: int = 3

    def __post_init__(self):
        if len(self.channels) != len(self.kernels) or not self.channels:
            raise InputError(
                f"{len(self.channels)} channel counts and {len(self.kernels)} kernels: need one kernel per block"
            )
        if self.z_bins < 1 or self.in_planes < 1:
            raise InputError(f"{self.z_bins} z bins and {self.in_planes} planes: both must be >= 1")

    @classmethod
    def paper(cls) -> VoxelNetConfig:
        """The network of Aritake et al. 2021 (Fig. 3; the authors' released code): 206,704 trainable weights."""
        return cls()

    @classmethod
    def small(cls, z_bins: int = 4, in_planes: int = 4) -> VoxelNetConfig:
        """A CPU-sized network: the same depth and kernels, half the channels (about a quarter of the weights)."""
        return cls((8, 16, 32, 64, 32, 16, 8), z_bins=z_bins, in_planes=in_planes)

    @property
    def receptive_field(self) -> int:
        """Side of the receptive field of one output voxel, pixels (21 for the paper's network)."""
        return 1 + sum(k - 1 for k in self.kernels) + self.head_kernel - 1


class _ConvBlock(nnx.Module):
    """Conv2d ('SAME', stride 1) -> BatchNorm -> ReLU on NHWC arrays."""

    def __init__(self, c_in: int, c_out: int, kernel: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(c_in, c_out, (kernel, kernel), padding="SAME", kernel_init=_CONV_INIT, rngs=rngs)
        self.norm = nnx.BatchNorm(c_out, **_BN, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.norm(self.conv(x)))


class VoxelNet(nnx.Module):
    """Per-voxel molecule probability and sub-voxel position (Aritake et al. 2021, Fig. 3).

    Layers (paper scale): 7 blocks Conv2d -> BatchNorm -> ReLU, channels 4 -> 16 -> 32 -> 64 ->
    128 -> 64 -> 32 -> 16, kernels 5, 5, 3, 3, 3, 3, 3, 'SAME' padding, stride 1 (so any frame size
    works and the output has the input's rows and columns); then two parallel 3 x 3 convolutions
    without BatchNorm, 16 -> 3 Z (offsets) and 16 -> Z (probability), each followed by a sigmoid.
    206,704 trainable weights (206,000 convolution weights and biases, 704 BatchNorm scales and
    offsets).

    Arguments:
        config: :class:`VoxelNetConfig`.
        rngs: ``nnx.Rngs`` of the weight initialisation.

    Call: ``net(frames)`` with ``frames`` (B, planes, ny, nx) (scaled as the recipe says,
    ``fluojax.smlm.learned.network_input``) -> (B, Z, ny, nx, 4): ``(c, zeta_x, zeta_y, zeta_z)``.
    """

    def __init__(self, config: VoxelNetConfig, *, rngs: nnx.Rngs):
        self.config = config
        sizes = (config.in_planes, *config.channels)
        self.blocks = nnx.List([_ConvBlock(sizes[i], sizes[i + 1], k, rngs) for i, k in enumerate(config.kernels)])
        last, z, k = config.channels[-1], config.z_bins, config.head_kernel
        self.offsets = nnx.Conv(last, 3 * z, (k, k), padding="SAME", kernel_init=_HEAD_INIT, rngs=rngs)
        self.probability = nnx.Conv(last, z, (k, k), padding="SAME", kernel_init=_HEAD_INIT, rngs=rngs)

    def __call__(self, frames: Float[Array, "b planes ny nx"]) -> Float[Array, "b z ny nx 4"]:
        if frames.ndim != 4 or frames.shape[1] != self.config.in_planes:
            raise InputError(
                f"frames of shape {tuple(frames.shape)}: the network reads (batch, {self.config.in_planes}, rows, columns)"
            )
        x = jnp.moveaxis(frames.astype(jnp.float32), 1, -1)  # NHWC
        for block in self.blocks:
            x = block(x)
        b, ny, nx, _ = x.shape
        z = self.config.z_bins
        offsets = jax.nn.sigmoid(self.offsets(x)).reshape(b, ny, nx, z, 3)
        probability = jax.nn.sigmoid(self.probability(x))[..., None]  # (b, ny, nx, z, 1)
        return jnp.moveaxis(jnp.concatenate([probability, offsets], axis=-1), 3, 1)


def build_network(config: VoxelNetConfig, seed: int = 0) -> VoxelNet:
    """A freshly initialised :class:`VoxelNet` (training mode; ``fluojax.networks.eval_view`` for inference).

    Arguments:
        config: :class:`VoxelNetConfig`.
        seed: int, seed of the initial weights.
    """
    return VoxelNet(config, rngs=nnx.Rngs(seed))


# ----------------------------------------------------------------------------------------------
# targets
# ----------------------------------------------------------------------------------------------


def _voxel_coordinates(emitters: Emitters, shape, pixel_nm, z_range, z_bins):
    """Per emitter: voxel indices (k, i, j), offsets in [0, 1)^3 and whether it is inside the grid."""
    z_lo, z_hi = z_range
    sz = (z_hi - z_lo) / z_bins
    u = jnp.stack([emitters.x_nm / pixel_nm, emitters.y_nm / pixel_nm, (emitters.z_nm - z_lo) / sz], axis=-1)
    index = jnp.floor(jnp.clip(u, -1.0, 1e9))  # far-away (or non-finite) molecules: a safe int32, outside
    offsets = jnp.clip(u - index, 0.0, jnp.nextafter(jnp.float32(1.0), jnp.float32(0.0)))
    index = index.astype(jnp.int32)
    j, i, k = index[..., 0], index[..., 1], index[..., 2]
    ny, nx = shape
    inside = (j >= 0) & (j < nx) & (i >= 0) & (i < ny) & (k >= 0) & (k < z_bins) & (emitters.photons > 0)
    inside = inside & jnp.all(jnp.isfinite(u), axis=-1)
    return k, i, j, offsets, inside


def shadowed_emitters(
    emitters: Emitters, shape: tuple[int, int], pixel_nm: float, z_range: tuple[float, float], z_bins: int
) -> Bool[Array, "*batch m"]:
    """Which emitters lose their voxel to a later emitter in the same voxel (boolean, shape of the leaves).

    :func:`voxel_targets` keeps one molecule per voxel, the last one, as the authors' released code
    (Aritake et al. 2021) does; ``shadowed_emitters(...).sum()`` counts the molecules it drops.

    Arguments:
        emitters, shape, pixel_nm, z_range, z_bins: as for :func:`voxel_targets`.
    """
    k, i, j, _, inside = _voxel_coordinates(emitters, shape, pixel_nm, z_range, z_bins)
    flat = (k * shape[0] + i) * shape[1] + j
    m = flat.shape[-1]
    same = (flat[..., :, None] == flat[..., None, :]) & inside[..., None, :]
    later = jnp.arange(m)[None, :] > jnp.arange(m)[:, None]
    return inside & jnp.any(same & later, axis=-1)


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def voxel_targets(
    emitters: Emitters, shape: tuple[int, int], pixel_nm: float, z_range: tuple[float, float], z_bins: int
) -> Float[Array, "b z ny nx 4"]:
    """Training targets of a batch of frames: the labels c_ijk and relative coordinates zeta_ijk of
    Aritake et al. 2021, section 3.2.

    Voxel (k, i, j) spans ``x in [j a, (j+1) a)``, ``y in [i a, (i+1) a)``, ``z in [z_lo + k s_z,
    z_lo + (k+1) s_z)`` with ``s_z = (z_hi - z_lo) / Z``. It gets ``c = 1`` and offsets
    ``zeta = ((x - j a) / a, (y - i a) / a, (z - z_lo - k s_z) / s_z)`` in [0, 1) if it holds a
    molecule, else zeros. Molecules outside the voxel grid or with no photons (padding) are
    ignored; of two molecules in one voxel the later one (higher index) is kept
    (:func:`shadowed_emitters` counts the others).

    Arguments:
        emitters: :class:`~fluojax.smlm.models.Emitters`, leaves (B, M), nm.
        shape: (ny, nx) pixels of the frames (static).
        pixel_nm: pixel size a, nm (static).
        z_range: (z_lo, z_hi) of the z bins, nm, z_hi > z_lo (static).
        z_bins: Z (static).

    Returns:
        (B, Z, ny, nx, 4) array: ``(c, zeta_x, zeta_y, zeta_z)`` per voxel.
    """
    ny, nx = shape
    k, i, j, offsets, inside = _voxel_coordinates(emitters, shape, pixel_nm, z_range, z_bins)
    keep = inside & ~shadowed_emitters(emitters, shape, pixel_nm, z_range, z_bins)
    b = k.shape[0]
    frame = jnp.arange(b)[:, None]
    size = b * z_bins * ny * nx
    flat = ((frame * z_bins + k) * ny + i) * nx + j
    flat = jnp.where(keep, flat, size).reshape(-1)  # out of range: dropped
    values = jnp.concatenate([jnp.ones(offsets.shape[:-1] + (1,), offsets.dtype), offsets], axis=-1).reshape(-1, 4)
    targets = jnp.zeros((size, 4), offsets.dtype).at[flat].set(values, mode="drop", unique_indices=True)
    return targets.reshape(b, z_bins, ny, nx, 4)


# ----------------------------------------------------------------------------------------------
# loss
# ----------------------------------------------------------------------------------------------


def _clamped_log(p):
    """``max(ln p, -100)`` with a finite gradient everywhere (p below float32's smallest normal
    number counts as 0, whose logarithm is clamped)."""
    ok = p > _TINY
    return jnp.where(ok, jnp.maximum(jnp.log(jnp.where(ok, p, 1.0)), -100.0), -100.0)


def _bce(p, label):
    """Binary cross-entropy with the logarithms clamped at -100 (as PyTorch's ``BCELoss``)."""
    return -(label * _clamped_log(p) + (1.0 - label) * _clamped_log(1.0 - p))


def voxel_loss(prediction: Float[Array, "b z ny nx 4"], target: Float[Array, "b z ny nx 4"]) -> Float[Array, ""]:
    """Loss of Aritake et al. 2021, eq. 11, normalised as in the authors' released code.

        L = (1/B) sum_b [ sum_{v in Omega_+} |zeta_v - zeta^_v|_1
                          + sum_{v in Omega_+} BCE(1, c^_v) + sum_{v in H_b} BCE(0, c^_v) ],

    ``H_b`` being the ``min(3 n_+, n_-)`` negative voxels of image b with the largest BCE (hard
    negative mining, ratio :data:`HARD_NEGATIVE_RATIO`; ``n_+``, ``n_-`` its positive and negative
    voxel counts). The hard-negative sum is taken in a fixed shape: each image's negative BCEs
    (positives set to 0) sorted in decreasing order, their cumulative sum read at ``min(3 n_+, n_-)``.
    BCE uses logarithms clamped at -100 (as PyTorch's ``BCELoss``).

    Arguments:
        prediction: (B, Z, ny, nx, 4) network output ``(c^, zeta^)``.
        target: (B, Z, ny, nx, 4) :func:`voxel_targets`.

    Returns:
        scalar loss.
    """
    b = prediction.shape[0]
    c_hat, zeta_hat = prediction[..., 0].reshape(b, -1), prediction[..., 1:].reshape(b, -1, 3)
    label, zeta = target[..., 0].reshape(b, -1), target[..., 1:].reshape(b, -1, 3)
    positive = label > 0.5
    location = jnp.sum(jnp.where(positive[..., None], jnp.abs(zeta_hat - zeta), 0.0))
    bce = _bce(c_hat, label)
    n_pos = jnp.sum(positive, axis=1)
    n_hard = jnp.minimum(HARD_NEGATIVE_RATIO * n_pos, label.shape[1] - n_pos)
    negative = -jnp.sort(-jnp.where(positive, 0.0, bce), axis=1)  # decreasing
    cumulative = jnp.concatenate([jnp.zeros((b, 1), bce.dtype), jnp.cumsum(negative, axis=1)], axis=1)
    hard = jnp.take_along_axis(cumulative, n_hard[:, None], axis=1)[:, 0]
    confidence = jnp.sum(jnp.where(positive, bce, 0.0)) + jnp.sum(hard)
    return (location + confidence) / b


# ----------------------------------------------------------------------------------------------
# decoding
# ----------------------------------------------------------------------------------------------


class Detections(NamedTuple):
    """Localizations decoded from a network output.

    From :func:`decode` every leaf is (B, K) (padded; ``valid`` marks the real rows); from
    :func:`compact_detections` every leaf is a 1D NumPy array of the valid rows only.

    Attributes:
        frame: frame index (0-based).
        x_nm, y_nm, z_nm: position, nm.
        probability: the voxel's probability c^.
        valid: whether the row is a localization.
    """

    frame: Int[ArrayLike, "*rows"]
    x_nm: Float[ArrayLike, "*rows"]
    y_nm: Float[ArrayLike, "*rows"]
    z_nm: Float[ArrayLike, "*rows"]
    probability: Float[ArrayLike, "*rows"]
    valid: Bool[ArrayLike, "*rows"]


def _local_maximum(p):
    """Where ``p`` (B, Z, ny, nx) equals the maximum of its 3 x 3 x 3 neighbourhood (z, y, x)."""
    peak = jax.lax.reduce_window(p, -jnp.inf, jax.lax.max, (1, 3, 3, 3), (1, 1, 1, 1), "SAME")
    return p >= peak


@partial(jax.jit, static_argnames=("pixel_nm", "z_range", "z_bins", "max_per_frame", "local_max"))
def decode(
    output: Float[Array, "b z ny nx 4"],
    threshold: float,
    pixel_nm: float,
    z_range: tuple[float, float],
    z_bins: int,
    *,
    max_per_frame: int | None = None,
    local_max: bool = False,
    first_frame: int = 0,
) -> Detections:
    """Localizations of every voxel whose probability exceeds ``threshold`` (fixed-size, jittable).

    Voxel (k, i, j) with offsets ``zeta`` gives (the relative coordinate of Aritake et al. 2021, section 3.2, inverted)
    ``x = (j + zeta_x) a``, ``y = (i + zeta_y) a``, ``z = z_lo + (k + zeta_z) s_z``. Neighbouring
    voxels are not merged (as in the paper); with ``local_max`` a voxel is kept only if its
    probability is the largest of its 3 x 3 x 3 neighbourhood in (z, row, column).

    Arguments:
        output: (B, Z, ny, nx, 4) network output.
        threshold: probability threshold (the paper uses 0.5 and 0.9).
        pixel_nm: pixel size a, nm (static).
        z_range: (z_lo, z_hi) of the network's z bins, nm (static).
        z_bins: Z (static).
        max_per_frame: rows per frame K (static); None: all Z ny nx voxels. If more voxels pass,
            the K most probable are kept.
        local_max: keep only local maxima of the probability (static).
        first_frame: index of the first frame of ``output`` (added to ``frame``).

    Returns:
        :class:`Detections`, leaves (B, K), rows ordered by decreasing probability.
    """
    b, z, ny, nx, _ = output.shape
    if z != z_bins:
        raise InputError(f"network output with {z} z bins: expected {z_bins}")
    p = output[..., 0]
    keep = p > threshold
    if local_max:
        keep = keep & _local_maximum(p)
    count = z * ny * nx
    k_rows = count if max_per_frame is None else min(int(max_per_frame), count)
    score, index = jax.lax.top_k(jnp.where(keep, p, -1.0).reshape(b, count), k_rows)
    zeta = output[..., 1:].reshape(b, count, 3)
    zeta = jnp.take_along_axis(zeta, index[..., None], axis=1)
    kk, rest = jnp.divmod(index, ny * nx)
    ii, jj = jnp.divmod(rest, nx)
    sz = (z_range[1] - z_range[0]) / z_bins
    frame = jnp.broadcast_to(jnp.arange(b)[:, None] + first_frame, index.shape)
    return Detections(
        frame,
        (jj + zeta[..., 0]) * pixel_nm,
        (ii + zeta[..., 1]) * pixel_nm,
        z_range[0] + (kk + zeta[..., 2]) * sz,
        jnp.maximum(score, 0.0),
        score >= 0.0,
    )


def compact_detections(detections: Detections) -> Detections:
    """The valid rows of a padded :class:`Detections` as 1D NumPy arrays, ordered by frame, then
    by decreasing probability (host side).

    Arguments:
        detections: from :func:`decode`.
    """
    host = [np.asarray(leaf) for leaf in detections]
    valid = host[-1].astype(bool)
    rows = [leaf[valid] for leaf in host]
    order = np.lexsort((-rows[4], rows[0]))
    return Detections(*(leaf[order] for leaf in rows))
