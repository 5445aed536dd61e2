"""The demo's pipeline with the methods published since the seeds beside Nash-MD-PG and INPO:
SPPO, EGPO, COMAL, MPO and MNPO (docs/algorithms.md section 11), on the synthetic task.

    python -m nlhf_jax.train --config configs/demo_since.py --workdir runs/demo_since
"""

from nlhf_jax.pipelines.configs import demo_config


def get_config():
    c = demo_config()
    c.demo.policies = "nash_md,inpo,sppo,egpo,comal,mpo,mnpo"
    return c
