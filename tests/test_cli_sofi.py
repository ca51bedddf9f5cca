"""``fluojax sofi``: STACK.tif (the implied ``image`` subcommand) -> TIFFs, PNGs and summary.json on the
n (N - 4) + 1 grid; simulate -> SOFI; and one clear error line (exit 2, nothing written) for each
bad input (issue 20, items 7 and 8)."""

import json

import numpy as np
import pytest
import tifffile

from fluojax import io
from fluojax.cli import main

pytestmark = pytest.mark.xdist_group("cli_sofi")  # its session fixtures are built once, on one worker


def _pair_stack(frames: int = 60, ny: int = 12, nx: int = 14, seed: int = 1) -> np.ndarray:
    """Two 3 x 3 blobs switching on and off at random (independently) over a flat level of 20, + noise."""
    rng = np.random.default_rng(seed)
    data = 20.0 + rng.normal(0.0, 1.0, (frames, ny, nx))
    for (y, x), p in (((4, 4), 0.4), ((7, 9), 0.25)):
        data[:, y - 1 : y + 2, x - 1 : x + 2] += 50.0 * (rng.random(frames) < p)[:, None, None]
    return data.astype(np.float32)


@pytest.fixture(scope="session")
def stack_file(tmp_path_factory):
    """A 60-frame 12 x 14 stack with 100-nm pixels in its ImageJ calibration."""
    path = tmp_path_factory.mktemp("sofi") / "pair.tif"
    io.write_stack(path, _pair_stack(), 0.01, 0.1)
    return path


@pytest.fixture(scope="session")
def result(stack_file):
    """``fluojax sofi STACK.tif --order 2-4 --bsofi --fwhm 2.8`` (the implied image subcommand)."""
    out = stack_file.parent / "out"
    assert main(["sofi", str(stack_file), "--order", "2-4", "--bsofi", "--fwhm", "2.8", "-o", str(out)]) == 0
    return out


