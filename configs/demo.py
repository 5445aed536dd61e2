"""The embedded default main job (what ``make demo`` and a bare ``python -m nlhf_jax.train`` run).

    python -m nlhf_jax.train --config configs/demo.py --workdir runs/demo
    python -m nlhf_jax.train --config configs/demo.py --workdir runs/quick \
        --config.demo.policy_steps=60 --config.demo.policies=nash_md,rlhf
"""

from nlhf_jax.pipelines.configs import demo_config


def get_config():
    return demo_config()
