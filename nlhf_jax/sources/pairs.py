"""Preference pairs for the preference and reward models: the synthetic task's or a file's.

Both go through the same path: a tfds dataset written as array_record (``nlhf_jax.data``), then
a grain pipeline whose iterator state is checkpointed with the run. Evaluation sets are small
and fixed; the synthetic task's are generated exactly (no file), a user's are the ``eval_file``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from nlhf_jax import data
from nlhf_jax.errors import UserError
from nlhf_jax.sources import common
from nlhf_jax.tasks.synthetic import SEP, TASK_VERSION, SyntheticTask, style_of

PAIR_FEATURES = {
    "prompt": "tokens",
    "response_a": "tokens",
    "response_b": "tokens",
    "label": "float32",
}


@dataclasses.dataclass
class PairSource:
    """Training batches of preference pairs, and named evaluation sets of batches."""

    train: data.BatchIterator
    vocab_size: int
    sep_id: int | None
    eval_sets: Callable[[], dict[str, list[dict]]]
    description: dict


def _in_batches(arrays: dict[str, np.ndarray], batch_size: int) -> list[dict]:
    n = len(next(iter(arrays.values())))
    return [{k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size)]


def _with_masks(pairs: dict[str, np.ndarray], label_key: str) -> dict[str, np.ndarray]:
    """Synthetic pairs are unpadded (every prompt and response has the same length)."""
    out = {"label": pairs[label_key].astype(np.float32)}
    for k in ("prompt", "response_a", "response_b"):
        out[k] = pairs[k].astype(np.int32)
        out[f"{k}_mask"] = np.ones_like(pairs[k], bool)
    return out


def synthetic_eval_sets(task: SyntheticTask, num: int, seed: int, batch_size: int):
    """held-out pairs with sampled labels; the same pairs against the oracle's probability; and
    cyclic pairs (equal quality, different style) against the oracle's probability."""
    held = task.preference_pairs(num, seed)
    rng = np.random.default_rng(seed + 1)
    prompts, resp, pats = task.prompts(), task.responses(), task.patterns()
    quality = (pats[:, None, :] == pats[None, :, :]).sum(-1)  # [prompt, response]
    style = style_of(pats)
    x = rng.integers(0, len(prompts), 4 * num)
    i, j = rng.integers(0, len(resp), 4 * num), rng.integers(0, len(resp), 4 * num)
    keep = (quality[x, i] == quality[x, j]) & (style[i] != style[j])
    x, i, j = x[keep][:num], i[keep][:num], j[keep][:num]
    ones = np.ones((len(x), task.response_len), bool)
    xp = prompts[x]
    p = np.asarray(task(xp, np.ones_like(xp, bool), resp[i], ones, resp[j], ones), np.float32)
    cyclic = {"prompt": xp, "response_a": resp[i], "response_b": resp[j], "probability": p}
    return {
        "heldout": _in_batches(_with_masks(held, "label"), batch_size),
        "oracle": _in_batches(_with_masks(held, "probability"), batch_size),
        "cyclic": _in_batches(_with_masks(cyclic, "probability"), batch_size),
    }


def pairs(
    config: ml_collections.ConfigDict,
    workdir: str,
    vocab_size: int | None = None,
    extra_pairs: dict[str, np.ndarray] | None = None,
) -> PairSource:
    """The preference-pair source of ``config.data`` ("synthetic" or "file", see
    ``common.kind``); ``vocab_size``: the model's, which the tokenizer must fit.
    ``extra_pairs`` (synthetic only): more training pairs, the task's arrays plus
    ``response_a_mask``/``response_b_mask``, e.g. RLP's synthetic preferences."""
    if common.kind(config) == "synthetic":
        return _synthetic_pairs(config, workdir, extra_pairs)
    if extra_pairs is not None:
        raise UserError("RLP's synthetic pairs join synthetic data only (config.data.source)")
    return _file_pairs(config, workdir, vocab_size)


def _synthetic_pairs(config, workdir, extra_pairs) -> PairSource:
    d = config.data
    task = common.task_from_config(config)
    settings = {
        "task": config.task.to_dict(),
        "task_version": TASK_VERSION,
        "num": d.train_pairs,
        "seed": config.seed,
        "labels": d.labels,
    }
    generated = task.preference_pairs(d.train_pairs, config.seed)
    if d.labels == "probability":  # soft labels: the oracle's probability, no sampling noise
        generated["label"] = generated["probability"]
    elif d.labels != "sampled":
        raise UserError(f"config.data.labels={d.labels!r}: choose 'sampled' or 'probability'")
    pairs_only = {k: generated[k] for k in PAIR_FEATURES}
    name = "synthetic_pairs"
    if extra_pairs is not None:
        name = "synthetic_pairs_rlp"
        settings["extra_pairs"] = len(extra_pairs["label"])
        for k in ("response_a", "response_b"):
            pairs_only[f"{k}_mask"] = np.ones(pairs_only[k].shape, bool)
        pairs_only = {
            k: np.concatenate([v, np.asarray(extra_pairs[k]).astype(v.dtype)])
            for k, v in pairs_only.items()
        }
    built = common.synthetic_records(
        name, pairs_only, PAIR_FEATURES, common.data_dir(config, workdir)
    )
    options = data.BatchOptions(
        config.batch_size, task.prompt_len, task.response_len, seed=config.seed
    )
    return PairSource(
        train=data.preference_batches(built.source("train"), options),
        vocab_size=task.vocab_size,
        sep_id=SEP,
        eval_sets=lambda: synthetic_eval_sets(
            task, d.eval_pairs, config.seed + 1, d.eval_batch_size
        ),
        description={"source": "synthetic", **settings},
    )


def _file_pairs(config, workdir, vocab_size) -> PairSource:
    d = config.data
    if not d.train_file:
        raise UserError(
            "config.data.train_file is empty: name the file of pairs (JSONL, Parquet or a "
            "Hugging Face dataset directory)"
        )
    eval_files = [f.strip() for f in d.eval_file.split(",") if f.strip()]
    if len(eval_files) == 1:
        eval_names = {"validation": "eval"}  # one set: metrics "eval/accuracy", ...
    else:  # several: each set named by its file's stem, e.g. "pairs_cyclic/accuracy"
        stems = [os.path.splitext(os.path.basename(f))[0] for f in eval_files]
        eval_names = {f"validation_{i}": stem for i, stem in enumerate(stems)}
    files = {"train": d.train_file, **dict(zip(eval_names, eval_files, strict=True))}
    vocab_size = vocab_size or config.model.get("vocab_size") or None
    tokenizer = common.tokenizer(config, vocab_size=vocab_size)
    built = common.build_files("pairs", files, config, workdir, tokenizer, data.PAIR_LAYOUTS)
    common.check_rows(d.train_file, built, config.batch_size, "pairs")
    vocab_size = vocab_size or len(tokenizer)
    options = common.text_batch_options(config)
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    def eval_sets():
        eval_options = common.eval_options(options, d.eval_batch_size)
        return {
            name: list(
                data.preference_batches(  # every process evaluates every pair
                    built.source(split),
                    eval_options,
                    tokenizer=tokenizer,
                    process_index=0,
                    process_count=1,
                )
            )
            for split, name in eval_names.items()
        }

    return PairSource(
        train=data.preference_batches(built.source("train"), options, tokenizer=tokenizer),
        vocab_size=vocab_size,
        sep_id=sep,
        eval_sets=eval_sets,
        description={
            "source": "file",
            **files,
            "skipped_rows": built.skipped,
            "chat_template": common.templated(config, built),
            "chat": dataclasses.asdict(options.chat),
        },
    )
