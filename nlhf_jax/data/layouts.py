"""Layouts: which fields a row has, and the normalized record each kind of row becomes.

Normalized records (a prompt or response is a string, or a list of chat messages
`{"role", "content"}` when the row is conversational; `nlhf_jax.data.chat` renders both):
  pairs:   {"prompt", "response_a", "response_b", "label": float = P(a > b), "source"}
  prompts: {"prompt", "source"}
  demos:   {"prompt", "response", "source"}

The layouts follow TRL's dataset formats (standard: strings; conversational: messages), plus
two published ones (OpenAI's TL;DR comparisons, Anthropic's HH-RLHF transcripts). `detect_*`
names a layout from the fields (and, where two layouts share fields, the type) of a row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from typing import Any

from nlhf_jax.data.files import DataError

# Preference pairs.
CHOSEN_REJECTED = "chosen_rejected"  # prompt, chosen, rejected (strings or messages)
IMPLICIT_PROMPT = "implicit_prompt"  # chosen, rejected: conversations sharing their prompt
HH = "hh"  # chosen, rejected: HH-RLHF "\n\nHuman: ...\n\nAssistant: ..." transcripts
PAIRWISE = "pairwise"  # prompt, response_a, response_b, label (0/1) or probability ([0, 1])
TLDR = "tldr"  # OpenAI TL;DR comparisons: info.post, summaries[{text}] x 2, choice (0/1)
PAIR_LAYOUTS = (CHOSEN_REJECTED, IMPLICIT_PROMPT, HH, PAIRWISE, TLDR)
# Prompts: a `prompt` field, else any layout above or below that has a prompt.
PROMPT = "prompt"
# Demonstrations (SFT).
PROMPT_RESPONSE = "prompt_response"  # prompt, response
PROMPT_COMPLETION = "prompt_completion"  # prompt, completion (TRL's name)
MESSAGES = "messages"  # one conversation; trained on its last or on every assistant turn
DEMO_LAYOUTS = (PROMPT_RESPONSE, PROMPT_COMPLETION, MESSAGES)
PROMPT_LAYOUTS = (PROMPT, *PAIR_LAYOUTS, *DEMO_LAYOUTS)

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_ROLES = {"Human": "user", "Assistant": "assistant"}


def detect_layout(fields: Collection[str] | Mapping[str, Any]) -> str | None:
    """Names the preference layout of a row (or of its field names), or None.

    With only field names, `chosen`/`rejected` without a `prompt` are taken as HH transcripts;
    given the row, a list-valued `chosen` makes them conversations (`implicit_prompt`).
    """
    names = set(fields)
    if {"info", "summaries", "choice"} <= names:
        return TLDR
    if {"prompt", "chosen", "rejected"} <= names:
        return CHOSEN_REJECTED
    if {"prompt", "response_a", "response_b"} <= names and names & {"label", "probability"}:
        return PAIRWISE
    if {"chosen", "rejected"} <= names:
        chosen = fields.get("chosen") if isinstance(fields, Mapping) else None
        return IMPLICIT_PROMPT if isinstance(chosen, list) else HH
    return None


def detect_demo_layout(fields: Collection[str]) -> str | None:
    """Names the demonstrations layout of a row's fields, or None."""
    names = set(fields)
    if "messages" in names:
        return MESSAGES
    if {"prompt", "completion"} <= names:
        return PROMPT_COMPLETION
    if {"prompt", "response"} <= names:
        return PROMPT_RESPONSE
    return None


def detect_prompt_layout(fields: Collection[str] | Mapping[str, Any]) -> str | None:
    """A `prompt` field, else the prompts of a preference or demonstrations layout."""
    if "prompt" in set(fields):
        return PROMPT
    return detect_layout(fields) or detect_demo_layout(fields)


