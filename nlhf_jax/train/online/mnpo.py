"""MNPO (arXiv 2509.23102; docs/algorithms.md section 11): INPO against a population of the
last ``len(weights)`` round-start policies with weights ``lambda_j`` (most recent first): in
INPO's ``h_t`` the log-ratio of pi_t becomes ``sum_j lambda_j log pi_{t-j}(a) / pi_{t-j}(b)``.
One weight is INPO exactly (tests/train). The population is state sized by a hyperparameter:
``weights`` sets how many copies ``state.aux`` keeps (``pop_0`` is pi_t).

Approximation, stated: pairs are drawn from pi_t, the population's most recent member, not from
its weighted mixture (the exact form's opponent, docs/algorithms.md section 10); INPO's
approximations hold too.
"""

from __future__ import annotations

import dataclasses

from nlhf_jax.errors import UserError
from nlhf_jax.train.online.base import Method, register, where_tree
from nlhf_jax.train.online.inpo import inpo_against


@dataclasses.dataclass(frozen=True)
class MNPO:
    """Attributes:
    tau: KL(pi || mu) weight.
    eta: INPO's inverse step (its public code's tau / eta = 1/3).
    round_steps: steps per round; the population moves at each round's end.
    weights: lambda_j of the last ``len(weights)`` round-start policies, most recent first,
      positive and summing to 1 (the tabular lab's 0.5, 0.3, 0.2).
    """

    tau: float = 0.1
    eta: float = 0.3
    round_steps: int = 100
    weights: tuple[float, ...] = (0.5, 0.3, 0.2)

    def __post_init__(self):
        object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not self.weights or min(self.weights) <= 0 or abs(sum(self.weights) - 1.0) > 1e-6:
            raise UserError(f"weights={self.weights}: positive and summing to 1")
        if self.round_steps < 1:
            raise UserError(f"round_steps={self.round_steps} must be positive")


def population(hp: MNPO) -> tuple[str, ...]:
    """The names of the population's copies in ``state.aux``, most recent first."""
    return tuple(f"pop_{j}" for j in range(len(hp.weights)))


def _pair(ctx, state, prompt, mask, k_a, k_b):
    del k_b
    return ctx.sample_two(state.aux["pop_0"], None, 0.0, 0.0, prompt, mask, k_a)


def _extra(ctx, state, prompt, mask, a, b):
    weighted = {"prev_logp_a": 0.0, "prev_logp_b": 0.0}
    for name, lam in zip(population(ctx.hp), ctx.hp.weights, strict=True):
        for y, key in ((a, "prev_logp_a"), (b, "prev_logp_b")):
            weighted[key] = weighted[key] + lam * ctx.score(state.aux[name], prompt, mask, y)
    return weighted, {}


def _loss(hp, batch, logp_a, logp_b):
    return inpo_against(batch, logp_a, logp_b, "ref", hp.tau, hp.eta)


def _after(hp, old, new):
    names = population(hp)
    end = new.step % hp.round_steps == 0
    shifted = {names[0]: new.params} | {
        names[j]: old.aux[names[j - 1]] for j in range(1, len(names))
    }
    return {name: where_tree(end, shifted[name], old.aux[name]) for name in names}


METHOD = register(
    Method(
        "mnpo",
        MNPO,
        pair=_pair,
        loss=_loss,
        scores_b=True,
        extra=_extra,
        aux=population,
        after=_after,
    )
)
