"""What the judge is asked about a step's samples, and where its answers go: the pair's
P(a > b), or with K samples a prompt (``nlhf_jax.train.online.Method.samples``) every pair i < j
of them. The fused step (``nlhf_jax.train.step.online_parts``) asks on the device and the split
step (``nlhf_jax.train.split``) sends the same questions to a host judge, so both are asked
exactly this.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp


def _pairs(k: int) -> tuple[jax.Array, jax.Array]:
    """The indices (i, j) of every pair i < j of K responses, as two arrays."""
    first, second = zip(*itertools.combinations(range(k), 2), strict=True)
    return jnp.asarray(first), jnp.asarray(second)


def judge_questions(prompt: jax.Array, mask: jax.Array, sampled, k: int) -> tuple:
    """The judge's arguments ``(prompt, its mask, y, its mask, y', its mask)`` for what a step
    sampled: the pair ``(a, b)`` when ``k`` is 2; else K responses per prompt (``sampled``:
    leaves ``[b, K, ...]``), every pair i < j of them as one batch of ``b * K (K - 1) / 2`` rows
    (prompt-major)."""
    if k == 2:
        a, b = sampled
        return prompt, mask, a.tokens, a.mask, b.tokens, b.mask
    first, second = _pairs(k)
    rows = lambda x: x.reshape(-1, *x.shape[2:])
    again = lambda x: jnp.repeat(x, len(first), axis=0)
    return (
        again(prompt), again(mask),
        rows(sampled.tokens[:, first]), rows(sampled.mask[:, first]),
        rows(sampled.tokens[:, second]), rows(sampled.mask[:, second]),
    )  # fmt: skip


def wins_matrix(answers: jax.Array, k: int) -> jax.Array:
    """``[b, K, K]``: P(y_i > y_j) from the answers to ``judge_questions``' K-sample questions,
    P(y_j > y_i) = 1 - P(y_i > y_j), 1/2 on the diagonal."""
    first, second = _pairs(k)
    p = answers.reshape(-1, len(first))  # [b, pairs]
    wins = jnp.full((p.shape[0], k, k), 0.5, p.dtype)
    return wins.at[:, first, second].set(p).at[:, second, first].set(1.0 - p)


def take_rows(ys: Any, index: jax.Array) -> Any:
    """Response ``index[r]`` of K for each prompt r, from leaves of ``[b, K, ...]``."""
    rows = jnp.arange(index.shape[0])
    return jax.tree.map(lambda x: x[rows, index], ys)
