"""The train step, whole: its state, the generic pure step, its shardings on the mesh, and the
online family's parts. A reader follows one Nash-MD step from here to the update.

Every trainer (SFT, the preference and reward models, every online method) compiles one step
with ``compile_step``:

- ``make_step`` is the pure step: ``prepare`` (outside the gradient: for the online methods,
  sample a pair, judge it, score it under the reference) -> the loss and its gradient ->
  optax -> ``after`` (the method's bookkeeping: EMA, re-anchoring). chex asserts the batch it
  receives, the prepared batch, the scalar metrics and a new state of the old one's shapes and
  dtypes.
- ``compile_step`` places it on ``config.mesh``: parameters, optimizer moments and ``aux`` copies
  sharded by their logical axes and built by a jitted init straight into those shards; the
  frozen models the step reads (the reference policy, a model judge) traced arguments with
  their own shardings, not constants; every batch split over the batch axes; before anything is
  placed, the state and the frozen models must fit the devices (``nlhf_jax.train.memory``).
- ``online_parts`` is what the online family adds (``nlhf_jax.train.online``): a method says
  how its pair is sampled, its extra log-probs, its loss and ``after``; this composes them.
  With a host judge the online step is split around it (``nlhf_jax.train.split``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from nlhf_jax import losses, parallel
from nlhf_jax.errors import UserError
from nlhf_jax.logprobs import score_tokens
from nlhf_jax.train import initial, memory

# What each trainer's batch holds, and its chex check (re-exported: the trainers import them here).
from nlhf_jax.train.batches import (  # noqa: F401
    DEMONSTRATIONS,
    JUDGED_PAIR,
    PAIRS,
    PROMPTS,
    check_batch,
)
from nlhf_jax.train.questions import judge_questions, take_rows, wins_matrix

# loss_fn(graphdef, params, batch, rng) -> (scalar loss, metrics dict)
LossFn = Callable[[nnx.GraphDef, nnx.State, dict, jax.Array], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; checkpointed whole, so a resumed run is the same run.

    Attributes:
      step: int32 scalar, steps taken.
      params: the model's ``nnx.State``.
      opt_state: the optax state.
      rng: uint32 key data (checkpoint-friendly); each step folds in its step number.
      aux: a method's other parameter copies (a dict of ``nnx.State``, or None): Nash-EMA-PG's
        EMA opponent, Nash-MP's anchor and half-step policy, INPO's previous iterate.
    """

    step: jax.Array
    params: nnx.State
    opt_state: Any
    rng: jax.Array
    aux: Any = None


