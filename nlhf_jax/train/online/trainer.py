"""The generic online step and its host-side set-up (see ``nlhf_jax.train.online``).

One jitted, sharded step for every method: ``prepare`` (outside the gradient: sample the pair,
judge it, the reference's and the method's extra log-probs) -> the method's loss -> optax update
-> the method's ``after``. Evaluation: exact game metrics when the prompt source is the
enumerable synthetic task; always the win rate against the reference under the run's judge,
from samples on the source's evaluation prompts, and a few of those samples as text.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nlhf_jax import evaluate, losses, parallel
from nlhf_jax.checkpoint import load_policy
from nlhf_jax.errors import UserError
from nlhf_jax.judges import ModelJudge, load_judge
from nlhf_jax.prompts import PromptSource, synthetic_source, text_source
from nlhf_jax.sampling import MixtureSampler, PolicySampler, SamplingConfig, score_tokens
from nlhf_jax.train import initial
from nlhf_jax.train.data_sources import task_from_config
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.online.base import Context, Method
from nlhf_jax.train.placement import Compiled, compile_trainer

TEXTS_PER_EVAL = 4  # prompt/response pairs written to the logs at each evaluation


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


def prompt_source(config: ml_collections.ConfigDict, workdir: str, sft) -> PromptSource:
    """The synthetic task (the SFT run's own) or the prompts named in ``config.data``."""
    d = config.data
    data_dir = d.data_dir or f"{workdir}/data"
    if initial.data_source(config) == "synthetic":
        task = task_from_config(config)
        trained_on = sft.identity.get("task")
        if trained_on is not None and trained_on != config.task.to_dict():
            raise UserError(
                f"config.init_from={config.init_from} was trained on another synthetic task "
                f"({trained_on}) than config.task ({config.task.to_dict()})"
            )
        return synthetic_source(task, data_dir)
    tokenizer = initial.tokenizer(config, vocab_size=sft.config.vocab_size)
    s = config.sampling
    return text_source(
        tokenizer,
        prompts_file=d.prompts_file,
        prompts_tfds=d.prompts_tfds,
        eval_prompts_file=d.eval_prompts_file,
        num_eval_prompts=d.num_eval_prompts,
        max_prompt_len=d.max_prompt_len,
        max_new_tokens=s.max_new_tokens or d.max_response_len,
        chat_template=d.chat_template,
        data_dir=data_dir,
        on_error=d.on_error,
    )


def sampling_config(config: ml_collections.ConfigDict, source: PromptSource) -> SamplingConfig:
    s = config.sampling
    return SamplingConfig(
        max_new_tokens=s.max_new_tokens or source.max_new_tokens,
        temperature=s.temperature,
        top_k=s.top_k or None,
        top_p=s.top_p if s.top_p < 1.0 else None,
        eos_id=source.eos_id,
        pad_id=source.pad_id,
    )


def _judge(config, source: PromptSource, vocab_size: int, extra: dict):
    """The preference signal: the exact oracle (synthetic task only) or a preference model.
    RLHF on text without a preference model logs its reward model's Bradley-Terry P."""
    if config.judge == "oracle":
        if source.task is None and "reward_model" in extra:
            return extra["reward_model"]
        if source.task is None:
            raise UserError(
                "config.judge='oracle' exists only on the synthetic task; name a "
                "preference_model run's workdir"
            )
        return source.task
    return load_judge(config.judge, source.task, kinds=("preference_model",), vocab_size=vocab_size)


def _frozen(reference, judge, extra: dict) -> dict:
    """The models the step reads and never trains, as traced arguments (so they are sharded
    like the policy): the reference, the method's model judges (RLHF's reward model) and the
    run's judge when it is a model (the synthetic oracle is code, not arrays)."""
    models = {k: v for k, v in extra.items() if isinstance(v, ModelJudge)}
    frozen = {"reference": reference, "extra": models}
    if isinstance(judge, ModelJudge) and not any(judge is m for m in models.values()):
        frozen["judge"] = judge
    return frozen


def _bind(ctx: Context, judge, frozen: dict):
    """The context and judge inside the step, reading the frozen models from ``frozen``."""
    extra = {**ctx.extra, **frozen["extra"]}
    if "judge" in frozen:
        judge = frozen["judge"]
    else:
        judge = next((frozen["extra"][k] for k, m in ctx.extra.items() if m is judge), judge)
    return dataclasses.replace(ctx, reference=frozen["reference"], extra=extra), judge


def online_step(method: Method, ctx: Context, judge) -> tuple:
    """The step's parts, for ``compile_trainer``: ``prepare`` (sample, judge, extra scores;
    outside the gradient), the loss, and ``after``."""

    def prepare(state, batch, rng, frozen):
        ctx_t, judge_t = _bind(ctx, judge, frozen)
        k_a, k_b = jax.random.split(rng)
        prompt, mask = batch["prompt"], batch["prompt_mask"]
        a, b = method.pair(ctx_t, state, prompt, mask, k_a, k_b)
        pref = judge_t(prompt, mask, a.tokens, a.mask, b.tokens, b.mask)
        out = {
            **batch,
            "response_a": a.tokens,
            "response_a_mask": a.mask,
            "response_b": b.tokens,
            "response_b_mask": b.mask,
            "ref_logp_a": ctx_t.score(ctx_t.reference, prompt, mask, a),
            "preference": pref,
        }
        if method.scores_b:
            out["ref_logp_b"] = ctx_t.score(ctx_t.reference, prompt, mask, b)
        metrics = {"rewards/probabilities": jnp.mean(pref), **_judge_metrics(pref)}
        if method.extra is not None:
            fields, extra_metrics = method.extra(ctx_t, state, prompt, mask, a, b)
            out.update(fields)
            metrics.update(extra_metrics)
        return out, metrics

    def loss_fn(graphdef, params, batch, rng):
        del rng
        x, xm = batch["prompt"], batch["prompt_mask"]
        am = batch["response_a_mask"]
        lp_a = score_tokens(graphdef, params, x, xm, batch["response_a"], am)
        lp_b = None
        if method.scores_b:
            lp_b = score_tokens(
                graphdef, params, x, xm, batch["response_b"], batch["response_b_mask"]
            )
        loss = method.loss(ctx, batch, lp_a, lp_b)
        return loss, {
            "objective/kl": losses.sequence_kl_estimate(lp_a, batch["ref_logp_a"], am),
            "objective/entropy": -jnp.mean(losses.sequence_logprob(lp_a, am)),
        }

    after = None
    if method.after is not None:
        after = lambda old, new: new.replace(aux=method.after(ctx, old, new))
    return prepare, loss_fn, after


def policy_context(
    config, model_cfg, graphdef, reference, settings: SamplingConfig, extra: dict | None = None
) -> Context:
    """The online context of a reference policy (the SFT run's), computed as ``config.model``
    asks (``dtype``, ``attention``, ``remat``, when set)."""
    changes = initial.execution(config, compute_dtype=True)
    cfg = model_cfg.replace(**changes)
    if changes:
        graphdef = initial.graphdef_of(cfg)
    return Context(
        config=config,
        graphdef=graphdef,
        reference=reference,
        sample_pi=PolicySampler(graphdef, cfg, settings),
        sample_mix=MixtureSampler(graphdef, graphdef, cfg, settings),
        extra=extra or {},
    )


def compile_online(config, method: Method, ctx: Context, judge) -> Compiled:
    """The method's sharded step and state on ``config.mesh`` (``compile_trainer``)."""
    prepare, loss_fn, after = online_step(method, ctx, judge)
    return compile_trainer(
        config,
        ctx.graphdef,
        ctx.reference,
        initial.optimizer(config),
        loss_fn,
        prepare=prepare,
        after=after,
        aux=method.aux,
        frozen=_frozen(ctx.reference, judge, ctx.extra),
    )


def build_online(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """The trainer of ``config.method`` (a key of ``METHODS``) from the SFT run."""
    from nlhf_jax.train.online import METHODS

    method = METHODS[config.method]
    if not config.init_from:
        raise UserError(
            "config.init_from is empty: name the SFT run's workdir (the reference policy)"
        )
    sft = load_policy(config.init_from, "init_from")
    source = prompt_source(config, workdir, sft)
    if source.vocab_size > sft.config.vocab_size:
        raise UserError(
            f"the prompts' vocabulary ({source.vocab_size}) is larger than the SFT policy's "
            f"({sft.config.vocab_size}, {config.init_from})"
        )
    extra = method.setup(config, sft.config.vocab_size, source.task) if method.setup else {}
    judge = _judge(config, source, sft.config.vocab_size, extra)
    settings = sampling_config(config, source)
    ctx = policy_context(config, sft.config, sft.graphdef, sft.params, settings, extra)
    compiled = compile_online(config, method, ctx, judge)
    return Trainer(
        init_state=compiled.init_state,
        step=compiled.step,
        data=source.batches(config.batch_size, config.seed),
        identity={"method": method.name, "model": sft.identity["model"], **source.identity},
        evaluate=_evaluator(config, source, ctx, judge),
        check=check_judge_metrics,
        tokenizer=source.tokenizer,
    )


def _evaluator(config, source: PromptSource, ctx: Context, judge):
    """``state -> metrics``: exact metrics where the task is enumerable, the sampled win rate
    against the reference under the judge, and a few sampled texts (``texts``)."""
    exact = None
    if source.task is not None:
        logp_ref = evaluate.enumerated_logprobs(ctx.graphdef, ctx.reference, source.task)
        exact = evaluate.ExactEvaluator(source.task, logp_ref, config.tau)
    prompts, mask = source.eval_prompts

    @jax.jit
    def sampled(params, key):
        k_pi, k_ref = jax.random.split(key)
        y = ctx.sample_pi(params, prompts, mask, k_pi)
        y_ref = ctx.sample_pi(ctx.reference, prompts, mask, k_ref)
        win = jnp.mean(judge(prompts, mask, y.tokens, y.mask, y_ref.tokens, y_ref.mask))
        return win, y.tokens, y.mask

    def evaluate_fn(state) -> dict:
        params = parallel.to_host(state.params)
        win, tokens, y_mask = sampled(params, jax.random.key(config.seed + 1))
        out = {}
        if exact is not None:
            out.update(exact(evaluate.enumerated_logprobs(ctx.graphdef, params, source.task)))
        # Under the run's judge, from samples (all a non-enumerable task can report); on the
        # synthetic task a malformed response is judged like any other, where the exact
        # figures renormalize.
        out["eval/win_rate_vs_reference"] = float(win)
        out["texts"] = source.texts(
            prompts, mask, np.asarray(tokens), np.asarray(y_mask), TEXTS_PER_EVAL
        )
        return out

    return evaluate_fn
