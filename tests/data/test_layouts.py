"""Layouts as people have them: HH-RLHF transcripts (implicit prompt), TRL's conversational
formats, their detection, the rows they refuse, and Hugging Face datasets saved to disk."""

from __future__ import annotations

import json

import pytest

from nlhf_jax import data
from nlhf_jax.data import readers
from nlhf_jax.errors import UserError

_TWO_TURNS = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant:"
# HH-like rows: a one-turn and a two-turn dialogue, then the two faults the published test
# split has (5 rows whose dialogues differ before the final turn, 4 with an empty response).
HH_ROWS = [
    {
        "chosen": "\n\nHuman: What is rain?\n\nAssistant: Water falling from clouds.",
        "rejected": "\n\nHuman: What is rain?\n\nAssistant: No idea.",
    },
    {
        "chosen": f"{_TWO_TURNS} Blue.",
        "rejected": f"{_TWO_TURNS} Seven.",
    },
    {
        "chosen": "\n\nHuman: Tell me a joke.\n\nAssistant: Knock knock.",
        "rejected": "\n\nHuman: Tell me a story.\n\nAssistant: Once upon a time.",
    },
    {
        "chosen": "\n\nHuman: Say something.\n\nAssistant: ",
        "rejected": "\n\nHuman: Say something.\n\nAssistant: Something.",
    },
]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


def test_hh_transcripts_split_at_the_last_assistant_turn(tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", HH_ROWS)
    with pytest.raises(data.DataError, match=rf"^{path}:3:rejected: its prompt .* differs") as e:
        list(readers.read_pairs(path))
    # The error names the way past it (HH-RLHF as published has such rows).
    assert str(e.value).endswith("(--config.data.on_error=skip skips such rows and counts them)")
    skipped = data.SkippedRows()
    pairs = list(readers.read_pairs(path, on_error="skip", skipped=skipped))
    assert skipped.count == 2
    assert skipped.messages[1].startswith(f"{path}:4:chosen: empty final response")
    assert "on_error" not in skipped.messages[1]  # a skipped row's count says what was skipped
    # As published: the prompt ends with the last "\n\nAssistant:", the response keeps its space.
    first, second = pairs
    assert first["prompt"] == "\n\nHuman: What is rain?\n\nAssistant:"
    assert (first["response_a"], first["response_b"]) == (
        " Water falling from clouds.",
        " No idea.",
    )
    assert second["prompt"].endswith("Name a colour.\n\nAssistant:") and second["label"] == 1.0
    assert [p["source"] for p in pairs] == [f"{path}:1", f"{path}:2"]
    # The same rows as prompts for an online method: the dialogue before the final reply.
    prompts = list(readers.read_prompts(path, on_error="skip", skipped=data.SkippedRows()))
    assert [p["prompt"] for p in prompts] == [first["prompt"], second["prompt"]]
    # Parsed into a conversation when a chat template renders it.
    assert data.chat.prompt_messages(second["prompt"]) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
    ]


def _conv(role, content):
    return {"role": role, "content": content}


def test_conversational_layouts_are_detected(tmp_path):
    user, good, bad = _conv("user", "Hi?"), _conv("assistant", "Hello."), _conv("assistant", "Go.")
    cases = {  # layout -> (rows, what the first record holds)
        "implicit_prompt": (
            [{"chosen": [user, good], "rejected": [user, bad]}],
            {"prompt": [user], "response_a": [good], "response_b": [bad]},
        ),
        "chosen_rejected": (
            [{"prompt": [user], "chosen": [good], "rejected": [bad]}],
            {"prompt": [user], "response_a": [good], "response_b": [bad]},
        ),
    }
    for layout, (rows, want) in cases.items():
        path = write_jsonl(tmp_path / f"{layout}.jsonl", rows)
        assert data.detect_layout(rows[0]) == layout
        record = next(readers.read_pairs(path))
        assert {k: record[k] for k in want} == want
    system = _conv("system", "Be brief.")
    demo = {"messages": [system, user, good, _conv("user", "More?"), bad]}
    path = write_jsonl(tmp_path / "messages.jsonl", [demo])
    last = next(readers.read_demonstrations(path))
    assert last["prompt"] == demo["messages"][:4] and last["response"] == [bad]
    every = next(readers.read_demonstrations(path, turns="all"))
    assert every["prompt"] == [system, user] and every["response"] == demo["messages"][2:]
    assert next(readers.read_prompts(path))["prompt"] == demo["messages"][:4]
    path = write_jsonl(tmp_path / "completion.jsonl", [{"prompt": [user], "completion": [good]}])
    assert next(readers.read_demonstrations(path))["response"] == [good]
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": [system, user]}])
    assert next(readers.read_prompts(path))["prompt"] == [system, user]


