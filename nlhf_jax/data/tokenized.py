"""Tokenized datasets: data files read, rendered (chat template) and tokenized once, at build time.

What training reads. Tokenizing inside the grain pipeline costs every epoch, one record at a
time; here records are encoded in chunks (one batched fast-tokenizer call per chunk, which the
tokenizers library spreads over the cores) while tfds writes the previous chunk, and the
pipeline only pads and truncates. Measured by `benchmarks/tokenize_files.py`.

A dataset is named by a hash of its input files (paths, sizes, mtimes), the tokenizer (its
vocabulary, merges, special tokens and chat template), the template settings and the layout:
changing any of them gives a new dataset, and a rerun of the same command reuses the old one,
so an interrupted run resumes on exactly the records it was reading. Records:

  pairs:   prompt, response_a, response_b (int32 ids), label (float32), source (file:row)
  demos:   prompt, response, source; with `turns="all"` also response_train (bool per token)
  prompts: prompt, source

Responses end with the EOS id (the template's end-of-turn token, or appended to raw text).
"""

from __future__ import annotations

import abc
import concurrent.futures
import hashlib
import json
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from nlhf_jax.data import builders, readers
from nlhf_jax.data.chat import ChatEncoder, ChatOptions
from nlhf_jax.data.files import DataError

# Bump when the encoding of a record changes: datasets built by older code are then rebuilt.
ENCODING_VERSION = 1
_CHUNK = 512  # records per batched tokenizer call

_TOKENS = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    chunk: list[dict] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _TokenizedFiles(builders._FileRowsBuilder, skip_registration=True):
    """Reads rows as the text builders do, then encodes them chunk by chunk."""

    KIND = ""

    def __init__(self, *, tokenizer, chat_template: bool, chat: ChatOptions, layout, **kwargs):
        self._encoder = ChatEncoder(tokenizer, chat_template=chat_template, options=chat)
        self._layout = layout
        super().__init__(**kwargs)

    @abc.abstractmethod
    def _rows(self, path: str, skipped: readers.SkippedRows) -> Iterator[dict]:
        """The rows of the file ``path`` in this builder's layout, refused rows counted."""

    def _generate_examples(self, split: str):
        # Counted per split and stored with the dataset: a run whose rows were conversations
        # renders its later prompts (sampling, evaluation) through the template too.
        start = self._encoder.templated_rows
        yield from super()._generate_examples(split)
        counts = dict(self.info.metadata.get("templated_rows", {}))
        counts[split] = self._encoder.templated_rows - start
        self.info.metadata["templated_rows"] = counts

    def _read(self, path, skipped):
        keep = set(self._features().keys())
        # One chunk is encoded on a worker thread while this one hands the last to tfds: the
        # tokenizer runs without the GIL, so the two overlap.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = None
            for chunk in _chunks(self._rows(path, skipped), _CHUNK):
                future = pool.submit(self._encoder.encode, self.KIND, chunk)
                if pending is not None:
                    yield from self._kept(pending.result(), keep, skipped)
                pending = future
            if pending is not None:
                yield from self._kept(pending.result(), keep, skipped)

    def _kept(self, encoded, keep, skipped):
        for record in encoded:
            if isinstance(record, DataError):
                if self._on_error != "skip":
                    raise record
                skipped.add(record)
                continue
            yield {k: v for k, v in record.items() if k in keep}


class TokenizedPairs(_TokenizedFiles):
    """Preference pairs as token ids (any layout of `readers.PAIR_LAYOUTS`)."""

    KIND = "pairs"

    def _features(self):
        return tfds.features.FeaturesDict(
            {
                "prompt": _TOKENS(),
                "response_a": _TOKENS(),
                "response_b": _TOKENS(),
                "label": tfds.features.Scalar(dtype=np.float32),
                "source": tfds.features.Text(),
            }
        )

    def _rows(self, path, skipped):
        return readers.read_pairs(
            path, layout=self._layout, on_error=self._on_error, skipped=skipped
        )


