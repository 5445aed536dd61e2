"""The text pipeline: a Hugging Face checkpoint, its tokenizer, your prompts and pairs.

One file, one stage per config string (``configs/text.py:STAGE``). The defaults point at the
built-in text example (``python -m nlhf_jax.tasks.text --out data/text``); for your own model and
data override the paths. Each stage is an ordinary resumable run:

    python -m nlhf_jax.tasks.text --out data/text
    python -m nlhf_jax.train --config configs/text.py:sft --workdir runs/text/sft
    python -m nlhf_jax.train --config configs/text.py:preference_model --workdir runs/text/pm
    python -m nlhf_jax.train --config configs/text.py:reward_model --workdir runs/text/rm
    python -m nlhf_jax.train --config configs/text.py:nash_md --workdir runs/text/nash_md
    python -m nlhf_jax.train --config configs/text.py:rlhf --workdir runs/text/rlhf

Your own: --config.model.hf_checkpoint=DIR (config.json + safetensors + tokenizer),
--config.data.train_file=demos.jsonl (sft) or pairs.jsonl (preference/reward model),
--config.data.prompts_file=prompts.jsonl (online methods), --config.data.chat_template=true.
STAGE is sft, preference_model, reward_model or any online method (nash_md, nash_ema,
nash_mp, online_ipo, ipo_md, inpo, rlhf); the online stages start from runs/text/sft and are
judged by runs/text/pm (rlhf: scored by runs/text/rm) unless overridden.
"""

from nlhf_jax.train.text_stages import stage_config


def get_config(stage: str = "sft"):
    return stage_config(stage)
