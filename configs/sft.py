"""Supervised fine-tuning on the synthetic task's demonstrations: the reference policy mu.

python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("sft")
    c.num_steps = 300
    return c
