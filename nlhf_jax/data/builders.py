"""tfds builders that need no TensorFlow: array_record files, read back with `as_data_source`.

Three text builders, each written under `data_dir/<builder>/<name>/<version>`, for rows whose
prompts and responses are strings (conversational rows need a tokenizer: `tokenized`):
  * `PreferencePairs`: preference files in any layout of `readers.PAIR_LAYOUTS`.
  * `Prompts`: files with prompts (`readers.read_prompts`).
  * `Demonstrations`: SFT files (`readers.DEMO_LAYOUTS`).
Each input is a data path of `nlhf_jax.data.files` (JSONL, Parquet, a Hugging Face dataset
directory). `nlhf_jax.data.tokenized` holds the builders training uses (tokenized at build
time) and `nlhf_jax.data.generated` `GeneratedRecords`: records from Python iterables.

Records keep the order of the input (`disable_shuffling=True`); the grain pipeline shuffles.
Atomicity: tfds writes into `incomplete.*` beside the final directory and renames it only after
every split is written, and deletes it when generation raises, so a failed build leaves nothing
that a later run would load (tested in tests/data/test_builders.py).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from nlhf_jax.data import files as data_files
from nlhf_jax.data import readers
from nlhf_jax.errors import UserError

_log = logging.getLogger(__name__)

VERSION = tfds.core.Version("1.0.0")

Files = str | Sequence[str] | Mapping[str, str | Sequence[str]]


@dataclasses.dataclass(frozen=True)
class BuiltDataset:
    """A dataset on disk.

    Attributes:
      dataset_dir: the directory `tfds.builder_from_directory` reads (ends in the version).
      num_examples: examples written per split.
      skipped: rows dropped per split under `on_error="skip"` (0 with "raise").
      skipped_messages: the first few `file:row:field: why` messages per split.
      templated_rows: rows rendered through a chat template per split (tokenized datasets).
    """

    dataset_dir: str
    num_examples: dict[str, int]
    skipped: dict[str, int]
    skipped_messages: dict[str, list[str]]
    templated_rows: dict[str, int] = dataclasses.field(default_factory=dict)

    def source(self, split: str = "train"):
        """The split as a random-access source (`len`, `[i]`) of numpy dicts, for grain."""
        return load_source(self.dataset_dir, split)


def load_source(dataset_dir: str, split: str = "train"):
    """Opens one split of a built dataset as a random-access source; text fields are bytes."""
    return tfds.builder_from_directory(dataset_dir).as_data_source(split=split)


def load_dataset(dataset_dir: str) -> BuiltDataset:
    """Describes a dataset that an earlier build wrote to `dataset_dir`."""
    info = tfds.builder_from_directory(dataset_dir).info
    return _describe(dataset_dir, info)


def _describe(dataset_dir: str, info: tfds.core.DatasetInfo) -> BuiltDataset:
    metadata = dict(info.metadata or {})
    return BuiltDataset(
        dataset_dir=str(dataset_dir),
        num_examples={name: split.num_examples for name, split in info.splits.items()},
        skipped=dict(metadata.get("skipped_rows", {})),
        skipped_messages=dict(metadata.get("skipped_messages", {})),
        templated_rows=dict(metadata.get("templated_rows", {})),
    )


def _split_files(files: Files) -> dict[str, list[str]]:
    if isinstance(files, str):
        return {"train": [files]}
    if isinstance(files, Mapping):
        return {k: [v] if isinstance(v, str) else list(v) for k, v in files.items()}
    return {"train": list(files)}


def input_fingerprint(files: dict[str, list[str]]) -> dict[str, list[list[Any]]]:
    """Path, size and mtime of every input file (a dataset directory: of each of its files), and
    the row range a path names: a reused dataset must come from the same rows of the same files."""
    return {
        split: [
            [os.path.abspath(f), os.path.getsize(f), os.path.getmtime(f)]
            + ([data_files.row_range(p)[1]] if data_files.row_range(p)[1] else [])
            for p in paths
            for f in data_files.input_files(p)
        ]
        for split, paths in files.items()
    }


def files_dataset_name(files: dict[str, str]) -> str:
    """A dataset name from input files' paths, sizes and mtimes (``{split: path}``): an edited
    file gets a new dataset, an unchanged one reuses the one built before."""
    fingerprint = json.dumps(input_fingerprint({k: [v] for k, v in files.items()}), sort_keys=True)
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:12]


class QuietBuild:
    """tfds prints "Downloading and preparing dataset ..." and "Dataset ... downloaded and
    prepared ..." to stdout with no switch; our builders log them at INFO instead (shown with
    ``--verbose``, see `nlhf_jax.console`)."""

    def _log_download_bytes(self) -> None:
        _log.info("preparing dataset %s in %s", self.name, self.data_dir)

    def _log_download_done(self) -> None:
        _log.info("dataset %s prepared in %s", self.name, self.data_dir)


class _FileRowsBuilder(QuietBuild, tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared code of the file builders: per-split files, skip counting, metadata."""

    VERSION = VERSION
    url_infos = None  # nothing to download; tfds's lookup needs `importlib_resources`

    def __init__(self, *, files: dict[str, list[str]], on_error: str, **kwargs):
        if on_error not in ("raise", "skip"):
            raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
        self._files = files
        self._on_error = on_error
        self._skipped: dict[str, readers.SkippedRows] = {}
        super().__init__(**kwargs)

    @abc.abstractmethod
    def _features(self) -> tfds.features.FeaturesDict:
        """The features of one example."""

    @abc.abstractmethod
    def _read(self, path: str, skipped: readers.SkippedRows):
        """The examples of the file ``path``, its refused rows counted in ``skipped``."""

    def _info(self) -> tfds.core.DatasetInfo:
        # DatasetInfo directly, not `dataset_info_from_configs`: the latter looks for metadata
        # files beside the builder's module, which breaks for builders outside a tfds package.
        return tfds.core.DatasetInfo(
            builder=self,
            features=self._features(),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # local files only
        return {split: self._generate_examples(split) for split in self._files}

    def _generate_examples(self, split: str):
        skipped = self._skipped.setdefault(split, readers.SkippedRows())
        key = 0
        for path in self._files[split]:
            for record in self._read(path, skipped):
                yield key, _text_only(record)
                key += 1
        if skipped.count:
            _log.warning(
                "%s: skipped %d malformed rows of split %r; first: %s",
                self.name,
                skipped.count,
                split,
                skipped.messages[0],
            )
        # Written with the dataset info after the last split, so readers see the counts too.
        self.info.metadata["skipped_rows"] = {k: v.count for k, v in self._skipped.items()}
        self.info.metadata["skipped_messages"] = {k: v.messages for k, v in self._skipped.items()}
        self.info.metadata["inputs"] = input_fingerprint(self._files)


def _text_only(record: dict) -> dict:
    """Text features hold strings: a conversation (messages) must be rendered first."""
    for field, value in record.items():
        if isinstance(value, list):
            raise UserError(
                f"{record.get('source')}:{field}: a list of messages; conversational rows are "
                "rendered by a chat template and tokenized when built "
                "(nlhf_jax.data.build_tokenized, what training uses)"
            )
    return record


class PreferencePairs(_FileRowsBuilder):
    """Preference pairs `{prompt, response_a, response_b, label = P(a > b), source}`."""

    def __init__(self, *, layout: str | None = None, **kwargs):
        if layout is not None and layout not in readers.PAIR_LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {readers.PAIR_LAYOUTS}")
        self._layout = layout
        super().__init__(**kwargs)

    def _features(self):
        return tfds.features.FeaturesDict(
            {
                "prompt": tfds.features.Text(),
                "response_a": tfds.features.Text(),
                "response_b": tfds.features.Text(),
                "label": tfds.features.Scalar(dtype=np.float32),
                "source": tfds.features.Text(),  # file:row, so later errors can name the row
            }
        )

    def _read(self, path, skipped):
        return readers.read_pairs(
            path, layout=self._layout, on_error=self._on_error, skipped=skipped
        )


class Prompts(_FileRowsBuilder):
    """Prompt-only records `{prompt, source}`."""

    def _features(self):
        return tfds.features.FeaturesDict(
            {"prompt": tfds.features.Text(), "source": tfds.features.Text()}
        )

    def _read(self, path, skipped):
        return readers.read_prompts(path, on_error=self._on_error, skipped=skipped)


class Demonstrations(_FileRowsBuilder):
    """SFT demonstrations `{prompt, response, source}`."""

    def _features(self):
        return tfds.features.FeaturesDict(
            {
                "prompt": tfds.features.Text(),
                "response": tfds.features.Text(),
                "source": tfds.features.Text(),
            }
        )

    def _read(self, path, skipped):
        return readers.read_demonstrations(path, on_error=self._on_error, skipped=skipped)


def prepare(builder: tfds.core.DatasetBuilder, overwrite: bool) -> BuiltDataset:
    # A build killed midway leaves `incomplete.*` beside the final directory (never loaded);
    # remove it, counted, rather than let such directories pile up.
    parent = os.path.dirname(str(builder.data_dir))
    left = [e for e in (os.listdir(parent) if os.path.isdir(parent) else []) if "incomplete." in e]
    for entry in left:
        shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
    if left:
        _log.warning("removed %d unfinished dataset build(s) in %s", len(left), parent)
    mode = (
        tfds.download.GenerateMode.FORCE_REDOWNLOAD
        if overwrite
        else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    )
    config = tfds.download.DownloadConfig(download_mode=mode)
    try:
        builder.download_and_prepare(download_config=config)
    except AssertionError as e:  # tfds's own words for a split left empty
        if "No examples were yielded" not in str(e):
            raise
        skipped = {k: v for k, v in getattr(builder, "_skipped", {}).items() if v.count}
        inputs = getattr(builder, "_files", None)
        why = "".join(
            f"; {split}: {v.count} malformed rows skipped, first: {v.messages[0]}"
            for split, v in skipped.items()
        )
        raise UserError(f"{inputs or builder.name}: a split has no rows to write{why}") from None
    return _describe(str(builder.data_dir), builder.info)


def _build_from_files(cls, files: Files, data_dir: str, name: str, overwrite: bool, **kwargs):
    split_files = _split_files(files)
    builder = cls(
        files=split_files,
        data_dir=data_dir,
        file_format="array_record",
        config=tfds.core.BuilderConfig(name=name),
        **kwargs,
    )
    if builder.is_prepared() and not overwrite:
        stored = json.loads(json.dumps(builder.info.metadata.get("inputs", {})))
        if stored != json.loads(json.dumps(input_fingerprint(split_files))):
            raise ValueError(
                f"{builder.data_dir} was built from other or changed files; pass overwrite=True "
                "to rebuild it"
            )
        _log.info("reusing %s", builder.data_dir)
    return prepare(builder, overwrite)


def build_pairs(
    files: Files,
    data_dir: str,
    *,
    name: str = "default",
    layout: str | None = None,
    on_error: readers.OnError = "raise",
    overwrite: bool = False,
) -> BuiltDataset:
    """Builds (or reuses) a preference-pair dataset from JSONL/Parquet files.

    Args:
      files: one path, a list of paths (split "train"), or `{split: path or paths}`.
      data_dir: root directory; the dataset goes to `data_dir/preference_pairs/<name>/1.0.0`.
      name: the dataset's config name, to keep several datasets under one data_dir.
      layout: one of `readers.PAIR_LAYOUTS`, or None to detect it per file from the fields.
      on_error: "raise" stops at the first malformed row; "skip" drops and counts such rows.
      overwrite: rebuild even if the dataset exists (it is also rebuilt never silently: reusing a
        dataset built from other or changed files raises).

    Returns:
      The dataset's directory, example counts and skipped-row counts.

    Raises:
      readers.DataError: a malformed row (`file:row:field: why`) with on_error="raise"; nothing
        is left on disk.
    """
    return _build_from_files(
        PreferencePairs, files, data_dir, name, overwrite, layout=layout, on_error=on_error
    )


def _text_builder(cls, what: str):
    def build(
        files: Files,
        data_dir: str,
        *,
        name: str = "default",
        on_error: readers.OnError = "raise",
        overwrite: bool = False,
    ) -> BuiltDataset:
        return _build_from_files(cls, files, data_dir, name, overwrite, on_error=on_error)

    build.__doc__ = f"Builds (or reuses) {what}; arguments as in `build_pairs`."
    return build


build_prompts = _text_builder(Prompts, "a prompt-only dataset (`prompt`)")
build_demonstrations = _text_builder(
    Demonstrations, "an SFT demonstrations dataset (`prompt`, `response`)"
)
