"""Nash Mirror Prox (docs/algorithms.md section 4), practical version: each prox step is
``prox_steps`` (M) policy-gradient steps on ``E[P(y > y')] - tau KL(pi||mu) - (tau/eta)
KL(pi||pi_k)``, both anchored at pi_k. The opponent is the anchor pi_k for the half step (the
first M steps of a 2M cycle), then the half-step policy; the anchor is re-set every 2M steps.

Approximation, stated: the full step starts from the half-step parameters (a warm start).
"""

from __future__ import annotations

import dataclasses

from nlhf_jax import losses
from nlhf_jax.train.online.base import Method, register, where_tree


@dataclasses.dataclass(frozen=True)
class NashMP:
    """Attributes:
    tau: KL(pi || mu) weight (the paper's beta).
    eta: the prox step size: the anchor's KL weighs tau / eta.
    prox_steps: M, policy-gradient steps per prox step (the anchor is re-set every 2M).
    """

    tau: float = 0.1
    eta: float = 0.2
    prox_steps: int = 10


def _pair(ctx, state, prompt, mask, k_a, k_b):
    M = ctx.hp.prox_steps
    half_step = (state.step // M) % 2 == 0
    opponent = where_tree(half_step, state.aux["anchor"], state.aux["half"])
    a = ctx.sample_pi(state.params, prompt, mask, k_a)
    return a, ctx.sample_pi(opponent, prompt, mask, k_b)


def _extra(ctx, state, prompt, mask, a, b):
    del b
    return {"anchor_logp_a": ctx.score(state.aux["anchor"], prompt, mask, a)}, {}


def _loss(hp, batch, logp_a, logp_b):
    del logp_b
    return losses.nash_mp_loss(
        logp_a,
        batch["ref_logp_a"],
        batch["anchor_logp_a"],
        batch["response_a_mask"],
        batch["preference"],
        hp.tau,
        hp.eta,
    )


def _after(hp, old, new):
    # new.step counts the steps taken: the half step ends at M (mod 2M), the full one at 2M.
    M = hp.prox_steps
    end_half = new.step % (2 * M) == M
    end_full = new.step % (2 * M) == 0
    return {
        "anchor": where_tree(end_full, new.params, old.aux["anchor"]),
        "half": where_tree(end_half, new.params, old.aux["half"]),
    }


METHOD = register(
    Method(
        "nash_mp",
        NashMP,
        pair=_pair,
        loss=_loss,
        extra=_extra,
        aux=("anchor", "half"),
        after=_after,
    )
)
