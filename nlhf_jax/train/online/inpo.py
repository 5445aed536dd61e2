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


# The pieces of INPO's round that the methods built on it share (SPPO, COMAL, MPO, MNPO).


def pair_from_prev(ctx, state, prompt, mask, k_a, k_b):
    """Both responses from pi_t (``aux["prev"]``), in one decode loop."""
    del k_b
    return ctx.sample_two(state.aux["prev"], None, 0.0, 0.0, prompt, mask, k_a)


def scores_of(ctx, copies: dict, prompt, mask, a, b) -> dict:
    """``{name}_logp_a``, ``{name}_logp_b``: the pair's per-token log-probs under each copy."""
    out = {}
    for name, params in copies.items():
        out[f"{name}_logp_a"] = ctx.score(params, prompt, mask, a)
        out[f"{name}_logp_b"] = ctx.score(params, prompt, mask, b)
    return out


def inpo_against(batch, logp_a, logp_b, reference: str, tau, eta):
    """INPO's loss with ``{reference}_logp`` as mu's (``ref``: mu itself) and ``prev_logp`` as
    pi_t's."""
    return losses.inpo_loss(
        logp_a, batch[f"{reference}_logp_a"], batch["prev_logp_a"], batch["response_a_mask"],
        logp_b, batch[f"{reference}_logp_b"], batch["prev_logp_b"], batch["response_b_mask"],
        batch["preference"], tau, eta,
    )  # fmt: skip


def refresh_prev(hp, old, new) -> dict:
    """``aux["prev"]``: the policy at the end of each round of ``hp.round_steps``, else kept."""
    end_round = new.step % hp.round_steps == 0
    return {"prev": where_tree(end_round, new.params, old.aux["prev"])}


def _extra(ctx, state, prompt, mask, a, b):
    return scores_of(ctx, {"prev": state.aux["prev"]}, prompt, mask, a, b), {}


def _loss(hp, batch, logp_a, logp_b):
    return inpo_against(batch, logp_a, logp_b, "ref", hp.tau, hp.eta)


METHOD = register(
    Method(
        "inpo",
        INPO,
        pair=pair_from_prev,
        loss=_loss,
        scores_b=True,
        extra=_extra,
        aux=("prev",),
        after=refresh_prev,
    )
)
