"""SOFI cumulants of an image stack: per-pixel auto-cumulants and cross-cumulants with virtual pixels.

The n-th order joint cumulant of the fluctuations of n pixels ``r_1..r_n`` is, for a mean-subtracted
stack ``d = I - <I>_t``, the sum over the set partitions P of the n pixels that have no singleton
part (a singleton's mean is 0) of ``(-1)^(|P|-1) (|P|-1)! prod_{B in P} <prod_{j in B} d(r_j)>_t``
(Dertinger et al. 2009). Cross-cumulants of *distinct* pixels carry no noise terms and sit at the
pixels' centroid, which adds virtual pixels (Dertinger et al. 2010); which pixel sets are used and
where they land is a grid kind (:class:`Grid`, registry :data:`GRIDS`): sofipackage's 4x4
neighbourhood (the default; sofipackage by Leutenegger, Geissbuehler, Lukes, Grussmayer et al.)
or the classic full grid. Results are ``(n, n, h, w)`` sub-lattices (entry ``[i, j]`` = the virtual
pixel at (+i/n, +j/n) camera pixels from the reference pixel) that :func:`interleave` puts on one
grid. Everything is pure JAX: jit-compiled with the order static, vmap- and grad-able; long stacks
are cut into frame blocks whose cumulants are averaged, in memory or from an iterator of blocks.
Each distinct product of centred pixels ("term", up to a translation) is summed over the frames
once and shared by every combination and partition that needs it (order 4: 25 terms for 16
virtual pixels), in one cache-sized pass over the frames (see ``_term_sums_fast``). On a CPU,
:mod:`fluojax.sofi.cumulants_cpu` sums the same terms with a numba kernel (values only) and
assembles them with the same :func:`combine_terms`.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from fluojax.io import require

__all__ = [
    "GRIDS",
    "Combinations",
    "FullGrid",
    "Grid",
    "SofipackageGrid",
    "auto_cumulants",
    "check_cross_input",
    "combinations",
    "cross_cumulant_sublattices",
    "interleave",
    "mean_over_blocks",
    "partitions",
]

_Block = TypeVar("_Block")  # a frame block as an iterable of them gives it (NumPy, memory map, JAX)

MIN_FRAMES = 4
"""Fewest frames (per block, after the largest lag) a cumulant is computed from, as sofipackage."""


class Combinations(NamedTuple):
    """The pixel combination of each of the n^2 virtual pixels of an order (a static table).

    Row ``i n + j`` belongs to sub-lattice ``[i, j]``, the virtual pixel at (+i/n, +j/n) camera
    pixels from the reference pixel.

    Attributes:
        offsets: (n^2, n, 2) integer (row, column) offsets of the n pixels from the reference pixel,
            in the grid's enumeration order (the order ``lags`` refer to).
        positions: (n^2, 2) centroid of each combination, camera pixels from the reference pixel
            (= (i/n, j/n)).
        sum_sq: (n^2,) ``S = sum_{j<l} |r_j - r_l|^2`` of each combination, px^2 (its distance factor
            is ``exp(-4 ln 2 S / (n w^2))``, ``models.distance_factor``).
    """

    offsets: Int[np.ndarray, "m n 2"]
    positions: Float[np.ndarray, "m 2"]
    sum_sq: Int[np.ndarray, " m"]


def _pairwise_sum_sq(points: np.ndarray) -> int:
    diff = points[:, None, :] - points[None, :, :]
    return int((diff**2).sum()) // 2


def _select(order: int, pixels: list[tuple[int, int]], sets: Iterable[tuple[int, ...]]) -> Combinations:
    """Per centroid in the unit cell [0, 1)^2, the first set (in ``sets`` order) of least S."""
    best: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
    for members in sets:
        points = np.array([pixels[k] for k in members])
        i, j = (int(v) for v in points.sum(axis=0))  # centroid = (i, j) / order
        if not (0 <= i < order and 0 <= j < order):
            continue
        s = _pairwise_sum_sq(points)
        if (i, j) not in best or s < best[(i, j)][0]:
            best[(i, j)] = (s, points)
    keys = [(i, j) for i in range(order) for j in range(order)]
    return Combinations(
        offsets=np.stack([best[k][1] for k in keys]).astype(np.int64),
        positions=np.array(keys, dtype=np.float64) / order,
        sum_sq=np.array([best[k][0] for k in keys], dtype=np.int64),
    )


class Grid(abc.ABC):
    """A virtual-pixel grid: which pixel combinations give the n^2 sub-lattices, and where.

    Sub-lattice entry ``[i, j, a, b]`` is the cumulant of the combination ``offsets[i n + j]`` placed
    at reference pixel ``first_reference + (a, b)``. Pixels past the last row/column (full grid only)
    are zeros after mean subtraction, so a combination reaching them gives 0; :func:`interleave`
    drops exactly those entries. A new grid is a new subclass (frozen dataclass) in :data:`GRIDS`.
    """

    name: str = ""
    first_reference: tuple[int, int] = (0, 0)
    """(row, column) of the camera pixel that is the reference of sub-lattice entry (a, b) = (0, 0)."""
    pad: int = 0
    """Zero rows/columns appended after mean subtraction so every combination has its pixels."""
    min_size: int = 1
    """Fewest rows and columns of an image this grid needs."""
    orders: tuple[int, ...] = (2, 3, 4)
    """Orders the grid defines combinations for."""

    @abc.abstractmethod
    def combinations(self, order: int) -> Combinations:
        """The static combination table of an order."""

    @abc.abstractmethod
    def sublattice_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of each sub-lattice of an (H, W) image."""