def step_key(state: TrainState) -> jax.Array:
    """One step's key: the run's key folded with the step number (what a resumed run redraws,
    and what the split online step's rollout draws, ``nlhf_jax.train.split``)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def init_train_state(params: nnx.State, tx: optax.GradientTransformation, seed: int, aux=None):
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.key_data(jax.random.key(seed)),
        aux=aux,
    )


# prepare(state, batch, rng, frozen) -> (batch, metrics): work outside the gradient (sampling,
# judging); `frozen` holds the models it reads and never trains (reference, judge).
Prepare = Callable[[TrainState, dict, jax.Array, Any], tuple[dict, dict]]
# after(old_state, new_state) -> new_state: bookkeeping after the update (EMA, re-anchoring).
After = Callable[[TrainState, TrainState], TrainState]


def split_micro_batches(batch: Any, micro_batches: int) -> Any:
    """``[B, ...]`` leaves as ``[M, B / M, ...]``: micro-batch m holds rows m, m + M, m + 2M, ...
    (strided, so a batch split over devices stays split the same way inside each one)."""

    def one(path, x):
        if x.shape[0] % micro_batches:
            raise ValueError(
                f"batch{jax.tree_util.keystr(path)} has {x.shape[0]} rows, not divisible into "
                f"{micro_batches} micro-batches"
            )
        return x.reshape(x.shape[0] // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree_util.tree_map_with_path(one, batch)


def accumulate(grad_fn, params, batch, rng, micro_batches: int, weight_fn=None):
    """``grad_fn(params, batch, rng) -> ((loss, metrics), grads)`` over the whole batch, computed
    one micro-batch at a time in a ``lax.scan``: the weighted mean of the micro-batches' values,
    with weights ``weight_fn(micro_batch)`` (default: equal, which is the full-batch mean of any
    loss that is a mean over rows; SFT weighs by response tokens, so its token mean is exact).
    Gradients are accumulated in float32."""
    if micro_batches == 1:
        return grad_fn(params, batch, rng)
    split = split_micro_batches(batch, micro_batches)
    if weight_fn is None:
        w_m = jnp.ones((micro_batches,), jnp.float32)
    else:
        w_m = jax.vmap(weight_fn)(split).astype(jnp.float32)
    w_m = w_m / jnp.sum(w_m)
    keys = jax.random.split(rng, micro_batches)
    first = jax.tree.map(lambda x: x[0], split)
    shapes = jax.eval_shape(grad_fn, params, first, keys[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)

    def body(acc, xs):
        micro, w, key = xs
        out = grad_fn(params, micro, key)
        return jax.tree.map(lambda a, x: a + w * x.astype(jnp.float32), acc, out), None

    total, _ = jax.lax.scan(body, zeros, (split, w_m, keys))
    return jax.tree.map(lambda t, s: t.astype(s.dtype), total, shapes)


def make_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    prepare: Prepare | None = None,
    after: After | None = None,
    batch_spec: Mapping[str, tuple[Any, int]] | None = None,
    prepared_spec: Mapping[str, tuple[Any, int]] | None = None,
    micro_batches: int = 1,
    weight_fn: Callable[[dict], jax.Array] | None = None,
    assemble: Callable[[Any, Any], nnx.State] | None = None,
    update_base: Callable[[TrainState], nnx.State] | None = None,
) -> Callable[[TrainState, dict, Any], tuple[TrainState, dict]]:
    """The pure ``step(state, batch, frozen=None) -> (state, metrics)`` (not yet jitted).

    ``prepare`` runs first, outside the gradient: for the online methods it samples responses
    and judges them (sampling is a ``while_loop``, which reverse-mode AD cannot cross, and no
    gradient should flow through the samples anyway). The gradient of the whole (prepared)
    batch is then taken ``micro_batches`` micro-batches at a time (``accumulate``): one update
    of the batch that was sampled, with the activations of a micro-batch. ``after`` updates
    ``state.aux`` from the new parameters. Metrics get ``loss`` and ``grad_norm``; the method's
    own come from ``prepare`` and ``loss_fn``. With ``assemble(params, frozen)`` the state's
    parameters are only part of the model (LoRA's adapters) and ``loss_fn`` receives the whole
    model's state (the frozen base with them); the gradient is the part's. The update is added
    to ``update_base(state)`` when given (an extragradient's anchor: EGPO's full step), else to
    the parameters the gradient was taken at.
    chex checks the batch against ``batch_spec`` (and
    what ``prepare`` returns against ``prepared_spec``), that every metric is a scalar and that
    the new state has the old one's structure, shapes and dtypes.
    """

    def step(state: TrainState, batch: dict, frozen: Any = None) -> tuple[TrainState, dict]:
        if batch_spec is not None:
            check_batch(batch, batch_spec)
        rng = step_key(state)
        prep_metrics = {}
        if prepare is not None:
            k_prep, rng = jax.random.split(rng)
            batch, prep_metrics = prepare(state, batch, k_prep, frozen)
            if prepared_spec is not None:
                check_batch(batch, prepared_spec)
        whole = (lambda p: p) if assemble is None else (lambda p: assemble(p, frozen))
        grad_fn = jax.value_and_grad(
            lambda p, b, r: loss_fn(graphdef, whole(p), b, r), argnums=0, has_aux=True
        )
        (loss, metrics), grads = accumulate(
            grad_fn, state.params, batch, rng, micro_batches, weight_fn
        )
        chex.assert_rank(loss, 0)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        base = state.params if update_base is None else update_base(state)
        params = optax.apply_updates(base, updates)
        metrics = {**prep_metrics, **metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        chex.assert_rank(list(metrics.values()), 0)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if after is not None:
            new = after(state, new)
        chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
        return new, metrics

    return step


# --- on the mesh ---------------------------------------------------------------------------


@dataclasses.dataclass
class Compiled:
    """A trainer's state builder and step on its mesh.

    Attributes:
      init_state: ``() -> TrainState`` built into its shards; once per trainer (the starting
        weights are released).
      step: ``(state, host_batch) -> (state, metrics)``; the batch is split over the mesh.
      frozen: the placed frozen models (what the step reads and never changes).
      lower: ``(state, host_batch) -> jax.stages.Lowered`` of the step (its cost analysis,
        its HLO), without running it.
    """

    init_state: Callable[[], Any]
    step: Callable[[Any, dict], tuple[Any, dict]]
    frozen: Any
    lower: Callable[[Any, dict], Any] = None


def micro_batches(config: ml_collections.ConfigDict) -> int:
    """Micro-batches per step: ``config.batch_size / config.micro_batch_size`` (0: one)."""
    size = config.get("micro_batch_size", 0)
    if not size:
        return 1
    if size < 0 or config.batch_size % size:
        raise UserError(
            f"config.micro_batch_size={size} must be positive and divide "
            f"config.batch_size={config.batch_size} (0: the whole batch at once)"
        )
    return config.batch_size // size


def compile_step(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    params: nnx.State,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    *,
    prepare: Prepare | None = None,
    after: After | None = None,
    aux: tuple[str, ...] = (),
    frozen: Any = None,
    batch_spec: Mapping[str, tuple[Any, int]] | None = None,
    prepared_spec: Mapping[str, tuple[Any, int]] | None = None,
    weight_fn: Callable[[dict], jax.Array] | None = None,
    assemble: Callable[[Any, Any], nnx.State] | None = None,
    resident: Mapping[str, Any] | None = None,
    update_base: Callable[[TrainState], nnx.State] | None = None,
) -> Compiled:
    """The sharded step and state of a trainer (see the module docstring).

    Args:
      config: the run's config (``mesh``, ``seed``, ``batch_size``, ``micro_batch_size``).
      graphdef, params: the model to train, ``params`` its starting values on the host.
      tx, loss_fn, prepare, after, batch_spec, prepared_spec, weight_fn, assemble: as in
        ``make_step``; ``prepare`` receives the placed ``frozen`` models as its fourth argument.
      aux: names of parameter copies kept in ``state.aux``, each starting as ``params``.
      frozen: a pytree of models the step reads but never trains.
      resident: more models on the devices, by name (a host judge's): counted, not placed.
    """
    where = parallel.placement(config)
    params_sh = where.shardings(params)

    def init(params):
        copies = {k: jax.tree.map(jnp.copy, params) for k in aux} or None
        return init_train_state(params, tx, config.seed, aux=copies)

    abstract = jax.eval_shape(init, params)
    state_sh = where.shardings(abstract)
    frozen_sh = where.shardings(frozen)
    parts = {"train state": (abstract, state_sh)}
    if frozen is not None:
        parts["frozen models"] = (frozen, frozen_sh)
    parts.update({name: (tree, where.shardings(tree)) for name, tree in (resident or {}).items()})
    device = str(where.mesh.devices.flat[0].device_kind)
    memory.check_fits(parts, memory.device_memory(config, where.mesh), device)

    init_jit = jax.jit(init, in_shardings=(params_sh,), out_shardings=state_sh)
    placed_frozen = parallel.put(frozen, frozen_sh)
    step_fn = make_step(
        graphdef, tx, loss_fn, prepare, after, batch_spec, prepared_spec,
        micro_batches(config), weight_fn, assemble, update_base,
    )  # fmt: skip
    replicated = NamedSharding(where.mesh, PartitionSpec())
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_sh, where.batch, frozen_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )

    def step(state, batch):
        return jitted(state, parallel.shard_batch(batch, where.batch), placed_frozen)

    # The starting weights are let go once the state holds them: a second copy on the host is
    # a model's size of memory for the whole run (0.5 GiB of SmolLM2-135M's SFT step).
    start = [params]

    def init_state():
        if not start:
            raise RuntimeError(
                "init_state: a trainer starts once (its starting weights were released by the "
                "first call); build another trainer, or use jax.eval_shape for a template"
            )
        return init_jit(parallel.put(start.pop(), params_sh))

    return Compiled(
        init_state=init_state,
        step=step,
        frozen=placed_frozen,
        lower=lambda s, b: jitted.lower(s, parallel.shard_batch(b, where.batch), placed_frozen),
    )


# --- the online family ---------------------------------------------------------------------


def _judge_metrics(pref_b):
    return {
        "judge/min": jnp.min(pref_b),
        "judge/max": jnp.max(pref_b),
        "judge/nan_count": jnp.sum(jnp.isnan(pref_b)),
    }


def online_parts(method, ctx) -> tuple[Prepare, LossFn, After | None, Callable | None]:
    """The step's parts of an online ``method`` (``nlhf_jax.train.online.Method``) in the
    context ``ctx`` (``online.Context``: its hyperparameters, samplers, reference and judge):

    ``prepare`` samples the pair (``method.pair``), asks the judge P(a > b), scores the pair
    under the reference and adds the method's extra scores (``method.extra``), all outside the
    gradient; the loss is ``method.loss`` on the policy's teacher-forced log-probs of the pair;
    ``after`` is ``method.after``; ``update_base`` is ``method.update_base`` (the parameters the
    update lands on, when not the live ones). Inside the step the context reads the reference
    and a model judge from the traced ``frozen`` models (``frozen_models``).
    """

    k = method.num_samples(ctx.hp)

    def prepare(state, batch, rng, frozen):
        c = ctx.bind(frozen)
        k_a, k_b = jax.random.split(rng)
        prompt, mask = batch["prompt"], batch["prompt_mask"]
        sampled = method.pair(c, state, prompt, mask, k_a, k_b)
        answers = c.judge(*judge_questions(prompt, mask, sampled, k))
        chosen = {}
        if k == 2:
            (a, b), pref_b = sampled, answers
        else:  # K samples: every pair judged at once, the method picks the pair (Method.samples)
            wins = wins_matrix(answers, k)
            i_a, i_b, chosen = method.choose(ctx.hp, wins)
            a, b = take_rows(sampled, i_a), take_rows(sampled, i_b)
            pref_b = wins[jnp.arange(wins.shape[0]), i_a, i_b]
        out = {
            **batch,
            **chosen,
            "response_a": a.tokens,
            "response_a_mask": a.mask,
            "response_b": b.tokens,
            "response_b_mask": b.mask,
            "ref_logp_a": c.score(c.reference, prompt, mask, a),
            "preference": pref_b,
        }
        if method.scores_b:
            out["ref_logp_b"] = c.score(c.reference, prompt, mask, b)
        # The judge's health over every answer it gave (K samples: all pairs, not the chosen).
        metrics = {"rewards/probabilities": jnp.mean(pref_b), **_judge_metrics(answers)}
        if method.extra is not None:
            fields, extra_metrics = method.extra(c, state, prompt, mask, a, b)
            out.update(fields)
            metrics.update(extra_metrics)
        return out, metrics

    def loss_fn(graphdef, params, batch, rng):
        del rng
        x, xm = batch["prompt"], batch["prompt_mask"]
        am = batch["response_a_mask"]
        lp_a = score_tokens(graphdef, params, x, xm, batch["response_a"], am)
        lp_b = None
        if method.scores_b:
            lp_b = score_tokens(
                graphdef, params, x, xm, batch["response_b"], batch["response_b_mask"]
            )
        loss = method.loss(ctx.hp, batch, lp_a, lp_b)
        return loss, {
            "objective/kl": losses.sequence_kl_estimate(lp_a, batch["ref_logp_a"], am),
            "objective/entropy": -jnp.mean(losses.sequence_logprob(lp_a, am)),
            # Tokens in y ~ pi (EOS included): a policy writing to the length limit shows here.
            "objective/response_len": jnp.mean(jnp.sum(am, axis=-1, dtype=jnp.float32)),
        }

    after = None
    if method.after is not None:
        after = lambda old, new: new.replace(aux=method.after(ctx.hp, old, new))
    update_base = None
    if method.update_base is not None:
        update_base = lambda state: method.update_base(ctx.hp, state)
    return prepare, loss_fn, after, update_base


def method_optimizer(config: ml_collections.ConfigDict, method, hp) -> optax.GradientTransformation:
    """The run's optimizer for an online ``method`` with hyperparameters ``hp``: AdamW, or the
    method's own rule (``Method.optimizer``) with the same schedule and clipping."""
    rule = None
    if method.optimizer is not None:
        rule = lambda schedule: method.optimizer(hp, schedule)
    return initial.optimizer(config, rule)


def compile_fused(config: ml_collections.ConfigDict, method, ctx, params=None) -> Compiled:
    """The online ``method``'s sharded step and state on ``config.mesh`` (``compile_step``),
    training ``params`` (default: from the reference; LoRA: the fresh adapters): sampling,
    judging, scoring and the update fused in one jitted step, for a jittable judge. A host judge
    gets ``nlhf_jax.train.split.compile_split``; ``nlhf_jax.train.online.compile_online``
    chooses."""
    prepare, loss_fn, after, update_base = online_parts(method, ctx)
    assemble = None if ctx.base is None else (lambda p, frozen: ctx.bind(frozen).whole(p))
    return compile_step(
        config,
        ctx.graphdef,
        ctx.reference if params is None else params,
        method_optimizer(config, method, ctx.hp),
        loss_fn,
        prepare=prepare,
        after=after,
        update_base=update_base,
        aux=method.aux_names(ctx.hp),
        frozen=ctx.frozen_models(),
        batch_spec=PROMPTS,
        prepared_spec=JUDGED_PAIR,
        assemble=assemble,
    )
