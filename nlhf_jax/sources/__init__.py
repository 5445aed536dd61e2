"""Sources: where every trainer's data comes from, in one place.

Three kinds of data, each from the built-in synthetic task or the user's files (JSONL/Parquet,
and for prompts a tfds set), all through the same tfds (array_record) + grain path, so every
iterator resumes exactly with the run:

- prompts (``prompts``, ``PromptSource``): the online methods', sampling's and evaluation's;
- preference pairs (``pairs``, ``PairSource``): the preference and reward models';
- demonstrations (``demonstrations``, ``DemoSource``): SFT's.

``kind(config)`` decides synthetic or file; ``data_dir(config, workdir)`` where datasets go.
"""

from nlhf_jax.sources.common import (
    chat_options,
    data_dir,
    eval_options,
    kind,
    synthetic_records,
    task_from_config,
    text_batch_options,
    tokenizer,
)
from nlhf_jax.sources.demonstrations import DemoSource, demonstrations
from nlhf_jax.sources.pairs import PAIR_FEATURES, PairSource, pairs
from nlhf_jax.sources.prompts import (
    PromptSource,
    encode_prompt_file,
    prompts,
    read_prompt_texts,
    synthetic_source,
    text_source,
)

__all__ = [
    "PAIR_FEATURES",
    "DemoSource",
    "PairSource",
    "PromptSource",
    "chat_options",
    "data_dir",
    "demonstrations",
    "encode_prompt_file",
    "eval_options",
    "kind",
    "pairs",
    "prompts",
    "read_prompt_texts",
    "synthetic_records",
    "synthetic_source",
    "task_from_config",
    "text_batch_options",
    "text_source",
    "tokenizer",
]
