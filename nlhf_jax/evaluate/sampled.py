"""Sampled win rates with standard errors: what is measurable when responses cannot be enumerated.

Each policy draws ``N`` responses per prompt (``PolicySampler``, temperature 1, no truncation);
the k-th response of policy i is judged against the k-th of policy j, so the N pairs of a prompt
are independent draws of ``P(y_i > y_j | x)``. The estimate of ``M[i, j]`` is the mean over
prompts of the per-prompt mean, and its standard error is the stratified one,
``sqrt(sum_x s_x^2 / n_x) / X`` (prompts are a fixed set, so they add no variance). Pairs where
either response is malformed are dropped, which estimates the same quantity as the exact matrix
(each policy renormalized over well-formed responses). ``M[j, i] = 1 - M[i, j]`` from the same
pairs (the judges are antisymmetric) and the diagonal is 1/2 exactly (two independent draws
from one policy tie in expectation), with standard error 0.
"""

from __future__ import annotations

import jax
import numpy as np

from nlhf_jax.evaluate.exact import judge_function
from nlhf_jax.evaluate.runs import Policy
from nlhf_jax.judges import Judge
from nlhf_jax.sampling import PolicySampler, SamplingConfig
from nlhf_jax.tasks.synthetic import EOS, PAD, SyntheticTask


def sample_responses(
    policy: Policy, task: SyntheticTask, num: int, key: jax.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num`` responses to every prompt: tokens and masks ``[X, N, n]`` and ``valid [X, N]``
    (the response is one of the task's well-formed responses)."""
    prompts = np.repeat(task.prompts(), num, axis=0)
    settings = SamplingConfig(max_new_tokens=task.response_len, eos_id=EOS, pad_id=PAD)
    sampler = PolicySampler(policy.graphdef, policy.config, settings)
    y = sampler(policy.params, prompts, np.ones_like(prompts, bool), key)
    tokens, mask = np.asarray(y.tokens), np.asarray(y.mask)
    full = mask.all(-1, keepdims=True)
    valid = (full & (tokens[:, None, :] == task.responses()[None]).all(-1)).any(-1)
    X = len(task.prompts())
    return tokens.reshape(X, num, -1), mask.reshape(X, num, -1), valid.reshape(X, num)


def sampled_win_rates(
    judge: Judge,
    task: SyntheticTask,
    samples: list[tuple[np.ndarray, ...]],
    names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The estimate of the win-rate matrix ``[m, m]`` and its standard errors ``[m, m]``.

    ``samples[i]`` is ``sample_responses`` of policy i. Raises if a prompt has fewer than two
    pairs of well-formed responses (no variance estimate): draw more.
    """
    call = judge_function(judge)
    m = len(samples)
    names = names or [f"policy {i}" for i in range(m)]
    X, N, _ = samples[0][0].shape
    prompts = np.repeat(task.prompts(), N, axis=0)
    mean, stderr = np.full((m, m), 0.5), np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            (a, a_mask, a_ok), (b, b_mask, b_ok) = samples[i], samples[j]
            p = call(
                prompts,
                np.ones_like(prompts, bool),
                a.reshape(X * N, -1),
                a_mask.reshape(X * N, -1),
                b.reshape(X * N, -1),
                b_mask.reshape(X * N, -1),
            )
            p = p.reshape(X, N)
            keep = a_ok & b_ok
            n = keep.sum(-1)
            if n.min() < 2:
                raise ValueError(
                    f"{names[i]} vs {names[j]}: a prompt has {n.min()} of {N} sampled pairs with "
                    "both responses well-formed; sample more responses per prompt"
                )
            mean_x = np.where(keep, p, 0.0).sum(-1) / n
            var_x = np.where(keep, (p - mean_x[:, None]) ** 2, 0.0).sum(-1) / (n - 1)
            mean[i, j], stderr[i, j] = mean_x.mean(), np.sqrt(np.sum(var_x / n)) / X
            mean[j, i], stderr[j, i] = 1.0 - mean[i, j], stderr[i, j]
    return mean, stderr
