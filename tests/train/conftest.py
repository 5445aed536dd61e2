"""A trained SFT run shared by the policy-trainer tests (the reference and starting policy)."""

import pytest

from nlhf_jax.train import loop, methods
from nlhf_jax.train.defaults import base_config


@pytest.fixture(scope="session")
def sft_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("sft"))
    config = base_config("sft")
    config.num_steps = 300
    trainer = methods.build(config, workdir)
    loop.run(trainer, workdir, num_steps=300, checkpoint_every=10**9, quiet=True)
    return workdir
