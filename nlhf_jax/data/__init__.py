"""Data: readers of every layout, chat templates, tfds builders (array_record, no TensorFlow)
and grain batch pipelines.

built = build_tokenized("pairs", "hh.jsonl", data_dir, tok)   # read, render, tokenize once
batches = preference_batches(built.source("train"), BatchOptions(16, 128, 64))
state = batches.get_state()                                   # JSON; set_state resumes exactly

(`build_pairs`/`build_prompts`/`build_demonstrations` keep text records, tokenized by the
pipeline per record; `build_records` writes generated ones.)
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
from nlhf_jax.data.chat import ChatEncoder, ChatOptions
from nlhf_jax.data.generated import GeneratedRecords, build_records
from nlhf_jax.data.pipeline import (
    BatchIterator,
    BatchOptions,
    encode_prompts,
    preference_batches,
    prompt_batches,
    sft_batches,
)
from nlhf_jax.data.readers import (
    DEMO_LAYOUTS,
    PAIR_LAYOUTS,
    PROMPT_LAYOUTS,
    DataError,
    SkippedRows,
    detect_layout,
)
from nlhf_jax.data.tokenized import build_tokenized

__all__ = [
    "DEMO_LAYOUTS",
    "PAIR_LAYOUTS",
    "PROMPT_LAYOUTS",
    "BatchIterator",
    "BatchOptions",
    "BuiltDataset",
    "ChatEncoder",
    "ChatOptions",
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
    "build_tokenized",
    "detect_layout",
    "encode_prompts",
    "files_dataset_name",
    "load_dataset",
    "load_source",
    "preference_batches",
    "prompt_batches",
    "sft_batches",
]
