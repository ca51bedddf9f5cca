"""The command line as a thin layer: a fast parser that imports no numerics, and the library
functions that took over its domain work (default optics, summaries, FRAP network orchestration)
and its figures."""

import json
import subprocess
import sys
import types

import numpy as np
import pytest

from fluojax.cli import _parser


def test_help_of_the_command_and_its_techniques_imports_no_numerics():
    # `fluojax --help`, `fluojax fcs --help` & co. must answer at once: none of jax, flax, numpy,
    # matplotlib or the network modules may be imported to build or print them (a fresh process,
    # since this test process has imported everything already)
    script = (
        "import sys\n"
        "from fluojax.cli import main\n"
        "for argv in (['--help'], ['fcs', '--help'], ['frap', '--help'], ['fcs', 'fit', '--help'], ['frap', 'fit', '--help'],"
        " ['demo', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (argv, e.code)\n"
        "heavy = ('jax', 'flax', 'numpy', 'matplotlib', 'fluojax.fcs.learned', 'fluojax.frap.learned')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("technique", ["fcs", "frap"])
def test_train_accepts_exactly_the_library_recipes(technique, tmp_path):
    # the --config names come from the technique's RECIPES, not from a copy in the command line
    import importlib

    recipes = importlib.import_module(f"fluojax.{technique}.learned").RECIPES
    for name in recipes:
        args = _parser().parse_args([technique, "train", "--config", name, "-o", str(tmp_path / "run")])
        assert args.config == name
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args([technique, "train", "--config", "no-such-recipe", "-o", str(tmp_path / "run")])
    assert exit_info.value.code == 2


# ------------------------------------------------------------------------------------------------
# fcs.pipeline: default optics and the map summary


def test_default_optics_are_the_imaging_fcs_plugins_2d_and_3d_settings(optics_2d, optics_3d):
    from fluojax.fcs.pipeline import default_optics

    # the plugin's ITIR-FCS defaults (conftest: 240 nm pixels, NA 1.45 oil, 583 nm, sigma0 0.8) and
    # its SPIM-FCS ones (400 nm pixels, NA 1.0 water, 515 nm, sigma0 1.1, sigmaz 2.2, n 1.333)
    assert default_optics("2d") == optics_2d
    assert default_optics("3d") == optics_3d._replace(immersion_index=1.333)


def test_default_optics_take_overrides_and_refuse_impossible_optics():
    from fluojax.fcs.pipeline import default_optics

    optics = default_optics("3d", camera_pixel_um=16.0, binning=2, na=1.1, magnification=None)
    assert (optics.camera_pixel_um, optics.binning, optics.na, optics.magnification) == (16.0, 2, 1.1, 60.0)
    with pytest.raises(ValueError, match="NA 1.4: must be below"):  # noqa: RUF043
        default_optics("3d", na=1.4)  # NA above the water index 1.333: no such objective
    with pytest.raises(ValueError, match="unknown optics"):
        default_optics("2d", wavelength=500.0)


def test_maps_summary_counts_statuses_and_takes_medians_of_fitted_pixels():
    from fluojax.fcs.pipeline import AnalysisSettings, FCSMaps, PixelStatus, default_optics, maps_summary

    d = np.array([[1.0, 3.0], [np.nan, 2.0]], np.float32)
    ones = np.ones((2, 2), np.float32)
    status = np.array([[0, 3], [PixelStatus.NO_SIGNAL, 0]], np.uint8)
    maps = FCSMaps(d, 2 * ones, 0 * ones, ones, status, ones, None, None, None, {"fit": 1.0}, {"order": 0})
    settings = AnalysisSettings(frame_time_s=1e-3, optics=default_optics("2d"), bleach_order=0)
    summary = maps_summary(maps, settings)
    json.dumps(summary)  # JSON-ready
    assert (summary["pixels"], summary["fitted"]) == (4, 3)
    assert summary["status_counts"] == {"converged": 2, "at a bound": 1, "no signal (constant/zero)": 1}
    assert summary["medians"]["D_um2_s"] == 2.0  # median of 1, 3, 2: the unfitted pixel is left out
    assert summary["settings"]["object_pixel_um"] == pytest.approx(0.24)  # 24 um / 100x


# ------------------------------------------------------------------------------------------------
# frap.pipeline: a network's answer on a prepared stack


def _prepared(radius_px: float, dt_s: float):
    """A 24 x 24 stack whose ROI drops from 1 to 0.5 after 3 prebleach frames (+ small ripples)."""
    from fluojax.frap import pipeline

    t, n = 13, 24
    stack = np.ones((t, n, n)) + 0.01 * np.arange(t)[:, None, None]
    stack[3:, 6:18, 6:18] *= 0.5
    return pipeline.prepare_stack(stack, pipeline.CircleROI(12.0, 12.0, radius_px), 3, 2, dt_s)


def test_a_networks_d_is_rescaled_for_the_datas_frame_interval_and_roi_radius():
    import jax.numpy as jnp
    from flax import nnx

    from fluojax.frap import pipeline

    # DeepFRAP's curve depends on D only through D dt / R^2: a network trained at dt = 0.5 s and
    # R = 4 px that answers D_net means D_net (0.5 / dt) (R / 4)^2 for data at dt and R
    log10_d, c0, alpha = 1.5, 0.7, 0.6

    class Constant(nnx.Module):  # a "network" with a known answer: (log10 D, c0, alpha) for every curve
        def __call__(self, x):
            return jnp.tile(jnp.array([log10_d, c0, alpha]), (x.shape[0], 1))

    net = Constant()
    meta = {"settings": {"n_prebleach": 3, "n_postbleach": 10, "dt_s": 0.5}, "radius_px": 4.0}
    prediction = pipeline.predict_prepared(net, meta, _prepared(radius_px=6.0, dt_s=0.25))
    assert prediction.radius_factor == pytest.approx(2.25)
    np.testing.assert_allclose(
        prediction.params, [10**1.5 * 2.0 * 2.25, c0, alpha], rtol=1e-6
    )  # float32 network output


def test_starts_outside_the_bounds_are_moved_just_inside():
    from fluojax.frap import estimate
    from fluojax.frap.simulate import FrapPrior

    table = types.SimpleNamespace(d_range_px2_s=(1.0, 100.0))  # frap_bounds reads only the D range
    prior = FrapPrior(c0_range=(0.5, 1.0), alpha_range=(0.1, 0.95))
    start = estimate.start_in_bounds(np.array([[1e4, 5.0, 0.01], [np.nan, 0.7, 0.5]]), table, prior)
    # D strictly inside the table range, c0 in [c0_min / 2, 2 c0_max], alpha in [alpha_min / 2, 1]; NaN -> 1
    np.testing.assert_allclose(start, [[100.0 / 1.001, 2.0, 0.05], [1.001, 0.7, 0.5]])


# ------------------------------------------------------------------------------------------------
# plotting


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_figures_are_written_as_png_files_even_without_a_fitted_pixel(tmp_path):
    from fluojax import plotting
    from fluojax.frap.models import FrapSettings

    nothing = types.SimpleNamespace(d_um2_s=np.full((3, 3), np.nan, np.float32))
    plotting.plot_d_map(tmp_path / "maps.png", nothing, "no pixel fitted")
    history = types.SimpleNamespace(step=[0, 10, 20], train_loss=[np.nan, 0.5, 0.2], eval_loss=[1.0, 0.4, 0.3])
    plotting.plot_training(tmp_path / "loss.png", history)
    settings = FrapSettings(n_pixels=16, pad=8, n_prebleach=2, n_bleach=1, n_postbleach=4, dt_s=0.5)
    times, data = settings.frame_times_s(), np.linspace(1.0, 0.5, 6)
    plotting.plot_recovery(
        tmp_path / "fit.png", settings, times, data, {"model": data, "failed": np.full(6, np.nan)}, "t"
    )
    assert all(_is_png(tmp_path / name) for name in ("maps.png", "loss.png", "fit.png"))
