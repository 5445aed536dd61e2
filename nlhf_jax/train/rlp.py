"""RLP's pipeline (ALGORITHMS.md 8): policy samples, a refreshed judge, the policy again from SFT.

    python -m nlhf_jax.train --config configs/rlp_spg.py --workdir runs/rlp_spg
    python -m nlhf_jax.train --config configs/rlp_uml.py --workdir runs/rlp_uml
    python -m nlhf_jax.train --config configs/nash_md_rlp.py --workdir runs/nash_md_rlp

Stages, each an ordinary run (or dataset) in ``WORKDIR/<stage>``, skipped when finished and
resumed when interrupted: ``sft`` -> the first judge (``reward_model`` for RLHF,
``preference_model`` for Nash-MD) on the human pairs D -> ``stage1`` (the policy method from SFT
against that judge) -> ``samples`` (n samples of the stage-1 policy per unlabeled prompt, with
their equivalence groups and first-judge scores, written as a tfds dataset) -> ``judge_rlp``
(the judge retrained from scratch: D plus SPG's pairs, and/or lam * L_M on pairs of views) ->
``stage2`` (the policy method from SFT again, against the refreshed judge). ``config.rlp.sft``,
``.judge`` and ``.stage1`` name existing runs to reuse instead (the demo reuses its own).

The unlabeled prompts are draws from the synthetic task's prompts. Only the synthetic task's
pairs D can be joined by the synthetic pairs today (``data_sources.pairs``).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nlhf_jax import data, rlp
from nlhf_jax.checkpoint import load_policy, read_identity
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.evaluate.exact import (
    enumerated_logprobs,
    judge_accuracy_on_policy,
    judge_function,
    judge_matrices,
    normalized,
)
from nlhf_jax.evaluate.runs import load_policies
from nlhf_jax.evaluate.sampled import sample_policy
from nlhf_jax.judges import load_judge
from nlhf_jax.models.preference import rewards
from nlhf_jax.sampling import SamplingConfig
from nlhf_jax.tasks.synthetic import EOS, PAD
from nlhf_jax.train import data_sources
from nlhf_jax.train.stages import run_stage, stage_config

SAMPLE_FEATURES = {
    "prompt": "tokens",
    "response": "tokens",
    "prompt_index": "int32",
    "group": "int32",
    "score": "float32",
}
MODES = ("spg", "uml", "spg+uml")


def rlp_config(mode: str, policy_method: str) -> ml_collections.ConfigDict:
    """The pipeline's config: ``mode`` in MODES, ``policy_method`` "rlhf" or "nash_md"; the
    stages' steps and learning rate are the demo's (``config.demo``)."""
    from nlhf_jax.train.demo import demo_config

    c = demo_config()
    c.method = "rlp"
    c.rlp.mode = mode
    c.rlp.policy_method = policy_method
    return c


# --- the policy-sample set -----------------------------------------------------------------


def build_samples(config, policy_dir: str, judge_dir: str, out_dir: str) -> data.BuiltDataset:
    """n samples of the policy per unlabeled prompt, their groups and first-judge scores."""
    r = config.rlp
    task = data_sources.task_from_config(config)
    policy = load_policy(policy_dir, "stage-1 policy")
    judge = load_judge(judge_dir, task)
    rng = np.random.default_rng(config.seed)
    all_prompts = task.prompts()
    prompts = all_prompts[rng.integers(0, len(all_prompts), r.num_prompts)]
    settings = SamplingConfig(max_new_tokens=task.response_len, eos_id=EOS, pad_id=PAD)
    key = jax.random.fold_in(jax.random.key(config.seed), 17)
    pmask = np.ones_like(prompts, bool)
    tokens, mask, _ = sample_policy(
        policy, prompts, pmask, r.num_samples, key, settings, batch_size=4096
    )
    keys = rlp.equivalence_keys(r.equivalence, prompts, tokens, mask, task)
    scores = _scores(judge, read_identity(judge_dir)["method"], prompts, tokens, mask)
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
    return data_sources.synthetic_records(
        "policy_samples", arrays, SAMPLE_FEATURES, config, out_dir, data_dir=out_dir
    )


def _scores(judge, method, prompts_xp, tokens_xnt, mask_xnt, batch: int = 4096) -> np.ndarray:
    """The first judge's score of each sample [X, N]: the reward, or for a preference model the
    mean preference over the prompt's other samples (`rlp.mean_preference_scores`)."""
    X, N, T = tokens_xnt.shape
    if method == "reward_model":
        fn = jax.jit(lambda s, *a: rewards(judge.graphdef, s, *a))
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
    return rlp.mean_preference_scores(p.reshape(X, N, N))


