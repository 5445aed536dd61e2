"""Prompt sources: where the online methods (and sampling, and evaluation) get their prompts.

A ``PromptSource`` yields training batches of left-padded prompt tokens through the same tfds
(array_record) + grain path as every other dataset, so its iterator resumes exactly; it names
its tokenizer's special ids (EOS, pad), decodes responses to text, holds a fixed set of
evaluation prompts, and says how long responses are. Two kinds:

- ``synthetic_source(task, ...)``: the built-in synthetic task. It also carries the task, whose
  responses can be enumerated, so its runs get exact game metrics.
- ``text_source(...)``: a prompts file (JSONL, Parquet or a Hugging Face dataset directory; a
  ``prompt`` field, a string or messages, or the prompts of a file of pairs or demonstrations
  in any layout) or a tfds prompt set, tokenized with a Hugging Face tokenizer (through its chat
  template, with the generation prompt, when asked or when the prompts are conversations).
  Over-long prompts are truncated from the left and counted; an empty file is an error.

Everything else (sampled win rates under a judge, texts in the logs) works on either.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from nlhf_jax import data
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.sources import common
from nlhf_jax.tasks.synthetic import EOS, PAD, SyntheticTask

MIN_EVAL_ROWS = 64


@dataclasses.dataclass
class PromptSource:
    """Prompts for a policy, and what is needed to sample and read its responses.

    Attributes:
      batches: ``(batch_size, seed) -> BatchIterator`` of ``{prompt, prompt_mask}`` batches.
      eval_prompts: ``[n, P]`` int32 and ``[n, P]`` bool: fixed prompts for sampled evaluation
        and for the texts written to the logs.
      eos_id: a response ends with it.
      pad_id: written after a response's EOS and left of a prompt.
      vocab_size: ids a policy must be able to emit (the tokenizer's size or the task's).
      max_new_tokens: the length of sampled responses.
      decode: ``(tokens [n], mask [n]) -> str`` of a prompt or response.
      identity: JSON description recorded in a run's ``run.json``.
      task: the synthetic task when the responses can be enumerated (exact metrics), else None.
      tokenizer: the Hugging Face tokenizer of a text source, else None.
    """

    batches: Callable[[int, int], data.BatchIterator]
    eval_prompts: tuple[np.ndarray, np.ndarray]
    eos_id: int
    pad_id: int
    vocab_size: int
    max_new_tokens: int
    decode: Callable[[np.ndarray, np.ndarray], str]
    identity: dict
    task: SyntheticTask | None = None
    tokenizer: object = None

    def texts(self, prompt, prompt_mask, response, response_mask, limit: int) -> list[dict]:
        """The first ``limit`` prompt/response pairs of a batch as text, for the logs."""
        rows = min(limit, len(prompt))
        return [
            {
                "prompt": self.decode(prompt[i], prompt_mask[i]),
                "response": self.decode(response[i], response_mask[i]),
            }
            for i in range(rows)
        ]


def synthetic_source(task: SyntheticTask, data_dir: str, eval_copies: int = 16) -> PromptSource:
    """Every prompt of the synthetic task, repeated so an epoch holds several batches (each
    batch is then a uniform shuffle over the prompts); ``eval_copies`` of each for evaluation."""
    prompts = task.prompts()

    def batches(batch_size: int, seed: int) -> data.BatchIterator:
        copies = -(-8 * batch_size // len(prompts))
        rows = np.repeat(prompts, copies, axis=0)
        name = f"synthetic_prompts_{hashlib.sha256(rows.tobytes()).hexdigest()[:12]}"
        records = ({"prompt": row} for row in rows)
        built = data.build_records({"train": records}, {"prompt": "tokens"}, data_dir, name=name)
        options = data.BatchOptions(batch_size, task.prompt_len, seed=seed)
        return data.prompt_batches(built.source("train"), options)

    symbols = (
        ["<pad>", "<bos>", "<eos>", "<sep>"]
        + [f"t{i}" for i in range(task.num_symbols)]
        + [f"y{i}" for i in range(task.num_symbols)]
    )

    def decode(tokens, mask) -> str:
        return " ".join(symbols[t] if 0 <= t < len(symbols) else f"<{t}>" for t in tokens[mask])

    eval_prompts = np.repeat(prompts, eval_copies, axis=0)
    return PromptSource(
        batches=batches,
        eval_prompts=(eval_prompts, np.ones_like(eval_prompts, bool)),
        eos_id=EOS,
        pad_id=PAD,
        vocab_size=task.vocab_size,
        max_new_tokens=task.response_len,
        decode=decode,
        identity={"task": dataclasses.asdict(task)},
        task=task,
    )


def read_prompt_texts(
    path: str, *, on_error: str = "raise", limit: int | None = None, layout: str | None = None
) -> list[dict]:
    """The ``{prompt, source}`` records of a prompts file (the first ``limit``; ``layout``:
    one of ``data.PROMPT_LAYOUTS``, default detected); an empty file (or one whose every row
    was skipped) is an error naming it."""
    skipped = data.SkippedRows()
    rows = data.readers.read_prompts(path, layout=layout, on_error=on_error, skipped=skipped)
    records = list(itertools.islice(rows, limit))
    if not records:
        why = f" ({skipped.count} malformed rows skipped)" if skipped.count else ""
        raise UserError(f"{path}: no prompts{why}; the file needs rows with a 'prompt' field")
    return records


def encode_prompt_file(
    path: str,
    tokenizer,
    *,
    max_prompt_len: int = 256,
    chat_template: bool = False,
    chat: data.ChatOptions | None = None,
) -> tuple[list[dict], np.ndarray, np.ndarray, int]:
    """A prompts file as a run would see it: its records, left-padded ``prompt [n, P]`` and
    ``prompt_mask``, and how many prompts lost their beginning (what sampling and evaluation of
    a trained run read; ``chat_template`` and ``chat`` are the run's settings)."""
    records = read_prompt_texts(path)
    options = data.BatchOptions(
        1,
        max_prompt_len,
        chat_template=chat_template,
        chat=chat or data.ChatOptions(),
        pad_id=tokenizer.pad_token_id,
    )
    tokens, mask, truncated = data.encode_prompts(records, options, tokenizer=tokenizer)
    return records, tokens, mask, truncated


def _tfds_prompt_source(spec: str, data_dir: str):
    """A tfds prompt set: a prepared dataset directory, or ``name[:split]`` of a registered
    builder prepared under ``data_dir`` (array_record; nothing is downloaded)."""
    import tensorflow_datasets as tfds

    if os.path.isdir(spec):
        return tfds.builder_from_directory(spec).as_data_source(split="train")
    name, _, split = spec.partition(":")
    try:
        return tfds.data_source(name, split=split or "train", data_dir=data_dir or None)
    except Exception as e:  # tfds raises a variety of types for an unknown or unprepared set
        raise MissingInput(f"config.data.prompts_tfds={spec!r}: {e}") from None


def text_source(
    tokenizer,
    *,
    prompts_file: str = "",
    prompts_tfds: str = "",
    eval_prompts_file: str = "",
    num_eval_prompts: int = 16,
    max_prompt_len: int = 256,
    max_new_tokens: int = 128,
    chat_template: bool = False,
    chat: data.ChatOptions | None = None,
    layout: str | None = None,
    data_dir: str,
    on_error: str = "raise",
) -> PromptSource:
    """Prompts from a file or a tfds set, tokenized with ``tokenizer``.

    Args:
      tokenizer: a Hugging Face tokenizer with EOS and pad tokens.
      prompts_file: a file or Hugging Face dataset directory of prompts, or of pairs or
        demonstrations (their prompts; exactly one of this and ``prompts_tfds``).
      prompts_tfds: a tfds dataset directory or ``name[:split]`` with a text ``prompt`` feature.
      eval_prompts_file: prompts for evaluation; default the first ``num_eval_prompts`` of the
        training prompts (the file's, in order).
      num_eval_prompts: how many evaluation prompts when no file is given.
      max_prompt_len: P; longer prompts lose their beginning (counted, logged).
      max_new_tokens: length of sampled responses.
      chat_template: render string prompts through the tokenizer's chat template (one user
        turn, or an HH transcript's turns); conversational prompts always are.
      chat: the template's variables (``data.ChatOptions``).
      layout: the prompts file's layout (``data.PROMPT_LAYOUTS``); None: detected.
      data_dir: where the tfds dataset of a prompts file is written.
      on_error: "raise" or "skip" (drop and count) malformed rows.
    """
    if bool(prompts_file) == bool(prompts_tfds):
        raise UserError(
            "name the prompts: set exactly one of config.data.prompts_file (JSONL/Parquet with "
            "a 'prompt' field) and config.data.prompts_tfds"
        )
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise UserError("config.data.chat_template=True, but the tokenizer has no chat template")
    chat = chat or data.ChatOptions()
    options = data.BatchOptions(
        1, max_prompt_len, chat_template=chat_template, chat=chat, pad_id=tokenizer.pad_token_id
    )
    if prompts_file:
        # The first rows: evaluation prompts, and an early error for an empty file.
        first = read_prompt_texts(
            prompts_file, on_error=on_error, limit=num_eval_prompts, layout=layout
        )
        description = {"prompts_file": os.path.abspath(prompts_file)}

        def records():  # built when training asks for batches (SFT only reads the first rows)
            return data.build_tokenized(
                "prompts",
                {"train": prompts_file},
                data_dir,
                tokenizer,
                chat_template=chat_template,
                chat=chat,
                layout=layout,
                on_error=on_error,
            )
    else:
        tfds_source = _tfds_prompt_source(prompts_tfds, data_dir)
        if len(tfds_source) == 0:
            raise UserError(f"config.data.prompts_tfds={prompts_tfds!r}: no prompts")
        first = [tfds_source[i] for i in range(min(num_eval_prompts, len(tfds_source)))]
        description = {"prompts_tfds": prompts_tfds}
        records = None
    if eval_prompts_file:
        eval_records = read_prompt_texts(eval_prompts_file, on_error=on_error, layout=layout)
    else:
        eval_records = first[:num_eval_prompts]
    eval_tokens, eval_mask, _ = data.encode_prompts(eval_records, options, tokenizer=tokenizer)
    # Tiled (not repeated), so the first rows stay distinct prompts for the logged texts, and
    # at least MIN_EVAL_ROWS rows, so the sampled win rate is not one draw per prompt.
    copies = -(-MIN_EVAL_ROWS // len(eval_tokens))
    eval_tokens, eval_mask = np.tile(eval_tokens, (copies, 1)), np.tile(eval_mask, (copies, 1))

    def batches(batch_size: int, seed: int) -> data.BatchIterator:
        opts = dataclasses.replace(options, batch_size=batch_size, seed=seed)
        if records is None:
            rows = tfds_source
            if len(rows) < batch_size:
                raise UserError(
                    f"config.data.prompts_tfds={prompts_tfds!r}: {len(rows)} prompts, fewer than "
                    f"one batch (config.batch_size={batch_size}); lower config.batch_size"
                )
        else:
            built = records()
            common.check_rows(prompts_file, built, batch_size, "prompts")
            rows = built.source("train")
        return data.prompt_batches(rows, opts, tokenizer=tokenizer)

    def decode(tokens, mask) -> str:
        return tokenizer.decode(
            np.asarray(tokens)[np.asarray(mask, bool)], skip_special_tokens=True
        )

    return PromptSource(
        batches=batches,
        eval_prompts=(eval_tokens, eval_mask),
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        vocab_size=len(tokenizer),
        max_new_tokens=max_new_tokens,
        decode=decode,
        identity={
            "prompts": {
                **description,
                "eval_prompts_file": eval_prompts_file and os.path.abspath(eval_prompts_file),
            },
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id,
            # Conversational prompts went through the template whatever the flag said, and
            # sampling or evaluating this run must render its prompts the same way.
            "chat_template": bool(
                chat_template or any(isinstance(r["prompt"], list) for r in first)
            ),
            "chat": dataclasses.asdict(chat),
        },
        tokenizer=tokenizer,
    )


def prompts(
    config: ml_collections.ConfigDict,
    workdir: str,
    policy_identity: dict | None = None,
    tokenizer=None,
) -> PromptSource:
    """The prompts of an online run: the synthetic task (it must be the one the SFT run, whose
    ``run.json`` is ``policy_identity``, was trained on) or the file or tfds set named in
    ``config.data``, tokenized with ``tokenizer``."""
    d = config.data
    directory = common.data_dir(config, workdir)
    if common.kind(config) == "synthetic":
        task = common.task_from_config(config)
        trained_on = (policy_identity or {}).get("task")
        if trained_on is not None and trained_on != config.task.to_dict():
            raise UserError(
                f"config.init_from={config.init_from} was trained on another synthetic task "
                f"({trained_on}) than config.task ({config.task.to_dict()})"
            )
        return synthetic_source(task, directory)
    s = config.sampling
    return text_source(
        tokenizer,
        prompts_file=d.prompts_file,
        prompts_tfds=d.prompts_tfds,
        eval_prompts_file=d.eval_prompts_file,
        num_eval_prompts=d.num_eval_prompts,
        max_prompt_len=d.max_prompt_len,
        max_new_tokens=s.max_new_tokens or d.max_response_len,
        chat_template=d.chat_template,
        chat=common.chat_options(config),
        layout=common.layout(config, data.PROMPT_LAYOUTS),
        data_dir=directory,
        on_error=d.on_error,
    )
