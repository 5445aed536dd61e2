"""sppo from the SFT policy (nlhf_jax/train/online/sppo.py).

python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
python -m nlhf_jax.train --config configs/sppo.py --workdir runs/sppo --config.init_from=runs/sft

--config.samples=5 draws five responses a prompt and trains on the best and the worst by their
win rates against the rest, as the paper does (every pair of the five is judged).
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("sppo")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    c.round_steps = 30
    return c
