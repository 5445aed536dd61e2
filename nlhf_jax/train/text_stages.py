"""The stages of the text pipeline as configs: SFT, preference and reward models on a Hugging
Face checkpoint's backbone, and the online methods on a prompts file (``configs/text.py``).

``stage_config(stage, data, runs)`` returns the config of one stage for the files that
``python -m nlhf_jax.tasks.text --out DATA`` writes (or yours, with the paths overridden) and the
run directories under ``RUNS`` the later stages read: ``RUNS/sft``, ``RUNS/pm``, ``RUNS/rm``.
"""

from __future__ import annotations

import ml_collections

from nlhf_jax.train.defaults import base_config


def stage_config(
    stage: str = "sft", data: str = "data/text", runs: str = "runs/text"
) -> ml_collections.ConfigDict:
    """The config of ``stage`` (sft, preference_model, reward_model or an online method)."""
    c = base_config(stage)
    c.data.source = "file"
    c.data.max_prompt_len = 32
    c.data.max_response_len = 16
    c.batch_size = 32
    c.log_every = 25
    if stage == "sft":
        c.model.hf_checkpoint = f"{data}/checkpoint"
        c.data.train_file = f"{data}/demos.jsonl"
        c.num_steps = 300
        c.eval_every = 100
    elif stage in ("preference_model", "reward_model"):
        # The backbone from the same checkpoint (init_from=runs/text/sft is the other choice).
        c.model.hf_checkpoint = f"{data}/checkpoint"
        c.data.train_file = f"{data}/pairs.jsonl"
        c.data.eval_file = f"{data}/pairs_eval.jsonl,{data}/pairs_cyclic.jsonl"
        c.num_steps = 600
        c.eval_every = 200
    else:  # an online method, from the SFT run
        c.init_from = f"{runs}/sft"
        c.judge = f"{runs}/pm"
        c.reward_model = f"{runs}/rm"
        c.data.prompts_file = f"{data}/prompts.jsonl"
        c.data.eval_prompts_file = f"{data}/eval_prompts.jsonl"
        c.num_steps = 200
        c.eval_every = 50
        c.optimizer.learning_rate = 1e-3
        if stage == "rlhf":
            c.tau = 0.4  # on the reward's scale: see configs/demo.py
    return c
