"""Specification of the learned-FCS glue (fluojax.fcs.learned): physics check, hybrid start, nets."""

import jax
import numpy as np
import pytest

from fluojax.fcs import correlator, estimate, models, pipeline
from fluojax.fcs.learned import physics_check_chi2

pytestmark = [
    pytest.mark.xdist_group("fcs_learned"),
    pytest.mark.slow,
]  # its session fixture is built once, on one worker

FRAME_TIME_S = 1.06e-3
SETTINGS = pipeline.AnalysisSettings(FRAME_TIME_S, models.Optics())
LAG_S = correlator.lag_grid(16, 8).lags * FRAME_TIME_S


def noisy_model_acfs(d, n=20.0, g_inf=1e-4, rel_sem=0.02, seed=0):
    """Model ACFs (closed-form 2D ITIR) with Gaussian noise of known s.d. -> (acf, sem)."""
    theta = np.stack([np.full_like(d, n), d, np.full_like(d, g_inf)], axis=1)
    clean = np.asarray(jax.vmap(lambda t: pipeline.acf_model_2d(t, (LAG_S, SETTINGS.optics)))(theta))
    sem = np.broadcast_to(rel_sem * clean[:, :1], clean.shape)
    rng = np.random.default_rng(seed)
    return clean + sem * rng.standard_normal(clean.shape), sem


def test_physics_check_at_true_d_gives_reduced_chi2_near_one():
    d = np.geomspace(0.1, 10, 400)
    acf, sem = noisy_model_acfs(d)
    _, _, shape = estimate.model_and_shape(SETTINGS)
    chi2, n, _g_inf = physics_check_chi2(acf, sem, LAG_S, d, shape)
    # chi^2 with 72 - 3 degrees of freedom: mean 1, s.d. of the mean over 400 curves sqrt(2/69/400)
    # ~ 0.009; 2 of the 3 numbers are fitted here, so the mean is a hair above 1 -> 0.05 window
    assert abs(np.mean(chi2) - 1.0) < 0.05
    np.testing.assert_allclose(np.median(n), 20.0, rtol=0.02)  # amplitude to 2 % SEM -> N to ~0.1 %


def test_physics_check_flags_a_wrong_d():
    d = np.geomspace(0.1, 10, 50)
    acf, sem = noisy_model_acfs(d)
    _, _, shape = estimate.model_and_shape(SETTINGS)
    chi2, _, _ = physics_check_chi2(acf, sem, LAG_S, 10.0 * d, shape)
    assert np.all(chi2 > 10.0)


def test_physics_check_returns_nan_for_unusable_d():
    acf, sem = noisy_model_acfs(np.array([1.0, 1.0]))
    _, _, shape = estimate.model_and_shape(SETTINGS)
    chi2, _, _ = physics_check_chi2(acf, sem, LAG_S, np.array([np.nan, -1.0]), shape)
    assert np.all(np.isnan(chi2))


def test_hybrid_start_from_true_d_converges_in_fewer_steps():
    d = np.geomspace(0.1, 10, 256)
    acf, sem = noisy_model_acfs(d, seed=3)
    plain = pipeline.fit_acfs(acf, sem, LAG_S, SETTINGS)
    hybrid = pipeline.fit_acfs(acf, sem, LAG_S, SETTINGS, start_d_um2_s=d)
    # both reach the same least-squares optimum (same data, same objective) ...
    np.testing.assert_allclose(hybrid.params[:, 1], plain.params[:, 1], rtol=1e-3)
    # ... but starting at the right D needs fewer LM iterations on average
    assert np.mean(hybrid.num_steps) < np.mean(plain.num_steps)


# ---------------------------------------------------------------------------------------------
# networks trained through the shared loop
# ---------------------------------------------------------------------------------------------


from scipy.stats import spearmanr  # noqa: E402

from fluojax.fcs import learned, simulate  # noqa: E402

# the CPU recipe as shipped: 64 + 16 simulated stacks of 5,000 frames, 400 steps (~1 min)
TEST_RECIPE = learned.RECIPES["fcsnet-2d-small"]


# the tests of the trained FCSNet share one worker, so its ~90 s training runs once (make test
# uses --dist loadgroup); without xdist the mark does nothing
FCSNET_GROUP = pytest.mark.xdist_group("trained_fcsnet")


@pytest.fixture(scope="session")
def trained_fcsnet(tmp_path_factory):
    run = tmp_path_factory.mktemp("fcsnet")
    net, history = learned.train_recipe(TEST_RECIPE, run, progress=False)
    return run, net, history


