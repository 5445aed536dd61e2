"""Chat templates done right, with Qwen3's and Llama 3.2's real tokenizers: the prompt ends with
the generation prompt, the response is exactly the assistant turn and its end-of-turn token,
one BOS, a fixed date, Qwen3's thinking switch, and templates that cannot be split refused."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pytest
import transformers

from nlhf_jax import data
from nlhf_jax.errors import UserError

HH_PROMPT = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant:"


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    return transformers.AutoTokenizer.from_pretrained(qwen3_dir)


@pytest.fixture(scope="module")
def llama3(llama3_dir):
    return transformers.AutoTokenizer.from_pretrained(llama3_dir)


def _pair(prompt=HH_PROMPT, a=" Blue.", b=" Seven.", source="f.jsonl:7"):
    return {"prompt": prompt, "response_a": a, "response_b": b, "label": 1.0, "source": source}


def _encode(tok, records, kind="pairs", **kw):
    chat = data.ChatOptions(**kw)
    return data.ChatEncoder(tok, chat_template=True, options=chat).encode(kind, records)


def test_qwen3_response_is_the_assistant_turn_and_its_end(qwen3):
    (pair,) = _encode(qwen3, [_pair()])
    prompt = qwen3.decode(pair["prompt"])
    assert prompt.startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!")
    # enable_thinking=False (the default): the empty think block closes the generation prompt.
    assert prompt.endswith(
        "Name a colour.<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    ids = lambda text: qwen3(text, add_special_tokens=False)["input_ids"]
    assert pair["response_a"].tolist() == ids("Blue.<|im_end|>")
    assert pair["response_b"].tolist() == ids("Seven.<|im_end|>")
    assert pair["response_a"][-1] == qwen3.eos_token_id == qwen3.convert_tokens_to_ids("<|im_end|>")
    # Prompt then response is the whole rendered conversation, up to the turn's end.
    whole = qwen3.apply_chat_template(
        [*data.chat.prompt_messages(HH_PROMPT), {"role": "assistant", "content": "Blue."}],
        tokenize=False,
        enable_thinking=False,
    )
    assert whole == prompt + "Blue.<|im_end|>\n"
    # The batched call underneath gives the ids `tokenizer(text)` gives.
    texts = [prompt, "Blue.<|im_end|>", "naïve café 東京 🙂  spaces\n\n"]
    got = data.ChatEncoder(qwen3)._token_ids(texts)
    assert got == [ids(t) for t in texts]


def test_qwen3_thinking_switch(qwen3):
    think = [{"role": "assistant", "content": "<think>Blue is a colour.</think>Blue."}]
    refused, _ = _encode(qwen3, [_pair(a=think), _pair()])
    assert isinstance(refused, data.DataError)
    assert str(refused).startswith("f.jsonl:7:response_a: the chat template is not prefix")
    assert "enable_thinking=True" in str(refused)
    (pair,) = _encode(qwen3, [_pair(a=think)], enable_thinking=True)
    assert qwen3.decode(pair["prompt"]).endswith("<|im_start|>assistant\n")
    assert (
        qwen3.decode(pair["response_a"])
        == "<think>\nBlue is a colour.\n</think>\n\nBlue.<|im_end|>"
    )
    # A reply without reasoning gets the template's empty block, now part of the response.
    assert qwen3.decode(pair["response_b"]) == "<think>\n\n</think>\n\nSeven.<|im_end|>"


def test_llama3_one_bos_and_a_fixed_date(llama3):
    (pair,) = _encode(llama3, [_pair()])
    bos = llama3.convert_tokens_to_ids("<|begin_of_text|>")
    assert pair["prompt"][0] == bos and np.sum(pair["prompt"] == bos) == 1
    prompt = llama3.decode(pair["prompt"])
    assert "Today Date: 26 Jul 2024\n" in prompt
    assert datetime.date.today().strftime("%d %b %Y") not in prompt
    assert prompt.endswith(
        "Name a colour.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert llama3.decode(pair["response_a"]) == "Blue.<|eot_id|>"
    (other_day,) = _encode(llama3, [_pair()], date_string="01 Jan 2030")
    assert "Today Date: 01 Jan 2030" in llama3.decode(other_day["prompt"])
    # Text prompts in the pipeline (a tfds prompt set, evaluation prompts) render the same way.
    options = data.BatchOptions(1, 256, chat_template=True)
    tokens, mask, _ = data.encode_prompts([{"prompt": HH_PROMPT}], options, tokenizer=llama3)
    np.testing.assert_array_equal(tokens[0][mask[0]], pair["prompt"])


def test_plain_text_prompts_start_as_the_tokenizer_starts_text(llama3, qwen3):
    """Without a template a prompt is encoded as ``tokenizer(text)`` encodes it: after Llama 3's
    BOS (a model trained with one degenerates without it: Gemma 3 270M did), after nothing for
    Qwen3, whose tokenizer adds none; responses never get one."""
    for tok in (llama3, qwen3):
        encoder = data.ChatEncoder(tok)
        (pair,) = encoder.encode("pairs", [_pair()])
        assert pair["prompt"].tolist() == tok(HH_PROMPT)["input_ids"]
        assert encoder.prompt_ids(HH_PROMPT).tolist() == tok(HH_PROMPT)["input_ids"]
        plain = tok(" Blue.", add_special_tokens=False)["input_ids"]
        assert pair["response_a"].tolist() == [*plain, tok.eos_token_id]
    bos = llama3.convert_tokens_to_ids("<|begin_of_text|>")
    assert data.ChatEncoder(llama3).prompt_ids(HH_PROMPT)[0] == bos
    assert qwen3(HH_PROMPT)["input_ids"] == qwen3(HH_PROMPT, add_special_tokens=False)["input_ids"]


def test_every_assistant_turn_trained_with_the_rest_masked(llama3, tmp_path):
    conversation = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    path = tmp_path / "messages.jsonl"
    path.write_text(json.dumps({"messages": conversation}) + "\n")
    built = data.build_tokenized("demos", str(path), str(tmp_path / "ds"), llama3, turns="all")
    record = built.source("train")[0]
    pieces = [
        (llama3.decode(record["response"][record["response_train"] == trained]), trained)
        for trained in (True, False)
    ]
    assert pieces == [
        ("Hello!<|eot_id|>Blue.<|eot_id|>", True),
        ("<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n", False),
    ]  # fmt: skip
    options = data.BatchOptions(1, 64, 24, shuffle=False)
    batch = next(data.sft_batches(built.source("train"), options, process_index=0, process_count=1))
    loss = batch["response_loss_mask"][0]
    assert (
        loss.sum() == record["response_train"].sum() and not loss[~batch["response_mask"][0]].any()
    )
    last = data.build_tokenized("demos", str(path), str(tmp_path / "ds"), llama3)
    assert llama3.decode(last.source("train")[0]["response"]) == "Blue.<|eot_id|>"
    assert "response_train" not in last.source("train")[0]


def test_templates_that_cannot_be_split_are_refused(llama3, tmp_path):
    llama3 = transformers.AutoTokenizer.from_pretrained(llama3.name_or_path)
    # A generation prompt unlike the header the template writes before a reply.
    llama3.chat_template = llama3.chat_template.replace(
        "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}", "{{- 'Answer:' }}"
    )
    assert "Answer:" in llama3.chat_template
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": HH_PROMPT, "chosen": " Blue.", "rejected": " No."}))
    with pytest.raises(data.DataError, match=r"pairs\.jsonl:1:response_a: the chat template is"):
        data.build_tokenized("pairs", str(path), str(tmp_path / "a"), llama3, chat_template=True)
    with pytest.raises(UserError, match="no rows to write; train: 1 malformed rows skipped"):
        data.build_tokenized(
            "pairs", str(path), str(tmp_path / "b"), llama3, chat_template=True, on_error="skip"
        )
    # The base model's EOS never ends an instruct turn: sampling would not stop where the
    # template does.
    llama3 = transformers.AutoTokenizer.from_pretrained(llama3.name_or_path)
    llama3.eos_token = "<|end_of_text|>"
    with pytest.raises(UserError, match="without the tokenizer's EOS token '<\\|end_of_text\\|>'"):
        _encode(llama3, [_pair()])
