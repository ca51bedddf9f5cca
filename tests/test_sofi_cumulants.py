"""sofi.cumulants against independent references: the sofipackage combination table, brute-force
cumulants from raw moments, the Bernoulli-blinker forward model of sofi.models, noise, frame blocks,
shapes and finite differences."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fluojax.io import InputError
from fluojax.sofi import cumulants, cumulants_cpu, models

pytestmark = pytest.mark.xdist_group("sofi_cumulants")  # its session fixtures are built once, on one worker

# --------------------------------------------------------------------------- references


def _all_partitions(n):
    """Every set partition of range(n), singletons included, from restricted growth strings."""
    out = []

    def grow(prefix, top):
        if len(prefix) == n:
            out.append([[k for k in range(n) if prefix[k] == b] for b in range(top + 1)])
            return
        for b in range(top + 2):
            grow([*prefix, b], max(top, b))

    grow([0], 0)
    return out


def _brute_joint_cumulant(series):
    """Joint cumulant of the rows of ``series`` (n, T, ...) from RAW moments over all partitions:
    sum_P (-1)^(|P|-1) (|P|-1)! prod_B mean_t prod_{k in B} X_k (no centring)."""
    n = len(series)
    total = 0.0
    for part in _all_partitions(n):
        term = (-1) ** (len(part) - 1) * math.factorial(len(part) - 1)
        for block in part:
            term = term * np.mean(np.prod([series[k] for k in block], axis=0), axis=0)
        total = total + term
    return total


def _brute_sublattices(stack, order, lags=None, grid="sofipackage"):
    """Every combination's cumulant by :func:`_brute_joint_cumulant` on explicit shifted copies."""
    stack = np.asarray(stack, dtype=np.float64)
    t, big_h, big_w = stack.shape
    lags = lags or (0,) * order
    g = cumulants.GRIDS[grid]
    h, w = g.sublattice_shape((big_h, big_w))
    # a constant appended row/column: any joint cumulant with it is 0 (full grid, past the edge)
    padded = np.pad(stack, ((0, 0), (0, g.pad), (0, g.pad)))
    t_eff = t - max(lags)
    out = np.zeros((order, order, h, w))
    for m, offsets in enumerate(g.combinations(order).offsets):
        series = []
        for k, (dy, dx) in enumerate(offsets):
            y0, x0 = g.first_reference[0] + dy, g.first_reference[1] + dx
            series.append(padded[lags[k] : lags[k] + t_eff, y0 : y0 + h, x0 : x0 + w])
        value = _brute_joint_cumulant(series)
        out[m // order, m % order] = value
    return out


def _blinking_movie(rng, frames, shape, fwhm, noise_sigma=0.0):
    """Independent Bernoulli blinkers, i.i.d. frames: I = sum_k eps_k s_k(t) U(r - r_k) (+ N(0, s^2))."""
    pos = np.array([[3.3, 4.1], [6.0, 7.6], [8.2, 3.5], [5.1, 5.9]])
    eps = np.array([1.0, 0.8, 1.2, 0.9])
    rho = np.array([0.1, 0.3, 0.4, 0.15])
    sigma = fwhm / math.sqrt(8 * math.log(2))
    centres = np.arange(shape[0]) + 0.5
    ey = np.exp(-0.5 * ((centres[None] - pos[:, :1]) / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)
    centres = np.arange(shape[1]) + 0.5
    ex = np.exp(-0.5 * ((centres[None] - pos[:, 1:]) / sigma) ** 2) / (math.sqrt(2 * math.pi) * sigma)
    psf = ey[:, :, None] * ex[:, None, :]  # (K, H, W), point-sampled, area 1
    s = rng.random((frames, len(eps))) < rho
    movie = np.einsum("tk,k,kyx->tyx", s.astype(np.float64), eps, psf)
    noisy = movie + noise_sigma * rng.standard_normal(movie.shape)
    return movie, noisy, (pos, eps, rho)


def _batch_se(values_per_batch):
    """Batch-means standard error of the mean of the batch estimates (axis 0)."""
    b = values_per_batch.shape[0]
    return values_per_batch.std(axis=0, ddof=1) / math.sqrt(b)


# --------------------------------------------------------------------------- combination table


def test_sofipackage_combination_distances():
    """S = sum of squared pairwise distances of each virtual pixel's combination, as sofipackage's
    selection rule gives them (order 2: 4, 1, 1, 2; order 3: 6 on-grid, 4 inner, 8 edge; order 4:
    8 at the block centre, 16 on-grid)."""
    assert cumulants.combinations(2).sum_sq.tolist() == [4, 1, 1, 2]
    s3 = cumulants.combinations(3).sum_sq.reshape(3, 3)
    assert s3[0, 0] == 6
    assert s3[1:, 1:].ravel().tolist() == [4, 4, 4, 4]
    assert sorted(s3[0, 1:].tolist() + s3[1:, 0].tolist()) == [8, 8, 8, 8]
    s4 = cumulants.combinations(4).sum_sq.reshape(4, 4)
    assert s4[2, 2] == 8 and s4[0, 0] == 16
    assert set(s4.ravel().tolist()) == {8, 11, 12, 14, 15, 16}


@pytest.mark.parametrize("order", [2, 3, 4])
def test_sofipackage_ties_are_broken_in_sofigrids_order(order):
    """sofiGrids (sofipackage, Leutenegger et al.) numbers the 16 pixels p = 0..15 of the
    neighbourhood as (p & 3, p >> 2) - the first coordinate indexes rows (the stack is read as
    stack(x, y, t) with x the row) - lists nchoosek(0:15, n) in lexicographic order, sorts it by S
    (a stable sort) and keeps the first set per centroid. On-grid at order 2 that is pixels 1 and
    9: row 0, columns -1 and +1 (the vertical pair has the same S)."""
    sets = list(itertools.combinations(range(16), order))
    coords = np.array([[(p & 3, p >> 2) for p in members] for members in sets]) - 1  # (row, column) offsets
    s = np.array([((c[:, None] - c[None]) ** 2).sum() // 2 for c in coords])
    first = {}
    for k in np.argsort(s, kind="stable"):
        centre = tuple(coords[k].sum(axis=0))
        if centre not in first and all(0 <= v < order for v in centre):
            first[centre] = coords[k]
    table = cumulants.combinations(order)
    for (i, j), got in zip(table.positions * order, table.offsets, strict=True):
        want = first[(round(i), round(j))]
        assert sorted(map(tuple, got.tolist())) == sorted(map(tuple, want.tolist()))
    if order == 2:
        assert sorted(map(tuple, table.offsets[0].tolist())) == [(0, -1), (0, 1)]


@pytest.mark.parametrize("grid", ["sofipackage", "full"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_combinations_sit_at_their_virtual_pixel(order, grid):
    """Row i n + j: n pixels in the neighbourhood (distinct on sofipackage's grid) whose centroid is
    (i/n, j/n), and S recomputed from the offsets."""
    c = cumulants.combinations(order, grid)
    assert c.offsets.shape == (order * order, order, 2)
    lo, hi = (-1, 2) if grid == "sofipackage" else (0, 1)
    assert c.offsets.min() >= lo and c.offsets.max() <= hi
    for m, pts in enumerate(c.offsets):
        if grid == "sofipackage":
            assert len({tuple(p) for p in pts}) == order
        np.testing.assert_allclose(pts.mean(axis=0), [m // order / order, m % order / order])
        np.testing.assert_allclose(c.positions[m], pts.mean(axis=0))
        s = sum(((pts[a] - pts[b]) ** 2).sum() for a in range(order) for b in range(a + 1, order))
        assert c.sum_sq[m] == s


# --------------------------------------------------------------------------- brute force


def _cross_xla(stack, order, lags=None, grid="sofipackage"):
    """The XLA path in float64."""
    with jax.enable_x64(True):
        return np.asarray(cumulants.cross_cumulant_sublattices(stack, order, lags=lags, grid=grid))


def _cross_cpu(stack, order, lags=None, grid="sofipackage"):
    """The numba CPU kernel (float32 sums)."""
    return cumulants_cpu.cross_cumulants_cpu(np.asarray(stack, np.float32), (order,), lags=lags, grid=grid)[order]


# Tolerances per implementation, relative to the image's largest |value|. float64 (XLA): sums of a
# few thousand terms of size ~10, rounding ~1e-12. float32 (the kernel): the data are rounded to
# float32 (2^-24 relative), each of up to 4 factors and the running sums over 1000 frames add
# about sqrt(1000) 2^-24 ~ 2e-6; 2e-5 leaves a margin, far below any wrong term (order 1).
IMPLEMENTATIONS = {"xla": (_cross_xla, 1e-9), "cpu": (_cross_cpu, 2e-5)}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("lags", [None, "lagged"])
@pytest.mark.parametrize("order", [2, 3, 4])
def test_cross_cumulants_equal_brute_force_from_raw_moments(order, lags, implementation):
    """Both paths (central products, partitions without singletons, shared terms) equal the
    joint cumulant from raw moments over all partitions, with and without time lags."""
    rng = np.random.default_rng(order)
    # the zero-lag shape is the blinking tests' batch shape: one compilation for both
    stack = rng.gamma(2.0, 1.0, size=(1000, 12, 12) if lags is None else (40, 7, 8))
    if implementation == "cpu":
        stack = stack.astype(np.float32)  # the reference on the values the kernel sees
    tau = None if lags is None else {2: (0, 2), 3: (0, 2, 1), 4: (0, 0, 1, 1)}[order]
    fn, rel = IMPLEMENTATIONS[implementation]
    want = _brute_sublattices(stack, order, tau)
    np.testing.assert_allclose(fn(stack, order, tau), want, atol=rel * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("order", [2, 3, 4])
def test_full_grid_equals_brute_force(order, implementation):
    """The full grid's multisets (repeated pixels) and the zeros past the last row/column."""
    rng = np.random.default_rng(5)
    stack = rng.gamma(2.0, 1.0, size=(30, 5, 6))
    if implementation == "cpu":
        stack = stack.astype(np.float32)
    fn, rel = IMPLEMENTATIONS[implementation]
    want = _brute_sublattices(stack, order, grid="full")
    np.testing.assert_allclose(fn(stack, order, grid="full"), want, atol=rel * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("shape", [(12, 4, 4), (12, 5, 37), (12, 37, 5), (12, 43, 29)])
def test_cpu_kernel_handles_any_image_size(shape):
    """The kernel's strips of rows and vector loops over a row: heights that leave a short last
    strip (or one strip), widths that are not a multiple of the vector width, the smallest image
    the grid allows; against the brute force (tolerance as the suite's float32 entry)."""
    stack = np.random.default_rng(sum(shape)).gamma(2.0, 1.0, shape).astype(np.float32)
    for order in (2, 3, 4):
        want = _brute_sublattices(stack, order)
        np.testing.assert_allclose(_cross_cpu(stack, order), want, atol=2e-5 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("order", [2, 3, 4, 5, 6])
def test_auto_cumulants_equal_brute_force(order):
    """Zero lag through the central-moment recursion = raw-moment partition formula of n copies."""
    rng = np.random.default_rng(order)
    stack = rng.gamma(2.0, 1.0, size=(1000, 12, 12))  # the blinking tests' batch shape
    with jax.enable_x64(True):
        got = np.asarray(cumulants.auto_cumulants(stack, order))
    want = _brute_joint_cumulant([stack] * order)
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=1e-9)


def test_lagged_auto_cumulant_equals_brute_force():
    rng = np.random.default_rng(2)
    stack = rng.gamma(2.0, 1.0, size=(50, 3, 4))
    lags = (0, 1, 3)
    with jax.enable_x64(True):
        got = np.asarray(cumulants.auto_cumulants(stack, 3, lags=lags))
    want = _brute_joint_cumulant([stack[lag : lag + 47] for lag in lags])
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=1e-9)


# --------------------------------------------------------------------------- physics


@pytest.fixture(scope="session")
def blinking():
    """20,000 i.i.d. frames of 12 x 12 (float64) with and without N(0, 0.05^2) pixel noise."""
    rng = np.random.default_rng(20)
    return _blinking_movie(rng, 20_000, (12, 12), fwhm=2.5, noise_sigma=0.05)


def _batches(stack, fn, batches=20):
    """Estimates of 20 consecutive batches of 1000 frames, float64: (batches, ...).

    Their mean is the estimate under test (the frame-block estimator; its O(1/1000) bias is far
    below the spread) and their s.d. / sqrt(20) its batch-means standard error."""
    with jax.enable_x64(True):
        return np.stack([np.asarray(fn(b)) for b in np.split(stack, batches)])


_CROSS_BATCHES = {}


def _cross_batches(blinking, which, order):
    """:func:`_batches` of the cross-cumulants of the clean (0) or noisy (1) movie, computed once."""
    if (which, order) not in _CROSS_BATCHES:
        # called as the brute-force test calls it, so the compilation is shared
        _CROSS_BATCHES[which, order] = _batches(
            blinking[which], lambda s: cumulants.cross_cumulant_sublattices(s, order, lags=None)
        )
    return _CROSS_BATCHES[which, order]


# Tolerances: 6 batch-means standard errors (the largest over the image) for every entry. The
# relative sampling error of an n-th order estimate grows with n (~2.4/sqrt(T) of the signal at
# n = 3, rho = 0.2), so the check that a test can fail is that the tolerance stays under 20% of
# the peak: well below the errors of a wrong layout (neighbouring sub-lattices differ by their
# distance factors, 0.5 at order 2), a wrong f_n or a wrong PSF power.


@pytest.mark.parametrize("order", [2, 3, 4])
def test_bernoulli_blinkers_cross_cumulants_match_the_model(blinking, order):
    """Sub-lattices of independent Bernoulli blinkers = sum_k eps^n f_n(rho) prod_j U (sofi.models)."""
    _, _, (pos, eps, rho) = blinking
    est = _cross_batches(blinking, 0, order)
    with jax.enable_x64(True):
        want = np.asarray(models.expected_sublattices(pos, eps, rho, 2.5, (12, 12), order))
    tol = 6 * _batch_se(est).max()
    assert tol < 0.2 * np.abs(want).max()
    np.testing.assert_allclose(est.mean(axis=0), want, atol=tol)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_bernoulli_blinkers_auto_cumulants_match_the_model(blinking, order):
    movie, _, (pos, eps, rho) = blinking
    est = _batches(movie, lambda s: cumulants.auto_cumulants(s, order))
    with jax.enable_x64(True):
        want = np.asarray(models.expected_auto_cumulant(order, pos, eps, rho, 2.5, (12, 12)))
    tol = 6 * _batch_se(est).max()
    assert tol < 0.2 * np.abs(want).max()
    np.testing.assert_allclose(est.mean(axis=0), want, atol=tol)


@pytest.mark.parametrize("order", [2, 3, 4])
def test_gaussian_noise_adds_nothing_to_cross_cumulants(blinking, order):
    """Distinct pixels: the noisy and the clean movie give the same cross-cumulants up to the
    sampling error of the noise terms (which average to 0)."""
    diff = _cross_batches(blinking, 1, order) - _cross_batches(blinking, 0, order)
    # 6 batch-means standard errors of the difference; the noise variance 2.5e-3 (what a repeated
    # pixel would add at order 2) is far above it, so a noise term would be seen
    tol = 6 * _batch_se(diff).max()
    if order == 2:
        assert tol < 0.1 * 0.05**2
    assert np.abs(diff.mean(axis=0)).max() < tol


def test_gaussian_noise_adds_its_variance_to_the_second_auto_cumulant(blinking):
    clean, noisy, _ = blinking
    gain = _batches(noisy, lambda s: cumulants.auto_cumulants(s, 2)) - _batches(
        clean, lambda s: cumulants.auto_cumulants(s, 2)
    )
    tol = 6 * _batch_se(gain).max()  # 6 batch-means s.e., under 20% of sigma^2
    assert tol < 0.2 * 0.05**2
    np.testing.assert_allclose(gain.mean(axis=0), 0.05**2, atol=tol)


# --------------------------------------------------------------------------- grids, blocks, gradients


@pytest.mark.parametrize("order", [2, 3, 4])
def test_interleaved_size_is_n_times_n_minus_4_plus_1(order):
    """sofipackage: 128 -> n (128 - 4) + 1 (249 at order 2); full grid: n (128 - 1) + 1 (255)."""
    spec = jax.ShapeDtypeStruct((8, 128, 128), jnp.float32)
    for grid, side in (("sofipackage", order * 124 + 1), ("full", order * 127 + 1)):
        out = jax.eval_shape(
            lambda s, g=grid: cumulants.interleave(cumulants.cross_cumulant_sublattices(s, order, grid=g)), spec
        )
        assert out.shape == (side, side)
    assert cumulants.interleave(jnp.zeros((2, 2, 125, 125))).shape == (249, 249)


def test_interleave_places_sublattice_ij_at_offset_ij():
    sub = np.random.default_rng(0).random((3, 3, 4, 5)).astype(np.float32)
    image = np.asarray(cumulants.interleave(sub))
    assert image.shape == (10, 13)
    for i in range(3):
        for j in range(3):
            for a in range(4):
                for b in range(5):
                    if 3 * a + i < 10 and 3 * b + j < 13:
                        assert image[3 * a + i, 3 * b + j] == sub[i, j, a, b]


def test_frame_blocks_average_the_per_block_cumulants():
    """block_frames in memory and mean_over_blocks from an iterator = the mean of per-block results
    (the 10 trailing frames that fill no block are left out)."""
    stack = np.random.default_rng(3).gamma(2.0, 1.0, size=(70, 6, 7)).astype(np.float32)
    per_block = [np.asarray(cumulants.cross_cumulant_sublattices(stack[k : k + 20], 2)) for k in (0, 20, 40)]
    blocked = np.asarray(cumulants.cross_cumulant_sublattices(stack, 2, block_frames=20))
    streamed = cumulants.mean_over_blocks(
        (stack[k : k + 20] for k in (0, 20, 40)), lambda b: cumulants.cross_cumulant_sublattices(b, 2)
    )
    # float32 means of 3 blocks: a few ulp
    np.testing.assert_allclose(blocked, np.mean(per_block, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(streamed, np.mean(per_block, axis=0), rtol=1e-5, atol=1e-6)
    auto = np.asarray(cumulants.auto_cumulants(stack, 3, block_frames=20))
    want = np.mean([np.asarray(cumulants.auto_cumulants(stack[k : k + 20], 3)) for k in (0, 20, 40)], axis=0)
    np.testing.assert_allclose(auto, want, rtol=1e-5, atol=1e-6)


def test_blocks_of_different_lengths_weigh_by_their_frames_and_keep_the_structure_of_fn():
    """mean_over_blocks of a 20- and a 30-frame block = (20 f(B_1) + 30 f(B_2)) / 50, for every
    leaf of a pytree-valued fn (float32 cumulants of each block, averaged in float64)."""
    stack = np.random.default_rng(4).gamma(2.0, 1.0, size=(50, 6, 7)).astype(np.float32)

    def fn(b):
        return {"k2": cumulants.cross_cumulant_sublattices(b, 2), "mean": np.mean(b, axis=0)}

    got = cumulants.mean_over_blocks([stack[:20], stack[20:]], fn)
    for key in ("k2", "mean"):
        want = (20 * np.asarray(fn(stack[:20])[key], np.float64) + 30 * np.asarray(fn(stack[20:])[key])) / 50
        np.testing.assert_allclose(np.asarray(got[key]), want, rtol=1e-6, atol=1e-7)  # float32 rounding


@pytest.mark.parametrize(
    "cumulant",
    [
        lambda s: cumulants.cross_cumulant_sublattices(s, 2, lags=(1, 0)),
        lambda s: cumulants.auto_cumulants(s, 4, lags=(0, 1, 1, 2)),  # pair terms of the partitions
    ],
    ids=["cross2", "auto4"],
)
def test_gradient_through_the_stack_matches_finite_differences(cumulant):
    rng = np.random.default_rng(0)
    stack = rng.gamma(2.0, 1.0, size=(12, 5, 5))
    direction = rng.standard_normal(stack.shape)
    with jax.enable_x64(True):
        weights = jnp.asarray(rng.standard_normal(np.shape(cumulant(stack))))

        def loss(s):
            return jnp.sum(weights * cumulant(s))

        grad = jax.grad(loss)(jnp.asarray(stack))
        h = 1e-5
        fd = (loss(stack + h * direction) - loss(stack - h * direction)) / (2 * h)
        # central difference of a polynomial in float64: error O(h^2) ~ 1e-10 relative
        assert float(jnp.sum(grad * direction)) == pytest.approx(float(fd), rel=1e-6)


def test_vmap_over_stacks_equals_a_loop():
    stacks = np.random.default_rng(4).gamma(2.0, 1.0, size=(3, 10, 5, 6)).astype(np.float32)
    batched = jax.vmap(lambda s: cumulants.cross_cumulant_sublattices(s, 2))(stacks)
    for k in range(3):
        np.testing.assert_allclose(batched[k], cumulants.cross_cumulant_sublattices(stacks[k], 2), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: cumulants.cross_cumulant_sublattices(s, 5), "order 5: cross-cumulants are built for orders 2-4"),
        (lambda s: cumulants.cross_cumulant_sublattices(s[:3], 2), "3 frames"),
        (lambda s: cumulants.cross_cumulant_sublattices(s[:, :3], 2), "image of 3 x 6 pixels"),
        (lambda s: cumulants.cross_cumulant_sublattices(s, 2, lags=(0,)), "1 lags for order 2"),
        (lambda s: cumulants.cross_cumulant_sublattices(s, 2, lags=(0, 8)), "10 frames: order 2 with lags up to 8"),
        (lambda s: cumulants.auto_cumulants(s, 7), "order 7: auto-cumulants"),
        (lambda s: cumulants.cross_cumulant_sublattices(s, 2, grid="hex"), "grid 'hex'"),
    ],
)
def test_bad_input_is_one_input_error(call, message):
    with pytest.raises(InputError, match=message):
        call(np.ones((10, 6, 6), np.float32))


def test_strips_of_rows_give_the_same_cumulants(monkeypatch):
    """Wide images are summed in strips of rows (the last one overlapping): force 2-row strips."""
    monkeypatch.setattr(cumulants, "CHUNK_PIXELS", 8 * 2 * 9)  # 8 frames x 2 rows x 9 columns
    stack = np.random.default_rng(6).gamma(2.0, 1.0, size=(30, 12, 9))  # a shape no other test compiles
    with jax.enable_x64(True):
        got = np.asarray(cumulants.cross_cumulant_sublattices(stack, 2))
    np.testing.assert_allclose(got, _brute_sublattices(stack, 2), atol=1e-9, rtol=1e-9)
