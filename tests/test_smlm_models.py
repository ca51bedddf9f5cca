"""PSF models of fluojax.smlm.models against closed forms, quadrature and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from fluojax.io import InputError
from fluojax.smlm.models import (
    Astigmatic3D,
    Emitters,
    Gaussian2D,
    QuadPlane,
    frame_expected,
    pixel_grid,
    spot_expected,
    weight_to_photons,
)


def test_pixel_grid_centres_are_half_a_pixel_from_the_outer_corner():
    grid = pixel_grid((2, 3), 100.0, origin_px=(5, 7))
    np.testing.assert_allclose(grid.x_nm, [750.0, 850.0, 950.0])
    np.testing.assert_allclose(grid.y_nm, [550.0, 650.0])


def test_integrated_gaussian_pixel_equals_quadrature():
    # reference: the 2D Gaussian density integrated over one pixel by scipy's adaptive quadrature
    psf, a, s = Gaussian2D(130.0), 100.0, 130.0
    x0, y0, n = 437.0, 512.0, 1000.0
    mu = np.asarray(spot_expected(psf, jnp.array([x0, y0, 0.0]), n, 0.0, pixel_grid((10, 10), a)))[0]

    def density(y, x):
        return n * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * s**2)) / (2 * np.pi * s**2)

    for i, j in [(5, 4), (3, 7), (0, 0)]:
        ref, _ = integrate.dblquad(density, j * a, (j + 1) * a, i * a, (i + 1) * a, epsabs=1e-10)
        # float32: each erf is good to ~6e-8, so N/2 x (difference of two erfs) to ~1e-4 photons absolute
        np.testing.assert_allclose(mu[i, j], ref, rtol=2e-5, atol=1e-4)


def test_integrated_gaussian_sums_to_the_photon_count_on_a_large_field():
    # the fraction outside a field 5 sigma from the emitter on every side is < 1e-6
    mu = spot_expected(Gaussian2D(100.0), jnp.array([1550.0, 1550.0, 0.0]), 2000.0, 0.0, pixel_grid((31, 31), 100.0))
    np.testing.assert_allclose(float(mu.sum()), 2000.0, rtol=1e-5)


def test_quadplane_point_sampling_is_eqs_4_to_6():
    # Aritake et al. 2021: y = w a' / (2 pi r^2) exp(-d^2 / (2 r^2)), r from eq. 5, written out here in numpy
    psf, a, w = QuadPlane.table_2(), 192.0, 0.7
    x0, y0, z0 = 3000.0, 2500.0, 350.0
    grid = pixel_grid((32, 32), a)
    mu = np.asarray(spot_expected(psf, jnp.array([x0, y0, z0]), weight_to_photons(w, a), 0.0, grid))
    xc = (np.arange(32) + 0.5) * a
    for k, zk in enumerate([0.0, 400.0, 800.0, 1200.0]):
        u = (zk - z0) / 302.0
        r = 133.0 * np.sqrt(1 + u**2 + 7.37e-4 * u**3 + 6.27e-3 * u**4)
        ref = w * 5e7 / (2 * np.pi * r**2) * np.exp(-((xc[None, :] - x0) ** 2 + (xc[:, None] - y0) ** 2) / (2 * r**2))
        np.testing.assert_allclose(mu[k], ref, rtol=1e-4, atol=1e-6 * ref.max())


@pytest.mark.parametrize(
    ("preset", "widths"),
    [
        # widths r(dz) at dz = 400, 800, 1200 nm computed independently from eq. 5 for both constant sets
        (QuadPlane.table_2(), (221.5, 384.0, 570.0)),
        (QuadPlane.released_code(), (235.3, 498.0, 914.0)),
    ],
)
def test_quadplane_presets_defocus_widths(preset, widths):
    np.testing.assert_allclose(preset.width_nm(jnp.array([400.0, 800.0, 1200.0])), widths, rtol=2e-3)


def test_astigmatic_widths_cross_at_zero_and_focus_at_the_focal_lines():
    psf = Astigmatic3D(sigma0_nm=120.0, focal_offset_nm=250.0, depth_nm=280.0)
    sx, sy = psf.widths(jnp.array([-250.0, 0.0, 250.0]))
    np.testing.assert_allclose(
        sx[:, 0], [120.0 * np.sqrt(1 + (500 / 280) ** 2), 120.0 * np.sqrt(1 + (250 / 280) ** 2), 120.0], rtol=1e-6
    )
    np.testing.assert_allclose(sy[:, 0], sx[::-1, 0], rtol=1e-6)


def test_frame_is_the_sum_of_its_emitters_plus_background():
    psf, grid = QuadPlane.table_2(integrated=True), pixel_grid((16, 20), 192.0)
    em = Emitters(
        jnp.array([500.0, 1900.0]), jnp.array([800.0, 2200.0]), jnp.array([100.0, 900.0]), jnp.array([900.0, 400.0])
    )
    frame = frame_expected(psf, em, grid, 7.0)
    spots = sum(
        spot_expected(psf, jnp.array([em.x_nm[m], em.y_nm[m], em.z_nm[m]]), em.photons[m], 0.0, grid) for m in range(2)
    )
    np.testing.assert_allclose(frame, spots + 7.0, rtol=1e-6, atol=1e-6)


def test_plane_drift_moves_that_planes_image_like_moving_the_emitter():
    psf, grid = QuadPlane.table_2(), pixel_grid((16, 16), 192.0)
    em = Emitters(jnp.array([1500.0]), jnp.array([1400.0]), jnp.array([500.0]), jnp.array([1000.0]))
    drift = jnp.zeros((4, 2)).at[1].set(jnp.array([24.0, -48.0]))
    moved = frame_expected(psf, em._replace(x_nm=em.x_nm + 24.0, y_nm=em.y_nm - 48.0), grid)
    drifted = frame_expected(psf, em, grid, 0.0, drift)
    np.testing.assert_allclose(drifted[1], moved[1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(drifted[0], frame_expected(psf, em, grid)[0], rtol=1e-6)


@pytest.mark.parametrize("psf", [Gaussian2D(), Astigmatic3D(), QuadPlane.released_code(integrated=True)])
def test_gradient_wrt_position_matches_central_differences(psf):
    grid = pixel_grid((9, 9), 100.0)
    data = jnp.linspace(0.0, 50.0, 81 * psf.planes).reshape(psf.planes, 9, 9)

    def loss(p):
        return jnp.sum(data * jnp.log(spot_expected(psf, p, 1500.0, 5.0, grid)))

    with jax.enable_x64(True):
        p = jnp.array([430.0, 470.0, 150.0], jnp.float64)
        grad = jax.grad(loss)(p)
        h = 1e-3  # nm; central differences in float64 are accurate to ~1e-8 relative here
        fd = jnp.array([(loss(p.at[i].add(h)) - loss(p.at[i].add(-h))) / (2 * h) for i in range(3)])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


def test_models_compose_with_jit_and_vmap():
    psf, grid = Gaussian2D(), pixel_grid((7, 7), 100.0)
    positions = jnp.array([[300.0, 320.0, 0.0], [350.0, 400.0, 0.0]])
    batched = jax.jit(jax.vmap(lambda p: spot_expected(psf, p, 1000.0, 2.0, grid)))(positions)
    np.testing.assert_allclose(batched[1], spot_expected(psf, positions[1], 1000.0, 2.0, grid), rtol=1e-6)


def test_bad_psf_settings_are_one_line_input_errors():
    with pytest.raises(InputError, match=r"sigma 0\.0 nm"):
        Gaussian2D(0.0)
