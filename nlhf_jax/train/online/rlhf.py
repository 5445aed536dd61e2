"""The RLHF baseline: y ~ pi scored by the judge's scalar reward (a Bradley-Terry reward model),
REINFORCE with the score-function KL to mu. The pair's b ~ mu only feeds the logged
P(y > y') = sigmoid(r(y) - r(y')) of the same judge (the win rate against the reference); the
loss does not use it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from nlhf_jax import losses
from nlhf_jax.train.online.base import Method, register


@dataclasses.dataclass(frozen=True)
class RLHF:
    """Attributes:
    tau: KL(pi || mu) weight, on the reward's scale (near P = 1/2 a reward r weighs like a
      preference r / 4, so 4x a Nash method's tau puts the two on the same footing).
    """

    tau: float = 0.1


def _pair(ctx, state, prompt, mask, k_a, k_b):
    a = ctx.sample_pi(state.params, prompt, mask, k_a)
    return a, ctx.sample_pi(ctx.reference, prompt, mask, k_b)


def _extra(ctx, state, prompt, mask, a, b):
    del state, b
    reward = ctx.judge.reward(prompt, mask, a.tokens, a.mask)
    # Over the whole sampled batch (outside the gradient), so micro-batches change nothing.
    advantage = losses.leave_one_out_advantage(reward)
    return {"advantage": advantage}, {"rewards/mean": jnp.mean(reward)}


def _loss(hp, batch, logp_a, logp_b):
    del logp_b
    return losses.rlhf_pg_loss(
        logp_a, batch["ref_logp_a"], batch["response_a_mask"], batch["advantage"], hp.tau
    )


METHOD = register(Method("rlhf", RLHF, pair=_pair, loss=_loss, extra=_extra, needs_reward=True))
