"""Data: tfds builders (array_record, no TensorFlow) and grain batch pipelines.

built = build_pairs({"train": "pairs.jsonl"}, data_dir)       # or build_prompts/build_records
batches = preference_batches(built.source("train"), BatchOptions(16, 128, 64), tokenizer=tok)
state = batches.get_state()                                   # JSON; set_state resumes exactly
"""

from nlhf_jax.data.builders import (
    BuiltDataset,
    Demonstrations,
    PreferencePairs,
    Prompts,
    build_demonstrations,
    build_pairs,
    build_prompts,
    files_dataset_name,
    load_dataset,
    load_source,
)
from nlhf_jax.data.generated import GeneratedRecords, build_records
from nlhf_jax.data.pipeline import (
    BatchIterator,
    BatchOptions,
    encode_prompts,
    preference_batches,
    prompt_batches,
    sft_batches,
)
from nlhf_jax.data.readers import PAIR_LAYOUTS, DataError, SkippedRows, detect_layout

__all__ = [
    "PAIR_LAYOUTS",
    "BatchIterator",
    "BatchOptions",
    "BuiltDataset",
    "DataError",
    "Demonstrations",
    "GeneratedRecords",
    "PreferencePairs",
    "Prompts",
    "SkippedRows",
    "build_demonstrations",
    "build_pairs",
    "build_prompts",
    "build_records",
    "detect_layout",
    "encode_prompts",
    "files_dataset_name",
    "load_dataset",
    "load_source",
    "preference_batches",
    "prompt_batches",
    "sft_batches",
]
