"""tfds builders: every layout round-trips, bad rows fail with file:row:field or are counted."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nlhf_jax import data

PAIRS = [  # normalized records every layout below must produce
    {"prompt": "Say hi.", "response_a": "Hi!", "response_b": "Go away.", "label": 1.0},
    {"prompt": "Add 2+2.", "response_a": "5", "response_b": "4", "label": 0.0},
]


def _chosen_rejected(pairs):
    rows = []
    for p in pairs:
        a, b = (p["response_a"], p["response_b"])
        chosen, rejected = (a, b) if p["label"] == 1.0 else (b, a)
        rows.append({"prompt": p["prompt"], "chosen": chosen, "rejected": rejected})
    return rows


def _tldr(pairs):
    return [
        {
            "info": {"post": p["prompt"], "title": None, "subreddit": None},
            "summaries": [{"text": p["response_a"]}, {"text": p["response_b"]}],
            "choice": 0 if p["label"] == 1.0 else 1,
        }
        for p in pairs
    ]


def _write(path, rows):
    if str(path).endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def _read(built, split="train"):
    source = built.source(split)
    out = []
    for i in range(len(source)):
        record = {k: v.decode() if isinstance(v, bytes) else v for k, v in source[i].items()}
        record["label"] = float(record["label"]) if "label" in record else None
        out.append(record)
    return out


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
@pytest.mark.parametrize("layout", ["chosen_rejected", "pairwise_label", "pairwise_prob", "tldr"])
def test_pair_layouts_round_trip(tmp_path, ext, layout):
    if layout == "chosen_rejected":
        rows, expected = _chosen_rejected(PAIRS), [dict(p, label=1.0) for p in PAIRS]
        for e, p in zip(expected, PAIRS, strict=True):  # chosen becomes response_a
            if p["label"] == 0.0:
                e["response_a"], e["response_b"] = p["response_b"], p["response_a"]
    elif layout == "tldr":
        rows = _tldr(PAIRS)
        expected = [dict(p, prompt=f"POST: {p['prompt']}\nTL;DR:") for p in PAIRS]
    else:
        key = "label" if layout == "pairwise_label" else "probability"
        rows = [dict(p) for p in PAIRS]
        for r in rows:
            r[key] = r.pop("label") if key == "label" else 0.25 + 0.5 * r.pop("label")
        expected = [dict(p, label=r[key]) for p, r in zip(PAIRS, rows, strict=True)]
    path = _write(tmp_path / f"in.{ext}", rows)
    built = data.build_pairs(path, str(tmp_path / "ds"))
    got = _read(built)
    first_row = 0 if ext == "parquet" else 1
    assert [r.pop("source") for r in got] == [f"{path}:{first_row + i}" for i in range(2)]
    assert got == expected
    assert built.num_examples == {"train": 2} and built.skipped == {"train": 0}


def test_tldr_prompt_with_title_and_subreddit(tmp_path):
    rows = _tldr(PAIRS[:1])
    rows[0]["info"].update(title="Hello", subreddit="test")
    built = data.build_pairs(_write(tmp_path / "t.jsonl", rows), str(tmp_path / "ds"))
    assert _read(built)[0]["prompt"] == "SUBREDDIT: r/test\nTITLE: Hello\nPOST: Say hi.\nTL;DR:"


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_prompts_round_trip_and_splits(tmp_path, ext):
    train = _write(tmp_path / f"a.{ext}", [{"prompt": "one", "x": 1}, {"prompt": "two", "x": 2}])
    test = _write(tmp_path / f"b.{ext}", [{"prompt": "three", "x": 3}])
    built = data.build_prompts({"train": train, "test": [test]}, str(tmp_path / "ds"))
    assert [r["prompt"] for r in _read(built)] == ["one", "two"]
    assert [r["prompt"] for r in _read(built, "test")] == ["three"]


def test_generated_records_round_trip(tmp_path):
    examples = [
        {"prompt": [1, 5, 6], "response": np.array([7], np.int64), "label": 0.5, "text": "x"},
        {"prompt": [1], "response": [], "label": 1.0, "text": "y"},
    ]
    features = {"prompt": "tokens", "response": "tokens", "label": "float32", "text": "text"}
    built = data.build_records(
        {"train": iter(examples)}, features, str(tmp_path), name="demo", metadata={"k": 3}
    )
    assert built.dataset_dir.endswith(os.path.join("generated_records", "demo", "1.0.0"))
    source = data.load_source(built.dataset_dir, "train")
    assert source[0]["prompt"].dtype == np.int32
    assert source[0]["prompt"].tolist() == [1, 5, 6] and source[1]["response"].tolist() == []
    assert float(source[0]["label"]) == 0.5 and source[1]["text"] == b"y"


def test_generated_records_bad_example_names_index_and_field(tmp_path):
    examples = [{"ids": [1, 2]}, {"ids": [0.5]}]
    with pytest.raises(data.DataError, match=r"train\[1\]:ids: expected a 1-D integer"):
        data.build_records({"train": examples}, {"ids": "tokens"}, str(tmp_path), name="bad")
    assert not os.path.exists(tmp_path / "generated_records" / "bad" / "1.0.0")


GOOD = {"prompt": "p", "response_a": "a", "response_b": "b", "label": 1}
BAD_ROWS = [  # (JSONL line written in place of row 2, the field the error must name)
    ("{not json", "<json>"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "response_b"}), "response_b"),
    (json.dumps(dict(GOOD, label=1.5)), "label"),
    (json.dumps(dict(GOOD, label="yes")), "label"),
    (json.dumps(dict(GOOD, label=0.5)), "label"),  # a hard label must be 0 or 1
    (json.dumps({**GOOD, "label": None, "probability": -0.1}), "probability"),
    (json.dumps(dict(GOOD, response_a="  ")), "response_a"),
    (json.dumps(dict(GOOD, prompt="")), "prompt"),
    (json.dumps(dict(GOOD, prompt=["a list"])), "prompt"),
]


@pytest.mark.parametrize(("line", "field"), BAD_ROWS)
def test_malformed_jsonl_row_fails_with_file_line_field(tmp_path, line, field):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(data.DataError) as info:
        data.build_pairs(str(path), str(tmp_path / "ds"))
    assert str(info.value).startswith(f"{path}:2:{field}:")
    # Nothing half-written: no version directory, and a later build does not reuse anything.
    config_dir = tmp_path / "ds" / "preference_pairs" / "default"
    assert not config_dir.exists() or not any(config_dir.iterdir())  # no incomplete.* left
    path.write_text(json.dumps(GOOD) + "\n")
    assert data.build_pairs(str(path), str(tmp_path / "ds")).num_examples == {"train": 1}


def test_malformed_parquet_rows_name_row_index_and_tldr_fields(tmp_path):
    rows = _tldr(PAIRS) + _tldr(PAIRS[:1])
    rows[1]["choice"] = 2
    path = _write(tmp_path / "t.parquet", rows)
    with pytest.raises(data.DataError, match=rf"^{path}:1:choice: 2 is outside"):
        data.build_pairs(path, str(tmp_path / "ds"))
    rows[1]["choice"], rows[2]["summaries"][1]["text"] = 1, ""
    path = _write(tmp_path / "t.parquet", rows)
    with pytest.raises(data.DataError, match=rf"^{path}:2:summaries\[1\].text: empty"):
        data.build_pairs(path, str(tmp_path / "ds"))


def test_skip_counts_and_stores_bad_rows(tmp_path, caplog):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join([json.dumps(GOOD)] + [line for line, _ in BAD_ROWS]) + "\n\n")
    built = data.build_pairs(str(path), str(tmp_path / "ds"), on_error="skip")
    assert built.num_examples == {"train": 1}
    assert built.skipped == {"train": len(BAD_ROWS)}
    assert built.skipped_messages["train"][0].startswith(f"{path}:2:<json>:")
    assert f"skipped {len(BAD_ROWS)} malformed rows" in caplog.text
    assert data.load_dataset(built.dataset_dir).skipped == {"train": len(BAD_ROWS)}


def test_reuse_checks_inputs(tmp_path):
    path = _write(tmp_path / "p.jsonl", [{"prompt": "a"}])
    first = data.build_prompts(path, str(tmp_path / "ds"))
    assert data.build_prompts(path, str(tmp_path / "ds")) == first  # reused
    _write(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": "bb"}])
    os.utime(path, (1, 1))  # a distinct mtime even on coarse-clock filesystems
    with pytest.raises(ValueError, match="overwrite=True"):
        data.build_prompts(path, str(tmp_path / "ds"))
    rebuilt = data.build_prompts(path, str(tmp_path / "ds"), overwrite=True)
    assert rebuilt.num_examples == {"train": 2}


def test_unknown_layout_fails_naming_fields(tmp_path):
    path = _write(tmp_path / "x.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(data.DataError, match=r":1:<fields>: fields \['answer', 'question'\]"):
        data.build_pairs(path, str(tmp_path / "ds"))
