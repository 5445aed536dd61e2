"""Rows of preference pairs and prompts from JSONL and Parquet files, checked field by field.

Every malformed row raises `DataError` whose message starts with `file:row:field`, where `row` is
the 1-based line number in a JSONL file and the 0-based row index in a Parquet file (the numbering
each format's own tools print). With `on_error="skip"` the row is dropped instead and counted in a
`SkippedRows`, which the builders log and store in the dataset's metadata.

Normalized records:
  pairs:   {"prompt": str, "response_a": str, "response_b": str, "label": float = P(a > b),
            "source": "file:row"}
  prompts: {"prompt": str, "source": "file:row"}
  demos:   {"prompt": str, "response": str, "source": "file:row"}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Collection, Iterator
from typing import Any, Literal

from nlhf_jax.errors import MissingInput, UserError

OnError = Literal["raise", "skip"]

# Layouts of preference files, detected from the fields of the first row (or given by name).
CHOSEN_REJECTED = "chosen_rejected"  # prompt, chosen, rejected
PAIRWISE = "pairwise"  # prompt, response_a, response_b, label (0/1) or probability ([0, 1])
TLDR = "tldr"  # OpenAI TL;DR comparisons: info.post, summaries[{text}] x 2, choice (0/1)
PAIR_LAYOUTS = (CHOSEN_REJECTED, PAIRWISE, TLDR)

_MAX_KEPT_MESSAGES = 20  # skipped-row messages kept verbatim; the count covers all of them


class DataError(UserError):
    """A malformed input row; the message starts with `file:row:field`."""

    def __init__(self, path: str, row: int | str, field: str, message: str):
        self.path, self.row, self.field = path, row, field
        super().__init__(f"{path}:{row}:{field}: {message}")


@dataclasses.dataclass
class SkippedRows:
    """Rows dropped under `on_error="skip"`: the count, and the first few messages verbatim."""

    count: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)

    def add(self, error: DataError) -> None:
        self.count += 1
        if len(self.messages) < _MAX_KEPT_MESSAGES:
            self.messages.append(str(error))


def detect_layout(fields: Collection[str]) -> str | None:
    """Names the preference layout whose required fields are all present, or None."""
    fields = set(fields)
    if {"info", "summaries", "choice"} <= fields:
        return TLDR
    if {"prompt", "chosen", "rejected"} <= fields:
        return CHOSEN_REJECTED
    if {"prompt", "response_a", "response_b"} <= fields and fields & {"label", "probability"}:
        return PAIRWISE
    return None


def _iter_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Yields (line number, row), or a DataError in place of a row that is not a JSON object."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():  # blank lines (a trailing newline, say) are not rows
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                # The row is one line: its column, not json's "line 1 column N" of the row.
                why = f"invalid JSON ({e.msg} at column {e.colno})"
                yield line_no, DataError(path, line_no, "<json>", why)
                continue
            if not isinstance(row, dict):
                yield line_no, DataError(path, line_no, "<json>", "row is not a JSON object")
                continue
            yield line_no, row


def _iter_parquet(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq  # imported here: JSONL-only users need not load pyarrow

    row_index = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield row_index, row
            row_index += 1


def _parquet_columns(path: str) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".pq"))


def iter_rows(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Yields (row number, row dict or DataError) from a `.jsonl`/`.json` or `.parquet` file."""
    if not os.path.exists(path):
        raise MissingInput(f"{path}: no such file")
    return _iter_parquet(path) if _is_parquet(path) else _iter_jsonl(path)


def _get(row: dict[str, Any], field: str, path: str, row_no: int) -> Any:
    """Reads a possibly dotted field (`info.post`); a missing or null field is an error."""
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, dict) or value.get(part) is None:
            raise DataError(path, row_no, field, "missing field")
        value = value[part]
    return value