def test_the_images_of_orders_2_to_4_have_n_times_n_minus_4_plus_1_pixels_and_their_pixel_size(result):
    for n in (2, 3, 4):
        for stem in (f"sofi_c{n}", f"sofi{n}"):
            image = tifffile.imread(result / f"{stem}.tif")
            assert image.shape == (n * (12 - 4) + 1, n * (14 - 4) + 1) and image.dtype == np.float32
            assert (result / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert io.read_pixel_size_um(result / f"{stem}.tif") == pytest.approx(0.1 / n)  # 100 nm / n
    assert tifffile.imread(result / "bsofi.tif").shape == (33, 41)  # the order-4 grid
    assert tifffile.imread(result / "mean.tif").shape == (12, 14)


def test_the_summary_lists_the_settings_frames_and_files(result):
    summary = json.loads((result / "summary.json").read_text())
    assert summary["settings"]["orders"] == [2, 3, 4] and summary["frames"] == 60 and summary["pixel_nm"] == 100.0
    assert summary["cumulants"]["3"]["shape"] == [25, 31]
    written = set(json.loads((result / io.RESULT_MARKER).read_text())["files"])
    assert set(summary["files"]) | {"summary.json"} == written


def test_the_image_subcommand_named_and_implied_are_the_same(stack_file, tmp_path, capsys):
    named, implied = tmp_path / "named", tmp_path / "implied"
    argv = ["--order", "2", "--linearize", "none", "--block-frames", "25"]
    assert main(["sofi", "image", str(stack_file), *argv, "-o", str(named)]) == 0
    assert main(["sofi", str(stack_file), *argv, "-o", str(implied)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "in 2 block(s)" in printed[0]  # 25 + 35 frames: the tail joins
    np.testing.assert_array_equal(tifffile.imread(named / "sofi_c2.tif"), tifffile.imread(implied / "sofi_c2.tif"))
    assert not (named / "sofi2.tif").exists()  # --linearize none: flat cumulants only


def test_several_stacks_give_a_result_folder_each_and_a_summary(stack_file, tmp_path, capsys):
    """As the fit commands: each stack its own folder under -o, a bad one refused in one line
    without stopping the others, the batch summary, exit code 2 (a stack was refused)."""
    second = tmp_path / "second.tif"
    io.write_stack(second, _pair_stack(seed=2), 0.01, 0.1)
    bad = tmp_path / "flat.tif"
    io.write_stack(bad, np.full((60, 12, 14), 20.0, np.float32), 0.01)
    out = tmp_path / "batch"
    code = main(["sofi", str(stack_file), str(bad), str(second), "--order", "2", "--fwhm", "2.8", "-o", str(out)])
    assert code == 2
    assert "flat.tif: no fluctuations" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["results"]] == ["fitted", "refused", "fitted"]
    assert sorted(p.name for p in out.iterdir()) == ["pair", "second", "summary.json"]
    for name, seed in (("pair", 1), ("second", 2)):  # each folder holds its own stack's images
        alone = tmp_path / f"alone_{name}"
        stack = tmp_path / f"{name}_copy.tif"
        io.write_stack(stack, _pair_stack(seed=seed), 0.01, 0.1)
        assert main(["sofi", str(stack), "--order", "2", "--fwhm", "2.8", "-o", str(alone)]) == 0
        np.testing.assert_array_equal(tifffile.imread(out / name / "sofi2.tif"), tifffile.imread(alone / "sofi2.tif"))


def test_a_given_on_ratio_is_used_and_recorded(stack_file, tmp_path):
    out = tmp_path / "rho"
    argv = ["sofi", str(stack_file), "--order", "2", "--linearize", "adaptive", "--on-ratio", "0.05", "-o", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["on_ratio"] == 0.05 and summary["settings"]["on_ratio"] == 0.05


def test_an_fwhm_estimate_at_its_bound_is_warned_about(tmp_path, capsys):
    # independent Poisson noise: no PSF in the cumulants, the estimate runs to a bound (or lands
    # anywhere in between; this seed reaches 7 px, as the 24 x 24 x 100 stack of the docs)
    path = tmp_path / "noise.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        path, rng.poisson(100, (100, 24, 24)).astype(np.uint16), photometric="minisblack", metadata={"axes": "TYX"}
    )
    assert main(["sofi", str(path), "--order", "2", "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "the PSF FWHM estimate sits at its bound, 7 px" in err and err.count("\n") == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["warnings"]


def test_simulate_writes_a_stack_its_truth_and_emitters_that_sofi_reads(tmp_path):
    from fluojax.sofi import pipeline

    sim = tmp_path / "sim"
    argv = ["sofi", "simulate", "--preset", "small", "--size", "12", "--frames", "40", "--seed", "3"]
    assert main([*argv, "-o", str(sim)]) == 0
    assert tifffile.imread(sim / "stack.tif").shape == (40, 12, 12)
    assert io.read_pixel_size_um(sim / "stack.tif") == pytest.approx(0.1)  # the thesis's 100 nm pixels
    assert tifffile.imread(sim / "truth.tif").shape == (17, 17)  # the order-2 grid: 2 (12 - 4) + 1
    summary = json.loads((sim / "summary.json").read_text())
    rows = (sim / "emitters.csv").read_text().splitlines()
    assert rows[0].startswith('"id","x [nm]","y [nm]"') and len(rows) == 1 + summary["emitters"]
    shape, _, _ = io.read_stack_blocks(sim / "stack.tif", 40)  # what 'fluojax sofi' reads
    assert shape == (40, 12, 12) and pipeline.output_shape(shape[1:], 2) == (17, 17)  # the truth's grid


def test_simulate_spreads_the_emitters_over_the_filament_width_asked_for(tmp_path):
    # the same seed grows the same filaments; 5000 /um^2 over 50 nm instead of 10 nm: ~5x the emitters
    argv = ["sofi", "simulate", "--preset", "small", "--frames", "3", "--seed", "3"]
    assert main([*argv, "-o", str(tmp_path / "narrow")]) == 0
    assert main([*argv, "--filament-width", "50", "-o", str(tmp_path / "wide")]) == 0
    narrow, wide = (json.loads((tmp_path / f / "summary.json").read_text()) for f in ("narrow", "wide"))
    assert (narrow["filament_width_nm"], wide["filament_width_nm"]) == (10.0, 50.0)
    assert narrow["emitters"] > 100  # Poisson counts: the ratio is 5 within ~4 s.d.
    assert 5 * narrow["emitters"] == pytest.approx(wide["emitters"], rel=4 * (1 / narrow["emitters"]) ** 0.5)


def test_simulate_reads_the_same_photons_out_with_the_camera_asked_for(tmp_path):
    # One seed, the same expected photons; the ideal camera counts them (mean = photons), the
    # EMCCD of the SMLM Challenge 2016 has mean 100 ADU + (0.9 photons + 0.002 e-) x 300 / 45.
    # Means over 20 x 32 x 32 pixels of ~1-10 photons: s.e. about 1 % (the EMCCD doubles the
    # variance); 3 % allowed.
    means = {}
    for camera in ("ideal", "emccd"):
        out = tmp_path / camera
        argv = ["sofi", "simulate", "--preset", "small", "--frames", "20", "--camera", camera, "-o", str(out)]
        assert main(argv) == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["camera"] == camera
        assert summary["settings"]["camera"]["kind"] == {"ideal": "IdealCamera", "emccd": "EMCCD"}[camera]
        means[camera] = float(tifffile.imread(out / "stack.tif").mean())
    assert means["emccd"] - 100.0 == pytest.approx((0.9 * means["ideal"] + 0.002) * 300 / 45, rel=0.03)


def test_the_choices_of_the_command_are_the_librarys():
    from fluojax.cli import sofi as cli_sofi
    from fluojax.sofi import pipeline

    assert set(cli_sofi.PRESET_NAMES) == set(pipeline.PRESETS)
    assert set(cli_sofi.CAMERA_NAMES) == set(pipeline.CAMERAS)
    assert set(cli_sofi.LINEARIZE_NAMES) == {*pipeline.LINEARIZATIONS, "none"}


# ------------------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 2, nothing written


def _refused(argv, message, out, capsys):
    assert main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fluojax: error: "), err
    assert message in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        (_pair_stack(frames=3), [], "3 frames; order 4 needs at least 4 frames"),
        (_pair_stack(ny=3), ["--order", "2"], "3 x 14 pixels, smaller than the 4 x 4 pixel neighbourhood"),
        (np.full((60, 12, 14), 100, np.uint16), ["--order", "2"], "no fluctuations: every pixel is constant in time"),
        (_pair_stack(), ["--order", "5"], "order 5: cross-cumulants are built for orders 2-4"),
        (_pair_stack(), ["--order", "2-x"], "orders '2-x': give an order (2), a range (2-4) or a list (2,4)"),
        (_pair_stack(), ["--order", "2", "--block-frames", "3"], "blocks of 3 frames: order 2 needs at least 4"),
        # 5 x 6 pixels leave 2 x 3 camera pixels with cumulants: rho_on averages the 10 brightest
        (
            _pair_stack(ny=5, nx=6),
            ["--order", "2", "--linearize", "adaptive"],
            "leave 2 x 3 with cumulants, fewer than the 10 brightest points",
        ),
        (_pair_stack(), ["--linearize", "adaptive", "--on-ratio", "1.5"], "on-time ratio 1.5: must lie between 0"),
        (_pair_stack(), ["--on-ratio", "0.1"], "an on-time ratio is for the adaptive linearization"),
        # f_3 = rho (1 - rho) (1 - 2 rho) vanishes at 1/2
        (
            _pair_stack(),
            ["--order", "3", "--linearize", "adaptive", "--on-ratio", "0.5"],
            "on-time ratio 0.5: the order-3 Bernoulli cumulant f_3 vanishes there",
        ),
    ],
    ids=[
        "too-few-frames",
        "too-small",
        "constant",
        "order-5",
        "unreadable-order",
        "short-blocks",
        "adaptive-tiny",
        "on-ratio-above-1",
        "on-ratio-without-adaptive",
        "on-ratio-at-a-root",
    ],
)
def test_stacks_and_settings_that_cannot_give_images_are_refused(data, options, message, tmp_path, capsys):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "TYX"})
    _refused(["sofi", str(path), *options], message, tmp_path / "out", capsys)