@functools.cache
def _sofipackage_table(order: int) -> Combinations:
    pixels = [(dy, dx) for dx in range(-1, 3) for dy in range(-1, 3)]  # column-major, as sofiGrids numbers them
    return _select(order, pixels, itertools.combinations(range(len(pixels)), order))


@functools.cache
def _full_table(order: int) -> Combinations:
    pixels = [(dy, dx) for dy in range(2) for dx in range(2)]
    return _select(order, pixels, itertools.combinations_with_replacement(range(len(pixels)), order))


@dataclasses.dataclass(frozen=True)
class SofipackageGrid(Grid):
    """sofipackage's grid: n distinct pixels of the 4x4 neighbourhood (offsets -1..2) per virtual pixel.

    Of all ``C(16, n)`` sets of distinct pixels (``itertools.combinations`` over the 16 pixels listed
    column-major, offset (-1, -1) first, then (0, -1): sofipackage's ``sofiGrids`` numbers pixel p
    as row ``p mod 4``, column ``p div 4`` and enumerates ``nchoosek``), each distinct centroid
    keeps the set with the least sum of squared pairwise distances S (equivalently, to the
    centroid; ties: the first in that order), and the centroids in the unit cell [0, 1)^2 of the
    reference pixel give the n^2 virtual pixels. S: order 2: 4 (on-grid, the pair in the
    reference row at columns -1 and +1), 1, 1, 2 (diagonal); order 3: 6
    on-grid, 4 for the four inner (1/3, 2/3) positions, 8 for the four edge positions; order 4:
    8 for the 2x2 block centre, 16 on-grid. No pixel repeats, so noise adds nothing. Reference
    pixels are rows/columns 1..H-3: sub-lattices are (H-3, W-3); the interleaved image is
    n (H-4) + 1 per side.
    """

    name: str = "sofipackage"
    first_reference: tuple[int, int] = (1, 1)
    pad: int = 0
    min_size: int = 4
    orders: tuple[int, ...] = (2, 3, 4)

    def combinations(self, order: int) -> Combinations:
        require(order in self.orders, f"order {order}: cross-cumulants are built for orders 2-4")
        return _sofipackage_table(order)

    def sublattice_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return shape[0] - 3, shape[1] - 3


