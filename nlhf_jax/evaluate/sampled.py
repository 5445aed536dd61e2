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

from nlhf_jax.checkpoint import PolicyRun
from nlhf_jax.errors import UserError
from nlhf_jax.evaluate.exact import judge_function
from nlhf_jax.judges import Judge
from nlhf_jax.logprobs import score_tokens
from nlhf_jax.sampling import PolicySampler, SamplingConfig
from nlhf_jax.tasks.synthetic import EOS, PAD, SyntheticTask


def sample_policy(
    policy: PolicyRun,
    prompts_xp: np.ndarray,
    prompt_mask_xp: np.ndarray,
    num: int,
    key: jax.Array,
    settings: SamplingConfig,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num`` responses to every prompt: tokens and masks ``[X, N, n]`` and the policy's
    sequence log-probability of each ``[X, N]`` (temperature 1, the policy itself), sampled in
    batches of at most ``batch_size`` rows (one compilation: the last batch is padded)."""
    prompts = np.repeat(prompts_xp, num, axis=0)
    masks = np.repeat(prompt_mask_xp, num, axis=0)
    sampler = PolicySampler(policy.graphdef, policy.config, settings)
    rows = len(prompts)
    size = min(batch_size, rows)
    tokens, mask, logp = [], [], []
    for i, start in enumerate(range(0, rows, size)):
        take = np.arange(start, start + size) % rows  # wraps around: padding
        batch_key = key if size == rows else jax.random.fold_in(key, i)
        y = sampler(policy.params, prompts[take], masks[take], batch_key)
        keep = min(size, rows - start)
        tokens.append(np.asarray(y.tokens)[:keep])
        mask.append(np.asarray(y.mask)[:keep])
        logp.append(np.asarray((y.logprobs * y.mask).sum(-1), np.float64)[:keep])
    X = len(prompts_xp)
    tokens, mask = np.concatenate(tokens), np.concatenate(mask)
    return (
        tokens.reshape(X, num, -1),
        mask.reshape(X, num, -1),
        np.concatenate(logp).reshape(X, num),
    )


def sample_responses(
    policy: PolicyRun, task: SyntheticTask, num: int, key: jax.Array
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``num`` responses to every prompt of the synthetic task: tokens and masks ``[X, N, n]``
    and ``valid [X, N]`` (the response is one of the task's well-formed responses)."""
    prompts = task.prompts()
    settings = SamplingConfig(max_new_tokens=task.response_len, eos_id=EOS, pad_id=PAD)
    tokens, mask, _ = sample_policy(
        policy,
        prompts,
        np.ones_like(prompts, bool),
        num,
        key,
        settings,
        batch_size=len(prompts) * num,
    )
    full = mask.all(-1, keepdims=True)
    valid = (full & (tokens[..., None, :] == task.responses()).all(-1)).any(-1)
    return tokens, mask, valid


def sampled_kl(
    reference: PolicyRun,
    prompts_xp: np.ndarray,
    prompt_mask_xp: np.ndarray,
    tokens_xnt: np.ndarray,
    mask_xnt: np.ndarray,
    logp_xn: np.ndarray,
) -> tuple[float, float]:
    """KL(pi || mu) from N samples of pi per prompt: the mean of ``log pi(y|x) - log mu(y|x)``
    over the samples, and its stratified standard error (as for the win rates)."""
    X, N, n = tokens_xnt.shape
    prompts = np.repeat(prompts_xp, N, axis=0)
    masks = np.repeat(prompt_mask_xp, N, axis=0)
    ref = score_tokens(
        reference.graphdef,
        reference.params,
        prompts,
        masks,
        tokens_xnt.reshape(X * N, n),
        mask_xnt.reshape(X * N, n),
    )
    ratio = logp_xn - np.asarray(ref, np.float64).sum(-1).reshape(X, N)
    var = ratio.var(-1, ddof=1) if N > 1 else np.zeros(X)
    return float(ratio.mean()), float(np.sqrt(np.sum(var / N)) / X)


def sampled_win_rates(
    judge: Judge,
    prompts_xp: np.ndarray,
    samples: list[tuple[np.ndarray, ...]],
    names: list[str] | None = None,
    prompt_mask_xp: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The estimate of the win-rate matrix ``[m, m]`` and its standard errors ``[m, m]``.

    ``samples[i]`` is ``(tokens [X, N, n], mask [X, N, n], valid [X, N])`` of policy i on the
    prompts ``prompts_xp`` (``sample_responses``; on text every response is valid). Raises if a
    prompt has fewer than two pairs of valid responses (no variance estimate): draw more.
    """
    call = judge_function(judge)
    m = len(samples)
    names = names or [f"policy {i}" for i in range(m)]
    X, N, _ = samples[0][0].shape
    if prompt_mask_xp is None:
        prompt_mask_xp = np.ones_like(prompts_xp, bool)
    prompts = np.repeat(prompts_xp, N, axis=0)
    prompt_mask = np.repeat(prompt_mask_xp, N, axis=0)
    mean, stderr = np.full((m, m), 0.5), np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            (a, a_mask, a_ok), (b, b_mask, b_ok) = samples[i], samples[j]
            p = call(
                prompts,
                prompt_mask,
                a.reshape(X * N, -1),
                a_mask.reshape(X * N, -1),
                b.reshape(X * N, -1),
                b_mask.reshape(X * N, -1),
            )
            p = np.asarray(p, np.float64).reshape(X, N)
            keep = a_ok & b_ok
            n = keep.sum(-1)
            if n.min() < 2:
                raise UserError(
                    f"{names[i]} vs {names[j]}: a prompt has {n.min()} of {N} sampled pairs with "
                    "both responses well-formed; sample more responses per prompt"
                )
            mean_x = np.where(keep, p, 0.0).sum(-1) / n
            var_x = np.where(keep, (p - mean_x[:, None]) ** 2, 0.0).sum(-1) / (n - 1)
            mean[i, j], stderr[i, j] = mean_x.mean(), np.sqrt(np.sum(var_x / n)) / X
            mean[j, i], stderr[j, i] = 1.0 - mean[i, j], stderr[i, j]
    return mean, stderr
