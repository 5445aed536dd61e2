"""grain pipelines: padding and masks, truncation counts, shuffling, exact resume, sharding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nlhf_jax import data
from nlhf_jax.models.tokenizer import build_bpe_tokenizer


def _token_pairs(n):
    """Token-id pair records whose prompt encodes the record index (for tracking order)."""
    return [
        {
            "prompt": [1, 10 + i] + [3] * (i % 4),  # lengths 2..5
            "response_a": [20 + i] * (1 + i % 3),  # lengths 1..3
            "response_b": [30 + i],
            "label": (i % 2) * 1.0,
        }
        for i in range(n)
    ]


def _ids(batch):
    """Record indices of a batch, read back from the left-padded prompt (token 10 + i)."""
    return [int(row[row != 0][1]) - 10 for row in batch["prompt"]]


def _opts(**kwargs):
    return data.BatchOptions(
        **{"batch_size": 4, "max_prompt_len": 6, "max_response_len": 4, **kwargs}
    )


def _pairs(source, **kwargs):
    index, count = kwargs.pop("process_index", 0), kwargs.pop("process_count", 1)
    return data.preference_batches(
        source, _opts(**kwargs), process_index=index, process_count=count
    )


def test_pair_batch_shapes_padding_and_masks():
    records = _token_pairs(4)
    batch = next(_pairs(records, shuffle=False))
    assert batch.keys() == {
        "prompt", "prompt_mask", "response_a", "response_a_mask", "response_b",
        "response_b_mask", "label",
    }  # fmt: skip
    assert batch["prompt"].shape == (4, 6) and batch["prompt"].dtype == np.int32
    assert batch["response_a"].shape == (4, 4) and batch["response_b_mask"].dtype == bool
    assert batch["label"].dtype == np.float32 and batch["label"].tolist() == [0, 1, 0, 1]
    # Record 3: prompt [1, 13, 3, 3, 3] is LEFT-padded, response_a [23]*1 RIGHT-padded.
    assert batch["prompt"][3].tolist() == [0, 1, 13, 3, 3, 3]
    assert batch["prompt_mask"][3].tolist() == [False, True, True, True, True, True]
    assert batch["response_a"][2].tolist() == [22, 22, 22, 0]
    assert batch["response_a_mask"][2].tolist() == [True, True, True, False]
    assert batch["response_b"][0].tolist() == [30, 0, 0, 0]


def test_truncation_is_counted_logged_and_keeps_prompt_end(caplog):
    records = _token_pairs(8)
    it = _pairs(records, shuffle=False, max_prompt_len=3, max_response_len=2, num_epochs=1)
    batch = next(it)
    # Prompt [1, 13, 3, 3, 3] keeps its last 3 tokens; response [22, 22, 22] its first 2.
    assert batch["prompt"][3].tolist() == [3, 3, 3] and batch["prompt_mask"][1:].all()
    assert batch["response_a"][2].tolist() == [22, 22]
    list(it)
    # Prompts longer than 3: i % 4 in (2, 3); responses longer than 2: i % 3 == 2 (a only).
    assert it.counts == {"examples": 8, "truncated_prompts": 4, "truncated_responses": 2}
    assert "truncated prompts so far: 2" in caplog.text  # first log, then at each doubling
    assert "truncated prompts so far: 4" in caplog.text


def test_long_prompt_error_names_the_source_row():
    records = _token_pairs(4)
    records[2]["source"] = b"pairs.jsonl:3"
    it = _pairs(records, shuffle=False, max_prompt_len=3, on_long_prompt="error")
    with pytest.raises(ValueError, match=r"^pairs.jsonl:3:prompt: 4 tokens, longer than"):
        next(it)


def test_append_eos_is_dropped_by_truncation():
    records = [{"prompt": [1, 5], "response": [7] * n} for n in (1, 3)]
    opts = _opts(batch_size=2, max_response_len=3, append_eos=True, eos_id=2, shuffle=False)
    batch = next(data.sft_batches(records, opts, process_index=0, process_count=1))
    assert batch.keys() == {"prompt", "prompt_mask", "response", "response_mask"}
    assert batch["response"].tolist() == [[7, 2, 0], [7, 7, 7]]  # a cut response gets no EOS


def test_text_records_from_tfds_are_tokenized(tmp_path):
    tokenizer = build_bpe_tokenizer(str(tmp_path / "tok"))
    rows = [{"prompt": f"Prompt {i}: explain", "chosen": "The waves", "rejected": "No"} for i in
            range(6)]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    built = data.build_pairs(str(tmp_path / "p.jsonl"), str(tmp_path / "ds"))
    opts = _opts(batch_size=3, max_prompt_len=16, max_response_len=8, append_eos=True)
    it = data.preference_batches(
        built.source("train"), opts, tokenizer=tokenizer, process_index=0, process_count=1
    )
    batch = next(it)
    want = tokenizer("The waves", add_special_tokens=False)["input_ids"] + [2]
    assert batch["response_a"][0][: len(want)].tolist() == want
    assert batch["response_a_mask"][0].sum() == len(want)
    assert batch["label"].tolist() == [1.0, 1.0, 1.0]
    prompts = {tokenizer.decode(p[m]) for p, m in zip(batch["prompt"], batch["prompt_mask"],
                                                      strict=True)}  # fmt: skip
    assert prompts <= {r["prompt"] for r in rows} and len(prompts) == 3
    prompt_only = data.build_prompts(str(tmp_path / "p.jsonl"), str(tmp_path / "ds"))
    batch = next(
        data.prompt_batches(
            prompt_only.source(), opts, tokenizer=tokenizer, process_index=0, process_count=1
        )
    )
    assert batch.keys() == {"prompt", "prompt_mask"} and batch["prompt"].shape == (3, 16)


def test_shuffle_is_deterministic_and_new_each_epoch():
    records = _token_pairs(8)
    run = lambda seed: [_ids(next(it)) for it in [_pairs(records, seed=seed)] for _ in range(4)]
    first = run(0)
    assert first == run(0) and first != run(1)
    epoch_1, epoch_2 = [*first[0], *first[1]], [*first[2], *first[3]]
    assert sorted(epoch_1) == sorted(epoch_2) == list(range(8))  # each epoch sees every record
    assert epoch_1 != epoch_2


def test_resume_yields_exactly_the_uninterrupted_batches():
    records = _token_pairs(10)  # batches straddle epoch boundaries (10 records, batch 4)
    uninterrupted = [next(it) for it in [_pairs(records, seed=3, max_prompt_len=3)]
                     for _ in range(8)]  # fmt: skip
    it = _pairs(records, seed=3, max_prompt_len=3)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON checkpoint
    resumed = _pairs(records, seed=3, max_prompt_len=3)
    resumed.set_state(state)
    assert resumed.counts == it.counts
    for expected in uninterrupted[3:]:
        got = next(resumed)
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key])


@pytest.mark.parametrize("count", [2, 3])
def test_processes_hold_their_rows_of_the_one_process_batches(count):
    """Process k's batch t is rows [k b, (k + 1) b) of a one-process run's batch t, for every
    batch of two epochs (shuffled each): the global batches do not depend on the process count,
    and together the processes read each record exactly once per epoch."""
    records, b = _token_pairs(12), 2
    one = _pairs(records, batch_size=b * count, num_epochs=2, process_index=0, process_count=1)
    parts = [
        _pairs(records, batch_size=b * count, num_epochs=2, process_index=k, process_count=count)
        for k in range(count)
    ]
    for whole in one:
        rows = [next(part) for part in parts]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([r[key] for r in rows]), whole[key])
        assert all(len(r["label"]) == b for r in rows)
    for part in parts:
        with pytest.raises(StopIteration):
            next(part)


def test_a_batch_must_split_evenly_over_the_processes():
    with pytest.raises(ValueError, match="batch_size 3 is not divisible by the 2 processes"):
        _pairs(_token_pairs(12), batch_size=3, process_index=0, process_count=2)


def test_bad_records_fail_loudly():
    with pytest.raises(ValueError, match="text record, but no tokenizer"):
        next(_pairs([{"prompt": "x", "response_a": [1], "response_b": [1], "label": 1.0}] * 4))
    bad = _token_pairs(4)
    bad[1]["label"] = 1.5
    with pytest.raises(ValueError, match=r"record 1:label: 1.5 is outside"):
        next(_pairs(bad, shuffle=False))
    with pytest.raises(ValueError, match="fewer than one batch"):
        _pairs(_token_pairs(3))