@dataclasses.dataclass(frozen=True)
class FullGrid(Grid):
    """The classic full grid (Dertinger et al. 2010): n (N-1) + 1 virtual pixels per side, 2N-1 at order 2.

    Each virtual pixel (i/n, j/n) between four neighbouring pixels uses the n-element multiset of
    the 2x2 block (offsets 0..1) with that centroid and the least S (ties: the first in
    ``itertools.combinations_with_replacement`` order over the 4 pixels listed row-major). Where
    the centroid forces a repeated pixel (every on-grid position, as the auto-cumulants of
    Dertinger et al. 2010; at orders 3-4 also most others) the value includes the noise's own
    cumulants (read-noise and shot-noise variance at order 2), unlike the sofipackage grid. Every
    camera pixel is a reference pixel: sub-lattices are (H, W), the entries past the last
    row/column are 0 and :func:`interleave` drops them, leaving n (H-1) + 1 per side.
    """

    name: str = "full"
    first_reference: tuple[int, int] = (0, 0)
    pad: int = 1
    min_size: int = 2
    orders: tuple[int, ...] = (2, 3, 4)

    def combinations(self, order: int) -> Combinations:
        require(order in self.orders, f"order {order}: cross-cumulants are built for orders 2-4")
        return _full_table(order)

    def sublattice_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return shape


#: Grid kinds by name; sofipackage is the default everywhere.
GRIDS: dict[str, Grid] = {"sofipackage": SofipackageGrid(), "full": FullGrid()}


def combinations(order: int, grid: str | Grid = "sofipackage") -> Combinations:
    """The static combination table (:class:`Combinations`) of ``order`` on ``grid``."""
    return _grid(grid).combinations(order)


def _grid(grid: str | Grid) -> Grid:
    if isinstance(grid, Grid):
        return grid
    require(grid in GRIDS, f"grid {grid!r}: the grids are {', '.join(GRIDS)}")
    return GRIDS[grid]


