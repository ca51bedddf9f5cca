"""FRAP spectral solver against exact solutions (Soumpasis 1983 for a uniform disk, a Gaussian bleach,
the Fourier series of a periodic disk), its conventions, gradients, vmap, and the fast tabulated
recovery curves against the full image solver."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ive, j1

from fluojax.frap import models as fm

pytestmark = pytest.mark.xdist_group("frap_models")  # its session fixtures are built once, on one worker

R = fm.DEEPFRAP_RADIUS_PX  # 19.742 px (15 um at 0.7598 um/px)
PAPER = fm.FrapSettings()  # N=256, M=128, 10/4/100 frames, dt=0.265 s
ONE_BLEACH = fm.FrapSettings(n_prebleach=2, n_bleach=1, n_postbleach=100)  # instantaneous-bleach refs
SMALL = fm.FrapSettings(n_pixels=48, pad=24, n_prebleach=2, n_bleach=3, n_postbleach=12, dt_s=0.5)


def soumpasis(t, d, alpha, r=R):
    """Soumpasis 1983 (Biophys. J. 41:95): RC = alpha + (1 - alpha) exp(-2 tau/t)[I0(2 tau/t) + I1(2 tau/t)], tau = r^2/(4D)."""
    z = 2.0 * (r * r / (4.0 * d)) / np.asarray(t)
    return alpha + (1.0 - alpha) * (ive(0, z) + ive(1, z))


def periodic_disk_rc(t, d, alpha, size, r=R, n_max=64):
    """Exact ROI mean of a uniform disk on a periodic square of side L (its Fourier series),
    RC = 1 - (1 - alpha) / (pi r^2 L^2) sum_k |2 pi r J1(|k| r) / |k||^2 exp(-D |k|^2 t)."""
    n = np.arange(-n_max, n_max + 1)
    k = 2.0 * np.pi * np.hypot(n[:, None], n[None, :]) / size
    k_safe = np.where(k > 0, k, 1.0)
    disk_hat = np.where(k > 0, 2.0 * np.pi * r * j1(k * r) / k_safe, np.pi * r * r)
    sums = np.array([np.sum(disk_hat**2 * np.exp(-d * k**2 * tt)) for tt in np.atleast_1d(t)])
    return 1.0 - (1.0 - alpha) * sums / (np.pi * r * r * size * size)


@pytest.fixture(scope="session")
def disk():
    return fm.circular_region(PAPER)


# ----------------------------------------------------------------------------------------------
# Geometry and units
# ----------------------------------------------------------------------------------------------


def test_disk_area_fraction_matches_frap_matlab_numbers(disk):
    # frap_matlab's create_bleach_mask.m (Röding et al. 2019): 15x supersampled disk r = 19.742 px centred on the corner (128, 128) sums to
    # 1224.48 with 1148 full and 148 partial pixels; sum(ind^2)/sum(ind) = 0.98194
    ind = np.asarray(disk.indicator)
    assert ind.sum() == pytest.approx(1224.48, abs=5e-3)
    assert int((ind == 1).sum()) == 1148 and int(((ind > 0) & (ind < 1)).sum()) == 148
    assert (ind**2).sum() / ind.sum() == pytest.approx(0.98194, abs=5e-6)
    np.testing.assert_allclose(np.asarray(disk.roi_weights), ind / ind.sum())
    np.testing.assert_array_equal(ind, ind[::-1]) and np.testing.assert_array_equal(ind, ind.T)


def test_rectangle_and_custom_regions_are_area_fractions():
    s = fm.FrapSettings(n_pixels=64, pad=32)
    rect = fm.rectangular_region(s, 10.3, 6.5, center_px=(30.2, 33.0))
    assert np.asarray(rect.indicator).sum() == pytest.approx(10.3 * 6.5, rel=1e-12)
    # a fine binary mask box-averaged by custom_region equals the supersampled disk
    sup = 15
    c = (np.arange(64 * sup) + 0.5) / sup
    fine = (c[None, :] - 31.0) ** 2 + (c[:, None] - 30.0) ** 2 <= 9.5**2
    custom = fm.custom_region(fine, supersample=sup)
    circ = fm.circular_region(s, 9.5, center_px=(31.0, 30.0), supersample=sup)
    np.testing.assert_allclose(custom.indicator, circ.indicator, atol=1e-12)


def test_diffusion_unit_conversions_round_trip():
    d_px = fm.d_um2_s_to_px2_s(10.0)
    assert d_px == pytest.approx(10.0 / 0.7598**2)
    assert fm.d_px2_s_to_um2_s(d_px) == pytest.approx(10.0)
    # DeepFRAP prior 1e-12..1e-9 m^2/s = 1..1000 um^2/s -> 1.7322..1732.2 px^2/s
    # (Wåhlstrand Skärström et al. 2021, Table 1; 0.7598 um pixels)
    assert fm.d_um2_s_to_px2_s(1.0) == pytest.approx(1.7322, abs=1e-4)


# ----------------------------------------------------------------------------------------------
# Exact solutions, float64
# ----------------------------------------------------------------------------------------------


def test_uniform_disk_matches_soumpasis(disk):
    # Tolerance 2e-3 absolute: the solver is exact for its pixelated (area-fraction)
    # disk, so the only difference from Soumpasis' continuous disk is edge pixelation, measured as
    # +1.9e-3 at D t = 0.46 px^2 (alpha = 0.5) and shrinking as D t grows. D = 1732 is left out:
    # there periodic wrap-around adds -1.3e-3 at late times (tested against the periodic series below).
    t = ONE_BLEACH.postbleach_times_s()
    with jax.enable_x64(True):
        for d in (1.7322, 17.322, 173.22):
            rc = np.asarray(fm.recovery_curve(fm.FrapParams(d, 0.8, 0.5), disk, ONE_BLEACH))
            np.testing.assert_allclose(rc[:2], 0.8, rtol=1e-12)  # prebleach: uniform c0
            err = np.abs(rc[2:] / 0.8 - soumpasis(t, d, 0.5))
            print(f"D={d}: max |solver - Soumpasis| = {err.max():.2e} (tol 2e-3)")
            assert err.max() < 2e-3
            assert err[-1] < 2e-4  # late frames: pixelation has diffused away (measured)


def test_disk_matches_periodic_image_reference_at_high_d(disk):
    # Tolerance 1e-6 absolute: the FFT solver is exact for the periodic problem;
    # once D t >= 4600 px^2 (t >= 2.65 s at D = 1732 px^2/s) the pixelation error is below 3e-7
    # (measured -2.4e-7), so the solver must match the periodic-image sum to 1e-6, while the
    # infinite-plane Soumpasis curve is off by ~1.3e-3 from wrap-around at t = 26.5 s.
    d = 1732.2
    t = ONE_BLEACH.postbleach_times_s()
    with jax.enable_x64(True):
        rc = np.asarray(fm.recovery_curve(fm.FrapParams(d, 1.0, 0.5), disk, ONE_BLEACH))[2:]
    late = t >= 2.65 - 1e-9
    ref = periodic_disk_rc(t[late], d, 0.5, ONE_BLEACH.grid_size)
    err = np.abs(rc[late] - ref)
    print(f"max |solver - periodic reference| = {err.max():.2e} (tol 1e-6)")
    assert err.max() < 1e-6
    assert abs(rc[-1] - soumpasis(t[-1], d, 0.5)) > 1e-3  # wrap-around is real and resolved
    # long-time plateau per bleach frame: 1 - (1 - alpha) pi r^2 / L^2
    assert periodic_disk_rc(1e9, d, 0.5, ONE_BLEACH.grid_size)[0] == pytest.approx(
        1 - 0.5 * math.pi * R * R / ONE_BLEACH.grid_size**2, abs=1e-12
    )


def test_gaussian_linear_depth_bleach_closed_form_pointwise():
    # A Gaussian stays Gaussian under diffusion: c(rho, 0) = c0 [1 - A exp(-2 rho^2 / w^2)] diffuses to
    # c0 [1 - A w^2/(w^2 + 8 D t) exp(-2 rho^2 / (w^2 + 8 D t))]. The sampled Gaussian (w = 8 px)
    # is band-limited and decayed far before the period (L = 256), so the spectral step is exact
    # to rounding (observed 4.4e-16); tolerance 1e-12 allows FFT rounding over 100 steps.
    s = fm.FrapSettings(n_pixels=128, pad=64, n_prebleach=1, n_bleach=1, n_postbleach=100, dt_s=0.5)
    w, d, alpha, c0 = 8.0, 2.0, 0.3, 0.8
    x = np.arange(s.n_pixels) + 0.5 - s.n_pixels / 2  # pixel centres, centre at (N/2, N/2)
    rho2 = x[None, :] ** 2 + x[:, None] ** 2
    geom = fm.custom_region(np.exp(-2.0 * rho2 / w**2))
    with jax.enable_x64(True):
        images = np.asarray(fm.simulate_images(fm.FrapParams(d, c0, alpha), geom, s))
    s2 = (w * w + 8.0 * d * s.postbleach_times_s())[:, None, None]
    ref = c0 * (1.0 - (1.0 - alpha) * (w * w / s2) * np.exp(-2.0 * rho2[None] / s2))
    err = np.abs(images[1:] - ref).max()
    print(f"max |solver - Gaussian closed form| = {err:.2e} (tol 1e-12)")
    assert err < 1e-12
    np.testing.assert_allclose(images[0], c0, atol=1e-15)


def test_blurred_disk_is_soumpasis_at_shifted_time(disk):
    # Blurring the bleach mask by a Gaussian of std gamma equals letting the sharp
    # mask diffuse for D t = gamma^2 / 2, so RC_gamma(t) = Soumpasis(t + gamma^2 / (2 D)). The
    # residual is again edge pixelation at the shifted time (<= 6.2e-4 for D t >= 4.6 px^2,
    # measured); the same 2e-3 tolerance as the sharp disk applies.
    d, gamma = 17.322, 3.0
    t = ONE_BLEACH.postbleach_times_s()
    with jax.enable_x64(True):
        rc = np.asarray(fm.recovery_curve(fm.FrapParams(d, 1.0, 0.5, gamma_px=gamma), disk, ONE_BLEACH))[2:]
        # exact form of the same identity: with gamma^2 / (2 D) = dt the blurred curve is the
        # sharp curve one frame later, to rounding (1e-12)
        g_dt = math.sqrt(2.0 * d * ONE_BLEACH.dt_s)
        p_dt = fm.FrapParams(d, 1.0, 0.5, gamma_px=g_dt)
        blurred = np.asarray(fm.recovery_curve(p_dt, disk, ONE_BLEACH))[2:]
        sharp = np.asarray(fm.recovery_curve(fm.FrapParams(d, 1.0, 0.5), disk, ONE_BLEACH))[2:]
    err = np.abs(rc - soumpasis(t + gamma**2 / (2.0 * d), d, 0.5))
    print(f"max |blurred - shifted Soumpasis| = {err.max():.2e} (tol 2e-3)")
    assert err.max() < 2e-3
    assert np.abs(rc - soumpasis(t, d, 0.5)).max() > 1e-2  # the blur matters at this size
    shift = np.abs(blurred[:-1] - sharp[1:]).max()
    print(f"max |blurred(gamma^2/2D = dt) - sharp one frame later| = {shift:.2e} (tol 1e-12)")
    assert shift < 1e-12


# ----------------------------------------------------------------------------------------------
# Conventions: frame order, immobile fraction, imaging bleach
# ----------------------------------------------------------------------------------------------


def _reference_frames(p, indicator, s):
    """Independent NumPy transcription of the documented sequence (fluojax.frap.models' docstring, after frap_matlab's
    signal_d.m): every frame
    diffuses the mobile field for dt (complex FFT, real part), then multiplies mobile and immobile
    fields by the frame's mask; bleach frames are not recorded."""
    n, m, size = s.n_pixels, s.pad, s.grid_size
    k = 2 * np.pi * np.fft.fftfreq(size)
    decay = np.exp(-p.d_px2_s * s.dt_s * (k[:, None] ** 2 + k[None, :] ** 2))
    b = np.pad(indicator, m)
    kb = np.exp(-0.5 * p.gamma_px**2 * (k[:, None] ** 2 + k[None, :] ** 2))
    b = np.real(np.fft.ifft2(np.fft.fft2(b) * kb))
    imaging = 1 + (p.beta - 1) * np.pad(np.ones((n, n)), m)
    bleach = (1 - (1 - p.alpha) * b) * imaging
    mob = np.full((size, size), p.mobile_fraction * p.c0)
    imm = np.full((size, size), (1 - p.mobile_fraction) * p.c0)
    out = []
    kinds = ["pre"] * s.n_prebleach + ["bleach"] * s.n_bleach + ["post"] * s.n_postbleach
    for kind in kinds:
        mob = np.real(np.fft.ifft2(np.fft.fft2(mob) * decay))
        mask = bleach if kind == "bleach" else imaging
        mob, imm = mob * mask, imm * mask
        if kind != "bleach":
            out.append((mob + imm)[m : m + n, m : m + n])
    return np.array(out)


