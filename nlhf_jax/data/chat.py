"""Records -> token ids, through the tokenizer's chat template when the data is a conversation.

A conversational record (messages), or any record when `chat_template=True`, is rendered by the
tokenizer's own template, and split so that what a policy is trained on is what it generates:

  prompt   = render(prompt messages, add_generation_prompt=True)
  full     = render(prompt messages + response messages)
  response = full[len(prompt):], up to and including the EOS token that ends the assistant turn

`full` must start with `prompt` (a *prefix-consistent* template); a row where it does not is
refused with both texts' first difference. Text after the turn's EOS (Qwen's "\\n") is dropped:
sampling stops at EOS. The rendered text is tokenized with `add_special_tokens=False`, since a
template writes its own BOS (Llama 3's `<|begin_of_text|>`; adding one more would double it).
The response is tokenized on its own, from where the generation prompt ends, exactly as the
policy sees it at sampling time. With several assistant turns in a response (SFT on every
turn), each turn starts where `render(messages before it, add_generation_prompt=True)` ends and
is trained; the text between turns (the user's) is in the response but masked from the loss.

Template settings (`ChatOptions`), passed to every template (templates ignore what they do not
use): `date_string`, fixed so that the Llama 3 templates' "Today Date:" line does not change the
tokens from one day to the next; `enable_thinking`, Qwen3's switch: False (the default) puts an
empty `<think></think>` block in the generation prompt, so responses are the answer alone;
True leaves it to the response, whose `<think>` block the template then writes itself.

Without a template, a prompt is its text after what the tokenizer puts before any text of its
own (Gemma's and Llama's BOS: ``tokenizer(text)`` as transformers and llama.cpp encode it; a
model that expects a BOS degenerates without one), and a response its text plus the EOS id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nlhf_jax.data import layouts
from nlhf_jax.data.files import DataError
from nlhf_jax.errors import UserError

Turn = str | list[dict]

_RESPONSE_FIELDS = {"pairs": ("response_a", "response_b"), "demos": ("response",), "prompts": ()}


@dataclasses.dataclass(frozen=True)
class ChatOptions:
    """Variables every chat template is rendered with (see the module docstring).

    Attributes:
      date_string: what the Llama 3 templates print as "Today Date:" (their own fallback).
      enable_thinking: Qwen3's thinking switch; False makes the prompt end with an empty
        `<think>` block, True lets responses carry their own.
    """

    date_string: str = "26 Jul 2024"
    enable_thinking: bool = False

    def template_kwargs(self) -> dict[str, Any]:
        return {"date_string": self.date_string, "enable_thinking": self.enable_thinking}


def prompt_messages(prompt: Turn) -> list[dict]:
    """A prompt as chat messages: its own, an HH transcript's turns (the empty final
    "Assistant:" is where the generation prompt goes), or one user turn."""
    if isinstance(prompt, list):
        return prompt
    turns = layouts.transcript_turns(prompt)
    if turns is None:
        return [{"role": "user", "content": prompt}]
    if turns and turns[-1] == ("assistant", ""):
        turns = turns[:-1]
    return [{"role": role, "content": content} for role, content in turns]


def response_messages(response: Turn) -> list[dict]:
    """A response as messages: its own, or one assistant turn (surrounding spaces dropped: a
    published response's leading space belongs to raw-text concatenation, not to a turn)."""
    if isinstance(response, list):
        return response
    return [{"role": "assistant", "content": response.strip()}]


def _error(source: str, field: str, why: str) -> DataError:
    path, _, row = str(source).rpartition(":")
    return DataError(path or str(source), row, field, why)


def _first_difference(a: str, b: str) -> str:
    i = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"{a[max(0, i - 40) : i + 40]!r} against {b[max(0, i - 40) : i + 40]!r}"


class ChatEncoder:
    """Renders and tokenizes records (module docstring); picklable, so a grain map may hold it.

    Args:
      tokenizer: a Hugging Face tokenizer with an EOS token (and a chat template when used).
      chat_template: render string prompts and responses through the template too (a
        conversational record always is).
      options: the template variables.
    """

    def __init__(
        self, tokenizer, *, chat_template: bool = False, options: ChatOptions | None = None
    ):
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.options = options or ChatOptions()
        self.templated_rows = 0  # records `encode` rendered through the template
        self.lead = _leading_specials(tokenizer)

    def uses_template(self, *turns: Turn) -> bool:
        """Whether a record with these prompt and responses is rendered by the template."""
        return self.chat_template or any(isinstance(t, list) for t in turns)

    def _render(self, messages: list[dict], generation: bool) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError(
                "the data is rendered through a chat template (conversational rows, or "
                "config.data.chat_template=True), but the tokenizer has none"
            )
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=generation,
            **self.options.template_kwargs(),
        )

    def prompt_text(self, prompt: Turn, templated: bool | None = None) -> str:
        """The text a prompt becomes: rendered with the generation prompt, or as is."""
        if not (self.uses_template(prompt) if templated is None else templated):
            return prompt
        return self._render(prompt_messages(prompt), True)

    def prompt_ids(self, prompt: Turn) -> np.ndarray:
        """The token ids of one prompt (a generation's context)."""
        ids = self._token_ids([self.prompt_text(prompt)])[0]
        return self._prompt(ids, self.uses_template(prompt))

    def _prompt(self, ids: list[int], templated: bool) -> np.ndarray:
        # A template writes its own BOS; plain text gets the tokenizer's (module docstring).
        return np.asarray(ids if templated else [*self.lead, *ids], np.int32)

    def response_pieces(
        self, prompt: Turn, prompt_text: str, response: Turn, source: str, field: str
    ) -> list[tuple[str, bool]]:
        """A templated response as `(text, trained)` pieces after `prompt_text` (the module
        docstring says how)."""
        context, turns = prompt_messages(prompt), response_messages(response)
        full = self._render(context + turns, False)
        eos = self.tokenizer.eos_token
        pieces, pos = [], len(prompt_text)
        for i, message in enumerate(turns):
            if message["role"] != "assistant":
                continue
            before = prompt_text if i == 0 else self._render(context + turns[:i], True)
            if not full.startswith(before) or len(before) < pos:
                raise _error(
                    source, field, "the chat template is not prefix-consistent: the prompt "
                    "rendered with its generation prompt is not the start of the prompt "
                    f"rendered with this reply ({_first_difference(before, full)})"
                    + _hint(before, full),
                )  # fmt: skip
            end = full.find(eos, len(before))
            if end < 0:
                raise UserError(
                    f"{source}:{field}: the chat template ends the assistant turn without the "
                    f"tokenizer's EOS token {eos!r} ({full[len(before) :][-60:]!r}); sampling "
                    "stops at EOS, so set the tokenizer's eos_token to the template's "
                    "end-of-turn token"
                )
            if len(before) > pos:
                pieces.append((full[pos : len(before)], False))
            pos = end + len(eos)
            pieces.append((full[len(before) : pos], True))
        return pieces

    def _token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """One batched call: a fast tokenizer encodes the whole batch on all cores."""
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # What `tokenizer(texts)` calls underneath, without the character offsets it
            # computes and converts for every token (tested equal).
            return [e.ids for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]

    def encode(self, kind: str, records: Sequence[Mapping[str, Any]]) -> list[dict | DataError]:
        """Token ids of a chunk of records of `kind` ("pairs", "demos" or "prompts").

        Returns:
          Per record, the DataError refusing it, or its fields with `prompt` and each response
          as int32 ids and, per response, `<field>_train`: a bool array, False on tokens that
          are in the sequence but not trained (the user's turns between assistant turns).
        """
        fields = _RESPONSE_FIELDS[kind]
        texts: list[str] = []
        plans: list[dict | DataError] = []
        for record in records:
            source = record.get("source", "<record>")
            source = source.decode("utf-8") if isinstance(source, bytes) else source
            prompt = record["prompt"]
            templated = self.uses_template(prompt, *(record[f] for f in fields))
            try:
                prompt_text = self.prompt_text(prompt, templated)
                plan = {
                    f: self.response_pieces(prompt, prompt_text, record[f], source, f)
                    if templated
                    else [(record[f], True)]
                    for f in fields
                }
            except DataError as e:
                plans.append(e)
                continue
            plans.append(plan)
            self.templated_rows += templated
            texts.append(prompt_text)
            texts.extend(text for f in fields for text, _ in plan[f])
        ids = iter(self._token_ids(texts))
        eos_id = self.tokenizer.eos_token_id
        out: list[dict | DataError] = []
        for record, plan in zip(records, plans, strict=True):
            if isinstance(plan, DataError):
                out.append(plan)
                continue
            encoded = {k: v for k, v in record.items() if k != "prompt" and k not in fields}
            templated = self.uses_template(record["prompt"], *(record[f] for f in fields))
            encoded["prompt"] = self._prompt(next(ids), templated)
            for f in fields:
                tokens: list[int] = []
                train: list[bool] = []
                for _, trained in plan[f]:
                    piece = next(ids)
                    tokens.extend(piece)
                    train.extend([trained] * len(piece))
                if not templated:  # a raw response ends where EOS is appended
                    tokens.append(eos_id)
                    train.append(True)
                encoded[f] = np.asarray(tokens, np.int32)
                encoded[f"{f}_train"] = np.asarray(train, bool)
            out.append(encoded)
        return out


def _leading_specials(tokenizer) -> list[int]:
    """The ids ``tokenizer`` puts before any text of its own (a BOS, or nothing)."""
    if tokenizer is None:  # pre-tokenized data
        return []
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return list(full[:start])
    return []


def _hint(before: str, full: str) -> str:
    if "<think>" in full and "<think>" in before:
        return (
            "; a Qwen3 template renders a reply's <think> block differently from the empty one "
            "of its generation prompt: try config.data.enable_thinking=True"
        )
    return ""
