"""The voxel-wise regression network of Aritake et al. 2021: weight count of the authors' released
code, fully convolutional shapes, voxel targets and their decoding, and the loss with hard-negative
mining against a direct NumPy implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fluojax.io import InputError
from fluojax.networks import parameter_count
from fluojax.smlm import nets
from fluojax.smlm.models import Emitters

PIXEL = 192.0
Z_RANGE = (-200.0, 1350.0)  # 4 bins of 387.5 nm


def _emitters(x, y, z, photons=None):
    x = jnp.atleast_2d(jnp.asarray(x, jnp.float32))
    photons = jnp.ones_like(x) if photons is None else jnp.atleast_2d(jnp.asarray(photons, jnp.float32))
    return Emitters(
        x, jnp.atleast_2d(jnp.asarray(y, jnp.float32)), jnp.atleast_2d(jnp.asarray(z, jnp.float32)), photons
    )


def _expected_count(config):
    """Conv weights + biases + BatchNorm scale and offset per block, then the two heads (no BN)."""
    sizes = (config.in_planes, *config.channels)
    blocks = sum(k * k * sizes[i] * sizes[i + 1] + 3 * sizes[i + 1] for i, k in enumerate(config.kernels))
    h = config.head_kernel**2 * config.channels[-1]
    return blocks + (h * 3 * config.z_bins + 3 * config.z_bins) + (h * config.z_bins + config.z_bins)


def _abstract(config):
    """The network's shapes without drawing weights (``parameter_count`` reads shapes only)."""
    return nnx.eval_shape(lambda: nets.build_network(config))


def test_paper_network_has_the_released_codes_weight_count():
    net = _abstract(nets.VoxelNetConfig.paper())
    assert parameter_count(net) == 206_704  # Aritake et al. 2021, released code: 206,000 conv + 704 BN


@pytest.mark.parametrize(
    "config",
    [nets.VoxelNetConfig.small(), nets.VoxelNetConfig.small(z_bins=1, in_planes=1), nets.VoxelNetConfig(z_bins=6)],
)
def test_other_sizes_count_their_layers(config):
    assert parameter_count(_abstract(config)) == _expected_count(config)


def test_paper_receptive_field_is_21_pixels():
    assert nets.VoxelNetConfig.paper().receptive_field == 21  # 1 + 4 + 4 + 5 x 2 + 2


@pytest.mark.parametrize("shape", [(16, 24), (33, 20)])
def test_any_frame_size_gives_one_voxel_column_per_pixel(shape):
    net = nets.build_network(nets.VoxelNetConfig.small(), seed=1)
    out = net(jax.random.normal(jax.random.key(0), (2, 4, *shape)))
    assert out.shape == (2, 4, *shape, 4)
    assert bool(jnp.all((out >= 0) & (out <= 1)))  # sigmoid outputs


def test_output_is_translation_equivariant_away_from_the_border():
    """Fully convolutional: shifting the input by 3 pixels shifts the output by 3 pixels wherever the
    21-pixel receptive field stays inside both frames (eval mode, so BatchNorm is a fixed affine map)."""
    from fluojax.networks import eval_view

    net = eval_view(nets.build_network(nets.VoxelNetConfig.paper(), seed=2))
    x = jax.random.normal(jax.random.key(1), (1, 4, 40, 40))
    a = net(x[:, :, :, :37])
    b = net(x[:, :, :, 3:])
    # columns 13..23 of `a` see columns 3..33 of x; the same voxels are columns 10..20 of `b`
    np.testing.assert_allclose(a[:, :, :, 13:24], b[:, :, :, 10:21], atol=1e-5)  # float32 summation order


def test_wrong_number_of_planes_is_refused():
    net = nets.build_network(nets.VoxelNetConfig.small())
    with pytest.raises(InputError, match="4, rows, columns"):
        net(jnp.ones((1, 3, 8, 8)))


