"""The ImFCSNet map by shared pixel spectra and FFT convolutions equals the network on every window.

Tolerances: both float32 paths are compared with the network evaluated in float64 (weights and
input cast, ``jax.enable_x64``), the exact map up to float64 rounding. The fast path must be as
close to it as the direct float32 network is, within a factor 4 (the two round differently: sums
of up to 9 x 50 products directly, against O(log N) rounding steps per FFT value over sums with
magnitude ||x|| ||w||); a wrong tap, flip, stride or offset would be off by O(0.1) in ln D.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fluojax.fcs import learned, nets

FRAMES = 500  # chunk length (the small network reads >= 426 frames)


@functools.cache
def _net():
    """A small ImFCSNet in eval mode with non-trivial biases and BatchNorm statistics (a fresh one
    has zero biases and identity statistics, which would hide a misplaced bias or normalisation)."""
    net = nets.build_network(nets.ImFCSNetConfig.small(), seed=3)
    graph, state = nnx.split(net)
    leaves, treedef = jax.tree.flatten_with_path(state)
    rng = np.random.default_rng(0)
    out = []
    for path, a in leaves:
        name = jax.tree_util.keystr(path)
        if name.endswith("var']") or ".var" in name:
            a = a * rng.uniform(0.5, 1.5, a.shape).astype(np.float32)
        elif "kernel" not in name:
            a = a + 0.1 * rng.standard_normal(a.shape).astype(np.float32)
        out.append(jnp.asarray(a))
    return nnx.view(nnx.merge(graph, jax.tree.unflatten(treedef, out)), use_running_average=True)


def _float64_network(net, windows):
    """The network in float64: weights and (B, T, 3, 3) input cast, the exact map to float64 rounding."""
    graph, state = nnx.split(net)
    with jax.enable_x64(True):
        state = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, state)
        return np.asarray(jax.jit(lambda s, x: nnx.merge(graph, s)(x))(state, jnp.asarray(windows, jnp.float64)))


def _stack():
    """Two chunks of a 7 x 8 image: Poisson counts on a large offset (the z-score cancels it) and a
    constant 4 x 4 corner (windows at float32 rounding of constant, which standardise to zeros)."""
    stack = np.asarray(jax.random.poisson(jax.random.key(1), 20.0, (2 * FRAMES, 7, 8)), np.float32) + 500.0
    stack[:, :4, :4] = 37.0
    return stack


def test_fft_correlate_equals_the_strided_valid_convolution():
    key = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(key[0], (3, 131, 4))  # FFT lengths 135 (stride 1) and 45 (stride 3): odd ones too
    kernel = jax.random.normal(key[1], (13, 4, 5))
    for stride in (1, 3):
        direct = jax.lax.conv_general_dilated(x, kernel, (stride,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"))
        fft = jax.jit(nets.fft_correlate, static_argnums=2)(x, kernel, stride)
        assert fft.shape == direct.shape
        # sums of 52 products of unit normals (|y| ~ 7 to 30): float32 rounding ~ 1e-6 relative to max |y|
        np.testing.assert_allclose(fft, direct, atol=1e-5 * float(jnp.max(jnp.abs(direct))))


@pytest.mark.parametrize("overlap", [True, False])
def test_map_by_pixel_spectra_equals_the_network_on_every_window(overlap):
    net, stack = _net(), _stack()
    fast = learned.predict_imfcsnet_map(net, stack, FRAMES, overlap, batch=16, progress=False)
    direct = learned.predict_imfcsnet_map(net, stack, FRAMES, overlap, batch=16, progress=False, method="direct")
    # border handling and shapes unchanged
    np.testing.assert_array_equal(fast["edge"], direct["edge"])
    assert fast["ln_d_chunks"].shape == direct["ln_d_chunks"].shape == ((2, 7, 8) if overlap else (2, 2, 2))
    rows, cols = learned.imfcsnet_windows(7, 8, overlap)
    place = (rows + 1, cols + 1) if overlap else (rows // 3, cols // 3)
    for c in range(2):
        frames = stack[c * FRAMES : (c + 1) * FRAMES]
        windows = np.lib.stride_tricks.sliding_window_view(frames, (3, 3), axis=(1, 2))[:, rows, cols]
        exact = _float64_network(net, np.moveaxis(windows, 1, 0))
        err_direct = np.max(np.abs(direct["ln_d_chunks"][c][place] - exact))
        err_fast = np.max(np.abs(fast["ln_d_chunks"][c][place] - exact))
        assert err_fast <= 4 * err_direct + 1e-6, (err_fast, err_direct)
    np.testing.assert_array_equal(np.isnan(fast["d_um2_s"]), np.isnan(direct["d_um2_s"]))


def test_map_in_bands_of_rows_equals_the_map_in_one_band(monkeypatch):
    net, stack = _net(), _stack()
    whole = learned.predict_imfcsnet_map(net, stack[:FRAMES], FRAMES, True, batch=16, progress=False)
    # 2 window rows per band (4 image rows): windows from rows 0, 2 and 4 (the last band read from image row 3)
    monkeypatch.setattr(learned, "_BAND_BYTES", 16 * FRAMES * 8 * 4)
    banded = learned.predict_imfcsnet_map(net, stack[:FRAMES], FRAMES, True, batch=16, progress=False)
    # the same arithmetic per window, only the batches differ: equal to a few float32 ulps of ln D
    np.testing.assert_allclose(banded["ln_d_chunks"], whole["ln_d_chunks"], rtol=1e-6)
    np.testing.assert_array_equal(banded["edge"], whole["edge"])
