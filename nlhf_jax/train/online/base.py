"""What a method of the online family is: how its pair is sampled, which extra log-probs it
needs, its loss, and what it keeps between steps. ``trainer.py`` composes one generic step from
these; each method is a small module of its own (``nash_md.py``, ``nash_ema.py``, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from nlhf_jax.sampling import MixtureSampler, PolicySampler, SampleOutput, score_tokens
from nlhf_jax.train.state import TrainState

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Context:
    """What every method may use inside the jitted step (captured, not traced arguments).

    Attributes:
      config: the run's config (``tau``, ``beta`` and the method's own keys).
      graphdef: the policy's graph definition (shared by every parameter copy).
      reference: the reference policy mu's parameters (the SFT policy; never trained).
      sample_pi: ``sample_pi(params, prompt, mask, key)``, the policy sampler.
      sample_mix: ``sample_mix(params, ref_params, beta, prompt, mask, key)``, the token-level
        geometric mixture ``softmax((1 - beta) l_pi + beta l_mu)``.
      extra: what a method's ``setup`` loaded on the host (e.g. RLHF's reward model).
    """

    config: ml_collections.ConfigDict
    graphdef: nnx.GraphDef
    reference: nnx.State
    sample_pi: PolicySampler
    sample_mix: MixtureSampler
    extra: dict = dataclasses.field(default_factory=dict)

    def score(self, params: nnx.State, prompt: Array, mask: Array, y: SampleOutput) -> Array:
        """Teacher-forced per-token log-probs ``[b, n]`` of sampled responses under ``params``."""
        return score_tokens(self.graphdef, params, prompt, mask, y.tokens, y.mask)


# pair(ctx, state, prompt, prompt_mask, key_a, key_b) -> (a, b): the two responses to judge.
PairFn = Callable[[Context, TrainState, Array, Array, Array, Array], tuple[Any, Any]]
# extra(ctx, state, prompt, prompt_mask, a, b) -> (batch fields, metrics): outside the gradient.
ExtraFn = Callable[[Context, TrainState, Array, Array, Any, Any], tuple[dict, dict]]
# loss(ctx, batch, logp_a, logp_b) -> scalar; logp_b is None unless ``scores_b``.
LossFn = Callable[[Context, dict, Array, Array | None], Array]
# after(ctx, old_state, new_state) -> the new ``aux`` dict.
AfterFn = Callable[[Context, TrainState, TrainState], dict]
# setup(config, vocab_size, task or None) -> ``Context.extra`` (host-side, once).
SetupFn = Callable[[ml_collections.ConfigDict, int, Any], dict]


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the online family.

    Attributes:
      name: the ``config.method`` that selects it.
      pair: who the two judged responses come from.
      loss: its loss, from ``nlhf_jax.losses`` (the batch holds ``response_a/_b`` and masks,
        ``ref_logp_a`` (and ``ref_logp_b`` with ``scores_b``), ``preference`` = P(a > b), and
        whatever ``extra`` added).
      scores_b: the loss needs the policy's log-probs of ``b`` too (the pairwise losses).
      extra: extra scores of the pair under other parameters (anchor, previous iterate, a
        reward), computed outside the gradient.
      aux: names of the parameter copies kept in ``state.aux``, each starting as the reference.
      after: how ``aux`` changes after each update (EMA, re-anchoring, a new round).
      setup: host-side loading before the step is built (a reward model).
    """

    name: str
    pair: PairFn
    loss: LossFn
    scores_b: bool = False
    extra: ExtraFn | None = None
    aux: tuple[str, ...] = ()
    after: AfterFn | None = None
    setup: SetupFn | None = None


def where_tree(pred: Array, a: Any, b: Any) -> Any:
    """``a`` where the scalar ``pred`` holds, else ``b``, leaf by leaf (inside jit)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)
