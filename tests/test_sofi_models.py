"""sofi.models: the Bernoulli cumulants f_n (recursion, roots, moments) and the cumulant forward model
(Dertinger et al. 2010's distance factor, the sub-lattice layout) against NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from fluojax.io import InputError
from fluojax.sofi import cumulants, models


def test_f_n_follows_the_recursion_by_autodiff():
    """f_n = rho (1 - rho) d f_{n-1} / d rho (Komen 2024, eq. 3.6), the derivative by jax.grad."""
    with jax.enable_x64(True):
        rho = jnp.linspace(0.01, 0.99, 23)
        assert np.allclose(models.bernoulli_cumulant(1, rho), rho)
        for n in range(2, 7):
            grad = jax.vmap(jax.grad(lambda r, n=n: models.bernoulli_cumulant(n - 1, r)))(rho)
            # float64 polynomials of degree <= 6 on [0, 1]: agreement to rounding
            np.testing.assert_allclose(models.bernoulli_cumulant(n, rho), rho * (1 - rho) * grad, atol=1e-13)


def test_f_n_inner_roots():
    """f_3 vanishes at 1/2 and f_4 at (3 +- sqrt 3)/6 (0.2113, 0.7887), as the research notes list."""
    with jax.enable_x64(True):
        assert abs(float(models.bernoulli_cumulant(3, 0.5))) < 1e-15
        for root in ((3 - math.sqrt(3)) / 6, (3 + math.sqrt(3)) / 6):
            assert abs(float(models.bernoulli_cumulant(4, root))) < 1e-15
        # and not elsewhere: f_4 at 0.5 is -1/8 (rho(1-rho) = 1/4 times 1 - 3 + 1.5 = -1/2)
        assert float(models.bernoulli_cumulant(4, 0.5)) == pytest.approx(-0.125)


def test_f_n_equals_cumulants_from_bernoulli_moments():
    """Every raw moment of a Bernoulli variable is rho; kappa_n from the moment-cumulant recursion
    kappa_n = m_n - sum_{k<n} C(n-1, k-1) kappa_k m_{n-k} in NumPy."""
    rho = np.linspace(0.0, 1.0, 11)
    moments = [None] + [rho] * 6
    kappa = [None]
    for n in range(1, 7):
        kappa.append(moments[n] - sum(math.comb(n - 1, k - 1) * kappa[k] * moments[n - k] for k in range(1, n)))
    with jax.enable_x64(True):
        for n in range(1, 7):
            np.testing.assert_allclose(models.bernoulli_cumulant(n, rho), kappa[n], atol=1e-14)


def test_f_n_order_out_of_range():
    with pytest.raises(InputError, match="order 7"):
        models.bernoulli_cumulant(7, 0.3)


def test_on_ratio():
    assert float(models.on_ratio(2.0, 6.0)) == pytest.approx(0.25)


def _u_numpy(centres, position, sigma, integrated):
    d = centres - position
    if integrated:
        return 0.5 * (erf((d + 0.5) / (math.sqrt(2) * sigma)) - erf((d - 0.5) / (math.sqrt(2) * sigma)))
    return np.exp(-0.5 * (d / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)


@pytest.mark.parametrize("integrated", [False, True])
def test_expected_sublattices_layout_against_a_direct_sum(integrated):
    """Entry [i, j, a, b] = sum_k eps^n f_n prod_j U(p_j - r_k) over the pixels of combination i n + j at
    reference pixel (a + 1, b + 1), summed here in plain Python loops."""
    rng = np.random.default_rng(1)
    shape, order, fwhm = (9, 10), 3, 2.3
    pos = rng.uniform(1, 8, size=(4, 2))
    eps = rng.uniform(50, 150, 4)
    rho = rng.uniform(0.1, 0.4, 4)
    sigma = fwhm / math.sqrt(8 * math.log(2))
    with jax.enable_x64(True):
        got = np.asarray(models.expected_sublattices(pos, eps, rho, fwhm, shape, order, pixel_integrated=integrated))
    offsets = cumulants.combinations(order).offsets
    assert got.shape == (order, order, 6, 7)
    f3 = rho * (1 - rho) * (1 - 2 * rho)
    for i, j, a, b in [(0, 0, 0, 0), (1, 2, 3, 1), (2, 1, 5, 6), (0, 2, 2, 4)]:
        want = 0.0
        for k in range(4):
            prod = 1.0
            for dy, dx in offsets[i * order + j]:
                y, x = a + 1 + dy, b + 1 + dx
                prod *= _u_numpy(y + 0.5, pos[k, 0], sigma, integrated) * _u_numpy(
                    x + 0.5, pos[k, 1], sigma, integrated
                )
            want += eps[k] ** order * f3[k] * prod
        # float64 sums of a few terms: rounding only
        assert got[i, j, a, b] == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_cross_cumulant_is_distance_factor_times_psf_power_at_the_centroid(order):
    """Dertinger et al. 2010: for a point-sampled Gaussian PSF the cross-cumulant of a combination is
    exp(-4 ln2 S / (n w^2)) times eps^n f_n U^n at its centroid (U = the Gaussian of area 1)."""
    rng = np.random.default_rng(order)
    fwhm, shape = 2.7, (8, 8)
    pos = rng.uniform(2, 6, size=(3, 2))
    eps = np.array([80.0, 120.0, 60.0])
    rho = np.array([0.1, 0.3, 0.45])
    combos = cumulants.combinations(order)
    sigma = fwhm / math.sqrt(8 * math.log(2))
    with jax.enable_x64(True):
        sub = np.asarray(models.expected_sublattices(pos, eps, rho, fwhm, shape, order))
        fn = np.asarray(models.bernoulli_cumulant(order, rho))
        factor = np.asarray(models.distance_factor(combos.sum_sq, order, fwhm))
    a, b = 2, 1  # reference pixel (3, 2)
    for m, (cy, cx) in enumerate(combos.positions):
        centroid = np.array([3 + cy + 0.5, 2 + cx + 0.5])
        r2 = ((centroid - pos) ** 2).sum(axis=1)
        u_n = (np.exp(-r2 / (2 * sigma**2)) / (2 * math.pi * sigma**2)) ** order
        want = factor[m] * np.sum(eps**order * fn * u_n)
        assert sub[m // order, m % order, a, b] == pytest.approx(want, rel=1e-10)


def test_expected_auto_cumulant_is_the_repeated_pixel_cross_cumulant():
    """kappa_n(r) = sum_k eps^n f_n U(r - r_k)^n: the joint cumulant of n copies of one pixel."""
    pos = np.array([[3.2, 4.7], [5.5, 2.1]])
    eps, rho = np.array([100.0, 70.0]), np.array([0.2, 0.6])
    with jax.enable_x64(True):
        auto = np.asarray(models.expected_auto_cumulant(4, pos, eps, rho, 2.0, (7, 8)))
        pixels = np.stack(np.meshgrid(np.arange(7), np.arange(8), indexing="ij"), -1)[:, :, None, :]
        cross = np.asarray(models.expected_cross_cumulant(np.repeat(pixels, 4, axis=2), pos, eps, rho, 2.0))
    np.testing.assert_allclose(auto, cross, rtol=1e-12)
