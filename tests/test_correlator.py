"""Multi-tau correlator: lag grid vs multipletau, values vs brute force and a process with a known ACF."""

import subprocess
import sys

import jax.numpy as jnp
import multipletau
import numpy as np
import pytest

from fluojax.fcs import correlator as c
from fluojax.fcs import correlator_cpu
from fluojax.fcs.pipeline import bin_pixels, bleach_correct, bleach_design

PATHS = ["xla", pytest.param("cpu", marks=pytest.mark.skipif(not correlator_cpu.available(), reason="numba missing"))]


def _correlate(frames, path, trend=None):
    """ACFResult of (T, pixels) frames via the XLA reduction or the numba CPU kernel."""
    if path == "xla":
        return c.correlate(jnp.asarray(frames))
    return c.acf_from_lag_sums(correlator_cpu.lag_sums_cpu(np.asarray(frames), trend=trend), frames.shape[0])


@pytest.mark.parametrize("p,frames", [(16, 2500), (32, 5000)])
def test_correlator_lags_match_multipletau(p, frames):
    # multipletau(m=P) on these lengths has exactly Q = 8 levels (docs/fcs.md, 'Correlator')
    grid = c.lag_grid(p, 8)
    ref = multipletau.autocorrelate(np.random.default_rng(0).random(frames) + 1, m=p, deltat=1, normalize=True)
    np.testing.assert_array_equal(grid.lags, ref[1:, 0].astype(int))
    assert len(grid.lags) == p + 7 * p // 2


def test_default_grid_is_the_plugins_72_lags():
    grid = c.lag_grid()
    assert len(grid.lags) == 72 and grid.lags[-1] == 2048
    assert list(grid.lags[16:24]) == list(range(18, 33, 2)) and set(grid.bin_widths[-8:]) == {128}


def _monitor_acf(trace, grid):
    """The plugin's symmetric normalisation written out lag by lag in NumPy (independent reference)."""
    out, binned, width = [], trace.astype(np.float64), 1
    for lag, bw in zip(grid.lags, grid.bin_widths):
        while width != bw:
            half = len(binned) // 2
            binned = binned[: 2 * half : 2] + binned[1 : 2 * half : 2]
            width *= 2
        d = lag // width
        n = len(binned) - d
        m1, m2 = binned[:n].mean(), binned[d : d + n].mean()
        out.append(np.sum((binned[:n] - m1) * (binned[d : d + n] - m2)) / (n * m1 * m2))
    return np.array(out)


@pytest.mark.parametrize("path", PATHS)
def test_correlator_values_match_monitor_formula(path):
    rng = np.random.default_rng(1)
    frames = rng.poisson(rng.gamma(5.0, 20.0, size=(6000, 4))).astype(np.float32)
    got = np.asarray(_correlate(frames, path).acf)
    grid = c.lag_grid()
    for k in range(frames.shape[1]):
        ref = _monitor_acf(frames[:, k], grid)
        # float32 products of centred data: errors ~1e-6 of the lag-1 value
        np.testing.assert_allclose(got[:, k], ref, atol=2e-6 * abs(ref[0]) + 1e-9)


def _ar1(rng, frames, pixels, phi, mean):
    e = rng.normal(size=(frames + 200, pixels))
    x = np.zeros_like(e)
    for t in range(1, len(e)):  # test-only reference process
        x[t] = phi * x[t - 1] + e[t]
    return x[200:] + mean


def _ar1_binned_acf(grid, phi, mean):
    """Exact ACF of pair-summed AR(1) data: sum_{i,j<w} gamma(d w + j - i) / (w mean)^2."""
    gamma = lambda k: phi ** np.abs(k) / (1 - phi**2)  # noqa: E731  (unit innovations)
    out = []
    for lag, w in zip(grid.lags, grid.bin_widths):
        i, j = np.meshgrid(np.arange(w), np.arange(w))
        out.append(gamma(lag + j - i).sum() / (w * mean) ** 2)
    return np.array(out)


