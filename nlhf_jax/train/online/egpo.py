"""EGPO (arXiv 2503.08942; docs/algorithms.md sections 7 and 11): extragradient on online IPO's
loss, in parameter space. Steps come in pairs. The half step (odd steps: 1, 3, ...) samples
a, b ~ pi_theta and moves theta_t to theta_{t+1/2} as any step does, keeping theta_t as the
anchor. The full step (even steps) samples a, b ~ pi_{theta_{t+1/2}}, takes the gradient there,
and adds the update to the anchor: theta_{t+1} = theta_t + u(grad at theta_{t+1/2})
(``Method.update_base``). ``num_steps`` counts both, so a run of N steps is N / 2 iterations of
two judged batches each (as Nash-MP's two queries).

Approximation, stated: the updates come from the run's optimizer (AdamW with clipping), whose
moments see the half steps' gradients and the full steps' alike; the paper's step is plain
gradient descent with the learning rate.
"""

from __future__ import annotations

import dataclasses

from nlhf_jax.train.online.base import Method, register, where_tree
from nlhf_jax.train.online.ipo import pairwise_loss, policy_pair


@dataclasses.dataclass(frozen=True)
class EGPO:
    """Attributes:
    tau: KL(pi || mu) weight; online IPO's target is 1 / (2 tau).
    """

    tau: float = 0.1


def _half(step):
    """Whether the step that starts at ``state.step = step`` is a half step."""
    return step % 2 == 0


def _after(hp, old, new):
    # A half step keeps where it started from: the full step's update lands there.
    return {"anchor": where_tree(_half(old.step), old.params, old.aux["anchor"])}


def _update_base(hp, state):
    return where_tree(_half(state.step), state.params, state.aux["anchor"])


METHOD = register(
    Method(
        "egpo",
        EGPO,
        pair=policy_pair,
        loss=pairwise_loss,
        scores_b=True,
        aux=("anchor",),
        after=_after,
        update_base=_update_base,
    )
)
