"""Supervised fine-tuning: the reference policy mu and the starting point of every online method
(``nlhf_jax.train.online``).

On the synthetic task it trains on generated demonstrations and is evaluated exactly. On text it
trains on a demonstrations file (``prompt``/``response``, ``prompt``/``completion`` or
``messages``; ``nlhf_jax.data``) tokenized with the run's tokenizer (every response ends with
EOS, so the policy learns to stop), from a Hugging Face
checkpoint (``config.model.hf_checkpoint``) or a fresh preset model; it is evaluated by the
per-token NLL on ``config.data.eval_file`` (when given) and a few sampled texts.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nlhf_jax import evaluate, losses, parallel, sources
from nlhf_jax.errors import UserError
from nlhf_jax.logprobs import score_tokens
from nlhf_jax.models import lora as lora_lib
from nlhf_jax.sampling import PolicySampler, SamplingConfig
from nlhf_jax.train import initial
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.step import DEMONSTRATIONS, compile_step

TEXTS_PER_EVAL = 4


def _loss_mask(batch):
    """The response tokens the loss counts: all of them, or (SFT on every assistant turn of a
    conversation) the assistant's, the user's turns between them being context only."""
    return batch.get("response_loss_mask", batch["response_mask"])


def _sft_loss(graphdef, params, batch, rng):
    del rng
    lp = score_tokens(
        graphdef,
        params,
        *(batch[k] for k in ("prompt", "prompt_mask", "response", "response_mask")),
    )
    nll = losses.sft_loss(lp, _loss_mask(batch))
    return nll, {"nll": nll}


def _response_tokens(batch):
    return jnp.sum(_loss_mask(batch))


def build_sft(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """Supervised fine-tuning on the demonstrations ``config.data`` names
    (``nlhf_jax.sources.demonstrations``): the synthetic task's, evaluated exactly, or a file's,
    evaluated by held-out NLL and sampled texts."""
    tokenizer = None
    if sources.kind(config) == "synthetic":
        task = sources.task_from_config(config)
        model = initial.fresh_policy(initial.model_config(config, task.vocab_size), config.seed)
    else:
        model = initial.checkpoint_model(config)
        tokenizer = sources.tokenizer(
            config, vocab_size=model.config.vocab_size if model else config.model.get("vocab_size")
        )
        if model is None:
            model = initial.fresh_policy(initial.model_config(config, len(tokenizer)), config.seed)
    demos = sources.demonstrations(config, workdir, tokenizer)
    identity = {"method": "sft", **demos.description}
    lora = initial.lora_config(config)
    frozen = assemble = None
    if lora is None:
        graphdef, params = nnx.split(model)
    else:  # adapters trained on the checkpoint's frozen weights
        if not config.model.hf_checkpoint:
            raise UserError(
                "config.lora.rank > 0 adapts a pretrained model: set config.model.hf_checkpoint "
                "(or config.lora.rank=0 for full fine-tuning)"
            )
        with initial.on_host():
            graphdef, params, base = lora_lib.split(lora_lib.attach(model, lora, config.seed))
        frozen = {"base": base}
        assemble = lambda adapters, frozen: nnx.merge_state(frozen["base"], adapters)
        identity["base"] = {"hf_checkpoint": os.path.abspath(config.model.hf_checkpoint)}
    cfg = model.config.replace(lora=lora)
    identity["model"] = dataclasses.asdict(cfg)
    compiled = compile_step(
        config,
        graphdef,
        params,
        initial.optimizer(config),
        _sft_loss,
        frozen=frozen,
        batch_spec=DEMONSTRATIONS,
        weight_fn=_response_tokens,  # the loss is a mean over tokens
        assemble=assemble,
    )
    # The whole model of the trained parameters (LoRA: the placed base with the adapters).
    whole = (lambda p: p) if lora is None else (lambda p: assemble(p, compiled.frozen))
    if tokenizer is None:
        evaluate_fn = _exact_evaluator(graphdef, sources.task_from_config(config), whole)
    else:
        evaluate_fn = _text_evaluator(
            config, workdir, graphdef, cfg, tokenizer, demos.heldout, whole
        )
    return Trainer(
        init_state=compiled.init_state,
        step=compiled.step,
        data=demos.train,
        identity=identity,
        evaluate=evaluate_fn,
        tokenizer=tokenizer,
    )


def _exact_evaluator(graphdef, task, whole):
    """The synthetic task's exact KL from the behaviour policy and mass on malformed responses."""
    behaviour = np.log(task.behaviour_policy())

    def evaluate_fn(state) -> dict:
        logp = evaluate.enumerated_logprobs(graphdef, parallel.to_host(whole(state.params)), task)
        pi = np.exp(logp)
        kl = np.sum(np.exp(behaviour) * (behaviour - np.log(np.maximum(pi, 1e-30))), -1)
        return {
            "exact/kl_behaviour_to_policy": float(kl.mean()),
            "exact/invalid_mass": float((1 - pi.sum(-1)).mean()),
        }

    return evaluate_fn


def _text_evaluator(config, workdir, graphdef, cfg, tokenizer, heldout, whole):
    """Held-out per-token NLL (with an eval file) and a few sampled texts."""
    d = config.data
    prompts = sources.text_source(
        tokenizer,
        prompts_file=d.eval_file or d.train_file,
        num_eval_prompts=TEXTS_PER_EVAL,
        max_prompt_len=d.max_prompt_len,
        max_new_tokens=config.sampling.max_new_tokens or d.max_response_len,
        chat_template=d.chat_template,
        chat=sources.chat_options(config),
        layout=d.layout or None,  # a demonstrations layout: the prompts of its rows
        data_dir=sources.data_dir(config, workdir),
        on_error=d.on_error,
    )
    settings = SamplingConfig(
        max_new_tokens=prompts.max_new_tokens, eos_id=prompts.eos_id, pad_id=prompts.pad_id
    )
    sampler = PolicySampler(graphdef, cfg, settings)
    eval_batches = heldout() if heldout is not None else None

    @jax.jit
    def summed_nll(params, batch):
        lp = score_tokens(
            graphdef,
            params,
            *(batch[k] for k in ("prompt", "prompt_mask", "response", "response_mask")),
        )
        mask = _loss_mask(batch)
        return -jnp.sum(jnp.where(mask, lp, 0.0)), jnp.sum(mask)

    def evaluate_fn(state) -> dict:
        out = {}
        params = parallel.to_host(whole(state.params))
        if eval_batches:
            totals = [summed_nll(params, b) for b in eval_batches]
            out["eval/nll_per_token"] = float(
                sum(float(t[0]) for t in totals) / sum(float(t[1]) for t in totals)
            )
        x, xm = prompts.eval_prompts
        y = sampler(params, x, xm, jax.random.key(config.seed + 1))
        out["texts"] = prompts.texts(
            x, xm, np.asarray(y.tokens), np.asarray(y.mask), TEXTS_PER_EVAL
        )
        return out

    return evaluate_fn
