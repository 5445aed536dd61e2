"""comal from the SFT policy (nlhf_jax/train/online/comal.py).

python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
python -m nlhf_jax.train --config configs/comal.py --workdir runs/comal --config.init_from=runs/sft
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("comal")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    c.round_steps, c.reset_steps = 25, 100
    return c
