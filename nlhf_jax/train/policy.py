"""Supervised fine-tuning: the reference policy mu and the starting point of every online method
(``nlhf_jax.train.online``).

On the synthetic task it trains on generated demonstrations and is evaluated exactly. On text it
trains on a demonstrations file (JSONL/Parquet, ``prompt``/``response``) tokenized with the run's
tokenizer (EOS appended to every response, so the policy learns to stop), from a Hugging Face
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

from nlhf_jax import data, evaluate, losses, parallel
from nlhf_jax.errors import UserError
from nlhf_jax.prompts import PromptSource, text_source
from nlhf_jax.sampling import PolicySampler, SamplingConfig, score_tokens
from nlhf_jax.train import initial
from nlhf_jax.train.data_sources import synthetic_records, task_from_config
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.placement import compile_trainer

TEXTS_PER_EVAL = 4


def _sft_loss(graphdef, params, batch, rng):
    del rng
    lp = score_tokens(
        graphdef,
        params,
        *(batch[k] for k in ("prompt", "prompt_mask", "response", "response_mask")),
    )
    nll = losses.sft_loss(lp, batch["response_mask"])
    return nll, {"nll": nll}


def build_sft(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """Supervised fine-tuning on the synthetic task's demonstrations or a demonstrations file."""
    if initial.data_source(config) == "file":
        return _build_text_sft(config, workdir)
    task = task_from_config(config)
    demos = task.demonstrations(config.data.train_demos, config.seed)
    built = synthetic_records(
        "synthetic_demos", demos, dict.fromkeys(demos, "tokens"), config, workdir
    )
    options = data.BatchOptions(
        config.batch_size, task.prompt_len, task.response_len, seed=config.seed
    )
    cfg = initial.model_config(config, task.vocab_size)
    graphdef, params = nnx.split(initial.fresh_policy(cfg, config.seed))
    compiled = compile_trainer(config, graphdef, params, initial.optimizer(config), _sft_loss)
    behaviour = np.log(task.behaviour_policy())

    def evaluate_fn(state) -> dict:
        logp = evaluate.enumerated_logprobs(graphdef, parallel.to_host(state.params), task)
        pi = np.exp(logp)
        kl = np.sum(np.exp(behaviour) * (behaviour - np.log(np.maximum(pi, 1e-30))), -1)
        return {
            "exact/kl_behaviour_to_policy": float(kl.mean()),
            "exact/invalid_mass": float((1 - pi.sum(-1)).mean()),
        }

    return Trainer(
        init_state=compiled.init_state,
        step=compiled.step,
        data=data.sft_batches(built.source("train"), options),
        identity={"method": "sft", "model": dataclasses.asdict(cfg), "task": config.task.to_dict()},
        evaluate=evaluate_fn,
    )


def _build_text_sft(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    d = config.data
    if not d.train_file:
        raise UserError(
            "config.data.train_file is empty: name the demonstrations file (JSONL or Parquet "
            "with 'prompt' and 'response' fields)"
        )
    model = initial.checkpoint_model(config)
    tokenizer = initial.tokenizer(
        config, vocab_size=model.config.vocab_size if model else config.model.get("vocab_size")
    )
    if model is None:
        model = initial.fresh_policy(initial.model_config(config, len(tokenizer)), config.seed)
    cfg = model.config
    data_dir = d.data_dir or os.path.join(workdir, "data")
    files = {"train": d.train_file, **({"validation": d.eval_file} if d.eval_file else {})}
    built = data.build_demonstrations(
        files, data_dir, name=data.files_dataset_name(files), on_error=d.on_error
    )
    if built.num_examples.get("train", 0) == 0:
        raise UserError(f"{d.train_file}: no demonstrations")
    options = initial.text_batch_options(config)
    graphdef, params = nnx.split(model)
    compiled = compile_trainer(config, graphdef, params, initial.optimizer(config), _sft_loss)
    eval_source = built.source("validation" if d.eval_file else "train")
    prompts = text_source(
        tokenizer,
        prompts_file=d.eval_file or d.train_file,
        num_eval_prompts=TEXTS_PER_EVAL,
        max_prompt_len=d.max_prompt_len,
        max_new_tokens=config.sampling.max_new_tokens or d.max_response_len,
        chat_template=d.chat_template,
        data_dir=data_dir,
        on_error=d.on_error,
    )
    return Trainer(
        init_state=compiled.init_state,
        step=compiled.step,
        data=data.sft_batches(built.source("train"), options, tokenizer=tokenizer),
        identity={
            "method": "sft",
            "model": dataclasses.asdict(cfg),
            "data": {"train_file": os.path.abspath(d.train_file), "skipped_rows": built.skipped},
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id,
            "chat_template": d.chat_template,
        },
        evaluate=_text_evaluator(
            config, graphdef, cfg, tokenizer, prompts, eval_source if d.eval_file else None
        ),
        tokenizer=tokenizer,
    )


def _text_evaluator(config, graphdef, cfg, tokenizer, prompts: PromptSource, eval_source):
    """Held-out per-token NLL (with an eval file) and a few sampled texts."""
    settings = SamplingConfig(
        max_new_tokens=prompts.max_new_tokens, eos_id=prompts.eos_id, pad_id=prompts.pad_id
    )
    sampler = PolicySampler(graphdef, cfg, settings)
    eval_batches = None
    if eval_source is not None:
        options = initial.text_batch_options(
            config,
            batch_size=config.data.eval_batch_size,
            num_epochs=1,
            shuffle=False,
            drop_remainder=False,
        )
        eval_batches = list(  # every process evaluates every demonstration
            data.sft_batches(
                eval_source, options, tokenizer=tokenizer, process_index=0, process_count=1
            )
        )

    @jax.jit
    def summed_nll(params, batch):
        lp = score_tokens(
            graphdef,
            params,
            *(batch[k] for k in ("prompt", "prompt_mask", "response", "response_mask")),
        )
        return -jnp.sum(lp), jnp.sum(batch["response_mask"])

    def evaluate_fn(state) -> dict:
        out = {}
        params = parallel.to_host(state.params)
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
