"""Training a pairwise preference model or a Bradley-Terry reward model (ALGORITHMS.md 3).

Both read preference pairs; both are judged by accuracy, log-loss and calibration error on
held-out pairs. On the synthetic task the evaluation also scores them against the exact oracle,
including on *cyclic* pairs (equal quality, different style), where the truth is a
rock-paper-scissors cycle: a scalar reward can order at most 2 of the 3 style pairs correctly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from nlhf_jax.models import get_preset
from nlhf_jax.models import metrics as pm_metrics
from nlhf_jax.models.preference import (
    PreferenceModel,
    RewardModel,
    preference_cross_entropy,
    preference_logits,
    reward_logits,
)
from nlhf_jax.train import data_sources
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.state import init_train_state, make_step


def optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay, gradient clipping at 1."""
    opt = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, opt.learning_rate, opt.warmup_steps, max(config.num_steps, opt.warmup_steps + 1)
    )
    return optax.chain(
        optax.clip_by_global_norm(opt.max_grad_norm),
        optax.adamw(schedule, weight_decay=opt.weight_decay),
    )


def model_config(config, vocab_size: int):
    overrides = {k: v for k, v in config.model.items() if k != "preset"}
    return get_preset(config.model.preset, **{"vocab_size": vocab_size, **overrides})


def build(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """The trainer of ``config.method`` in {"preference_model", "reward_model"}."""
    kind = config.method
    source = data_sources.pairs(config, workdir)
    model_cfg = model_config(config, source.vocab_size)
    rngs = nnx.Rngs(config.seed)
    if kind == "preference_model":
        model, logits_fn = (
            PreferenceModel(model_cfg, sep_id=source.sep_id, rngs=rngs),
            preference_logits,
        )
    else:
        model, logits_fn = RewardModel(model_cfg, rngs=rngs), reward_logits
    graphdef, params = nnx.split(model)
    tx = optimizer(config)

    def loss_fn(graphdef, params, batch, rng):
        del rng  # deterministic given the batch
        logit_b = logits_fn(graphdef, params, batch)
        label_b = jnp.asarray(batch["label"])
        prob_b = jax.nn.sigmoid(logit_b)
        loss = jnp.mean(preference_cross_entropy(logit_b, label_b))
        return loss, {"accuracy": pm_metrics.pairwise_accuracy(prob_b, label_b)}

    predict = jax.jit(lambda p, batch: jax.nn.sigmoid(logits_fn(graphdef, p, batch)))

    def evaluate(state) -> dict:
        out = {}
        for name, batches in source.eval_sets().items():
            probs, labels = [], []
            for batch in batches:
                probs.append(np.asarray(predict(state.params, batch)))
                labels.append(np.asarray(batch["label"]))
            q, p = jnp.asarray(np.concatenate(probs)), jnp.asarray(np.concatenate(labels))
            out[f"{name}/accuracy"] = pm_metrics.pairwise_accuracy(q, p)
            out[f"{name}/log_loss"] = pm_metrics.log_loss(q, p)
            out[f"{name}/ece"] = pm_metrics.expected_calibration_error(q, p)
        return out

    identity = {
        "method": kind,
        "model": dataclasses.asdict(model_cfg),
        "sep_id": source.sep_id,
        "data": source.description,
    }
    return Trainer(
        init_state=lambda: init_train_state(params, tx, config.seed),
        step=make_step(graphdef, tx, loss_fn),
        data=source.train,
        identity=identity,
        evaluate=evaluate,
    )
