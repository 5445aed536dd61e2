"""Nash-MD-PG on the synthetic task with the exact oracle: the duality gap to the exact NE falls."""

import os

import jax.numpy as jnp
import pytest

from nlhf_jax.train import loop, methods, online
from nlhf_jax.train.defaults import base_config


def _nash_config(sft_run, **kw):
    config = base_config("nash_md")
    config.init_from = sft_run
    config.optimizer.learning_rate = 1e-3
    for k, v in kw.items():
        config[k] = v
    return config


def test_nash_md_pg_lowers_the_duality_gap(sft_run, tmp_path):
    """150 steps of 64 prompts, beta = 0.125, tau = 0.1, exact oracle. Measured with the suite's
    settings: gap 0.166 for the SFT policy -> 0.037, KL(NE || pi) 0.10."""
    config = _nash_config(sft_run, num_steps=150)
    # The start is scored on a trainer of its own: a trainer starts once (loop.run starts it).
    start = methods.build(config, str(tmp_path / "start"))
    start = start.evaluate(start.init_state())
    trainer = methods.build(config, str(tmp_path))
    state = loop.run(trainer, str(tmp_path), num_steps=150, checkpoint_every=10**9, quiet=True)
    end = trainer.evaluate(state)
    assert start["exact/duality_gap"] == pytest.approx(start["exact/reference_duality_gap"])
    assert end["exact/duality_gap"] < 0.6 * start["exact/duality_gap"]
    assert end["exact/kl_nash_to_policy"] < start["exact/kl_nash_to_policy"]


def test_judge_outside_unit_interval_is_an_error_and_nothing_is_saved(
    sft_run, tmp_path, monkeypatch
):
    class OutOfRange:
        """A jittable judge that answers 1.5 for every pair."""

        jittable = True

        def __call__(self, prompt, *rest):
            return jnp.full((prompt.shape[0],), 1.5)

    monkeypatch.setattr(online.trainer, "load_judge", lambda *args: OutOfRange())
    trainer = methods.build(_nash_config(sft_run, num_steps=3), str(tmp_path))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]: min 1.5"):
        loop.run(trainer, str(tmp_path), num_steps=3, checkpoint_every=1, quiet=True)
    assert not os.listdir(tmp_path / "checkpoints")


def test_nash_md_without_sft_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="init_from is empty"):
        methods.build(base_config("nash_md"), str(tmp_path))
    config = base_config("nash_md")
    config.init_from = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a training run"):
        methods.build(config, str(tmp_path))
