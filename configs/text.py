"""The text pipeline on your own Hugging Face checkpoint, tokenizer and files: one config string
per stage (``configs/text.py:STAGE``). Nothing is read that you do not name; an input left
empty is an error naming its key. (The built-in example: configs/text_example.py.)

    python -m nlhf_jax.train --config configs/text.py:sft --workdir runs/my/sft \
        --config.model.hf_checkpoint=path/to/model --config.data.train_file=demos.jsonl
    python -m nlhf_jax.train --config configs/text.py:preference_model --workdir runs/my/pm \
        --config.model.hf_checkpoint=path/to/model --config.data.train_file=pairs.jsonl
    python -m nlhf_jax.train --config configs/text.py:nash_md --workdir runs/my/nash_md \
        --config.init_from=runs/my/sft --config.judge=runs/my/pm \
        --config.data.prompts_file=prompts.jsonl

STAGE is sft, preference_model, reward_model or any online method (nash_md, nash_ema,
nash_mp, online_ipo, ipo_md, inpo, rlhf: its judge is a reward_model run). Set the lengths
your data needs: --config.data.max_prompt_len, --config.data.max_response_len.
"""

from nlhf_jax.pipelines.text import stage_config


def get_config(stage: str = "sft"):
    return stage_config(stage)
