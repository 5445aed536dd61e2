"""A run's settings: checked for impossible values, written to ``WORKDIR/config.json``, and
compared on resume.

``record(workdir, config)`` writes the whole resolved config. When the workdir already holds a
checkpoint, the recorded config is the one it was trained with: a key that changes what is
trained (the learning rate, batch size, seed, a method's hyperparameters, the judge, the data,
the model) may not change on resume, and the run stops naming each difference, unless the
user passes ``--allow_changes``. Keys that only say how long, how often or where
(``RESUMABLE``: steps, evaluation, logging and checkpoint cadence, the guard's limits, the
mesh, the attention kernel and rematerialization) may change; each change is logged.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections

from nlhf_jax.errors import UserError

CONFIG_FILE = "config.json"
# Dotted keys (or prefixes) that may change when a run resumes.
RESUMABLE = (
    "num_steps",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "max_to_keep",
    "guard",
    "mesh",
    "model.attention",
    "model.remat",
    "data.data_dir",
    "data.eval_batch_size",
    "data.num_eval_prompts",
)
# key -> smallest allowed value (inclusive); checked where the key exists.
_AT_LEAST = {
    "num_steps": 1,
    "batch_size": 1,
    "micro_batch_size": 0,
    "log_every": 1,
    "eval_every": 0,
    "checkpoint_every": 1,
    "max_to_keep": 1,
    "data.max_prompt_len": 1,
    "data.max_response_len": 1,
    "data.train_pairs": 1,
    "data.train_demos": 1,
    "data.eval_pairs": 1,
    "data.eval_batch_size": 1,
    "data.num_eval_prompts": 1,
    "sampling.max_new_tokens": 0,
    "sampling.temperature": 0,
    "sampling.top_k": 0,
    "optimizer.warmup_steps": 0,
    "optimizer.weight_decay": 0,
    "lora.rank": 0,
    "demo.sft_steps": 1,
    "demo.preference_steps": 1,
    "demo.policy_steps": 1,
    "demo.seeds": 1,
    "rlp.num_prompts": 1,
    "rlp.num_samples": 1,
}
_POSITIVE = ("optimizer.max_grad_norm", "tau", "lora.alpha")
# 0.0 is the learning rate's "the default for where the run starts" (``defaults.resolve``
# fills it in a run's config; a pipeline's stages each fill their own).
_NOT_NEGATIVE = ("optimizer.learning_rate",)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (ConfigDicts and dicts; lists and tuples as lists)."""
    if isinstance(tree, ml_collections.ConfigDict):
        tree = tree.to_dict()
    if not isinstance(tree, dict):
        return {prefix: list(tree) if isinstance(tree, tuple) else tree}
    out = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return {k.rstrip("."): v for k, v in out.items()}


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses impossible values (zero or negative steps, batch sizes, lengths, ...), naming the
    key and its value."""
    flat = flatten(config)
    for key, low in _AT_LEAST.items():
        value = flat.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
            raise UserError(f"config.{key}={value}: must be at least {low}")
    for key in _POSITIVE:
        value = flat.get(key)
        if isinstance(value, (int, float)) and not value > 0:
            raise UserError(f"config.{key}={value}: must be positive")
    for key in _NOT_NEGATIVE:
        value = flat.get(key)
        if isinstance(value, (int, float)) and not value >= 0:
            raise UserError(f"config.{key}={value}: must be positive (0: the default)")
    top_p = flat.get("sampling.top_p")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"config.sampling.top_p={top_p}: must be in (0, 1]")
    beta = flat.get("beta")
    if beta is not None and not 0.0 <= beta <= 1.0:
        raise UserError(f"config.beta={beta}: the mixture weight must be in [0, 1]")


def _resumable(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUMABLE)


def _has_checkpoint(workdir: str) -> bool:
    directory = os.path.join(workdir, "checkpoints")
    return os.path.isdir(directory) and any(n.isdigit() for n in os.listdir(directory))


def record(
    workdir: str, config: ml_collections.ConfigDict, allow_changes: bool = False, say=print
) -> None:
    """Writes ``config`` to ``WORKDIR/config.json``; on resume first compares it with the one
    the checkpoints were trained with (module docstring). Raises a ``UserError`` naming the
    refused differences."""
    path = os.path.join(workdir, CONFIG_FILE)
    new = flatten(config)
    if os.path.isfile(path) and _has_checkpoint(workdir):
        try:
            with open(path) as f:
                old = flatten(json.load(f))
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not JSON ({e}); move it away to resume") from None
        changed = {
            k: (old.get(k, "<missing>"), new.get(k, "<missing>"))
            for k in sorted(set(old) | set(new))
            if old.get(k, "<missing>") != new.get(k, "<missing>")
        }
        # A key the recorded config lacks (added to the library since) or the new one lacks
        # (removed) compares as unchanged: only a value the run was trained with can differ.
        refused = {
            k: v
            for k, v in changed.items()
            if not _resumable(k) and "<missing>" not in (v[0], v[1])
        }
        if refused and not allow_changes:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
            raise UserError(
                f"{workdir} was trained with other settings; refusing to resume with {listed}. "
                "Use another --workdir, or pass --allow_changes to resume with them"
            )
        for key, (a, b) in changed.items():
            say(f"resuming {workdir} with {key}: {a!r} -> {b!r}")
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=list)
        os.replace(tmp, path)
