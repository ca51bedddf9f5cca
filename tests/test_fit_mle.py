"""Poisson maximum likelihood in the fitting engine (fit.poisson_mle, poisson_mle_batch) and the
Poisson Fisher information with a shift and scale: closed forms, scipy, the Cramer-Rao bound.

The spot model is written here: a pixel-integrated 2D Gaussian (s.d. 1.3 px) of N photons on a
background b per pixel, in an 11 x 11 window (pixel units), theta = (x, y, N, b).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.scipy.special import erf

from fluojax import fit
from fluojax.noise import EMCCD

PIXELS = 11
SIGMA = 1.3
TRUTH = np.array([5.3, 5.6, 600.0, 4.0])
LOWER, UPPER = [0.0, 0.0, 0.0, 0.0], [11.0, 11.0, 1e5, 1e3]


def spot(theta, _args=None):
    edges = jnp.arange(PIXELS + 1.0, dtype=theta.dtype)

    def integrated(centre):
        cdf = 0.5 * erf((edges - centre) / (np.sqrt(2.0) * SIGMA))
        return cdf[1:] - cdf[:-1]

    return theta[2] * integrated(theta[1])[:, None] * integrated(theta[0])[None, :] + theta[3]


def _spot_numpy(theta):
    from scipy.special import erf as erf_np

    edges = np.arange(PIXELS + 1.0)
    ix, iy = (np.diff(0.5 * erf_np((edges - c) / (np.sqrt(2.0) * SIGMA))) for c in theta[:2])
    return theta[2] * iy[:, None] * ix[None, :] + theta[3]


def _draws(n, seed, truth=TRUTH):
    return np.random.default_rng(seed).poisson(_spot_numpy(truth), size=(n, PIXELS, PIXELS)).astype(np.float64)


def test_mle_of_a_constant_mean_with_shift_and_scale_is_the_sample_mean_over_scale(dtype, maybe_jit):
    # mu = c theta + s: sum_k 1 - (d_k + s) / (c theta + s) = 0 gives theta = mean(d) / c for any s
    d = np.random.default_rng(0).poisson(7.0, size=40).astype(np.float64)
    c, s = 0.45, 2.5
    model = lambda theta, _: jnp.full(40, theta[0])  # noqa: E731
    run = maybe_jit(lambda y: fit.poisson_mle(model, y, jnp.asarray([1.0], dtype), shift=s, scale=c, lower=[0.0]))
    res = run(jnp.asarray(d, dtype))
    assert res.params.dtype == dtype and int(res.status) == fit.Status.CONVERGED
    # stopping at tol = 1e-3 standard errors: 1e-3 * sd(theta) = 1e-3 * sqrt((7 c + s) / 40) / c
    sd = np.sqrt((7.0 * c + s) / 40) / c
    assert abs(float(res.params[0]) - d.mean() / c) < 2e-3 * sd


def test_mle_equals_scipy_minimize_of_the_same_likelihood():
    with jax.enable_x64(True):
        data = _draws(4, 1)
        solver = fit.PoissonLevenbergMarquardt(tol=1e-9)
        one = jax.jit(lambda d: fit.poisson_mle(spot, d, jnp.asarray([5.0, 5.0, 400.0, 2.0]), solver=solver))
        for d in data:
            res = one(jnp.asarray(d))
            assert int(res.status) == fit.Status.CONVERGED

            def nll(theta, d=d):
                mu = _spot_numpy(theta)
                return np.sum(mu - d * np.log(mu))

            ref = scipy.optimize.minimize(
                nll, TRUTH, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}
            )
            # both at the same optimum: within 1e-5 of each parameter's CRLB (Nelder-Mead's own
            # resolution at these tolerances is ~1e-7 of the parameters)
            bound = np.asarray(fit.poisson_crlb(spot, jnp.asarray(ref.x)))
            np.testing.assert_array_less(np.abs(np.asarray(res.params) - ref.x) / bound, 1e-5)
            assert nll(np.asarray(res.params)) <= ref.fun + 1e-9


def test_batch_equals_the_fits_one_by_one():
    with jax.enable_x64(True):
        data = _draws(7, 2)
        data[3] = 0.0  # all-zero dataset in the batch
        init = np.array([5.5, 5.5, 300.0, 3.0])
        batch = fit.poisson_mle_batch(spot, data, init, chunk=3, lower=LOWER, upper=UPPER)
        assert isinstance(batch.params, np.ndarray) and batch.params.shape == (7, 4)
        single = jax.jit(lambda d: fit.poisson_mle(spot, d, jnp.asarray(init), lower=LOWER, upper=UPPER))
        for k, d in enumerate(data):
            one = single(jnp.asarray(d))
            assert int(one.status) == batch.status[k] and int(one.num_steps) == batch.num_steps[k]
            # the same float64 arithmetic in another batch shape: equal to rounding
            np.testing.assert_allclose(batch.params[k], np.asarray(one.params), rtol=1e-9, atol=1e-12)


def test_a_spot_beyond_the_bound_ends_at_the_bound_with_its_status():
    d = _draws(1, 3, truth=np.array([10.8, 5.0, 600.0, 4.0]))[0]
    res = jax.jit(
        lambda y: fit.poisson_mle(
            spot, y, jnp.asarray([5.5, 5.5, 300.0, 3.0]), lower=LOWER, upper=[10.5, 11.0, 1e5, 1e3]
        )
    )(jnp.asarray(d, jnp.float32))
    assert int(res.status) == fit.Status.AT_BOUND
    assert float(res.params[0]) == pytest.approx(10.5, abs=1e-4)
    assert 0.0 <= float(res.params[1]) <= 11.0


def test_failed_and_invalid_fits_have_their_status_and_nan_parameters():
    d = jnp.asarray(_draws(1, 4)[0], jnp.float32)
    init = jnp.asarray([5.5, 5.5, 300.0, 3.0])
    short = fit.poisson_mle(spot, d, init, lower=LOWER, upper=UPPER, solver=fit.PoissonLevenbergMarquardt(max_steps=1))
    assert int(short.status) == fit.Status.MAX_STEPS and np.all(np.isnan(short.params))
    # 3 valid pixels for 4 free parameters
    sparse = jnp.full((PIXELS, PIXELS), jnp.nan).at[0, :3].set(2.0)
    invalid = fit.poisson_mle(spot, sparse, init, lower=LOWER, upper=UPPER)
    assert int(invalid.status) == fit.Status.INVALID_DATA and np.all(np.isnan(invalid.params))


def test_all_zero_data_end_at_the_lower_bounds_without_nan(dtype):
    init = jnp.asarray([5.5, 5.5, 300.0, 3.0], dtype)
    res = fit.poisson_mle(spot, jnp.zeros((PIXELS, PIXELS), dtype), init, lower=LOWER, upper=UPPER)
    assert int(res.status) in (fit.Status.CONVERGED, fit.Status.AT_BOUND)
    assert np.all(np.isfinite(res.params))
    np.testing.assert_allclose(np.asarray(res.params[2:]), 0.0, atol=1e-3)  # N and b at 0


def test_sparse_zero_counts_converge_to_the_scipy_optimum():
    # background 0.05 photons per pixel: most pixels are 0
    truth = np.array([5.3, 5.6, 80.0, 0.05])
    with jax.enable_x64(True):
        d = _draws(1, 5, truth)[0]
        assert np.mean(d == 0) > 0.5
        res = fit.poisson_mle(
            spot,
            jnp.asarray(d),
            jnp.asarray([5.0, 5.0, 50.0, 1.0]),
            lower=LOWER,
            upper=UPPER,
            solver=fit.PoissonLevenbergMarquardt(tol=1e-9),
        )
        assert int(res.status) == fit.Status.CONVERGED
        nll = lambda t: np.sum(_spot_numpy(t) - d * np.log(_spot_numpy(t)))  # noqa: E731
        ref = scipy.optimize.minimize(
            nll, truth, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000}
        )
        np.testing.assert_allclose(np.asarray(res.params), ref.x, rtol=1e-5)


def test_mle_spread_over_500_spots_is_the_crlb():
    # 500 datasets: a sample s.d. has relative s.e. sqrt(1 / (2 n)) = 3.2 %, so 10 % is ~3 s.e.
    # (the MLE's excess over the bound at N = 600, b = 4 is below 1 % asymptotically)
    data = _draws(500, 6)
    res = fit.poisson_mle_batch(spot, data, np.array([5.5, 5.5, 300.0, 3.0]), lower=LOWER, upper=UPPER)
    assert np.all(res.status == fit.Status.CONVERGED)
    bound = np.asarray(fit.poisson_crlb(spot, jnp.asarray(TRUTH)))
    np.testing.assert_allclose(res.params.std(axis=0, ddof=1) / bound, 1.0, atol=0.1)


def test_emccd_poisson_equivalent_data_have_twice_the_poisson_variance():
    # Mortensen et al. 2010: EMCCD data fitted as Poisson with half the photons; the halved model's
    # CRLB (scale QE/2, shift) is sqrt(2) x the ideal camera's at QE, and the MLE reaches it
    # (500 spots: 10 % is ~3 s.e. of a sample s.d., as above)
    camera = EMCCD(em_gain=200.0, read_noise_e=20.0, gain_adu_per_e=0.1, offset_adu=100.0, quantum_efficiency=0.9)
    photons = jnp.broadcast_to(spot(jnp.asarray(TRUTH, jnp.float32)), (500, PIXELS, PIXELS))
    adu = camera.counts(jax.random.key(7), photons)
    eq = camera.poisson_equivalent(adu)
    res = fit.poisson_mle_batch(
        spot, eq.counts, np.array([5.5, 5.5, 300.0, 3.0]), shift=eq.shift, scale=eq.scale, lower=LOWER, upper=UPPER
    )
    assert np.mean(res.status == fit.Status.CONVERGED) > 0.99
    ok = res.status == fit.Status.CONVERGED
    halved = np.asarray(fit.poisson_crlb(spot, jnp.asarray(TRUTH), shift=eq.shift[0], scale=eq.scale[0]))
    ideal = np.asarray(fit.poisson_crlb(spot, jnp.asarray(TRUTH), scale=0.9))
    np.testing.assert_allclose(
        halved[:2] / ideal[:2], np.sqrt(2.0), rtol=0.01
    )  # read variance shift (0.0025) adds < 1 %
    np.testing.assert_allclose(res.params[ok].std(axis=0, ddof=1)[:2] / halved[:2], 1.0, atol=0.1)
    np.testing.assert_allclose(res.params[ok].mean(axis=0)[2], TRUTH[2], rtol=0.02)  # photons unbiased


def test_poisson_fisher_information_with_shift_and_scale_is_the_closed_form(dtype, maybe_jit):
    # mu = c theta + s in n bins: I = n c^2 / (c theta + s)
    n, c, s, theta = 30, 0.45, 2.5, 9.0
    model = lambda t, _: jnp.full(n, t[0])  # noqa: E731
    info = maybe_jit(lambda t: fit.poisson_fisher_information(model, t, shift=s, scale=c))(jnp.asarray([theta], dtype))
    assert info.dtype == dtype
    # a float32 sum of 30 terms: ~1e-6 relative rounding
    np.testing.assert_allclose(
        np.asarray(info), [[n * c**2 / (c * theta + s)]], rtol={jnp.float32: 1e-5, jnp.float64: 1e-12}[dtype.type]
    )
    bound = fit.poisson_crlb(model, jnp.asarray([theta], dtype), shift=s, scale=c)
    np.testing.assert_allclose(
        np.asarray(bound), [np.sqrt((c * theta + s) / n) / c], rtol={jnp.float32: 1e-5, jnp.float64: 1e-12}[dtype.type]
    )
