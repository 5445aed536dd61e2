"""nash_ema from the SFT policy (nlhf_jax/train/online/nash_ema.py).

python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
python -m nlhf_jax.train --config configs/nash_ema.py --workdir runs/nash_ema --config.init_from=runs/sft
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("nash_ema")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    return c
