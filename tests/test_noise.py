"""Camera and detector noise models (fluojax.noise): moments against closed forms, dtypes, jit.

Every test runs in float32 and float64 (x64 switched on only inside the test) and eagerly and
compiled. Moments come from 4e5 draws: the sample mean has a relative s.e. below 1e-3 here, the
sample variance ~sqrt(2/n) = 0.22 % for Gaussian-like counts (more for the EMCCD's Gamma tail), so
the tolerances (mean 3e-3, variance 2e-2) are several standard errors wide.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax.io import InputError
from fluojax.noise import EMCCD, SCMOS, AffineGaussianNoise, Camera, GaussianReadNoise, IdealCamera

N = 400_000
LAM, GAIN, OFFSET, READ, EM = 30.0, 2.0, 100.0, 3.0, 50.0


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def jit(request):
    return request.param


def _counts(camera: Camera, electrons, jit: bool, key=1):
    counts = jax.jit(camera.counts) if jit else camera.counts
    out = counts(jax.random.key(key), electrons)
    assert out.dtype == electrons.dtype and out.shape == electrons.shape
    return np.asarray(out, np.float64)


@pytest.mark.parametrize(
    ("camera", "mean", "var"),
    [
        (IdealCamera(), LAM, LAM),  # Poisson
        (GaussianReadNoise(READ, GAIN, OFFSET), GAIN * LAM + OFFSET, GAIN**2 * (LAM + READ**2)),
        # Gamma(n, g) amplification: mean g lam, variance 2 g^2 lam (excess noise factor 2)
        (EMCCD(EM, READ, GAIN, OFFSET), GAIN * EM * LAM + OFFSET, GAIN**2 * (2 * EM**2 * LAM + READ**2)),
    ],
    ids=["ideal", "gaussian", "emccd"],
)
def test_camera_counts_have_closed_form_moments(camera, mean, var, dtype, jit):
    x = _counts(camera, jnp.full((N,), LAM, dtype), jit)
    assert x.mean() == pytest.approx(mean, rel=3e-3)
    assert x.var() == pytest.approx(var, rel=2e-2)


def test_scmos_counts_have_the_closed_form_moments_of_each_pixel(dtype, jit):
    gain, offset, read_var = (
        np.array([1.0, 2.0, 0.5, 3.0]),
        np.array([100.0, 0.0, 50.0, 10.0]),
        np.array([0, 4, 25, 1.0]),
    )
    x = _counts(SCMOS(gain, offset, read_var), jnp.full((N // 4, 4), LAM, dtype), jit)
    # per pixel: (Poisson + read) * gain + offset; 1e5 draws per pixel: variance to ~0.5 % (1 s.e.)
    np.testing.assert_allclose(x.mean(axis=0), gain * LAM + offset, rtol=3e-3)
    np.testing.assert_allclose(x.var(axis=0), gain**2 * (LAM + read_var), rtol=3e-2)


def test_every_camera_draws_the_same_shot_noise_for_a_key(dtype, jit):
    # the shared sub-key split: without read noise, gain 1 and offset 0 a CCD reads the Poisson electrons
    e = jnp.linspace(0.0, 20.0, 1000, dtype=dtype)
    np.testing.assert_array_equal(_counts(GaussianReadNoise(), e, jit), _counts(IdealCamera(), e, jit))
    np.testing.assert_array_equal(_counts(SCMOS(1.0, 0.0, 0.0), e, jit), _counts(IdealCamera(), e, jit))


def test_zero_and_negative_expectations_give_zero_electrons(jit):
    # negative expectations (e.g. after background subtraction) are clipped to 0; an EMCCD amplifies nothing
    e = jnp.array([-3.0, 0.0, 0.0])
    assert np.all(_counts(IdealCamera(), e, jit) == 0.0)
    assert np.all(_counts(EMCCD(100.0), e, jit) == 0.0)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: GaussianReadNoise(read_noise_e=-1.0), "read noise -1.0 e-"),
        (lambda: EMCCD(em_gain=0.0), "EM gain 0.0"),
        (lambda: GaussianReadNoise(gain_adu_per_e=0.0), "conversion gain 0.0 ADU/e-"),
        (lambda: SCMOS(np.array([1.0, -1.0]), 0.0, 0.0), "sCMOS gain map: minimum -1.0"),
    ],
)
def test_impossible_camera_settings_are_refused_with_values_and_units(make, words):
    with pytest.raises(InputError, match=words):
        make()


def test_affine_noise_variance_is_a_plus_a_prime_times_intensity_clipped_at_zero(dtype):
    intensity = jnp.array([[0.0, 0.5, 1.0], [0.2, 0.4, 0.8]], dtype)
    noise = AffineGaussianNoise(jnp.array([1e-3, -1.0], dtype), jnp.array([1e-2, 1.0], dtype))
    # leaves (2,) lead the (2, 3) intensities: one (a, a') per row; row 2: -1 + I < 0 -> 0
    want = np.array([[1e-3, 1e-3 + 5e-3, 1e-3 + 1e-2], [0.0, 0.0, 0.0]])
    got = noise.variance(intensity)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-9)  # float32 rounding of 1e-3 etc.


def test_affine_noise_samples_have_the_affine_variance_per_batch_row(dtype, jit):
    a, a_prime, level = np.array([2e-3, 1e-4]), np.array([1e-2, 0.0]), 0.8
    noise = AffineGaussianNoise(jnp.asarray(a, dtype), jnp.asarray(a_prime, dtype))
    images = jnp.full((2, N // 8, 2, 2), level, dtype)  # (batch, frames, y, x)
    sample = jax.jit(noise.sample) if jit else noise.sample
    x = sample(jax.random.key(4), images)
    assert x.dtype == dtype and x.shape == images.shape
    x = np.asarray(x, np.float64).reshape(2, -1)
    np.testing.assert_allclose(x.mean(axis=1), level, rtol=1e-3)  # s.e. of the mean <= 1e-4
    np.testing.assert_allclose(x.var(axis=1), a + a_prime * level, rtol=2e-2)
