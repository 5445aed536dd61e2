"""Policy trainers on the synthetic task: SFT on demonstrations, and Nash-MD-PG.

Nash-MD-PG (ALGORITHMS.md 2): each step samples y ~ pi and y' from the token-level geometric
mixture ``softmax((1 - beta) l_pi + beta l_mu)`` (beta = 0: self-play; beta = 1: best response to
the reference), asks the judge for ``P(y > y' | x)`` and takes a score-function step on
``P - 1/2 - tau * (per-token KL to mu, reward-to-go)``. The reference mu is the SFT policy, which
is also the starting point (``config.init_from``, the SFT run's workdir).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nlhf_jax import data, evaluate, losses
from nlhf_jax.judges import ModelJudge
from nlhf_jax.models import Transformer
from nlhf_jax.models.preference import PreferenceModel
from nlhf_jax.sampling import MixtureSampler, PolicySampler, SamplingConfig, score_tokens
from nlhf_jax.tasks.synthetic import EOS, PAD, SEP
from nlhf_jax.train.checkpoint import load_params, read_identity
from nlhf_jax.train.data_sources import synthetic_records, task_from_config
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.pairwise import model_config, optimizer
from nlhf_jax.train.state import init_train_state, make_step


def build_sft(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """Supervised fine-tuning on the synthetic task's demonstrations."""
    task = task_from_config(config)
    demos = task.demonstrations(config.data.train_demos, config.seed)
    built = synthetic_records(
        "synthetic_demos", demos, dict.fromkeys(demos, "tokens"), config, workdir
    )
    options = data.BatchOptions(
        config.batch_size, task.prompt_len, task.response_len, seed=config.seed
    )
    cfg = model_config(config, task.vocab_size)
    graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(config.seed)))
    tx = optimizer(config)

    def loss_fn(graphdef, params, batch, rng):
        del rng
        lp = score_tokens(
            graphdef,
            params,
            *(batch[k] for k in ("prompt", "prompt_mask", "response", "response_mask")),
        )
        nll = losses.sft_loss(lp, batch["response_mask"])
        return nll, {"nll": nll}

    behaviour = np.log(task.behaviour_policy())

    def evaluate_fn(state) -> dict:
        logp = evaluate.enumerated_logprobs(graphdef, state.params, task)
        pi = np.exp(logp)
        kl = np.sum(np.exp(behaviour) * (behaviour - np.log(np.maximum(pi, 1e-30))), -1)
        return {
            "exact/kl_behaviour_to_policy": float(kl.mean()),
            "exact/invalid_mass": float((1 - pi.sum(-1)).mean()),
        }

    return Trainer(
        init_state=lambda: init_train_state(params, tx, config.seed),
        step=make_step(graphdef, tx, loss_fn),
        data=data.sft_batches(built.source("train"), options),
        identity={"method": "sft", "model": dataclasses.asdict(cfg), "task": config.task.to_dict()},
        evaluate=evaluate_fn,
    )


def _judge(config, task):
    """The preference signal: the exact oracle, or a trained preference model's workdir."""
    if config.judge == "oracle":
        return task
    identity = read_identity(config.judge)
    if identity.get("method") != "preference_model":
        raise ValueError(
            f"config.judge={config.judge!r} is a {identity.get('method')!r} run, "
            "not a preference_model run"
        )
    fields = {k: v for k, v in identity["model"].items() if k != "rope_scaling"}
    from nlhf_jax.models import TransformerConfig

    pm = PreferenceModel(TransformerConfig(**fields), sep_id=identity["sep_id"], rngs=nnx.Rngs(0))
    graphdef, like = nnx.split(pm)
    return ModelJudge(graphdef, load_params(config.judge, like))


