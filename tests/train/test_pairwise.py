"""python -m nlhf_jax.train for the preference and reward models: the cycle, files, errors."""

import json
import subprocess
import sys

import pytest

from nlhf_jax.train import loop, methods
from nlhf_jax.train.defaults import base_config


def _train(method, tmp_path, **overrides):
    config = base_config(method)
    for key, value in overrides.items():
        node = config
        *path, leaf = key.split(".")
        for p in path:
            node = node[p]
        node[leaf] = value
    workdir = str(tmp_path / method)
    trainer = methods.build(config, workdir)
    state = loop.run(
        trainer, workdir, num_steps=config.num_steps, checkpoint_every=10**9, quiet=True
    )
    return trainer.evaluate(state)


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "nlhf_jax.train", *args], capture_output=True, text=True, cwd=cwd
    )


def test_unknown_config_key_and_method_are_clear_errors(tmp_path):
    import pathlib

    root = pathlib.Path(__file__).parents[2]
    config = str(root / "configs" / "preference_model.py")
    out = _cli(f"--config={config}", f"--workdir={tmp_path}", "--config.no_such_key=1", cwd=root)
    assert out.returncode != 0 and "no_such_key" in out.stderr
    out = _cli(f"--config={config}", f"--workdir={tmp_path}", "--config.method=dpo", cwd=root)
    assert out.returncode != 0 and "unknown method 'dpo'" in out.stderr


def test_preference_model_on_user_jsonl(tmp_path):
    """The README's own-data path: JSONL pairs, a local tokenizer, an eval file."""
    from nlhf_jax.models.tokenizer import build_bpe_tokenizer

    build_bpe_tokenizer(str(tmp_path / "tok"))
    rows = [
        {
            "prompt": f"Question {i}: which is better?",
            "chosen": "a careful answer",
            "rejected": "no",
        }
        for i in range(40)
    ]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:8]))
    metrics = _train(
        "preference_model",
        tmp_path,
        num_steps=30,
        batch_size=8,
        **{
            "data.source": "file",
            "data.train_file": str(tmp_path / "train.jsonl"),
            "data.eval_file": str(tmp_path / "eval.jsonl"),
            "data.tokenizer": str(tmp_path / "tok"),
            "model.vocab_size": 512,
            "data.max_prompt_len": 16,
            "data.max_response_len": 8,
        },
    )
    # chosen is always response_a with label 1: an easy pattern, learned within 30 steps.
    assert float(metrics["eval/accuracy"]) == 1.0
    rows_file = (tmp_path / "preference_model" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows_file[-1])["kind"] == "eval"


def test_malformed_user_file_names_file_line_and_field(tmp_path):
    from nlhf_jax.models.tokenizer import build_bpe_tokenizer

    build_bpe_tokenizer(str(tmp_path / "tok"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": ""}\n'
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2:"):
        _train(
            "preference_model",
            tmp_path,
            num_steps=2,
            **{
                "data.source": "file",
                "data.train_file": str(bad),
                "data.tokenizer": str(tmp_path / "tok"),
                "data.layout": "chosen_rejected",
            },
        )
