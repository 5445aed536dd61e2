"""Preference pairs, prompts and demonstrations from data files, checked field by field.

The files (`nlhf_jax.data.files`): JSONL, Parquet, and Hugging Face datasets saved to disk.
The layouts and the records they become (`nlhf_jax.data.layouts`): TRL's standard and
conversational formats, TL;DR comparisons and HH-RLHF transcripts.

Every malformed row raises `DataError` whose message starts with `file:row:field`, where `row` is
the 1-based line number in a JSONL file and the 0-based row index in a Parquet or Arrow file
(the numbering each format's own tools print). With `on_error="skip"` the row is dropped instead
and counted in a `SkippedRows`, which the builders log and store in the dataset's metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from nlhf_jax.data import layouts
from nlhf_jax.data.files import (
    DataError,
    OnError,
    SkippedRows,
    data_files,
    iter_rows,
    row_range,
)
from nlhf_jax.data.layouts import (
    CHOSEN_REJECTED,
    DEMO_LAYOUTS,
    HH,
    IMPLICIT_PROMPT,
    PAIR_LAYOUTS,
    PAIRWISE,
    PROMPT_LAYOUTS,
    TLDR,
    detect_layout,
    normalize_pair,
)
from nlhf_jax.errors import MissingInput

__all__ = [
    "CHOSEN_REJECTED",
    "DEMO_LAYOUTS",
    "HH",
    "IMPLICIT_PROMPT",
    "PAIRWISE",
    "PAIR_LAYOUTS",
    "PROMPT_LAYOUTS",
    "TLDR",
    "DataError",
    "MissingInput",
    "OnError",
    "SkippedRows",
    "data_files",
    "detect_layout",
    "iter_rows",
    "normalize_pair",
    "read_demonstrations",
    "read_pairs",
    "read_prompts",
]


# What a refused row's message ends with: the key that skips such rows instead.
SKIP_HINT = " (--config.data.on_error=skip skips such rows and counts them)"


def _read(
    path: str,
    layout: str | None,
    known: tuple[str, ...],
    detect: Callable[[dict], str | None],
    normalize: Callable[[dict, str, str, int], dict],
    on_error: OnError,
    skipped: SkippedRows | None,
) -> Iterator[dict[str, Any]]:
    if on_error == "skip" and skipped is None:
        raise ValueError('on_error="skip" needs a SkippedRows to count into')
    if layout is not None and layout not in known:
        raise ValueError(f"unknown layout {layout!r}; expected one of {known}")
    rows = iter_rows(path)
    path = row_range(path)[0]  # errors and sources name the file and its own row numbers
    for row_no, row in rows:
        try:
            if isinstance(row, DataError):
                raise row
            row_layout = layout or detect(row)
            if row_layout is None:
                raise DataError(
                    path, row_no, "<fields>", f"fields {sorted(row)} match no layout {known}"
                )
            layout = row_layout  # the first row with a layout fixes it for the whole file
            record = normalize(row, layout, path, row_no)
        except DataError as e:
            if (
                on_error != "skip"
            ):  # the way past it, for data as published (HH-RLHF's empty replies)
                raise DataError(e.path, e.row, e.field, e.message + SKIP_HINT) from None
            skipped.add(e)
            continue
        yield record


def read_pairs(
    path: str,
    *,
    layout: str | None = None,
    on_error: OnError = "raise",
    skipped: SkippedRows | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields normalized preference pairs from one data path.

    Args:
      path: a JSONL or Parquet file, or a Hugging Face dataset directory (`files`).
      layout: one of `PAIR_LAYOUTS`; None detects it from the first row (`detect_layout`).
      on_error: "raise" fails on the first malformed row; "skip" drops it and counts it.
      skipped: where skipped rows are counted (required with on_error="skip").

    Raises:
      DataError: a malformed row (`file:row:field: why`), with on_error="raise".
    """
    return _read(path, layout, PAIR_LAYOUTS, detect_layout, normalize_pair, on_error, skipped)


def read_prompts(
    path: str,
    *,
    layout: str | None = None,
    on_error: OnError = "raise",
    skipped: SkippedRows | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields `{"prompt", "source"}` records: a file's `prompt` field (a string or messages), or
    the prompts of a file of pairs or demonstrations in any layout (`PROMPT_LAYOUTS`).

    Args and errors as in `read_pairs`.
    """
    return _read(
        path,
        layout,
        PROMPT_LAYOUTS,
        layouts.detect_prompt_layout,
        layouts.normalize_prompt,
        on_error,
        skipped,
    )


def read_demonstrations(
    path: str,
    *,
    layout: str | None = None,
    turns: str = "last",
    on_error: OnError = "raise",
    skipped: SkippedRows | None = None,
) -> Iterator[dict[str, Any]]:
    """Yields `{"prompt", "response", "source"}` records (SFT demonstrations) in any of
    `DEMO_LAYOUTS`: `prompt`/`response`, `prompt`/`completion`, or `messages`.

    Args:
      turns: for `messages`, "last" (train the final assistant turn) or "all" (every assistant
        turn; see `layouts.normalize_demo`).
      Others as in `read_pairs`.
    """

    def normalize(row, layout, path, row_no):
        return layouts.normalize_demo(row, layout, path, row_no, turns=turns)

    return _read(
        path, layout, DEMO_LAYOUTS, layouts.detect_demo_layout, normalize, on_error, skipped
    )
