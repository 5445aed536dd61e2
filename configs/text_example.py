"""The text pipeline on the built-in offline text example (what ``make text`` runs).

    python -m nlhf_jax.tasks.text --out data/text
    python -m nlhf_jax.train --config configs/text_example.py:sft --workdir runs/text/sft
    python -m nlhf_jax.train --config configs/text_example.py:preference_model --workdir runs/text/pm
    python -m nlhf_jax.train --config configs/text_example.py:reward_model --workdir runs/text/rm
    python -m nlhf_jax.train --config configs/text_example.py:nash_md --workdir runs/text/nash_md
    python -m nlhf_jax.train --config configs/text_example.py:rlhf --workdir runs/text/rlhf

The paths are the files ``nlhf_jax.tasks.text`` writes into data/text and the runs under
runs/text; for your own model and data use configs/text.py, which names none.
"""

from nlhf_jax.pipelines.text import stage_config


def get_config(stage: str = "sft"):
    return stage_config(stage, data="data/text", runs="runs/text")
