"""mpo from the SFT policy (nlhf_jax/train/online/mpo.py).

python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
python -m nlhf_jax.train --config configs/mpo.py --workdir runs/mpo --config.init_from=runs/sft
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("mpo")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    c.round_steps, c.magnet_steps = 25, 100
    return c
