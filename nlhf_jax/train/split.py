"""The online step split around a host judge: rollout (jitted) -> judge (host) -> update (jitted).

A host judge (``judge.jittable`` False: Python on decoded texts, or a model on its own
tokenizer's ids) cannot be traced into the fused step (``nlhf_jax.train.step.online_parts``),
so its step runs in three parts:

1. rollout, jitted: the method samples its pair with the key the fused step's ``prepare``
   receives (``step_key``, split the same way), so it draws the pair the fused step would;
2. judge, on the host: the prompts and the pair's tokens and masks come back to the host, and
   the judge answers P(a > b), checked (a NumPy array of shape [b] in [0, 1], else one line
   naming the judge); a method that maximizes a reward (RLHF) also gets r(x, a). A method
   drawing K > 2 samples a prompt (``Method.samples``: SPPO's) sends every pair of them
   instead (``judge_questions``, b K (K - 1) / 2 rows), the questions its fused step asks;
3. update, jitted, the state donated: the fused step's own ``prepare`` on the pair already
   sampled and the judge's answers (reference scores, the method's extra scores), then the
   loss, optax and ``after``, as fused.

A judge with its own model (``host_model``: a checkpoint judge on its own tokenizer) has it
counted by the memory check and placed on the run's mesh, sharded by its logical axes. What
the split costs per step beside the judge itself: the pair's tokens to the host and b floats
back, and two dispatches instead of one (``benchmarks/host_judge.py`` times it against the
fused step; the step's metrics carry the host's seconds as ``time/judge_s``).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import ml_collections
import numpy as np

from nlhf_jax import parallel
from nlhf_jax.judges.host import check_probabilities
from nlhf_jax.train.questions import judge_questions
from nlhf_jax.train.step import (
    JUDGED_PAIR,
    PROMPTS,
    Compiled,
    check_batch,
    compile_step,
    method_optimizer,
    online_parts,
    step_key,
)


@dataclasses.dataclass(frozen=True)
class _Answered:
    """The host judge inside the update: its answers, already computed.

    Attributes:
      preference: P(a > b) [b], or with K samples the answers to ``judge_questions``.
      reward_a: r(x, a) [b] for a reward-maximizing method, else None.
      tokens_a: the pair's a, the only response whose reward the host computed.
    """

    preference: jax.Array
    reward_a: jax.Array | None
    tokens_a: jax.Array

    jittable = True

    def __call__(self, *pair_arrays) -> jax.Array:
        return self.preference

    def reward(self, prompt, prompt_mask, response, response_mask) -> jax.Array:
        if self.reward_a is None or response is not self.tokens_a:
            raise TypeError("a host judge's update has P(a > b) and the reward of a, no other")
        return self.reward_a


def _name(judge) -> str:
    return f"judge {getattr(judge, 'spec', type(judge).__name__)}"


def compile_split(config: ml_collections.ConfigDict, method, ctx, params=None) -> Compiled:
    """The online ``method``'s step around the host judge ``ctx.judge`` (module docstring), on
    ``config.mesh``, training ``params`` (default: from the reference; LoRA: the adapters)."""
    judge = ctx.judge
    host_model = getattr(judge, "host_model", None)

    k = method.num_samples(ctx.hp)

    def prepare(state, batch, rng, frozen):
        # The fused prepare itself, its samples and its judge replaced by what was computed:
        # every score after sampling is the same code as in the fused step.
        drawn = batch["sampled"]
        tokens_a = drawn[0].tokens if k == 2 else None
        answered = _Answered(batch["preference"], batch.get("reward_a"), tokens_a)
        sampled = dataclasses.replace(method, pair=lambda *_: drawn)
        fused, *_ = online_parts(sampled, dataclasses.replace(ctx, judge=answered))
        return fused(state, {k: batch[k] for k in PROMPTS}, rng, frozen)

    _, loss_fn, after, update_base = online_parts(method, ctx)
    assemble = None if ctx.base is None else (lambda p, frozen: ctx.bind(frozen).whole(p))
    update = compile_step(
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
        resident=None if host_model is None else {"host judge": host_model.state},
    )
    where = parallel.placement(config)
    if host_model is not None:  # after the memory check, which counted it
        judge.place(where)

    def rollout(state, batch, frozen):
        """What the method samples, and the judge's questions about it (``judge_questions``,
        as the fused step asks them)."""
        check_batch(batch, PROMPTS)
        k_prep, _ = jax.random.split(step_key(state))  # make_step's split for prepare
        k_a, k_b = jax.random.split(k_prep)  # and online_parts' for the pair
        prompt, mask = batch["prompt"], batch["prompt_mask"]
        sampled = method.pair(ctx.bind(frozen), state, prompt, mask, k_a, k_b)
        return sampled, judge_questions(prompt, mask, sampled, k)

    rollout = jax.jit(rollout, out_shardings=where.batch)

    def step(state, batch):
        batch = parallel.shard_batch(batch, where.batch)
        sampled, queries = rollout(state, batch, update.frozen)
        queries = parallel.to_host(queries)
        start = time.perf_counter()
        pref = check_probabilities(_name(judge), judge(*queries), len(queries[0]))
        answers = {"preference": pref.astype(np.float32)}
        if method.needs_reward:
            answers["reward_a"] = np.asarray(judge.reward(*queries[:4]), np.float32)
        seconds = time.perf_counter() - start
        answers = parallel.put(answers, {name: where.batch for name in answers})
        state, metrics = update.step(state, {**batch, "sampled": sampled, **answers})
        return state, {**metrics, "time/judge_s": seconds}

    return Compiled(init_state=update.init_state, step=step, frozen=update.frozen)