def build_nash_md(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """Nash-MD-PG against the token-level mixture opponent (beta = ``config.beta``)."""
    if not config.init_from:
        raise ValueError(
            "config.init_from is empty: name the SFT run's workdir (the reference policy)"
        )
    task = task_from_config(config)
    cfg = model_config(config, task.vocab_size)
    graphdef, fresh = nnx.split(Transformer(cfg, rngs=nnx.Rngs(config.seed)))
    reference = load_params(config.init_from, fresh)
    judge = _judge(config, task)
    tx = optimizer(config)
    settings = SamplingConfig(max_new_tokens=task.response_len, eos_id=EOS, pad_id=PAD)
    policy_sampler = PolicySampler(graphdef, cfg, settings)
    mixture_sampler = MixtureSampler(graphdef, graphdef, cfg, settings)
    tau, beta = config.tau, config.beta

    def prepare(params, batch, rng):
        k_y, k_opp = jax.random.split(rng)
        prompt, mask = batch["prompt"], batch["prompt_mask"]
        y = policy_sampler(params, prompt, mask, k_y)
        y_opp = mixture_sampler(params, reference, beta, prompt, mask, k_opp)
        pref = judge(prompt, mask, y.tokens, y.mask, y_opp.tokens, y_opp.mask)
        ref_lp = score_tokens(graphdef, reference, prompt, mask, y.tokens, y.mask)
        out = {
            **batch,
            "response": y.tokens,
            "response_mask": y.mask,
            "ref_logp": ref_lp,
            "preference": pref,
        }
        metrics = {
            "rewards/probabilities": jnp.mean(pref),
            "judge/min": jnp.min(pref),
            "judge/max": jnp.max(pref),
            "judge/nan_count": jnp.sum(jnp.isnan(pref)),
        }
        return out, metrics

    def loss_fn(graphdef, params, batch, rng):
        del rng
        lp = score_tokens(
            graphdef,
            params,
            batch["prompt"],
            batch["prompt_mask"],
            batch["response"],
            batch["response_mask"],
        )
        loss = losses.nash_md_pg_loss(
            lp, batch["ref_logp"], batch["response_mask"], batch["preference"], tau
        )
        seq_lp = losses.sequence_logprob(lp, batch["response_mask"])
        return loss, {
            "objective/kl": losses.sequence_kl_estimate(
                lp, batch["ref_logp"], batch["response_mask"]
            ),
            "objective/entropy": -jnp.mean(seq_lp),
        }

    # Every prompt, repeated so that an epoch holds several batches (the pipeline shards and
    # batches within an epoch); each batch is then a uniform shuffle over the prompts.
    copies = -(-8 * config.batch_size // len(task.prompts()))
    prompt_set = {"prompt": np.repeat(task.prompts(), copies, axis=0)}
    prompts = synthetic_records(
        "synthetic_prompts", prompt_set, {"prompt": "tokens"}, config, workdir
    )
    options = data.BatchOptions(config.batch_size, task.prompt_len, seed=config.seed)
    exact = evaluate.ExactEvaluator(
        task, evaluate.enumerated_logprobs(graphdef, reference, task), tau
    )

    def evaluate_fn(state) -> dict:
        return exact(evaluate.enumerated_logprobs(graphdef, state.params, task))

    return Trainer(
        # A copy: the step donates the state, and the reference must outlive it.
        init_state=lambda: init_train_state(jax.tree.map(jnp.copy, reference), tx, config.seed),
        step=make_step(graphdef, tx, loss_fn, prepare),
        data=data.prompt_batches(prompts.source("train"), options),
        identity={
            "method": config.method,
            "model": dataclasses.asdict(cfg),
            "task": config.task.to_dict(),
            "sep": SEP,
        },
        evaluate=evaluate_fn,
        check=check_judge_metrics,
    )


def check_judge_metrics(metrics: dict) -> None:
    """Host-side: a judge must return probabilities. Raised before the state is checkpointed."""
    if float(metrics["judge/nan_count"]) > 0:
        raise ValueError(f"the judge returned NaN for {int(metrics['judge/nan_count'])} pairs")
    lo, hi = float(metrics["judge/min"]), float(metrics["judge/max"])
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"the judge returned values outside [0, 1]: min {lo}, max {hi}")