def read_samples(samples_dir: str) -> dict[str, np.ndarray]:
    """The sample set as arrays ``[X, N, ...]`` (responses right-padded, with a mask)."""
    found = [root for root, _, files in os.walk(samples_dir) if "dataset_info.json" in files]
    if not found:
        raise MissingInput(f"no policy-sample set in {samples_dir}: run the samples stage first")
    source = data.load_source(sorted(found)[-1], "train")
    rows = [source[i] for i in range(len(source))]
    index = np.array([r["prompt_index"] for r in rows])
    X = int(index.max()) + 1
    N = len(rows) // X
    T = max(len(r["response"]) for r in rows)
    tokens = np.full((X * N, T), PAD, np.int32)
    mask = np.zeros((X * N, T), bool)
    for k, r in enumerate(rows):
        tokens[k, : len(r["response"])] = r["response"]
        mask[k, : len(r["response"])] = True
    return {
        "prompt": np.stack([r["prompt"] for r in rows[::N]]),
        "response": tokens.reshape(X, N, T),
        "response_mask": mask.reshape(X, N, T),
        "group": np.array([r["group"] for r in rows]).reshape(X, N),
        "score": np.array([r["score"] for r in rows], np.float32).reshape(X, N),
    }


# --- what the refreshed judge trains on ----------------------------------------------------


def spg_training_pairs(samples: dict, gamma: float, seed: int) -> tuple[dict, dict]:
    """SPG's pairs as training arrays (order shuffled, label = P(a > b) = 1 if a is the chosen)
    and the selection's statistics."""
    rng = np.random.default_rng(seed)
    sel = rlp.spg_pairs(samples["group"].tolist(), samples["score"], gamma, rng)
    x = np.flatnonzero(sel["keep"])
    chosen, rejected = sel["chosen"][x], sel["rejected"][x]
    swap = rng.random(len(x)) < 0.5
    first = np.where(swap, rejected, chosen)
    second = np.where(swap, chosen, rejected)
    tok, msk = samples["response"], samples["response_mask"]
    pairs = {
        "prompt": samples["prompt"][x],
        "response_a": tok[x, first],
        "response_a_mask": msk[x, first],
        "response_b": tok[x, second],
        "response_b_mask": msk[x, second],
        "label": np.where(swap, 0.0, 1.0).astype(np.float32),
    }
    stats = {
        "prompts": len(sel["keep"]),
        "kept": len(x),
        "mean_confidence": float(sel["confidence"].mean()),
    }
    return pairs, stats


def view_pairs(samples: dict) -> dict:
    """UML's views: samples (2k, 2k + 1) of each prompt, as pair arrays (label unused: 1/2)."""
    tok, msk = samples["response"], samples["response_mask"]
    X, N, _ = tok.shape
    half = N // 2
    if half == 0:
        raise UserError("RLP-UML needs at least 2 samples per prompt (config.rlp.num_samples)")
    return {
        "prompt": np.repeat(samples["prompt"], half, axis=0),
        "response_a": tok[:, 0 : 2 * half : 2].reshape(X * half, -1),
        "response_a_mask": msk[:, 0 : 2 * half : 2].reshape(X * half, -1),
        "response_b": tok[:, 1 : 2 * half : 2].reshape(X * half, -1),
        "response_b_mask": msk[:, 1 : 2 * half : 2].reshape(X * half, -1),
        "label": np.full(X * half, 0.5, np.float32),
    }


class WithViews:
    """The judge's pair batches, each with a batch of views under ``"views"``; checkpointable."""

    def __init__(self, pairs, views):
        self.pairs, self.views = pairs, views

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return {**next(self.pairs), "views": next(self.views)}

    def get_state(self) -> dict:
        return {"pairs": self.pairs.get_state(), "views": self.views.get_state()}

    def set_state(self, state) -> None:
        self.pairs.set_state(state["pairs"])
        self.views.set_state(state["views"])


def uml_loss(graphdef, params, views: dict, rng) -> tuple[jax.Array, dict]:
    """L_M of a judge with a bottleneck on a batch of view pairs (ALGORITHMS.md 8)."""
    model = nnx.merge(graphdef, params)
    b = views["prompt"].shape[0]
    h = model.features(
        jnp.concatenate([views["prompt"], views["prompt"]]),
        jnp.concatenate([views["prompt_mask"], views["prompt_mask"]]),
        jnp.concatenate([views["response_a"], views["response_b"]]),
        jnp.concatenate([views["response_a_mask"], views["response_b_mask"]]),
    )
    z, mu, logvar = model.bottleneck.encode(h, rng)
    return rlp.multiview_bottleneck_loss(
        model.bottleneck.critic, z[:b], z[b:], mu[:b], logvar[:b], mu[b:], logvar[b:]
    )


