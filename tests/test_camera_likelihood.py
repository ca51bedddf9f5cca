"""Camera likelihoods and Poisson-equivalent data (fluojax.noise) against scipy references.

References: scipy.stats.poisson.logpmf (ideal camera), the Poisson-Gamma mixture summed over n
with scipy.stats.gamma (EMCCD), the Poisson-Gaussian convolution summed over n (sCMOS/CCD);
normalisation by numerical integration; draws of ``counts`` mapped by ``poisson_equivalent``
checked for their mean and variance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fluojax.noise import EMCCD, SCMOS, GaussianReadNoise, IdealCamera


def test_ideal_camera_log_likelihood_is_the_poisson_log_pmf(dtype):
    camera = IdealCamera(quantum_efficiency=0.9, spurious_charge_e=0.002)
    k = np.array([0.0, 1.0, 3.0, 12.0, 40.0])
    photons = np.array([0.5, 2.0, 3.0, 10.0, 35.0])
    got = jax.jit(camera.log_likelihood)(jnp.asarray(k, dtype), jnp.asarray(photons, dtype))
    assert got.dtype == dtype
    want = stats.poisson.logpmf(k, 0.9 * photons + 0.002)
    # lgamma and log in float32: ~1e-6 relative of terms up to ~150
    np.testing.assert_allclose(np.asarray(got), want, rtol={jnp.float32: 2e-5, jnp.float64: 1e-11}[dtype.type])


def _poisson_gamma(x, lam, g):
    """Density of Gamma(n, g) electrons, n ~ Poisson(lam), x > 0: the mixture summed over n."""
    n = np.arange(1, 400)[:, None]
    return np.sum(stats.poisson.pmf(n, lam) * stats.gamma.pdf(x[None, :], n, scale=g), axis=0)


def test_emccd_log_likelihood_is_the_poisson_gamma_mixture(dtype):
    camera = EMCCD(em_gain=300.0, gain_adu_per_e=0.5, offset_adu=100.0, quantum_efficiency=0.9, spurious_charge_e=0.002)
    x = np.array([1.0, 30.0, 300.0, 3000.0, 20000.0])  # electrons out of the register
    for photons in (0.3, 5.0, 50.0):
        lam = 0.9 * photons + 0.002
        got = camera.log_likelihood(jnp.asarray(100.0 + 0.5 * x, dtype), jnp.asarray(photons, dtype))
        want = np.log(_poisson_gamma(x, lam, 300.0) / 0.5)  # per ADU: / (ADU per electron)
        np.testing.assert_allclose(np.asarray(got), want, rtol={jnp.float32: 1e-4, jnp.float64: 1e-9}[dtype.type])
        # zero electrons out: the point mass e^{-lambda} (without read noise), per ADU
        zero = camera.log_likelihood(jnp.asarray(100.0, dtype), jnp.asarray(photons, dtype))
        assert float(zero) == pytest.approx(-lam - np.log(0.5), rel=1e-5)


@pytest.mark.parametrize("photons", [0.5, 20.0])
def test_emccd_density_with_read_noise_integrates_to_one(photons):
    camera = EMCCD.challenge_2016()
    with jax.enable_x64(True):
        adu = np.linspace(100.0 - 10 * 74.4 / 45, 100.0 + 8 * 300 * (photons + 5 * np.sqrt(photons) + 5) / 45, 400_001)
        p = np.exp(np.asarray(camera.log_likelihood(jnp.asarray(adu), jnp.asarray(photons))))
    # trapezoid on 4e5 intervals of a density with a kink at the offset: error < 1e-4
    assert np.trapezoid(p, adu) == pytest.approx(1.0, abs=1e-4)


def _poisson_gauss(e, lam, v):
    """Density of Poisson(lam) + N(0, v) electrons at e, summed over n."""
    n = np.arange(0, 400)[:, None]
    return np.sum(stats.poisson.pmf(n, lam) * stats.norm.pdf(e[None, :], n, np.sqrt(v)), axis=0)


def test_scmos_likelihood_approximates_the_poisson_gaussian_convolution():
    # Huang et al. 2013's approximation at moderate counts (lambda 50, read variance 4 e-^2): within
    # 2 s.d. of the mean the log-density differs from the exact convolution by < 0.02 (the continued
    # Poisson is skewed like the truth, its variance matches)
    camera = SCMOS(gain_adu_per_e=2.0, offset_adu=100.0, read_variance_e2=4.0)
    lam, v = 50.0, 4.0
    e = np.linspace(lam - 2 * np.sqrt(lam + v), lam + 2 * np.sqrt(lam + v), 41)
    with jax.enable_x64(True):
        got = np.asarray(camera.log_likelihood(jnp.asarray(100.0 + 2.0 * e), jnp.asarray(lam)))
    want = np.log(_poisson_gauss(e, lam, v) / 2.0)
    np.testing.assert_allclose(got, want, atol=0.02)
    # and the density integrates to ~1 (the continued Poisson's normalisation is 1 to ~1e-3 here)
    with jax.enable_x64(True):
        adu = np.linspace(100.0 + 2 * (lam - 10 * np.sqrt(lam + v)), 100.0 + 2 * (lam + 10 * np.sqrt(lam + v)), 20001)
        p = np.exp(np.asarray(camera.log_likelihood(jnp.asarray(adu), jnp.asarray(lam))))
    assert np.trapezoid(p, adu) == pytest.approx(1.0, abs=2e-3)


N = 200_000


@pytest.mark.parametrize(
    "camera",
    [
        IdealCamera(quantum_efficiency=0.8, spurious_charge_e=0.5),
        GaussianReadNoise(3.0, 2.0, 100.0, quantum_efficiency=0.9, spurious_charge_e=0.2, quantize=True),
        SCMOS(np.array([1.5, 0.5]), np.array([100.0, 20.0]), np.array([2.0, 9.0]), quantum_efficiency=0.7),
        EMCCD.challenge_2016(quantize=True),
        EMCCD(100.0, 10.0, 1.0, 50.0, quantum_efficiency=0.95),
    ],
    ids=["ideal", "ccd", "scmos", "challenge", "emccd"],
)
def test_poisson_equivalent_counts_have_the_poisson_mean_and_variance(camera):
    # counts + shift ~ Poisson(scale photons + shift): mean scale photons, variance scale photons
    # + shift. 1e5 draws per pixel: the variance's relative s.e. is ~sqrt(2/n) = 0.45 % for
    # Poisson-like data and ~1 % for the EMCCD's Gamma tail, so 4 % is several s.e.
    photons = jnp.full((N // 2, 2), 12.0)
    eq = camera.poisson_equivalent(camera.counts(jax.random.key(0), photons))
    counts = np.asarray(eq.counts, np.float64)
    scale, shift = np.asarray(eq.scale[0], np.float64), np.asarray(eq.shift[0], np.float64)
    np.testing.assert_allclose(counts.mean(axis=0), scale * 12.0, rtol=1e-2)
    np.testing.assert_allclose(counts.var(axis=0), scale * 12.0 + shift, rtol=4e-2)


@pytest.mark.parametrize(
    "camera",
    [IdealCamera(0.9, 0.01), GaussianReadNoise(3.0, 2.0, 100.0), SCMOS(2.0, 100.0, 4.0), EMCCD.challenge_2016()],
    ids=["ideal", "ccd", "scmos", "emccd"],
)
def test_log_likelihood_gradient_in_photons_matches_finite_differences(camera):
    with jax.enable_x64(True):
        adu = jnp.asarray([100.0, 103.0, 160.0, 400.0])
        photons = jnp.asarray([0.7, 3.0, 20.0, 60.0])
        grad = jax.grad(lambda p: camera.log_likelihood(adu, p).sum())(photons)
        h = 1e-6
        fd = (camera.log_likelihood(adu, photons + h) - camera.log_likelihood(adu, photons - h)) / (2 * h)
    assert np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(np.asarray(grad), np.asarray(fd), rtol=1e-6, atol=1e-8)  # central difference, h^2


def test_challenge_camera_quantizes_to_whole_adu_above_the_baseline():
    photons = jnp.linspace(0.0, 200.0, 1000)
    raw = EMCCD.challenge_2016().counts(jax.random.key(3), photons)
    quantized = EMCCD.challenge_2016(quantize=True).counts(jax.random.key(3), photons)
    # the same draws: floor(electrons / 45) + 100
    np.testing.assert_array_equal(np.asarray(quantized), np.floor(np.asarray(raw) - 100.0) + 100.0)
    camera = EMCCD.challenge_2016()
    assert (camera.quantum_efficiency, camera.em_gain, camera.read_noise_e, camera.spurious_charge_e) == (
        0.9,
        300.0,
        74.4,
        0.002,
    )
    assert (1 / camera.gain_adu_per_e, camera.offset_adu) == pytest.approx((45.0, 100.0))
