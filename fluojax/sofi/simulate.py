"""Blinking-emitter movies for SOFI: curved microtubules labelled by blinking and bleaching
emitters, imaged through a pixel-integrated Gaussian PSF onto a camera, with the
super-resolved ground truth on the order-2 SOFI grid.

The generator follows the SOFI simulation tool (Girsault et al. 2016) and its use in Komen 2024
(§5.1.1, Tables 5.1-5.2): each emitter is a two-state (on/off) telegraph process with exponential
dwell times, bleached once its accumulated on-time exceeds an exponential budget; the photons of a
frame are the brightness times the time spent on within the frame (integrated, not sampled);
filaments grow as random walks of curvature (Shariff et al. 2010) and carry emitters at a fixed
areal density over a 10-nm-wide line; a camera from :mod:`fluojax.noise` reads the expected
photons out. Everything is pure JAX with fixed array sizes (a varying number of filaments and
emitters lives in masked arrays), so :func:`simulate_movie` is jit-able with static settings and
vmappable over keys. Units: positions in nm with the origin at the outer corner of the first
pixel (pixel (i, j) spans y in [i a, (i+1) a), x in [j a, (j+1) a)); times in frames; brightness
in photons per frame while on; background in photons per pixel per frame; stacks (t, y, x).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from fluojax import draws, noise
from fluojax.io import require
from fluojax.optics import fwhm_to_sigma, pixel_fractions

__all__ = [
    "KOMEN_2024",
    "Blinking",
    "Filaments",
    "Microtubules",
    "OnIntervals",
    "SofiMovie",
    "SofiSettings",
    "ThesisSimulation",
    "background_photons",
    "cycle_shortfall_bound",
    "draw_on_intervals",
    "dwell_cycles",
    "ground_truth_image",
    "grow_microtubules",
    "on_time_per_frame",
    "peak_fraction",
    "place_emitters",
    "render_frames",
    "scmos_camera",
    "simulate_movie",
    "small_preset",
    "sofi_grid_centres_nm",
    "thesis_preset",
]


@dataclasses.dataclass(frozen=True)
class ThesisSimulation:
    """The simulation parameters of Komen 2024 (Table 5.1, Table 5.2 and §5.1.1), as printed.

    Attributes:
        fps: frames per second (Table 5.1).
        rectime_s: recording time, s (Table 5.1).
        fwhm_psf_nm: PSF FWHM, nm (Table 5.1).
        sbr: signal-to-background ratio (Table 5.1, the same for all four SNR levels).
        dens_per_um2: emitters per um^2 of filament (Table 5.2).
        ontime_ms: mean on-time, ms (Table 5.2).
        offtime_ms: mean off-times of the three density levels, ms (Table 5.2).
        avbleach_s: mean bleaching time, s (Table 5.2).
        ion: photons per emitter per frame of the four SNR levels (Table 5.2).
        grid_points: side of the binary filament grid, points (§5.1.1).
        grid_nm: spacing of the filament grid, nm (§5.1.1).
        pixel_nm: camera pixel after 10x downsampling, nm (§5.1.1).
        filaments: (min, max) microtubules per grid (§5.1.1).
    """

    fps: float = 100.0
    rectime_s: float = 1.0
    fwhm_psf_nm: float = 220.0
    sbr: float = 15.0
    dens_per_um2: float = 5000.0
    ontime_ms: float = 10.0
    offtime_ms: tuple[float, float, float] = (600.0, 1200.0, 2400.0)
    avbleach_s: float = 500.0
    ion: tuple[float, float, float, float] = (100.0, 80.0, 60.0, 40.0)
    grid_points: int = 2560
    grid_nm: float = 10.0
    pixel_nm: float = 100.0
    filaments: tuple[int, int] = (20, 100)


#: Komen 2024's simulation parameters.
KOMEN_2024 = ThesisSimulation()
_SHORTFALL_TAIL = 1e-9


# ---------------------------------------------------------------------------------------------
# blinking and bleaching


@dataclasses.dataclass(frozen=True)
class Blinking:
    """Photophysics of one emitter species (times in frames).

    Attributes:
        tau_on: mean on-dwell time, frames (> 0).
        tau_off: mean off-dwell time, frames (> 0).
        tau_bleach: mean on-time budget before bleaching, frames of accumulated on-time (> 0);
            None: no bleaching.
        brightness: photons per frame while on (I_on).
    """

    tau_on: float = 1.0
    tau_off: float = 60.0
    tau_bleach: float | None = None
    brightness: float = 100.0

    def __post_init__(self):
        require(self.tau_on > 0, f"mean on-time {self.tau_on} frames: must be > 0")
        require(self.tau_off > 0, f"mean off-time {self.tau_off} frames: must be > 0")
        require(
            self.tau_bleach is None or self.tau_bleach > 0,
            f"mean bleaching on-time {self.tau_bleach} frames: must be > 0",
        )
        require(self.brightness >= 0, f"brightness {self.brightness} photons/frame: must be >= 0")

    @property
    def on_fraction(self) -> float:
        """Steady-state on-probability ``rho_on = tau_on / (tau_on + tau_off)`` (without bleaching)."""
        return self.tau_on / (self.tau_on + self.tau_off)


def _poisson_sf(m: float, k: int) -> float:
    """``P(Poisson(m) >= k)`` by summing the pmf below k (exact up to float rounding)."""
    if k <= 0:
        return 1.0
    if m == 0:
        return 0.0
    below = sum(math.exp(j * math.log(m) - m - math.lgamma(j + 1)) for j in range(k))
    return max(0.0, 1.0 - below)


def cycle_shortfall_bound(n_frames: int, tau_on: float, tau_off: float, cycles: int) -> float:
    """Upper bound on the probability that ``cycles`` off/on cycles end before ``n_frames``.

    The process starts in its stationary state (see :func:`draw_on_intervals`): its first off
    dwell is zero when it starts on, so ``cycles`` cycles hold at least ``cycles - 1`` full
    exponential off dwells and ``cycles`` full on dwells. Their end ``S`` falls before ``T`` only
    if each of these sums does, and a sum of ``k`` exponentials of mean ``tau`` is below ``T``
    with probability ``P(Poisson(T / tau) >= k)``. Hence

        P(S < T) <= min(P(Poisson(T / tau_off) >= cycles - 1), P(Poisson(T / tau_on) >= cycles)).

    Arguments:
        n_frames: movie length T, frames.
        tau_on, tau_off: mean dwell times, frames.
        cycles: number of off/on cycles drawn per emitter.
    """
    return min(_poisson_sf(n_frames / tau_off, cycles - 1), _poisson_sf(n_frames / tau_on, cycles))


def dwell_cycles(n_frames: int, tau_on: float, tau_off: float, tail: float = _SHORTFALL_TAIL) -> int:
    """The fixed number of off/on cycles drawn per emitter: the smallest count whose
    :func:`cycle_shortfall_bound` is at most ``tail`` (1e-9 by default).

    An emitter whose cycles run out before the movie ends stays dark for the rest of it; with the
    default tail that happens to fewer than one emitter in 10^9 (e.g. 15 cycles for 100 frames
    at tau_off = 60 frames, Komen 2024's densest setting).

    Arguments:
        n_frames: movie length, frames.
        tau_on, tau_off: mean dwell times, frames.
        tail: the accepted bound on the shortfall probability per emitter.
    """
    k = 1
    while cycle_shortfall_bound(n_frames, tau_on, tau_off, k) > tail:
        k += 1
    return k


class OnIntervals(NamedTuple):
    """The on-intervals of a batch of emitters, after bleaching.

    Interval k of emitter m is ``[start[m, k], start[m, k] + length[m, k])`` frames; ``length``
    is 0 for intervals after bleaching. ``start`` is non-decreasing along k.

    Attributes:
        start: (m, cycles) start times, frames from the start of the movie.
        length: (m, cycles) durations, frames.
        full_length: (m, cycles) durations before bleaching truncated them, frames.
        end: (m,) end of the last cycle (the emitter is dark after it), frames.
    """

    start: Float[Array, "m k"]
    length: Float[Array, "m k"]
    full_length: Float[Array, "m k"]
    end: Float[Array, " m"]


def draw_on_intervals(key: PRNGKeyArray, n: int, blinking: Blinking, cycles: int) -> OnIntervals:
    """Telegraph processes with exponential dwell times and an exponential on-time bleaching budget.

    Each emitter alternates off and on dwells of exponential durations with means ``tau_off`` and
    ``tau_on``. It starts in the stationary state: on with probability ``rho_on =
    tau_on / (tau_on + tau_off)``, and since exponential dwells are memoryless the remaining time
    in the starting state is again exponential, so the process is stationary from t = 0 on
    (exact, where the SOFI simulation tool (Girsault et al. 2016) shifts the start by a random
    fraction of a few cycles). Cycle k is an off dwell ``u_k`` (``u_1 = 0`` when starting on)
    followed by an on dwell ``v_k``; with ``t_k`` the end of cycle k, interval k is
    ``[t_{k-1} + u_k, t_k)``.

    Bleaching (Girsault et al. 2016): a budget ``B ~ Exp(tau_bleach)`` of on-time is drawn; the
    on dwells are truncated to ``clip(B - C_{k-1}, 0, v_k)``, ``C_{k-1}`` the on-time before
    interval k, so an emitter bleaches once its accumulated on-time exceeds B (on-time, not
    wall-clock time), and ``P(not bleached after on-time s) = exp(-s / tau_bleach)``.

    Arguments:
        key: PRNG key.
        n: number of emitters (static).
        blinking: :class:`Blinking` (static).
        cycles: off/on cycles per emitter (static; :func:`dwell_cycles` sizes it).

    Returns:
        :class:`OnIntervals`, leaves float32.
    """
    k_state, k_off, k_on, k_bleach = jax.random.split(key, 4)
    starts_on = jax.random.bernoulli(k_state, blinking.on_fraction, (n,))
    off = blinking.tau_off * draws.exponential(k_off, (n, cycles))
    off = off.at[:, 0].set(jnp.where(starts_on, 0.0, off[:, 0]))
    on = blinking.tau_on * draws.exponential(k_on, (n, cycles))
    ends = jnp.cumsum(off + on, axis=1)
    start = ends - on
    if blinking.tau_bleach is None:
        length = on
    else:
        budget = blinking.tau_bleach * draws.exponential(k_bleach, (n, 1))
        before = jnp.cumsum(on, axis=1) - on
        length = jnp.clip(budget - before, 0.0, on)
    return OnIntervals(start, length, on, ends[:, -1])


def on_time_per_frame(intervals: OnIntervals, n_frames: int) -> Float[Array, "t m"]:
    """Fraction of each frame ``[f, f + 1)`` that every emitter spends on.

    With ``O(t)`` the accumulated on-time up to t, the fraction in frame f is ``O(f + 1) - O(f)``;
    ``O`` at the frame boundaries comes from the last interval starting before each boundary
    (a sorted search, O(m T log k)): ``O(t) = C_{j-1} + clip(t - s_j, 0, l_j)``.

    Arguments:
        intervals: :class:`OnIntervals` of m emitters.
        n_frames: number of frames T (static).

    Returns:
        (T, m) array of fractions in [0, 1].
    """
    edges = jnp.arange(n_frames + 1, dtype=intervals.start.dtype)
    # comparing every boundary with every start is fastest on CPU for the few cycles of the presets
    method = "compare_all" if intervals.start.shape[-1] <= 64 else "scan"

    def accumulated(start, length):
        before = jnp.cumsum(length) - length
        j = jnp.searchsorted(start, edges, side="right", method=method) - 1
        jc = jnp.maximum(j, 0)
        o = before[jc] + jnp.clip(edges - start[jc], 0.0, length[jc])
        return jnp.where(j >= 0, o, 0.0)

    o = jax.vmap(accumulated)(intervals.start, intervals.length)  # (m, T + 1)
    return jnp.diff(o, axis=1).T


# ---------------------------------------------------------------------------------------------
# microtubules


@dataclasses.dataclass(frozen=True)
class Microtubules:
    """Curved filaments grown by a random walk of curvature, labelled at an areal density.

    A filament starts at a uniform position in a square "garden" centred on the field, with a
    uniform heading and zero curvature, and grows in steps of ``step_nm``; after each step its
    curvature changes by a normal increment of s.d. ``curvature_step_per_um`` (rad/um), so it
    bends smoothly, stiffer for a smaller value (the bending-stiffness random walk of Shariff et
    al. 2010 as used by Komen 2024, §5.1.1). It stops at its drawn length or where it leaves the
    garden. Emitters sit at uniform random positions along the filaments (a Poisson process of
    ``emitters_per_um`` per um of filament), each at a uniform lateral offset across the
    filament's width. Komen 2024 draws 5000 emitters/um^2 on the 1-pixel-wide filaments of a
    10-nm grid; over a 10-nm width that is 5000 x 0.01 = 50 emitters per um of filament.

    Attributes:
        count: (min, max) number of filaments per garden, drawn uniformly (Komen 2024: 20-100).
        garden_px: side of the square growth region in camera pixels, centred on the field;
            None: the field itself (plus the PSF margin). Komen 2024 grows filaments on a 25.6-um
            grid (256 pixels) and crops 128 x 128 fields from it.
        length_nm: (min, max) filament length, drawn uniformly, nm (not given by the thesis).
        step_nm: growth step, nm.
        curvature_step_per_um: s.d. of the curvature change per step, rad/um.
        density_per_um2: emitters per um^2 of filament area.
        width_nm: filament width, nm (the emitters' lateral spread).
        max_emitters: size of the emitter arrays; draws beyond it are dropped (see
            :class:`SofiMovie` ``n_drawn``).
    """

    count: tuple[int, int] = (20, 100)
    garden_px: int | None = None
    length_nm: tuple[float, float] = (2000.0, 20000.0)
    step_nm: float = 50.0
    curvature_step_per_um: float = 0.015
    density_per_um2: float = 5000.0
    width_nm: float = 10.0
    max_emitters: int = 4096

    def __post_init__(self):
        require(0 <= self.count[0] <= self.count[1], f"filament count range {self.count}: need 0 <= min <= max")
        require(
            0 < self.length_nm[0] <= self.length_nm[1],
            f"filament length range {self.length_nm} nm: need 0 < min <= max",
        )
        require(self.step_nm > 0, f"growth step {self.step_nm} nm: must be > 0")
        require(self.density_per_um2 >= 0, f"emitter density {self.density_per_um2} /um^2: must be >= 0")
        require(self.max_emitters >= 1, f"maximum emitter count {self.max_emitters}: must be >= 1")

    @property
    def emitters_per_um(self) -> float:
        """Linear density along a filament: ``density_per_um2 x width_nm / 1000`` emitters per um."""
        return self.density_per_um2 * self.width_nm / 1000.0

    @property
    def steps(self) -> int:
        """Growth steps of the longest filament (the array size)."""
        return math.ceil(self.length_nm[1] / self.step_nm)


class Filaments(NamedTuple):
    """Polyline filaments in nm (y, x) with a validity mask per segment.

    Attributes:
        points_nm: (F, S + 1, 2) vertices (y, x), nm.
        valid: (F, S) whether segment s of filament f exists (filament drawn, within its length
            and still inside the garden).
        drawn: (F,) the filaments of this field (the first n of F, n drawn from ``count``).
    """

    points_nm: Float[Array, "f s1 2"]
    valid: Bool[Array, "f s"]
    drawn: Bool[Array, " f"]


def _garden(sample: Microtubules, shape: tuple[int, int], pixel_nm: float, margin_nm: float) -> tuple[Array, Array]:
    """Lower and upper (y, x) corners of the growth square, nm."""
    h, w = shape[0] * pixel_nm, shape[1] * pixel_nm
    if sample.garden_px is None:
        lo = jnp.array([-margin_nm, -margin_nm])
        hi = jnp.array([h + margin_nm, w + margin_nm])
    else:
        side = sample.garden_px * pixel_nm
        lo = jnp.array([(h - side) / 2, (w - side) / 2])
        hi = lo + side
    return lo, hi


def grow_microtubules(
    key: PRNGKeyArray, sample: Microtubules, shape: tuple[int, int], pixel_nm: float, margin_nm: float = 0.0
) -> Filaments:
    """Filaments grown by a random walk of curvature (see :class:`Microtubules`).

    With heading ``theta_s`` and curvature ``kappa_s`` after s steps of length ``l``:
    ``kappa_{s+1} = kappa_s + dk z_s`` (z standard normal), ``theta_{s+1} = theta_s + l kappa_s``,
    ``p_{s+1} = p_s + l (sin theta_s, cos theta_s)`` in (y, x): cumulative sums, no loop.

    Arguments:
        key: PRNG key.
        sample: :class:`Microtubules` (static).
        shape: (ny, nx) camera field, pixels.
        pixel_nm: pixel size, nm.
        margin_nm: extra border of the growth region when ``garden_px`` is None, nm.

    Returns:
        :class:`Filaments` with ``F = max(count[1], 1)`` filaments of ``S = sample.steps`` segments.
    """
    n_max, steps = max(sample.count[1], 1), sample.steps  # one (undrawn) filament when the count is 0
    k_n, k_start, k_dir, k_len, k_curv = jax.random.split(key, 5)
    lo, hi = _garden(sample, shape, pixel_nm, margin_nm)
    n = jax.random.randint(k_n, (), sample.count[0], sample.count[1] + 1)
    start = lo + (hi - lo) * draws.uniform(k_start, (n_max, 2))
    theta0 = 2.0 * jnp.pi * draws.uniform(k_dir, (n_max, 1))
    length = draws.uniform(k_len, (n_max, 1), minval=sample.length_nm[0], maxval=sample.length_nm[1])
    step_um = sample.step_nm / 1000.0
    dk = sample.curvature_step_per_um * draws.normal(k_curv, (n_max, steps))
    kappa = jnp.cumsum(dk, axis=1) - dk  # curvature during step s: kappa_0 = 0
    theta = theta0 + step_um * (jnp.cumsum(kappa, axis=1) - kappa)
    moves = sample.step_nm * jnp.stack([jnp.sin(theta), jnp.cos(theta)], axis=-1)  # (F, S, 2)
    points = jnp.concatenate([start[:, None, :], start[:, None, :] + jnp.cumsum(moves, axis=1)], axis=1)
    inside = jnp.all((points[:, 1:] >= lo) & (points[:, 1:] <= hi), axis=-1)
    kept = jnp.cumprod(inside, axis=1).astype(bool)  # stops at the first exit
    within_length = (jnp.arange(steps) + 1) * sample.step_nm <= length
    drawn = jnp.arange(n_max) < n
    return Filaments(points, kept & within_length & drawn[:, None], drawn)


def place_emitters(
    key: PRNGKeyArray,
    filaments: Filaments,
    sample: Microtubules,
    shape: tuple[int, int],
    pixel_nm: float,
    margin_nm: float,
) -> tuple[Float[Array, " m"], Float[Array, " m"], Bool[Array, " m"], Int[Array, ""]]:
    """Emitters along the filaments inside the field and its margin, at ``sample.emitters_per_um``.

    Only segments whose midpoint lies within ``margin_nm`` of the field count (light from farther
    away is negligible when the margin is a few PSF widths). Their total length L sets the number
    of emitters ``N ~ Poisson(lambda L)``; each emitter picks a segment with probability
    proportional to its length (inverse CDF over the segments), a uniform position along it and
    a uniform lateral offset within ``width_nm``. The first ``min(N, M)`` of ``M =
    sample.max_emitters`` slots are used.

    Arguments:
        key: PRNG key.
        filaments: :class:`Filaments`.
        sample: :class:`Microtubules` (static).
        shape: (ny, nx) field, pixels.
        pixel_nm: pixel size, nm.
        margin_nm: border around the field whose emitters are kept, nm.

    Returns:
        ``(y_nm, x_nm, mask, n_drawn)``: (M,) positions, nm; (M,) used slots; the Poisson draw N.
    """
    m = sample.max_emitters
    k_n, k_seg, k_along, k_across = jax.random.split(key, 4)
    a, b = filaments.points_nm[:, :-1], filaments.points_nm[:, 1:]
    mid = 0.5 * (a + b)
    lo = -margin_nm
    hi = jnp.array([shape[0] * pixel_nm, shape[1] * pixel_nm]) + margin_nm
    near = jnp.all((mid >= lo) & (mid <= hi), axis=-1) & filaments.valid
    weights = near.reshape(-1).astype(jnp.float32)
    cdf = jnp.cumsum(weights)
    total_um = cdf[-1] * sample.step_nm / 1000.0
    n_drawn = jax.random.poisson(k_n, sample.emitters_per_um * total_um)
    u = jax.random.uniform(k_seg, (m,)) * cdf[-1]
    seg = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, weights.size - 1)
    a, b = a.reshape(-1, 2)[seg], b.reshape(-1, 2)[seg]
    along = draws.uniform(k_along, (m, 1))
    across = sample.width_nm * (draws.uniform(k_across, (m, 1)) - 0.5)
    direction = (b - a) / sample.step_nm
    normal = jnp.stack([direction[:, 1], -direction[:, 0]], axis=-1)
    pos = a + along * (b - a) + across * normal
    mask = (jnp.arange(m) < n_drawn) & (cdf[-1] > 0)
    return pos[:, 0], pos[:, 1], mask, n_drawn


# ---------------------------------------------------------------------------------------------
# optics and camera


def _centres(n: int, pixel_nm: float) -> Array:
    """Centres ``(i + 1/2) a`` of n pixels, nm."""
    return (jnp.arange(n, dtype=jnp.float32) + 0.5) * pixel_nm


def render_frames(
    traces: Float[Array, "t m"],
    y_nm: Float[Array, " m"],
    x_nm: Float[Array, " m"],
    shape: tuple[int, int],
    pixel_nm: float,
    fwhm_nm: float,
    chunk: int = 256,
) -> Float[Array, "t y x"]:
    """Expected photons per pixel of emitters with photon traces, through a pixel-integrated Gaussian PSF.

    ``mu[t, i, j] = sum_m N[t, m] E_y(i; y_m) E_x(j; x_m)``, ``E`` the fraction of a 1D Gaussian
    of s.d. ``s = fwhm / (2 sqrt(2 ln 2))`` in a pixel (:func:`fluojax.optics.pixel_fractions`).
    Light falling outside the field is lost.

    Blinking emitters are dark in most frames, so each frame sums only its emitters with
    ``N[t, m] > 0``: they are packed to the front of an index list (a cumulative sum, no sort)
    and contracted ``chunk`` at a time, ``(E_y[idx] N[t, idx])^T E_x[idx]``, for as many chunks
    as the frame needs (a loop with a data-dependent trip count; under vmap the batch runs the
    largest count, the others adding zeros). Exact whatever the number of emitters on; the cost
    is about ``T x max(chunk, emitters on) x ny x nx`` instead of ``T x m x ny x nx``.

    Arguments:
        traces: (T, m) photons of every emitter in every frame (>= 0; zero for absent emitters).
        y_nm, x_nm: (m,) positions, nm.
        shape: (ny, nx) field, pixels.
        pixel_nm: pixel size a, nm.
        fwhm_nm: PSF full width at half maximum, nm.
        chunk: emitters per contraction (static).
    """
    m = traces.shape[1]
    chunk = max(1, min(chunk, m))
    slots = chunk * (-(-m // chunk))
    s = jnp.full(y_nm.shape, fwhm_to_sigma(fwhm_nm), y_nm.dtype)
    pad = ((0, 1), (0, 0))  # row m: a zero emitter for the unused slots
    ey = jnp.pad(pixel_fractions(_centres(shape[0], pixel_nm), y_nm, s, pixel_nm), pad)
    ex = jnp.pad(pixel_fractions(_centres(shape[1], pixel_nm), x_nm, s, pixel_nm), pad)

    def frame(n_t: Array) -> Array:
        on = n_t > 0
        where = jnp.where(on, jnp.cumsum(on) - 1, slots)
        idx = jnp.full(slots, m).at[where].set(jnp.arange(m), mode="drop")
        weight = jnp.pad(n_t, (0, 1))
        passes = (jnp.sum(on) + chunk - 1) // chunk

        def add(i, acc):
            sel = jax.lax.dynamic_slice(idx, (i * chunk,), (chunk,))
            return acc + (ey[sel] * weight[sel][:, None]).T @ ex[sel]

        return jax.lax.fori_loop(0, passes, add, jnp.zeros(shape, traces.dtype))

    return jax.lax.map(frame, traces)


def peak_fraction(fwhm_nm: float, pixel_nm: float) -> float:
    """Fraction of an emitter's photons in the pixel it is centred on: ``E(0)^2`` of the
    pixel-integrated PSF, ``E(0) = erf(a / (2 sqrt(2) s))``; a Python float, also while tracing.

    Arguments:
        fwhm_nm: PSF FWHM, nm.
        pixel_nm: pixel size a, nm.
    """
    with jax.ensure_compile_time_eval():
        e = float(pixel_fractions(jnp.zeros(1), 0.0, fwhm_to_sigma(fwhm_nm), pixel_nm)[0])
    return e * e


def background_photons(brightness: float, sbr: float | None, fwhm_nm: float, pixel_nm: float) -> float:
    """Background per pixel and frame from a signal-to-background ratio.

    Komen 2024 (Table 5.1) sets sbr = 15 without defining the signal; here the signal is the peak
    pixel of one emitter while on, centred on a pixel: ``b = I_on E(0)^2 / sbr`` photons per pixel
    per frame (``E(0)^2`` from :func:`peak_fraction`: 0.166 for 220 nm FWHM at 100-nm pixels,
    so b = 1.11 photons at I_on = 100). The background thus scales with I_on, so the four SNR
    levels of the thesis keep sbr = 15 while their photon counts fall.

    Arguments:
        brightness: I_on, photons per frame while on.
        sbr: signal-to-background ratio (> 0); None for no background.
        fwhm_nm: PSF FWHM, nm.
        pixel_nm: pixel size, nm.
    """
    if sbr is None:
        return 0.0
    require(sbr > 0, f"signal-to-background ratio {sbr}: must be > 0")
    return brightness * peak_fraction(fwhm_nm, pixel_nm) / sbr


def scmos_camera(
    key: PRNGKeyArray,
    shape: tuple[int, int],
    *,
    offset_adu: float = 100.0,
    offset_sd_adu: float = 1.5,
    gain_adu_per_e: float = 2.0,
    gain_sd_adu_per_e: float = 0.04,
    read_variance_median_e2: float = 2.0,
    read_variance_log_sd: float = 0.7,
    quantize: bool = True,
) -> noise.SCMOS:
    """An sCMOS camera (:class:`fluojax.noise.SCMOS`) with plausible per-pixel maps drawn from a key.

    Offset ``~ N(offset_adu, offset_sd_adu^2)`` ADU, gain ``~ N(gain, gain_sd^2)`` ADU/e-, read
    variance log-normal ``exp(ln(median) + log_sd z)`` e-^2 (a long tail of noisy pixels, as the
    maps of Huang et al. 2013 show). These are generic values, not the measured map of the
    camera Komen 2024 simulates ("Wilky FPS_100"), which is not public. The maps are concrete
    arrays: call this outside jit and pass the camera as a static setting.

    Arguments:
        key: PRNG key of the maps.
        shape: (ny, nx) pixels.
        offset_adu, offset_sd_adu: mean and s.d. of the offset map, ADU.
        gain_adu_per_e, gain_sd_adu_per_e: mean and s.d. of the gain map, ADU per electron.
        read_variance_median_e2, read_variance_log_sd: median (e-^2) and log-s.d. of the read-variance map.
        quantize: floor to whole ADU as the camera's converter does.
    """
    k_o, k_g, k_v = jax.random.split(key, 3)
    offset = offset_adu + offset_sd_adu * np.asarray(draws.normal(k_o, shape))
    gain = gain_adu_per_e + gain_sd_adu_per_e * np.asarray(draws.normal(k_g, shape))
    gain = np.maximum(gain, 0.1 * gain_adu_per_e)
    variance = read_variance_median_e2 * np.exp(read_variance_log_sd * np.asarray(draws.normal(k_v, shape)))
    return noise.SCMOS(
        gain_adu_per_e=gain.astype(np.float32),
        offset_adu=offset.astype(np.float32),
        read_variance_e2=variance.astype(np.float32),
        quantize=quantize,
    )


# ---------------------------------------------------------------------------------------------
# ground truth on the SOFI grid


def sofi_grid_centres_nm(n_pixels: int, order: int, pixel_nm: float) -> Float[Array, " k"]:
    """Centres of the order-n SOFI output pixels along one axis, nm.

    sofipackage's grid (Leutenegger, Geissbuehler, Lukes, Grussmayer et al.) has ``n (N - 4) + 1``
    pixels per side for N camera pixels; output pixel i sits ``1 + i / n`` camera pixels from the
    first camera pixel's centre, i.e. at ``(3/2 + i / n) a`` nm, with side ``a / n``.

    Arguments:
        n_pixels: camera pixels N along the axis.
        order: SOFI order n.
        pixel_nm: camera pixel size a, nm.
    """
    k = order * (n_pixels - 4) + 1
    return (1.5 + jnp.arange(k, dtype=jnp.float32) / order) * pixel_nm


def ground_truth_image(
    y_nm: Float[Array, " m"],
    x_nm: Float[Array, " m"],
    mask: Bool[Array, " m"],
    shape: tuple[int, int],
    pixel_nm: float,
    fwhm_nm: float,
    order: int = 2,
    narrowing: float = 2.0,
) -> Float[Array, "k l"]:
    """The emitters rendered on the order-n SOFI grid with a narrowed PSF, normalised to max 1.

    ``GT[i, j] = sum_m E_y(i; y_m) E_x(j; x_m)`` over the present emitters, ``E`` the fraction
    of a Gaussian of FWHM ``fwhm_nm / narrowing`` in each output pixel of side ``a / n``
    (:func:`sofi_grid_centres_nm`), divided by its maximum (all zeros without emitters). The
    default narrowing 2 is the ideal deconvolved, linearized order-2 reconstruction, whose
    resolution Komen 2024 (Fig. E.2, F.2) takes as "half of the diffraction limit of 220 nm";
    narrowing sqrt(2) is the raw order-2 cumulant's PSF^2.

    Arguments:
        y_nm, x_nm: (m,) emitter positions, nm.
        mask: (m,) present emitters.
        shape: (ny, nx) camera field, pixels.
        pixel_nm: camera pixel size, nm.
        fwhm_nm: PSF FWHM of the camera image, nm.
        order: SOFI order n of the grid.
        narrowing: factor by which the FWHM shrinks.

    Returns:
        (n (ny - 4) + 1, n (nx - 4) + 1) image, float32, max 1.
    """
    s = jnp.full(y_nm.shape, fwhm_to_sigma(fwhm_nm / narrowing), jnp.float32)
    sub = pixel_nm / order
    ey = pixel_fractions(sofi_grid_centres_nm(shape[0], order, pixel_nm), y_nm, s, sub)
    ex = pixel_fractions(sofi_grid_centres_nm(shape[1], order, pixel_nm), x_nm, s, sub)
    image = jnp.einsum("m,my,mx->yx", mask.astype(jnp.float32), ey, ex)
    peak = jnp.max(image)
    return jnp.where(peak > 0, image / jnp.where(peak > 0, peak, 1.0), 0.0)


# ---------------------------------------------------------------------------------------------
# the movie


@dataclasses.dataclass(frozen=True)
class SofiSettings:
    """Everything that fixes a simulated SOFI movie's physics and array sizes (static under jit).

    Attributes:
        shape: (ny, nx) camera field, pixels.
        n_frames: movie length, frames.
        pixel_nm: camera pixel size (in the sample), nm.
        fwhm_nm: PSF FWHM, nm.
        sbr: signal-to-background ratio (see :func:`background_photons`); None: no background.
        blinking: :class:`Blinking`.
        sample: :class:`Microtubules`.
        camera: a :class:`fluojax.noise.Camera` (photons in, ADU out): ``noise.IdealCamera()``
            (shot noise only, the default), ``noise.SCMOS`` (:func:`scmos_camera`; the presets)
            or ``noise.EMCCD`` (e.g. ``noise.EMCCD.challenge_2016()``).
        margin_px: emitters within this many pixels outside the field are simulated (their light
            reaches the field); 0 leaves only the field. The default 4 pixels is 4.3 s.d. of the
            220-nm PSF at 100-nm pixels: an emitter farther out puts < 1e-5 of its light inside.
        cycles: off/on cycles per emitter; None: :func:`dwell_cycles`.
        gt_order: SOFI order of the ground-truth grid.
        gt_narrowing: FWHM narrowing of the ground truth (2: ideal linearized SOFI).
    """

    shape: tuple[int, int] = (32, 32)
    n_frames: int = 100
    pixel_nm: float = 100.0
    fwhm_nm: float = 220.0
    sbr: float | None = 15.0
    blinking: Blinking = Blinking()
    sample: Microtubules = Microtubules()
    camera: noise.Camera = noise.IdealCamera()
    margin_px: float = 4.0
    cycles: int | None = None
    gt_order: int = 2
    gt_narrowing: float = 2.0

    def __post_init__(self):
        require(min(self.shape) >= 5, f"field {self.shape} pixels: the SOFI grid needs at least 5 x 5")
        require(self.n_frames >= 1, f"{self.n_frames} frames: need at least 1")
        require(self.pixel_nm > 0, f"pixel size {self.pixel_nm} nm: must be > 0")
        require(self.fwhm_nm > 0, f"PSF FWHM {self.fwhm_nm} nm: must be > 0")
        require(self.margin_px >= 0, f"margin {self.margin_px} pixels: must be >= 0")
        require(self.gt_order >= 1, f"ground-truth order {self.gt_order}: must be >= 1")
        require(self.gt_narrowing > 0, f"ground-truth narrowing {self.gt_narrowing}: must be > 0")

    @property
    def background(self) -> float:
        """Background photons per pixel per frame (:func:`background_photons`)."""
        return background_photons(self.blinking.brightness, self.sbr, self.fwhm_nm, self.pixel_nm)

    def cycles_per_emitter(self, n_frames: int | None = None) -> int:
        """The off/on cycles drawn per emitter for ``n_frames`` (default ``self.n_frames``)."""
        t = self.n_frames if n_frames is None else n_frames
        if self.cycles is not None:
            return self.cycles
        return dwell_cycles(t, self.blinking.tau_on, self.blinking.tau_off)


class SofiMovie(NamedTuple):
    """A simulated movie and its truth.

    Attributes:
        frames: (T, ny, nx) camera counts, ADU (photo-electrons for the ideal camera), float32.
        photons: (T, ny, nx) expected photons per pixel (signal + background), before noise.
        y_nm, x_nm: (M,) emitter positions, nm (meaningless where ``mask`` is False).
        brightness: (M,) photons per frame while on (0 for absent emitters).
        mask: (M,) present emitters.
        traces: (T, M) photons of every emitter in every frame.
        ground_truth: (n (ny - 4) + 1, n (nx - 4) + 1) :func:`ground_truth_image`, max 1.
        n_drawn: the Poisson emitter count before capping at M (more than ``mask.sum()`` only
            when the emitter arrays overflowed).
    """

    frames: Float[Array, "t y x"]
    photons: Float[Array, "t y x"]
    y_nm: Float[Array, " m"]
    x_nm: Float[Array, " m"]
    brightness: Float[Array, " m"]
    mask: Bool[Array, " m"]
    traces: Float[Array, "t m"]
    ground_truth: Float[Array, "k l"]
    n_drawn: Int[Array, ""]


@functools.partial(jax.jit, static_argnames=("settings", "n_frames"))
def simulate_movie(key: PRNGKeyArray, settings: SofiSettings, n_frames: int | None = None) -> SofiMovie:
    """A SOFI movie of blinking emitters on random microtubules, read out by a camera.

    Steps (one key split four ways): filaments (:func:`grow_microtubules`), emitters on them
    within ``margin_px`` of the field (:func:`place_emitters`), their on-intervals
    (:func:`draw_on_intervals`, :func:`on_time_per_frame`; photons = brightness x on-time per
    frame), the expected image (:func:`render_frames`) plus the uniform background, the camera
    read-out (``settings.camera.counts``) and the ground truth (:func:`ground_truth_image`).
    Jit-compiled with static settings; ``jax.vmap(lambda k: simulate_movie(k, s))`` gives a batch.

    Arguments:
        key: PRNG key.
        settings: :class:`SofiSettings` (static).
        n_frames: movie length (static); None: ``settings.n_frames``.

    Returns:
        :class:`SofiMovie`.
    """
    t = settings.n_frames if n_frames is None else n_frames
    k_mt, k_em, k_blink, k_cam = jax.random.split(key, 4)
    margin = settings.margin_px * settings.pixel_nm
    filaments = grow_microtubules(k_mt, settings.sample, settings.shape, settings.pixel_nm, margin)
    y, x, mask, n_drawn = place_emitters(k_em, filaments, settings.sample, settings.shape, settings.pixel_nm, margin)
    intervals = draw_on_intervals(
        k_blink, settings.sample.max_emitters, settings.blinking, settings.cycles_per_emitter(t)
    )
    brightness = jnp.where(mask, jnp.float32(settings.blinking.brightness), 0.0)
    traces = on_time_per_frame(intervals, t) * brightness
    photons = render_frames(traces, y, x, settings.shape, settings.pixel_nm, settings.fwhm_nm) + settings.background
    frames = settings.camera.counts(k_cam, photons)
    gt = ground_truth_image(
        y, x, mask, settings.shape, settings.pixel_nm, settings.fwhm_nm, settings.gt_order, settings.gt_narrowing
    )
    return SofiMovie(frames, photons, y, x, brightness, mask, traces, gt, n_drawn)


# ---------------------------------------------------------------------------------------------
# presets


@functools.lru_cache(maxsize=8)
def _preset_camera(shape: tuple[int, int]) -> noise.SCMOS:
    """The presets' sCMOS camera of a field shape (maps from key 0), one object per shape so
    compiled simulations are reused."""
    return scmos_camera(jax.random.key(0), shape)


def _thesis_blinking(density_level: int, snr_level: int) -> Blinking:
    """Komen 2024's photophysics of one (density, SNR) cell, in frames."""
    p = KOMEN_2024
    require(0 <= density_level < len(p.offtime_ms), f"density level {density_level}: Komen 2024 has 0-2")
    require(0 <= snr_level < len(p.ion), f"SNR level {snr_level}: Komen 2024 has 0-3")
    ms_per_frame = 1000.0 / p.fps
    return Blinking(
        tau_on=p.ontime_ms / ms_per_frame,
        tau_off=p.offtime_ms[density_level] / ms_per_frame,
        tau_bleach=p.avbleach_s * p.fps,
        brightness=p.ion[snr_level],
    )


def thesis_preset(
    density_level: int,
    snr_level: int,
    shape: tuple[int, int] = (128, 128),
    camera: noise.Camera | None = None,
    filament_width_nm: float | None = None,
) -> SofiSettings:
    """Komen 2024's simulation settings (Tables 5.1-5.2, §5.1.1) for one cell of its 3 x 4 grid.

    fps 100 and 1 s of recording -> 100 frames; PSF FWHM 220 nm; sbr 15; 100-nm pixels; 5000
    emitters/um^2 on 10-nm filaments (50 per um); on-time 10 ms = 1 frame; off-time 600 / 1200 /
    2400 ms = 60 / 120 / 240 frames for density levels 0 / 1 / 2 (densest first); bleaching after
    500 s = 50,000 frames of on-time on average; I_on 100 / 80 / 60 / 40 photons per frame for SNR
    levels 0-3 (best first); 20-100 filaments grown over a 25.6-um (256-pixel) square of which a
    ``shape`` field is imaged (the thesis crops 128 x 128). The camera defaults to
    :func:`scmos_camera` maps from key 0 (generic, not the thesis's measured map).

    ``filament_width_nm`` is our addition: the labelled width over which the 5000 emitters/um^2
    are spread (default the thesis's 10-nm grid step, 50 emitters per um of filament; e.g. 50 nm,
    about the apparent width of an immunolabelled microtubule, gives 250 per um). The thesis's
    Pearson figures need a denser labelling than the literal reading (docs/sofi.md, §9).

    Arguments:
        density_level: 0, 1 or 2 (off-time 600, 1200, 2400 ms).
        snr_level: 0, 1, 2 or 3 (I_on 100, 80, 60, 40).
        shape: (ny, nx) field, pixels.
        camera: a :class:`fluojax.noise.Camera`; None: the preset sCMOS.
        filament_width_nm: labelled filament width, nm, in (0, 1000]; None: 10 (the thesis's grid step).
    """
    p = KOMEN_2024
    width = p.grid_nm if filament_width_nm is None else float(filament_width_nm)
    require(0 < width <= 1000, f"filament width {width:g} nm: must be > 0 and at most 1000 (1 um)")
    garden_px = round(p.grid_points * p.grid_nm / p.pixel_nm)
    sample = Microtubules(
        count=p.filaments,
        garden_px=max(garden_px, *shape),
        density_per_um2=p.dens_per_um2,
        width_nm=width,
        max_emitters=_max_emitters(shape, 2.0 * max(1.0, width / p.grid_nm)),
    )
    return SofiSettings(
        shape=shape,
        n_frames=round(p.fps * p.rectime_s),
        pixel_nm=p.pixel_nm,
        fwhm_nm=p.fwhm_psf_nm,
        sbr=p.sbr,
        blinking=_thesis_blinking(density_level, snr_level),
        sample=sample,
        camera=_preset_camera(shape) if camera is None else camera,
    )


def _max_emitters(shape: tuple[int, int], per_pixel: float) -> int:
    """Emitter slots: ``per_pixel`` per field pixel, rounded up to a multiple of 1024.

    Sized from 2,000 fields of each preset: a 128 x 128 thesis field holds 8,300 emitters on
    average (99.9th percentile 18,600, maximum 20,700) against 32,768 slots (2 per pixel); a
    32 x 32 small field 740 (99.9th percentile 1,690, maximum 1,735) against 3,072 (3 per pixel).
    """
    return int(1024 * math.ceil(per_pixel * shape[0] * shape[1] / 1024))


def small_preset(
    density_level: int,
    snr_level: int,
    size: int = 32,
    camera: noise.Camera | None = None,
    filament_width_nm: float | None = None,
) -> SofiSettings:
    """A CPU-sized variant of :func:`thesis_preset` for on-the-fly training: a ``size x size``
    field with the thesis's photophysics, optics and 100 frames, and 3-15 filaments grown over
    the field (plus margin) so that small fields are neither empty nor crowded (a choice, not a
    thesis number).

    Arguments:
        density_level: 0, 1 or 2 (off-time 600, 1200, 2400 ms).
        snr_level: 0, 1, 2 or 3 (I_on 100, 80, 60, 40).
        size: field side, pixels.
        camera: a :class:`fluojax.noise.Camera`; None: the preset sCMOS.
        filament_width_nm: labelled filament width, nm (:func:`thesis_preset`); None: 10.
    """
    base = thesis_preset(density_level, snr_level, (size, size), camera, filament_width_nm)
    side_um = size * KOMEN_2024.pixel_nm / 1000.0
    sample = dataclasses.replace(
        base.sample,
        count=(3, 15),
        garden_px=None,
        length_nm=(1000.0, 2000.0 * side_um),
        max_emitters=_max_emitters((size, size), 3.0 * max(1.0, base.sample.width_nm / KOMEN_2024.grid_nm)),
    )
    return dataclasses.replace(base, sample=sample)