@functools.cache
def partitions(n: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Set partitions of ``range(n)`` without singleton parts (the only ones a centred stack needs)."""

    def all_partitions(items: list[int]) -> list[list[list[int]]]:
        if not items:
            return [[]]
        first, rest = items[0], items[1:]
        out = []
        for part in all_partitions(rest):
            out.append([[first], *part])
            for k in range(len(part)):
                out.append([*part[:k], [first, *part[k]], *part[k + 1 :]])
        return out

    keep = [p for p in all_partitions(list(range(n))) if all(len(b) > 1 for b in p)]
    return tuple(tuple(tuple(sorted(b)) for b in sorted(p)) for p in keep)


def _as_float(stack: Float[ArrayLike, "t y x"]) -> Array:
    x = jnp.asarray(stack)
    return x.astype(jnp.result_type(x.dtype, jnp.float32))


def _check_lags(lags: tuple[int, ...] | None, order: int) -> tuple[int, ...]:
    if lags is None:
        return (0,) * order
    lags = tuple(int(v) for v in lags)
    require(len(lags) == order, f"{len(lags)} lags for order {order}: give one lag (frames) per pixel")
    require(min(lags) >= 0, f"lags {lags} frames: lags must be >= 0")
    return lags


def _check_frames(frames: int, order: int, lags: tuple[int, ...]) -> None:
    need = max(MIN_FRAMES, order) + max(lags)
    require(
        frames >= need,
        f"{frames} frames: order {order} with lags up to {max(lags)} needs at least {need} frames (per block)",
    )


Term = tuple[tuple[int, int, int], ...]
"""A product of centred pixel values: (dy, dx, lag) of each factor, offsets >= 0 from its corner."""

MAX_CHUNK = 8
"""Most frames summed per step of the scan over a block."""
CHUNK_PIXELS = 2**18
"""Pixels (frames x rows x columns) visited per step: 1 MB of float32, so the step stays in cache;
wide images are cut into strips of rows to fit."""


def _term_sums(x: Array, terms: list[Term], t_eff: int, pad: int) -> list[Array]:
    """``<prod_(dy, dx, lag) d(y + dy, x + dx, t + lag)>_t`` over t < t_eff, an image per term.

    ``d`` is each lag's window ``x[lag : lag + t_eff]`` centred by its own mean, ``pad`` zero
    rows/columns appended; term image (y, x) spans y < Y + pad - max dy, x < X + pad - max dx.
    Values: :func:`_term_sums_fast`; derivatives: those of :func:`_term_sums_plain` (the same sums
    written as whole-stack reductions, whose derivative XLA compiles quickly).
    """
    return list(_term_sums_fast(x, tuple(terms), t_eff, pad))


def _term_sums_plain(x: Array, terms: tuple[Term, ...], t_eff: int, pad: int) -> tuple[Array, ...]:
    lags = sorted({lag for term in terms for (_, _, lag) in term})
    centred = {}
    for lag in lags:
        window = x[lag : lag + t_eff]
        window = window - jnp.mean(window, axis=0)
        centred[lag] = jnp.pad(window, ((0, 0), (0, pad), (0, pad))) if pad else window
    big_y, big_x = x.shape[1] + pad, x.shape[2] + pad
    out = []
    for term in terms:
        ry = max(p[0] for p in term)
        rx = max(p[1] for p in term)
        prod = None
        for dy, dx, lag in term:
            piece = centred[lag][:, dy : big_y - ry + dy, dx : big_x - rx + dx]
            prod = piece if prod is None else prod * piece
        assert prod is not None
        out.append(jnp.sum(prod, axis=0) / t_eff)
    return tuple(out)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _term_sums_fast(x: Array, terms: tuple[Term, ...], t_eff: int, pad: int) -> tuple[Array, ...]:
    """The term sums in one pass over the frames, as sofipackage accumulates its terms frame by frame.

    A scan over chunks of up to :data:`MAX_CHUNK` frames (inside a map over strips of rows when a
    chunk of whole frames would exceed :data:`CHUNK_PIXELS`) adds every term's products to its
    running sum, the sum over the chunk unrolled into one vectorised loop over the pixels (XLA CPU
    materialises the products and reduces a leading axis far more slowly). No temporaries of the
    size of the stack beyond one zero-padded copy.
    """
    lags = sorted({lag for term in terms for (_, _, lag) in term})
    if pad:  # the full grid's zero row and column (after centring: a zero mean there too)
        x = jnp.pad(x, ((0, 0), (0, pad), (0, pad)))
    height, width = x.shape[1], x.shape[2]
    halo = max(max(p[0] for p in term) for term in terms)
    chunk = min(MAX_CHUNK, t_eff)
    count = -(-t_eff // chunk)
    rows = max(1, min(height - halo, CHUNK_PIXELS // (chunk * width)))
    strips = -(-(height - halo) // rows)
    starts = [min(s * rows, height - rows - halo) for s in range(strips)]  # the last overlaps
    total = _frame_sum(x)
    means = {}
    for lag in lags:  # each window's mean: the whole sum less the frames outside the window
        outside = jnp.sum(x[:lag], axis=0) + jnp.sum(x[lag + t_eff :], axis=0)
        means[lag] = (total - outside) / t_eff

    def strip_sums(row0: Array) -> list[Array]:
        strip_means = {lag: jax.lax.dynamic_slice(m, (row0, 0), (rows + halo, width)) for lag, m in means.items()}

        def step(acc: list[Array], i: Array) -> tuple[list[Array], None]:
            # the last chunk starts early enough to fit; its frames seen before are masked out
            start = jnp.minimum(i * chunk, t_eff - chunk)
            fresh = (start + jnp.arange(chunk) >= i * chunk).astype(x.dtype)[:, None, None]
            frames = {}
            for lag in lags:
                f = jax.lax.dynamic_slice(x, (start + lag, row0, 0), (chunk, rows + halo, width))
                frames[lag] = (f - strip_means[lag]) * fresh
            new = []
            for running, term in zip(acc, terms):
                ry = max(p[0] for p in term)
                rx = max(p[1] for p in term)
                for k in range(chunk):
                    prod = None
                    for dy, dx, lag in term:
                        piece = frames[lag][k, dy : dy + rows + halo - ry, dx : width - rx + dx]
                        prod = piece if prod is None else prod * piece
                    assert prod is not None
                    running = running + prod
                new.append(running)
            return new, None

        zeros = [jnp.zeros((rows + halo - max(p[0] for p in t), width - max(p[1] for p in t)), x.dtype) for t in terms]
        return jax.lax.scan(step, zeros, jnp.arange(count))[0]

    sums = jax.lax.map(strip_sums, jnp.asarray(starts))
    out = []
    for per_strip, term in zip(sums, terms):
        ry = max(p[0] for p in term)
        pieces = [per_strip[s, :rows] for s in range(strips - 1)]
        first = (strips - 1) * rows - starts[-1]
        pieces.append(per_strip[-1, first : first + height - ry - (strips - 1) * rows])
        out.append(jnp.concatenate(pieces) / t_eff)
    return tuple(out)


def _frame_sum(x: Array) -> Array:
    """Sum over the frames (axis 0), in unrolled chunks (faster than XLA CPU's reduction)."""
    chunk = min(MAX_CHUNK, x.shape[0])
    count, rest = divmod(x.shape[0], chunk)

    def step(acc: Array, i: Array) -> tuple[Array, None]:
        f = jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk)
        for k in range(chunk):
            acc = acc + f[k]
        return acc, None

    total = jax.lax.scan(step, jnp.zeros(x.shape[1:], x.dtype), jnp.arange(count))[0]
    return total + jnp.sum(x[count * chunk :], axis=0) if rest else total


@_term_sums_fast.defjvp
def _term_sums_jvp(terms, t_eff, pad, primals, tangents):
    (x,), (dx,) = primals, tangents
    _, tangent = jax.jvp(lambda v: _term_sums_plain(v, terms, t_eff, pad), (x,), (dx,))
    return _term_sums_fast(x, terms, t_eff, pad), tangent


class CumulantPlan(NamedTuple):
    """How the joint cumulants of pixel sets are assembled from shared term sums (a static table).

    Attributes:
        terms: the distinct products of centred pixels ("terms", up to a translation), each a
            tuple of ``(dy, dx, lag)`` factors with offsets >= 0 from its corner.
        uses: per pixel set, per partition without singletons, the partition's blocks as
            ``(term index, dy, dx)``: the term's image read at the set's origin + (dy, dx).
    """

    terms: tuple[Term, ...]
    uses: tuple[tuple[tuple[tuple[int, int, int], ...], ...], ...]


@functools.cache
def cumulant_plan(sets: tuple[tuple[tuple[int, int, int], ...], ...]) -> CumulantPlan:
    """The :class:`CumulantPlan` of pixel sets (each n pixels ``(dy, dx, lag)``, all of one n)."""
    n = len(sets[0])
    keys: dict[Term, int] = {}
    uses = []
    for pixel_set in sets:
        per_set = []
        for part in partitions(n):
            factors = []
            for block in part:
                points = [pixel_set[k] for k in block]
                my, mx = min(p[0] for p in points), min(p[1] for p in points)
                key = tuple(sorted((p[0] - my, p[1] - mx, p[2]) for p in points))
                factors.append((keys.setdefault(key, len(keys)), my, mx))
            per_set.append(tuple(factors))
        uses.append(tuple(per_set))
    return CumulantPlan(tuple(keys), tuple(uses))


def combine_terms(plan: CumulantPlan, images: list, origin: tuple[int, int], out_shape: tuple[int, int], xp=jnp):
    """Cumulant images from term images: ``sum_P (-1)^(|P|-1) (|P|-1)! prod_{B in P} term_B``,
    one ``out_shape`` image per pixel set, stacked (``xp``: ``jax.numpy`` or ``numpy``)."""
    h, w = out_shape
    out = []
    for per_set in plan.uses:
        total = None
        for factors in per_set:
            coef = (-1) ** (len(factors) - 1) * math.factorial(len(factors) - 1)
            value = None
            for key, my, mx in factors:
                y0, x0 = origin[0] + my, origin[1] + mx
                piece = images[key][y0 : y0 + h, x0 : x0 + w]
                value = piece if value is None else value * piece
            assert value is not None
            total = coef * value if total is None else total + coef * value
        assert total is not None
        out.append(total)
    return xp.stack(out)


def _cumulant_images(
    x: Array,
    sets: list[Term],
    origin: tuple[int, int],
    out_shape: tuple[int, int],
    pad: int = 0,
) -> Array:
    """Joint cumulants of pixel sets of a stack ``x`` (t, Y, X), one image per set.

    Each set holds n pixels ``(dy, dx, lag)``; the value at output (a, b) uses pixels
    ``origin + (a, b) + (dy, dx)`` at frames ``t + lag``, t = 0..T - max lag - 1, each window
    centred by its own mean over those frames, then ``pad`` zero rows/columns appended. Each
    distinct block product (up to a translation) is summed over time once and shared by all sets
    (:func:`cumulant_plan`).
    """
    t_eff = x.shape[0] - max(lag for s in sets for (_, _, lag) in s)
    plan = cumulant_plan(tuple(sets))
    images = _term_sums(x, list(plan.terms), t_eff, pad)
    return combine_terms(plan, images, origin, out_shape)


def cross_sets(order: int, lags: tuple[int, ...], grid: Grid) -> tuple[tuple[tuple[int, int, int], ...], ...]:
    """The pixel sets ``(dy, dx, lag)`` of an order's n^2 combinations on ``grid`` (rows i n + j)."""
    combos = grid.combinations(order)
    return tuple(tuple((int(dy), int(dx), lags[k]) for k, (dy, dx) in enumerate(row)) for row in combos.offsets)


def _blocked(fn: Callable[[Array], Array], x: Array, block_frames: int | None) -> Array:
    """``fn`` of the whole stack, or the mean of ``fn`` over consecutive blocks of ``block_frames``."""
    if block_frames is None or block_frames >= x.shape[0]:
        return fn(x)
    require(block_frames >= 1, f"frame blocks of {block_frames} frames: must be >= 1")
    count = x.shape[0] // block_frames
    blocks = x[: count * block_frames].reshape(count, block_frames, *x.shape[1:])
    return jnp.mean(jax.lax.map(fn, blocks), axis=0)


def _cross_block(x: Array, order: int, lags: tuple[int, ...], grid: Grid) -> Array:
    h, w = grid.sublattice_shape((x.shape[1], x.shape[2]))
    images = _cumulant_images(x, list(cross_sets(order, lags, grid)), grid.first_reference, (h, w), grid.pad)
    return images.reshape(order, order, h, w)


@functools.partial(jax.jit, static_argnames=("order", "lags", "grid", "block_frames"))
def cross_cumulant_sublattices(
    stack: Float[ArrayLike, "t y x"],
    order: int,
    *,
    lags: tuple[int, ...] | None = None,
    grid: str | Grid = "sofipackage",
    block_frames: int | None = None,
) -> Float[Array, "n n h w"]:
    """Cross-cumulant sub-lattices ``(n, n, h, w)`` of order n = 2..4 (Dertinger et al. 2010).

    ``out[i, j, a, b] = sum_P (-1)^(|P|-1) (|P|-1)! prod_{B in P} <prod_{k in B} d(p_k, t + tau_k)>_t``
    over the partitions P of the combination's n pixels ``p_k = ref(a, b) + offsets[i n + j, k]``
    without singletons (:func:`partitions`), with ``<.>_t`` the mean over t = 0..T - max(tau) - 1
    and ``d(p, t + tau) = I(p, t + tau) - <I(p, t + tau)>_t`` each lagged window centred by its own
    mean (at zero lag: each pixel's mean over the T frames). This is exactly the joint cumulant of
    the empirical distribution of the n series ``I(p_k, t + tau_k)``. The virtual pixel sits at
    (+i/n, +j/n) camera pixels from the reference pixel ``ref(a, b) = grid.first_reference + (a, b)``.
    Sofipackage grid (default): h, w = H - 3, W - 3, zero lag, every pixel distinct, so noise
    independent between pixels adds nothing.

    Time lags (Dertinger et al. 2009): ``lags = (tau_1, ..., tau_n)`` frames shifts the k-th pixel of
    every combination (in :func:`combinations` order) to frame ``t + tau_k``, in every partition term
    alike; e.g. ``(0, 1)`` at order 2 is ``<d(p_1, t) d(p_2, t + 1)>``, and at order 4
    ``(0, 0, 1, 1)`` gives ``<d1 d2 d3' d4'> - <d1 d2><d3' d4'> - <d1 d3'><d2 d4'> - <d1 d4'><d2 d3'>``
    (' = lagged by one frame). A lag removes the shot-noise correlation of a repeated pixel (full
    grid) but costs max(tau) frames.

    Frame blocks: with ``block_frames = B`` the stack is cut into floor(T/B) consecutive blocks
    (sofipackage's subsequences; the last T mod B frames are left out), each block is centred by its
    own mean and the blocks' cumulants are averaged. Short blocks bias the estimate: an order-2
    cumulant from B frames is low by the factor (B-1)/B for uncorrelated frames (more where frames
    are correlated over tau_on), and higher orders have larger O(1/B) biases; blocks also drop slow
    drifts (bleaching) longer than B frames. See :func:`mean_over_blocks` for stacks that do not
    fit in memory.

    Arguments:
        stack: (T, H, W) frames; integer data are taken as float32.
        order: n, 2..4 (static).
        lags: n non-negative lags in frames (a tuple; static); None = zero lag.
        grid: a name in :data:`GRIDS` or a :class:`Grid` (static).
        block_frames: frames per block (static); None = the whole stack at once.
    """
    x = _as_float(stack)
    g, tau = check_cross_input(x.shape, order, lags, grid, block_frames)
    return _blocked(lambda block: _cross_block(block, order, tau, g), x, block_frames)


def check_cross_input(
    shape: tuple, order: int, lags: tuple[int, ...] | None, grid: str | Grid, block_frames: int | None = None
) -> tuple[Grid, tuple[int, ...]]:
    """The grid and the n lags of order-n cross-cumulants of a ``shape`` stack, checked: a known
    grid and order, (T, H, W) of at least the grid's size, n lags >= 0, enough frames per block.

    Returns:
        (the :class:`Grid`, the lags: zeros for None).

    Raises:
        fluojax.io.InputError: one line for the first check that fails.
    """
    g = _grid(grid)
    g.combinations(order)  # checks the order
    require(len(shape) == 3, f"stack of shape {tuple(shape)}: must be (frames, y, x)")
    t, big_h, big_w = shape
    require(
        big_h >= g.min_size and big_w >= g.min_size,
        f"image of {big_h} x {big_w} pixels: the {g.name} grid needs at least {g.min_size} x {g.min_size}",
    )
    tau = _check_lags(lags, order)
    _check_frames(min(t, block_frames or t), order, tau)
    return g, tau


def interleave(sub: Float[ArrayLike, "n n h w"]) -> Float[Array, "yy xx"]:
    """Interleave ``(n, n, h, w)`` sub-lattices into one image of ``n h - (n - 1)`` x ``n w - (n - 1)``.

    ``image[n a + i, n b + j] = sub[i, j, a, b]``, then the last n - 1 rows and columns (virtual
    pixels past the last reference pixel) are dropped: ``n (H - 4) + 1`` per side on the
    sofipackage grid (128 -> 249 at order 2), ``n (H - 1) + 1`` on the full grid. Output pixel
    (p, q) lies at camera pixel ``first_reference + (p, q) / n``.

    Arguments:
        sub: sub-lattices as from :func:`cross_cumulant_sublattices` (leading batch axes allowed
            before the last four).
    """
    s = jnp.asarray(sub)
    n, m, h, w = s.shape[-4:]
    require(n == m, f"sub-lattices of shape {s.shape}: need (n, n, h, w)")
    image = jnp.moveaxis(s, (-4, -3), (-3, -1)).reshape(*s.shape[:-4], n * h, n * w)
    return image[..., : n * h - (n - 1), : n * w - (n - 1)]


def _central_moment_cumulants(x: Array, order: int) -> Array:
    powers = [((0, 0, 0),) * k for k in range(2, order + 1)]  # <d^k>_t as the product of k copies
    mu = [jnp.zeros_like(x[0]), jnp.zeros_like(x[0]), *_term_sums(x, powers, x.shape[0], 0)]
    kappa = [jnp.zeros_like(x[0]), jnp.zeros_like(x[0])]
    for m in range(2, order + 1):
        # kappa_m = mu_m - sum_{k=2}^{m-2} C(m-1, k-1) kappa_k mu_{m-k}   (kappa_1 = mu_1 = 0)
        value = mu[m]
        for k in range(2, m - 1):
            value = value - math.comb(m - 1, k - 1) * kappa[k] * mu[m - k]
        kappa.append(value)
    return kappa[order]


def _auto_block(x: Array, order: int, lags: tuple[int, ...]) -> Array:
    if not any(lags):
        return _central_moment_cumulants(x, order)
    pixel_set = tuple((0, 0, lag) for lag in lags)
    return _cumulant_images(x, [pixel_set], (0, 0), (x.shape[1], x.shape[2]))[0]


@functools.partial(jax.jit, static_argnames=("order", "lags", "block_frames"))
def auto_cumulants(
    stack: Float[ArrayLike, "t y x"],
    order: int,
    *,
    lags: tuple[int, ...] | None = None,
    block_frames: int | None = None,
) -> Float[Array, "y x"]:
    """Per-pixel auto-cumulant of order n = 2..6 (Dertinger et al. 2009; Komen 2024, eq. 3.2).

    Zero lag: from the central moments ``mu_k = <d^k>_t`` (d = I - <I>_t) by the moment-cumulant
    recursion ``kappa_m = mu_m - sum_{k=2}^{m-2} C(m-1, k-1) kappa_k mu_{m-k}`` (kappa_2 = mu_2,
    kappa_3 = mu_3, kappa_4 = mu_4 - 3 mu_2^2, ...). It includes the noise's own cumulants (e.g.
    + sigma^2 of read noise and the shot-noise variance at order 2). With ``lags = (tau_1..tau_n)``
    the k-th factor is taken at frame t + tau_k and the cumulant comes from the partition formula
    of :func:`cross_cumulant_sublattices` with all n pixels the same (lags that are all distinct
    remove the noise terms of noise uncorrelated between frames). ``block_frames`` as there.

    Arguments:
        stack: (T, H, W) frames.
        order: n, 2..6 (static).
        lags: n non-negative lags in frames (a tuple; static); None = zero lag.
        block_frames: frames per block (static); None = the whole stack.
    """
    require(2 <= order <= 6, f"order {order}: auto-cumulants are built for orders 2-6")
    x = _as_float(stack)
    require(x.ndim == 3, f"stack of shape {x.shape}: must be (frames, y, x)")
    tau = _check_lags(lags, order)
    _check_frames(min(x.shape[0], block_frames or x.shape[0]), order, tau)
    return _blocked(lambda block: _auto_block(block, order, tau), x, block_frames)


def mean_over_blocks(blocks: Iterable[_Block], fn: Callable[[_Block], Any]) -> Any:
    """The frame-weighted mean ``sum_b T_b fn(B_b) / sum_b T_b`` of a function of frame blocks
    ``B_b`` (``T_b`` frames each), holding one block at a time.

    For stacks that do not fit in memory (e.g. 512 x 512 x 1000 read block by block from a TIFF):
    ``mean_over_blocks(blocks, lambda b: cross_cumulant_sublattices(b, 2))``. Blocks of equal
    length weigh the same, as sofipackage's equally long subsequences; a longer block (a short
    tail joined to the block before it) weighs by its frames. ``fn`` may return a pytree of arrays
    (several orders, the mean image) and see the block as given (a NumPy block for host-side
    checks); blocks of one shape reuse one compilation of a jitted ``fn``. The sums are kept in
    float64 on the host: one transfer per block, which also stops asynchronous dispatch from
    queueing the next blocks' copies. Short blocks are biased (see :func:`cross_cumulant_sublattices`).

    Arguments:
        blocks: iterable of (T_b, H, W) arrays (NumPy, memory maps, JAX), passed to ``fn`` as given.
        fn: ``fn(block)`` -> an array or a pytree of arrays, e.g. a partial of
            :func:`cross_cumulant_sublattices`.

    Returns:
        the mean, float32 JAX arrays in ``fn``'s structure.
    """
    total: Any = None
    frames = 0
    for block in blocks:
        t = int(np.shape(block)[0])  # type: ignore[call-overload]  # any array-like block
        value = jax.tree.map(lambda v, t=t: t * np.asarray(v, np.float64), fn(block))
        total = value if total is None else jax.tree.map(np.add, total, value)
        frames += t
    require(total is not None and frames > 0, "no frame blocks: the stack has 0 frames")
    return jax.tree.map(lambda v: jnp.asarray(v / frames, jnp.float32), total)
