"""INPO (docs/algorithms.md section 6): pairs sampled from pi_t, the policy at the start of the
round, and the squared loss on ``h_t`` with the previous iterate's log-probs; a new round every
``round_steps`` steps (the minimizer of each round is the OMD step).

Approximation, stated: fresh pairs are drawn from the frozen pi_t every step rather than a fixed
set of K per prompt.
"""

from __future__ import annotations

import dataclasses

from nlhf_jax import losses
from nlhf_jax.train.online.base import Method, register, where_tree


@dataclasses.dataclass(frozen=True)
class INPO:
    """Attributes:
    tau: KL(pi || mu) weight.
    eta: the OMD step's inverse size (public code: tau / eta = 1/3).
    round_steps: steps per round; pi_t is the policy at the round's start.
    """

    tau: float = 0.1
    eta: float = 0.3
    round_steps: int = 100


def _pair(ctx, state, prompt, mask, k_a, k_b):
    del k_b  # both in one decode loop
    return ctx.sample_two(state.aux["prev"], None, 0.0, 0.0, prompt, mask, k_a)


def _extra(ctx, state, prompt, mask, a, b):
    prev = state.aux["prev"]
    return {
        "prev_logp_a": ctx.score(prev, prompt, mask, a),
        "prev_logp_b": ctx.score(prev, prompt, mask, b),
    }, {}


def _loss(hp, batch, logp_a, logp_b):
    return losses.inpo_loss(
        logp_a, batch["ref_logp_a"], batch["prev_logp_a"], batch["response_a_mask"],
        logp_b, batch["ref_logp_b"], batch["prev_logp_b"], batch["response_b_mask"],
        batch["preference"], hp.tau, hp.eta,
    )  # fmt: skip


def _after(hp, old, new):
    end_round = new.step % hp.round_steps == 0
    return {"prev": where_tree(end_round, new.params, old.aux["prev"])}


METHOD = register(
    Method(
        "inpo",
        INPO,
        pair=_pair,
        loss=_loss,
        scores_b=True,
        extra=_extra,
        aux=("prev",),
        after=_after,
    )
)