def test_frame_order_matches_independent_transcription():
    # float64, same algorithm written independently: agreement to rounding (1e-12)
    geom = fm.circular_region(SMALL, 7.3, center_px=(22.0, 25.5))
    p = fm.FrapParams(3.0, 0.9, 0.6, mobile_fraction=0.7, beta=0.98, gamma_px=1.2)
    with jax.enable_x64(True):
        got = np.asarray(fm.simulate_images(p, geom, SMALL))
        rc = np.asarray(fm.recovery_curve(p, geom, SMALL))
    ref = _reference_frames(p, np.asarray(geom.indicator), SMALL)
    assert got.shape == (SMALL.n_frames, SMALL.n_pixels, SMALL.n_pixels)
    np.testing.assert_allclose(got, ref, atol=1e-12)
    np.testing.assert_allclose(rc, np.einsum("fij,ij->f", ref, geom.roi_weights), atol=1e-12)


def test_alpha_applies_once_per_bleach_frame_and_beta_once_per_frame():
    # D -> 0: the disk centre keeps alpha^n_bleach; immobile material only (phi = 0) with alpha = 1
    # decays by beta per frame, bleach frames included: pre frame i -> beta^i, post frame j ->
    # beta^(n_pre + n_bleach + j). Both exact (1e-12 in float64).
    geom = fm.circular_region(SMALL, 10.0)
    c = SMALL.n_pixels // 2
    with jax.enable_x64(True):
        img = np.asarray(fm.simulate_images(fm.FrapParams(1e-12, 1.0, 0.7), geom, SMALL))
        rc = np.asarray(fm.recovery_curve(fm.FrapParams(5.0, 2.0, 1.0, 0.0, beta=0.9), geom, SMALL))
    assert img[SMALL.n_prebleach, c, c] == pytest.approx(0.7**SMALL.n_bleach, abs=1e-12)
    frames = np.round(SMALL.frame_times_s() / SMALL.dt_s)
    np.testing.assert_allclose(rc, 2.0 * 0.9**frames, rtol=1e-12)


