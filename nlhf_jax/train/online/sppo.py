"""SPPO (arXiv 2405.00675; docs/algorithms.md sections 7 and 11): multiplicative weights in
self-play against the previous iterate. Pairs a, b ~ pi_t (the policy at the round's start,
refreshed every ``round_steps``); each response's log-ratio to pi_t is regressed on ``eta
(P(y > pi_t) - 1/2)`` (``losses.sppo_loss``), whose exact minimizer is the step
``pi' ∝ pi_t exp(eta P(y > pi_t))``. No KL to mu: only the average iterate has a guarantee.

``samples`` = K responses per prompt from pi_t. K = 2: the one judged pair estimates both win
rates (``P(a > b)`` for a, ``1 - P(a > b)`` for b). K > 2 (``Method.samples``): every pair of the
K is judged, each sample's ``P(y_i > pi_t)`` is estimated by its mean win rate against the other
K - 1 (unbiased: they are independent samples of pi_t), and the loss is taken on the best and
the worst by that estimate, with their estimates, as the paper trains (it samples K = 5). The
paper's exact estimator (whether a sample's own 1/2 enters the mean) is not checked here.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

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
    samples: K, responses drawn from pi_t per prompt (2: the judged pair alone).
    """

    eta: float = 10.0
    round_steps: int = 100
    tau: float = 0.1
    samples: int = 2

    def __post_init__(self):
        if self.eta <= 0 or self.round_steps < 1:
            raise UserError(f"eta={self.eta} and round_steps={self.round_steps} must be positive")
        if self.samples < 2:
            raise UserError(f"samples={self.samples}: SPPO needs at least 2 responses a prompt")


def _pair(ctx, state, prompt, mask, k_a, k_b):
    """The pair from pi_t; with K > 2 samples, all K of each prompt, ``[b, K, n]``."""
    k = ctx.hp.samples
    if k == 2:
        return pair_from_prev(ctx, state, prompt, mask, k_a, k_b)
    many = ctx.sample_pi(
        state.aux["prev"], jnp.repeat(prompt, k, axis=0), jnp.repeat(mask, k, axis=0), k_a
    )
    return jax.tree.map(lambda x: x.reshape(prompt.shape[0], k, *x.shape[1:]), many)


def _choose(hp, wins):
    """The best and the worst of K by their mean win rate against the other K - 1."""
    k = wins.shape[-1]
    rate = (jnp.sum(wins, axis=-1) - 0.5) / (k - 1)  # the diagonal's 1/2 left out
    best = jnp.argmax(rate, axis=-1)
    others = jnp.where(jax.nn.one_hot(best, k, dtype=bool), jnp.inf, rate)
    worst = jnp.argmin(others, axis=-1)  # never the best, even when all tie
    rows = jnp.arange(rate.shape[0])
    return best, worst, {"win_a": rate[rows, best], "win_b": rate[rows, worst]}


def _extra(ctx, state, prompt, mask, a, b):
    return scores_of(ctx, {"prev": state.aux["prev"]}, prompt, mask, a, b), {}


def _loss(hp, batch, logp_a, logp_b):
    return losses.sppo_loss(
        logp_a, batch["prev_logp_a"], batch["response_a_mask"],
        logp_b, batch["prev_logp_b"], batch["response_b_mask"],
        batch.get("win_a", batch["preference"]), hp.eta, batch.get("win_b"),
    )  # fmt: skip


METHOD = register(
    Method(
        "sppo",
        SPPO,
        pair=_pair,
        loss=_loss,
        scores_b=True,
        extra=_extra,
        aux=("prev",),
        after=refresh_prev,
        samples=lambda hp: hp.samples,
        choose=_choose,
    )
)
