"""The RLHF baseline from the SFT policy, maximizing a Bradley-Terry reward model's reward
(nlhf_jax/train/online/rlhf.py).

    python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
    python -m nlhf_jax.train --config configs/reward_model.py --workdir runs/reward_model
    python -m nlhf_jax.train --config configs/rlhf.py --workdir runs/rlhf \
        --config.init_from=runs/sft --config.judge=runs/reward_model
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("rlhf")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    return c