class _Row:
    """One row and where it came from, so that every check can name `file:row:field`."""

    def __init__(self, row: Mapping[str, Any], path: str, row_no: int):
        self.row, self.path, self.row_no = row, path, row_no

    def error(self, field: str, why: str) -> DataError:
        return DataError(self.path, self.row_no, field, why)

    def get(self, field: str, value: Any = None) -> Any:
        """A possibly dotted field (`info.post`) of the row (or of `value`); missing: error."""
        value = self.row if value is None else value
        for part in field.split("."):
            if not isinstance(value, Mapping) or value.get(part) is None:
                raise self.error(field, "missing field")
            value = value[part]
        return value

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__}")
        if not value.strip():
            raise self.error(field, "empty text")
        return value

    def messages(self, value: Any, field: str, *, roles: Collection[str] = ()) -> list[dict]:
        """A list of `{role, content}` messages (extra keys kept for the template, nulls
        dropped); `roles`: the roles allowed."""
        if not isinstance(value, list) or not value:
            raise self.error(field, "expected a string or a non-empty list of messages")
        out = []
        for i, message in enumerate(value):
            name = f"{field}[{i}]"
            if not isinstance(message, Mapping):
                raise self.error(
                    field, f"expected a string or a list of {{role, content}} messages, got a "
                    f"list of {type(message).__name__}"
                )  # fmt: skip
            role = message.get("role")
            if not isinstance(role, str) or not role:
                raise self.error(f"{name}.role", "missing field")
            if roles and role not in roles:
                raise self.error(f"{name}.role", f"{role!r}; expected {' or '.join(roles)}")
            if not isinstance(message.get("content"), str):
                got = type(message.get("content")).__name__
                raise self.error(f"{name}.content", f"expected a string, got {got}")
            out.append({k: v for k, v in message.items() if v is not None})
        return out

    def turn(self, value: Any, field: str, *, response: bool) -> str | list[dict]:
        """A prompt or a response: a non-empty string, or messages (a response's: assistant
        messages whose last says something)."""
        if isinstance(value, str):
            return self.text(value, field)
        if value is None:
            raise self.error(field, "missing field")
        messages = self.messages(value, field, roles=("assistant",) if response else ())
        if response and not messages[-1]["content"].strip():
            raise self.error(f"{field}[{len(messages) - 1}].content", "empty text")
        if not response and not any(m["content"].strip() for m in messages):
            raise self.error(field, "every message is empty")
        return messages

    def probability(self, field: str, *, hard: bool) -> float:
        value = self.get(field)
        # bool is an int in Python, and Parquet files often store hard labels as booleans.
        if not isinstance(value, (int, float)):
            raise self.error(field, f"not a number: {value!r}")
        number = float(value)
        if math.isnan(number) or not 0.0 <= number <= 1.0:
            raise self.error(field, f"{value!r} is outside [0, 1]")
        if hard and number not in (0.0, 1.0):
            raise self.error(field, f"{value!r} is not 0 or 1 (use `probability`)")
        return number


def transcript_turns(text: str) -> list[tuple[str, str]] | None:
    """`(role, content)` turns of an HH transcript (`"\\n\\nHuman: ...\\n\\nAssistant: ..."`,
    roles "user"/"assistant", contents stripped), or None when the text is not one."""
    stripped = text.lstrip("\n")
    if not stripped.startswith("Human:") or ASSISTANT not in text:
        return None
    parts = _TURN.split(stripped)  # ["", role, content, role, content, ...]
    return [(_ROLES[r], c.strip()) for r, c in zip(parts[1::2], parts[2::2], strict=True)]


def _hh_split(r: _Row, field: str) -> tuple[str, str]:
    """An HH transcript as (prompt up to and including its last "\\n\\nAssistant:", the final
    response after it), as published: the response keeps its leading space."""
    text = r.text(r.get(field), field)
    turns = transcript_turns(text)
    if turns is None:
        raise r.error(field, 'not an HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")')
    cut = text.rfind(ASSISTANT) + len(ASSISTANT)
    prompt, response = text[:cut], text[cut:]
    if not any(role == "user" and content for role, content in turns[:-1]):
        raise r.error(field, "the prompt has no Human turn with text")
    if not response.strip():
        raise r.error(field, 'empty final response (nothing after the last "Assistant:")')
    if HUMAN in response:
        raise r.error(field, "ends with a Human turn: the final turn must be the Assistant's")
    return prompt, response


def _implicit_split(r: _Row, field: str) -> tuple[list[dict], list[dict]]:
    """A conversation as (the messages before its final assistant turn(s), those turns)."""
    messages = r.messages(r.get(field), field)
    cut = len(messages)
    while cut and messages[cut - 1]["role"] == "assistant":
        cut -= 1
    if cut == len(messages):
        raise r.error(field, f"does not end with an assistant turn (last: {messages[-1]['role']})")
    if cut == 0 or not any(m["content"].strip() for m in messages[:cut]):
        raise r.error(field, "no prompt: nothing is said before the final assistant turn")
    if not messages[-1]["content"].strip():
        raise r.error(f"{field}[{len(messages) - 1}].content", "empty final response")
    return messages[:cut], messages[cut:]