def refreshed_data(config, workdir: str, vocab_size):
    """The pair source of a judge retrained with RLP (``config.rlp.samples`` set): D plus SPG's
    pairs (modes with "spg"), and a view iterator (modes with "uml", else None)."""
    r = config.rlp
    if r.mode not in MODES:
        raise UserError(f"config.rlp.mode={r.mode!r}: choose one of {', '.join(MODES)}")
    samples = read_samples(r.samples)
    extra, stats = None, {}
    if "spg" in r.mode:
        extra, stats = spg_training_pairs(samples, r.gamma, config.seed)
    source = data_sources.pairs(config, workdir, vocab_size=vocab_size, extra_pairs=extra)
    source.description["rlp"] = {"samples": r.samples, "mode": r.mode, **stats}
    if "uml" not in r.mode:
        return source, None
    task = data_sources.task_from_config(config)
    built = data_sources.synthetic_records(
        "rlp_views", view_pairs(samples), data_sources.PAIR_FEATURES, config, workdir
    )
    options = data.BatchOptions(
        config.batch_size, task.prompt_len, task.response_len, seed=config.seed + 1
    )
    return source, data.preference_batches(built.source("train"), options)


# --- the pipeline --------------------------------------------------------------------------


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
) -> dict[str, str]:
    """Every stage of one RLP pipeline into ``workdir``; returns ``{stage: directory}``.
    ``dirs`` overrides stage directories (the demo names them by method)."""
    r = config.rlp
    if r.policy_method not in ("rlhf", "nash_md"):
        raise UserError(f"config.rlp.policy_method={r.policy_method!r}: 'rlhf' or 'nash_md'")
    if not config.data.data_dir:
        config.data.data_dir = os.path.join(workdir, "data")
    dirs = {**stage_dirs(workdir), **(dirs or {})}
    dirs.update({k: r[k] for k in ("sft", "judge", "stage1") if r[k]})
    kind = "reward_model" if r.policy_method == "rlhf" else "preference_model"
    steps = config.demo
    if not r.sft:
        run_stage("sft", stage_config(config, "sft", steps.sft_steps), dirs["sft"], quiet)
    if not r.judge:
        stage = stage_config(config, kind, steps.preference_steps)
        run_stage(kind, stage, dirs["judge"], quiet)
    if not r.stage1:
        stage = policy_stage(config, dirs["sft"], dirs["judge"])
        run_stage(f"{r.policy_method} (stage 1)", stage, dirs["stage1"], quiet)
    if not os.path.isdir(dirs["samples"]) or not any(os.scandir(dirs["samples"])):
        t0 = time.time()
        print(f"== samples: {r.num_samples} per prompt from {dirs['stage1']}", flush=True)
        built = build_samples(config, dirs["stage1"], dirs["judge"], dirs["samples"])
        print(f"== samples: {built.num_examples['train']} in {time.time() - t0:.0f} s", flush=True)
    stage = stage_config(config, kind, steps.preference_steps)
    stage.rlp = config.rlp
    stage.rlp.samples = dirs["samples"]
    run_stage(f"{kind} ({r.mode} refresh)", stage, dirs["judge_rlp"], quiet)
    stage = policy_stage(config, dirs["sft"], dirs["judge_rlp"])
    run_stage(f"{r.policy_method} (stage 2)", stage, dirs["stage2"], quiet)
    return dirs


def policy_stage(config, sft: str, judge: str) -> ml_collections.ConfigDict:
    """The policy method's stage config against ``judge`` (a reward model for RLHF)."""
    d, method = config.demo, config.rlp.policy_method
    overrides = {"tau": d.rlhf_tau} if method == "rlhf" else {"beta": config.beta}
    judge_keys = {"reward_model": judge} if method == "rlhf" else {"judge": judge}
    return stage_config(
        config,
        method,
        d.policy_steps,
        init_from=sft,
        learning_rate=d.policy_learning_rate,
        **judge_keys,
        **overrides,
    )


def judge_accuracies(judges: dict[str, str], policies: dict[str, str], quiet: bool) -> dict:
    """Each judge's exact accuracy on pairs each policy samples (synthetic task;
    ``exact.judge_accuracy_on_policy``): ``{"judges", "policies", "accuracy": [judge][policy]}``."""
    runs, task = load_policies(policies)
    P = task.preference_matrices()
    pis = [normalized(enumerated_logprobs(p.graphdef, p.params, task))[0] for p in runs]
    acc = [
        [judge_accuracy_on_policy(judge_matrices(load_judge(d, task), task), P, pi) for pi in pis]
        for d in judges.values()
    ]
    out = {"judges": list(judges), "policies": list(policies), "accuracy": acc}
    if not quiet:
        width = max(len(j) for j in judges)
        print("\naccuracy of each judge on pairs sampled from each policy (exact, oracle labels):")
        print(" " * width + "".join(f"{p:>14}" for p in policies))
        for name, row in zip(judges, acc, strict=True):
            print(f"{name:<{width}}" + "".join(f"{a:>14.3f}" for a in row))
    return out
