"""Nash-EMA-PG (NLHF, ALGORITHMS.md 2): the opponent is the policy with EMA parameters, an
approximation of fictitious play; the loss is Nash-MD-PG's.

Approximation, stated: the recursion ``ema <- d ema + (1 - d) params`` every step is the usual
one; the paper's exact recursion is not known.
"""

from __future__ import annotations

from nlhf_jax import losses
from nlhf_jax.train.online.base import Method
from nlhf_jax.train.online.nash_md import policy_gradient_loss


def _pair(ctx, state, prompt, mask, k_a, k_b):
    a = ctx.sample_pi(state.params, prompt, mask, k_a)
    b = ctx.sample_pi(state.aux["ema"], prompt, mask, k_b)
    return a, b


def _after(ctx, old, new):
    return {"ema": losses.ema_update(old.aux["ema"], new.params, ctx.config.ema_decay)}


METHOD = Method("nash_ema", pair=_pair, loss=policy_gradient_loss, aux=("ema",), after=_after)
