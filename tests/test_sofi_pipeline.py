"""sofi.pipeline and io.read_stack_blocks: a stack (whole or in frame blocks) to SOFI images on the
n (N - 4) + 1 grid, the blocks' frame-weighted average, and one InputError line for each stack that
cannot be analysed (issue 20, items 7 and 8)."""

import numpy as np
import pytest
import tifffile

from fluojax import io
from fluojax.io import InputError
from fluojax.sofi import cumulants, estimate, pipeline

pytestmark = pytest.mark.xdist_group("sofi_pipeline")  # its session fixtures are built once, on one worker

T, NY, NX = 60, 12, 14  # non-square, so that a swapped axis shows


def blinking_stack(seed: int = 0, frames: int = T) -> np.ndarray:
    """Six Gaussian emitters (sigma 1.2 px) blinking on with probability 0.3, 100 counts, + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:NY, 0:NX]
    pos = rng.uniform(2, [NY - 2, NX - 2], (6, 2))
    psf = np.exp(-((yy - pos[:, :1, None]) ** 2 + (xx - pos[:, 1:, None]) ** 2) / (2 * 1.2**2))
    on = rng.random((frames, 6)) < 0.3
    return (100 * np.einsum("tk,kyx->tyx", on, psf) + 10 + rng.normal(0, 1, (frames, NY, NX))).astype(np.float32)


@pytest.fixture(scope="session")
def stack():
    return blinking_stack()


@pytest.fixture(scope="session")
def full(stack):
    """Orders 2-4, root-linearized, with bSOFI (one computation shared by the tests: compiling the
    order-3 and -4 cumulants takes most of this file's time)."""
    return pipeline.sofi_images(stack, orders=(2, 3, 4), linearize="root", bsofi=True, fwhm_px=2.8)


# ------------------------------------------------------------------------------------------------
# io.read_stack_blocks


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memory-mapped", "compressed-pages"])
def test_blocks_of_a_stack_are_float32_and_join_to_the_stack(stack, tmp_path, compression):
    path = tmp_path / "s.tif"
    raw = np.round(stack).astype(np.uint16)
    tifffile.imwrite(path, raw, compression=compression, photometric="minisblack", metadata={"axes": "TYX"})
    shape, _, blocks = io.read_stack_blocks(path, 25)
    got = list(blocks)
    assert shape == (T, NY, NX)
    assert [b.shape[0] for b in got] == [25, 25, 10]  # the last block holds the rest
    assert all(b.dtype == np.float32 for b in got)
    np.testing.assert_array_equal(np.concatenate(got), raw.astype(np.float32))  # integers: exact in float32


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memory-mapped", "compressed-pages"])
def test_blocks_as_stored_keep_the_camera_counts(stack, tmp_path, compression):
    """dtype=None: uint16 blocks (views of the map when memory-mapped), the file's values."""
    path = tmp_path / "s.tif"
    raw = np.round(stack).astype(np.uint16)
    tifffile.imwrite(path, raw, compression=compression, photometric="minisblack", metadata={"axes": "TYX"})
    _, _, blocks = io.read_stack_blocks(path, 25, dtype=None)
    got = list(blocks)
    assert all(b.dtype == np.uint16 for b in got)
    np.testing.assert_array_equal(np.concatenate(got), raw)


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["memory-mapped", "compressed-pages"])
def test_reading_in_blocks_holds_about_one_block_at_a_time(tmp_path, compression):
    # 400 frames of 64 x 64: 6.6 MB as float32, blocks of 10 frames 164 kB. NumPy reports its
    # allocations to tracemalloc; reading block by block (and dropping each) must peak near one
    # block (decoded integers, page buffers, the float32 copy: ~4 blocks here), far below the whole stack
    import tracemalloc

    path = tmp_path / "long.tif"
    data = np.random.default_rng(0).integers(0, 1000, (400, 64, 64), dtype=np.uint16)
    tifffile.imwrite(path, data, compression=compression, photometric="minisblack", metadata={"axes": "TYX"})
    tracemalloc.start()
    try:
        _, _, blocks = io.read_stack_blocks(path, 10)
        total = sum(float(block.sum(dtype=np.float64)) for block in blocks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == float(data.sum())
    assert peak < 0.25 * data.size * 4, peak  # a quarter of the float32 stack: 10 blocks


def test_blocks_are_refused_as_read_stack_refuses(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        io.read_stack_blocks(tmp_path / "missing.tif", 10)
    tifffile.imwrite(tmp_path / "one.tif", np.zeros((8, 8), np.float32))
    with pytest.raises(InputError, match="a single 8x8 image"):
        io.read_stack_blocks(tmp_path / "one.tif", 10)
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((4, 8, 8), np.float32), photometric="minisblack")
    with pytest.raises(InputError, match="0 frames per block: must be at least 1"):
        io.read_stack_blocks(tmp_path / "s.tif", 0)


def test_a_truncated_compressed_stack_is_refused_when_its_block_is_read(stack, tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, compression="zlib", photometric="minisblack", metadata={"axes": "TYX"})
    data = path.read_bytes()
    offsets = tifffile.TiffFile(path).pages[-1].dataoffsets  # the last frame's compressed data
    cut = bytearray(data)
    cut[offsets[0] : offsets[0] + 16] = b"\x00" * 16  # damage the last frame's zlib stream
    path.write_bytes(bytes(cut))
    _, _, blocks = io.read_stack_blocks(path, 50)
    with pytest.raises(InputError, match=r"s\.tif"):
        list(blocks)


# ------------------------------------------------------------------------------------------------
# orders and shapes


@pytest.mark.parametrize(
    ("text", "orders"), [("2", (2,)), ("2-4", (2, 3, 4)), ("2..4", (2, 3, 4)), ("4,2", (2, 4)), ("2,3-4", (2, 3, 4))]
)
def test_orders_are_parsed_from_numbers_ranges_and_lists(text, orders):
    assert pipeline.parse_orders(text) == orders


@pytest.mark.parametrize(("text", "message"), [("two", "give an order"), ("4-2", "runs backwards"), ("2-", "give")])
def test_unreadable_orders_are_refused(text, message):
    with pytest.raises(InputError, match=message):
        pipeline.parse_orders(text)


def test_each_order_n_gives_n_times_n_minus_4_plus_1_pixels_per_side(stack, full):
    # sofipackage's grid: 12 x 14 -> 2*8+1 x 2*10+1, 3*8+1 x 3*10+1, 4*8+1 x 4*10+1
    result = full
    for n in (2, 3, 4):
        assert result.cumulants[n].shape == (n * 8 + 1, n * 10 + 1) == pipeline.output_shape((NY, NX), n)
        assert result.linearized[n].shape == result.cumulants[n].shape
    np.testing.assert_allclose(result.mean, stack.mean(axis=0), rtol=1e-6)  # float32 data, float64 sum
    assert (result.frames, result.blocks) == (T, 1)


def test_the_image_of_a_single_emitter_peaks_at_its_position():
    # one emitter at camera pixel (5, 8) of a 12 x 14 field, blinking; its order-2 image peaks at the
    # virtual pixel of camera pixel (5, 8): output pixel 2 * ((5, 8) - 1) (first reference pixel 1),
    # give or take the one output pixel by which the 2 x 2 median filter shifts a symmetric peak
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:NY, 0:NX]
    psf = np.exp(-((yy - 5) ** 2 + (xx - 8) ** 2) / (2 * 1.0**2))
    on = rng.random(T) < 0.5
    data = (200 * on[:, None, None] * psf + rng.normal(0, 1, (T, NY, NX))).astype(np.float32)
    image = pipeline.sofi_images(data, orders=(2,), linearize=None).cumulants[2]
    peak = np.unravel_index(np.argmax(image), image.shape)
    assert abs(peak[0] - 8) <= 1 and abs(peak[1] - 14) <= 1, peak


