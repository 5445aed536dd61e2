"""Nash-EMA-PG (NLHF, docs/algorithms.md section 2): the opponent is the policy with EMA
parameters, an approximation of fictitious play; the loss is Nash-MD-PG's.

Approximation, stated: the recursion ``ema <- d ema + (1 - d) params`` every step is the usual
one; the paper's exact recursion is not known.
"""

from __future__ import annotations

import dataclasses

from nlhf_jax import losses
from nlhf_jax.train.online.base import Method, register
from nlhf_jax.train.online.nash_md import policy_gradient_loss


@dataclasses.dataclass(frozen=True)
class NashEMA:
    """Attributes:
    tau: KL(pi || mu) weight.
    ema_decay: d of the opponent's EMA (NLHF: 0.999, 0.9995 over 10k steps).
    """

    tau: float = 0.1
    ema_decay: float = 0.99


def _pair(ctx, state, prompt, mask, k_a, k_b):
    a = ctx.sample_pi(state.params, prompt, mask, k_a)
    b = ctx.sample_pi(state.aux["ema"], prompt, mask, k_b)
    return a, b


def _after(hp, old, new):
    return {"ema": losses.ema_update(old.aux["ema"], new.params, hp.ema_decay)}


METHOD = register(
    Method("nash_ema", NashEMA, pair=_pair, loss=policy_gradient_loss, aux=("ema",), after=_after)
)
