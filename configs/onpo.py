"""onpo from the SFT policy (nlhf_jax/train/online/onpo.py): online IPO's pairs and loss, updated
by optimistic Adam (each step extrapolates from the last two normalized gradients).

python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
python -m nlhf_jax.train --config configs/onpo.py --workdir runs/onpo --config.init_from=runs/sft
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("onpo")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    return c
