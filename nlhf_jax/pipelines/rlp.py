"""The RLP pipeline (docs/algorithms.md section 8; Lang et al., arXiv 2403.19279), as stages:

``sft`` -> ``judge`` (a reward model for RLHF, a preference model for Nash-MD) -> ``stage1``
(the policy method from SFT) -> ``samples`` (n samples of the stage-1 policy per unlabeled
prompt, with their equivalence groups and first-judge scores, written as a tfds dataset) ->
``judge_rlp`` (the judge retrained from scratch: D plus SPG's pairs, and/or lam * L_M on pairs of
views; ``nlhf_jax.train.refresh``) -> ``stage2`` (the policy method from SFT again, against the
refreshed judge). ``config.rlp.sft``, ``.judge`` and ``.stage1`` name existing runs to reuse
instead (the demo reuses its own).

    python -m nlhf_jax.train --config configs/rlp_spg.py --workdir runs/rlp_spg

The unlabeled prompts are draws from the synthetic task's prompts. Only the synthetic task's
pairs D can be joined by the synthetic pairs today (``nlhf_jax.sources.pairs``).
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from nlhf_jax import judges, sources, spg
from nlhf_jax.checkpoint import load_policy
from nlhf_jax.errors import UserError
from nlhf_jax.evaluate.exact import (
    enumerated_logprobs,
    judge_accuracy_on_policy,
    judge_function,
    judge_matrices,
    normalized,
)
from nlhf_jax.evaluate.runs import load_policies
from nlhf_jax.evaluate.sampled import sample_policy
from nlhf_jax.pipelines.configs import rlp_config, rlp_section  # noqa: F401
from nlhf_jax.pipelines.stages import run_stage, stage_config
from nlhf_jax.sampling import SamplingConfig
from nlhf_jax.tasks.synthetic import EOS, PAD
from nlhf_jax.train.refresh import SAMPLE_FEATURES

# --- the policy-sample set -----------------------------------------------------------------


def build_samples(config, policy_dir: str, judge_dir: str, out_dir: str):
    """n samples of the policy per unlabeled prompt, their groups and first-judge scores."""
    r = config.rlp
    task = sources.task_from_config(config)
    policy = load_policy(policy_dir, "stage-1 policy")
    judge = judges.load(judge_dir, task=task)
    rng = np.random.default_rng(config.seed)
    all_prompts = task.prompts()
    prompts = all_prompts[rng.integers(0, len(all_prompts), r.num_prompts)]
    settings = SamplingConfig(max_new_tokens=task.response_len, eos_id=EOS, pad_id=PAD)
    key = jax.random.fold_in(jax.random.key(config.seed), 17)
    pmask = np.ones_like(prompts, bool)
    tokens, mask, _ = sample_policy(
        policy, prompts, pmask, r.num_samples, key, settings, batch_size=4096
    )
    keys = spg.equivalence_keys(r.equivalence, prompts, tokens, mask, task)
    scores = _scores(judge, prompts, tokens, mask)
    X, N, T = tokens.shape
    group = np.array([[list(dict.fromkeys(k)).index(v) for v in k] for k in keys], np.int32)
    arrays = {
        "prompt": np.repeat(prompts, N, axis=0).astype(np.int32),
        "response": tokens.reshape(X * N, T).astype(np.int32),
        "response_mask": mask.reshape(X * N, T),
        "prompt_index": np.repeat(np.arange(X, dtype=np.int32), N),
        "group": group.reshape(-1),
        "score": scores.reshape(-1).astype(np.float32),
    }
    return sources.synthetic_records("policy_samples", arrays, SAMPLE_FEATURES, out_dir)


def _scores(judge, prompts_xp, tokens_xnt, mask_xnt, batch: int = 4096) -> np.ndarray:
    """The first judge's score of each sample [X, N]: the reward, or for a preference model the
    mean preference over the prompt's other samples (``spg.mean_preference_scores``)."""
    X, N, T = tokens_xnt.shape
    if judges.has_reward(judge):
        fn = jax.jit(lambda s, *a: judge.replace(state=s).reward(*a))
        prompts = np.repeat(prompts_xp, N, axis=0)
        flat, fmask = tokens_xnt.reshape(X * N, T), mask_xnt.reshape(X * N, T)
        out = [
            np.asarray(
                fn(
                    judge.state,
                    prompts[i : i + batch],
                    np.ones_like(prompts[i : i + batch], bool),
                    flat[i : i + batch],
                    fmask[i : i + batch],
                )
            )
            for i in range(0, X * N, batch)
        ]
        return np.concatenate(out).reshape(X, N)
    prob = judge_function(judge)
    i, j = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    x = np.repeat(np.arange(X), N * N)
    a = np.tile(i.reshape(-1), X)
    b = np.tile(j.reshape(-1), X)
    p = np.concatenate(
        [
            prob(
                prompts_xp[x[s : s + batch]],
                np.ones_like(prompts_xp[x[s : s + batch]], bool),
                tokens_xnt[x[s : s + batch], a[s : s + batch]],
                mask_xnt[x[s : s + batch], a[s : s + batch]],
                tokens_xnt[x[s : s + batch], b[s : s + batch]],
                mask_xnt[x[s : s + batch], b[s : s + batch]],
            )
            for s in range(0, len(x), batch)
        ]
    )
    return spg.mean_preference_scores(p.reshape(X, N, N))


