"""Online policy trainers of the Nash family and the RLHF baseline (ALGORITHMS.md 2, 4-6).

Every method starts from the SFT policy (``config.init_from``), which is also the reference mu,
and one jitted step does the same three things: sample responses to a batch of prompts, ask the
judge (the exact oracle, a preference model, or for RLHF a reward model) about them, and take a
gradient step on the method's loss from ``nlhf_jax.losses``. What differs is who the responses
come from and what is kept between steps (``TrainState.aux``):

================  =========================================  ===================================
method            samples                                    aux
================  =========================================  ===================================
``nash_md``       y ~ pi, y' ~ token-level mixture           --
                  softmax((1 - beta) l_pi + beta l_mu)
                  (beta = 0 self-play, 1 best response)
``nash_ema``      y ~ pi, y' ~ pi with EMA parameters        ``ema``
``nash_mp``       y ~ pi, y' ~ anchor pi_k (first M steps    ``anchor``, ``half``
                  of a 2M cycle) or the half-step policy
``online_ipo``    a, b ~ pi                                  --
``ipo_md``        a, b ~ the token-level mixture             --
``inpo``          a, b ~ pi_t, the policy at the round's     ``prev``
                  start (rounds of ``inpo_round_steps``)
``rlhf``          y ~ pi, scored by a reward model           --
================  =========================================  ===================================

Approximations, stated: the token-level mixture is not the sequence-level geometric mixture;
Nash-EMA's recursion (``ema <- d ema + (1 - d) params`` every step) is the usual one, the paper's
exact one is not known; Nash-MP's prox steps are M policy-gradient steps each (the full step
starts from the half-step parameters, a warm start; the anchor re-set every 2M steps); INPO
draws fresh pairs from the frozen pi_t every step rather than a fixed set of K per prompt.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nlhf_jax import data, evaluate, losses, parallel
from nlhf_jax.evaluate.runs import load_judge
from nlhf_jax.models import Transformer
from nlhf_jax.models.preference import rewards
from nlhf_jax.sampling import MixtureSampler, PolicySampler, SamplingConfig, score_tokens
from nlhf_jax.tasks.synthetic import EOS, PAD, SEP
from nlhf_jax.train.checkpoint import load_params
from nlhf_jax.train.data_sources import synthetic_records, task_from_config
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.pairwise import model_config, optimizer
from nlhf_jax.train.state import init_train_state, make_step, state_shardings

ONLINE_METHODS = ("nash_md", "nash_ema", "nash_mp", "online_ipo", "ipo_md", "inpo", "rlhf")


def _judge(config, task):
    """The preference signal: the exact oracle, or a trained preference model's workdir."""
    if config.judge == "oracle":
        return task
    return load_judge(config.judge, task, kinds=("preference_model",))


def check_judge_metrics(metrics: dict) -> None:
    """Host-side: a judge must return probabilities. Raised before the state is checkpointed."""
    if float(metrics["judge/nan_count"]) > 0:
        raise ValueError(f"the judge returned NaN for {int(metrics['judge/nan_count'])} pairs")
    lo, hi = float(metrics["judge/min"]), float(metrics["judge/max"])
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"the judge returned values outside [0, 1]: min {lo}, max {hi}")


def _judge_metrics(pref):
    return {
        "judge/min": jnp.min(pref),
        "judge/max": jnp.max(pref),
        "judge/nan_count": jnp.sum(jnp.isnan(pref)),
    }


