"""An online method's trainer: the SFT run it starts from, its prompts, its judge, its step and
its evaluation (see ``nlhf_jax.train.online``).

Evaluation: exact game metrics when the prompt source is the enumerable synthetic task; always
the win rate against the reference under the run's judge, from samples on the source's
evaluation prompts, and a few of those samples as text.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nlhf_jax import evaluate, judges, parallel, sources
from nlhf_jax.checkpoint import load_policy
from nlhf_jax.errors import UserError
from nlhf_jax.judges.causal_lm import CausalLMJudge
from nlhf_jax.models import lora as lora_lib
from nlhf_jax.sampling import MixtureSampler, PolicySampler, SamplingConfig
from nlhf_jax.sources import PromptSource
from nlhf_jax.train import initial
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.online.base import Context, Method, get
from nlhf_jax.train.split import compile_split
from nlhf_jax.train.step import Compiled, compile_fused

TEXTS_PER_EVAL = 4  # prompt/response pairs written to the logs at each evaluation


def compile_online(config: ml_collections.ConfigDict, method, ctx, params=None) -> Compiled:
    """The online ``method``'s sharded step and state on ``config.mesh``, training ``params``
    (default: from the reference; LoRA: the fresh adapters): one fused step with a jittable judge
    (``nlhf_jax.train.step.compile_fused``), split around a host judge
    (``nlhf_jax.train.split.compile_split``)."""
    if getattr(ctx.judge, "jittable", True):
        return compile_fused(config, method, ctx, params)
    return compile_split(config, method, ctx, params)


def check_judge_metrics(metrics: dict) -> None:
    """Host-side: a judge must return probabilities. Raised before the state is checkpointed."""
    if float(metrics["judge/nan_count"]) > 0:
        raise ValueError(f"the judge returned NaN for {int(metrics['judge/nan_count'])} pairs")
    lo, hi = float(metrics["judge/min"]), float(metrics["judge/max"])
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"the judge returned values outside [0, 1]: min {lo}, max {hi}")


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


def load_judge(config: ml_collections.ConfigDict, method: Method, source: PromptSource, vocab):
    """The run's judge (``config.judge``, with ``judge_dtype`` and ``judge_template``), checked
    against what ``method`` needs of it."""
    if not config.judge:
        raise UserError(
            f"config.judge is empty: name the judge of {method.name!r} (a preference_model or "
            "reward_model run's workdir, a Hugging Face checkpoint directory, module:function, "
            "a text task's task.json, or 'oracle' on the synthetic task)"
        )
    kinds = ("reward_model",) if method.needs_reward else judges.JUDGE_METHODS
    if method.needs_reward and config.judge == "oracle":
        raise UserError(
            f"method {method.name!r} maximizes a scalar reward; the synthetic oracle has none: "
            "name a reward_model run's workdir (config.judge)"
        )
    dtype, template = config.get("judge_dtype", ""), config.get("judge_template", "")
    if dtype and not judges.is_checkpoint_dir(config.judge):
        raise UserError(
            f"config.judge_dtype={dtype}: only a Hugging Face checkpoint judge takes a dtype "
            f"(a run's judge computes in its own); config.judge={config.judge} is not one"
        )
    judge = judges.load(
        config.judge,
        task=source.task,
        tokenizer=source.tokenizer,
        vocab_size=vocab,
        kinds=kinds,
        dtype=dtype,
        template=template,
    )
    if method.needs_reward and not judges.has_reward(judge):
        raise UserError(
            f"method {method.name!r} maximizes a scalar reward; config.judge={config.judge} "
            "gives none: name a reward_model run or a sequence-classification checkpoint"
        )
    if template and not isinstance(judge, CausalLMJudge):
        raise UserError(
            f"config.judge_template={template}: only a causal LM judge reads a template, and "
            f"config.judge={config.judge} is not one"
        )
    return judge


def policy_context(
    config, model_cfg, graphdef, reference, settings: SamplingConfig, hp, judge, base=None
):
    """The online context of a reference policy (the SFT run's), computed as ``config.model``
    asks (``dtype``, ``attention``, ``remat``, when set). With LoRA, ``graphdef`` and
    ``model_cfg`` are the adapted model's, ``base`` its frozen weights and ``reference`` zero
    adapters."""
    changes = initial.execution(config, compute_dtype=True)
    cfg = model_cfg.replace(**changes)
    if changes:
        graphdef = initial.graphdef_of(cfg)
    return Context(
        hp=hp,
        graphdef=graphdef,
        reference=reference,
        policy_sampler=PolicySampler(graphdef, cfg, settings),
        mixture_sampler=MixtureSampler(graphdef, graphdef, cfg, settings),
        judge=judge,
        base=base,
    )


def build_online(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """The trainer of ``config.method`` (a registered online method) from the SFT run."""
    method = get(config.method)
    if not config.init_from:
        raise UserError(
            "config.init_from is empty: name the start and reference policy: an SFT run's "
            "workdir, a Hugging Face checkpoint directory or a GGUF file"
        )
    sft = load_policy(config.init_from, "init_from")
    tokenizer = None
    if sources.kind(config) != "synthetic":
        tokenizer = sources.tokenizer(config, vocab_size=sft.config.vocab_size)
    source = sources.prompts(config, workdir, sft.identity, tokenizer)
    if source.vocab_size > sft.config.vocab_size:
        raise UserError(
            f"the prompts' vocabulary ({source.vocab_size}) is larger than the SFT policy's "
            f"({sft.config.vocab_size}, {config.init_from})"
        )
    judge = load_judge(config, method, source, sft.config.vocab_size)
    settings = sampling_config(config, source)
    hp = method.hyperparameters(config)
    lora = initial.lora_config(config)
    identity = {
        "method": method.name,
        "model": dataclasses.asdict(sft.config),
        # What the run played against and started from, by path (recorded, not shapes).
        "reference": os.path.abspath(config.init_from),
        "judge": judges.describe(config.judge),
        **source.identity,
    }
    if lora is None:
        ctx = policy_context(config, sft.config, sft.graphdef, sft.params, settings, hp, judge)
        compiled = compile_online(config, method, ctx)
    else:  # adapters on the SFT policy, which is the frozen base and, with zero adapters, mu
        with initial.on_host():
            graphdef, adapters, base = lora_lib.split(lora_lib.attach(sft.model, lora, config.seed))
        cfg = sft.config.replace(lora=lora)
        zeros = lora_lib.zeros_like(adapters)
        ctx = policy_context(config, cfg, graphdef, zeros, settings, hp, judge, base=base)
        compiled = compile_online(config, method, ctx, params=adapters)
        base_of = {"init_from": os.path.abspath(config.init_from)}
        identity.update(model=dataclasses.asdict(cfg), base=base_of)
    return Trainer(
        init_state=compiled.init_state,
        step=compiled.step,
        data=source.batches(config.batch_size, config.seed),
        identity=identity,
        evaluate=_evaluator(config, source, ctx),
        check=check_judge_metrics,
        tokenizer=source.tokenizer,
    )


def _evaluator(config, source: PromptSource, ctx: Context):
    """``state -> metrics``: exact metrics where the task is enumerable, the sampled win rate
    against the reference under the judge, and a few sampled texts (``texts``)."""
    exact = None
    if source.task is not None:
        logp_ref = evaluate.enumerated_logprobs(ctx.graphdef, ctx.whole(ctx.reference), source.task)
        exact = evaluate.ExactEvaluator(source.task, logp_ref, ctx.hp.tau)
    prompts, mask = source.eval_prompts
    frozen = ctx.frozen_models()  # arguments of the jitted evaluation, not constants in it

    @jax.jit
    def sampled(params, frozen, key):
        c = ctx.bind(frozen)
        k_pi, k_ref = jax.random.split(key)
        y = c.sample_pi(params, prompts, mask, k_pi)
        y_ref = c.sample_pi(c.reference, prompts, mask, k_ref)
        if not c.judge.jittable:  # a host judge answers after sampling (evaluate_fn)
            return y_ref, y.tokens, y.mask
        win = jnp.mean(c.judge(prompts, mask, y.tokens, y.mask, y_ref.tokens, y_ref.mask))
        return win, y.tokens, y.mask

    def evaluate_fn(state) -> dict:
        params = parallel.to_host(state.params)
        win, tokens, y_mask = sampled(params, frozen, jax.random.key(config.seed + 1))
        if not ctx.judge.jittable:
            y_ref, tokens, y_mask = parallel.to_host((win, tokens, y_mask))
            win = np.mean(ctx.judge(prompts, mask, tokens, y_mask, y_ref.tokens, y_ref.mask))
        out = {}
        if exact is not None:
            whole = ctx.whole(params)
            out.update(exact(evaluate.enumerated_logprobs(ctx.graphdef, whole, source.task)))
        # Under the run's judge, from samples (all a non-enumerable task can report); on the
        # synthetic task a malformed response is judged like any other, where the exact
        # figures renormalize.
        out["eval/win_rate_vs_reference"] = float(win)
        out["texts"] = source.texts(
            prompts, mask, np.asarray(tokens), np.asarray(y_mask), TEXTS_PER_EVAL
        )
        return out

    return evaluate_fn