@pytest.mark.parametrize("path", PATHS)
def test_correlator_recovers_known_acf_of_ar1_process(path):
    rng = np.random.default_rng(2)
    phi, mean = 0.95, 40.0
    x = _ar1(rng, 20000, 64, phi, mean)
    res = _correlate(x.astype(np.float32), path)
    acf, sem = np.asarray(res.acf), np.asarray(res.sem)
    theory = _ar1_binned_acf(c.lag_grid(), phi, mean)
    avg = acf.mean(axis=1)
    spread = acf.std(axis=1, ddof=1) / np.sqrt(acf.shape[1])
    # the average over 64 independent pixels agrees with theory within 4 standard errors
    # (plus the O(1/T) bias of the monitor estimator, ~ tau_c/T relative)
    bias = 2 * theory[0] * (1 + phi) / (1 - phi) / 20000
    assert np.all(np.abs(avg - theory) < 4 * spread + bias)
    # blocking SEM is calibrated: it matches the pixel-to-pixel scatter within 35 % at short lags
    ratio = np.median(sem[:24], axis=1) / acf[:24].std(axis=1, ddof=1)
    assert np.all((ratio > 0.65) & (ratio < 1.35))


@pytest.mark.parametrize("path", PATHS)
def test_correlator_rejects_too_few_frames(path):
    with pytest.raises(ValueError, match="too few"):
        _correlate(np.ones((2100, 2), np.float32), path)


@pytest.mark.skipif(not correlator_cpu.available(), reason="numba missing")
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_cpu_kernel_matches_xla_path_with_bleach_correction(dtype):
    # a bleaching camera stack of odd length (T not a power of two, last blocks partial)
    rng = np.random.default_rng(5)
    frames_n, pixels = 7001, 40
    decay = np.exp(-np.arange(frames_n) / 9000.0)[:, None]
    fluct = _ar1(rng, frames_n, pixels, 0.9, 0.0)
    stack = rng.poisson(np.clip(150.0 * decay + 8.0 * fluct * np.sqrt(decay), 0, None)).astype(dtype)
    ref = c.correlate(bleach_correct(jnp.asarray(stack, jnp.float32), 4))
    got = _correlate(stack, "cpu", trend=bleach_design(frames_n, 4))
    assert np.mean(np.asarray(got.block_index) == np.asarray(ref.block_index)) >= 0.95
    same = np.asarray(got.block_index) == np.asarray(ref.block_index)
    # both sum float32 products of the same centred, corrected traces in different orders:
    # differences are float32 rounding, far below the statistical error of each point
    np.testing.assert_array_less(np.abs(np.asarray(got.acf) - np.asarray(ref.acf)), 1e-3 * np.asarray(ref.sem))
    np.testing.assert_allclose(np.asarray(got.sem)[:, same], np.asarray(ref.sem)[:, same], rtol=1e-3)
    np.testing.assert_allclose(np.asarray(got.mean), np.asarray(ref.mean), rtol=1e-5)


@pytest.mark.skipif(not correlator_cpu.available(), reason="numba missing")
def test_cpu_kernel_matches_monitor_formula_for_p32():
    # P = 32: 32 lags in group 0 and 16 in the others, so the kernel's eight-lag block sums run
    # four and two passes per block; odd T leaves partial last blocks for every group
    rng = np.random.default_rng(7)
    frames = rng.poisson(rng.gamma(5.0, 20.0, size=(9001, 3))).astype(np.float32)
    grid = c.lag_grid(32, 8)
    got = c.acf_from_lag_sums(correlator_cpu.lag_sums_cpu(frames, p=32, q=8), frames.shape[0], 32, 8)
    ref_sem = np.asarray(c.correlate(jnp.asarray(frames), 32, 8).sem)
    for k in range(frames.shape[1]):
        ref = _monitor_acf(frames[:, k], grid)
        np.testing.assert_allclose(np.asarray(got.acf)[:, k], ref, atol=2e-6 * abs(ref[0]) + 1e-9)
    # the SEMs (blocking) agree with the XLA reduction's to float32 rounding
    np.testing.assert_allclose(np.asarray(got.sem), ref_sem, rtol=1e-3)


