"""What a method of the online family is, the context its step runs in, and the registry.

A method says how its pair is sampled, which extra log-probs it needs, its loss, what it keeps
between steps, and its hyperparameters as a frozen, hashable dataclass whose defaults are the
config's (``nlhf_jax.train.defaults``). ``nlhf_jax.train.step.online_parts`` composes one
generic step from these; each method is a small module (``nash_md.py``, ``nash_ema.py``, ...)
that ``register``s itself. Adding a method is that module and its config file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from nlhf_jax.errors import UserError
from nlhf_jax.judges import is_model
from nlhf_jax.logprobs import score_tokens
from nlhf_jax.sampling import MixtureSampler, PolicySampler, SampleOutput

if TYPE_CHECKING:
    from nlhf_jax.train.step import TrainState

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Context:
    """What every method may use inside the jitted step.

    The policy's parameters (``state.params``, every ``aux`` copy, ``reference``) are what a
    run trains: the whole model's state, or with LoRA only the adapters, the frozen ``base``
    holding the rest (``whole`` joins them; the reference is then the base with zero adapters).
    The samplers and ``score`` take such parameters.

    Attributes:
      hp: the method's hyperparameters (its frozen ``Method.params`` dataclass).
      graphdef: the policy's graph definition (shared by every parameter copy).
      reference: the reference policy mu's parameters (the SFT policy; never trained).
      policy_sampler: a ``PolicySampler`` of whole states.
      mixture_sampler: a ``MixtureSampler`` of whole states.
      judge: the run's judge (``nlhf_jax.judges``): jittable, or a host judge, around which
        the step is split (``nlhf_jax.train.split``).
      base: LoRA's frozen base (every parameter but the adapters), or None.
    """

    hp: Any
    graphdef: nnx.GraphDef
    reference: nnx.State
    policy_sampler: PolicySampler
    mixture_sampler: MixtureSampler
    judge: Any = None
    base: nnx.State | None = None

    def whole(self, params: nnx.State) -> nnx.State:
        """The model's whole state of trained parameters (the base with LoRA's adapters)."""
        return params if self.base is None else nnx.merge_state(self.base, params)

    def sample_pi(self, params, prompt: Array, mask: Array, key: Array) -> SampleOutput:
        """Responses of the policy ``params`` to left-padded prompts."""
        return self.policy_sampler(self.whole(params), prompt, mask, key)

    def sample_mix(self, params, ref_params, beta, prompt, mask, key) -> SampleOutput:
        """Responses of the token-level geometric mixture ``softmax((1 - beta) l_pi + beta
        l_mu)`` of ``params`` and ``ref_params``."""
        return self.mixture_sampler(
            self.whole(params), self.whole(ref_params), beta, prompt, mask, key
        )

    def sample_two(self, params, ref_params, beta_a, beta_b, prompt, mask, key):
        """Two independent responses to each prompt, ``a`` from the mixture of weight
        ``beta_a`` on mu and ``b`` from ``beta_b`` (0: the policy itself), decoded together:
        one loop over twice the rows, so each model's weights are read once per token instead
        of once per sampler. ``ref_params=None`` (both betas 0): the policy alone."""
        rows = prompt.shape[0]
        twice = lambda x: jnp.concatenate([x, x], axis=0)
        if ref_params is None:
            both = self.sample_pi(params, twice(prompt), twice(mask), key)
        else:
            beta = jnp.concatenate(
                [jnp.full((rows,), beta_a, jnp.float32), jnp.full((rows,), beta_b, jnp.float32)]
            )
            both = self.sample_mix(params, ref_params, beta, twice(prompt), twice(mask), key)
        return (
            jax.tree.map(lambda x: x[:rows], both),
            jax.tree.map(lambda x: x[rows:], both),
        )

    def score(self, params: nnx.State, prompt: Array, mask: Array, y: SampleOutput) -> Array:
        """Teacher-forced per-token log-probs ``[b, n]`` of sampled responses under ``params``."""
        return score_tokens(self.graphdef, self.whole(params), prompt, mask, y.tokens, y.mask)

    def frozen_models(self) -> dict:
        """The models the step reads and never trains, as traced arguments (sharded like the
        policy): the reference, LoRA's base and a model judge (the synthetic oracle is code)."""
        frozen = {"reference": self.reference}
        if self.base is not None:
            frozen["base"] = self.base
        if is_model(self.judge):
            frozen["judge"] = self.judge
        return frozen

    def bind(self, frozen: dict) -> Context:
        """This context inside the step, reading the frozen models from ``frozen``."""
        return dataclasses.replace(
            self,
            reference=frozen["reference"],
            judge=frozen.get("judge", self.judge),
            base=frozen.get("base", self.base),
        )


