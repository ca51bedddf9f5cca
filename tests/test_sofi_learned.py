"""The MISR-GRU SOFI recipes end to end on a tiny recipe: simulated pool, training through the
engine (the loss falls below the untrained network's and below a closed-form predictor, the
mean image resampled onto the SOFI grid), checkpoint round trip, prediction in windows, and the
input and target scalings' invariance to the camera's offset and gain."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import ndimage, stats

from fluojax import networks
from fluojax import train as training
from fluojax.io import InputError
from fluojax.sofi import cumulants, estimate, learned, nets

pytestmark = [
    pytest.mark.xdist_group("sofi_learned"),
    pytest.mark.slow,
]  # its session fixtures are built once, on one worker

FRAMES = 4  # input frames of the tiny network (the paper: 20)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _blinking_points(key_data, frames, size):
    """Cheap movies for the tests (the SOFI simulator's compilation alone exceeds the test budget;
    it has its own tests): 12 emitters at uniform positions, on with probability 0.3 in each frame,
    300 photons when on, Gaussian PSF of sigma 0.95 px (FWHM 2.2 px), 20 photons background, Poisson."""

    def movie(key):
        k_pos, k_on, k_noise = jax.random.split(jax.random.wrap_key_data(key), 3)
        pos = jax.random.uniform(k_pos, (12, 2), minval=1.0, maxval=size - 2.0)
        on = jax.random.bernoulli(k_on, 0.3, (frames, 12)).astype(jnp.float32)
        grid = jnp.arange(size, dtype=jnp.float32)
        gy = jnp.exp(-((grid[None, :] - pos[:, :1]) ** 2) / (2 * 0.95**2))
        gx = jnp.exp(-((grid[None, :] - pos[:, 1:]) ** 2) / (2 * 0.95**2))
        expected = 20.0 + 300.0 * jnp.einsum("tm,my,mx->tyx", on, gy, gx)
        return jax.random.poisson(k_noise, expected).astype(jnp.float32)

    return jax.vmap(movie)(key_data)


@dataclasses.dataclass(frozen=True)
class _PointsRecipe(learned.MisrGruRecipe):
    """The recipe with :func:`_blinking_points` movies in place of the microtubule simulator."""

    def movies(self, key_data, density, snr):
        return _blinking_points(key_data, self.movie_frames, self.tile)

    def fwhm_px(self):
        return 2.2


def _tiny_recipe():
    return _PointsRecipe(
        "misrgru-tiny",
        nets.MisrGruConfig(channels=4, frames=FRAMES),
        training.TrainConfig(
            steps=120,
            batch_size=4,
            learning_rate=1e-2,
            final_learning_rate=3e-3,
            optimizer=training.AdamW(eps=1e-8),
            eval_every=120,
            eval_batches=2,
        ),
        tile=12,
        movie_frames=24,
        densities=(0,),
        snrs=(0,),
        pool_samples=16,
        held_out_samples=8,
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny training run shared by the tests (the simulator compiles once)."""
    run_dir = tmp_path_factory.mktemp("misrgru")
    recipe = _tiny_recipe()
    net, history = learned.train_recipe(recipe, run_dir, progress=False)
    return recipe, net, history, run_dir


def _mean_image_on_sofi_grid(inputs):
    """Closed-form predictor: the mean input frame sampled bilinearly where the 2nd-order grid's
    pixels lie (output pixel p at camera pixel 1 + p / 2, sofipackage grid), scaled to max 1."""
    mean = np.asarray(inputs).mean(axis=1)
    h, w = mean.shape[1:]
    rows, cols = np.meshgrid(1 + np.arange(2 * h - 7) / 2, 1 + np.arange(2 * w - 7) / 2, indexing="ij")
    out = np.stack([ndimage.map_coordinates(m, [rows, cols], order=1) for m in mean])
    return out / out.max(axis=(1, 2), keepdims=True)


def test_pool_pairs_have_the_network_shapes(trained):
    recipe = trained[0]
    inputs, targets = learned.simulate_pool(jax.random.key(3), recipe, 8, progress=False)
    assert inputs.shape == (8, FRAMES, 12, 12) and targets.shape == (8, 17, 17)  # 2 (12 - 4) + 1
    np.testing.assert_allclose(targets.max(axis=(1, 2)), 1.0, rtol=1e-6)  # normalised to the maximum
    np.testing.assert_allclose(inputs.mean(axis=(1, 2, 3)), 0.0, atol=1e-5)  # each window standardised
    np.testing.assert_allclose(inputs.std(axis=(1, 2, 3)), 1.0, rtol=1e-5)


