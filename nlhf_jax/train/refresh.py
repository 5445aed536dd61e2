"""A judge refreshed on policy samples (RLP, docs/algorithms.md section 8): what the preference
or reward model trains on when ``config.rlp.samples`` names a policy-sample set.

RLP-SPG adds synthetic pairs (``nlhf_jax.spg``) to the pairs D; RLP-UML adds
``uml_weight * L_M`` (``nlhf_jax.losses.multiview_bottleneck_loss``) on pairs of views, two
policy samples of one prompt, through the judge's Gaussian bottleneck. The sample set is written
by the RLP pipeline (``nlhf_jax.pipelines.rlp``) as a tfds dataset with ``SAMPLE_FEATURES``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax import data, losses, sources, spg
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.tasks.synthetic import PAD

SAMPLE_FEATURES = {
    "prompt": "tokens",
    "response": "tokens",
    "prompt_index": "int32",
    "group": "int32",
    "score": "float32",
}
MODES = ("spg", "uml", "spg+uml")


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


def spg_training_pairs(samples: dict, gamma: float, seed: int) -> tuple[dict, dict]:
    """SPG's pairs as training arrays (order shuffled, label = P(a > b) = 1 if a is the chosen)
    and the selection's statistics."""
    rng = np.random.default_rng(seed)
    sel = spg.spg_pairs(samples["group"].tolist(), samples["score"], gamma, rng)
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
    """L_M of a judge with a bottleneck on a batch of view pairs."""
    model = nnx.merge(graphdef, params)
    b = views["prompt"].shape[0]
    h = model.features(
        jnp.concatenate([views["prompt"], views["prompt"]]),
        jnp.concatenate([views["prompt_mask"], views["prompt_mask"]]),
        jnp.concatenate([views["response_a"], views["response_b"]]),
        jnp.concatenate([views["response_a_mask"], views["response_b_mask"]]),
    )
    z, mu, logvar = model.bottleneck.encode(h, rng)
    return losses.multiview_bottleneck_loss(
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
    source = sources.pairs(config, workdir, vocab_size=vocab_size, extra_pairs=extra)
    source.description["rlp"] = {"samples": r.samples, "mode": r.mode, **stats}
    if "uml" not in r.mode:
        return source, None
    task = sources.task_from_config(config)
    built = sources.synthetic_records(
        "rlp_views", view_pairs(samples), sources.PAIR_FEATURES, sources.data_dir(config, workdir)
    )
    options = data.BatchOptions(
        config.batch_size, task.prompt_len, task.response_len, seed=config.seed + 1
    )
    return source, data.preference_batches(built.source("train"), options)
