"""COMAL (arXiv 2410.23223; docs/algorithms.md section 11): a proximal-point outer loop around
INPO. Each round of ``reset_steps`` steps runs INPO (pairs from pi_t, refreshed every
``round_steps``) on the game regularized toward the round's reference, which then resets to the
current policy. Rounds solved exactly are the proximal point method on the unregularized game,
so the iterates aim at its Nash equilibrium rather than the tau-regularized one.

Approximations, stated: a round is ``reset_steps / round_steps`` INPO rounds of gradient steps,
not an exact solution; INPO's own approximation (fresh pairs from pi_t every step) holds too.
The KL the run reports is to mu, the first reference, not to the round's.
"""

from __future__ import annotations

import dataclasses

from nlhf_jax.errors import UserError
from nlhf_jax.train.online.base import Method, register, where_tree
from nlhf_jax.train.online.inpo import inpo_against, pair_from_prev, refresh_prev, scores_of


@dataclasses.dataclass(frozen=True)
class COMAL:
    """Attributes:
    tau: the KL weight toward the round's reference.
    eta: INPO's inverse step inside a round (the tabular lab's 10 tau: at INPO's 3 tau the rounds
      oscillate near a partial-support equilibrium, tests/tabular).
    round_steps: steps per INPO round (pi_t is the policy at the round's start).
    reset_steps: steps per COMAL round; the reference becomes the policy at its end. A
      multiple of ``round_steps``.
    """

    tau: float = 0.1
    eta: float = 1.0
    round_steps: int = 100
    reset_steps: int = 500

    def __post_init__(self):
        if self.round_steps < 1 or self.reset_steps % self.round_steps:
            raise UserError(
                f"reset_steps={self.reset_steps} must be a positive multiple of "
                f"round_steps={self.round_steps}"
            )


def _extra(ctx, state, prompt, mask, a, b):
    copies = {"prev": state.aux["prev"], "anchor": state.aux["anchor"]}
    return scores_of(ctx, copies, prompt, mask, a, b), {}


def _loss(hp, batch, logp_a, logp_b):
    return inpo_against(batch, logp_a, logp_b, "anchor", hp.tau, hp.eta)


def _after(hp, old, new):
    reset = new.step % hp.reset_steps == 0
    return refresh_prev(hp, old, new) | {"anchor": where_tree(reset, new.params, old.aux["anchor"])}


METHOD = register(
    Method(
        "comal",
        COMAL,
        pair=pair_from_prev,
        loss=_loss,
        scores_b=True,
        extra=_extra,
        aux=("prev", "anchor"),
        after=_after,
    )
)
