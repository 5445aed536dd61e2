"""Every trainer's step on a (data 2, fsdp 2, tensor 2) mesh of 8 fake CPU devices equals the
same step on one device: SFT, the preference and reward models, Nash-MD-PG judged by a
preference model (the judge and the reference sharded too) and RLHF (its reward model)."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from nlhf_jax import parallel
from nlhf_jax.errors import UserError
from nlhf_jax.train import memory, methods
from nlhf_jax.train.defaults import base_config

from .optimizer_state import adam_moments

LR = 1e-2


def _config(method, devices, **kw):
    config = base_config(method)
    config.batch_size = 8
    config.num_steps = 10
    config.optimizer.learning_rate = LR  # large and without warm-up: step 1 moves every weight
    config.optimizer.warmup_steps = 0
    config.data.train_pairs = config.data.train_demos = 256  # one step reads 8
    config.data.eval_pairs = 64
    config.mesh.num_devices = devices
    config.mesh.shape = (2, 2, 2) if devices == 8 else (1, 1, 1)
    for k, v in kw.items():
        config[k] = v
    return config


def _steps(config, workdir, steps=1):
    trainer = methods.build(config, workdir)
    state, metrics = trainer.init_state(), []
    for _ in range(steps):
        state, m = trainer.step(state, next(trainer.data))
        metrics.append(jax.device_get(m))  # blocks: no back-to-back CPU collectives (ENVIRONMENT)
    return trainer, state, metrics


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _assert_same_step(single, sharded):
    (_, s1, m1), (_, s8, m8) = single, sharded
    for step, (one, mesh) in enumerate(zip(m1, m8, strict=True)):
        assert one["loss"] == pytest.approx(mesh["loss"], rel=1e-4, abs=1e-6), step
        assert one["grad_norm"] == pytest.approx(mesh["grad_norm"], rel=1e-4), step
    # Adam's moments hold the gradients: mu ~ g and sqrt(nu) ~ |g|, each compared to its leaf's
    # scale. The mesh sums each gradient element's K terms (batch x positions x a contracted
    # width, K ~ 5e3 here) in another order and in partial sums across devices; float32's bound
    # on that is K * eps ~ 6e-4 of the sum of the terms' magnitudes, which cancellation makes
    # larger than the result. 1e-3 of the leaf's scale is allowed; measured: at most 1.1e-4.
    # A wrong collective (a missing or doubled all-reduce) is off by a factor. The parameters
    # to 0.1 lr: an Adam step moves an element by about lr * sign(g), and an element whose
    # gradient is ~1e-8 may take the other sign under another reduction order.
    a1, a8 = adam_moments(s1), adam_moments(s8)
    assert int(a1.count) == int(a8.count) == 1
    for name, f in (("mu", np.asarray), ("nu", np.sqrt)):
        leaves = zip(_leaves(getattr(a1, name)), _leaves(getattr(a8, name)), strict=True)
        for a, b in leaves:
            a, b = f(a), f(b)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-3 * np.abs(b).max(), err_msg=name)
    for a, b in zip(_leaves(s1.params), _leaves(s8.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=0.1 * LR)
    # Not vacuous: the steps moved the moments away from zero.
    assert max(np.abs(m).max() for m in _leaves(adam_moments(s1).mu)) > 0


def _assert_next_step_keeps_shardings(sharded):
    """The donated state comes back in its shardings and feeds the next step."""
    trainer, state, _ = sharded
    before = jax.tree.map(lambda x: x.sharding, state)
    state, metrics = trainer.step(state, next(trainer.data))
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
    assert jax.tree.map(lambda x: x.sharding, state) == before


def _assert_sharded(params):
    """Some matrix is split over fsdp and tensor: the run did not fall back to replication."""
    specs = {x.sharding.spec for x in jax.tree.leaves(params)}
    assert any("fsdp" in str(s) and "tensor" in str(s) for s in specs), specs
    assert {d for x in jax.tree.leaves(params) for d in x.devices()} == set(jax.devices())


@pytest.mark.parametrize("method", ["sft", "preference_model", "reward_model"])
def test_supervised_steps_on_the_mesh_equal_one_device(method, sft_run, tmp_path):
    kw = {"init_from": sft_run} if method != "sft" else {}
    single = _steps(_config(method, 1, **kw), str(tmp_path / "one"))
    sharded = _steps(_config(method, 8, **kw), str(tmp_path / "mesh"))
    _assert_sharded(sharded[1].params)
    _assert_sharded(adam_moments(sharded[1]).mu)
    _assert_same_step(single, sharded)
    _assert_next_step_keeps_shardings(sharded)


@pytest.mark.parametrize("method", ["nash_md", "rlhf"])
def test_online_steps_on_the_mesh_equal_one_device(method, sft_run, judge_runs, tmp_path):
    kw = {"init_from": sft_run}
    kw["judge"] = judge_runs["preference_model" if method == "nash_md" else "reward_model"]
    single = _steps(_config(method, 1, **kw), str(tmp_path / "one"))
    sharded = _steps(_config(method, 8, **kw), str(tmp_path / "mesh"))
    _assert_sharded(sharded[1].params)
    # The same parameters: the same samples, judged the same.
    for key in ("rewards/probabilities", "objective/kl"):
        assert single[2][0][key] == pytest.approx(sharded[2][0][key], abs=1e-5), key
    _assert_same_step(single, sharded)
    _assert_next_step_keeps_shardings(sharded)


def test_frozen_models_are_sharded_step_arguments(sft_run, judge_runs):
    config = _config("nash_md", 8, init_from=sft_run, judge=judge_runs["preference_model"])
    from nlhf_jax.checkpoint import load_policy
    from nlhf_jax.judges import load_run
    from nlhf_jax.sampling import SamplingConfig
    from nlhf_jax.train import online
    from nlhf_jax.train.online.trainer import policy_context

    sft = load_policy(sft_run)
    judge = load_run(judge_runs["preference_model"])
    method = online.get("nash_md")
    hp = method.hyperparameters(config)
    ctx = policy_context(config, sft.config, sft.graphdef, sft.params, SamplingConfig(4), hp, judge)
    compiled = online.compile_online(config, method, ctx)
    _assert_sharded(compiled.frozen["reference"])
    _assert_sharded(compiled.frozen["judge"].state)
    q_proj = compiled.frozen["judge"].state["backbone"]["layers"]["attn"]["q_proj"]
    assert q_proj.sharding.spec == P(None, "fsdp", "tensor", None)


def test_a_run_too_large_for_its_devices_fails_before_compiling(sft_run, tmp_path):
    config = _config("nash_md", 8, init_from=sft_run)
    config.mesh.device_memory_gb = 1e-6  # 1 KiB
    needed = {}
    for shape in ((8, 1, 1), (2, 2, 2)):
        config.mesh.shape = shape
        with pytest.raises(UserError, match=r"per device it needs ([0-9.e-]+) GiB") as info:
            methods.build(config, str(tmp_path / "never"))
        assert "config.mesh.shape" in str(info.value)
        needed[shape] = memory.bytes_per_device(*_state_and_frozen(config, sft_run))
    # Data parallelism replicates everything; fsdp x tensor = 4 ways split every matrix, and
    # only the norms' scales, the step counter and the rng stay whole.
    ratio = needed[(2, 2, 2)] / needed[(8, 1, 1)]
    assert 0.25 <= ratio < 0.3, ratio
    config.mesh.device_memory_gb = 0.0
    methods.build(config, str(tmp_path / "cpu"))  # CPU reports no limit: nothing is checked


def _state_and_frozen(config, sft_run):
    """The abstract train state and the reference of a Nash-MD run, with their shardings."""
    from nlhf_jax.checkpoint import load_policy

    where = parallel.placement(config)
    sft = load_policy(sft_run)
    tree = {"params": sft.params, "adam": (sft.params, sft.params), "reference": sft.params}
    return tree, where.shardings(tree)
