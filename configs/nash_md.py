"""Nash-MD-PG from the SFT policy, against the token-level mixture (beta = 0.125), exact oracle.

    python -m nlhf_jax.train --config configs/sft.py --workdir runs/sft
    python -m nlhf_jax.train --config configs/nash_md.py --workdir runs/nash_md \
        --config.init_from=runs/sft

--config.beta=0 is self-play, --config.beta=1 the best response to the SFT policy;
--config.judge=runs/pm uses a trained preference model instead of the oracle.
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    c = base_config("nash_md")
    c.num_steps = 300
    c.optimizer.learning_rate = 1e-3
    return c
