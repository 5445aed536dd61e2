"""Training a pairwise preference model or a Bradley-Terry reward model (docs/algorithms.md 3).

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
from flax import nnx

from nlhf_jax import parallel, sources
from nlhf_jax.errors import UserError
from nlhf_jax.models import metrics as pm_metrics
from nlhf_jax.models.preference import (
    PreferenceModel,
    RewardModel,
    load_backbone,
    pair_logits,
    pair_loss,
)
from nlhf_jax.train import initial, refresh
from nlhf_jax.train.initial import model_config, optimizer
from nlhf_jax.train.loop import Trainer
from nlhf_jax.train.step import PAIRS, compile_step


def build(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """The trainer of ``config.method`` in {"preference_model", "reward_model"}.

    The backbone starts from ``config.model.hf_checkpoint`` or the ``config.init_from`` policy
    run when one is named (the head is always fresh), else from a fresh preset model.
    """
    kind = config.method
    backbone_cfg, backbone = initial.backbone_state(config)
    vocab_size = backbone_cfg.vocab_size if backbone_cfg else None
    views, bottleneck = None, None
    if config.rlp.samples:  # a judge refreshed on policy samples (RLP, train/refresh.py)
        source, views = refresh.refreshed_data(config, workdir, vocab_size)
        if views is not None:
            bottleneck = (config.rlp.code_dim, config.rlp.hidden)
            if config.micro_batch_size:
                raise UserError(
                    "RLP-UML's mutual-information estimate pairs rows across the whole batch; "
                    "set config.micro_batch_size=0 for a UML-refreshed judge"
                )
    else:
        source = sources.pairs(config, workdir, vocab_size=vocab_size)
    model_cfg = backbone_cfg or model_config(config, source.vocab_size)
    rngs = nnx.Rngs(config.seed)
    with initial.on_host():  # built on the host, then placed into its shards
        if kind == "preference_model":
            model = PreferenceModel(
                model_cfg, sep_id=source.sep_id, bottleneck=bottleneck, rngs=rngs
            )
        else:
            model = RewardModel(model_cfg, bottleneck=bottleneck, rngs=rngs)
    if backbone is not None:
        load_backbone(model, backbone)
    graphdef, params = nnx.split(model)

    def loss_fn(graphdef, params, batch, rng):
        loss, logit_b = pair_loss(graphdef, params, batch)
        prob_b = jax.nn.sigmoid(logit_b)
        metrics = {"accuracy": pm_metrics.pairwise_accuracy(prob_b, jnp.asarray(batch["label"]))}
        if views is not None:  # RLP-UML: + lambda L_M (the rng draws the Gaussian codes)
            l_m, uml_metrics = refresh.uml_loss(graphdef, params, batch["views"], rng)
            metrics.update(uml_metrics, **{"uml/loss": l_m, "bradley_terry/loss": loss})
            loss = loss + config.rlp.uml_weight * l_m
        return loss, metrics

    predict = jax.jit(lambda p, batch: jax.nn.sigmoid(pair_logits(graphdef, p, batch)))

    def evaluate(state) -> dict:
        out = {}
        params = parallel.to_host(state.params)
        for name, batches in source.eval_sets().items():
            probs, labels = [], []
            for batch in batches:
                probs.append(np.asarray(predict(params, batch)))
                labels.append(np.asarray(batch["label"]))
            q, p = jnp.asarray(np.concatenate(probs)), jnp.asarray(np.concatenate(labels))
            out.update({f"{name}/{k}": v for k, v in pm_metrics.preference_metrics(q, p).items()})
        return out

    identity = {
        "method": kind,
        "model": dataclasses.asdict(model_cfg),
        "sep_id": source.sep_id,
        "data": source.description,
    }
    if backbone is not None:  # where the backbone came from (recorded, not a shape)
        identity["backbone"] = config.model.hf_checkpoint or config.init_from
    if bottleneck is not None:  # RLP-UML's heads are part of the checkpoint
        identity["bottleneck"] = list(bottleneck)
    compiled = compile_step(config, graphdef, params, optimizer(config), loss_fn, batch_spec=PAIRS)
    return Trainer(
        init_state=compiled.init_state,
        step=compiled.step,
        data=source.train if views is None else refresh.WithViews(source.train, views),
        identity=identity,
        evaluate=evaluate,
    )
