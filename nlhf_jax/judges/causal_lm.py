"""Any causal LM (Llama, Qwen2, Qwen3 ``*ForCausalLM`` checkpoint directory) asked which of two
responses is better: ``--config.judge=DIR [--config.judge_template=FILE]``.

The template shows the prompt and responses A and B (``{prompt}``, ``{response_a}``,
``{response_b}``, each replaced once, in one pass, so braces in the texts are kept as they are)
and ends where the answer begins. The answer labels are "A" and "B", written with a leading
space (" A", " B") unless the template ends in whitespace. With ``l_A`` and ``l_B`` the log
probabilities of the two answers after the filled template (where each is one token of the
judge's tokenizer, its next-token logit: the log-softmax's shared constant cancels; else the sum
of its tokens' log-probabilities, the answer appended to the row),

    P_A(y, y') = sigmoid(l_A - l_B)
    P(y > y') = (P_A(y, y') + 1 - P_A(y', y)) / 2,

both orders of every pair in one batch, so P(y > y') + P(y' > y) = 1 whatever the model's
position bias (each pair is laid out in a canonical order, so swapping y and y' feeds the model
the same rows and the sum is 1 to float64 rounding). A host judge: the texts are decoded with
the policies' tokenizer and the template filled and encoded with the judge's (no chat template
is added: an instruct model's chat markup belongs in the template file); the model runs jitted,
batched, in its own dtype, on the run's mesh. No scalar reward: it cannot serve RLHF.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nlhf_jax import parallel
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.judges.host import HostModel, check_pad, decode_pairs
from nlhf_jax.models.transformer import positions_from_mask

DEFAULT_TEMPLATE = (
    "Which response answers the prompt better?\n\n"
    "Prompt: {prompt}\n\n"
    "Response A: {response_a}\n\n"
    "Response B: {response_b}\n\n"
    "The better response is Response"
)
FIELDS = ("prompt", "response_a", "response_b")
_FIELD = re.compile(r"\{(prompt|response_a|response_b)\}")


def read_template(path: str) -> str:
    """A template file's text, with every field present (else a ``UserError`` naming it)."""
    if not os.path.isfile(path):
        raise MissingInput(f"judge template {path}: no such file")
    with open(path, encoding="utf-8") as f:
        template = f.read()
    missing = [name for name in FIELDS if "{" + name + "}" not in template]
    if missing:
        raise UserError(
            f"judge template {path} lacks {', '.join('{' + m + '}' for m in missing)}; it must "
            "show {prompt}, {response_a} and {response_b}"
        )
    return template


def fill(template: str, prompt: str, response_a: str, response_b: str) -> str:
    """The template with its fields replaced in one pass (text inserted is never re-read)."""
    values = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return _FIELD.sub(lambda m: values[m.group(1)], template)


def answer_tokens(template: str, tokenizer, spec: str) -> tuple[tuple[int, ...], ...]:
    """The token ids of the answers A and B after ``template`` (module docstring)."""
    space = "" if template[-1:].isspace() else " "
    ids = tuple(tuple(tokenizer.encode(space + label, add_special_tokens=False)) for label in "AB")
    if not all(ids) or ids[0] == ids[1]:
        raise UserError(f"judge {spec}: the answers A and B encode as {ids[0]} and {ids[1]}")
    return ids


def _answer_logprob(answer: tuple[int, ...]):
    def fn(graphdef, state, tokens_bt, mask_bt):
        """``[b, 1]``: the summed log-probability of ``answer``, the last ``len(answer)``
        tokens of every (left-padded) row, given what precedes it."""
        k = len(answer)
        model = nnx.merge(graphdef, state)
        h_btd, _ = model.hidden(tokens_bt, positions_from_mask(mask_bt), input_mask_bt=mask_bt)
        logp = jax.nn.log_softmax(model.logits(h_btd[:, -k - 1 : -1]), -1)  # [b, k, vocab]
        picked = jnp.take_along_axis(logp, jnp.asarray(answer)[None, :, None], -1)
        return jnp.sum(picked[..., 0], -1, keepdims=True)

    return fn


def _answer_logits(labels: tuple[int, int]):
    def fn(graphdef, state, tokens_bt, mask_bt):
        """Next-token logits [b, 2] of the two answers, float32, at the last column (the rows
        are left-padded, so it is every row's last real token)."""
        model = nnx.merge(graphdef, state)
        h_btd, _ = model.hidden(tokens_bt, positions_from_mask(mask_bt), input_mask_bt=mask_bt)
        return model.project(h_btd[:, -1], jnp.array(labels))  # two columns, not the vocabulary

    return fn