# pair(ctx, state, prompt, prompt_mask, key_a, key_b) -> (a, b): the two responses to judge.
PairFn = Callable[[Context, "TrainState", Array, Array, Array, Array], tuple[Any, Any]]
# extra(ctx, state, prompt, prompt_mask, a, b) -> (batch fields, metrics): outside the gradient.
ExtraFn = Callable[[Context, "TrainState", Array, Array, Any, Any], tuple[dict, dict]]
# loss(hp, batch, logp_a, logp_b) -> scalar; logp_b is None unless ``scores_b``.
LossFn = Callable[[Any, dict, Array, Array | None], Array]
# after(hp, old_state, new_state) -> the new ``aux`` dict.
AfterFn = Callable[[Any, "TrainState", "TrainState"], dict]
# update_base(hp, state) -> the parameters this step's update is added to.
UpdateBaseFn = Callable[[Any, "TrainState"], Any]
# optimizer(hp, schedule) -> the update rule in AdamW's place (clipping stays before it).
OptimizerFn = Callable[[Any, Callable[[Array], Array]], Any]
# choose(hp, wins [b, K, K]) -> (index of a [b], index of b [b], batch fields): the judged pair
# of K samples, ``wins[r, i, j]`` = P(y_i > y_j) for prompt r (1/2 on the diagonal).
ChooseFn = Callable[[Any, Array], tuple[Array, Array, dict]]


@dataclasses.dataclass(frozen=True)
class Method:
    """One method of the online family.

    Attributes:
      name: the ``config.method`` that selects it.
      params: its hyperparameters: a frozen dataclass type whose fields (with defaults) are
        config keys of its runs (``config.tau``, ``config.beta``, ...).
      pair: who the two judged responses come from.
      loss: its loss, from ``nlhf_jax.losses`` (the batch holds ``response_a/_b`` and masks,
        ``ref_logp_a`` (and ``ref_logp_b`` with ``scores_b``), ``preference`` = P(a > b), and
        whatever ``extra`` added).
      scores_b: the loss needs the policy's log-probs of ``b`` too (the pairwise losses).
      extra: extra scores of the pair under other parameters (anchor, previous iterate, a
        reward), computed outside the gradient.
      aux: names of the parameter copies kept in ``state.aux``, each starting as the reference;
        or a function of the hyperparameters giving them, for state sized by a hyperparameter
        (MNPO's population of past iterates, ``population`` copies).
      after: how ``aux`` changes after each update (EMA, re-anchoring, a new round, a moved
        reference: COMAL's and MPO's).
      needs_reward: the judge must give a scalar reward too (RLHF).
      update_base: the parameters a step's update is added to, when not those its gradient was
        taken at (EGPO: the full step applies the gradient taken at the half step to the
        anchor); None: the live parameters.
      optimizer: the method's own update rule, given the run's learning-rate schedule
        (``nlhf_jax.train.initial.optimizer``), in place of AdamW; gradient clipping at
        ``optimizer.max_grad_norm`` still comes first (ONPO: optax's optimistic Adam). None:
        AdamW.
      samples: K, the responses drawn per prompt, as a function of the hyperparameters (SPPO's
        win-rate estimates from K samples); None: 2, the pair. With K > 2, ``pair`` returns
        the K responses of each prompt stacked (a ``SampleOutput`` of ``[b, K, n]``);
        the judge is asked about every pair i < j of them in one call
        (``nlhf_jax.train.questions.judge_questions``), on the device or, split, on the host, which
        so answers exactly what the step uses; and
        ``choose`` picks the judged pair a, b from the matrix of answers, adding its fields
        (win-rate estimates) to the batch. ``preference`` is then the judge's P(a > b).
      choose: see ``samples``.
    """

    name: str
    params: type
    pair: PairFn
    loss: LossFn
    scores_b: bool = False
    extra: ExtraFn | None = None
    aux: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    after: AfterFn | None = None
    needs_reward: bool = False
    update_base: UpdateBaseFn | None = None
    optimizer: OptimizerFn | None = None
    samples: Callable[[Any], int] | None = None
    choose: ChooseFn | None = None

    def num_samples(self, hp) -> int:
        """K, the responses a step draws per prompt (2: the judged pair itself)."""
        return 2 if self.samples is None else int(self.samples(hp))

    def aux_names(self, hp) -> tuple[str, ...]:
        """The names of the copies in ``state.aux`` of a run with hyperparameters ``hp``."""
        return tuple(self.aux(hp)) if callable(self.aux) else self.aux

    def hyperparameters(self, config) -> Any:
        """The frozen hyperparameters of a run's config (its keys named by ``params``' fields)."""
        return self.params(**{f.name: config[f.name] for f in dataclasses.fields(self.params)})


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` to the registry ``python -m nlhf_jax.train`` and the configs read."""
    if not (dataclasses.is_dataclass(method.params) and method.params.__dataclass_params__.frozen):
        raise TypeError(f"{method.name}: params must be a frozen dataclass type")
    if method.samples is not None and (method.choose is None or method.needs_reward):
        # The host split answers a reward for the pair's a only (nlhf_jax.train.split).
        raise TypeError(f"{method.name}: K samples need choose, and no reward")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    if name not in METHODS:
        raise UserError(f"unknown online method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def where_tree(pred: Array, a: Any, b: Any) -> Any:
    """``a`` where the scalar ``pred`` holds, else ``b``, leaf by leaf (inside jit)."""
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)
