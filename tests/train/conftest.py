"""Runs shared by the trainer tests: a trained SFT policy (the reference and starting policy) and
two small judges."""

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


@pytest.fixture(scope="session")
def judge_runs(tmp_path_factory):
    """A preference model and a reward model of 10 steps: their quality does not matter, but
    their heads must have left zero (a zero head judges every pair 1/2, and Nash-MD's gradient
    is then round-off)."""
    out = {}
    for method in ("preference_model", "reward_model"):
        workdir = str(tmp_path_factory.mktemp(method))
        config = base_config(method)
        config.batch_size, config.num_steps = 8, 10
        config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
        config.data.train_pairs, config.data.eval_pairs = 640, 64
        loop.run(methods.build(config, workdir), workdir, num_steps=10, quiet=True)
        out[method] = workdir
    return out