def test_target_marks_the_voxel_holding_a_molecule_with_its_offsets():
    # x = 2.25 px, y = 5.5 px, z = -200 + 2.75 bins of 387.5 nm
    em = _emitters([2.25 * PIXEL], [5.5 * PIXEL], [-200.0 + 2.75 * 387.5])
    t = nets.voxel_targets(em, (8, 8), PIXEL, Z_RANGE, 4)
    assert t.shape == (1, 4, 8, 8, 4)
    np.testing.assert_allclose(t[0, 2, 5, 2], [1.0, 0.25, 0.5, 0.75], atol=1e-5)  # float32 rounding of nm
    assert float(t[..., 0].sum()) == 1.0 and float(jnp.abs(t).sum()) == pytest.approx(2.5, abs=1e-4)


def test_later_molecule_in_a_voxel_wins_and_is_counted():
    em = _emitters([[10.0, 100.0, 500.0]], [[10.0, 20.0, 500.0]], [[0.0, 10.0, 0.0]])
    t = nets.voxel_targets(em, (8, 8), PIXEL, Z_RANGE, 4)
    np.testing.assert_allclose(t[0, 0, 0, 0, 1:3], [100.0 / PIXEL, 20.0 / PIXEL], rtol=1e-6)
    assert float(t[..., 0].sum()) == 2.0
    shadowed = nets.shadowed_emitters(em, (8, 8), PIXEL, Z_RANGE, 4)
    assert shadowed.tolist() == [[True, False, False]]


def test_molecules_outside_the_grid_or_without_photons_are_ignored():
    em = _emitters(
        [[-1.0, 8 * PIXEL, 100.0, 100.0, 100.0, 100.0, 1e12, np.nan]],
        [[100.0, 100.0, -5.0, 100.0, 100.0, 100.0, 100.0, 100.0]],
        [[0.0, 0.0, 0.0, -201.0, 1350.0, 0.0, 0.0, 0.0]],
        [[1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]],
    )
    assert float(jnp.abs(nets.voxel_targets(em, (8, 8), PIXEL, Z_RANGE, 4)).sum()) == 0.0


def test_decoding_the_targets_returns_the_true_positions():
    key = jax.random.key(3)
    kx, ky, kz = jax.random.split(key, 3)
    shape = (3, 12)
    em = Emitters(
        jax.random.uniform(kx, shape, maxval=16 * PIXEL),
        jax.random.uniform(ky, shape, maxval=16 * PIXEL),
        jax.random.uniform(kz, shape, minval=Z_RANGE[0], maxval=Z_RANGE[1]),
        jnp.ones(shape),
    )
    assert not bool(nets.shadowed_emitters(em, (16, 16), PIXEL, Z_RANGE, 4).any())  # this key: no shared voxel
    d = nets.compact_detections(
        nets.decode(nets.voxel_targets(em, (16, 16), PIXEL, Z_RANGE, 4), 0.5, PIXEL, Z_RANGE, 4)
    )
    assert len(d.frame) == 36
    for f in range(3):
        truth = np.stack([np.asarray(em.x_nm[f]), np.asarray(em.y_nm[f]), np.asarray(em.z_nm[f])], 1)
        got = np.stack([d.x_nm[d.frame == f], d.y_nm[d.frame == f], d.z_nm[d.frame == f]], 1)
        # float32: nm -> voxel units -> nm loses ~1 ulp of 3,000 nm (2.4e-4 nm) per step
        np.testing.assert_allclose(got[np.lexsort(got.T)], truth[np.lexsort(truth.T)], atol=2e-3)
    assert np.all(d.probability == 1.0)


def test_decode_keeps_the_most_probable_voxels_when_capped():
    p = jnp.zeros((1, 1, 2, 3)).at[0, 0, 0, 1].set(0.7).at[0, 0, 1, 2].set(0.95).at[0, 0, 1, 0].set(0.6)
    out = jnp.concatenate([p[..., None], jnp.full((1, 1, 2, 3, 3), 0.5)], -1)
    d = nets.decode(out, 0.5, 100.0, (-50.0, 50.0), 1, max_per_frame=2)
    assert d.valid.tolist() == [[True, True]]
    np.testing.assert_allclose(d.probability[0], [0.95, 0.7], rtol=1e-6)
    np.testing.assert_allclose(d.x_nm[0], [250.0, 150.0], rtol=1e-6)  # voxel centres: (j + 0.5) 100 nm
    np.testing.assert_allclose(d.y_nm[0], [150.0, 50.0], rtol=1e-6)
    np.testing.assert_allclose(d.z_nm[0], [0.0, 0.0], atol=1e-6)


