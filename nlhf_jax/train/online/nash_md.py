"""Nash-MD-PG (NLHF, docs/algorithms.md section 2): y ~ pi against y' ~ the token-level
geometric mixture ``softmax((1 - beta) l_pi + beta l_mu)``; beta = 0 is self-play, beta = 1 the
best response to mu. The loss is the policy-gradient estimate with the 1/2 baseline and the
score-function KL.

Approximation, stated: the product of per-token mixtures is not the sequence-level geometric
mixture the theory uses (the paper says so too).
"""

from __future__ import annotations

import dataclasses

from nlhf_jax import losses
from nlhf_jax.train.online.base import Method, register


@dataclasses.dataclass(frozen=True)
class NashMD:
    """Attributes:
    tau: KL(pi || mu) weight of the regularized game (NLHF on TL;DR: 0.008).
    beta: the mixture's weight on mu (NLHF's best: 0.125).
    """

    tau: float = 0.1
    beta: float = 0.125


def _pair(ctx, state, prompt, mask, k_a, k_b):
    del k_b  # one decode loop draws both (rows with beta = 0 are samples of pi itself)
    return ctx.sample_two(state.params, ctx.reference, 0.0, ctx.hp.beta, prompt, mask, k_a)


def policy_gradient_loss(hp, batch, logp_a, logp_b):
    """The Nash-MD-PG loss of y = a against the opponent's b (also Nash-EMA-PG's)."""
    del logp_b
    return losses.nash_md_pg_loss(
        logp_a, batch["ref_logp_a"], batch["response_a_mask"], batch["preference"], hp.tau
    )


METHOD = register(Method("nash_md", NashMD, pair=_pair, loss=policy_gradient_loss))
