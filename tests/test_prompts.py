"""Prompt sources and the run's tokenizer: text prompts from a file or a tfds set, the chat
template, truncation from the left, exact resume, and the refusals a user's mistake gets."""

from __future__ import annotations

import json

import ml_collections
import numpy as np
import pytest

from nlhf_jax import data, sources
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.sources import synthetic_source, text_source
from nlhf_jax.tasks import text
from nlhf_jax.tasks.synthetic import SyntheticTask
from nlhf_jax.train.defaults import base_config


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return text.build_tokenizer(str(tmp_path_factory.mktemp("tok")))


def _write(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def _source(tok, tmp_path, prompts, **kw):
    path = _write(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    return text_source(tok, prompts_file=path, data_dir=str(tmp_path / "data"), **kw)


def test_text_prompts_are_left_padded_and_decode_back(tok, tmp_path):
    prompts = [
        "Tell me about rain.",
        "Write one line about the moon.",
        "Say something about chess.",
    ]
    source = _source(tok, tmp_path, prompts * 4, max_prompt_len=16, num_eval_prompts=3)
    batch = next(source.batches(4, 0))
    assert batch["prompt"].shape == (4, 16)
    # Left-padded: every row ends at the last column, its padding (pad id) before it.
    assert batch["prompt_mask"][:, -1].all()
    assert np.all(np.diff(batch["prompt_mask"].astype(int), axis=1) >= 0)
    assert np.all(batch["prompt"][~batch["prompt_mask"]] == tok.pad_token_id)
    decoded = {
        source.decode(x, m) for x, m in zip(batch["prompt"], batch["prompt_mask"], strict=True)
    }
    assert decoded <= set(prompts)
    x, m = source.eval_prompts
    assert [source.decode(x[i], m[i]) for i in range(3)] == prompts  # the file's first rows
    assert source.eos_id == tok.eos_token_id and source.pad_id == tok.pad_token_id
    assert source.task is None and source.vocab_size == len(tok)


def test_long_prompts_lose_their_beginning_and_are_counted(tok, tmp_path):
    long = "Tell me about the ocean, the desert, the moon and the city, then about chess."
    n = len(tok(long, add_special_tokens=False)["input_ids"])
    source = _source(tok, tmp_path, [long, "Tell me about rain."] * 4, max_prompt_len=n - 3)
    batches = source.batches(8, 0)
    batch = next(batches)
    assert batches.counts["truncated_prompts"] == 4
    row = batch["prompt"][[source.decode(x, m) != "Tell me about rain." for x, m in
                           zip(batch["prompt"], batch["prompt_mask"], strict=True)]][0]  # fmt: skip
    kept = tok(long, add_special_tokens=False)["input_ids"][3:]
    np.testing.assert_array_equal(row, kept)  # the end of the prompt: what the answer follows


def test_chat_template_wraps_each_prompt(tok, tmp_path):
    source = _source(tok, tmp_path, ["Tell me about rain."] * 4, chat_template=True)
    x, m = source.eval_prompts
    assert source.decode(x[0], m[0]) == "User: Tell me about rain.\nAssistant:"
    assert source.identity["chat_template"] is True


def test_text_batches_resume_exactly(tok, tmp_path):
    prompts = [f"Tell me about {t}." for t in text.TOPICS]
    source = _source(tok, tmp_path, prompts)
    first = source.batches(3, 7)
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    expected = [next(first)["prompt"] for _ in range(4)]
    second = source.batches(3, 7)
    second.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(second)["prompt"], want)


def test_tfds_prompt_set(tok, tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": f"Tell me about {t}."} for t in text.TOPICS])
    built = data.build_prompts(path, str(tmp_path / "ds"))
    source = text_source(tok, prompts_tfds=built.dataset_dir, data_dir=str(tmp_path / "data"))
    batch = next(source.batches(5, 0))
    decoded = {
        source.decode(x, m) for x, m in zip(batch["prompt"], batch["prompt_mask"], strict=True)
    }
    assert decoded <= {f"Tell me about {t}." for t in text.TOPICS} and len(decoded) > 1


def test_prompt_source_errors_name_the_file(tok, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=f"{empty}: no prompts"):
        text_source(tok, prompts_file=str(empty), data_dir=str(tmp_path))
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": "Tell me about rain."}, {"text": "x"}])
    with pytest.raises(data.DataError, match=f"{bad}:2:prompt: missing field"):
        text_source(tok, prompts_file=bad, data_dir=str(tmp_path / "d"))  # read up front
    with pytest.raises(MissingInput, match="no such file"):
        text_source(tok, prompts_file=str(tmp_path / "nope.jsonl"), data_dir=str(tmp_path))
    with pytest.raises(UserError, match="exactly one of"):
        text_source(tok, data_dir=str(tmp_path))


def test_synthetic_source_is_the_task(tmp_path):
    task = SyntheticTask()
    source = synthetic_source(task, str(tmp_path))
    batch = next(source.batches(16, 0))
    assert set(map(tuple, batch["prompt"])) <= set(map(tuple, task.prompts()))
    assert source.task is task and source.max_new_tokens == task.response_len
    assert source.decode(task.responses()[0], np.ones(task.response_len, bool)) == "y0 y0 <eos>"


def _tokenizer_config(path: str) -> ml_collections.ConfigDict:
    config = base_config("sft")
    config.data.tokenizer = path
    return config


def test_tokenizer_without_eos_or_pad_is_refused(tok, tmp_path):
    tok.save_pretrained(str(tmp_path / "ok"))
    assert sources.tokenizer(_tokenizer_config(str(tmp_path / "ok"))).eos_token_id is not None
    for name in ("pad", "eos"):
        broken = tmp_path / f"no_{name}"
        tok.save_pretrained(str(broken))
        cfg_path = broken / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop(f"{name}_token", None)
        cfg_path.write_text(json.dumps(cfg))
        special = broken / "special_tokens_map.json"
        if special.exists():
            m = json.loads(special.read_text())
            m.pop(f"{name}_token", None)
            special.write_text(json.dumps(m))
        with pytest.raises(UserError, match=f"has no {name} token"):
            sources.tokenizer(_tokenizer_config(str(broken)))


def test_tokenizer_larger_than_the_model_is_refused(tok, tmp_path):
    tok.save_pretrained(str(tmp_path / "tok"))
    with pytest.raises(UserError, match=f"{len(tok)} tokens.*vocab_size=64"):
        sources.tokenizer(_tokenizer_config(str(tmp_path / "tok")), vocab_size=64)


def test_data_source_follows_what_is_named():
    config = base_config("nash_md")
    assert sources.kind(config) == "synthetic"
    config.data.prompts_file = "prompts.jsonl"
    assert sources.kind(config) == "file"
    config.data.source = "synthetic"  # an explicit choice wins
    assert sources.kind(config) == "synthetic"
    config.data.source = "files"
    with pytest.raises(UserError, match=r"config\.data\.source='files'"):
        sources.kind(config)
