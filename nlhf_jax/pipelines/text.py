"""The stages of the text pipeline as configs: SFT, preference and reward models on a Hugging
Face checkpoint's backbone, and the online methods on a prompts file.

``stage_config(stage)`` (``configs/text.py:STAGE``) leaves every input empty: a run reads only
what its user names (the checkpoint, the files, the SFT run it starts from, its judge), and an
empty one is an error naming its key. ``stage_config(stage, data, runs)``
(``configs/text_example.py:STAGE``, what ``make text`` runs) names the files that
``python -m nlhf_jax.tasks.text --out DATA`` writes and the run directories under ``RUNS`` the
later stages read: ``RUNS/sft``, ``RUNS/pm``, ``RUNS/rm``.
"""

from __future__ import annotations

import ml_collections

from nlhf_jax.train.defaults import FRESH_LEARNING_RATE, base_config


def stage_config(
    stage: str = "sft", data: str | None = None, runs: str | None = None
) -> ml_collections.ConfigDict:
    """The config of ``stage`` (sft, preference_model, reward_model or an online method); with
    ``data`` and ``runs``, the built-in example's paths."""
    c = base_config(stage)
    c.data.source = "file"
    c.batch_size = 32
    c.log_every = 25
    if stage == "sft":
        c.num_steps = 300
        c.eval_every = 100
    elif stage in ("preference_model", "reward_model"):
        c.num_steps = 600
        c.eval_every = 200
    else:  # an online method, from an SFT run or a pretrained checkpoint
        c.judge = ""
        c.num_steps = 200
        c.eval_every = 50
        if stage == "rlhf":
            c.tau = 0.4  # on the reward's scale: see nlhf_jax.train.online.rlhf
    if data is not None:
        _example(c, stage, data, runs)
    return c


def _example(c, stage: str, data: str, runs: str) -> None:
    """The built-in text example's paths and lengths (its prompts fit 32 tokens, its replies
    16). Its checkpoint is a random tiny Qwen2, not a pretrained model: its stages train at a
    fresh model's rates, without rematerialization (``defaults.resolve`` would give a
    pretrained start's)."""
    c.data.max_prompt_len = 32
    c.data.max_response_len = 16
    c.optimizer.learning_rate = FRESH_LEARNING_RATE
    c.model.remat = "none"
    if stage == "sft":
        c.model.hf_checkpoint = f"{data}/checkpoint"
        c.data.train_file = f"{data}/demos.jsonl"
    elif stage in ("preference_model", "reward_model"):
        # The backbone from the same checkpoint (init_from=runs/text/sft is the other choice).
        c.model.hf_checkpoint = f"{data}/checkpoint"
        c.data.train_file = f"{data}/pairs.jsonl"
        c.data.eval_file = f"{data}/pairs_eval.jsonl,{data}/pairs_cyclic.jsonl"
    else:
        c.init_from = f"{runs}/sft"
        c.judge = f"{runs}/rm" if stage == "rlhf" else f"{runs}/pm"
        c.data.prompts_file = f"{data}/prompts.jsonl"
        c.data.eval_prompts_file = f"{data}/eval_prompts.jsonl"
        c.optimizer.learning_rate = 1e-3  # the example's 16-token replies train stably at this
