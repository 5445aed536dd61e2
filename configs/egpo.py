"""egpo from the SFT policy (nlhf_jax/train/online/egpo.py): 300 steps are 150 extragradient
iterations (a half step and a full step each).

python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
python -m nlhf_jax.train --config configs/egpo.py --workdir runs/egpo --config.init_from=runs/sft
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("egpo")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    return c