@pytest.fixture(scope="session")
def held_out_pool():
    """The recipe's held-out pool (16 stacks, 144 ACFs; seed 0 as in ``train_recipe``): simulated
    with a key of its own, scored during training but never trained on."""
    acf, ln_d = learned._acf_pool(
        jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 10_007), 1),
        TEST_RECIPE,
        TEST_RECIPE.held_out_stacks,
        progress=False,
    )
    return np.asarray(acf), np.asarray(ln_d)


@FCSNET_GROUP
def test_small_fcsnet_training_halves_held_out_loss(trained_fcsnet, held_out_pool):
    _, _, history = trained_fcsnet
    # row 0 is the untrained network (its loss is huge: BatchNorm still has unit statistics)
    assert history.eval_loss[-1] < 0.5 * history.eval_loss[0]
    # the stricter reference: predicting the mean ln D of the held-out set scores its variance
    # (ln D log-uniform on [ln 0.02, ln 50]: ~5.1; over 16 stacks a little less). A network that
    # reads the ACF decay must beat half of that.
    _, ln_d = held_out_pool
    assert history.eval_loss[-1] < 0.5 * float(np.var(ln_d))


@FCSNET_GROUP
def test_small_fcsnet_predictions_rank_like_true_d_on_unseen_stacks(trained_fcsnet, held_out_pool):
    run, _, _ = trained_fcsnet
    net, meta = learned.load_network(run, expect="fcsnet")
    acf, ln_d = held_out_pool  # 16 stacks of 16 different D, none of them trained on
    pred = learned.predict_ln_d(net, acf)
    assert meta["recipe"] == "fcsnet-2d-small"
    assert spearmanr(pred, ln_d).statistic > 0.8


@FCSNET_GROUP
def test_loading_a_checkpoint_of_the_other_network_is_refused(trained_fcsnet):
    run, _, _ = trained_fcsnet
    with pytest.raises(ValueError, match="fcsnet checkpoint, not a imfcsnet"):
        learned.load_network(run, expect="imfcsnet")


def test_loading_a_folder_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a fluojax network checkpoint"):
        learned.load_network(tmp_path)


def test_imfcsnet_map_marks_the_border_and_averages_chunks():
    from flax import nnx

    from fluojax.fcs import nets

    net = nnx.view(nets.build_network(nets.ImFCSNetConfig.small()), use_running_average=True)
    stack = np.asarray(jax.random.poisson(jax.random.key(0), 4.0, (2 * 500, 6, 5)), np.float32)
    out = learned.predict_imfcsnet_map(net, stack, window_frames=500, overlap=True, progress=False)
    assert out["chunks"] == 2 and out["ln_d_chunks"].shape == (2, 6, 5)
    # the 1-pixel border has no 3 x 3 window centred on it
    expected_edge = np.ones((6, 5), bool)
    expected_edge[1:-1, 1:-1] = False
    np.testing.assert_array_equal(out["edge"], expected_edge)
    inner = out["ln_d_chunks"][:, 1:-1, 1:-1]
    np.testing.assert_allclose(np.log(out["d_um2_s"][1:-1, 1:-1]), inner.mean(axis=0), rtol=1e-5)
    # a window's value is the network on that window alone
    alone = learned.predict_ln_d(net, stack[None, :500, 2:5, 1:4])
    np.testing.assert_allclose(out["ln_d_chunks"][0, 3, 2], alone[0], rtol=1e-5, atol=1e-5)
    tiles = learned.predict_imfcsnet_map(net, stack, window_frames=500, overlap=False, progress=False)
    assert tiles["ln_d_chunks"].shape == (2, 2, 1) and not tiles["edge"].any()


def test_imfcsnet_map_refuses_a_stack_shorter_than_one_chunk():
    from flax import nnx

    from fluojax.fcs import nets

    net = nnx.view(nets.build_network(nets.ImFCSNetConfig.small()), use_running_average=True)
    with pytest.raises(ValueError, match="chunks of 2500 frames"):
        learned.predict_imfcsnet_map(net, np.zeros((1000, 5, 5), np.float32), window_frames=2500, progress=False)


def test_training_batches_for_imfcsnet_come_from_the_simulator():
    recipe = learned.RECIPES["imfcsnet-2d-small"]
    x, y = recipe.sampler()(jax.random.key(1))
    stacks, params = simulate.simulate_training_batch(jax.random.key(1), recipe.prior, recipe.stacks_per_batch)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(stacks))
    np.testing.assert_allclose(np.asarray(y), np.log(np.asarray(params.d_um2_s)), rtol=1e-6)
