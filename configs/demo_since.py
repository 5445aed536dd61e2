"""The demo's pipeline with the methods published since the seeds beside Nash-MD-PG, INPO and
online IPO: SPPO, EGPO, COMAL, MPO, MNPO and ONPO (docs/algorithms.md section 11), on the
synthetic task.

    python -m nlhf_jax.train --config configs/demo_since.py --workdir runs/demo_since
"""

from nlhf_jax.pipelines.configs import demo_config


def get_config():
    c = demo_config()
    c.demo.policies = "nash_md,inpo,online_ipo,sppo,egpo,comal,mpo,mnpo,onpo"
    return c
