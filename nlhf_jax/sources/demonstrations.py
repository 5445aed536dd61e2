"""Demonstrations for SFT: the synthetic task's behaviour policy, or a file of demonstrations
(``prompt``/``response``, ``prompt``/``completion`` or ``messages`` conversations), as
resumable batches (and, for a file, held-out batches)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import ml_collections

from nlhf_jax import data
from nlhf_jax.errors import UserError
from nlhf_jax.sources import common


@dataclasses.dataclass
class DemoSource:
    """Training batches of demonstrations.

    Attributes:
      train: the resumable training batches (``{prompt, prompt_mask, response, response_mask}``).
      heldout: ``() -> list of batches`` of ``config.data.eval_file`` (None without one).
      description: what the run's ``run.json`` records of its data.
    """

    train: data.BatchIterator
    heldout: Callable[[], list[dict]] | None
    description: dict


def demonstrations(config: ml_collections.ConfigDict, workdir: str, tokenizer=None) -> DemoSource:
    """The demonstrations ``config.data`` names (``common.kind``); a file's are tokenized with
    ``tokenizer``, EOS appended to every response (so the policy learns to stop)."""
    directory = common.data_dir(config, workdir)
    if common.kind(config) == "synthetic":
        task = common.task_from_config(config)
        demos = task.demonstrations(config.data.train_demos, config.seed)
        built = common.synthetic_records(
            "synthetic_demos", demos, dict.fromkeys(demos, "tokens"), directory
        )
        options = data.BatchOptions(
            config.batch_size, task.prompt_len, task.response_len, seed=config.seed
        )
        return DemoSource(
            train=data.sft_batches(built.source("train"), options),
            heldout=None,
            description={"task": config.task.to_dict()},
        )
    d = config.data
    if not d.train_file:
        raise UserError(
            "config.data.train_file is empty: name the demonstrations file (JSONL, Parquet or a "
            "Hugging Face dataset directory; 'prompt' and 'response' or 'completion' fields, or "
            "'messages')"
        )
    files = {"train": d.train_file, **({"validation": d.eval_file} if d.eval_file else {})}
    built = common.build_files("demos", files, config, workdir, tokenizer, data.DEMO_LAYOUTS)
    if built.num_examples.get("train", 0) == 0:
        raise UserError(f"{d.train_file}: no demonstrations")
    common.check_rows(d.train_file, built, config.batch_size, "demonstrations")
    options = common.text_batch_options(config)

    def heldout() -> list[dict]:
        return list(  # every process evaluates every demonstration
            data.sft_batches(
                built.source("validation"),
                common.eval_options(options, d.eval_batch_size),
                tokenizer=tokenizer,
                process_index=0,
                process_count=1,
            )
        )

    return DemoSource(
        train=data.sft_batches(built.source("train"), options, tokenizer=tokenizer),
        heldout=heldout if d.eval_file else None,
        description={
            "data": {"train_file": os.path.abspath(d.train_file), "skipped_rows": built.skipped},
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id,
            "chat_template": common.templated(config, built),
            "chat": dataclasses.asdict(options.chat),
            "sft_turns": d.sft_turns,
        },
    )
