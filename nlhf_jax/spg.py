"""RLP's synthetic preference generation (SPG; docs/algorithms.md section 8; Lang et al., arXiv
2403.19279): pure selection of pairs from a policy's own samples.

Group the n samples of a prompt into equivalent answers; the confidence is the largest group's
share; keep the prompt if it is at least gamma; the pair is (the highest-scored member of the
largest group, a uniform draw from the other groups), labelled "chosen wins" (`spg_pairs`).
Those pairs join the human pairs D when the judge is retrained (``nlhf_jax.train.refresh``).

Equivalence is pluggable (`equivalence_keys`): "exact" (the same tokens), or "task": the
synthetic task's (quality, style) - the two properties its oracle reads, so two responses with
equal keys are indistinguishable to it. The paper decides equivalence with bidirectional
entailment under DeBERTa-large NLI, which cannot be downloaded here; a user plugs one in by
naming any ``key(prompt_ids, response_ids) -> hashable`` function as ``module:function`` (e.g.
one that decodes the ids and returns the entailment cluster a response falls in).
"""

from __future__ import annotations

import importlib
from collections.abc import Hashable, Sequence

import numpy as np


def spg_pairs(
    keys_xn: Sequence[Sequence[Hashable]],
    scores_xn: np.ndarray,
    gamma: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """SPG's selection: per prompt, its confidence and, if kept, a chosen and a rejected sample.

    Args:
      keys_xn: the equivalence key of each of the n samples of each prompt.
      scores_xn: the first judge's score of each sample (the reward; for a preference model its
        mean preference over the prompt's other samples): the chosen is the best-scored member
        of the largest group (ties: the first such sample).
      gamma: keep a prompt when the largest group's share is at least gamma.
      rng: draws the rejected sample uniformly from the samples outside the largest group.

    Returns:
      ``confidence [X]``, ``keep [X]`` (confidence >= gamma and more than one group),
      ``chosen [X]`` and ``rejected [X]`` sample indices (-1 where not kept). The largest group
      is the one with most members; a tie goes to the group whose first member comes first.
    """
    X = len(keys_xn)
    confidence = np.zeros(X)
    keep = np.zeros(X, bool)
    chosen = np.full(X, -1)
    rejected = np.full(X, -1)
    for x, keys in enumerate(keys_xn):
        n = len(keys)
        groups: dict[Hashable, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        largest = max(groups.values(), key=len)  # dicts keep insertion order: ties -> first
        confidence[x] = len(largest) / n
        if confidence[x] < gamma or len(groups) == 1:
            continue
        members = np.asarray(largest)
        others = np.asarray([i for i in range(n) if i not in set(largest)])
        keep[x] = True
        chosen[x] = members[int(np.argmax(scores_xn[x, members]))]
        rejected[x] = others[rng.integers(len(others))]
    return {"confidence": confidence, "keep": keep, "chosen": chosen, "rejected": rejected}


def mean_preference_scores(p_xnn: np.ndarray) -> np.ndarray:
    """A sample's score under a preference model: its mean P(y_i > y_j) over the prompt's other
    samples j (the diagonal, P(y > y) = 1/2, is left out)."""
    n = p_xnn.shape[-1]
    off = ~np.eye(n, dtype=bool)
    return np.sum(np.where(off, p_xnn, 0.0), axis=-1) / max(n - 1, 1)


def equivalence_keys(
    kind, prompts_xp: np.ndarray, tokens_xnt: np.ndarray, mask_xnt: np.ndarray, task=None
) -> list[list[Hashable]]:
    """The key of every sample: "exact" (its tokens), "task" (the synthetic task's
    (quality, style); every malformed response is one class, as the oracle cannot tell them
    apart), "package.module:function" or a callable ``key(prompt_ids, response_ids) ->
    hashable`` (e.g. an NLI model's entailment cluster), called once per sample."""
    X, N, T = tokens_xnt.shape
    if isinstance(kind, str) and ":" in kind:
        module, _, name = kind.partition(":")
        kind = getattr(importlib.import_module(module), name)
    if callable(kind):
        return [
            [kind(prompts_xp[x], tokens_xnt[x, i][mask_xnt[x, i]]) for i in range(N)]
            for x in range(X)
        ]
    if kind == "exact":
        return [
            [tuple(tokens_xnt[x, i][mask_xnt[x, i]].tolist()) for i in range(N)] for x in range(X)
        ]
    if kind != "task":
        raise ValueError(f"equivalence {kind!r}: 'exact', 'task' or 'module:function'")
    if task is None or not hasattr(task, "quality_and_style"):
        raise ValueError("equivalence 'task' needs the synthetic task")
    prompts = np.repeat(prompts_xp, N, axis=0)
    quality, style = task.quality_and_style(
        prompts, tokens_xnt.reshape(X * N, T), mask_xnt.reshape(X * N, T)
    )
    pairs = list(zip(np.asarray(quality).tolist(), np.asarray(style).tolist(), strict=True))
    return [pairs[x * N : (x + 1) * N] for x in range(X)]
