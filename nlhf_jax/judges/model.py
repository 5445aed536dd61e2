"""Judges that are trained models: a preference model or a Bradley-Terry reward model run.

judge = load_run("runs/pm")           # a ModelJudge; a pytree, so jit takes it as an argument
p_b = judge(prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
from flax import nnx

from nlhf_jax.checkpoint import JUDGE_METHODS, load_params, read_identity, transformer_config
from nlhf_jax.errors import UserError
from nlhf_jax.models.preference import PreferenceModel, RewardModel

Array = jax.Array


@flax.struct.dataclass
class ModelJudge:
    """A trained ``PreferenceModel`` or ``RewardModel`` as a judge.

    A preference model gives sigmoid(f(x, a, b) - f(x, b, a)); a reward model gives
    sigmoid(r(x, a) - r(x, b)) (Bradley-Terry) and its reward r(x, y). Both models expose the
    same ``logit``, so one class serves both. Jittable: its state is a pytree leaf (shard it,
    pass it to jit), its graphdef static.

    Attributes:
      graphdef: from ``nnx.split(model)`` (static).
      state: the model's parameters.
      kind: "preference_model" or "reward_model" (static).
    """

    graphdef: nnx.GraphDef = flax.struct.field(pytree_node=False)
    state: nnx.State
    kind: str = flax.struct.field(pytree_node=False, default="preference_model")

    jittable = True

    @property
    def has_reward(self) -> bool:
        return self.kind == "reward_model"

    def logit(self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask):
        """d(x, a, b) [b] float32, with P(a > b) = sigmoid(d)."""
        model: PreferenceModel | RewardModel = nnx.merge(self.graphdef, self.state)
        return model.logit(
            prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
        )

    def __call__(
        self, prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
    ) -> Array:
        """P(a > b) [b] float32; arguments as in ``Judge.__call__``."""
        return jax.nn.sigmoid(
            self.logit(
                prompt, prompt_mask, response_a, response_a_mask, response_b, response_b_mask
            )
        )

    def reward(self, prompt, prompt_mask, response, response_mask) -> Array:
        """r(x, y) [b] float32 of a reward model (only differences are meaningful)."""
        if not self.has_reward:
            raise TypeError(f"a {self.kind} judge has no scalar reward")
        model: RewardModel = nnx.merge(self.graphdef, self.state)
        return model.reward(prompt, prompt_mask, response, response_mask)


def load_run(
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
      vocab_size: the vocabulary of the policies it will judge; a judge with another
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
        make = lambda: PreferenceModel(
            cfg, sep_id=identity["sep_id"], bottleneck=bottleneck, rngs=nnx.Rngs(0)
        )
    else:
        make = lambda: RewardModel(cfg, bottleneck=bottleneck, rngs=nnx.Rngs(0))
    graphdef, like = nnx.split(nnx.eval_shape(make))  # shapes only: the weights are read
    return ModelJudge(graphdef, load_params(workdir, like), kind=method)
