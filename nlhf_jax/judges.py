"""The judge interface: anything that says how likely response a is preferred to response b.

Trainers (the opponent's win rate in Nash-MD, the preference signal of online IPO) and evaluation
(win-rate matrices) call a judge without knowing whether it is a learned model or the exact
oracle of a synthetic task (`nlhf_jax.tasks`), so a run can swap one for the other.

    judge = PreferenceJudge(*nnx.split(preference_model))
    prob_b = judge(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask)

Arrays follow the batch format of `nlhf_jax.models.preference`: prompts left-padded, responses
right-padded, each with a bool mask. The judges here are pytrees (their state is a leaf, their
graphdef static), so they can be passed into, and called inside, `jax.jit`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable

import flax.struct
import jax
from flax import nnx

from nlhf_jax.checkpoint import JUDGE_METHODS, load_params, read_identity, transformer_config
from nlhf_jax.errors import UserError
from nlhf_jax.models.preference import PAIR_FIELDS, PreferenceModel, RewardModel

Array = jax.Array


@runtime_checkable
class Judge(Protocol):
    """P(a > b | x) for a batch of pairs.

    Implementations must be pure and jittable, and should be antisymmetric: swapping a and b
    gives 1 - P (the model judges here are, by construction).
    """

    def __call__(
        self,
        prompt: Array,
        prompt_mask: Array,
        response_a: Array,
        response_a_mask: Array,
        response_b: Array,
        response_b_mask: Array,
    ) -> Array:
        """Returns P(a > b) [b] float32 in [0, 1].

        Args:
          prompt: int [b, P], left-padded; prompt_mask: bool [b, P].
          response_a: int [b, R], right-padded; response_a_mask: bool [b, R].
          response_b: int [b, R'], right-padded; response_b_mask: bool [b, R'].
        """
        ...


def judge_batch(judge: Judge, batch) -> Array:
    """Calls `judge` on the pair fields of a batch dict (its `label`, if any, is ignored)."""
    return judge(*(batch[k] for k in PAIR_FIELDS))


@flax.struct.dataclass
class ModelJudge:
    """A trained `PreferenceModel` or `RewardModel` as a judge.

    A preference model gives sigmoid(f(x, a, b) - f(x, b, a)); a reward model gives
    sigmoid(r(x, a) - r(x, b)) (Bradley-Terry). Both models expose the same `logit`, so one
    class serves both; `PreferenceJudge` and `RewardJudge` name the two uses.

    Attributes:
      graphdef: from `nnx.split(model)` (static).
      state: the model's parameters (a pytree leaf: shard it, donate it, pass it to jit).
    """

    graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
    state: nnx.State

    def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
        """d(x, a, b) [b] float32, with P(a > b) = sigmoid(d)."""
        model: PreferenceModel | RewardModel = nnx.merge(self.graphdef, self.state)
        return model.logit(
            prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
        )

    def __call__(
        self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
    ) -> Array:
        """P(a > b) [b] float32; arguments as in `Judge.__call__`."""
        return jax.nn.sigmoid(
            self.logit(
                prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
            )
        )


PreferenceJudge = ModelJudge
RewardJudge = ModelJudge


def load_judge(
    workdir: str,
    task: Any = None,
    kinds: tuple[str, ...] = JUDGE_METHODS,
    *,
    vocab_size: int | None = None,
) -> ModelJudge:
    """A run of one of ``kinds`` (``preference_model``, ``reward_model``) as a judge.

    Args:
      workdir: the judge run's directory.
      task: the synthetic task the judged responses come from (a dataclass), or None. A judge
        trained on synthetic pairs of another task (``data.task`` in its run.json) is refused.
      kinds: the methods accepted.
      vocab_size: the vocabulary of the policies it will judge; a judge with a smaller
        embedding table cannot read their tokens and is refused.
    """
    identity = read_identity(workdir)
    method = identity.get("method")
    if method not in kinds:
        raise UserError(f"{workdir} is a {method!r} run, not a {' or '.join(kinds)} run")
    if task is not None:
        trained_on = identity.get("data", {}).get("task")
        if trained_on is not None and trained_on != dataclasses.asdict(task):
            raise UserError(
                f"judge {workdir} was trained on pairs of another task: {trained_on}, "
                f"the policies' is {dataclasses.asdict(task)}"
            )
        vocab_size = task.vocab_size
    cfg = transformer_config(identity["model"])
    if vocab_size is not None and cfg.vocab_size != vocab_size:
        raise UserError(
            f"judge {workdir} has vocabulary {cfg.vocab_size}, the policies {vocab_size}"
        )
    bottleneck = identity.get("bottleneck")  # RLP-UML's heads, kept in the checkpoint
    if method == "preference_model":
        model = PreferenceModel(
            cfg, sep_id=identity["sep_id"], bottleneck=bottleneck, rngs=nnx.Rngs(0)
        )
    else:
        model = RewardModel(cfg, bottleneck=bottleneck, rngs=nnx.Rngs(0))
    graphdef, like = nnx.split(model)
    return ModelJudge(graphdef, load_params(workdir, like))