def test_blocks_are_averaged_by_their_frame_counts_and_a_short_tail_joins_the_block_before(stack):
    # 60 frames in blocks of 25: 25 + 35 (the 10-frame tail is under half a block and joins the
    # second block); reference: each block's sub-lattices weighted by its frames, then flattened
    result = pipeline.sofi_images(stack, orders=(2,), linearize=None, block_frames=25)
    assert (result.frames, result.blocks) == (60, 2)
    parts = [(25, stack[:25]), (35, stack[25:])]
    sub = sum(t * np.asarray(cumulants.cross_cumulant_sublattices(x, 2), np.float64) for t, x in parts) / 60
    expected = np.asarray(estimate.flatten(sub.astype(np.float32)))
    np.testing.assert_allclose(result.cumulants[2], expected, rtol=1e-5, atol=1e-5 * expected.max())  # float32


def test_blocks_read_from_a_file_give_the_images_of_the_sliced_array(stack, tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", stack, imagej=True, metadata={"axes": "TYX"})
    _, _, blocks = io.read_stack_blocks(tmp_path / "s.tif", 30)
    from_file = pipeline.sofi_images(blocks, orders=(2,), linearize=None, block_frames=30)
    in_memory = pipeline.sofi_images(stack, orders=(2,), linearize=None, block_frames=30)
    assert from_file.blocks == in_memory.blocks == 2
    np.testing.assert_array_equal(from_file.cumulants[2], in_memory.cumulants[2])


def test_the_cpu_kernel_and_xla_give_the_same_images(stack):
    """cumulant_kernel "cpu" (numba, every order in one pass per block) and "xla" agree on every
    output up to float32 rounding: ~3e-7 of each image's peak here, checked at 1e-5."""
    kw = dict(orders=(2, 3), linearize="adaptive", fwhm_px=2.8, block_frames=25)
    cpu = pipeline.sofi_images(stack, cumulant_kernel="cpu", **kw)
    xla = pipeline.sofi_images(stack, cumulant_kernel="xla", **kw)
    np.testing.assert_allclose(cpu.mean, xla.mean, rtol=1e-6)  # the kernel sums 8 frames in float32 first
    assert cpu.on_ratio == pytest.approx(xla.on_ratio, rel=1e-5)
    for order in (2, 3):
        for got, want in ((cpu.cumulants[order], xla.cumulants[order]), (cpu.linearized[order], xla.linearized[order])):
            np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    assert (cpu.settings.cumulant_kernel, xla.settings.cumulant_kernel) == ("cpu", "xla")  # recorded as used
    with pytest.raises(InputError, match="cumulant kernel 'gpu': choose auto, cpu or xla"):
        pipeline.sofi_images(stack, cumulant_kernel="gpu")


@pytest.mark.parametrize("kernel", ["cpu", "xla"])
def test_fluctuations_too_small_for_float32_squares_are_not_taken_for_a_constant_stack(stack, kernel):
    """Deviations of ~1e-23 square to below float32's range: the kernel's variance is 0, yet the
    pixels are not constant; both paths give the same refusal (all cross-cumulants underflow)."""
    with pytest.raises(InputError, match="cross-cumulants are all zero"):
        pipeline.sofi_images(stack * np.float32(1e-25), orders=(2,), linearize=None, cumulant_kernel=kernel)


def test_without_a_given_fwhm_it_is_estimated_and_reported(stack):
    # emitters of sigma 1.2 px: FWHM 2.83 px; the estimate from 60 frames of 6 overlapping emitters
    # lies within the estimator's bounds and is reported in the summary
    result = pipeline.sofi_images(stack, orders=(2,), linearize="root")
    summary = pipeline.images_summary(result, "s.tif")
    assert 1.5 < result.fwhm_px < 4.0
    assert summary["fwhm_estimated"] and summary["fwhm_px"] == result.fwhm_px


def test_bsofi_gives_the_balanced_image_and_maps_on_the_order_4_grid(full):
    result = full
    assert result.balanced.shape == pipeline.output_shape((NY, NX), 4)
    assert 0.0 <= result.balanced.min() and result.balanced.max() <= 1.0  # each order scaled to its max
    assert all(np.shape(m) == result.balanced.shape for m in result.bsofi)


def test_the_drawing_extent_centres_pixel_p_at_camera_position_1_5_plus_p_over_n():
    left, right, bottom, top = pipeline.image_extent_nm((17, 21), 2, 100.0)
    assert left + 0.5 * 50.0 == pytest.approx(150.0)  # pixel 0 centre: (1 + 0.5) a
    assert right == pytest.approx(left + 21 * 50.0) and bottom == pytest.approx(top + 17 * 50.0)


def test_written_files_have_sofipackages_names_and_the_order_n_pixel_size(stack, tmp_path):
    result = pipeline.sofi_images(stack, orders=(2,), linearize="adaptive", fwhm_px=2.8)
    names = pipeline.write_images(tmp_path, result, pixel_nm=100.0, name="s")
    assert set(names) == {"mean.tif", "sofi_c2.tif", "sofi_c2.png", "sofi_lin2.tif", "sofi_lin2.png"}
    assert 0.0 < result.on_ratio < 1.0
    assert io.read_pixel_size_um(tmp_path / "sofi_c2.tif") == pytest.approx(0.05)  # 100 nm / 2


def test_a_known_on_ratio_replaces_the_estimate_and_order_3_is_not_computed(stack):
    """Komen 2024, eqs. 3.8-3.9: the exponent is mean(log(i / f_2(rho)) / log(i)) / 2 over the 10
    brightest physical pixels i of the deconvolved image; f_2 = rho (1 - rho)."""
    rho = 0.02
    result = pipeline.sofi_images(stack, orders=(2,), linearize="adaptive", fwhm_px=2.8, on_ratio=rho)
    assert result.on_ratio == rho and result.settings.computed_orders == (2,)
    g = np.asarray(estimate.deconvolve(result.cumulants[2], 2, 2.8))
    bright = np.sort(np.abs(g[::2, ::2]).ravel())[-10:]
    gamma = np.mean(np.log(bright / (rho * (1 - rho))) / np.log(bright)) / 2
    np.testing.assert_allclose(result.linearized[2], g**gamma, rtol=1e-4)


def test_uint16_images_are_sofipackages_65535_times_image_over_its_maximum(full, tmp_path):
    import tifffile

    names = pipeline.write_images(tmp_path, full, pixel_nm=100.0, uint16=True)
    for n, image in full.linearized.items():
        saved = tifffile.imread(tmp_path / f"sofi{n}.tif")
        assert saved.dtype == np.uint16 and saved.max() == 65535
        expected = np.clip(image.astype(np.float64), 0, None) / np.nanmax(image)
        np.testing.assert_allclose(saved / 65535.0, expected, atol=0.5 / 65535 + 1e-7)  # rounding to 1/65535
    assert tifffile.imread(tmp_path / "sofi_c2.tif").dtype == np.uint16
    assert tifffile.imread(tmp_path / "mean.tif").dtype == np.float32  # counts stay counts
    assert tifffile.imread(tmp_path / "bsofi_on_ratio.tif").dtype == np.float32
    assert "bsofi.tif" in names


def test_uint16_of_an_image_without_positive_values_is_zero():
    np.testing.assert_array_equal(pipeline.to_uint16(np.array([[-1.0, np.nan], [0.0, -2.0]])), 0)


# ------------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (blinking_stack(frames=3), {}, "3 frames; order 2 needs at least 4 frames"),
        (blinking_stack()[:, :3, :], {}, "3 x 14 pixels, smaller than the 4 x 4 pixel neighbourhood"),
        (np.full((T, NY, NX), 7.0, np.float32), {}, "no fluctuations: every pixel is constant in time"),
        (np.where(np.arange(T)[:, None, None] == 5, np.nan, blinking_stack()), {}, "non-finite values"),
        (blinking_stack(), {"orders": (5,)}, "order 5: cross-cumulants are built for orders 2-4"),
        (blinking_stack(), {"fwhm_px": -1.0}, "PSF FWHM -1.0 px: must be a positive number"),
        (blinking_stack(), {"block_frames": 3}, "blocks of 3 frames: order 2 needs at least 4 frames per block"),
    ],
    ids=["too-few-frames", "too-small", "constant", "nan", "order-5", "fwhm", "short-blocks"],
)
def test_stacks_that_cannot_be_analysed_are_refused_with_one_line(data, kwargs, message):
    with pytest.raises(InputError) as err:
        pipeline.sofi_images(data, **{"linearize": None, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_stack_whose_pixels_fluctuate_alone_is_refused():
    # one pixel blinking alone: it fluctuates, but every cross-cumulant pairs it with distinct pixels
    # whose deviations are 0, so every product term (and the image) is exactly 0
    data = np.zeros((T, NY, NX), np.float32)
    data[::2, 5, 6] = 5.0
    with pytest.raises(InputError, match="cross-cumulants are all zero"):
        pipeline.sofi_images(data, linearize=None)