def _text(value: Any, field: str, path: str, row_no: int) -> str:
    if not isinstance(value, str):
        raise DataError(path, row_no, field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(path, row_no, field, "empty text")
    return value


def _probability(value: Any, field: str, path: str, row_no: int, *, hard: bool) -> float:
    # bool is an int in Python, and Parquet files often store hard labels as booleans.
    if not isinstance(value, (int, float)):
        raise DataError(path, row_no, field, f"not a number: {value!r}")
    number = float(value)
    if math.isnan(number) or not 0.0 <= number <= 1.0:
        raise DataError(path, row_no, field, f"{value!r} is outside [0, 1]")
    if hard and number not in (0.0, 1.0):
        raise DataError(path, row_no, field, f"{value!r} is not 0 or 1 (use `probability`)")
    return number


def _tldr_prompt(row: dict[str, Any], path: str, row_no: int) -> str:
    post = _text(_get(row, "info.post", path, row_no), "info.post", path, row_no)
    info = row["info"]
    lines = []
    # Title and subreddit are optional in the TL;DR files; the prompt format follows OpenAI's.
    if isinstance(info.get("subreddit"), str) and info["subreddit"].strip():
        lines.append(f"SUBREDDIT: r/{info['subreddit']}")
    if isinstance(info.get("title"), str) and info["title"].strip():
        lines.append(f"TITLE: {info['title']}")
    lines.append(f"POST: {post}")
    lines.append("TL;DR:")
    return "\n".join(lines)


def normalize_pair(row: dict[str, Any], layout: str, path: str, row_no: int) -> dict[str, Any]:
    """Turns one row of `layout` into the normalized pair record, or raises DataError."""
    source = f"{path}:{row_no}"
    if layout == CHOSEN_REJECTED:
        prompt = _text(_get(row, "prompt", path, row_no), "prompt", path, row_no)
        a = _text(_get(row, "chosen", path, row_no), "chosen", path, row_no)
        b = _text(_get(row, "rejected", path, row_no), "rejected", path, row_no)
        label = 1.0
    elif layout == PAIRWISE:
        prompt = _text(_get(row, "prompt", path, row_no), "prompt", path, row_no)
        a = _text(_get(row, "response_a", path, row_no), "response_a", path, row_no)
        b = _text(_get(row, "response_b", path, row_no), "response_b", path, row_no)
        # A soft probability, when present, carries more than a hard label derived from it.
        field = "probability" if row.get("probability") is not None else "label"
        value = _get(row, field, path, row_no)
        label = _probability(value, field, path, row_no, hard=field == "label")
    elif layout == TLDR:
        prompt = _tldr_prompt(row, path, row_no)
        summaries = _get(row, "summaries", path, row_no)
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise DataError(path, row_no, "summaries", "expected a list of two summaries")
        texts = []
        for i, summary in enumerate(summaries):
            name = f"summaries[{i}].text"
            if not isinstance(summary, dict):
                raise DataError(path, row_no, name, "missing field")
            texts.append(_text(_get(summary, "text", path, row_no), name, path, row_no))
        a, b = texts
        # `choice` is the index of the preferred summary, so choice 0 means a beats b.
        label = 1.0 - _probability(
            _get(row, "choice", path, row_no), "choice", path, row_no, hard=True
        )
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {PAIR_LAYOUTS}")
    return {"prompt": prompt, "response_a": a, "response_b": b, "label": label, "source": source}


def read_pairs(
    path: str,
    *,
    layout: str | None = None,
    on_error: OnError = "raise",
    skipped: SkippedRows | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields normalized preference pairs from one JSONL or Parquet file.

    Args:
      path: a `.jsonl` (one JSON object a line) or `.parquet` file.
      layout: one of `PAIR_LAYOUTS`; None detects it from the fields (Parquet: the columns;
        JSONL: the first row that is a JSON object).
      on_error: "raise" fails on the first malformed row; "skip" drops it and counts it.
      skipped: where skipped rows are counted (required with on_error="skip").

    Raises:
      DataError: a malformed row (`file:row:field: why`), with on_error="raise".
    """
    if on_error == "skip" and skipped is None:
        raise ValueError('on_error="skip" needs a SkippedRows to count into')
    if layout is None and _is_parquet(path):
        layout = detect_layout(_parquet_columns(path))
        if layout is None:
            columns = _parquet_columns(path)
            raise DataError(path, 0, "<columns>", f"columns {columns} match no layout")
    for row_no, row in iter_rows(path):
        try:
            if isinstance(row, DataError):
                raise row
            row_layout = layout or detect_layout(row)
            if row_layout is None:
                raise DataError(
                    path, row_no, "<fields>", f"fields {sorted(row)} match no layout {PAIR_LAYOUTS}"
                )
            layout = row_layout  # the first good row fixes the layout for the whole file
            record = normalize_pair(row, layout, path, row_no)
        except DataError as e:
            if on_error != "skip":
                raise
            skipped.add(e)
            continue
        yield record


def _read_text_fields(
    path: str, fields: tuple[str, ...], on_error: OnError, skipped: SkippedRows | None
) -> Iterator[dict[str, Any]]:
    if on_error == "skip" and skipped is None:
        raise ValueError('on_error="skip" needs a SkippedRows to count into')
    for row_no, row in iter_rows(path):
        try:
            if isinstance(row, DataError):
                raise row
            record = {f: _text(_get(row, f, path, row_no), f, path, row_no) for f in fields}
        except DataError as e:
            if on_error != "skip":
                raise
            skipped.add(e)
            continue
        yield {**record, "source": f"{path}:{row_no}"}


def read_prompts(
    path: str, *, on_error: OnError = "raise", skipped: SkippedRows | None = None
) -> Iterator[dict[str, Any]]:
    """Yields `{"prompt", "source"}` records from a JSONL or Parquet file with a `prompt` field.

    Args and errors as in `read_pairs`.
    """
    return _read_text_fields(path, ("prompt",), on_error, skipped)


def read_demonstrations(
    path: str, *, on_error: OnError = "raise", skipped: SkippedRows | None = None
) -> Iterator[dict[str, Any]]:
    """Yields `{"prompt", "response", "source"}` records (SFT demonstrations) from a JSONL or
    Parquet file with `prompt` and `response` fields. Args and errors as in `read_pairs`."""
    return _read_text_fields(path, ("prompt", "response"), on_error, skipped)
