"""fluojax.sofi.estimate: flattening, Richardson-Lucy, linearization (root, adaptive), bSOFI.

References are independent of the code under test: MATLAB's published medfilt2 example and
scipy's rank filters, a NumPy/scipy Richardson-Lucy, closed forms of the Bernoulli cumulant
model kappa_n = N eps^n f_n(rho) U^n evaluated on the grids here.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal

from fluojax.io import InputError
from fluojax.sofi import cumulants, estimate, models


def _np_kernel(sigma):
    r = math.ceil(3 * sigma)
    x = np.arange(-r, r + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _np_blur(img, sigma):
    k = _np_kernel(sigma)
    r = (k.size - 1) // 2
    return scipy.signal.fftconvolve(np.pad(img, r, mode="symmetric"), np.outer(k, k), mode="valid")


def _np_richardson_lucy(g, sigma, iterations):
    o = g.copy()
    for _ in range(iterations):
        ratio = g / _np_blur(o, sigma)
        o = o * _np_blur(ratio, sigma)
    return o


def _cumulant_image(order, size, emitters_yx, eps, rho, count, fwhm_px):
    """Expected order-n cumulant image sum_k N eps_k^n f_n(rho) U^n(r - r_k) on the order-n grid
    (pixel k at k/n camera pixels), U a unit-peak Gaussian of FWHM fwhm_px camera pixels; eps is
    one brightness or one per emitter."""
    coords = np.arange(order * (size - 4) + 1) / order
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    f = float(models.bernoulli_cumulant(order, rho))
    img = np.zeros_like(yy)
    for (y0, x0), e in zip(emitters_yx, np.broadcast_to(eps, (len(emitters_yx),)), strict=True):
        u = np.exp(-4 * math.log(2) * ((yy - y0) ** 2 + (xx - x0) ** 2) / fwhm_px**2)
        img += count * e**order * f * u**order
    return img


# ---------------------------------------------------------------------------- flattening


def test_median_2x2_matches_matlab_example():
    # MATLAB's documented answer for medfilt2(magic-free 3x3, [2 2]) (MathWorks Answers 354374).
    out = estimate.median_filter_2x2(jnp.arange(1.0, 10.0).reshape(3, 3))
    np.testing.assert_allclose(np.asarray(out), [[3, 4, 1.5], [6, 7, 3], [3.5, 4, 0]])


def test_median_2x2_matches_scipy_rank_filters():
    # The mean of the 2nd and 3rd of four values, window anchored at its top-left (origin -1),
    # zeros outside; float32 arithmetic on O(1) values: 1e-6.
    x = np.random.default_rng(0).normal(size=(7, 9))
    ranks = [ndi.rank_filter(x, r, size=2, origin=-1, mode="constant", cval=0.0) for r in (1, 2)]
    np.testing.assert_allclose(np.asarray(estimate.median_filter_2x2(x)), 0.5 * (ranks[0] + ranks[1]), atol=1e-6)


@pytest.mark.parametrize("order", [2, 3])
def test_flatten_gives_every_sublattice_the_mean_of_means(order):
    # Sub-lattices = c_ij * base: after equalisation each is mean(c) * base (rtol 1e-6, float32).
    rng = np.random.default_rng(1)
    base = rng.uniform(0.5, 2.0, size=(6, 7))
    c = rng.uniform(0.2, 3.0, size=(order, order))
    sub = -c[:, :, None, None] * base  # negative: flattening takes |kappa|
    img = np.asarray(jax.jit(estimate.flatten, static_argnames="median")(sub, median=False))
    assert img.shape == (order * 6 - order + 1, order * 7 - order + 1)
    for i in range(order):
        for j in range(order):
            part = img[i::order, j::order]
            np.testing.assert_allclose(part, c.mean() * base[: part.shape[0], : part.shape[1]], rtol=1e-6)


def test_distance_flatten_and_fwhm_estimate_undo_the_distance_factor():
    # Sub-lattices seen through exp(-4 ln2 S_ij/(n w^2)) (S_ij from the combinations table):
    # the distance flattening restores the common image (rtol 1e-5: float32 exp), and the FWHM
    # estimated from the sub-lattice means is w (closed-form regression on exact data: 1e-4).
    w = 2.7
    order = 2
    s = np.asarray(cumulants.combinations(order).sum_sq, dtype=np.float64)
    base = np.random.default_rng(2).uniform(1.0, 2.0, size=(5, 5))
    sub = np.exp(-4 * math.log(2) * s / (order * w**2))[:, :, None, None] * base
    img = np.asarray(estimate.flatten(sub, fwhm_px=w, median=False))
    for i in range(order):
        for j in range(order):
            part = img[i::order, j::order]
            np.testing.assert_allclose(part, base[: part.shape[0], : part.shape[1]], rtol=1e-5)
    assert float(estimate.estimate_fwhm(sub)) == pytest.approx(w, rel=1e-4)


def test_fwhm_estimate_is_bounded_to_1_7_px():
    # Equal sub-lattice means mean no distance decay (an infinitely wide PSF): the upper bound.
    sub = np.ones((2, 2, 4, 4))
    assert float(estimate.estimate_fwhm(sub)) == pytest.approx(7.0)


# ---------------------------------------------------------------------------- deconvolution


def test_gaussian_kernel_is_truncated_at_3_sigma_and_normalised():
    k = estimate.gaussian_kernel(1.62)
    assert k.size == 2 * 5 + 1  # ceil(3 * 1.62) = 5
    np.testing.assert_allclose(k, _np_kernel(1.62), rtol=1e-6)


def test_order_psf_sigma_is_the_width_of_u_to_the_n_on_the_fine_grid():
    # Sample U^n on the order-n grid (1/n camera px) and measure its half-maximum width there.
    w, n = 2.7, 3
    x = np.arange(-200, 201) / n
    un = np.exp(-4 * math.log(2) * x**2 / w**2) ** n
    above = x[un >= 0.5]
    fwhm_out = (above[-1] - above[0]) * n  # in output pixels, resolution 1 px
    sigma = estimate.order_psf_sigma(n, w)
    assert abs(sigma * math.sqrt(8 * math.log(2)) - fwhm_out) <= 1.0


def test_richardson_lucy_matches_numpy_reference():
    # Same algorithm in float64 NumPy/scipy FFT convolution: float32 over 10 iterations, 1e-4.
    g = np.random.default_rng(3).uniform(0.1, 1.0, size=(20, 24))
    out = jax.jit(estimate.richardson_lucy, static_argnums=(1, 2))(g, 1.3, 10)
    np.testing.assert_allclose(np.asarray(out), _np_richardson_lucy(g, 1.3, 10), rtol=1e-4)


def test_richardson_lucy_sharpens_a_blurred_point():
    # A point blurred by the PSF: 30 RL iterations raise the peak and shrink the second moment,
    # and keep the flux within 1% (the point is far from the edges).
    sigma = 1.5
    point = np.zeros((25, 25))
    point[12, 12] = 1.0
    g = _np_blur(point, sigma)
    out = np.asarray(estimate.richardson_lucy(g, sigma, 30))
    yy, xx = np.mgrid[:25, :25]

    def spread(img):
        return float(np.sum(img * ((yy - 12) ** 2 + (xx - 12) ** 2)) / np.sum(img))

    assert out[12, 12] > 3 * g[12, 12]
    assert spread(out) < 0.5 * spread(g)
    assert out.sum() == pytest.approx(g.sum(), rel=1e-2)


def test_linearize_is_the_nth_root_and_scale_free_in_the_normalisation():
    # No iterations: |x|^(1/n). With iterations: linearize(c x) = c^(1/n) linearize(x) (RL from
    # o_0 = g is scale-equivariant and the |x|/max normalisation undoes c); float32: 1e-5.
    x = np.random.default_rng(4).uniform(0.0, 5.0, size=(13, 13))
    np.testing.assert_allclose(np.asarray(estimate.linearize(-x, 2, 2.7, 0)), np.sqrt(x), rtol=1e-5)
    a = np.asarray(jax.jit(estimate.linearize, static_argnums=(1, 2, 3))(x, 3, 2.7, 5))
    b = np.asarray(estimate.linearize(1000.0 * x, 3, 2.7, 5))
    np.testing.assert_allclose(b, 10.0 * a, rtol=1e-5)


# ---------------------------------------------------------------------------- adaptive


@pytest.mark.parametrize("rho", [0.1, 0.3])
def test_on_ratio_from_orders_2_and_3_recovers_rho(rho):
    # Isolated emitters (N = 1) of different brightness: kappa_3 / kappa_2^(3/2) at every pixel of
    # an emitter is f_3/f_2^(3/2), brightness and PSF cancel, so the estimate is exact up to
    # float32 rounding of the ratio (1e-4). With two emitters on one spot N = 2 is needed.
    emitters = [(4.0, 4.0), (4.0, 12.0), (12.0, 8.0)]
    eps = [150.0, 60.0, 300.0]
    k2 = _cumulant_image(2, 20, emitters, eps, rho, 1, 2.7)
    k3 = _cumulant_image(3, 20, emitters, eps, rho, 1, 2.7)
    assert float(estimate.estimate_on_ratio(k2, k3)) == pytest.approx(rho, abs=1e-4)
    k2 = _cumulant_image(2, 20, emitters, eps, rho, 2, 2.7)
    k3 = _cumulant_image(3, 20, emitters, eps, rho, 2, 2.7)
    assert float(estimate.estimate_on_ratio(k2, k3, emitters=2.0)) == pytest.approx(rho, abs=1e-4)


def test_adaptive_exponent_divides_the_peaks_by_f_n():
    # Bright physical pixels of equal value i: i^(n gamma_n) = i / f_n(rho) (float32 logs: 1e-5),
    # and a flat image (RL keeps it flat) becomes (i / f_n)^(1/n) everywhere.
    rho, n, i = 0.2, 3, 5.0e4
    f = float(models.bernoulli_cumulant(n, rho))
    img = np.full((3 * 12 + 1, 3 * 12 + 1), i)
    gamma = float(estimate.adaptive_exponent(img, n, rho))
    assert i ** (n * gamma) == pytest.approx(i / f, rel=1e-4)
    out = np.asarray(estimate.adaptive_linearize(img, n, 2.7, rho, iterations=5))
    np.testing.assert_allclose(out, (i / f) ** (1 / n), rtol=1e-4)


# ---------------------------------------------------------------------------- bSOFI


@pytest.mark.parametrize("rho", [0.3, 0.7])
def test_bsofi_parameters_recover_a_point_population(rho):
    # N emitters of brightness eps at one physical pixel, signed expected cumulants on the grids of
    # orders 2-4 (resampling is exact at a physical pixel, a node of every grid): the closed form
    # returns eps, rho, N there up to float32 rounding (1e-4 relative).
    eps, count, size = 120.0, 3.0, 16
    spot = (6.0, 7.0)
    k = [_cumulant_image(n, size, [spot], eps, rho, count, 2.7) for n in (2, 3, 4)]
    maps = jax.jit(estimate.bsofi_parameters)(*k)
    assert maps.on_ratio.shape == k[2].shape
    at = (int(spot[0] * 4), int(spot[1] * 4))
    assert float(maps.on_ratio[at]) == pytest.approx(rho, rel=1e-4)
    assert float(maps.brightness[at]) == pytest.approx(eps, rel=1e-4)
    assert float(maps.density[at]) == pytest.approx(count, rel=1e-4)


def test_bsofi_exponent_scales_k1_and_k2_by_1_5_and_2():
    # e = 1 expects kappa_3/kappa_2 and kappa_4/kappa_2 shrunk by 2/3 and 1/2 (a uniform layer);
    # building them so, the maps return the point-emitter values (1e-4, float32).
    eps, rho, count = 100.0, 0.25, 2.0
    f = [float(models.bernoulli_cumulant(n, rho)) for n in (2, 3, 4)]
    ones = np.ones((5, 5))
    k2 = count * eps**2 * f[0] * ones / 2
    k3 = count * eps**3 * f[1] * ones / 3
    k4 = count * eps**4 * f[2] * ones / 4
    maps = estimate.bsofi_parameters(k2, k3, k4, exponent=1.0)
    np.testing.assert_allclose(np.asarray(maps.on_ratio), rho, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(maps.brightness), eps, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(maps.density), count / 2, rtol=1e-4)


def test_balanced_sofi_picks_order_by_on_ratio():
    # rho = 0.5 (mask 1) gives lin4/max; rho = 0.2 (near the root of f_4, mask 0) gives the
    # order-3 image resampled to the order-4 grid over max; the blurred constant mask stays
    # constant with symmetric edges. Float32: 1e-6.
    size = 10
    rng = np.random.default_rng(5)
    lin3 = rng.uniform(1.0, 2.0, size=(3 * (size - 4) + 1,) * 2)
    lin4 = rng.uniform(1.0, 2.0, size=(4 * (size - 4) + 1,) * 2)
    out = np.asarray(estimate.balanced_sofi(lin3, lin4, np.full(lin4.shape, 0.5)))
    np.testing.assert_allclose(out, lin4 / lin4.max(), atol=1e-6)
    out = np.asarray(estimate.balanced_sofi(lin3, lin4, np.full(lin4.shape, 0.2)))
    l3 = ndi.map_coordinates(lin3, np.mgrid[: lin4.shape[0], : lin4.shape[1]] * 3 / 4, order=1)
    np.testing.assert_allclose(out, l3 / l3.max(), atol=1e-6)


# ---------------------------------------------------------------------------- input checks


def test_bad_shapes_raise_input_errors():
    with pytest.raises(InputError, match="expected \\(n, n, rows, columns\\)"):
        estimate.flatten(np.ones((2, 3, 4, 4)))
    with pytest.raises(InputError, match="not the grids of one stack"):
        estimate.estimate_on_ratio(np.ones((9, 9)), np.ones((9, 9)))
    with pytest.raises(InputError, match="must be > 0"):
        estimate.linearize(np.ones((9, 9)), 2, 0.0)
