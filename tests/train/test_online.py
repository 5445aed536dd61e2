"""The online trainers' own machinery: aux copies (EMA, Nash-MP anchors, INPO's pi_t), the step
on 8 devices against one, resume, and the errors. Learning itself: test_nash.py and the demo."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from nlhf_jax import losses
from nlhf_jax.train import loop, methods, online
from nlhf_jax.train.defaults import base_config

from .optimizer_state import adam_moments


def _config(sft_run, method, **kw):
    config = base_config(method)
    config.init_from = sft_run
    config.batch_size = 8
    config.num_steps = 10
    config.optimizer.learning_rate = 1e-2  # large, so every step visibly moves the parameters
    config.optimizer.warmup_steps = 0
    config.mesh.num_devices = 1
    for k, v in kw.items():
        config[k] = v
    return config


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _trajectory(trainer, steps):
    """(params, aux) after each step, copied to the host (the step donates its input)."""
    state = trainer.init_state()
    out = [(jax.device_get(state.params), jax.device_get(state.aux))]
    for _ in range(steps):
        state, _ = trainer.step(state, next(trainer.data))
        out.append((jax.device_get(state.params), jax.device_get(state.aux)))
    return out


def test_nash_mp_reanchors_every_2m_steps(sft_run, tmp_path):
    M = 2
    trainer = methods.build(_config(sft_run, "nash_mp", prox_steps=M), str(tmp_path))
    traj = _trajectory(trainer, 4 * M + 1)
    for s in range(1, len(traj)):
        params, aux = traj[s]
        prev_aux = traj[s - 1][1]
        assert not _equal(params, traj[s - 1][0]), f"step {s} did not move the policy"
        # The anchor pi_k is the policy at the last multiple of 2M; the half-step policy the
        # policy at the last step = M (mod 2M); otherwise both stay frozen.
        if s % (2 * M) == 0:
            assert _equal(aux["anchor"], params), s
        else:
            assert _equal(aux["anchor"], prev_aux["anchor"]), s
        if s % (2 * M) == M:
            assert _equal(aux["half"], params), s
        else:
            assert _equal(aux["half"], prev_aux["half"]), s
    assert _equal(traj[2 * M][1]["anchor"], traj[2 * M][0])
    assert not _equal(traj[2 * M][1]["anchor"], traj[0][1]["anchor"])


def test_nash_ema_opponent_follows_its_recursion(sft_run, tmp_path):
    decay = 0.7
    trainer = methods.build(_config(sft_run, "nash_ema", ema_decay=decay), str(tmp_path))
    traj = _trajectory(trainer, 3)
    for s in range(1, len(traj)):
        want = [
            decay * e + (1 - decay) * p
            for e, p in zip(_leaves(traj[s - 1][1]["ema"]), _leaves(traj[s][0]), strict=True)
        ]
        for got, w in zip(_leaves(traj[s][1]["ema"]), want, strict=True):
            np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)


def test_inpo_refreshes_pi_t_at_each_round(sft_run, tmp_path):
    trainer = methods.build(_config(sft_run, "inpo", round_steps=3), str(tmp_path))
    traj = _trajectory(trainer, 7)
    for s in range(1, len(traj)):
        want = traj[s][0] if s % 3 == 0 else traj[s - 1][1]["prev"]
        assert _equal(traj[s][1]["prev"], want), s


@pytest.mark.parametrize("method, moved", [("comal", "anchor"), ("mpo", "magnet")])
def test_comal_and_mpo_move_their_reference_on_schedule(sft_run, tmp_path, method, moved):
    """pi_t every round (2 steps), the reference (COMAL's anchor, MPO's magnet) every 4 steps,
    both otherwise frozen; the reference starts as mu (the start) and the steps are finite."""
    every = {"comal": {"reset_steps": 4}, "mpo": {"magnet_steps": 4}}[method]
    config = _config(sft_run, method, round_steps=2, **every)
    trainer = methods.build(config, str(tmp_path))
    traj = _trajectory(trainer, 5)
    assert _equal(traj[0][1][moved], traj[0][0])
    for s in range(1, len(traj)):
        params, aux = traj[s]
        assert _equal(aux["prev"], params if s % 2 == 0 else traj[s - 1][1]["prev"]), s
        assert _equal(aux[moved], params if s % 4 == 0 else traj[s - 1][1][moved]), s
    assert not _equal(traj[4][1][moved], traj[0][1][moved])


def test_mnpo_population_is_sized_by_its_weights_and_shifts_each_round(sft_run, tmp_path):
    trainer = methods.build(_config(sft_run, "mnpo", round_steps=2), str(tmp_path))
    traj = _trajectory(trainer, 6)
    names = ["pop_0", "pop_1", "pop_2"]  # the default weights (0.5, 0.3, 0.2)
    assert sorted(traj[0][1]) == names
    for s in range(1, len(traj)):
        params, aux = traj[s]
        before = traj[s - 1][1]
        if s % 2 == 0:  # a round ends: the policy joins, the others move back one place
            assert _equal(aux["pop_0"], params), s
            assert _equal(aux["pop_1"], before["pop_0"]) and _equal(aux["pop_2"], before["pop_1"])
        else:
            assert all(_equal(aux[n], before[n]) for n in names), s
    two = methods.build(_config(sft_run, "mnpo", weights=(0.6, 0.4)), str(tmp_path / "two"))
    assert sorted(two.init_state().aux) == ["pop_0", "pop_1"]


def test_mnpo_with_one_weight_is_inpo(sft_run, tmp_path):
    """The population of one, weight 1: the same samples, loss and update as INPO, bit for bit;
    with three players the first step already differs (its population's log-ratios count)."""
    run = lambda method, **kw: _trajectory(
        methods.build(_config(sft_run, method, round_steps=2, **kw), str(tmp_path / method)), 3
    )
    inpo, one = run("inpo"), run("mnpo", weights=(1.0,))
    for (p_inpo, aux_inpo), (p_one, aux_one) in zip(inpo, one, strict=True):
        assert _equal(p_inpo, p_one) and _equal(aux_inpo["prev"], aux_one["pop_0"])

    def losses_of(method, **kw):
        trainer = methods.build(
            _config(sft_run, method, round_steps=2, **kw), str(tmp_path / f"{method}_loss")
        )
        state, out = trainer.init_state(), []
        for _ in range(3):
            state, metrics = trainer.step(state, next(trainer.data))
            out.append(float(jax.device_get(metrics)["loss"]))
        return np.array(out)

    # All copies start as mu, so h_t is INPO's in the first round (up to the rounding of the
    # weights' sum); once it has ended, the population's older members count.
    inpo_loss, three = losses_of("inpo"), losses_of("mnpo")
    np.testing.assert_allclose(three[:2], inpo_loss[:2], rtol=1e-5)
    assert abs(three[2] - inpo_loss[2]) > 1e-3 * abs(inpo_loss[2])


def test_an_update_lands_on_the_base_a_method_names():
    """``update_base`` (EGPO's full step): the gradient is taken at the live parameters and the
    update added to the anchor: with SGD on ``|x|^2 / 2``, x_new = anchor - lr x."""
    import jax.numpy as jnp
    import optax

    from nlhf_jax.train.step import init_train_state, make_step

    tx, lr = optax.sgd(0.1), 0.1
    x, anchor = jnp.array([1.0, -2.0]), jnp.array([5.0, 7.0])
    loss = lambda graphdef, p, batch, rng: (0.5 * jnp.sum(p**2), {})
    state = init_train_state(x, tx, 0, aux={"anchor": anchor})
    for base, want in ((None, x - lr * x), (lambda st: st.aux["anchor"], anchor - lr * x)):
        new, _ = make_step(None, tx, loss, update_base=base)(state, {})
        np.testing.assert_allclose(new.params, want, rtol=1e-6)


def test_egpo_keeps_the_half_steps_start_and_returns_to_it(sft_run, tmp_path):
    """Half steps (1, 3) keep where they started as the anchor; full steps (2, 4) leave it and
    add their update to it, so the policy after a full step is the anchor plus one update, not
    the half-step policy plus one."""
    trainer = methods.build(_config(sft_run, "egpo"), str(tmp_path))
    traj = _trajectory(trainer, 4)
    for s in range(1, len(traj)):
        aux = traj[s][1]
        want = traj[s - 1][0] if s % 2 == 1 else traj[s - 1][1]["anchor"]
        assert _equal(aux["anchor"], want), s
    # Adam moves each weight by at most about lr (1e-2) a step (the bias-corrected ratio of its
    # moments is at most about 1 over two steps): from the anchor the full step lands within
    # 1.5 lr of where the iteration started; added to the half-step policy instead, the weights
    # whose two updates share a sign would be about 2 lr away.
    start, full = _leaves(traj[0][0]), _leaves(traj[2][0])
    assert max(np.abs(a - b).max() for a, b in zip(full, start, strict=True)) < 1.5e-2
    assert not _equal(traj[2][0], traj[1][0])


def test_k_samples_every_pair_is_asked_and_answered_into_one_matrix():
    """``judge_questions`` asks about every pair i < j of K responses per prompt, and
    ``wins_matrix`` puts the answers where P(y_i > y_j) belongs (1 - it at [j, i], 1/2 on the
    diagonal): checked against a judge computed here on every ordered pair; ``take_rows``
    picks each prompt's own response."""
    import jax.numpy as jnp

    from nlhf_jax.sampling import SampleOutput
    from nlhf_jax.train.questions import judge_questions, take_rows, wins_matrix

    b, k, n = 3, 4, 5
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 50, (b, k, n)))
    zeros = jnp.zeros((b, k, n))
    ys = SampleOutput(tokens, jnp.ones((b, k, n), bool), zeros, None, zeros)
    prompt = jnp.arange(b)[:, None] * jnp.ones((1, 2), int)
    judge = lambda x, xm, y, ym, z, zm: jax.nn.sigmoid((y.sum(-1) - z.sum(-1)) / 50.0 + x[:, 0])
    q = judge_questions(prompt, jnp.ones_like(prompt, bool), ys, k)
    assert q[2].shape == (b * k * (k - 1) // 2, n)
    wins = np.asarray(wins_matrix(judge(*q), k))
    s = np.asarray(tokens.sum(-1), np.float64)
    want = 1 / (1 + np.exp(-((s[:, :, None] - s[:, None, :]) / 50.0 + np.arange(b)[:, None, None])))
    want[:, np.arange(k), np.arange(k)] = 0.5
    upper = np.triu(np.ones((k, k), bool), 1)
    np.testing.assert_allclose(wins[:, upper], want[:, upper], rtol=1e-6)
    np.testing.assert_allclose(wins + wins.transpose(0, 2, 1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(np.diagonal(wins, axis1=1, axis2=2), 0.5)
    picked = take_rows(ys, jnp.array([2, 0, 3]))
    np.testing.assert_array_equal(picked.tokens, tokens[np.arange(b), [2, 0, 3]])


def test_sppo_trains_on_the_best_and_worst_of_k_by_their_win_rates():
    """SPPO's choice among K: the best and the worst by the mean win rate against the other
    K - 1 (its own 1/2 left out), with those rates; never one response twice, even in a tie."""
    from nlhf_jax.train.online import sppo

    wins = np.full((2, 3, 3), 0.5)
    wins[0] = [[0.5, 0.9, 0.8], [0.1, 0.5, 0.3], [0.2, 0.7, 0.5]]  # rates 0.85, 0.2, 0.45
    best, worst, fields = (np.asarray(x) if not isinstance(x, dict) else x
                           for x in sppo._choose(None, jax.numpy.asarray(wins)))  # fmt: skip
    assert best[0] == 0 and worst[0] == 1
    np.testing.assert_allclose(np.asarray(fields["win_a"])[0], 0.85)
    np.testing.assert_allclose(np.asarray(fields["win_b"])[0], 0.2)
    assert best[1] != worst[1]  # all tied at 1/2


def test_onpos_update_is_the_optimistic_equation():
    """ONPO's rule by hand over three steps: ``u_t = -lr (2 r_t - r_{t-1})`` with
    ``r_t = g_t / (sqrt(v_t / (1 - b2^t)) + eps)`` (no first moment) and ``r_0 = r_1``."""
    import jax.numpy as jnp
    import optax

    from nlhf_jax.train.online.onpo import optimistic_adam

    lr, b2, eps = 0.1, 0.999, 1e-8
    tx = optimistic_adam(1.0, optax.constant_schedule(lr))
    state, v, prev = tx.init(jnp.zeros(2)), 0.0, None
    for t, g in enumerate([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]], start=1):
        g = np.array(g)
        u, state = tx.update(jnp.asarray(g, jnp.float32), state)
        v = b2 * v + (1 - b2) * g**2
        r = g / (np.sqrt(v / (1 - b2**t)) + eps)
        want = -lr * (2 * r - (r if prev is None else prev))  # float64; u is float32
        np.testing.assert_allclose(u, want, rtol=1e-5, atol=1e-6)
        prev = r


def test_onpos_own_optimizer_reaches_a_bilinear_saddle_where_adamw_spirals_out():
    """The optimizer a run of each method gets (``step.method_optimizer``: clipping, the
    schedule, then AdamW or the method's rule), on descent-ascent in ``x y`` from (1, 1), 3,000
    steps at learning rate 0.05 (cosine decay): ONPO's optimistic rule reaches the saddle
    (0, 0); AdamW, the rest's, and ONPO's rule without its optimism move away from it."""
    import jax.numpy as jnp

    from nlhf_jax.train.step import method_optimizer

    def distance(method, **hp):
        config = _config(None, method, num_steps=3000)
        config.optimizer.learning_rate = 0.05
        m = online.get(method)
        tx = method_optimizer(config, m, dataclasses.replace(m.hyperparameters(config), **hp))

        def body(carry, _):
            p, s = carry
            u, s = tx.update(jnp.array([p[1], -p[0]]), s, p)  # x descends, y ascends
            return (p + u, s), None

        p = jnp.ones(2)
        (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=3000)
        return float(jnp.linalg.norm(p))

    # Measured: 1.9e-9, 1.77 and 7.6 (from 1.41).
    assert distance("onpo") < 1e-4
    assert distance("onpo", optimism=0.0) > 1.5 and distance("online_ipo") > 1.5


def test_a_methods_own_optimizer_refuses_weight_decay_in_one_line():
    """AdamW decays weights; a method's own rule has none, so asking for it is refused."""
    from nlhf_jax.errors import UserError
    from nlhf_jax.train.step import method_optimizer

    config = _config(None, "onpo")
    config.optimizer.weight_decay = 0.01
    m = online.get("onpo")
    with pytest.raises(UserError, match=r"config.optimizer.weight_decay=0.01: method 'onpo'"):
        method_optimizer(config, m, m.hyperparameters(config))
    method_optimizer(config, online.get("online_ipo"), None)  # AdamW takes it


def test_onpo_trains_with_its_own_optimizer(sft_run, tmp_path):
    """ONPO's step carries its optimizer's state (the last normalized gradient). Its first step
    is online IPO's (optimism extrapolates from the previous step, and Adam's first ratio is
    the gradient's sign either way); its second is not."""

    def run(method):
        trainer = methods.build(_config(sft_run, method), str(tmp_path / method))
        state = trainer.init_state()
        params = []
        for _ in range(2):
            state, _ = trainer.step(state, next(trainer.data))
            params.append(jax.device_get(state.params))
        return state, params

    state, onpo = run("onpo")
    _, ipo = run("online_ipo")
    optimistic = lambda x: hasattr(x, "previous_gradient")  # optax's optimistic state
    assert any(optimistic(x) for x in jax.tree.leaves(state.opt_state, is_leaf=optimistic))
    for a, b in zip(_leaves(onpo[0]), _leaves(ipo[0]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not _equal(onpo[1], ipo[1])


@pytest.mark.parametrize("method", ["nash_md", "online_ipo", "ipo_md"])
def test_stateless_methods_take_finite_steps(sft_run, tmp_path, method):
    trainer = methods.build(_config(sft_run, method), str(tmp_path))
    state = trainer.init_state()
    assert state.aux is None
    for _ in range(2):
        state, metrics = trainer.step(state, next(trainer.data))
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())


def test_one_step_on_8_devices_equals_one_device(sft_run, tmp_path):
    """Nash-MD-PG (sampling, mixture, judge, update) with the batch split over 8 fake CPU
    devices against the same step on one: same samples, same parameters up to float
    reduction order."""
    assert jax.device_count() == 8
    results = []
    for n in (1, 8):
        config = _config(sft_run, "nash_md", batch_size=16)
        config.mesh.num_devices = n
        trainer = methods.build(config, str(tmp_path / f"d{n}"))
        state = trainer.init_state()
        state, metrics = trainer.step(state, next(trainer.data))
        devices = {d for x in jax.tree.leaves(state.params) for d in x.devices()}
        assert len(devices) == n
        results.append(jax.device_get((state.params, state.opt_state, metrics)))
    (p1, o1, m1), (p8, o8, m8) = results
    # The same sampled responses give the same preference and KL estimate.
    assert m1["rewards/probabilities"] == pytest.approx(m8["rewards/probabilities"], abs=1e-6)
    assert m1["objective/kl"] == pytest.approx(m8["objective/kl"], abs=1e-5)
    assert m1["grad_norm"] == pytest.approx(m8["grad_norm"], rel=1e-4)
    # Adam's moments hold the gradient (mu = 0.1 g, nu = 0.001 g^2): compared to each leaf's
    # scale. The parameters only to 0.1 lr: Adam's first step is about lr * sign(g), so an
    # element whose gradient is ~1e-8 can move differently (measured: 2 of 4096 by 1e-3 lr).
    for a, b in zip(_leaves(o1), _leaves(o8), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    lr = 1e-2
    for a, b in zip(_leaves(p1), _leaves(p8), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=0.1 * lr)


def test_resumed_run_equals_uninterrupted_run(sft_run, tmp_path):
    """Nash-MP (policy, optimizer, anchor and half-step copies, data and RNG all resume)."""
    config = _config(sft_run, "nash_mp", prox_steps=2, num_steps=6)
    run = lambda wd, **kw: loop.run(
        methods.build(config, str(wd)), str(wd), num_steps=6, checkpoint_every=100,
        async_checkpoints=False, quiet=True, **kw,
    )  # fmt: skip
    straight = jax.device_get(run(tmp_path / "a"))
    run(tmp_path / "b", stop_after=3)
    resumed = jax.device_get(run(tmp_path / "b"))
    assert int(resumed.step) == 6
    assert _equal(resumed.params, straight.params)
    assert _equal(resumed.aux, straight.aux)
    assert _equal(resumed.opt_state, straight.opt_state)


def test_rlhf_needs_a_reward_model_run(sft_run, tmp_path):
    with pytest.raises(ValueError, match=r"config\.judge is empty"):
        methods.build(_config(sft_run, "rlhf"), str(tmp_path))
    with pytest.raises(ValueError, match="the synthetic oracle has none"):
        methods.build(_config(sft_run, "rlhf", judge="oracle"), str(tmp_path))
    with pytest.raises(ValueError, match="is a 'sft' run, not a reward_model run"):
        methods.build(_config(sft_run, "rlhf", judge=sft_run), str(tmp_path))


def test_preference_model_judge_must_be_a_preference_model_run(sft_run, tmp_path):
    with pytest.raises(ValueError, match="is a 'sft' run, not a preference_model or reward_model"):
        methods.build(_config(sft_run, "nash_md", judge=sft_run), str(tmp_path))


def test_every_online_method_has_a_config_file():
    import importlib.util
    import pathlib

    root = pathlib.Path(__file__).parents[2] / "configs"
    for method in online.METHODS:
        spec = importlib.util.spec_from_file_location(method, root / f"{method}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.get_config().method == method


@dataclasses.dataclass(frozen=True)
class _VsReference:
    """A method defined here: y ~ pi against y' ~ mu, Nash-MD-PG's loss times ``scale``."""

    tau: float = 0.1
    scale: float = 2.0


def _vs_reference_pair(ctx, state, prompt, mask, k_a, k_b):
    a = ctx.sample_pi(state.params, prompt, mask, k_a)
    return a, ctx.sample_pi(ctx.reference, prompt, mask, k_b)


def _scaled_loss(hp, batch, logp_a, logp_b):
    del logp_b
    pg = losses.nash_md_pg_loss(
        logp_a, batch["ref_logp_a"], batch["response_a_mask"], batch["preference"], hp.tau
    )
    return hp.scale * pg


def test_k_samples_without_a_choice_or_with_a_reward_are_refused_at_registration():
    """A method drawing K samples must say which pair it trains on, and cannot ask for a reward
    (the host split answers one, for the pair's a)."""
    k = lambda hp: 3
    for kw in ({"samples": k}, {"samples": k, "choose": lambda hp, w: w, "needs_reward": True}):
        with pytest.raises(TypeError, match="K samples need choose, and no reward"):
            online.register(
                online.Method("k_bad", _VsReference, _vs_reference_pair, _scaled_loss, **kw)
            )
    assert "k_bad" not in online.METHODS


def test_a_method_defined_in_a_test_trains_through_the_registry(sft_run, tmp_path):
    method = online.register(
        online.Method("vs_reference", _VsReference, pair=_vs_reference_pair, loss=_scaled_loss)
    )
    try:
        config = base_config("vs_reference")
        assert (config.tau, config.scale) == (0.1, 2.0)  # the config's defaults: the dataclass's
        assert "beta" not in config  # only the method's own hyperparameters
        assert method.hyperparameters(config) == _VsReference()
        first_loss = {}
        for scale in (1.0, 3.0):
            config = _config(sft_run, "vs_reference", scale=scale, num_steps=3)
            workdir = tmp_path / f"scale_{scale}"
            state = loop.run(methods.build(config, str(workdir)), str(workdir), num_steps=3,
                             log_every=1, quiet=True)  # fmt: skip
            assert int(state.step) == 3
            rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
            train = [r for r in rows if r["kind"] == "train"]
            assert [r["step"] for r in train] == [1, 2, 3]
            first_loss[scale] = train[0]["loss"]
            assert json.load(open(workdir / "run.json"))["method"] == "vs_reference"
        # The hyperparameter reached the jitted step: same samples, the loss scaled 3 times.
        assert first_loss[3.0] == pytest.approx(3 * first_loss[1.0], rel=1e-5)
    finally:
        del online.METHODS["vs_reference"]
    with pytest.raises(TypeError, match="frozen dataclass"):
        online.register(online.Method("bad", dict, pair=_vs_reference_pair, loss=_scaled_loss))


@pytest.mark.parametrize("method", ["nash_md", "rlhf"])
def test_micro_batches_give_the_full_batch_update(sft_run, judge_runs, tmp_path, method):
    """The whole batch is sampled and judged once; its gradient taken 4 rows at a time equals
    the gradient of all 8 at once (float32 summation order): Adam's first moment holds it."""
    out = {}
    for micro in (0, 4):
        kw = {"judge": judge_runs["reward_model"]} if method == "rlhf" else {}
        config = _config(sft_run, method, micro_batch_size=micro, **kw)
        trainer = methods.build(config, str(tmp_path / f"m{micro}"))
        state, metrics = trainer.step(trainer.init_state(), next(trainer.data))
        out[micro] = jax.device_get((adam_moments(state).mu, metrics))
    (mu_full, m_full), (mu_micro, m_micro) = out[0], out[4]
    assert m_full["rewards/probabilities"] == m_micro["rewards/probabilities"]  # same samples
    assert m_micro["loss"] == pytest.approx(m_full["loss"], rel=1e-5, abs=1e-7)
    assert m_micro["objective/kl"] == pytest.approx(m_full["objective/kl"], rel=1e-5, abs=1e-7)
    for a, b in zip(_leaves(mu_micro), _leaves(mu_full), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max() + 1e-12)
    assert max(np.abs(x).max() for x in _leaves(mu_full)) > 0  # not vacuous


def test_micro_batch_size_must_divide_the_batch(sft_run, tmp_path):
    with pytest.raises(ValueError, match=r"config\.micro_batch_size=3 must be positive and divide"):
        methods.build(_config(sft_run, "nash_md", micro_batch_size=3), str(tmp_path))
