"""DeepFRAP as users run it (fluojax.frap.learned): training learns, checkpoints reload, the hybrid
and its physics check, D rescaling with the frame interval.

A tiny recipe (64 px image, r = 8 px, 5/2/30 frames, 3 x 64 ELU, Adam) keeps training to seconds.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from fluojax.compare import spearman
from fluojax.frap import learned
from fluojax.frap.models import FrapParams, FrapSettings, recovery_curve_fast
from fluojax.frap.simulate import FrapPrior, sample_frap_params, simulate_curves
from fluojax.noise import AffineGaussianNoise

# every test here shares one expensive module fixture: one xdist worker runs them all, so the
# fixture is built once (make test uses --dist loadgroup; without xdist the mark does nothing)
pytestmark = pytest.mark.xdist_group("frap_learned")

SETTINGS = FrapSettings(n_pixels=64, pad=32, n_prebleach=5, n_bleach=2, n_postbleach=30)
PRIOR = FrapPrior.from_um2_s((1.0, 100.0))
SMALL = learned.RECIPES["deepfrap-small"]
TINY = dataclasses.replace(
    SMALL,
    name="tiny",
    settings=SETTINGS,
    radius_px=8.0,
    prior=PRIOR,
    net=dataclasses.replace(SMALL.net, inputs=35),
    train=dataclasses.replace(SMALL.train, steps=600, batch_size=128, eval_every=300, eval_batches=2),
)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny_run")
    net, history = learned.train_recipe(TINY, run, progress=False)
    return run, net, history


def _fresh_curves(n, key=7, a=1e-3):
    table, n_eff = learned.deepfrap_table(SETTINGS, 8.0)
    sample = sample_frap_params(jax.random.key(key), n, PRIOR)
    curves = simulate_curves(
        jax.random.key(key + 1), sample.params, table, AffineGaussianNoise(np.full(n, a, np.float32)), n_eff
    )
    return table, sample.params, np.asarray(curves)


def test_training_lowers_held_out_loss_and_predictions_track_d(trained):
    run, net, history = trained
    assert history.eval_loss[-1] < 0.1 * history.eval_loss[0]  # untrained row 0 vs end: learning happened
    _, meta = learned.load_network(run)
    _, params, curves = _fresh_curves(512)
    pred = learned.predict_curves(net, meta, curves)
    assert spearman(pred[:, 0], np.asarray(params.d_px2_s)) > 0.9  # held-out curves, never seen in training


def test_reloaded_network_gives_the_same_predictions(trained):
    run, net, _ = trained
    reloaded, meta = learned.load_network(run)
    _, _, curves = _fresh_curves(64)
    np.testing.assert_allclose(
        learned.predict_curves(reloaded, meta, curves), learned.predict_curves(net, meta, curves), rtol=1e-6
    )
    assert meta["settings"]["n_postbleach"] == 30 and meta["radius_px"] == 8.0


def test_d_scales_inversely_with_the_frame_interval(trained):
    # the curves depend on D and dt only through D dt: the same curve at twice the dt means half the D
    run, net, _ = trained
    _, meta = learned.load_network(run)
    _, _, curves = _fresh_curves(8)
    base = learned.predict_curves(net, meta, curves)
    slower = learned.predict_curves(net, meta, curves, dt_s=2 * SETTINGS.dt_s)
    np.testing.assert_allclose(slower[:, 0], base[:, 0] / 2, rtol=1e-12)
    np.testing.assert_array_equal(slower[:, 1:], base[:, 1:])


def test_predict_refuses_curves_of_another_length(trained):
    run, net, _ = trained
    _, meta = learned.load_network(run)
    with pytest.raises(ValueError, match="35 values"):
        learned.predict_curves(net, meta, np.ones((2, 40)))


def test_load_network_refuses_another_kind_of_checkpoint(trained, tmp_path):
    run, _, _ = trained
    ckpt = next((run / "checkpoints").iterdir())
    fake = tmp_path / "fcsnet"
    fake.mkdir()
    meta = json.loads((ckpt / "meta.json").read_text())
    (fake / "meta.json").write_text(json.dumps({**meta, "fluojax_network": "fcsnet"}))
    with pytest.raises(ValueError, match="not a DeepFRAP"):
        learned.load_network(fake)
    with pytest.raises(ValueError, match="no meta.json"):  # noqa: RUF043
        learned.load_network(tmp_path)


def test_refine_from_a_wrong_start_finds_the_exact_parameters_and_flags_the_start():
    table, _ = learned.deepfrap_table(SETTINGS, 8.0)
    truth = np.array([[20.0, 0.8, 0.6], [80.0, 0.6, 0.8]])
    curves = np.stack([np.asarray(recovery_curve_fast(FrapParams(*t), table)) for t in truth])  # noise-free
    start = truth * np.array([1.5, 1.05, 0.9])
    refined = learned.refine(curves, table, start)
    # noise-free data: the fit must land on the truth (float32 model: ~1e-4 relative in D)
    np.testing.assert_allclose(refined.fit.params, truth, rtol=2e-3)
    assert np.all(refined.residual_ratio > 100)  # the wrong start fits far worse than the optimum
    at_truth = learned.refine(curves, table, truth)
    np.testing.assert_allclose(at_truth.fit.params, truth, rtol=2e-3)


def test_refine_bounds_follow_the_given_prior():
    # a deep bleach (alpha = 0.15) lies below the default bound alpha_min / 2 = 0.225 of Table 1's
    # prior; with a prior reaching alpha = 0.1 (bounds [0.05, 1], as `frap fit` uses) it is inside
    table, _ = learned.deepfrap_table(SETTINGS, 8.0)
    truth = np.array([[30.0, 0.8, 0.15]])
    curves = np.asarray(recovery_curve_fast(FrapParams(*truth[0]), table))[None]  # noise-free
    start = np.array([[40.0, 0.75, 0.3]])
    default = learned.refine(curves, table, start)
    # cannot reach the truth: the fit runs into the bound (reported as not converged, NaN) or stops on it
    assert not default.fit.params[0, 2] < 0.224
    wide = learned.refine(curves, table, start, prior=FrapPrior(alpha_range=(0.1, 0.95)))
    np.testing.assert_allclose(wide.fit.params, truth, rtol=2e-3)


def test_cli_train_refuses_a_run_folder_of_another_recipe_before_building_anything(trained, monkeypatch, capsys):
    from fluojax.cli import main

    run = trained[0]

    def fail(*args, **kwargs):
        raise AssertionError("built before the run folder was checked")

    monkeypatch.setitem(learned.RECIPES, "tiny", TINY)  # so that the message can name it as a --config
    monkeypatch.setattr(learned.nets, "build_network", fail)
    monkeypatch.setattr(learned, "deepfrap_table", fail)
    metrics = (run / "metrics.csv").read_text()
    assert main(["frap", "train", "--config", "deepfrap-small", "-o", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"fluojax: error: -o {run} holds a tiny run (step 600); use --config tiny to resume it, or another folder"
    )
    assert (run / "metrics.csv").read_text() == metrics
