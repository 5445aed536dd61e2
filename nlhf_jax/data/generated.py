"""A tfds builder of records generated in Python (the synthetic task, tokenized data), written
as array_record like the file builders of `nlhf_jax.data.builders`, with caller-given features;
token-id fields are variable-length int32 vectors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from nlhf_jax.data import readers
from nlhf_jax.data.builders import VERSION, BuiltDataset, QuietBuild, prepare

# Shorthand feature names accepted by `build_records`.
_FEATURE_SHORTHANDS = {
    "tokens": lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32),
    "text": tfds.features.Text,
    "float32": lambda: tfds.features.Scalar(dtype=np.float32),
    "int32": lambda: tfds.features.Scalar(dtype=np.int32),
    "bool": lambda: tfds.features.Scalar(dtype=np.bool_),
}


class GeneratedRecords(QuietBuild, tfds.core.GeneratorBasedBuilder):
    """Records from Python iterables, with caller-given features (see `build_records`)."""

    VERSION = VERSION
    url_infos = None

    def __init__(
        self,
        *,
        features: Mapping[str, Any],
        splits: Mapping[str, Iterable[Mapping[str, Any]]],
        metadata: Mapping[str, Any] | None = None,
        **kwargs,
    ):
        self._feature_spec = {k: _feature(k, v) for k, v in features.items()}
        self._splits = splits
        self._metadata = dict(metadata or {})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(dict(self._feature_spec)),
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(self._metadata),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self._splits}

    def _generate_examples(self, split: str):
        for index, example in enumerate(self._splits[split]):
            yield index, _encode(example, self._feature_spec, f"{split}[{index}]")


def _feature(name: str, spec: Any) -> tfds.features.FeatureConnector:
    if isinstance(spec, tfds.features.FeatureConnector):
        return spec
    if spec not in _FEATURE_SHORTHANDS:
        raise ValueError(f"feature {name!r}: {spec!r} is not one of {sorted(_FEATURE_SHORTHANDS)}")
    return _FEATURE_SHORTHANDS[spec]()


def _encode(example: Mapping[str, Any], spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Checks one generated example against the features; errors name `split[index]:field`."""
    missing = set(spec) - set(example)
    extra = set(example) - set(spec)
    if missing or extra:
        field = sorted(missing or extra)[0]
        why = "missing field" if missing else "field not in the features"
        raise readers.DataError("<generated>", where, field, why)
    out = {}
    for name, feature in spec.items():
        value = example[name]
        if isinstance(feature, tfds.features.Tensor) and feature.shape == (None,):
            ids = np.asarray(value)
            if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
                raise readers.DataError(
                    "<generated>", where, name, f"expected a 1-D integer sequence, got {ids.dtype}"
                )
            if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
                raise readers.DataError("<generated>", where, name, "token id outside int32 >= 0")
            value = ids.astype(np.int32)
        out[name] = value
    return out


def build_records(
    splits: Mapping[str, Iterable[Mapping[str, Any]]],
    features: Mapping[str, Any],
    data_dir: str,
    *,
    name: str,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> BuiltDataset:
    """Writes records from Python iterables as a dataset under `data_dir/generated_records/<name>`.

    Args:
      splits: `{split: iterable of example dicts}`; each iterable is consumed once, in order.
      features: `{field: feature}`, a `tfds.features.FeatureConnector` or a shorthand: "tokens"
        (variable-length int32 token ids), "text", "float32", "int32", "bool".
      data_dir: root directory of the dataset.
      name: the dataset's name (its config name), e.g. "prompts", "demonstrations", "pairs".
      metadata: JSON-serialisable facts stored with the dataset (its `info.metadata`).
      overwrite: rebuild even if the dataset exists; otherwise an existing one is reused as is.

    Raises:
      readers.DataError: an example misses a field, has an extra one, or a bad token sequence
        (`<generated>:split[index]:field: why`); nothing is left on disk.
    """
    builder = GeneratedRecords(
        features=features,
        splits=splits,
        metadata=metadata,
        data_dir=data_dir,
        file_format="array_record",
        config=tfds.core.BuilderConfig(name=name),
    )
    return prepare(builder, overwrite)
