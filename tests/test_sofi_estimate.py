"""fluojax.sofi.estimate: flattening, Richardson-Lucy, linearization (root, adaptive), bSOFI.

References are independent of the code under test: MATLAB's published medfilt2 example and
scipy's rank filters, a NumPy/scipy Richardson-Lucy, closed forms of the Bernoulli cumulant
model kappa_n = N eps^n f_n(rho) U^n evaluated on the grids here.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal

from fluojax.io import InputError
from fluojax.sofi import cumulants, estimate, models, simulate


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


FWHM = 2.7  # camera pixels (the RESURF targets' setting)
SIZE = 14  # camera pixels per side of every model field (one shape: JAX compiles each op once)
SPOTS = [(4.5, 4.8), (4.9, 10.6), (10.2, 7.5)]  # isolated: >= 5.3 px apart, >= 3.5 px from edges


def _model_flat(order, size, positions, eps, rho, signed=False):
    """Expected sub-lattices of models.py (point-sampled Gaussian PSF) divided by their distance
    factors and interleaved: the model's cumulant at every virtual pixel (signed if asked)."""
    pos = np.asarray(positions, dtype=np.float32)
    sub = models.expected_sublattices(pos, np.broadcast_to(eps, len(pos)), rho, FWHM, (size, size), order)
    if not signed:
        return estimate.flatten(sub, fwhm_px=FWHM, median=False)
    d = models.distance_factor(np.asarray(cumulants.combinations(order).sum_sq).reshape(order, order), order, FWHM)
    return cumulants.interleave(sub / d[:, :, None, None])


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


@pytest.mark.parametrize("order", [2, 3])
def test_distance_flatten_gives_the_cumulant_at_each_virtual_pixel(order):
    # models.py's expected cross-cumulants of three emitters, flattened by the distance factor,
    # equal sum_k eps_k^n f_n U^n(c - r_k) at each virtual pixel c = (1, 1) + (p, q)/n + 1/2
    # (NumPy, U the normalised Gaussian density); float32: 1e-5 of the maximum.
    size, pos, eps, rho = SIZE, SPOTS, np.array([80.0, 150.0, 120.0]), 0.25
    img = np.asarray(_model_flat(order, size, pos, eps, rho))
    c = 1.5 + np.arange(order * (size - 4) + 1) / order
    yy, xx = np.meshgrid(c, c, indexing="ij")
    s2 = (FWHM / math.sqrt(8 * math.log(2))) ** 2
    ref = np.zeros_like(yy)
    for (y0, x0), e in zip(pos, eps, strict=True):
        u = np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * s2)) / (2 * math.pi * s2)
        ref += e**order * float(models.bernoulli_cumulant(order, rho)) * u**order
    np.testing.assert_allclose(img, ref, atol=1e-5 * ref.max())


def test_mean_equalisation_and_fwhm_estimate_on_model_sublattices():
    # Emitters >= 3.5 px inside every sub-lattice's span (reference centres 1.5 + i/2 .. 11.5 + i/2
    # px, tails < exp(-3.5^2 / (2 sigma_n^2)) ~ 1e-4): every sub-lattice sums the same Gaussian
    # sampled on a unit lattice (offset-independent to ~exp(-2 pi^2 sigma_n^2) ~ 1e-5 for
    # sigma_n = 0.81 px),
    # so its mean is D_ij C: the FWHM from the means is FWHM (1e-3), and mean equalisation equals
    # the distance flattening times mean(D) (1e-3 of the maximum).
    order = 2
    pos = np.asarray([(5.6, 6.0), (7.9, 5.7), (6.5, 7.9)], dtype=np.float32)
    sub = models.expected_sublattices(pos, np.full(3, 100.0), 0.2, FWHM, (SIZE, SIZE), order)
    assert float(estimate.estimate_fwhm(sub)) == pytest.approx(FWHM, rel=1e-3)
    d = np.exp(-4 * math.log(2) * np.asarray(cumulants.combinations(order).sum_sq) / (order * FWHM**2))
    flat_mean = np.asarray(estimate.flatten(sub, median=False))
    flat_dist = np.asarray(estimate.flatten(sub, fwhm_px=FWHM, median=False))
    np.testing.assert_allclose(flat_mean, d.mean() * flat_dist, atol=1e-3 * flat_mean.max())


