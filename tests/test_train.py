"""Specification of the shared training loop (fluojax.train) on a toy regression problem.

The toy: y = <w_true, x> + 0.5 with x ~ N(0, 1)^4, learned by a small MLP with BatchNorm, so
the BatchNorm-state paths (train view updates statistics, eval uses them) are exercised.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fluojax import train as tr

W_TRUE = jnp.array([1.0, -2.0, 0.5, 3.0])


class ToyNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(16, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))[:, 0]


def toy_batch(key, batch=64):
    x = jax.random.normal(key, (batch, 4))
    return x, x @ W_TRUE + 0.5


def config(**kw):
    base = dict(steps=60, batch_size=64, learning_rate=1e-2, final_learning_rate=1e-3, eval_every=20, eval_batches=2)
    return tr.TrainConfig(**{**base, **kw})


def test_training_lowers_held_out_loss():
    model = ToyNet(nnx.Rngs(0))
    history = tr.train(model, toy_batch, config(steps=200), progress=False)
    # the target variance is |w|^2 = 14.25; a fitted linear-ish model gets far below a tenth of it
    assert history.eval_loss[-1] < 0.1 * history.eval_loss[0]


def test_learning_rate_decays_to_final_value():
    sched = tr.learning_rate_schedule(config(steps=1000, decay_every=32))
    assert float(sched(0)) == pytest.approx(1e-2)
    # staircase: the last full stair (step 992) is 1e-2 * 0.1**(992/1000)
    assert float(sched(999)) == pytest.approx(1e-2 * 0.1 ** (992 / 1000), rel=1e-5)
    assert float(sched(31)) == pytest.approx(1e-2)


def test_warmup_ramps_linearly_then_decays_over_the_remaining_steps():
    cfg = config(
        steps=1000, learning_rate=1e-1, final_learning_rate=1e-3, warmup_fraction=0.1, warmup_learning_rate=1e-3
    )
    sched = tr.learning_rate_schedule(cfg)
    assert cfg.warmup_steps == 100
    assert float(sched(0)) == pytest.approx(1e-3, rel=1e-5)  # float32 schedule arithmetic
    assert float(sched(50)) == pytest.approx(0.5 * (1e-3 + 1e-1), rel=1e-6)  # half-way up the ramp
    assert float(sched(100)) == pytest.approx(1e-1, rel=1e-6)
    # smooth decay over the 900 remaining steps: 1e-1 * (1e-2)**(450/900) = 1e-2 half-way
    assert float(sched(550)) == pytest.approx(1e-2, rel=1e-5)


def test_same_seed_gives_same_weights():
    a, b = ToyNet(nnx.Rngs(0)), ToyNet(nnx.Rngs(0))
    tr.train(a, toy_batch, config(), progress=False)
    tr.train(b, toy_batch, config(), progress=False)
    x, _ = toy_batch(jax.random.PRNGKey(9))
    ea = nnx.view(a, use_running_average=True)(x)
    eb = nnx.view(b, use_running_average=True)(x)
    np.testing.assert_array_equal(np.asarray(ea), np.asarray(eb))


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    cfg = config(checkpoint_every=25)
    whole = ToyNet(nnx.Rngs(0))
    tr.train(whole, toy_batch, cfg, run_dir=tmp_path / "whole", progress=False)

    part = ToyNet(nnx.Rngs(0))
    tr.train(part, toy_batch, cfg, run_dir=tmp_path / "part", progress=False, stop_after=37)
    assert tr.latest_checkpoint(tmp_path / "part").name == "step_000000037"
    resumed = ToyNet(nnx.Rngs(123))  # different init: everything must come from the checkpoint
    history = tr.train(resumed, toy_batch, cfg, run_dir=tmp_path / "part", progress=False)
    assert history.step[-1] == 60

    x, _ = toy_batch(jax.random.PRNGKey(9))
    want = nnx.view(whole, use_running_average=True)(x)
    got = nnx.view(resumed, use_running_average=True)(x)
    # same batches, same optimizer state and BatchNorm statistics -> same weights up to float32
    # reassociation in the compiled step (observed: bit-identical on CPU)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert (tmp_path / "part" / "metrics.csv").read_text().splitlines()[0].startswith("step,train_loss,eval_loss")


def test_a_spent_time_limit_stops_after_one_step_with_a_checkpoint_and_the_run_resumes_exactly(tmp_path):
    cfg = config(checkpoint_every=0)  # checkpoints only where the run stops
    whole = ToyNet(nnx.Rngs(0))
    tr.train(whole, toy_batch, cfg, run_dir=tmp_path / "whole", progress=False)

    part = ToyNet(nnx.Rngs(0))
    history = tr.train(part, toy_batch, cfg, run_dir=tmp_path / "part", progress=False, time_limit_s=0.0)
    assert list(history.step) == [0, 1]  # the clock is read after every step: a held-out row where it stopped
    assert tr.latest_checkpoint(tmp_path / "part").name == "step_000000001"
    resumed = ToyNet(nnx.Rngs(123))
    history = tr.train(resumed, toy_batch, cfg, run_dir=tmp_path / "part", progress=False, time_limit_s=3600.0)
    assert list(history.step) == [0, 1, 20, 40, 60]
    x, _ = toy_batch(jax.random.PRNGKey(9))
    want = nnx.view(whole, use_running_average=True)(x)
    got = nnx.view(resumed, use_running_average=True)(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)  # as the test above


@pytest.mark.parametrize("limit", [-1.0, float("nan"), float("inf")])
def test_a_time_limit_that_is_not_a_finite_number_of_seconds_is_refused(limit):
    with pytest.raises(ValueError, match="time limit"):
        tr.train(ToyNet(nnx.Rngs(0)), toy_batch, config(), progress=False, time_limit_s=limit)


def test_checkpoint_round_trip_restores_eval_outputs(tmp_path):
    model = ToyNet(nnx.Rngs(0))
    tr.train(model, toy_batch, config(steps=20), progress=False)
    tr.save_checkpoint(tmp_path / "ck", model, None, 20, {"network": "toy"})
    other = ToyNet(nnx.Rngs(5))
    meta = tr.restore_checkpoint(tmp_path / "ck", other)
    assert meta["network"] == "toy" and meta["step"] == 20
    x, _ = toy_batch(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(
        np.asarray(nnx.view(other, use_running_average=True)(x)),
        np.asarray(nnx.view(model, use_running_average=True)(x)),
    )


def test_restoring_into_another_network_is_a_clear_error(tmp_path):
    model = ToyNet(nnx.Rngs(0))
    tr.save_checkpoint(tmp_path / "ck", model, None, 0, {})

    class Other(nnx.Module):
        def __init__(self, rngs):
            self.out = nnx.Linear(3, 1, rngs=rngs)

    with pytest.raises(ValueError, match="does not match"):
        tr.restore_checkpoint(tmp_path / "ck", Other(nnx.Rngs(0)))


def test_resuming_with_another_config_is_refused(tmp_path):
    tr.train(ToyNet(nnx.Rngs(0)), toy_batch, config(steps=20), run_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another training config"):
        tr.train(ToyNet(nnx.Rngs(0)), toy_batch, config(steps=40), run_dir=tmp_path, progress=False)


def test_sgd_with_momentum_also_trains():
    model = ToyNet(nnx.Rngs(0))
    history = tr.train(
        model, toy_batch, config(steps=200, optimizer=tr.Sgd(momentum=0.9), learning_rate=1e-2), progress=False
    )
    assert history.eval_loss[-1] < 0.1 * history.eval_loss[1]  # row 1: after the first 20 steps


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="unknown optimizer"):
        config(optimizer="rmsprop")


def test_elapsed_time_continues_across_a_resume(tmp_path):
    cfg = config(steps=40, eval_every=10)
    tr.train(ToyNet(nnx.Rngs(0)), toy_batch, cfg, run_dir=tmp_path, progress=False, stop_after=20)
    before = tr.TrainHistory(**json.loads((tmp_path / "metrics.json").read_text())).elapsed_s
    history = tr.train(ToyNet(nnx.Rngs(0)), toy_batch, cfg, run_dir=tmp_path, progress=False)
    rows = np.genfromtxt(tmp_path / "metrics.csv", delimiter=",", names=True)
    assert list(rows["step"]) == [0, 10, 20, 30, 40]
    # the resumed rows (steps 30, 40) start from the checkpoint's last elapsed time, not from 0
    assert np.all(np.diff(rows["elapsed_s"]) >= 0)
    assert rows["elapsed_s"][3] >= before[-1] > 0
    np.testing.assert_allclose(rows["elapsed_s"], history.elapsed_s, rtol=1e-6)


def test_a_run_folder_of_another_network_is_refused_before_anything_is_restored(tmp_path, monkeypatch):
    tr.train(
        ToyNet(nnx.Rngs(0)), toy_batch, config(steps=20), run_dir=tmp_path, meta={"recipe": "toy-a"}, progress=False
    )
    metrics = (tmp_path / "metrics.csv").read_text()
    monkeypatch.setattr(tr, "restore_checkpoint", lambda *a, **k: pytest.fail("restored before the meta check"))
    with pytest.raises(tr.RunMismatch) as err:
        tr.train(
            ToyNet(nnx.Rngs(0)), toy_batch, config(steps=20), run_dir=tmp_path, meta={"recipe": "toy-b"}, progress=False
        )
    assert err.value.step == 20 and err.value.differs == ["recipe"] and err.value.saved["recipe"] == "toy-a"
    assert str(tmp_path) in str(err.value) and "toy-a run (step 20)" in str(err.value)
    assert (tmp_path / "metrics.csv").read_text() == metrics


def test_a_structure_mismatch_is_one_line_naming_the_folder_and_the_arrays(tmp_path):
    tr.save_checkpoint(tmp_path / "ck", ToyNet(nnx.Rngs(0)), None, 0, {})

    class Wider(ToyNet):  # same layers, a hidden layer of 8 inputs instead of 4
        def __init__(self, rngs):
            super().__init__(rngs)
            self.hidden = nnx.Linear(8, 16, rngs=rngs)

    with pytest.raises(ValueError) as err:
        tr.restore_checkpoint(tmp_path / "ck", Wider(nnx.Rngs(0)))
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / "ck") in text and not text.rstrip().endswith(":")
    assert "hidden.kernel.value: (4, 16) saved, (8, 16) here" in text


def test_checkpoints_are_orbax_steps_and_only_the_newest_are_kept(tmp_path):
    tr.train(
        ToyNet(nnx.Rngs(0)),
        toy_batch,
        config(checkpoint_every=10),
        run_dir=tmp_path,
        progress=False,
        keep_checkpoints=2,
    )
    steps = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert steps == ["step_000000050", "step_000000060"]  # 10, 20, ... 60 saved; orbax deleted all but two
    newest = tmp_path / "checkpoints" / "step_000000060"
    assert {"model", "optimizer", "meta.json"} <= {p.name for p in newest.iterdir()}
    assert tr.latest_checkpoint(tmp_path) == newest and tr.read_checkpoint_meta(tmp_path)[1]["step"] == 60


def test_a_step_interrupted_before_its_meta_is_redone_from_the_previous_checkpoint(tmp_path):
    cfg = config(checkpoint_every=20)
    whole = ToyNet(nnx.Rngs(0))
    tr.train(whole, toy_batch, cfg, progress=False)
    tr.train(ToyNet(nnx.Rngs(0)), toy_batch, cfg, run_dir=tmp_path, progress=False, stop_after=40)
    (tmp_path / "checkpoints" / "step_000000040" / "meta.json").unlink()  # killed after orbax's commit
    assert tr.latest_checkpoint(tmp_path).name == "step_000000020"
    resumed = ToyNet(nnx.Rngs(1))
    history = tr.train(resumed, toy_batch, cfg, run_dir=tmp_path, progress=False)
    assert history.step == [0, 20, 40, 60]  # rows after step 20 come from the resumed run, none twice
    x, _ = toy_batch(jax.random.PRNGKey(9))
    # same batches from step 20 on -> same weights (tolerance as in the resume test above)
    np.testing.assert_allclose(
        np.asarray(nnx.view(resumed, use_running_average=True)(x)),
        np.asarray(nnx.view(whole, use_running_average=True)(x)),
        rtol=1e-5,
        atol=1e-5,
    )


OPTIMIZERS = [
    (tr.Adam(eps=1e-3), lambda lr: optax.adam(lr, eps=1e-3)),
    (tr.AdamW(eps=1e-6, weight_decay=0.1), lambda lr: optax.adamw(lr, eps=1e-6, weight_decay=0.1)),
    (tr.Sgd(momentum=0.5), lambda lr: optax.sgd(lr, momentum=0.5)),
]


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(("ours", "reference"), OPTIMIZERS, ids=["adam", "adamw", "sgd"])
def test_an_optimizer_class_updates_like_the_optax_transformation_it_wraps(ours, reference, jit):
    params = {"w": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
    grads = {"w": jnp.array([0.1, 0.2, -0.3]), "b": jnp.array(-1.0)}

    def two_steps(transformation):
        state = transformation.init(params)
        p = params
        for _ in range(2):  # the second step sees the moments/momentum of the first
            updates, state = transformation.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p

    run = jax.jit(two_steps, static_argnums=0) if jit else two_steps
    got = run(ours.transformation(optax.constant_schedule(0.01)))
    want = two_steps(reference(0.01))
    # the same optax code on the same inputs: equal up to float32 reassociation under jit
    for name in params:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7)


def test_the_recorded_config_names_the_optimizer_and_refuses_a_resume_with_another(tmp_path):
    record = config(optimizer=tr.Sgd(momentum=0.8)).record()
    assert record["optimizer"] == {"name": "Sgd", "momentum": 0.8}
    assert json.loads(json.dumps(record)) == record  # stored as JSON in every checkpoint's meta
    assert (
        config(optimizer=tr.AdamW(eps=1e-7, weight_decay=0.0)).record()["optimizer"] != config().record()["optimizer"]
    )
    tr.train(ToyNet(nnx.Rngs(0)), toy_batch, config(steps=20), run_dir=tmp_path, progress=False)
    with pytest.raises(tr.RunMismatch) as err:
        tr.train(ToyNet(nnx.Rngs(0)), toy_batch, config(steps=20, optimizer=tr.Sgd()), run_dir=tmp_path, progress=False)
    assert err.value.differs == ["train_config.optimizer"]