def test_a_pool_with_simulated_rho_targets_linearizes_them_with_the_cells_on_ratio(trained):
    # the tiny recipe's movies blink with rho 0.3; its cell (0, 0) of the small preset says
    # 10 / 610: the pool's targets are those of training_pairs with that ratio, not the estimate's
    recipe = dataclasses.replace(trained[0], target_rho="simulated")
    rho = recipe.target_on_ratio(0, 0)
    assert rho == pytest.approx(10.0 / 610.0)
    key = jax.random.key(3)  # 16 movies: the pool's compiled chunk, so the calls below compile nothing new
    _, targets = learned.simulate_pool(key, recipe, 16, progress=False)
    keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.fold_in(key, 0), 16)))
    movies = recipe.movies(keys, 0, 0)
    _, want = learned.training_pairs(movies, FRAMES, 2.2, "adaptive", rho)
    _, estimated = learned.training_pairs(movies, FRAMES, 2.2, "adaptive")
    np.testing.assert_allclose(targets, want, atol=1e-5)  # other compiled batch sizes: float32 rounding
    assert np.abs(targets - np.asarray(estimated)).max() > 0.05  # the estimate's exponent differs


def _pearson(a, b):
    """Pearson correlation of each image pair (SciPy)."""
    return stats.pearsonr(a.reshape(len(a), -1), b.reshape(len(b), -1), axis=1).statistic


def test_tiny_recipe_learns_past_the_mean_image(trained):
    """Held out, the trained network beats the best affine function of the mean image, fitted to
    each target by least squares (MSE var(T) (1 - r^2), r its Pearson with the target), both in
    MSE (the recipe's loss, recomputed here in NumPy) and in Pearson."""
    recipe, net, history, _ = trained
    held_out = recipe.training_data(0, False).held_out  # the run's held-out pool (seed 0), rebuilt
    x = np.concatenate([np.asarray(b[0]) for b in held_out])
    y = np.concatenate([np.asarray(b[1]) for b in held_out]).astype(np.float64)
    pred = networks.predict(networks.eval_view(net), x, recipe.train.batch_size)  # no BatchNorm: as trained
    r_mean = _pearson(_mean_image_on_sofi_grid(x), y)
    affine_mse = np.mean(np.var(y.reshape(len(y), -1), axis=1) * (1 - r_mean**2))
    mse = np.mean((pred - y) ** 2)
    # seeds 0, 1, 2: held-out MSE 0.076, 0.075, 0.068 -> 0.025, 0.027, 0.022 (affine mean image 0.027,
    # 0.028, 0.025); Pearson 0.72, 0.70, 0.72 (mean image 0.65, 0.62, 0.65)
    assert history.step[-1] == 120
    np.testing.assert_allclose(history.eval_loss[-1], mse, rtol=1e-4)  # the engine's loss is this MSE
    assert history.eval_loss[-1] < 0.5 * history.eval_loss[0]
    assert mse < affine_mse, (mse, affine_mse)
    assert np.mean(_pearson(pred, y)) > np.mean(r_mean), (np.mean(_pearson(pred, y)), np.mean(r_mean))


def test_training_moves_every_weight(trained):
    """Gradients reach every layer: each weight array moved during training by more than weight
    decay alone could move it (120 steps x lr 1e-2 x 1e-4 x |w| < 1.2e-4; Adam steps are ~lr)."""
    recipe, net, _, _ = trained
    start = nnx.state(recipe.build(0), nnx.Param)  # the run's initial weights (seed 0)
    end = nnx.state(net, nnx.Param)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), start, end)
    flat = jax.tree_util.tree_leaves_with_path(moved)
    assert len(flat) == len(jax.tree.leaves(end))
    for path, change in flat:
        assert change > 1e-3, jax.tree_util.keystr(path)


def test_checkpoint_gives_the_same_images(trained):
    _, net, _, run_dir = trained
    loaded, meta = learned.load_network(run_dir)
    assert meta["fluojax_network"] == learned.NETWORK_KIND and meta["tile"] == 12
    stack = np.random.default_rng(0).poisson(50.0, (FRAMES, 12, 14)).astype(np.float32)
    np.testing.assert_array_equal(learned.predict(loaded, stack), learned.predict(net, stack))


def test_predict_cuts_the_stack_into_windows(trained):
    net = trained[1]
    stack = np.random.default_rng(1).poisson(50.0, (11, 12, 14)).astype(np.float32)
    disjoint = learned.predict(net, stack)
    rolling = learned.predict(net, stack, stride=1)
    assert disjoint.shape == (2, 17, 21) and rolling.shape == (8, 17, 21)  # frames 0-3, 4-7 (8-10 unused)
    alone = learned.predict(net, stack[3 : 3 + FRAMES])[0]
    np.testing.assert_allclose(rolling[3], alone, atol=1e-5)  # same window, other compiled batch size
    np.testing.assert_allclose(disjoint[1], rolling[4], atol=1e-5)