def test_fwhm_estimate_of_noisy_simulated_filaments_is_the_pixel_integrated_psf():
    # The thesis's sparsest, dimmest cell (off-time 2400 ms, 40 photons) on 32 x 32 pixels: most
    # pixels are background whose cross-cumulant estimates are noise. The camera sees the
    # 2.2-px Gaussian integrated over unit pixels, close to a Gaussian of variance
    # sigma^2 + 1/12 px^2, i.e. FWHM sqrt(2.2^2 + 8 ln2 / 12) = 2.30 px. Single 500-frame movies
    # read 2.25-2.64 px (8 seeds, median 2.37; 1000 frames: median 2.35); the median of 5 is
    # held to 7.5 % (the scatter of a median of 5, ~0.05 px, plus the ~+0.05 px by which pixel
    # integration is not Gaussian). The mean of |kappa| instead read 3.0-3.7 px on such movies.
    settings = dataclasses.replace(simulate.small_preset(2, 3, 32), n_frames=500)
    w0 = settings.fwhm_nm / settings.pixel_nm
    expected = math.sqrt(w0**2 + 8 * math.log(2) / 12)
    read = []
    for seed in range(5):
        frames = simulate.simulate_movie(jax.random.key(seed), settings).frames
        read.append(float(estimate.estimate_fwhm(cumulants.cross_cumulant_sublattices(jnp.asarray(frames), 2))))
    assert np.median(read) == pytest.approx(expected, rel=0.075)


def test_fwhm_estimate_is_bounded_to_1_7_px():
    # Equal sub-lattice means mean no distance decay (an infinitely wide PSF): the upper bound.
    sub = np.ones((2, 2, 4, 4))
    assert float(estimate.estimate_fwhm(sub)) == pytest.approx(7.0)
    assert estimate.fwhm_at_bound(estimate.estimate_fwhm(sub)) and estimate.fwhm_at_bound(1.0)
    assert not estimate.fwhm_at_bound(2.3) and not estimate.fwhm_at_bound(6.99)


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
    # Expected cumulants (models.py) of isolated emitters of different brightness, flattened by
    # the distance factor: kappa_3 / kappa_2^(3/2) is f_3/f_2^(3/2) at every pixel of an emitter
    # (brightness and PSF cancel; neighbours 6 px apart add < 1e-9), so the estimate is exact up
    # to float32 rounding of the ratio (1e-4).
    eps = np.array([150.0, 60.0, 300.0])
    k2, k3 = (_model_flat(n, SIZE, SPOTS, eps, rho) for n in (2, 3))
    assert float(estimate.estimate_on_ratio(k2, k3)) == pytest.approx(rho, abs=1e-4)


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
    # N = 3 emitters of brightness eps at a physical pixel's centre, signed expected cumulants of
    # models.py on the grids of orders 2-4 (resampling is exact there, a node of every grid): the
    # closed form returns rho, eps U(0) (U the normalised PSF) and N up to float32 rounding (1e-4).
    # The orders-2/3 estimate with N = 3 gives rho too, folded to <= 1/2 (it sees |kappa_3|).
    eps, count, size, cam = 120.0, 3, SIZE, 6  # camera pixel 6: output index 4 (6 - 1)
    pos = [(cam + 0.5, cam + 0.5)] * count
    k = [_model_flat(n, size, pos, eps, rho, signed=True) for n in (2, 3, 4)]
    maps = jax.jit(estimate.bsofi_parameters)(*k)
    assert maps.on_ratio.shape == k[2].shape == (4 * (size - 4) + 1,) * 2
    at = (4 * (cam - 1), 4 * (cam - 1))
    u0 = 1.0 / (2 * math.pi * (FWHM / math.sqrt(8 * math.log(2))) ** 2)
    assert float(maps.on_ratio[at]) == pytest.approx(rho, rel=1e-4)
    assert float(maps.brightness[at]) == pytest.approx(eps * u0, rel=1e-4)
    assert float(maps.density[at]) == pytest.approx(count, rel=1e-4)
    folded = min(rho, 1 - rho)
    assert float(estimate.estimate_on_ratio(k[0], k[1], emitters=count)) == pytest.approx(folded, abs=1e-4)


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
