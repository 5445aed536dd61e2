"""Rows from the files people have: JSONL, Parquet, and Hugging Face datasets saved to disk.

A *data path* is one of:
  * a `.jsonl` / `.json` file (one JSON object a line; rows numbered from 1, like editors do);
  * a `.parquet` / `.pq` file, e.g. `datasets.Dataset.to_parquet` (rows numbered from 0);
  * a directory written by `datasets.Dataset.save_to_disk` (`state.json` and Arrow files) or
    `DatasetDict.save_to_disk` (`dataset_dict.json`; its `train` split, or name the split's
    subdirectory), read with pyarrow alone: neither the `datasets` library nor the hub is used;
  * a directory of Parquet files (a hub snapshot's `data/`), read in name order;
  * any of these with a row range, as tfds slices splits: `pairs.jsonl[:40%]`,
    `pairs.jsonl[40%:80%]`, `data/[100:356]` (positions among the rows, from 0; a percentage is
    of the row count, rounded down, so `[:50%]` and `[50%:]` part the rows exactly). Rows keep
    their file's numbers in errors.

Every malformed row becomes a `DataError` whose message starts with `file:row:field`; with
`on_error="skip"` a reader drops it and counts it in a `SkippedRows` instead.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, Literal

from nlhf_jax.errors import MissingInput, UserError

OnError = Literal["raise", "skip"]

_MAX_KEPT_MESSAGES = 20  # skipped-row messages kept verbatim; the count covers all of them


class DataError(UserError):
    """A malformed input row; the message starts with `file:row:field`."""

    def __init__(self, path: str, row: int | str, field: str, message: str):
        self.path, self.row, self.field, self.message = path, row, field, message
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


def _iter_parquet(paths: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq  # imported here: JSONL-only users need not load pyarrow

    row_index = 0
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield row_index, row
                row_index += 1


def _iter_arrow(paths: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """`save_to_disk`'s shards are Arrow IPC streams; rows are numbered across shards."""
    import pyarrow as pa

    row_index = 0
    for path in paths:
        with pa.memory_map(path) as stream:
            for batch in pa.ipc.open_stream(stream):
                for row in batch.to_pylist():
                    yield row_index, row
                    row_index += 1


def _hf_dataset_dir(path: str) -> str:
    """The `Dataset.save_to_disk` directory a path names: itself, or a DatasetDict's train."""
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as f:
            splits = json.load(f).get("splits", [])
        if "train" not in splits:
            raise UserError(
                f"{path}: a DatasetDict without a 'train' split (splits {splits}); name one, "
                f"e.g. {os.path.join(path, splits[0] if splits else 'SPLIT')}"
            )
        return os.path.join(path, "train")
    return path


_ROW_RANGE = re.compile(r"^(?P<path>.+)\[(?P<start>\d*%?):(?P<stop>\d*%?)\]$")


def row_range(path: str) -> tuple[str, str]:
    """A data path without its row range, and the range (``"[a:b]"``, or "" for all rows).

    A path that exists as written is never taken for a range (a file named ``x[1:2]``)."""
    match = _ROW_RANGE.match(path)
    if match is None or os.path.exists(path):
        return path, ""
    return match["path"], path[len(match["path"]) :]


def _bounds(path: str, spec: str, count: Callable[[], int]) -> tuple[int, int | None]:
    """A row range's [start, stop) positions; a percentage counts the rows first."""
    start, stop = spec[1:-1].split(":")
    rows = count() if start.endswith("%") or stop.endswith("%") else None

    def position(text: str, default: int | None) -> int | None:
        if not text:
            return default
        if not text.endswith("%"):
            return int(text)
        percent = int(text[:-1])
        if percent > 100:
            raise UserError(f"{path}{spec}: {text} is more than all the rows")
        return rows * percent // 100

    first, last = position(start, 0), position(stop, None)
    if last is not None and last <= first:
        raise UserError(f"{path}{spec}: the range holds no rows (it ends where it starts)")
    return first, last


def data_files(path: str) -> tuple[str, list[str]]:
    """The format (`jsonl`, `parquet` or `arrow`) of a data path and the files holding its rows
    (a row range is dropped: `iter_rows` applies it).

    Raises:
      MissingInput: the path does not exist, or a directory holds no dataset.
    """
    path = row_range(path)[0]
    if not os.path.exists(path):
        raise MissingInput(f"{path}: no such file")
    if os.path.isdir(path):
        directory = _hf_dataset_dir(path)
        state = os.path.join(directory, "state.json")
        if os.path.isfile(state):
            with open(state, encoding="utf-8") as f:
                shards = [d["filename"] for d in json.load(f).get("_data_files", [])]
            return "arrow", [os.path.join(directory, s) for s in shards]
        parquet = sorted(glob.glob(os.path.join(directory, "*.parquet")))
        if parquet:
            return "parquet", parquet
        raise MissingInput(
            f"{path}: a directory without a dataset (expected datasets' save_to_disk files: "
            "state.json or dataset_dict.json, or *.parquet files)"
        )
    if path.endswith((".parquet", ".pq")):
        return "parquet", [path]
    return "jsonl", [path]


def input_files(path: str) -> list[str]:
    """Every file whose content a data path's rows depend on (for fingerprints)."""
    kind, files = data_files(path)
    if kind == "arrow":  # the shard list itself lives in state.json
        files = [os.path.join(_hf_dataset_dir(path), "state.json"), *files]
    return files


def _iter_all(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    kind, files = data_files(path)
    if kind == "jsonl":
        return _iter_jsonl(files[0])
    return _iter_parquet(files) if kind == "parquet" else _iter_arrow(files)


def iter_rows(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Yields (row number, row dict or DataError) from any data path (module docstring), only
    the rows of its range if it names one."""
    path, spec = row_range(path)
    rows = _iter_all(path)
    if not spec:
        return rows
    first, last = _bounds(path, spec, lambda: sum(1 for _ in _iter_all(path)))
    return itertools.islice(rows, first, last)