def test_predict_refuses_too_few_frames(trained):
    with pytest.raises(InputError, match="at least 4 frames"):
        learned.predict(trained[1], np.zeros((3, 12, 12), np.float32))


def test_predict_refuses_windows_in_which_nothing_changes_and_non_finite_stacks(trained):
    stack = np.random.default_rng(3).poisson(50.0, (12, 12, 12)).astype(np.float32)
    stack[4:8] = stack[4]  # frames 4-7 identical: that window has no blinking
    learned.predict(trained[1], stack[:4])  # the first window alone is imaged
    with pytest.raises(InputError, match="frames 4-7: no pixel changes in time"):
        learned.predict(trained[1], stack)
    learned.predict(trained[1], stack, stride=3)  # windows 0-3, 3-6 and 6-9 each see a change
    stack[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        learned.predict(trained[1], stack)


def test_network_input_ignores_camera_offset_and_gain():
    rng = np.random.default_rng(2)
    x = rng.uniform(90.0, 400.0, (2, 5, 6, 7))
    got = np.asarray(learned.network_input(3.7 * x + 100.0))
    want = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)  # per window
    np.testing.assert_allclose(got, want, atol=2e-5)  # float32 of values of order 1


def test_target_ignores_the_camera_offset():
    """Cross-cumulants of distinct pixels do not see a constant offset, so neither does the
    adaptively linearized target (movies in the pool's compiled shape: no new compilation)."""
    movies = np.asarray(
        _blinking_points(np.asarray(jax.random.key_data(jax.random.split(jax.random.key(4), 16))), 24, 12)
    )
    inputs, a = learned.training_pairs(movies, FRAMES, 2.2, "adaptive")
    shifted_inputs, b = learned.training_pairs(movies + 100.0, FRAMES, 2.2, "adaptive")
    assert a.shape == (16, 17, 17)
    np.testing.assert_allclose(np.asarray(a).max(axis=(1, 2)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(b, a, atol=1e-3)  # float32 cumulants of counts ~20-300 shifted by 100
    np.testing.assert_allclose(shifted_inputs, inputs, atol=1e-5)


def test_the_wide_recipe_simulates_filaments_labelled_over_50_nm():
    wide, small = learned.RECIPES["misrgru-small-wide"], learned.RECIPES["misrgru-small"]
    assert wide.settings(0, 0).sample.emitters_per_um == pytest.approx(250.0)  # 5000 /um^2 x 50 nm
    assert small.settings(0, 0).sample.emitters_per_um == pytest.approx(50.0)
    assert (wide.net, wide.train, wide.tile) == (small.net, small.train, small.tile)  # only the sample differs
    assert wide.meta_fields()["filament_width_nm"] == 50.0


def test_the_rho_recipe_linearizes_its_targets_with_the_simulated_on_time_ratio():
    # Komen 2024, Table 5.1: on-time 10 ms, off-times 600 / 1200 / 2400 ms per density level
    rho = learned.RECIPES["misrgru-small-wide-rho"]
    for density, off_ms in enumerate((600.0, 1200.0, 2400.0)):
        assert rho.target_on_ratio(density, 3) == pytest.approx(10.0 / (10.0 + off_ms))
        assert learned.RECIPES["misrgru-small-wide"].target_on_ratio(density, 3) is None  # estimated per movie
    assert rho.meta_fields()["target_rho"] == "simulated"


def test_a_target_with_a_given_on_ratio_takes_the_adaptive_exponent_of_that_ratio():
    """Komen 2024, eqs. 3.8-3.9: gamma_2 = mean over the 10 brightest physical pixels i of the
    deconvolved image of log(i / f_2(rho)) / log(i), halved; f_2 = rho (1 - rho)."""
    stack = np.asarray(_blinking_points(np.asarray(jax.random.key_data(jax.random.key(5)))[None], 60, 12))[0]
    g = np.asarray(estimate.deconvolve(estimate.flatten(cumulants.cross_cumulant_sublattices(stack, 2)), 2, 2.2))
    bright = np.sort(g[::2, ::2].ravel())[-10:]
    for rho in (0.01, 0.3):
        gamma = np.mean(np.log(bright / (rho * (1 - rho))) / np.log(bright)) / 2
        want = g**gamma / (g**gamma).max()
        np.testing.assert_allclose(learned.sofi_target(stack, 2.2, on_ratio=rho), want, rtol=2e-4, atol=1e-6)


def test_unknown_recipe_is_refused():
    with pytest.raises(InputError, match="misrgru-small"):
        learned.train_recipe("misrgru-huge")


def test_a_movie_shorter_than_the_input_is_refused():
    with pytest.raises(InputError, match="20 input frames"):
        learned.MisrGruRecipe("x", nets.MisrGruConfig(), training.TrainConfig(steps=1, batch_size=1), movie_frames=10)
