"""SPPO (arXiv 2405.00675; docs/algorithms.md sections 7 and 11): multiplicative weights in
self-play against the previous iterate. Pairs a, b ~ pi_t (the policy at the round's start,
refreshed every ``round_steps``); each response's log-ratio to pi_t is regressed on ``eta
(P(y > pi_t) - 1/2)`` (``losses.sppo_loss``), whose exact minimizer is the step
``pi' ∝ pi_t exp(eta P(y > pi_t))``. No KL to mu: only the average iterate has a guarantee.

K = 2 samples per prompt: the one judged pair estimates both win rates (``P(a > b)`` for a,
``1 - P(a > b)`` for b). Approximation, stated: the paper samples K = 5 per prompt and trains on
the best and worst by their win rate against the other four; K > 2 needs several judge queries
per prompt, not built (docs/algorithms.md section 11).
"""

from __future__ import annotations

import dataclasses

from nlhf_jax import losses
from nlhf_jax.errors import UserError
from nlhf_jax.train.online.base import Method, register
from nlhf_jax.train.online.inpo import pair_from_prev, refresh_prev, scores_of


@dataclasses.dataclass(frozen=True)
class SPPO:
    """Attributes:
    eta: the multiplicative-weights step (the tabular lab's ``1 / beta``: 10).
    round_steps: steps per round; pi_t is the policy at the round's start.
    tau: not in SPPO's update (it has no KL to mu): the regularization of the game its exact
      evaluation on the synthetic task measures against, as for the other methods.
    """

    eta: float = 10.0
    round_steps: int = 100
    tau: float = 0.1

    def __post_init__(self):
        if self.eta <= 0 or self.round_steps < 1:
            raise UserError(f"eta={self.eta} and round_steps={self.round_steps} must be positive")


def _extra(ctx, state, prompt, mask, a, b):
    return scores_of(ctx, {"prev": state.aux["prev"]}, prompt, mask, a, b), {}


def _loss(hp, batch, logp_a, logp_b):
    return losses.sppo_loss(
        logp_a, batch["prev_logp_a"], batch["response_a_mask"],
        logp_b, batch["prev_logp_b"], batch["response_b_mask"],
        batch["preference"], hp.eta,
    )  # fmt: skip


METHOD = register(
    Method(
        "sppo",
        SPPO,
        pair=pair_from_prev,
        loss=_loss,
        scores_b=True,
        extra=_extra,
        aux=("prev",),
        after=refresh_prev,
    )
)
