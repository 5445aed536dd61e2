"""Judges: anything that says how likely response a is preferred to response b, P(a > b | x).

Trainers (the preference signal of every online method, RLHF's reward), evaluation (win-rate
matrices) and RLP call a judge the same way, without knowing which kind it is:

    judge = judges.load("runs/pm", task=task, vocab_size=v)        # or "oracle", a task.json
    p_b = judge(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask)

Arrays follow the batch format of ``nlhf_jax.models.preference``: prompts left-padded,
responses right-padded, each with a bool mask. The kinds (``load`` resolves a spec to one):

================================  ===================================  ========  ==============
spec                              judge                                jittable  antisymmetric
================================  ===================================  ========  ==============
``oracle``                        the synthetic task's exact            yes       by construction
                                  preference (``SyntheticTask``)
a ``preference_model`` run        ``ModelJudge``: sigmoid(f(x,a,b) -    yes       by construction
                                  f(x,b,a))
a ``reward_model`` run            ``ModelJudge``: sigmoid(r(x,a) -      yes       by construction
                                  r(x,b)); also ``reward(x, y)``
a text task's ``task.json``       ``TextTaskJudge``: decodes and        no (host) by construction
                                  parses the texts
================================  ===================================  ========  ==============

A judge says whether it is jittable (``jittable``): jittable judges run inside the fused train
step; a host judge (Python on decoded text) can only evaluate, or run between a jitted rollout
and a jitted update. Judges with a scalar ``reward`` (reward models) also serve RLHF.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import jax

from nlhf_jax.errors import UserError
from nlhf_jax.judges.model import JUDGE_METHODS, ModelJudge, load_run

Array = jax.Array


@runtime_checkable
class Judge(Protocol):
    """P(a > b | x) for a batch of pairs.

    Attributes:
      jittable: whether ``__call__`` may be traced inside ``jax.jit`` (pure, on arrays).

    Implementations should be antisymmetric: swapping a and b gives 1 - P.
    """

    jittable: bool

    def __call__(
        self,
        prompt: Array,
        prompt_mask: Array,
        response_a: Array,
        response_a_mask: Array,
        response_b: Array,
        response_b_mask: Array,
    ) -> Array:
        """Returns P(a > b) [b] in [0, 1].

        Args:
          prompt: int [b, P], left-padded; prompt_mask: bool [b, P].
          response_a: int [b, R], right-padded; response_a_mask: bool [b, R].
          response_b: int [b, R'], right-padded; response_b_mask: bool [b, R'].
        """
        ...


def has_reward(judge: Any) -> bool:
    """Whether ``judge`` also gives a scalar reward ``r(x, y)`` (a Bradley-Terry reward model)."""
    return callable(getattr(judge, "reward", None)) and getattr(judge, "has_reward", True)


def is_model(judge: Any) -> bool:
    """Whether ``judge`` carries parameters (a pytree the train step takes as a sharded
    argument rather than a constant)."""
    return isinstance(judge, ModelJudge)


def load(
    spec: str,
    *,
    task: Any = None,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    kinds: tuple[str, ...] = JUDGE_METHODS,
) -> Judge:
    """The judge a spec names (see the module docstring).

    Args:
      spec: "oracle", a judge run's workdir, or a text task's ``task.json``.
      task: the synthetic task the judged responses come from, or None (text).
      tokenizer: the policies' tokenizer (a host judge on text decodes with it).
      vocab_size: the vocabulary of the policies judged (a model judge must share it).
      kinds: the run methods accepted for a workdir (``preference_model``, ``reward_model``).
    """
    if spec == "oracle":
        if task is None:
            raise UserError(
                "judge 'oracle' exists only on the synthetic task; name a preference_model "
                "run's workdir (config.judge)"
            )
        return task
    if spec.endswith(".json"):
        from nlhf_jax.judges.text_task import TextTaskJudge

        if not os.path.isfile(spec):
            raise UserError(f"judge {spec}: no such file")
        if tokenizer is None:
            raise UserError(f"judge {spec}: a text task's judge needs the policies' tokenizer")
        return TextTaskJudge.from_file(spec, tokenizer)
    return load_run(spec, task, kinds, vocab_size=vocab_size)


__all__ = ["JUDGE_METHODS", "Judge", "ModelJudge", "has_reward", "is_model", "load", "load_run"]
