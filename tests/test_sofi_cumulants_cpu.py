"""sofi.cumulants_cpu, the numba kernel, beyond the brute-force suite it shares with the XLA path
and its image sizes (tests/test_sofi_cumulants.py): camera counts read as they are, several orders in one pass, and
the per-pixel mean and variance of the same pass."""

import numpy as np
import pytest

from fluojax.io import InputError
from fluojax.sofi import cumulants_cpu

pytestmark = pytest.mark.skipif(not cumulants_cpu.available(), reason="numba not importable")


def _counts(shape, seed=0):
    """Poisson camera counts around 100 (uint16)."""
    return np.random.default_rng(seed).poisson(100.0, shape).astype(np.uint16)


def test_camera_counts_give_exactly_the_cumulants_of_their_float32_values():
    """uint16 frames are converted in the kernel as they are read: the same sums as float32 input."""
    counts = _counts((30, 9, 11))
    for order in (2, 3, 4):
        got = cumulants_cpu.cross_cumulants_cpu(counts, (order,))[order]
        want = cumulants_cpu.cross_cumulants_cpu(counts.astype(np.float32), (order,))[order]
        np.testing.assert_array_equal(got, want)


def test_several_orders_in_one_pass_equal_one_order_at_a_time():
    """Shared terms are summed once; each order's sub-lattices are those of its own call (bitwise:
    the same sums in the same order)."""
    counts = _counts((25, 10, 12), seed=1)
    together = cumulants_cpu.cross_cumulants_cpu(counts, (4, 2, 3))
    assert sorted(together) == [2, 3, 4]
    for order in (2, 3, 4):
        np.testing.assert_array_equal(together[order], cumulants_cpu.cross_cumulants_cpu(counts, (order,))[order])


def test_the_pass_also_gives_each_pixels_mean_and_variance():
    counts = _counts((40, 8, 9), seed=2)
    res = cumulants_cpu.block_cumulants_cpu(counts, (2,))
    data = counts.astype(np.float64)
    np.testing.assert_allclose(res.mean, data.mean(axis=0), rtol=1e-15, atol=0)  # float64 sums of integers
    # float32 centred squares summed over 40 frames: ~1e-6 relative
    np.testing.assert_allclose(res.variance, data.var(axis=0), rtol=1e-5)


def test_constant_pixels_have_exactly_zero_variance_and_cumulants():
    """A constant pixel's mean is exact (float64 sum of equal values), so it centres to exactly 0:
    the pipeline tells a stack without fluctuations from the variance alone."""
    counts = _counts((20, 8, 8), seed=3)
    counts[:, :, :5] = 500  # columns 0-4 constant
    res = cumulants_cpu.block_cumulants_cpu(counts, (2,))
    assert np.all(res.variance[:, :5] == 0) and np.all(res.variance[:, 5:] > 0)
    # sub-lattice column b uses pixel columns b .. b + 3 (reference b + 1, offsets -1 .. 2): b <= 1
    # touches only constant columns, at every sub-position
    assert np.all(res.sublattices[2][:, :, :, :2] == 0)
    # a value with all 24 bits of its significand set, over a frame count that is not a multiple of
    # the kernel's 8-frame sums: still an exact mean
    value = np.float32(0.1)
    constant = np.full((1003, 6, 6), value, np.float32)
    res = cumulants_cpu.block_cumulants_cpu(constant, (2, 3, 4))
    assert np.all(res.mean == np.float64(value))
    assert not res.variance.any() and not any(s.any() for s in res.sublattices.values())


def test_term_sums_refuse_factors_outside_the_frames():
    """numba does not check indices: the wrapper refuses what would read past the frames."""
    frames = np.zeros((10, 6, 6), np.float32)
    for terms, t_eff in [
        ([((0, 0, 0), (0, 1, 2))], 10),  # lag 2 with 10 frames summed: frames 10 and 11
        ([((0, 0, 0), (0, 1, 0))], 0),
        ([((0, 0, 0), (0, -1, 0))], 5),  # a negative offset
        ([((0, 0, 0), (6, 0, 0))], 5),  # below the last row
    ]:
        with pytest.raises(ValueError):
            cumulants_cpu.term_sums_cpu(frames, terms, t_eff)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cumulants_cpu.cross_cumulants_cpu(np.zeros((3, 8, 8), np.float32), (3,)), "needs at least 4 frames"),
        (lambda: cumulants_cpu.cross_cumulants_cpu(np.zeros((9, 3, 8), np.float32), (2,)), "needs at least 4 x 4"),
        (lambda: cumulants_cpu.cross_cumulants_cpu(np.zeros((9, 8, 8), np.float32), (5,)), "orders 2-4"),
        (lambda: cumulants_cpu.cross_cumulants_cpu(np.zeros((9, 8, 8), np.float32), ()), "no cumulant order"),
        (lambda: cumulants_cpu.cross_cumulants_cpu(np.zeros((9, 8), np.float32), (2,)), "must be (frames, y, x)"),
    ],
)
def test_bad_input_is_one_input_error(call, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
