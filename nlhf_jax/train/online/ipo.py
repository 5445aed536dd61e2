"""Online IPO and IPO-MD (docs/algorithms.md section 5): the IPO loss on pairs sampled online,
weighted by the judge's P(a > b) over both orderings. Online IPO samples both responses from the
policy; IPO-MD from the token-level mixture (its mixture's fixed point is the NE at
tau / (1 - beta)).
"""

from __future__ import annotations

import dataclasses

from nlhf_jax import losses
from nlhf_jax.train.online.base import Method, register


@dataclasses.dataclass(frozen=True)
class OnlineIPO:
    """Attributes:
    tau: KL(pi || mu) weight; the IPO target is 1 / (2 tau).
    """

    tau: float = 0.1


@dataclasses.dataclass(frozen=True)
class IPOMD:
    """Attributes:
    tau: KL(pi || mu) weight; the IPO target is 1 / (2 tau).
    beta: the mixture's weight on mu.
    """

    tau: float = 0.1
    beta: float = 0.125


def pairwise_loss(hp, batch, logp_a, logp_b):
    """The IPO loss of the judged pair (with the reference's log-probs of both)."""
    return losses.ipo_loss(
        logp_a,
        batch["ref_logp_a"],
        batch["response_a_mask"],
        logp_b,
        batch["ref_logp_b"],
        batch["response_b_mask"],
        batch["preference"],
        hp.tau,
    )


def policy_pair(ctx, state, prompt, mask, k_a, k_b):
    """Both responses from the live policy, in one decode loop (online IPO's pair)."""
    del k_b  # both in one decode loop
    return ctx.sample_two(state.params, None, 0.0, 0.0, prompt, mask, k_a)


def _mixture_pair(ctx, state, prompt, mask, k_a, k_b):
    del k_b  # both in one decode loop
    beta = ctx.hp.beta
    return ctx.sample_two(state.params, ctx.reference, beta, beta, prompt, mask, k_a)


ONLINE_IPO = register(
    Method("online_ipo", OnlineIPO, pair=policy_pair, loss=pairwise_loss, scores_b=True)
)
IPO_MD = register(Method("ipo_md", IPOMD, pair=_mixture_pair, loss=pairwise_loss, scores_b=True))