def _where_tree(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def build_online(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """The trainer of ``config.method`` (one of ``ONLINE_METHODS``) from the SFT run."""
    method = config.method
    if not config.init_from:
        raise ValueError(
            "config.init_from is empty: name the SFT run's workdir (the reference policy)"
        )
    task = task_from_config(config)
    cfg = model_config(config, task.vocab_size)
    graphdef, fresh = nnx.split(Transformer(cfg, rngs=nnx.Rngs(config.seed)))
    reference = load_params(config.init_from, fresh)
    if method == "rlhf":
        if not config.reward_model:
            raise ValueError("method 'rlhf' needs config.reward_model: a reward_model run")
        reward_model = load_judge(config.reward_model, task, kinds=("reward_model",))
    judge = _judge(config, task)
    tx = optimizer(config)
    settings = SamplingConfig(max_new_tokens=task.response_len, eos_id=EOS, pad_id=PAD)
    sample_pi = PolicySampler(graphdef, cfg, settings)
    sample_mix = MixtureSampler(graphdef, graphdef, cfg, settings)
    tau, beta = config.tau, config.beta
    M = config.mp_steps

    def score(params, prompt, mask, y):
        return score_tokens(graphdef, params, prompt, mask, y.tokens, y.mask)

    def opponent(state, prompt, mask, key):
        """y' for the methods that play pi against an opponent."""
        if method == "nash_md":
            return sample_mix(state.params, reference, beta, prompt, mask, key)
        if method == "nash_ema":
            return sample_pi(state.aux["ema"], prompt, mask, key)
        # nash_mp: the anchor for the half step (first M of 2M), then the half-step policy.
        half_step = (state.step // M) % 2 == 0
        opp = _where_tree(half_step, state.aux["anchor"], state.aux["half"])
        return sample_pi(opp, prompt, mask, key)

    def prepare(state, batch, rng):
        k_a, k_b = jax.random.split(rng)
        prompt, mask = batch["prompt"], batch["prompt_mask"]
        if method in ("online_ipo", "ipo_md", "inpo"):
            if method == "online_ipo":
                a, b = (sample_pi(state.params, prompt, mask, k) for k in (k_a, k_b))
            elif method == "ipo_md":
                a, b = (
                    sample_mix(state.params, reference, beta, prompt, mask, k) for k in (k_a, k_b)
                )
            else:
                a, b = (sample_pi(state.aux["prev"], prompt, mask, k) for k in (k_a, k_b))
        elif method == "rlhf":
            a = sample_pi(state.params, prompt, mask, k_a)
            # y' ~ mu: only for the logged preference P(y > y'), the win rate vs the reference.
            b = sample_pi(reference, prompt, mask, k_b)
        else:
            a = sample_pi(state.params, prompt, mask, k_a)
            b = opponent(state, prompt, mask, k_b)
        pref = judge(prompt, mask, a.tokens, a.mask, b.tokens, b.mask)
        out = {
            **batch,
            "response_a": a.tokens,
            "response_a_mask": a.mask,
            "response_b": b.tokens,
            "response_b_mask": b.mask,
            "ref_logp_a": score(reference, prompt, mask, a),
            "ref_logp_b": score(reference, prompt, mask, b),
            "preference": pref,
        }
        if method == "nash_mp":
            out["anchor_logp_a"] = score(state.aux["anchor"], prompt, mask, a)
        if method == "inpo":
            out["prev_logp_a"] = score(state.aux["prev"], prompt, mask, a)
            out["prev_logp_b"] = score(state.aux["prev"], prompt, mask, b)
        metrics = {"rewards/probabilities": jnp.mean(pref), **_judge_metrics(pref)}
        if method == "rlhf":
            out["reward"] = rewards(
                reward_model.graphdef, reward_model.state, prompt, mask, a.tokens, a.mask
            )
            metrics["rewards/mean"] = jnp.mean(out["reward"])
        return out, metrics

    def loss_fn(graphdef, params, batch, rng):
        del rng
        x, xm = batch["prompt"], batch["prompt_mask"]
        a, am = batch["response_a"], batch["response_a_mask"]
        lp_a = score_tokens(graphdef, params, x, xm, a, am)
        ref_a, pref = batch["ref_logp_a"], batch["preference"]
        if method in ("online_ipo", "ipo_md", "inpo"):
            b, bm = batch["response_b"], batch["response_b_mask"]
            lp_b = score_tokens(graphdef, params, x, xm, b, bm)
            ref_b = batch["ref_logp_b"]
            if method == "inpo":
                loss = losses.inpo_loss(
                    lp_a, ref_a, batch["prev_logp_a"], am, lp_b, ref_b, batch["prev_logp_b"],
                    bm, pref, tau, config.inpo_eta,
                )  # fmt: skip
            else:
                loss = losses.ipo_loss(lp_a, ref_a, am, lp_b, ref_b, bm, pref, tau)
        elif method == "nash_mp":
            loss = losses.nash_mp_loss(
                lp_a, ref_a, batch["anchor_logp_a"], am, pref, tau, config.mp_eta
            )
        elif method == "rlhf":
            loss = losses.rlhf_pg_loss(lp_a, ref_a, am, batch["reward"], tau)
        else:
            loss = losses.nash_md_pg_loss(lp_a, ref_a, am, pref, tau)
        return loss, {
            "objective/kl": losses.sequence_kl_estimate(lp_a, ref_a, am),
            "objective/entropy": -jnp.mean(losses.sequence_logprob(lp_a, am)),
        }

    def after(old, new):
        if method == "nash_ema":
            return new.replace(
                aux={"ema": losses.ema_update(old.aux["ema"], new.params, config.ema_decay)}
            )
        if method == "nash_mp":
            # new.step counts the steps taken: the half step ends at M (mod 2M), the full at 2M.
            end_half = new.step % (2 * M) == M
            end_full = new.step % (2 * M) == 0
            return new.replace(
                aux={
                    "anchor": _where_tree(end_full, new.params, old.aux["anchor"]),
                    "half": _where_tree(end_half, new.params, old.aux["half"]),
                }
            )
        if method == "inpo":
            end_round = new.step % config.inpo_round_steps == 0
            return new.replace(aux={"prev": _where_tree(end_round, new.params, old.aux["prev"])})
        return new

    aux_keys = {"nash_ema": ("ema",), "nash_mp": ("anchor", "half"), "inpo": ("prev",)}

    def init_state():
        # Copies: the step donates the state, and the reference must outlive it.
        copy = lambda: jax.tree.map(jnp.copy, reference)
        aux = {k: copy() for k in aux_keys[method]} if method in aux_keys else None
        return init_train_state(copy(), tx, config.seed, aux=aux)

    mesh_settings = config.mesh.to_dict()
    num_devices = mesh_settings.pop("num_devices", 0)
    mesh_config = parallel.MeshConfig(**mesh_settings)
    mesh = parallel.make_mesh(mesh_config, jax.devices()[:num_devices] if num_devices else None)
    shardings = (
        state_shardings(init_state, mesh, mesh_config.rules),
        parallel.batch_sharding(mesh, mesh_config.rules),
    )
    jitted = make_step(graphdef, tx, loss_fn, prepare, after, shardings=shardings)

    def step(state, batch):
        return jitted(state, parallel.shard_batch(batch, shardings[1]))

    exact = evaluate.ExactEvaluator(
        task, evaluate.enumerated_logprobs(graphdef, reference, task), tau
    )
    eval_prompts = np.repeat(task.prompts(), 16, axis=0)
    eval_mask = np.ones_like(eval_prompts, bool)

    @jax.jit
    def sampled_win_rate(params, key):
        k_pi, k_ref = jax.random.split(key)
        y = sample_pi(params, eval_prompts, eval_mask, k_pi)
        y_ref = sample_pi(reference, eval_prompts, eval_mask, k_ref)
        return jnp.mean(judge(eval_prompts, eval_mask, y.tokens, y.mask, y_ref.tokens, y_ref.mask))

    def evaluate_fn(state) -> dict:
        params = jax.device_get(state.params)
        return {
            **exact(evaluate.enumerated_logprobs(graphdef, params, task)),
            # Under the run's judge, from samples (what a non-enumerable task would report); a
            # malformed response is judged like any other, where the exact figure renormalizes.
            "eval/win_rate_vs_reference": float(
                sampled_win_rate(params, jax.random.key(config.seed + 1))
            ),
        }

    return Trainer(
        init_state=lambda: jax.device_put(init_state(), shardings[0]),
        step=step,
        data=_prompt_batches(task, config, workdir),
        identity={
            "method": method,
            "model": dataclasses.asdict(cfg),
            "task": config.task.to_dict(),
            "sep": SEP,
        },
        evaluate=evaluate_fn,
        check=check_judge_metrics,
    )


def _prompt_batches(task, config, workdir):
    # Every prompt, repeated so that an epoch holds several batches (the pipeline shards and
    # batches within an epoch); each batch is then a uniform shuffle over the prompts.
    copies = -(-8 * config.batch_size // len(task.prompts()))
    prompt_set = {"prompt": np.repeat(task.prompts(), copies, axis=0)}
    prompts = synthetic_records(
        "synthetic_prompts", prompt_set, {"prompt": "tokens"}, config, workdir
    )
    options = data.BatchOptions(config.batch_size, task.prompt_len, seed=config.seed)
    return data.prompt_batches(prompts.source("train"), options)