@pytest.mark.parametrize("order", range(1, 9))
def test_cpu_kernel_power_series_trend_equals_the_legendre_trend(order):
    # the kernel evaluates the bleach trend as a power series in s = 2t/(T-1) - 1 (Horner) instead
    # of reading bleach_design's Legendre basis; for every order the CLI accepts (1-8) the two
    # trends must agree to float32 rounding of O(1) coefficients (1e-5 of the trend level)
    frames_n = 7001
    _stride, fit_matrix, vander = bleach_design(frames_n, order)
    means = 200.0 + 30.0 * np.random.default_rng(order).standard_normal(fit_matrix.shape[1])
    legendre = vander.astype(np.float64) @ (fit_matrix.astype(np.float64) @ means)
    s = 2.0 * np.arange(frames_n) / (frames_n - 1) - 1.0
    coef = correlator_cpu._power_series_fit(fit_matrix.astype(np.float64), vander.astype(np.float64)) @ means
    power = np.polynomial.polynomial.polyval(s, coef)
    np.testing.assert_allclose(power, legendre, rtol=1e-5)


def test_bin_pixels_matches_explicit_sums():
    x = np.random.default_rng(3).random((3, 7, 8)).astype(np.float32)
    tiled = np.asarray(bin_pixels(x, 2, overlap=False))
    assert tiled.shape == (3, 3, 4)
    assert tiled[1, 2, 3] == pytest.approx(x[1, 4:6, 6:8].sum(), rel=1e-6)
    sliding = np.asarray(bin_pixels(x, 3, overlap=True))
    assert sliding.shape == (3, 5, 6)
    assert sliding[2, 4, 5] == pytest.approx(x[2, 4:7, 5:8].sum(), rel=1e-5)


def test_bleach_correction_flattens_decay_and_preserves_fluctuations():
    rng = np.random.default_rng(4)
    t = np.arange(30000)
    decay = np.exp(-t / 30000.0)[:, None]
    fluct = _ar1(rng, 30000, 16, 0.9, 0.0)
    # bleaching removes particles: the mean falls as f(t), number fluctuations as sqrt(f(t))
    bleached = 200.0 * decay + 10.0 * fluct * np.sqrt(decay)
    corrected = np.asarray(bleach_correct(jnp.asarray(bleached, jnp.float32), 4))
    early, late = corrected[:3000].mean(), corrected[-3000:].mean()
    assert late == pytest.approx(early, rel=5e-3)  # raw data drop by 60 % over the same span
    # the ACF of corrected data matches that of the unbleached trace at short lags
    ref = np.asarray(c.correlate(jnp.asarray(200.0 + 10.0 * fluct, jnp.float32)).acf)[:8].mean(axis=1)
    got = np.asarray(c.correlate(jnp.asarray(corrected)).acf)[:8].mean(axis=1)
    np.testing.assert_allclose(got, ref, rtol=0.1)


@pytest.mark.skipif(not correlator_cpu.available(), reason="numba missing")
def test_load_kernel_loads_exactly_the_kernel_for_the_frames_dtype():
    # correlate_stack loads the kernel for the stack's dtype while the first band is read; in a
    # new process, load_kernel(uint16) leaves the uint16 kernel loaded and the float32 one not
    code = (
        "import numpy as np; from fluojax.fcs import correlator_cpu as k; k.load_kernel(np.uint16); "
        "print(sorted(str(s[0]) for s in k._lag_sums_kernel.signatures))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['array(uint16, 2d, C)']"
