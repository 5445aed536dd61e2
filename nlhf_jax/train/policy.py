"""Supervised fine-tuning on the synthetic task's demonstrations: the reference policy mu and
the starting point of every online method (``nlhf_jax.train.online``)."""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from flax import nnx

from nlhf_jax import data, evaluate, losses
from nlhf_jax.models import Transformer
from nlhf_jax.sampling import score_tokens
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