def test_a_missing_stack_is_refused_and_a_mistyped_subcommand_is_named(tmp_path, capsys):
    _refused(["sofi", str(tmp_path / "no.tif")], "no.tif: no such file", tmp_path / "out", capsys)
    _refused(
        ["sofi", "simulte"], "simulte: no such file (and not a subcommand: image, simulate", tmp_path / "o", capsys
    )


def test_the_help_of_an_implied_image_subcommand_is_the_image_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sofi", "STACK.tif", "--help"])
    assert exit_info.value.code == 0
    assert "--linearize {root,adaptive,none}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# the network


@pytest.fixture(scope="session")
def network(tmp_path_factory):
    """An untrained MISR-GRU of 4-frame windows, small (2 channels, 1 residual block, 1 ConvGRU
    layer), saved as 'fluojax sofi train' saves one: the command's plumbing, not the network's
    accuracy (docs/sofi.md has that)."""
    import dataclasses

    from fluojax import networks
    from fluojax.sofi import learned, nets

    config = nets.MisrGruConfig(channels=2, residual_blocks=1, gru_layers=1, frames=4)
    meta = {
        "fluojax_network": learned.NETWORK_KIND,
        "recipe": "test",
        "net_config": dataclasses.asdict(config),
        "pixel_nm": 100.0,
        "fwhm_nm": 220.0,
        "linearization": "adaptive",
        "movie_frames": 100,
    }
    return networks.save_network(tmp_path_factory.mktemp("net") / "ckpt", nets.build_network(config), meta)