class TokenizedDemonstrations(_TokenizedFiles):
    """SFT demonstrations as token ids (any layout of `readers.DEMO_LAYOUTS`)."""

    KIND = "demos"

    def __init__(self, *, turns: str = "last", **kwargs):
        if turns not in ("last", "all"):
            raise ValueError(f"turns must be 'last' or 'all', got {turns!r}")
        self._turns = turns
        super().__init__(**kwargs)

    def _features(self):
        features = {"prompt": _TOKENS(), "response": _TOKENS(), "source": tfds.features.Text()}
        if self._turns == "all":
            features["response_train"] = tfds.features.Tensor(shape=(None,), dtype=np.bool_)
        return tfds.features.FeaturesDict(features)

    def _rows(self, path, skipped):
        return readers.read_demonstrations(
            path, layout=self._layout, turns=self._turns, on_error=self._on_error, skipped=skipped
        )


class TokenizedPrompts(_TokenizedFiles):
    """Prompts as token ids, rendered with the generation prompt (`readers.read_prompts`)."""

    KIND = "prompts"

    def _features(self):
        return tfds.features.FeaturesDict({"prompt": _TOKENS(), "source": tfds.features.Text()})

    def _rows(self, path, skipped):
        return readers.read_prompts(
            path, layout=self._layout, on_error=self._on_error, skipped=skipped
        )


_BUILDERS = {"pairs": TokenizedPairs, "demos": TokenizedDemonstrations, "prompts": TokenizedPrompts}


def tokenizer_digest(tokenizer) -> str:
    """A hash of everything that decides a tokenizer's ids: vocabulary, merges, normalization,
    special tokens and chat template."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:  # a slow (Python) tokenizer: its vocabulary stands for it
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    digest.update(json.dumps([special, tokenizer.chat_template or ""], sort_keys=True).encode())
    return digest.hexdigest()


def build_tokenized(
    kind: str,
    files: builders.Files,
    data_dir: str,
    tokenizer,
    *,
    chat_template: bool = False,
    chat: ChatOptions | None = None,
    layout: str | None = None,
    turns: str = "last",
    on_error: readers.OnError = "raise",
    overwrite: bool = False,
) -> builders.BuiltDataset:
    """Builds (or reuses) the tokenized dataset of data files.

    Args:
      kind: "pairs", "demos" (SFT) or "prompts".
      files: one path, a list of paths (split "train"), or `{split: path or paths}`; each a
        JSONL/Parquet file or a Hugging Face dataset directory (`nlhf_jax.data.files`).
      data_dir: root directory; the dataset goes to
        `data_dir/tokenized_{pairs,demonstrations,prompts}/<hash>/1.0.0`.
      tokenizer: a Hugging Face tokenizer with an EOS token.
      chat_template: render string rows through the tokenizer's chat template too
        (conversational rows always are).
      chat: the template variables (`ChatOptions`: the date, Qwen3's thinking switch).
      layout: the files' layout (`readers.PAIR_LAYOUTS`, `DEMO_LAYOUTS`, `PROMPT_LAYOUTS`), or
        None to detect it from the first row.
      turns: demos in the `messages` layout: "last" or "all" assistant turns trained.
      on_error: "raise" stops at the first malformed row; "skip" drops and counts such rows.
      overwrite: rebuild even if the dataset exists.

    Returns:
      The dataset's directory, example counts and skipped-row counts.

    Raises:
      readers.DataError: a malformed row (`file:row:field: why`) with on_error="raise"; nothing
        is left on disk.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"kind must be one of {sorted(_BUILDERS)}, got {kind!r}")
    chat = chat or ChatOptions()
    split_files = builders._split_files(files)
    settings = {
        "kind": kind,
        "inputs": builders.input_fingerprint(split_files),
        "tokenizer": tokenizer_digest(tokenizer),
        "chat_template": bool(chat_template),
        "chat": chat.template_kwargs(),
        "layout": layout,
        "turns": turns if kind == "demos" else None,
        "on_error": on_error,
        "version": ENCODING_VERSION,
    }
    name = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    extra = {"turns": turns} if kind == "demos" else {}
    return builders._build_from_files(
        _BUILDERS[kind],
        split_files,
        data_dir,
        name,
        overwrite,
        tokenizer=tokenizer,
        chat_template=chat_template,
        chat=chat,
        layout=layout,
        on_error=on_error,
        **extra,
    )