def stage_dirs(workdir: str) -> dict[str, str]:
    return {
        s: os.path.join(workdir, s)
        for s in ("sft", "judge", "stage1", "samples", "judge_rlp", "stage2")
    }


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    quiet: bool = False,
    dirs: dict[str, str] | None = None,
    allow_changes: bool = False,
) -> dict[str, str]:
    """Every stage of one RLP pipeline into ``workdir``; returns ``{stage: directory}``.
    ``dirs`` overrides stage directories (the demo names them by method)."""
    r = config.rlp
    if r.policy_method not in ("rlhf", "nash_md"):
        raise UserError(f"config.rlp.policy_method={r.policy_method!r}: 'rlhf' or 'nash_md'")
    if not config.data.data_dir:
        config.data.data_dir = sources.data_dir(config, workdir)  # one copy for every stage
    dirs = {**stage_dirs(workdir), **(dirs or {})}
    dirs.update({k: r[k] for k in ("sft", "judge", "stage1") if r[k]})
    kind = "reward_model" if r.policy_method == "rlhf" else "preference_model"
    steps = config.demo
    if not r.sft:
        run_stage(
            "sft", stage_config(config, "sft", steps.sft_steps), dirs["sft"], quiet, allow_changes
        )
    if not r.judge:
        stage = stage_config(config, kind, steps.preference_steps)
        run_stage(kind, stage, dirs["judge"], quiet, allow_changes)
    if not r.stage1:
        stage = policy_stage(config, dirs["sft"], dirs["judge"])
        run_stage(f"{r.policy_method} (stage 1)", stage, dirs["stage1"], quiet, allow_changes)
    if not os.path.isdir(dirs["samples"]) or not any(os.scandir(dirs["samples"])):
        t0 = time.time()
        print(f"== samples: {r.num_samples} per prompt from {dirs['stage1']}", flush=True)
        built = build_samples(config, dirs["stage1"], dirs["judge"], dirs["samples"])
        print(f"== samples: {built.num_examples['train']} in {time.time() - t0:.0f} s", flush=True)
    stage = stage_config(config, kind, steps.preference_steps)
    stage.rlp.update({k: config.rlp[k] for k in stage.rlp})
    stage.rlp.samples = dirs["samples"]
    run_stage(f"{kind} ({r.mode} refresh)", stage, dirs["judge_rlp"], quiet, allow_changes)
    stage = policy_stage(config, dirs["sft"], dirs["judge_rlp"])
    run_stage(f"{r.policy_method} (stage 2)", stage, dirs["stage2"], quiet, allow_changes)
    return dirs


def policy_stage(config, sft: str, judge: str) -> ml_collections.ConfigDict:
    """The policy method's stage config against ``judge`` (a reward model for RLHF)."""
    d, method = config.demo, config.rlp.policy_method
    overrides = {"tau": d.rlhf_tau} if method == "rlhf" else {"beta": config.beta}
    return stage_config(
        config,
        method,
        d.policy_steps,
        init_from=sft,
        judge=judge,
        learning_rate=d.policy_learning_rate,
        **overrides,
    )


def judge_accuracies(judge_dirs: dict[str, str], policies: dict[str, str], quiet: bool) -> dict:
    """Each judge's exact accuracy on pairs each policy samples (synthetic task;
    ``exact.judge_accuracy_on_policy``): ``{"judges", "policies", "accuracy": [judge][policy]}``."""
    runs, task = load_policies(policies)
    P = task.preference_matrices()
    pis = [normalized(enumerated_logprobs(p.graphdef, p.params, task))[0] for p in runs]
    matrices = [judge_matrices(judges.load(d, task=task), task) for d in judge_dirs.values()]
    acc = [[judge_accuracy_on_policy(J, P, pi) for pi in pis] for J in matrices]
    out = {"judges": list(judge_dirs), "policies": list(policies), "accuracy": acc}
    if not quiet:
        width = max(len(j) for j in judge_dirs)
        print("\naccuracy of each judge on pairs sampled from each policy (exact, oracle labels):")
        print(" " * width + "".join(f"{p:>14}" for p in policies))
        for name, row in zip(judge_dirs, acc, strict=True):
            print(f"{name:<{width}}" + "".join(f"{a:>14.3f}" for a in row))
    return out
