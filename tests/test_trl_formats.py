"""TRL's dataset formats through `python -m nlhf_jax.train`, with Qwen3's real tokenizer and
its chat template on a tiny transformers-made Qwen2 (vocabulary 151,680, d = 16, one layer):
SFT on conversations (`messages`), a preference model on HH-RLHF transcripts as published
(implicit prompt; a row whose dialogues differ is skipped and counted), and Nash-MD on
conversational prompts saved by `datasets.save_to_disk`. One or two steps each: what is checked
is that each format is read, rendered and trained end to end, not what the steps learn. SFT and
the preference model train in this process; Nash-MD runs as a user runs it, by the command line."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = ["What is rain?", "Name a colour.", "Say hello.", "Count to three."]
REPLY = ["Water from clouds.", "Blue.", "Hello!", "One, two, three."]


def _qwen2(path: str, tokenizer_dir: str) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2Config(
        vocab_size=151_680,  # Qwen3's 151,669 tokens, rounded up to a multiple of 64
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        tie_word_embeddings=True,
        max_position_embeddings=256,
        eos_token_id=151_645,
        pad_token_id=151_643,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(path)
    for name in os.listdir(tokenizer_dir):  # the checkpoint's tokenizer is the run's
        shutil.copy(os.path.join(tokenizer_dir, name), path)


def _write(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


@pytest.fixture(scope="module")
def runs(qwen3_dir, tmp_path_factory):
    datasets = pytest.importorskip("datasets")
    root = tmp_path_factory.mktemp("trl")
    ckpt = str(root / "qwen2")
    _qwen2(ckpt, qwen3_dir)
    user = lambda i: {"role": "user", "content": USER[i % 4]}
    reply = lambda i: {"role": "assistant", "content": REPLY[i % 4]}
    demos = _write(root / "demos.jsonl", [{"messages": [user(i), reply(i)]} for i in range(4)])
    hh = [
        {
            "chosen": f"\n\nHuman: {USER[i]}\n\nAssistant: {REPLY[i]}",
            "rejected": f"\n\nHuman: {USER[i]}\n\nAssistant: I will not.",
        }
        for i in range(4)
    ]
    hh.append({"chosen": hh[0]["chosen"], "rejected": hh[1]["rejected"]})  # two prompts
    pairs = _write(root / "hh.jsonl", hh)
    prompts = str(root / "prompts")
    datasets.Dataset.from_list([{"prompt": [user(i)]} for i in range(4)]).save_to_disk(prompts)
    common = {  # the rendered prompts fit 32 tokens, the replies 12; one evaluation, at the end
        "batch_size": 2,
        "data.max_prompt_len": 32,
        "data.max_response_len": 12,
        "sampling.max_new_tokens": 2,
        "data.num_eval_prompts": 2,
        "eval_every": 0,
    }
    in_process = {
        "sft": {"model.hf_checkpoint": ckpt, "data.train_file": demos},
        "preference_model": {
            "model.hf_checkpoint": ckpt,
            "data.train_file": pairs,
            "data.chat_template": True,
            "data.on_error": "skip",
        },
    }
    for stage, overrides in in_process.items():
        _train(stage, str(root / stage), {**common, **overrides, "num_steps": 2})
    cli = [f"--config.{k}={v}" for k, v in {**common, "num_steps": 1}.items()] + [
        f"--config.init_from={root / 'sft'}",
        f"--config.judge={root / 'preference_model'}",
        f"--config.data.prompts_file={prompts}",
    ]
    out = subprocess.run(
        [sys.executable, "-m", "nlhf_jax.train", "--config", "configs/text.py:nash_md",
         "--workdir", str(root / "nash_md"), *cli],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert out.returncode == 0, f"nash_md: {out.stderr[-3000:]}"
    return root


def _train(stage: str, workdir: str, overrides: dict) -> None:
    """``configs/text.py:<stage>`` with ``overrides`` (dotted keys), trained as the command
    line trains it (its config recorded, then the loop), in this process on one device."""
    from nlhf_jax.train import loop, methods, settings

    spec = importlib.util.spec_from_file_location("text_configs", f"{REPO}/configs/text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(stage)
    config.update_from_flattened_dict({**overrides, "mesh.num_devices": 1})
    settings.validate(config)
    settings.record(workdir, config, False, say=lambda line: None)
    trainer = methods.build(config, workdir)
    loop.run(trainer, workdir, num_steps=config.num_steps, eval_every=0, quiet=True)


def _run_json(workdir):
    with open(os.path.join(workdir, "run.json")) as f:
        return json.load(f)


def test_sft_on_conversations(runs):
    identity = _run_json(runs / "sft")
    # Conversations went through the template, so sampling this run renders prompts too.
    assert identity["chat_template"] is True and identity["sft_turns"] == "last"
    assert identity["chat"] == {"date_string": "26 Jul 2024", "enable_thinking": False}
    with open(runs / "sft" / "samples.jsonl") as f:
        texts = [json.loads(line)["prompt"] for line in f]
    assert texts and all(t.startswith("user\n") for t in texts)  # decoded without specials


def test_preference_model_on_hh_transcripts(runs):
    data = _run_json(runs / "preference_model")["data"]
    assert data["skipped_rows"] == {"train": 1} and data["chat_template"] is True


def test_nash_md_on_conversational_prompts_saved_to_disk(runs):
    identity = _run_json(runs / "nash_md")
    assert identity["prompts"]["prompts_file"].endswith("prompts")
    assert identity["chat_template"] is True
    with open(runs / "nash_md" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert any(r["kind"] == "train" for r in rows)
    assert 0.0 <= [r for r in rows if r["kind"] == "eval"][-1]["eval/win_rate_vs_reference"] <= 1
    # The policy saw the prompts as the template renders them, with the generation prompt.
    with open(runs / "nash_md" / "samples.jsonl") as f:
        prompts = [json.loads(line)["prompt"] for line in f]
    generation = "\nassistant\n<think>\n\n</think>\n\n"  # decoded without <|im_*|>
    assert prompts and all(p.startswith("user\n") and p.endswith(generation) for p in prompts)
