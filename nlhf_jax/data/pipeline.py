"""grain pipelines: records -> ids -> truncate -> pad -> shuffle -> this process's rows -> batch.

Batches are dicts of numpy arrays with fixed shapes (so a jitted step compiles once):
  pairs:   prompt [b, P] int32, prompt_mask [b, P] bool, response_a [b, R] int32,
           response_a_mask [b, R] bool, response_b [b, R] int32, response_b_mask [b, R] bool,
           label [b] float32 (P(a > b))
  sft:     prompt, prompt_mask, response [b, R] int32, response_mask [b, R] bool, and, when
           the records mark untrained tokens (`response_train`, SFT on every assistant turn),
           response_loss_mask [b, R] bool: the tokens the loss counts
  prompts: prompt, prompt_mask
Prompts are LEFT-padded (every prompt ends at column P-1, where generation continues) and
truncated from the left (the end of a prompt is what the response answers); responses are
RIGHT-padded and truncated from the right. `b` is this process's share of the batch: the
global batch size over the number of processes (every process walks the same shuffled global
stream and reads only its own rows of each batch).

An integer sequence is taken as token ids (the tokenized datasets training builds,
`nlhf_jax.data.tokenized`). A text field (str or bytes, as tfds data sources return it) is
tokenized here, record by record: a prompt as `nlhf_jax.data.chat` renders it (through the chat
template with `chat_template`), a response as raw text. The iterator's `get_state()` is
JSON-serialisable and `set_state()` resumes at exactly the next batch, epochs included.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import grain
import numpy as np

from nlhf_jax.data.chat import ChatEncoder, ChatOptions

_log = logging.getLogger(__name__)

# The record fields each kind of batch reads, besides the prompt.
_RESPONSES = {"pairs": ("response_a", "response_b"), "sft": ("response",), "prompts": ()}
_FLAG_PROMPT = "_truncated_prompt"  # per-example flags, counted by BatchIterator then removed
_FLAG_RESPONSES = "_truncated_responses"


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """Settings of a batch pipeline.

    Attributes:
      batch_size: examples per global batch (each of the P processes gets batch_size / P).
      max_prompt_len: P, the padded prompt length.
      max_response_len: R, the padded response length (unused for prompt-only batches).
      seed: shuffle seed; each epoch gets its own permutation derived from it.
      num_epochs: passes over the data; None repeats forever.
      shuffle: False keeps the source order (evaluation).
      append_eos: append the EOS id to every response before truncation, so that a truncated
        response has no EOS (it did not end there) and a complete one does.
      on_long_prompt: "truncate" (counted, logged) or "error" (fail naming the file and row).
      drop_remainder: drop a last, smaller batch of each run so every batch has b rows.
      pad_id: the padding id (default: the tokenizer's pad id, else 0); masks mark real tokens.
      eos_id: the EOS id for `append_eos` (default: the tokenizer's).
      chat_template: render each text prompt through the tokenizer's chat template (one user
        turn, or an HH transcript's turns), with the generation prompt (`nlhf_jax.data.chat`).
      chat: the template's variables (a fixed date, Qwen3's thinking switch).
      num_threads: grain prefetch threads; the batches do not depend on it.
      prefetch_buffer_size: batches grain prepares ahead. A few cover a step; each one more is
        work done again, or lost, whenever an iterator is made (every evaluation, a resume).
    """

    batch_size: int
    max_prompt_len: int
    max_response_len: int = 0
    seed: int = 0
    num_epochs: int | None = None
    shuffle: bool = True
    append_eos: bool = False
    on_long_prompt: Literal["truncate", "error"] = "truncate"
    drop_remainder: bool = True
    pad_id: int | None = None
    eos_id: int | None = None
    chat_template: bool = False
    chat: ChatOptions = dataclasses.field(default_factory=ChatOptions)
    num_threads: int = 2
    prefetch_buffer_size: int = 4


class _Encode:
    """Turns one record into padded numpy arrays; a plain class so grain can pickle it."""

    def __init__(self, kind: str, options: BatchOptions, tokenizer, pad_id: int, eos_id: int):
        self.kind, self.options, self.tokenizer = kind, options, tokenizer
        self.pad_id, self.eos_id = pad_id, eos_id
        self.chat = ChatEncoder(
            tokenizer, chat_template=options.chat_template, options=options.chat
        )

    def _ids(self, record: Mapping[str, Any], field: str, where: str) -> np.ndarray:
        if field not in record:
            raise ValueError(f"{where}:{field}: missing field (record has {sorted(record)})")
        value = record[field]
        is_messages = isinstance(value, list) and value and isinstance(value[0], Mapping)
        if isinstance(value, (bytes, str)) or is_messages:
            if self.tokenizer is None:
                raise ValueError(f"{where}:{field}: text record, but no tokenizer was given")
            text = value.decode("utf-8") if isinstance(value, bytes) else value
            if field == "prompt":
                return self.chat.prompt_ids(text)
            if is_messages:
                raise ValueError(f"{where}:{field}: messages; build a tokenized dataset")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            return np.asarray(ids, dtype=np.int32)
        return np.asarray(value, dtype=np.int32).reshape(-1)

    def __call__(self, index: int, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        source = record.get("source")
        if isinstance(source, bytes):
            source = source.decode("utf-8")
        where = source or f"record {index}"
        opts = self.options
        out: dict[str, np.ndarray] = {}

        prompt = self._ids(record, "prompt", where)
        if prompt.size == 0:
            raise ValueError(f"{where}:prompt: no tokens")
        long_prompt = prompt.size > opts.max_prompt_len
        if long_prompt and opts.on_long_prompt == "error":
            raise ValueError(
                f"{where}:prompt: {prompt.size} tokens, longer than max_prompt_len="
                f"{opts.max_prompt_len}"
            )
        prompt = prompt[-opts.max_prompt_len :]
        out["prompt"], out["prompt_mask"] = _pad_left(prompt, opts.max_prompt_len, self.pad_id)
        out[_FLAG_PROMPT] = np.bool_(long_prompt)

        truncated = 0
        for field in _RESPONSES[self.kind]:
            response = self._ids(record, field, where)
            if opts.append_eos:
                response = np.append(response, np.int32(self.eos_id))
            if response.size == 0:
                raise ValueError(f"{where}:{field}: no tokens")
            truncated += response.size > opts.max_response_len
            response = response[: opts.max_response_len]
            out[field], out[f"{field}_mask"] = _pad_right(
                response, opts.max_response_len, self.pad_id
            )
            if f"{field}_train" in record and self.kind == "sft":
                # The tokens the loss counts; an appended EOS is trained, padding is not.
                train = np.asarray(record[f"{field}_train"], bool).reshape(-1)
                if opts.append_eos:
                    train = np.append(train, True)
                out[f"{field}_loss_mask"] = np.zeros(opts.max_response_len, bool)
                train = train[: opts.max_response_len]
                out[f"{field}_loss_mask"][: train.size] = train
        out[_FLAG_RESPONSES] = np.int32(truncated)
        if self.kind == "pairs":
            label = float(np.asarray(record["label"]))
            if not 0.0 <= label <= 1.0:  # also catches NaN
                raise ValueError(f"{where}:label: {label} is outside [0, 1]")
            out["label"] = np.float32(label)
        return out


def encode_prompts(
    records: Sequence[Mapping[str, Any]], options: BatchOptions, *, tokenizer=None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Prompt records -> left-padded ``prompt [n, P]``, ``prompt_mask [n, P]`` and the number of
    prompts truncated from the left; the same encoding as `prompt_batches`, without a pipeline
    (for a fixed set: evaluation prompts, the prompts of ``python -m nlhf_jax.sample``)."""
    pad_id, eos_id = _special_ids(options, tokenizer)
    encode = _Encode("prompts", options, tokenizer, pad_id, eos_id)
    rows = [encode(i, r) for i, r in enumerate(records)]
    if not rows:
        raise ValueError("encode_prompts: no records")
    tokens = np.stack([r["prompt"] for r in rows])
    mask = np.stack([r["prompt_mask"] for r in rows])
    return tokens, mask, int(sum(bool(r[_FLAG_PROMPT]) for r in rows))


def _special_ids(options: BatchOptions, tokenizer) -> tuple[int, int | None]:
    pad_id = options.pad_id
    if pad_id is None:
        pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    eos_id = (
        options.eos_id if options.eos_id is not None else getattr(tokenizer, "eos_token_id", None)
    )
    return pad_id, eos_id


def _pad_left(ids_n: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens_l = np.full(length, pad_id, np.int32)
    mask_l = np.zeros(length, bool)
    if ids_n.size:
        tokens_l[-ids_n.size :] = ids_n
        mask_l[-ids_n.size :] = True
    return tokens_l, mask_l


def _pad_right(ids_n: np.ndarray, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens_l = np.full(length, pad_id, np.int32)
    mask_l = np.zeros(length, bool)
    tokens_l[: ids_n.size] = ids_n
    mask_l[: ids_n.size] = True
    return tokens_l, mask_l


class BatchIterator:
    """Iterates numpy batches; counts and logs truncation; checkpoints with get/set_state.

    Attributes:
      counts: examples served, prompts truncated and responses truncated, over the whole run
        (restored by `set_state`, so they survive a restart).
    """

    def __init__(self, dataset: grain.IterDataset, options: BatchOptions):
        self._iterator = iter(dataset)
        self._options = options
        self.counts = {"examples": 0, "truncated_prompts": 0, "truncated_responses": 0}

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iterator)
        # Counted when a batch is consumed (not when prefetched), so counts match the state.
        prompts = int(np.sum(batch.pop(_FLAG_PROMPT)))
        responses = int(np.sum(batch.pop(_FLAG_RESPONSES)))
        before = dict(self.counts)
        self.counts["examples"] += len(batch["prompt"])
        self.counts["truncated_prompts"] += prompts
        self.counts["truncated_responses"] += responses
        for key, limit in (
            ("truncated_prompts", self._options.max_prompt_len),
            ("truncated_responses", self._options.max_response_len),
        ):
            # Log the first truncation and then each doubling: a count, not a line per example.
            if self.counts[key] and _crossed_power_of_two(before[key], self.counts[key]):
                _log.warning(
                    "%s so far: %d (of %d examples served; limit %d tokens)",
                    key.replace("_", " "),
                    self.counts[key],
                    self.counts["examples"],
                    limit,
                )
        return batch

    def get_state(self) -> dict[str, Any]:
        """A JSON-serialisable state: grain's iterator state plus the counts."""
        return {"grain": self._iterator.get_state(), "counts": dict(self.counts)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Restores `get_state()`: the next batch is the one an uninterrupted run would yield."""
        self._iterator.set_state(state["grain"])
        self.counts = dict(state["counts"])


def _crossed_power_of_two(before: int, after: int) -> bool:
    return before == 0 or before.bit_length() < after.bit_length()


class _ProcessRows(grain.MapDataset):
    """This process's rows of each global batch: rows ``[k b, (k + 1) b)`` of every
    ``b * process_count`` consecutive elements of ``parent``, for process k. Random access, so
    only these rows are ever read and encoded."""

    def __init__(self, parent: grain.MapDataset, local: int, index: int, count: int):
        super().__init__(parent)
        self._local, self._index, self._global = local, index, local * count
        self._length = len(parent) // self._global * local

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        step, row = divmod(i, self._local)
        return self._parent[step * self._global + self._index * self._local + row]


def _batches(
    kind: str,
    source: Sequence[Mapping[str, Any]],
    options: BatchOptions,
    tokenizer,
    process_index: int | None,
    process_count: int | None,
) -> BatchIterator:
    if kind != "prompts" and options.max_response_len <= 0:
        raise ValueError(f"{kind} batches need max_response_len > 0")
    if options.on_long_prompt not in ("truncate", "error"):
        raise ValueError(f"on_long_prompt must be 'truncate' or 'error': {options.on_long_prompt}")
    pad_id, eos_id = _special_ids(options, tokenizer)
    if options.append_eos and eos_id is None:
        raise ValueError("append_eos needs eos_id or a tokenizer with an EOS token")
    if process_index is None or process_count is None:
        import jax  # only here: passing both makes the pipeline usable without a jax backend

        process_index, process_count = jax.process_index(), jax.process_count()

    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if options.batch_size % process_count:
        raise ValueError(
            f"batch_size {options.batch_size} is not divisible by the {process_count} processes"
        )
    encode = _Encode(kind, options, tokenizer, pad_id, eos_id)
    # The index is attached before shuffling, so errors name the source record.
    dataset = grain.MapDataset.source(source).map_with_index(encode)
    if len(dataset) < options.batch_size and options.drop_remainder:
        raise ValueError(f"{len(dataset)} records, fewer than one batch ({options.batch_size})")
    if options.shuffle:
        dataset = dataset.shuffle(seed=options.seed)  # a new permutation each epoch (reseeded)
    if options.num_epochs != 1:
        dataset = dataset.repeat(options.num_epochs)
    # Every process walks the same global stream and keeps its rows of each global batch: the
    # run sees the batches of a one-process run, and the iterator state (batches consumed) is
    # the same in every process and for any process count, so a checkpoint resumes anywhere.
    local = options.batch_size // process_count
    if process_count > 1:
        dataset = _ProcessRows(dataset, local, process_index, process_count)
    # Batching after repeat lets a batch span an epoch boundary; no record is dropped except
    # at the very end of a finite run (drop_remainder).
    dataset = dataset.batch(local, drop_remainder=options.drop_remainder)
    read_options = grain.ReadOptions(
        num_threads=options.num_threads, prefetch_buffer_size=options.prefetch_buffer_size
    )
    return BatchIterator(dataset.to_iter_dataset(read_options), options)


def preference_batches(
    source: Sequence[Mapping[str, Any]],
    options: BatchOptions,
    *,
    tokenizer=None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """Batches of preference pairs from records `{prompt, response_a, response_b, label}`.

    Args:
      source: a random-access source (`len`, `[i]`), e.g. `BuiltDataset.source("train")`.
      options: lengths, batch size, shuffling, epochs.
      tokenizer: an HF tokenizer for text fields; not needed when the fields are token ids.
      process_index: this host (default `jax.process_index()`).
      process_count: number of hosts (default `jax.process_count()`).

    Returns:
      An iterator of `{prompt, prompt_mask, response_a, response_a_mask, response_b,
      response_b_mask, label}` batches (shapes in the module docstring).
    """
    return _batches("pairs", source, options, tokenizer, process_index, process_count)


def sft_batches(
    source: Sequence[Mapping[str, Any]],
    options: BatchOptions,
    *,
    tokenizer=None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """Batches of demonstrations `{prompt, response}`; arguments as in `preference_batches`.

    Returns:
      An iterator of `{prompt, prompt_mask, response, response_mask}` batches.
    """
    return _batches("sft", source, options, tokenizer, process_index, process_count)


def prompt_batches(
    source: Sequence[Mapping[str, Any]],
    options: BatchOptions,
    *,
    tokenizer=None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """Batches of prompts `{prompt}`; arguments as in `preference_batches`.

    Returns:
      An iterator of `{prompt, prompt_mask}` batches.
    """
    return _batches("prompts", source, options, tokenizer, process_index, process_count)
