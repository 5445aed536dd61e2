"""ONPO (arXiv 2502.16852; docs/algorithms.md sections 10 and 11): optimistic mirror descent in
self-play. Its exact form extrapolates the payoff from the last two iterates, ``2 P pi_t -
P pi_{t-1}``, where plain mirror descent uses ``P pi_t``. Here the extrapolation is in parameter
space: a, b ~ pi_theta, online IPO's loss (as EGPO's), and an optimistic Adam update
(``Method.optimizer``), ``u_t = -lr_t (r_t + optimism (r_t - r_{t-1}))`` with ``r_t`` Adam's
normalized gradient without momentum (optax's ``scale_by_adam`` at ``b1 = 0``,
``scale_by_optimistic_gradient``, then the run's learning-rate schedule): at ``optimism = 1`` the
step is ``-lr_t (2 r_t - r_{t-1})``, the exact form's extrapolation applied to gradients. One
judged batch a step (EGPO's extragradient takes two). No momentum, because momentum averages the
past where optimism extrapolates from it: on the bilinear game ``x y`` at learning rate 0.05 this
rule reaches the saddle, and without the optimism it spirals out, as AdamW does
(``tests/train/test_online.py``; with Adam's ``b1 = 0.9`` and the optimism it spiralled out too,
measured once outside the tests). optax's own ``optimistic_adam`` takes a constant
learning rate (and keeps momentum), hence the chain.

Approximation, stated: the paper's optimism is over the game's iterates, each solved by an
INPO-style regression; this one is over gradient steps of the online IPO loss, whose steps are
the game's iterates, through Adam's normalization. Its O(1/T) bound is the tabular form's
(section 10), not tested here.
"""

from __future__ import annotations

import dataclasses

import optax

from nlhf_jax.errors import UserError
from nlhf_jax.train.online.base import Method, register
from nlhf_jax.train.online.ipo import pairwise_loss, policy_pair


@dataclasses.dataclass(frozen=True)
class ONPO:
    """Attributes:
    tau: KL(pi || mu) weight; online IPO's target is 1 / (2 tau).
    optimism: the weight of the extrapolation ``r_t - r_{t-1}`` relative to the step (1: the
      exact form's ``2 r_t - r_{t-1}``; 0: Adam without it).
    """

    tau: float = 0.1
    optimism: float = 1.0

    def __post_init__(self):
        if self.optimism < 0:
            raise UserError(f"optimism={self.optimism} must not be negative")


def optimistic_adam(optimism: float, schedule) -> optax.GradientTransformation:
    """``u_t = -lr_t (r_t + optimism (r_t - r_{t-1}))``, ``r_t = g_t / (sqrt(v_t) + eps)`` with
    ``v_t`` Adam's bias-corrected second moment and no first moment (at the first step
    ``r_0 = r_1``: optax's convention)."""
    return optax.chain(
        optax.scale_by_adam(b1=0.0),
        optax.scale_by_optimistic_gradient(alpha=1.0, beta=optimism),
        optax.scale_by_learning_rate(schedule),
    )


def _optimizer(hp, schedule):
    return optimistic_adam(hp.optimism, schedule)


METHOD = register(
    Method(
        "onpo",
        ONPO,
        pair=policy_pair,
        loss=pairwise_loss,
        scores_b=True,
        optimizer=_optimizer,
    )
)