def test_predict_writes_the_networks_order_2_image_of_the_first_window(stack_file, network, tmp_path, capsys):
    out = tmp_path / "net"
    assert main(["sofi", "predict", str(stack_file), "--net", str(network), "-o", str(out)]) == 0
    assert tifffile.imread(out / "sofinet2.tif").shape == (2 * 12 - 7, 2 * 14 - 7)  # the order-2 grid
    assert io.read_pixel_size_um(out / "sofinet2.tif") == pytest.approx(0.05)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["windows"], summary["frames_used"], summary["window_frames"]) == (1, 4, 4)
    assert "1 window(s)" in capsys.readouterr().out


def test_predict_in_windows_writes_each_windows_image_and_their_mean(stack_file, network, tmp_path):
    out = tmp_path / "net"
    assert main(["sofi", "predict", str(stack_file), "--net", str(network), "--stride", "20", "-o", str(out)]) == 0
    windows = tifffile.imread(out / "sofinet2_windows.tif")
    assert windows.shape == (3, 17, 21)  # windows starting at frames 0, 20, 40 of 60
    np.testing.assert_allclose(tifffile.imread(out / "sofinet2.tif"), windows.mean(axis=0), rtol=1e-6)


def test_predict_refuses_a_stack_shorter_than_the_networks_window(network, tmp_path, capsys):
    path = tmp_path / "short.tif"
    io.write_stack(path, _pair_stack(frames=3), 0.01, 0.1)
    _refused(
        ["sofi", "predict", str(path), "--net", str(network)], "trained on 4-frame windows", tmp_path / "o", capsys
    )


def test_predict_refuses_a_constant_stack(network, tmp_path, capsys):
    path = tmp_path / "constant.tif"
    io.write_stack(path, np.full((10, 12, 14), 100.0, np.float32), 0.01, 0.1)
    _refused(
        ["sofi", "predict", str(path), "--net", str(network)],
        "constant.tif: frames 0-3: no pixel changes",
        tmp_path / "o",
        capsys,
    )


def test_predict_refuses_a_folder_that_holds_no_network(stack_file, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["sofi", "predict", str(stack_file), "--net", str(tmp_path / "empty")]
    _refused(argv, f"--net {tmp_path / 'empty'}", tmp_path / "o", capsys)
