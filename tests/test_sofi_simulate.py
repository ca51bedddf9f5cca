"""The SOFI simulator against closed forms (telegraph statistics, bleaching survival, Poisson
tails, Gaussian integrals from scipy), brute-force NumPy rendering, the camera formulas of
fluojax.noise and the parameter tables of Komen 2024."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from fluojax import noise
from fluojax.sofi import simulate as sim

pytestmark = pytest.mark.xdist_group("sofi_simulate")  # its session fixtures are built once, on one worker

KEY = jax.random.key(20)


# --- blinking and bleaching ------------------------------------------------------------------
# every blinking test draws N_EM emitters with CYCLES cycles over T frames (the same shapes, so
# the eager kernels compile once)

N_EM, CYCLES, T = 4000, 64, 100


def _on_time(blinking):
    """(T, N_EM) fraction of each frame spent on, and the intervals."""
    iv = sim.draw_on_intervals(KEY, N_EM, blinking, CYCLES)
    return np.asarray(sim.on_time_per_frame(iv, T)), iv


def test_mean_on_fraction_is_rho_on_from_the_first_frame():
    assert sim.dwell_cycles(T, 2.0, 6.0) <= CYCLES
    on, _ = _on_time(sim.Blinking(tau_on=2.0, tau_off=6.0, tau_bleach=None))
    rho = 2.0 / 8.0
    # time average of a telegraph process: variance ~ 2 rho (1 - rho) tau_c / T per emitter,
    # tau_c = 1 / (1/2 + 1/6) = 1.5 frames -> s.d. of the grand mean 1.2e-3; 5 s.d.
    assert abs(on.mean() - rho) < 6e-3
    # stationary start: frame 0 alone is a mean of 4000 values in [0, 1] of variance <= rho (1 - rho):
    # s.d. <= 6.8e-3; 5 s.d.
    assert abs(on[0].mean() - rho) < 0.035


def test_on_and_off_dwells_have_the_set_exponential_means():
    _, iv = _on_time(sim.Blinking(tau_on=3.0, tau_off=7.0, tau_bleach=None))
    on = np.asarray(iv.full_length)
    ends = np.asarray(iv.start) + on
    off = np.asarray(iv.start)[:, 1:] - ends[:, :-1]  # full off dwells (cycles 2..k)
    # mean of n exponentials: s.d. tau / sqrt(n); 5 s.d.
    assert abs(on.mean() - 3.0) < 5 * 3.0 / math.sqrt(on.size)
    assert abs(off.mean() - 7.0) < 5 * 7.0 / math.sqrt(off.size)
    # exponential shape (Kolmogorov-Smirnov; p > 1e-4 fails a correct sampler once in 10^4 runs)
    assert stats.kstest(off.ravel()[:20000], "expon", args=(0, 7.0)).pvalue > 1e-4
    # the first off dwell is 0 exactly for the emitters that start on: a fraction rho_on = 0.3
    # (binomial s.d. 7.2e-3 for 4000 emitters; 5 s.d.)
    assert abs((np.asarray(iv.start)[:, 0] == 0).mean() - 0.3) < 0.036


def test_bleaching_survival_is_exponential_in_accumulated_on_time():
    # on-time available in 100 frames at rho = 1/2: 50 +- 8.7 frames, so beyond 15 with
    # probability 1 - 3e-5; 64 cycles run out before frame 100 with probability <= 1.5e-6
    on, _ = _on_time(sim.Blinking(tau_on=3.0, tau_off=3.0, tau_bleach=5.0))
    total = on.sum(axis=0)  # on-time in the movie = min(budget, available)
    for s in (1.0, 2.5, 5.0, 10.0, 15.0):
        p = math.exp(-s / 5.0)
        # binomial s.d. sqrt(p (1 - p) / n) <= 7.9e-3; 5 s.d. (+ 1e-3 for the availability)
        assert abs((total > s).mean() - p) < 5 * math.sqrt(p * (1 - p) / N_EM) + 1e-3


def test_photons_are_integrated_over_the_part_of_each_frame_spent_on():
    # one emitter on during [2.3, 3.7) and [5.0, 5.25): 0.7, 0.7 and 0.25 of frames 2, 3, 5
    iv = sim.OnIntervals(
        start=jnp.array([[2.3, 5.0]]),
        length=jnp.array([[1.4, 0.25]]),
        full_length=jnp.array([[1.4, 0.25]]),
        end=jnp.array([6.0]),
    )
    np.testing.assert_allclose(np.asarray(sim.on_time_per_frame(iv, 7))[:, 0], [0, 0, 0.7, 0.7, 0, 0.25, 0], atol=1e-6)


def test_an_emitter_that_is_always_on_gives_its_brightness_every_frame():
    # tau_off = 1e-6 frames: starting off has probability 1e-15, and no dwell of mean 1e9 frames ends in 100
    b = sim.Blinking(tau_on=1e9, tau_off=1e-6, tau_bleach=None, brightness=37.0)
    on, _ = _on_time(b)
    np.testing.assert_allclose(on * b.brightness, 37.0, rtol=1e-6)


def test_dwell_cycles_is_the_smallest_count_meeting_the_poisson_tail():
    k = sim.dwell_cycles(100, 1.0, 60.0)
    # the bound is min(P(Poisson(T/tau_off) >= k-1), P(Poisson(T/tau_on) >= k)), from scipy here
    bound = min(stats.poisson.sf(k - 2, 100 / 60.0), stats.poisson.sf(k - 1, 100.0))
    assert bound <= 1e-9
    assert min(stats.poisson.sf(k - 3, 100 / 60.0), stats.poisson.sf(k - 2, 100.0)) > 1e-9


def test_cycles_run_out_as_the_poisson_tail_says_and_emitters_stay_dark_after():
    # on dwells of 1e-4 frames: the 64 cycles last 64 off dwells of mean 1.6 (start on: rho = 6e-5),
    # which end before frame 100 with probability P(Poisson(62.5) >= 64) = 0.44 exactly
    on, iv = _on_time(sim.Blinking(tau_on=1e-4, tau_off=1.6))
    end = np.asarray(iv.end)
    short = end < T
    exact = stats.poisson.sf(63, T / 1.6)
    assert abs(short.mean() - exact) < 5 * math.sqrt(exact * (1 - exact) / N_EM)  # binomial s.d. 7.8e-3
    assert exact <= sim.cycle_shortfall_bound(T, 1e-4, 1.6, CYCLES) == pytest.approx(stats.poisson.sf(62, T / 1.6))
    after = np.arange(T)[:, None] >= np.ceil(end)[None, :]
    assert np.all(on[after & short[None, :]] == 0)  # dark once the cycles are used up


# --- rendering -------------------------------------------------------------------------------

A_NM, FWHM_NM, FIELD = 100.0, 220.0, (12, 15)
S_NM = FWHM_NM / (2 * math.sqrt(2 * math.log(2)))


@pytest.fixture(scope="session")
def rendered():
    """40 emitters, some outside a 12 x 15 field, ~30% on per frame, rendered in chunks of 3."""
    rng = np.random.default_rng(0)
    y, x = rng.uniform(-300, 1500, 40), rng.uniform(-300, 1800, 40)
    traces = rng.exponential(50.0, (5, 40)) * (rng.random((5, 40)) < 0.3)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    mu = sim.render_frames(f32(traces), f32(y), f32(x), FIELD, A_NM, FWHM_NM, chunk=3)
    return y, x, traces, np.asarray(mu)


def test_rendered_sum_is_photons_times_the_psf_fraction_inside_the_field(rendered):
    y, x, traces, mu = rendered

    def inside(pos, side):  # Gaussian mass in [0, side] (scipy's normal CDF)
        return stats.norm.cdf(side, pos, S_NM) - stats.norm.cdf(0.0, pos, S_NM)

    fraction = inside(y, FIELD[0] * A_NM) * inside(x, FIELD[1] * A_NM)
    # float32 sums of ~1e3 photons: relative 2e-5
    np.testing.assert_allclose(mu.sum(axis=(1, 2)), traces @ fraction, rtol=2e-5)


def test_rendering_in_chunks_of_the_emitters_on_equals_the_dense_sum(rendered):
    y, x, traces, mu = rendered  # ~12 emitters on per frame: 4 chunks of 3

    def pix(c, n):  # pixel integrals from scipy's erf, float64
        e = np.arange(n + 1) * A_NM
        return np.diff(0.5 * special.erf((e[None, :] - c[:, None]) / (math.sqrt(2) * S_NM)), axis=1)

    ref = np.einsum("tm,my,mx->tyx", traces, pix(y, FIELD[0]), pix(x, FIELD[1]))
    np.testing.assert_allclose(mu, ref, rtol=2e-5, atol=1e-5)


def test_background_follows_from_the_signal_to_background_ratio():
    # peak pixel of an emitter centred on it: (2 Phi(a / 2s) - 1)^2 of I_on; b = that / sbr
    peak = (2 * stats.norm.cdf(50.0 / S_NM) - 1) ** 2
    # float32 erf of the optics engine: relative 1e-6
    assert sim.background_photons(100.0, 15.0, 220.0, 100.0) == pytest.approx(100.0 * peak / 15.0, rel=1e-6)
    assert sim.background_photons(100.0, None, 220.0, 100.0) == 0.0


# --- ground truth ----------------------------------------------------------------------------


def test_ground_truth_sits_on_the_order_2_sofi_grid():
    n, a = 16, 100.0
    # output pixel (i, j) lies at camera position 1 + i/2, 1 + j/2 from the first pixel's centre
    i, j = 7, 12
    y = jnp.array([(0.5 + 1 + i / 2) * a])
    x = jnp.array([(0.5 + 1 + j / 2) * a])
    gt = np.asarray(sim.ground_truth_image(y, x, jnp.array([True]), (n, n), a, 220.0))
    assert gt.shape == (2 * (n - 4) + 1,) * 2
    assert np.unravel_index(gt.argmax(), gt.shape) == (i, j)
    assert gt.max() == pytest.approx(1.0)
    # narrowed 2-fold: 110 nm FWHM on 50-nm pixels; the pixel-integrated profile one pixel away
    s, h = 110.0 / (2 * math.sqrt(2 * math.log(2))), 25.0
    centre = stats.norm.cdf(h, 0, s) - stats.norm.cdf(-h, 0, s)
    side = stats.norm.cdf(3 * h, 0, s) - stats.norm.cdf(h, 0, s)
    assert gt[i, j + 1] == pytest.approx(side / centre, rel=1e-4)


# --- microtubules ----------------------------------------------------------------------------

MT = sim.thesis_preset(0, 0, (32, 32)).sample  # 20-100 filaments over a 256-pixel square
_grow = jax.jit(lambda k: sim.grow_microtubules(k, MT, (32, 32), 100.0))


def _segment_distance(p, a, b):
    """Distance from points p (m, 2) to segments a-b (s, 2): (m, s), brute force."""
    ab = b - a
    t = np.clip(np.einsum("msk,sk->ms", p[:, None] - a[None], ab) / np.sum(ab * ab, axis=1), 0, 1)
    return np.linalg.norm(p[:, None] - (a[None] + t[..., None] * ab[None]), axis=-1)


def test_filament_count_is_in_the_thesis_range_and_filaments_stay_in_the_garden():
    side = MT.garden_px * 100.0
    lo, hi = (3200.0 - side) / 2, (3200.0 + side) / 2
    counts = []
    for key in jax.random.split(KEY, 8):
        fil = _grow(key)
        counts.append(int(fil.drawn.sum()))
        valid = np.asarray(fil.valid)
        ends = np.asarray(fil.points_nm)[:, 1:][valid]
        assert np.all((ends >= lo) & (ends <= hi))
        assert np.all(valid.sum(axis=1) * MT.step_nm <= MT.length_nm[1])
    assert min(counts) >= 20 and max(counts) <= 100 and min(counts) < max(counts)


@pytest.mark.parametrize("width_nm, per_um", [(10.0, 50.0), (50.0, 250.0)])
def test_emitters_lie_on_the_filaments_at_the_set_linear_density(width_nm, per_um):
    # 5000 /um^2 over the labelled width: 10 nm (the thesis's grid step) or 50 nm
    sample = sim.thesis_preset(0, 0, (32, 32), filament_width_nm=width_nm).sample
    assert sample.emitters_per_um == pytest.approx(per_um)
    k1, k2 = jax.random.split(KEY)
    fil = _grow(k1)
    y, x, mask, n = jax.jit(lambda k, f: sim.place_emitters(k, f, sample, (32, 32), 100.0, 0.0))(k2, fil)
    mask = np.asarray(mask)
    assert int(n) == mask.sum() > 0
    pts, valid = np.asarray(fil.points_nm), np.asarray(fil.valid)
    seg_a, seg_b = pts[:, :-1][valid], pts[:, 1:][valid]
    mid = 0.5 * (seg_a + seg_b)
    near = np.all((mid >= -100.0) & (mid <= 3300.0), axis=1)
    p = np.stack([np.asarray(y), np.asarray(x)], axis=1)[mask]
    # within half the width of a segment (float32 positions of ~1e3 nm: 1e-3 nm slack)
    distance = _segment_distance(p, seg_a[near], seg_b[near]).min(axis=1)
    assert np.all(distance <= width_nm / 2 + 1e-3) and distance.max() > 0.8 * width_nm / 2  # spread over it
    # count ~ Poisson(per_um x length of the segments with midpoints in the field); 5 s.d.
    length_um = np.sum(np.all((mid >= 0) & (mid <= 3200.0), axis=1)) * MT.step_nm / 1000
    lam = per_um * length_um
    assert abs(int(n) - lam) < 5 * math.sqrt(lam)


def test_a_wider_labelling_scales_the_emitter_slots_and_none_overflow():
    # the slots grow with the width, so the 5x denser small preset still holds every emitter drawn
    narrow, wide = sim.small_preset(0, 0), sim.small_preset(0, 0, filament_width_nm=50.0)
    assert wide.sample.max_emitters >= 5 * narrow.sample.max_emitters - 1024
    assert sim.thesis_preset(0, 0, filament_width_nm=50.0).sample.max_emitters == 5 * 32768
    settings = dataclasses.replace(wide, n_frames=3)
    movies = jax.vmap(lambda k: sim.simulate_movie(k, settings))(jax.random.split(KEY, 32))
    drawn, kept = np.asarray(movies.n_drawn), np.asarray(movies.mask).sum(axis=1)
    assert np.array_equal(drawn, kept) and kept.max() < wide.sample.max_emitters


@pytest.mark.parametrize("width", [0.0, -10.0, float("nan"), 1001.0])
def test_a_filament_width_outside_0_to_1000_nm_is_refused(width):
    with pytest.raises(ValueError, match="filament width"):
        sim.thesis_preset(0, 0, filament_width_nm=width)


# --- the movie -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def movies():
    """Two 16 x 16, 60-frame movies (vmapped over keys) of the small preset's filaments, read out
    by an sCMOS camera with drawn maps (not quantized, so its moments are exactly noise.SCMOS's)."""
    base = sim.small_preset(0, 0, size=16)
    settings = sim.SofiSettings(
        shape=(16, 16),
        n_frames=60,
        blinking=sim.Blinking(tau_on=1.0, tau_off=10.0, tau_bleach=None, brightness=100.0),
        sample=base.sample,
        camera=sim.scmos_camera(jax.random.key(3), (16, 16), quantize=False),
    )
    return settings, jax.vmap(lambda k: sim.simulate_movie(k, settings))(jax.random.split(KEY, 2))


def test_movies_are_vmappable_over_keys_and_consistent(movies):
    settings, movies = movies
    m = settings.sample.max_emitters
    assert movies.frames.shape == (2, 60, 16, 16) and movies.frames.dtype == jnp.float32
    assert movies.traces.shape == (2, 60, m) and movies.ground_truth.shape == (2, 25, 25)
    assert not np.allclose(movies.frames[0], movies.frames[1])
    mask = np.asarray(movies.mask)
    assert np.all(mask.sum(axis=1) == np.asarray(movies.n_drawn)) and mask.sum() > 0  # no overflow
    traces = np.asarray(movies.traces)
    assert traces.max() <= 100.0 * (1 + 1e-6)  # at most the brightness per frame
    assert np.all(traces.transpose(0, 2, 1)[~mask] == 0)  # absent emitters give nothing
    # without any emitter on in a frame, the expected image is exactly the background
    dark = traces.sum(axis=2) == 0
    np.testing.assert_allclose(np.asarray(movies.photons)[dark], settings.background, rtol=1e-6)


def test_frames_have_the_scmos_mean_and_variance_of_their_photons(movies):
    settings, movies = movies
    cam = settings.camera
    g, o, v = (np.asarray(m, np.float64) for m in (cam.gain_adu_per_e, cam.offset_adu, cam.read_variance_e2))
    lam = np.asarray(movies.photons, np.float64)
    # fluojax.noise.SCMOS: mean g lambda + o, variance g^2 (lambda + v) per pixel
    z = (np.asarray(movies.frames, np.float64) - (g * lam + o)) / (g * np.sqrt(lam + v))
    # 30,720 standardised values: their mean has s.d. 0.0057, their variance ~0.008 (Poisson
    # plus Gaussian: kurtosis near 3); 5 s.d.
    assert abs(z.mean()) < 0.029
    assert abs(z.var() - 1) < 0.04


def test_frames_have_the_emccd_mean_and_variance_of_their_photons():
    """An EMCCD read-out of the movie: mean ``g G lambda + o`` and variance ``g^2 (2 G^2 lambda +
    r^2)`` per pixel (noise.EMCCD: Poisson electrons through a Gamma gain register, excess noise
    factor 2), lambda the expected photons of each pixel and frame."""
    base = sim.small_preset(0, 0, size=16)
    cam = noise.EMCCD(em_gain=50.0, read_noise_e=5.0, gain_adu_per_e=0.2, offset_adu=100.0)
    settings = sim.SofiSettings(
        shape=(16, 16),
        n_frames=60,
        blinking=sim.Blinking(tau_on=1.0, tau_off=10.0, tau_bleach=None, brightness=100.0),
        sample=base.sample,
        camera=cam,
    )
    movie = sim.simulate_movie(jax.random.key(5), settings)
    lam = np.asarray(movie.photons, np.float64)
    g, gain, r = cam.gain_adu_per_e, cam.em_gain, cam.read_noise_e
    z = (np.asarray(movie.frames, np.float64) - (g * gain * lam + cam.offset_adu)) / (
        g * np.sqrt(2 * gain**2 * lam + r**2)
    )
    # 15,360 standardised values: their mean has s.d. 0.008; their variance's s.d. is ~0.013
    # (excess kurtosis ~6 / lambda of the Poisson-Gamma counts, lambda >= the background); 5 s.d.
    assert lam.min() > 1.0
    assert abs(z.mean()) < 0.04
    assert abs(z.var() - 1) < 0.07


def test_scmos_maps_are_drawn_around_the_documented_values():
    cam = sim.scmos_camera(jax.random.key(0), (64, 64))
    g, o, v = (np.asarray(m) for m in (cam.gain_adu_per_e, cam.offset_adu, cam.read_variance_e2))
    # 4096 pixels: sample means within 5 s.d. (0.04/64, 1.5/64); log-normal median within 5 x 0.7 x 1.25/64
    assert abs(g.mean() - 2.0) < 5 * 0.04 / 64 and abs(o.mean() - 100.0) < 5 * 1.5 / 64
    assert abs(np.log(np.median(v)) - np.log(2.0)) < 5 * 0.7 * 1.25 / 64
    assert cam.quantize and sim.scmos_camera(jax.random.key(0), (64, 64)).offset_adu.tolist() == o.tolist()


# --- presets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0, 1, 2])
def test_thesis_presets_are_tables_5_1_and_5_2(density):
    # Komen 2024, Table 5.1: fps 100, rectime 1 s, fwhm_psf 220 nm, sbr 15; Table 5.2: dens 5000
    # /um^2, ontime 10 ms, offtime 600 / 1200 / 2400 ms, avbleach 500 s, Ion 100 / 80 / 60 / 40;
    # §5.1.1: 2560 x 2560 grid of 10 nm, 20-100 microtubules, 100-nm pixels
    for snr, ion in enumerate([100.0, 80.0, 60.0, 40.0]):
        s = sim.thesis_preset(density, snr)
        assert (s.n_frames, s.pixel_nm, s.fwhm_nm, s.sbr, s.shape) == (100, 100.0, 220.0, 15.0, (128, 128))
        assert s.blinking.tau_on == pytest.approx(1.0)  # 10 ms at 100 fps
        assert s.blinking.tau_off == pytest.approx([60.0, 120.0, 240.0][density])
        assert s.blinking.tau_bleach == pytest.approx(50000.0)  # 500 s
        assert s.blinking.brightness == ion
        assert s.sample.count == (20, 100) and s.sample.garden_px == 256
        assert s.sample.density_per_um2 == 5000.0 and s.sample.emitters_per_um == pytest.approx(50.0)
        assert isinstance(s.camera, noise.SCMOS)
