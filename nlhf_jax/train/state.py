"""The train state pytree and the generic jitted step of every gradient-based method."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

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


def make_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    prepare: Prepare | None = None,
    after: After | None = None,
    shardings: tuple[Any, Any, Any] | None = None,
) -> Callable[[TrainState, dict, Any], tuple[TrainState, dict]]:
    """A pure, jitted ``step(state, batch, frozen=None) -> (state, metrics)``, state donated.

    ``prepare`` runs first, outside the gradient: for the online methods it samples responses
    and judges them (sampling is a ``while_loop``, which reverse-mode AD cannot cross, and no
    gradient should flow through the samples anyway). ``after`` updates ``state.aux`` from the
    new parameters. Metrics get ``loss`` and ``grad_norm``; the method's own come from
    ``prepare`` and ``loss_fn``. chex checks the loss is a scalar.

    ``shardings = (state, batch, frozen)`` shardings compile the step with explicit in/out
    shardings (``nlhf_jax.train.placement`` builds them); the metrics come back replicated.
    """

    def step(state: TrainState, batch: dict, frozen: Any = None) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        prep_metrics = {}
        if prepare is not None:
            k_prep, rng = jax.random.split(rng)
            batch, prep_metrics = prepare(state, batch, k_prep, frozen)
        grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
        (loss, metrics), grads = grad_fn(graphdef, state.params, batch, rng)
        chex.assert_rank(loss, 0)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**prep_metrics, **metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if after is not None:
            new = after(state, new)
        return new, metrics

    if shardings is None:
        return jax.jit(step, donate_argnums=0)
    state_sh, batch_sh, frozen_sh = shardings
    replicated = NamedSharding(batch_sh.mesh, PartitionSpec())
    return jax.jit(
        step,
        in_shardings=(state_sh, batch_sh, frozen_sh),
        out_shardings=(state_sh, replicated),
        donate_argnums=0,
    )
