"""Magnetic preference optimization (MPO, arXiv 2410.16714; docs/algorithms.md section 11):
magnetic mirror descent in self-play, ``log pi' = (log pi + eta tau log m + eta P pi) / (1 + eta
tau) + c``, pulled toward a magnet ``m`` (at first mu) that moves to the current policy every
``magnet_steps`` steps.

One magnetic step is INPO's step with the magnet as its reference and inverse step
``(1 + eta tau) / eta`` (``inpo_eta``; the exact minimizers agree, tests/train), so each is
solved as an INPO round of ``round_steps`` gradient steps on pairs from the policy at the
round's start.

Approximations, stated: a magnetic step is a round of gradient steps on sampled pairs, not its
exact minimizer; pairs are fresh every step (INPO's). The KL the run reports is to mu.
"""

from __future__ import annotations

import dataclasses

from nlhf_jax.errors import UserError
from nlhf_jax.train.online.base import Method, register, where_tree
from nlhf_jax.train.online.inpo import inpo_against, pair_from_prev, refresh_prev, scores_of


@dataclasses.dataclass(frozen=True)
class MPO:
    """Attributes:
    tau: the magnet's weight (the KL toward m).
    eta: the magnetic step size (the tabular lab's 1).
    round_steps: gradient steps that solve one magnetic step.
    magnet_steps: the magnet moves to the current policy every this many steps, a multiple of
      ``round_steps``; 0 keeps it at mu (magnetic mirror descent toward the tau-regularized
      equilibrium).
    """

    tau: float = 0.1
    eta: float = 1.0
    round_steps: int = 100
    magnet_steps: int = 500

    def __post_init__(self):
        if self.round_steps < 1 or self.magnet_steps < 0 or self.magnet_steps % self.round_steps:
            raise UserError(
                f"magnet_steps={self.magnet_steps} must be 0 or a multiple of "
                f"round_steps={self.round_steps}"
            )
        if self.eta <= 0:
            raise UserError(f"eta={self.eta} must be positive")


def inpo_eta(eta, tau):
    """INPO's inverse step whose exact minimizer is MPO's magnetic step of size ``eta``."""
    return (1.0 + eta * tau) / eta


def _extra(ctx, state, prompt, mask, a, b):
    copies = {"prev": state.aux["prev"], "magnet": state.aux["magnet"]}
    return scores_of(ctx, copies, prompt, mask, a, b), {}


def _loss(hp, batch, logp_a, logp_b):
    return inpo_against(batch, logp_a, logp_b, "magnet", hp.tau, inpo_eta(hp.eta, hp.tau))


def _after(hp, old, new):
    moved = old.aux["magnet"]
    if hp.magnet_steps:
        moved = where_tree(new.step % hp.magnet_steps == 0, new.params, moved)
    return refresh_prev(hp, old, new) | {"magnet": moved}


METHOD = register(
    Method(
        "mpo",
        MPO,
        pair=pair_from_prev,
        loss=_loss,
        scores_b=True,
        extra=_extra,
        aux=("prev", "magnet"),
        after=_after,
    )
)