def test_immobile_fraction_term():
    # With area-fraction weights: RC(phi) - phi RC(1) = (1 - phi) c0 sum_w m^n_bleach,
    # the immobile pool bleached by every bleach frame and never diffusing (exact, 1e-12)
    geom = fm.circular_region(SMALL, 8.0)
    with jax.enable_x64(True):
        full = np.asarray(fm.recovery_curve(fm.FrapParams(4.0, 0.8, 0.6, 1.0), geom, SMALL))
        part = np.asarray(fm.recovery_curve(fm.FrapParams(4.0, 0.8, 0.6, 0.3), geom, SMALL))
    mask = 1 - 0.4 * np.asarray(geom.indicator)
    immobile = 0.8 * np.sum(np.asarray(geom.roi_weights) * mask**SMALL.n_bleach)
    post = slice(SMALL.n_prebleach, None)
    np.testing.assert_allclose(part[post] - 0.3 * full[post], 0.7 * immobile, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Differentiability and batching
# ----------------------------------------------------------------------------------------------


def test_grad_in_d_matches_central_difference():
    # float64; relative step 1e-4 gives truncation ~1e-8 and rounding ~1e-11, so 1e-6 is ample
    geom = fm.circular_region(SMALL, 8.0)

    def loss(d, c0=0.9, alpha=0.6):
        rc = fm.recovery_curve(fm.FrapParams(d, c0, alpha, 0.8, 0.99, 0.7), geom, SMALL)
        return jnp.sum(rc * jnp.linspace(0.5, 1.5, rc.size))

    with jax.enable_x64(True):
        d = 6.0
        g = float(jax.grad(loss)(d))
        h = 1e-4 * d
        fd = (float(loss(d + h)) - float(loss(d - h))) / (2 * h)
        assert g == pytest.approx(fd, rel=1e-6)
        assert abs(g) > 1e-3
        # c0 and alpha gradients as well (alpha: central difference; c0: the curve is linear in c0)
        ga = float(jax.grad(loss, argnums=2)(d, 0.9, 0.6))
        fda = (float(loss(d, 0.9, 0.6 + 1e-5)) - float(loss(d, 0.9, 0.6 - 1e-5))) / 2e-5
        assert ga == pytest.approx(fda, rel=1e-6)
        assert float(jax.grad(loss, argnums=1)(d, 0.9, 0.6)) == pytest.approx(float(loss(d)) / 0.9, rel=1e-12)


def test_vmap_over_parameters_equals_loop():
    # float32 (the default); batched and single FFTs may round differently, hence rtol 1e-5
    geom = fm.circular_region(SMALL, 8.0)
    batch = fm.FrapParams(
        jnp.array([0.5, 3.0, 20.0]),
        jnp.array([0.6, 0.8, 1.0]),
        jnp.array([0.5, 0.7, 0.9]),
        jnp.array([1.0, 0.8, 0.5]),
        jnp.array([1.0, 0.99, 0.95]),
        jnp.array([0.0, 1.0, 2.0]),
    )
    batched = jax.vmap(lambda p: fm.recovery_curve(p, geom, SMALL))(batch)
    images = jax.vmap(lambda p: fm.simulate_images(p, geom, SMALL))(batch)
    for i in range(3):
        p = jax.tree_util.tree_map(lambda x: x[i], batch)  # noqa: B023
        np.testing.assert_allclose(batched[i], fm.recovery_curve(p, geom, SMALL), rtol=1e-5)
        np.testing.assert_allclose(images[i], fm.simulate_images(p, geom, SMALL), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Spectral and fast recovery curves
# ----------------------------------------------------------------------------------------------


def test_spectral_curve_equals_full_solver_float64():
    # same model evaluated two ways (alpha-polynomial fields + sums of exponentials vs time
    # stepping): agreement to rounding, 1e-12
    geom = fm.rectangular_region(SMALL, 9.0, 14.0, center_px=(20.0, 26.0))
    with jax.enable_x64(True):
        for p in (fm.FrapParams(0.7, 0.9, 0.55), fm.FrapParams(12.0, 0.7, 0.8, 0.6, gamma_px=1.5)):
            np.testing.assert_allclose(
                fm.recovery_curve_spectral(p, geom, SMALL), fm.recovery_curve(p, geom, SMALL), rtol=1e-12
            )
    with pytest.raises(ValueError, match="beta"):
        fm.recovery_curve_spectral(fm.FrapParams(1.0, 1.0, 0.5, beta=0.9), geom, SMALL)


@pytest.fixture(scope="session")
def paper_table(disk):
    return fm.build_fast_curve_table(disk, PAPER)  # D in [1, 3000] px^2/s, 64 nodes


def test_fast_curves_match_full_image_solver_at_deepfrap_settings(disk, paper_table):
    # Full image solver (float64) at DeepFRAP settings; D covers the prior's ends, off-node values
    # and the wrap-around regime. float64 fast: Chebyshev truncation ~4e-13 (table.tail), so 1e-9.
    # float32 fast (the default dtype, used for training): 1e-6 relative, the target; measured
    # worst case 5.7e-7 over 20,000 random curves, i.e. a few float32 roundings.
    assert paper_table.tail < 1e-10
    cases = [(1.7322, 0.8, 0.45, 1.0), (41.7, 0.55, 0.95, 1.0), (1732.2, 1.0, 0.7, 0.75)]
    for d, c0, alpha, phi in cases:
        p = fm.FrapParams(d, c0, alpha, phi)
        with jax.enable_x64(True):
            full = np.asarray(fm.recovery_curve(p, disk, PAPER))
            fast64 = np.asarray(fm.recovery_curve_fast(p, paper_table))
        fast32 = np.asarray(fm.recovery_curve_fast(p, paper_table))
        assert fast32.dtype == np.float32 and fast32.shape == (110,)
        e64, e32 = np.abs(fast64 / full - 1).max(), np.abs(fast32 / full - 1).max()
        print(f"D={d}: fast float64 rel err {e64:.1e} (tol 1e-9), fast float32 {e32:.1e} (tol 1e-6)")
        assert e64 < 1e-9
        assert e32 < 1e-6


def test_fast_curves_jit_vmap_grad(paper_table):
    f = jax.jit(jax.vmap(lambda d, c, a: fm.recovery_curve_fast(fm.FrapParams(d, c, a), paper_table)))
    d = jnp.array([2.0, 30.0, 700.0])
    c = jnp.array([0.6, 0.8, 0.95])
    a = jnp.array([0.5, 0.7, 0.9])
    batched = np.asarray(f(d, c, a))
    for i in range(3):
        single = fm.recovery_curve_fast(fm.FrapParams(d[i], c[i], a[i]), paper_table)
        np.testing.assert_allclose(batched[i], single, rtol=1e-6)
    with jax.enable_x64(True):
        # d/dD of the Chebyshev interpolant vs central difference of the same (float64)

        def loss(dd):
            return jnp.sum(fm.recovery_curve_fast(fm.FrapParams(dd, 0.8, 0.6), paper_table))

        g = float(jax.grad(loss)(25.0))
        fd = (float(loss(25.0 * (1 + 1e-5))) - float(loss(25.0 * (1 - 1e-5)))) / (2 * 25.0e-5)
        assert g == pytest.approx(fd, rel=1e-6)
        assert np.all(np.isfinite(np.asarray(f(d, c, a))))  # same jit object retraced under x64
    with pytest.raises(ValueError, match="gamma_px"):
        fm.recovery_curve_fast(fm.FrapParams(10.0, 1.0, 0.5, gamma_px=1.0), paper_table)
