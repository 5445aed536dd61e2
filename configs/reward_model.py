"""A Bradley-Terry reward model r(x, y) on the built-in synthetic task (2-core CPU: ~1 min).

    python -m nlhf_jax.train --config configs/reward_model.py --workdir runs/reward_model

The same data options as configs/preference_model.py apply (--config.data.source=file ...).
"""

from nlhf_jax.train.defaults import base_config


def get_config():
    return base_config("reward_model")