class CausalLMJudge:
    """A causal LM judge (module docstring).

    Attributes:
      spec: the checkpoint directory, as named.
      host_model: the LM on its own rows (``HostModel``; ``place`` shards it).
      tokenizer: the policies' tokenizer (decodes their tokens).
      judge_tokenizer: the checkpoint's (encodes the filled template).
      template: the prompt template.
      answers: the token ids of the answers A and B.
      labels: their ids when each is one token (the fast path: one pass, two logits), else None.
    """

    jittable = False

    def __init__(self, spec: str, graphdef, state, tokenizer, judge_tokenizer, template: str):
        self.spec, self.tokenizer, self.judge_tokenizer = spec, tokenizer, judge_tokenizer
        self.template = template
        self.answers = answer_tokens(template, judge_tokenizer, spec)
        single = all(len(a) == 1 for a in self.answers)
        self.labels = tuple(a[0] for a in self.answers) if single else None
        pad = check_pad(spec, judge_tokenizer)
        fn = _answer_logits(self.labels) if single else _answer_logprob(self.answers[0])
        self.host_model = HostModel(graphdef, state, fn, pad)
        self._second = None if single else _answer_logprob(self.answers[1])

    def place(self, where: parallel.Placement) -> None:
        self.host_model.place(where)

    def encode(self, prompt: str, first: str, second: str) -> list[int]:
        """The judge's ids of the template showing ``first`` as A and ``second`` as B."""
        return self.judge_tokenizer(fill(self.template, prompt, first, second))["input_ids"]

    def answer_logits(self, prompts, first, second) -> np.ndarray:
        """``[n, 2]`` float64: ``l_A`` and ``l_B`` after each filled template (the logits of
        one-token answers, else the answers' log-probabilities)."""
        rows = [self.encode(*t) for t in zip(prompts, first, second, strict=True)]
        if self._second is None:
            return self.host_model(rows)
        a, b = self.answers
        l_a = self.host_model([r + list(a) for r in rows])
        l_b = self.host_model([r + list(b) for r in rows], fn=self._second)
        return np.concatenate([l_a, l_b], 1)

    def probability(self, prompts, responses_a, responses_b) -> np.ndarray:
        """``P(a > b)`` float64 ``[n]`` of texts, both orders averaged (module docstring)."""
        n = len(prompts)
        swap = np.array([a > b for a, b in zip(responses_a, responses_b, strict=True)], bool)
        lo = [b if s else a for a, b, s in zip(responses_a, responses_b, swap, strict=True)]
        hi = [a if s else b for a, b, s in zip(responses_a, responses_b, swap, strict=True)]
        logits = self.answer_logits(list(prompts) * 2, lo + hi, hi + lo)
        d = logits[:, 0] - logits[:, 1]
        p_first = 1.0 / (1.0 + np.exp(-d))  # P_A of each row
        p_lo = 0.5 * (p_first[:n] + 1.0 - p_first[n:])  # P(lo > hi)
        same = np.array([a == b for a, b in zip(responses_a, responses_b, strict=True)], bool)
        return np.where(same, 0.5, np.where(swap, 1.0 - p_lo, p_lo))

    def __call__(self, prompt, prompt_mask, response_a, response_a_mask, response_b, mask_b):
        """``P(a > b)`` [b] float64 of token arrays (the judge protocol)."""
        texts = decode_pairs(
            self.tokenizer, prompt, prompt_mask, response_a, response_a_mask, response_b, mask_b
        )
        return self.probability(*texts)


def load_causal_lm(spec: str, tokenizer, judge_tokenizer, dtype: str, template_file: str = ""):
    """The judge of a causal LM checkpoint directory, with the template of ``template_file``
    (default ``DEFAULT_TEMPLATE``)."""
    from nlhf_jax.models import hf

    template = read_template(template_file) if template_file else DEFAULT_TEMPLATE
    check_pad(spec, judge_tokenizer)
    with parallel.on_host():
        model = hf.load_pretrained(spec, dtype=dtype, param_dtype=dtype)
    graphdef, state = nnx.split(model)
    return CausalLMJudge(spec, graphdef, state, tokenizer, judge_tokenizer, template)
