"""What every source shares: the kind of data a config names, where its datasets are written,
the synthetic task, generated records, the run's tokenizer and the text batch options."""

from __future__ import annotations

import dataclasses
import hashlib
import os

import ml_collections
import numpy as np

from nlhf_jax import data
from nlhf_jax.checkpoint import TOKENIZER_DIR, is_checkpoint
from nlhf_jax.errors import UserError
from nlhf_jax.tasks.synthetic import SyntheticTask

KINDS = ("synthetic", "file")


def kind(config: ml_collections.ConfigDict) -> str:
    """ "synthetic" or "file". Empty ``config.data.source`` picks "file" when any file, tfds set
    or checkpoint is named, so naming your data is enough."""
    d = config.data
    if d.source:
        if d.source not in KINDS:
            raise UserError(f"config.data.source={d.source!r}: choose one of {KINDS}")
        return d.source
    named = d.train_file or d.prompts_file or d.prompts_tfds or config.model.hf_checkpoint
    return "file" if named else "synthetic"


def data_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Where a run's tfds datasets are written: ``config.data.data_dir``, else
    ``WORKDIR/data``. The one place that decides it."""
    return config.data.data_dir or os.path.join(workdir, "data")


def task_from_config(config: ml_collections.ConfigDict) -> SyntheticTask:
    return SyntheticTask(**config.task.to_dict())


def synthetic_records(
    name: str, arrays: dict[str, np.ndarray], features: dict, directory: str
) -> data.BuiltDataset:
    """Writes generated arrays (one row per example) as a tfds dataset under ``directory``,
    named by their content.

    The name hashes the arrays themselves, so a change of settings, size or task code gives a
    new dataset instead of silently reusing a stale one; identical data is written once. A
    ``<field>_mask`` array (True on real tokens, right padding) makes that field's rows
    variable-length: only the real tokens are written.
    """
    digest = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{a.dtype}:{a.shape}".encode())
        digest.update(a.tobytes())
    n = len(next(iter(arrays.values())))

    def row(i):
        out = {k: v[i] for k, v in arrays.items() if not k.endswith("_mask")}
        for k in out:
            if f"{k}_mask" in arrays:
                out[k] = out[k][arrays[f"{k}_mask"][i].astype(bool)]
        return out

    rows = (row(i) for i in range(n))
    return data.build_records(
        {"train": rows}, features, directory, name=f"{name}_{digest.hexdigest()[:12]}"
    )


def tokenizer(config: ml_collections.ConfigDict, vocab_size: int | None = None):
    """The run's tokenizer: ``data.tokenizer``, else the checkpoint's, else the ``init_from``
    run's. Refused (naming it) without EOS or pad token, or larger than ``vocab_size``."""
    from nlhf_jax.models.tokenizer import load_tokenizer

    path = config.data.tokenizer or config.model.hf_checkpoint
    if not path and config.get("init_from"):
        path = config.init_from
        if not is_checkpoint(path):  # a run keeps its tokenizer beside its checkpoints
            path = os.path.join(path, TOKENIZER_DIR)
    if not path:
        raise UserError(
            "no tokenizer: set config.data.tokenizer to a tokenizer directory, or "
            "config.model.hf_checkpoint (its tokenizer is used)"
        )
    tok = load_tokenizer(path, vocab_size=vocab_size)
    missing = [name for name in ("eos", "pad") if getattr(tok, f"{name}_token_id") is None]
    if missing:
        raise UserError(
            f"tokenizer at {path} has no {' and no '.join(missing)} token; responses end at EOS "
            "and batches are padded, so both are needed (e.g. set tokenizer.pad_token = "
            "tokenizer.eos_token and save_pretrained it)"
        )
    return tok


def chat_options(config: ml_collections.ConfigDict) -> data.ChatOptions:
    """The chat template's variables ``config.data`` sets (``nlhf_jax.data.chat``)."""
    d = config.data
    return data.ChatOptions(date_string=d.date_string, enable_thinking=bool(d.enable_thinking))


def text_batch_options(config: ml_collections.ConfigDict, **changes) -> data.BatchOptions:
    """The batch options of text demonstrations and pairs built by ``build_files``: lengths from
    ``config.data`` (every response already ends with EOS, so a policy learns to stop and a judge
    sees where a response ends), the chat template's settings for text prompts; ``changes``
    override (e.g. for evaluation)."""
    d = config.data
    options = data.BatchOptions(
        config.batch_size,
        d.max_prompt_len,
        d.max_response_len,
        seed=config.seed,
        chat_template=d.chat_template,
        chat=chat_options(config),
    )
    return dataclasses.replace(options, **changes)


def layout(config: ml_collections.ConfigDict, known: tuple[str, ...]) -> str | None:
    """``config.data.layout`` if it names one of ``known``; empty: detected from the rows."""
    name = config.data.layout
    if name and name not in known:
        raise UserError(
            f"config.data.layout={name!r}: choose one of {', '.join(known)}, or leave it empty to "
            "detect it from the fields"
        )
    return name or None


def build_files(
    kind: str, files: dict, config: ml_collections.ConfigDict, workdir: str, tokenizer, known
) -> data.BuiltDataset:
    """The tokenized dataset of a run's files (``data.build_tokenized``), with the template,
    layout, SFT turns and bad-row policy of ``config.data``."""
    d = config.data
    if kind == "demos" and d.sft_turns not in ("last", "all"):
        raise UserError(f"config.data.sft_turns={d.sft_turns!r}: choose 'last' or 'all'")
    return data.build_tokenized(
        kind,
        files,
        data_dir(config, workdir),
        tokenizer,
        chat_template=d.chat_template,
        chat=chat_options(config),
        layout=layout(config, known),
        turns=d.sft_turns,
        on_error=d.on_error,
    )


def templated(config: ml_collections.ConfigDict, built: data.BuiltDataset) -> bool:
    """Whether a run's prompts go through the chat template: asked for, or because its data
    was conversational (what sampling and evaluation of the run must do again)."""
    return bool(config.data.chat_template) or built.templated_rows.get("train", 0) > 0


def check_rows(path: str, built: data.BuiltDataset, batch_size: int, what: str) -> None:
    """A training file must fill one batch: else one line naming the file, its rows and the key
    to lower (the pipeline would stop before the first step)."""
    rows = built.num_examples.get("train", 0)
    if rows < batch_size:
        skipped = built.skipped.get("train", 0)
        note = f" ({skipped} malformed rows skipped)" if skipped else ""
        raise UserError(
            f"{path}: {rows} {what}{note}, fewer than one batch (config.batch_size="
            f"{batch_size}); lower config.batch_size or add rows"
        )


def eval_options(options: data.BatchOptions, batch_size: int) -> data.BatchOptions:
    """One ordered pass over an evaluation set, every row kept."""
    return dataclasses.replace(
        options, batch_size=batch_size, num_epochs=1, shuffle=False, drop_remainder=False
    )
