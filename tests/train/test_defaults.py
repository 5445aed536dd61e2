"""Defaults that depend on where a run starts (``nlhf_jax.train.defaults.resolve``): a fresh
model's learning rate, or a pretrained one's (TRL's documented rates, ten times with LoRA) and
rematerialization; a key the user set is never changed."""

import json

import pytest

from nlhf_jax.train import defaults
from nlhf_jax.train.defaults import base_config, resolve


def _run_dir(tmp_path, name, **config):
    """A run's workdir as far as resolve reads it: its recorded settings (config.json) and its
    run.json."""
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "run.json").write_text(json.dumps({"method": "sft"}))
    return str(workdir)


def test_a_fresh_model_keeps_the_fresh_rate_and_the_presets_remat():
    config = base_config("sft")
    assert resolve(config) == {"optimizer.learning_rate": "the default for a fresh model"}
    assert config.optimizer.learning_rate == defaults.FRESH_LEARNING_RATE
    assert config.model.remat == ""


@pytest.mark.parametrize(
    "method, rate",
    [("sft", 2e-5), ("preference_model", 1e-4), ("reward_model", 1e-4), ("nash_md", 5e-7)],
)
def test_a_checkpoint_start_takes_trls_rate_and_full_remat(method, rate, tmp_path):
    config = base_config(method)
    if method in ("sft", "preference_model", "reward_model"):
        config.model.hf_checkpoint = "path/to/model.gguf"
    else:
        ckpt = tmp_path / "ckpt"
        ckpt.mkdir()
        (ckpt / "config.json").write_text('{"model_type": "llama"}')  # Hugging Face's, no run.json
        config.init_from = str(ckpt)
    assert set(resolve(config)) == {"optimizer.learning_rate", "model.remat"}
    assert config.optimizer.learning_rate == pytest.approx(rate)
    assert config.model.remat == "full"


def test_lora_multiplies_the_pretrained_rate_and_set_keys_stay(tmp_path):
    config = base_config("sft")
    config.model.hf_checkpoint, config.lora.rank = "model.gguf", 8
    resolve(config)
    assert config.optimizer.learning_rate == pytest.approx(10 * 2e-5)
    config = base_config("sft")
    config.model.hf_checkpoint, config.optimizer.learning_rate = "model.gguf", 1e-3
    config.model.remat = "dots"
    assert resolve(config) == {}
    assert (config.optimizer.learning_rate, config.model.remat) == (1e-3, "dots")


def test_the_start_is_followed_back_through_the_runs(tmp_path):
    """Nash-MD from an SFT run that started from a checkpoint is a pretrained start; from an
    SFT run of a fresh preset (or from a run a preference model started from it) it is not."""
    sft = _run_dir(tmp_path, "sft", model={"hf_checkpoint": "base.gguf"}, init_from="")
    pm = _run_dir(tmp_path, "pm", model={"hf_checkpoint": ""}, init_from=sft)
    fresh = _run_dir(tmp_path, "fresh", model={"hf_checkpoint": ""})
    for start, want in ((sft, "base.gguf"), (pm, "base.gguf"), (fresh, "")):
        config = base_config("nash_md")
        config.init_from = start
        assert defaults.pretrained_start(config) == want
    config = base_config("nash_md")
    config.init_from = fresh
    resolve(config)
    assert config.optimizer.learning_rate == defaults.FRESH_LEARNING_RATE
    # A workdir that has only its settings yet (no run.json) is still a run, not a checkpoint.
    (tmp_path / "fresh" / "run.json").unlink()
    assert defaults.pretrained_start(config) == ""