def normalize_pair(row: Mapping[str, Any], layout: str, path: str, row_no: int) -> dict[str, Any]:
    """Turns one row of `layout` into the normalized pair record, or raises DataError."""
    r = _Row(row, path, row_no)
    if layout == CHOSEN_REJECTED:
        prompt = r.turn(r.get("prompt"), "prompt", response=False)
        a = r.turn(r.get("chosen"), "chosen", response=True)
        b = r.turn(r.get("rejected"), "rejected", response=True)
        label = 1.0
    elif layout in (HH, IMPLICIT_PROMPT):
        # The prompt is implicit: what chosen and rejected share before their final turn.
        split = _hh_split if layout == HH else _implicit_split
        prompt, a = split(r, "chosen")
        prompt_b, b = split(r, "rejected")
        if prompt_b != prompt:
            raise r.error(
                "rejected", "its prompt (the dialogue before the final assistant turn) differs "
                "from chosen's, so the pair answers two different prompts"
            )  # fmt: skip
        label = 1.0
    elif layout == PAIRWISE:
        prompt = r.turn(r.get("prompt"), "prompt", response=False)
        a = r.turn(r.get("response_a"), "response_a", response=True)
        b = r.turn(r.get("response_b"), "response_b", response=True)
        # A soft probability, when present, carries more than a hard label derived from it.
        field = "probability" if row.get("probability") is not None else "label"
        label = r.probability(field, hard=field == "label")
    elif layout == TLDR:
        prompt = _tldr_prompt(r)
        summaries = r.get("summaries")
        if not isinstance(summaries, list) or len(summaries) != 2:
            raise r.error("summaries", "expected a list of two summaries")
        texts = []
        for i, summary in enumerate(summaries):
            name = f"summaries[{i}].text"
            if not isinstance(summary, Mapping):
                raise r.error(name, "missing field")
            value = summary.get("text")
            texts.append(r.text(value, name) if value is not None else r.get(name))
        a, b = texts
        # `choice` is the index of the preferred summary, so choice 0 means a beats b.
        label = 1.0 - r.probability("choice", hard=True)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {PAIR_LAYOUTS}")
    return {"prompt": prompt, "response_a": a, "response_b": b, "label": label,
            "source": f"{path}:{row_no}"}  # fmt: skip


def _tldr_prompt(r: _Row) -> str:
    post = r.text(r.get("info.post"), "info.post")
    info = r.row["info"]
    lines = []
    # Title and subreddit are optional in the TL;DR files; the prompt format follows OpenAI's.
    if isinstance(info.get("subreddit"), str) and info["subreddit"].strip():
        lines.append(f"SUBREDDIT: r/{info['subreddit']}")
    if isinstance(info.get("title"), str) and info["title"].strip():
        lines.append(f"TITLE: {info['title']}")
    lines.append(f"POST: {post}")
    lines.append("TL;DR:")
    return "\n".join(lines)


def normalize_demo(
    row: Mapping[str, Any], layout: str, path: str, row_no: int, *, turns: str = "last"
) -> dict[str, Any]:
    """One demonstrations row as `{prompt, response, source}`, or raises DataError.

    `turns` (layout `messages` only): "last" trains the final assistant turn, with everything
    before it as the prompt; "all" makes the prompt the messages before the first assistant
    turn and the response every message after it (the chat encoder then trains the assistant
    turns in it and masks the others).
    """
    r = _Row(row, path, row_no)
    if layout in (PROMPT_RESPONSE, PROMPT_COMPLETION):
        field = "response" if layout == PROMPT_RESPONSE else "completion"
        prompt = r.turn(r.get("prompt"), "prompt", response=False)
        response = r.turn(r.get(field), field, response=True)
    elif layout == MESSAGES:
        if turns == "last":
            prompt, response = _implicit_split(r, "messages")
        elif turns == "all":
            messages = r.messages(r.get("messages"), "messages")
            first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), 0)
            if first == 0:
                why = "no assistant turn" if messages[0]["role"] != "assistant" else "no prompt"
                raise r.error("messages", f"{why}: every conversation needs a prompt and a reply")
            if messages[-1]["role"] != "assistant":
                raise r.error("messages", "does not end with an assistant turn")
            if not messages[-1]["content"].strip():
                raise r.error(f"messages[{len(messages) - 1}].content", "empty final response")
            prompt = r.turn(messages[:first], "messages", response=False)
            response = messages[first:]
        else:
            raise ValueError(f"turns must be 'last' or 'all', got {turns!r}")
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {DEMO_LAYOUTS}")
    return {"prompt": prompt, "response": response, "source": f"{path}:{row_no}"}


def normalize_prompt(row: Mapping[str, Any], layout: str, path: str, row_no: int) -> dict:
    """One row's prompt as `{prompt, source}`: its `prompt` field, or the prompt a pair or a
    demonstration of its layout has."""
    if layout == PROMPT:
        r = _Row(row, path, row_no)
        return {"prompt": r.turn(r.get("prompt"), "prompt", response=False),
                "source": f"{path}:{row_no}"}  # fmt: skip
    if layout in PAIR_LAYOUTS:
        record = normalize_pair(row, layout, path, row_no)
    elif layout in DEMO_LAYOUTS:
        record = normalize_demo(row, layout, path, row_no)
    else:
        raise ValueError(f"unknown layout {layout!r}; expected one of {PROMPT_LAYOUTS}")
    return {"prompt": record["prompt"], "source": record["source"]}
