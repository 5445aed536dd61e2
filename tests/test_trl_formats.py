"""TRL's dataset formats through `python -m nlhf_jax.train`, with Qwen3's real tokenizer and
its chat template on a tiny transformers-made Qwen2 (vocabulary 151,680, d = 16, one layer):
SFT on conversations (`messages`), a preference model on HH-RLHF transcripts as published
(implicit prompt; a row whose dialogues differ is skipped and counted), and Nash-MD on
conversational prompts saved by `datasets.save_to_disk`. One or two steps each: what is checked
is that each format is read, rendered and trained end to end, not what the steps learn."""

from __future__ import annotations

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
    common = [  # the rendered prompts fit 32 tokens, the replies 12; one evaluation, at the end
        "--config.batch_size=2",
        "--config.data.max_prompt_len=32",
        "--config.data.max_response_len=12",
        "--config.sampling.max_new_tokens=2",
        "--config.data.num_eval_prompts=2",
        "--config.eval_every=0",
    ]
    stages = {
        "sft": [f"--config.model.hf_checkpoint={ckpt}", f"--config.data.train_file={demos}"],
        "preference_model": [
            f"--config.model.hf_checkpoint={ckpt}",
            f"--config.data.train_file={pairs}",
            "--config.data.chat_template=true",
            "--config.data.on_error=skip",
        ],
        "nash_md": [
            f"--config.init_from={root / 'sft'}",
            f"--config.judge={root / 'preference_model'}",
            f"--config.data.prompts_file={prompts}",
        ],
    }
    # The three runs share the session's compilation cache (tests/conftest.py): the same backend
    # builds the same models, whose initializers and samplers compile the same programs.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    for stage, args in stages.items():
        steps = 1 if stage == "nash_md" else 2
        out = subprocess.run(
            [sys.executable, "-m", "nlhf_jax.train", "--config", f"configs/text.py:{stage}",
             "--workdir", str(root / stage), f"--config.num_steps={steps}", *common, *args],
            capture_output=True, text=True, cwd=REPO, env=env,
        )  # fmt: skip
        assert out.returncode == 0, f"{stage}: {out.stderr[-3000:]}"
    return root


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
