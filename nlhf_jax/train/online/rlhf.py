"""The RLHF baseline: y ~ pi scored by a Bradley-Terry reward model, REINFORCE with the
score-function KL to mu. The pair's b ~ mu only feeds the logged P(y > y') (the win rate
against the reference under the run's judge); the loss does not use it.
"""

from __future__ import annotations

import jax.numpy as jnp

from nlhf_jax import losses
from nlhf_jax.errors import UserError
from nlhf_jax.judges import load_judge
from nlhf_jax.models.preference import rewards
from nlhf_jax.train.online.base import Method


def _setup(config, vocab_size, task):
    if not config.reward_model:
        raise UserError("method 'rlhf' needs config.reward_model: a reward_model run's workdir")
    judge = load_judge(config.reward_model, task, kinds=("reward_model",), vocab_size=vocab_size)
    return {"reward_model": judge}


def _pair(ctx, state, prompt, mask, k_a, k_b):
    a = ctx.sample_pi(state.params, prompt, mask, k_a)
    return a, ctx.sample_pi(ctx.reference, prompt, mask, k_b)


def _extra(ctx, state, prompt, mask, a, b):
    del state, b
    rm = ctx.extra["reward_model"]
    reward = rewards(rm.graphdef, rm.state, prompt, mask, a.tokens, a.mask)
    return {"reward": reward}, {"rewards/mean": jnp.mean(reward)}


def _loss(ctx, batch, logp_a, logp_b):
    del logp_b
    return losses.rlhf_pg_loss(
        logp_a, batch["ref_logp_a"], batch["response_a_mask"], batch["reward"], ctx.config.tau
    )


METHOD = Method("rlhf", pair=_pair, loss=_loss, extra=_extra, setup=_setup)