BAD_CONVERSATIONS = [  # (row, the field the error names)
    ({"chosen": [_conv("user", "q"), _conv("user", "a")], "rejected": []}, "chosen"),
    ({"chosen": [_conv("assistant", "a")], "rejected": [_conv("assistant", "b")]}, "chosen"),
    ({"chosen": [_conv("user", "q"), {"role": "assistant"}], "rejected": []}, "chosen[1].content"),
    (
        {"chosen": [_conv("user", "q"), _conv("assistant", " ")], "rejected": []},
        "chosen[1].content",
    ),
    (
        {"prompt": [_conv("user", "q")], "chosen": [_conv("user", "a")], "rejected": "b"},
        "chosen[0].role",
    ),
    ({"prompt": [{"content": "q"}], "chosen": "a", "rejected": "b"}, "prompt[0].role"),
    ({"chosen": "Human: hi", "rejected": "Human: ho"}, "chosen"),  # no Assistant turn
]


@pytest.mark.parametrize(("row", "field"), BAD_CONVERSATIONS)
def test_bad_conversations_name_the_field(tmp_path, row, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(data.DataError) as info:
        list(readers.read_pairs(path))
    assert str(info.value).startswith(f"{path}:1:{field}:")


def test_hugging_face_datasets_on_disk_and_their_parquet_export(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [
        {
            "prompt": [_conv("user", f"Question {i}?")],
            "chosen": [_conv("assistant", "Yes.")],
            "rejected": [_conv("assistant", "No.")],
        }
        for i in range(3)
    ]
    table = datasets.Dataset.from_list(rows)
    table.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": table, "test": table.select([2])}).save_to_disk(
        str(tmp_path / "dict")
    )
    table.to_parquet(str(tmp_path / "export.parquet"))
    for path in ("one", "dict", "dict/test", "export.parquet"):
        got = list(readers.read_pairs(str(tmp_path / path)))
        want = rows[2:] if path == "dict/test" else rows
        assert [r["prompt"] for r in got] == [r["prompt"] for r in want], path
        assert got[0]["source"] == f"{tmp_path / path}:0"  # Arrow rows count from 0
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.readers.MissingInput, match="without a dataset"):
        list(readers.read_pairs(str(tmp_path / "empty")))


def test_row_ranges_part_a_file_and_keep_its_row_numbers(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": "Yes.", "rejected": "No."} for i in range(7)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)

    def sources(spec):
        return [r["source"] for r in readers.read_pairs(path + spec)]

    every = sources("")
    halves = sources("[:50%]"), sources("[50%:]")
    assert halves[0] + halves[1] == every and len(halves[0]) == 3  # 7 * 50 // 100
    assert sources("[2:4]") == [f"{path}:3", f"{path}:4"]  # positions from 0, lines from 1
    assert sources("[5:]") == every[5:] and sources("[:100%]") == every
    table = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    table.write_table(pa.Table.from_pylist(rows), str(tmp_path / "pairs.parquet"))
    got = list(readers.read_pairs(str(tmp_path / "pairs.parquet[40%:60%]")))
    assert [r["prompt"] for r in got] == ["Question 2?", "Question 3?"]  # rows 2 and 3 of 7
    for spec, why in (("[3:3]", "holds no rows"), ("[:150%]", "more than all the rows")):
        with pytest.raises(UserError, match=why):
            list(readers.read_pairs(path + spec))
    with pytest.raises(data.readers.MissingInput, match=r"nope\.jsonl: no such file"):
        list(readers.read_pairs(str(tmp_path / "nope.jsonl[:50%]")))
    # A file whose name ends like a range is read as named.
    literal = write_jsonl(tmp_path / "odd[0:1]", rows[:2])
    assert len(list(readers.read_pairs(literal))) == 2


def test_a_row_range_is_part_of_a_built_dataset_name(tmp_path):
    from nlhf_jax.data import builders

    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q?", "chosen": "a", "rejected": "b"}])
    names = {builders.files_dataset_name({"train": path + s}) for s in ("", "[:50%]", "[50%:]")}
    assert len(names) == 3
