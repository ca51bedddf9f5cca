"""The image-averaged trace that decides the automatic bleach correction (fcs.pipeline.mean_trace):
integer stacks are summed in integers, which must give the float64 means exactly."""

import numpy as np
import pytest

from fluojax.fcs.pipeline import mean_trace


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
def test_mean_trace_of_integers_equals_the_float64_mean_of_every_frame(dtype):
    """Exactly: sums of these integers are exact in float64 too."""
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    stack = rng.integers(info.min, info.max, (37, 5, 7), endpoint=True).astype(dtype)
    stack[3] = info.max  # a frame at the type's maximum: the largest sums
    expected = stack.astype(np.float64).mean(axis=(1, 2))
    assert np.array_equal(mean_trace(stack, chunk_frames=8), expected)


def test_mean_trace_of_floats_is_the_float64_mean():
    """float32 frames are summed in float64: equal to float64 rounding (1e-15 relative)."""
    stack = np.random.default_rng(4).normal(100.0, 10.0, (37, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(
        mean_trace(stack, chunk_frames=8), stack.astype(np.float64).mean(axis=(1, 2)), rtol=1e-13
    )


def test_mean_trace_sums_a_wide_uint16_image_without_overflow():
    """300 x 300 pixels at 65535 overflow a 32-bit sum (5.9e9): the wider accumulator is used."""
    stack = np.full((2, 300, 300), 65535, np.uint16)
    assert np.array_equal(mean_trace(stack), np.full(2, 65535.0))