def test_local_maximum_suppression_drops_weaker_neighbours():
    p = jnp.zeros((1, 2, 5, 5)).at[0, 0, 2, 2].set(0.9).at[0, 1, 2, 3].set(0.8).at[0, 0, 0, 0].set(0.7)
    out = jnp.concatenate([p[..., None], jnp.full((1, 2, 5, 5, 3), 0.5)], -1)
    plain = nets.compact_detections(nets.decode(out, 0.5, 100.0, (0.0, 800.0), 2))
    peaks = nets.compact_detections(nets.decode(out, 0.5, 100.0, (0.0, 800.0), 2, local_max=True))
    assert len(plain.frame) == 3
    np.testing.assert_allclose(peaks.probability, [0.9, 0.7], rtol=1e-6)  # 0.8 touches 0.9 in (z, y, x)


def _numpy_loss(pred, target, ratio=3):
    """Direct implementation of the released code's loss: ranks of the negatives' BCE per image."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    b = pred.shape[0]
    total = 0.0
    for n in range(b):
        c, zeta = pred[n, ..., 0].ravel(), pred[n, ..., 1:].reshape(-1, 3)
        label, zt = target[n, ..., 0].ravel(), target[n, ..., 1:].reshape(-1, 3)
        pos = label == 1
        total += np.abs(zeta[pos] - zt[pos]).sum()
        with np.errstate(divide="ignore"):
            bce = -(label * np.maximum(np.log(c), -100) + (1 - label) * np.maximum(np.log(1 - c), -100))
        ranked = np.where(pos, 0.0, bce)
        rank = np.empty(len(c), int)
        rank[np.argsort(-ranked, kind="stable")] = np.arange(len(c))
        neg = (rank < min(ratio * pos.sum(), (~pos).sum())) & ~pos
        total += bce[pos].sum() + bce[neg].sum()
    return total / b


def _random_case(key, shape, positive_fraction):
    k1, k2, k3 = jax.random.split(key, 3)
    pred = jax.random.uniform(k1, (*shape, 4), minval=0.01, maxval=0.99)
    label = (jax.random.uniform(k2, shape) < positive_fraction).astype(jnp.float32)
    offsets = jax.random.uniform(k3, (*shape, 3)) * label[..., None]
    return pred, jnp.concatenate([label[..., None], offsets], -1)


@pytest.mark.parametrize("fraction", [0.03, 0.5])
def test_loss_matches_a_direct_implementation_with_hard_negative_mining(fraction):
    # 0.03: 3 x positives < negatives (ratio binds); 0.5: clamped to the number of negatives
    pred, target = _random_case(jax.random.key(int(fraction * 100)), (3, 2, 9, 7), fraction)
    got = float(jax.jit(nets.voxel_loss)(pred, target))
    assert got == pytest.approx(_numpy_loss(pred, target), rel=1e-5)  # float32 sums of ~500 terms


def test_loss_ignores_easy_negatives():
    """Lowering the probability of a negative voxel outside the top 3 x positives leaves the loss unchanged."""
    pred, target = _random_case(jax.random.key(7), (1, 1, 10, 10), 0.02)
    n_pos = int(target[..., 0].sum())
    neg_p = np.where(np.asarray(target[..., 0]) == 0, np.asarray(pred[..., 0]), np.inf).ravel()
    easiest = np.unravel_index(np.argmin(neg_p), target.shape[:-1])
    assert n_pos >= 1 and 3 * n_pos < 100 - n_pos
    changed = pred.at[(*easiest, 0)].set(0.001)
    assert float(nets.voxel_loss(changed, target)) == pytest.approx(float(nets.voxel_loss(pred, target)), rel=1e-6)


def test_loss_gradient_is_finite_at_saturated_probabilities():
    pred, target = _random_case(jax.random.key(8), (2, 1, 6, 6), 0.1)
    pred = pred.at[..., 0].set(jnp.where(target[..., 0] > 0, 0.0, 1.0))  # every voxel maximally wrong
    grad = jax.grad(nets.voxel_loss)(pred, target)
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert float(nets.voxel_loss(pred, target)) == pytest.approx(_numpy_loss(pred, target), rel=1e-5)
