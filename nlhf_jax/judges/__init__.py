"""Judges: anything that says how likely response a is preferred to response b, P(a > b | x).

Trainers (the preference signal of every online method, RLHF's reward), evaluation (win-rate
matrices) and RLP call a judge the same way, without knowing which kind it is:

    judge = judges.load("runs/pm", task=task, vocab_size=v)   # or "oracle", a task.json, a
                                                              # checkpoint dir, "mod:fn"
    p_b = judge(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask)

Arrays follow the batch format of ``nlhf_jax.models.preference``: prompts left-padded,
responses right-padded, each with a bool mask. The kinds (``load`` resolves a spec to one):

==================================  ==================================  ========  ==============
spec                                judge                               jittable  antisymmetric
==================================  ==================================  ========  ==============
``oracle``                          the synthetic task's exact          yes       by construction
                                    preference (``SyntheticTask``)
a ``preference_model`` run          ``ModelJudge``: sigmoid(f(x,a,b) -  yes       by construction
                                    f(x,b,a))
a ``reward_model`` run              ``ModelJudge``: sigmoid(r(x,a) -    yes       by construction
                                    r(x,b)); also ``reward(x, y)``
a ``*ForSequenceClassification``    ``ModelJudge`` (the policies'       yes, or   by construction
checkpoint directory                tokenizer) or                       host
                                    ``RetokenizedRewardJudge`` (its
                                    own): Bradley-Terry, ``reward``
a ``*ForCausalLM`` checkpoint       ``CausalLMJudge``: a template       no (host) by construction
directory                           asks A or B, both orders averaged
``module:function``                 ``FunctionJudge``: a function of    no (host) if the function
                                    the decoded texts                             is
a text task's ``task.json``         ``TextTaskJudge``: decodes and      no (host) by construction
                                    parses the texts
==================================  ==================================  ========  ==============

A judge says whether it is jittable (``jittable``): jittable judges run inside the fused train
step; a host judge (Python on host arrays: decoded text, or its own tokenizer's ids) runs
between a jitted rollout and a jitted update (``nlhf_jax.train.split``), and in evaluation
after jitted sampling. Judges with a scalar ``reward`` (reward models) also serve RLHF.
"""

from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp

from nlhf_jax import checkpoint
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.judges.function import is_function_spec, load_function
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


def is_checkpoint_dir(spec: str) -> bool:
    """Whether ``spec`` is a pretrained checkpoint: a Hugging Face directory (config.json, no
    run.json) or a GGUF file (a causal LM)."""
    return checkpoint.is_checkpoint(spec)


def is_function(spec: str) -> bool:
    """Whether ``spec`` names a host function, ``module.path:function`` (and no file)."""
    return is_function_spec(spec) and not os.path.exists(spec)


def describe(spec: str) -> str:
    """What a run records of its judge: "oracle" and ``module:function`` as they are, a path as
    an absolute one."""
    if spec == "oracle" or is_function(spec):
        return spec
    return os.path.abspath(spec)


def load(
    spec: str,
    *,
    task: Any = None,
    tokenizer: Any = None,
    vocab_size: int | None = None,
    kinds: tuple[str, ...] = JUDGE_METHODS,
    dtype: str = "",
    template: str = "",
) -> Judge:
    """The judge a spec names (see the module docstring).

    Args:
      spec: "oracle", a judge run's workdir, a Hugging Face checkpoint directory (a sequence
        classifier or a causal LM) or a GGUF file (a causal LM), ``module:function``, or a
        text task's ``task.json``.
      task: the synthetic task the judged responses come from, or None (text).
      tokenizer: the policies' tokenizer (host judges decode with it; a checkpoint judge
        compares its own with it).
      vocab_size: the vocabulary of the policies judged (a model judge must share it).
      kinds: the run methods accepted for a workdir (``preference_model``, ``reward_model``).
      dtype: a checkpoint judge's compute and parameter dtype (empty: float32).
      template: a causal LM judge's prompt template file (empty: its default).
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
    if is_function(spec):
        return load_function(spec, tokenizer)
    if is_checkpoint_dir(spec):
        return _load_checkpoint(spec, tokenizer, vocab_size, dtype or "float32", template)
    if os.path.isdir(spec) and not os.path.exists(os.path.join(spec, "run.json")):
        raise MissingInput(
            f"judge {spec}: neither a training run (no run.json) nor a Hugging Face checkpoint "
            "(no config.json)"
        )
    return load_run(spec, task, kinds, vocab_size=vocab_size)


def _load_checkpoint(spec: str, tokenizer, vocab_size, dtype: str, template: str) -> Judge:
    """A Hugging Face checkpoint directory's judge, by its config.json's ``architectures``."""
    from nlhf_jax.judges.causal_lm import load_causal_lm
    from nlhf_jax.judges.hf_reward import load_reward
    from nlhf_jax.models import hf
    from nlhf_jax.models.tokenizer import load_tokenizer

    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise UserError(
            f"judge {spec}: dtype {dtype!r} is not a floating dtype (float32, bfloat16, float16)"
        )
    names = hf.read_config(spec).get("architectures") or []
    kind = next(
        (k for k in ("ForSequenceClassification", "ForCausalLM") if names and names[0].endswith(k)),
        None,
    )
    if kind is None:
        raise UserError(
            f"judge {spec}: architectures={names} in its config.json; a checkpoint judge is a "
            "*ForSequenceClassification (a reward model) or a *ForCausalLM"
        )
    if tokenizer is None:
        raise UserError(
            f"judge {spec}: a checkpoint judge reads text, which needs the policies' tokenizer "
            "(a text run), not the synthetic task"
        )
    try:
        judge_tokenizer = load_tokenizer(spec)
    except (OSError, ValueError) as e:
        raise MissingInput(f"judge {spec}: no tokenizer in the checkpoint directory ({e})") from e
    if kind == "ForSequenceClassification":
        return load_reward(spec, tokenizer, judge_tokenizer, vocab_size, dtype)
    return load_causal_lm(spec, tokenizer, judge_tokenizer, dtype, template)


__all__ = [
    "JUDGE_METHODS",
    "Judge",
    "ModelJudge",
    "describe",
    "has_reward",
    "is_checkpoint_dir",
    "is_function",
    "is_model",
    "load",
    "load_run",
]
