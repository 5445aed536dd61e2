"""A small offline text task: natural-language prompts and replies, and a non-transitive judge.

The text counterpart of `nlhf_jax.tasks.synthetic`, for runs that go through a real tokenizer and
Hugging Face checkpoint. A prompt asks about one topic ("Tell me about the ocean."). A reply is one
sentence, an opener that fixes its style, then a content phrase about some topic, optionally
followed by a detail clause:

    "Behold, the ocean is wonderful, full of small surprises."
     ^style  ^topic                  ^detail clause

Every prompt has the same enumerable reply space (styles x topics x detail). The judge is

    P(a > b | x) = sigmoid(quality_strength * (q(x, a) - q(x, b))
                           + style_strength * cycle(s(a), s(b)))

with a transitive quality ``q`` (+1 on the prompt's topic, +1 with the detail clause) and a
rock-paper-scissors style: ``cycle(s, s') = +1`` if ``s - s' = 1 (mod 3)``, -1 if it is 2, else 0.
A reply that does not parse exactly (after whitespace is normalized) has quality
``-invalid_penalty`` and no style. The logit is antisymmetric, so ``P(a > b) + P(b > a) = 1``.

`write_task_files` (or ``python -m nlhf_jax.tasks.text --out DIR``) writes the data as JSONL in
the layouts of `nlhf_jax.data.readers`, a byte-level BPE tokenizer with a chat template, and a
tiny random Qwen2 checkpoint, all offline in a few seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np

from nlhf_jax.console import quiet_libraries

# Bumped whenever the texts, the judge or the behaviour policy change.
TASK_VERSION = 1
TEMPLATES = ("Tell me about {}.", "Write one line about {}.", "Say something about {}.")
TOPICS = (
    "the ocean", "autumn", "the desert", "coffee", "music",
    "rain", "the city", "the forest", "the moon", "chess",
)  # fmt: skip
OPENERS = ("Certainly:", "Sure thing,", "Behold,")  # styles 0 (formal), 1 (casual), 2 (poetic)
# A fixed clause, so that "has a detail" is a surface feature a tiny model can learn.
DETAIL = ", full of small surprises"
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}User: {{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_MODEL = dict(
    d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=192,
    qkv_bias=True, tie_embeddings=True,
)  # fmt: skip


def _normalize(text: str) -> str:
    """Lenient on whitespace only: strips the ends and collapses runs to one space."""
    return " ".join(text.split())


def render_response(style: int, topic: int, detail: bool) -> str:
    """The reply text of (style, topic index, detail clause or not)."""
    return f"{OPENERS[style]} {TOPICS[topic]} is wonderful{DETAIL if detail else ''}."


# Enumeration order: style-major, then topic, then detail (False before True).
_FEATURES = [(s, t, d) for s in range(3) for t in range(len(TOPICS)) for d in (False, True)]
_RESPONSES = [render_response(*f) for f in _FEATURES]
_PARSE = {r: f for r, f in zip(_RESPONSES, _FEATURES, strict=True)}
_PROMPTS = [tpl.format(topic) for topic in TOPICS for tpl in TEMPLATES]  # topic-major
_PROMPT_TOPIC = {p: i // len(TEMPLATES) for i, p in enumerate(_PROMPTS)}


def parse_response(text: str) -> tuple[int, int, bool] | None:
    """(style, topic, detail) of a well-formed reply, or None (garbage, empty, a near miss)."""
    return _PARSE.get(_normalize(text))


def prompt_topic(prompt: str) -> int:
    """The topic index of a task prompt, also found inside a chat-templated prompt.

    Raises:
      ValueError: if the text contains no task prompt (the judge is undefined there).
    """
    text = _normalize(prompt)
    if text in _PROMPT_TOPIC:
        return _PROMPT_TOPIC[text]
    found = [p for p in _PROMPTS if p in text]
    if not found:
        raise ValueError(f"not a prompt of the text task: {prompt!r}")
    return _PROMPT_TOPIC[max(found, key=len)]


@dataclasses.dataclass(frozen=True)
class TextTask:
    """Settings of the text task (frozen; the texts themselves are module constants).

    Attributes:
      quality_strength: weight of the transitive quality difference in the judge's logit.
      style_strength: weight of the rock-paper-scissors style cycle in the judge's logit.
      invalid_penalty: minus the quality of a reply that does not parse.
      behaviour_quality: the behaviour policy's inverse temperature on quality.
      behaviour_style_bias: the behaviour policy's extra logit for style 0 replies.
    """

    quality_strength: float = 1.0
    style_strength: float = 2.0
    invalid_penalty: float = 2.0
    behaviour_quality: float = 1.5
    behaviour_style_bias: float = 1.5

    # --- enumeration -------------------------------------------------------------------------

    def prompts(self) -> list[str]:
        """Every prompt (topic-major, then template)."""
        return list(_PROMPTS)

    def eval_prompts(self) -> list[str]:
        """A fixed subset: one prompt per topic, cycling through the templates."""
        return [_PROMPTS[t * len(TEMPLATES) + t % len(TEMPLATES)] for t in range(len(TOPICS))]

    def all_responses(self) -> list[str]:
        """Every well-formed reply; the same list, in the same order, for every prompt."""
        return list(_RESPONSES)

    def responses(self, prompt_index: int) -> list[str]:
        """The enumerated replies to prompt ``prompt_index`` (all prompts share them)."""
        del prompt_index
        return self.all_responses()

    # --- the judge ---------------------------------------------------------------------------

    def quality(self, prompt: str, response: str) -> float:
        """q(x, y): +1 on the prompt's topic, +1 with the detail clause; -invalid_penalty if the
        reply does not parse."""
        parsed = parse_response(response)
        if parsed is None:
            return -self.invalid_penalty
        _, topic, detail = parsed
        return float(topic == prompt_topic(prompt)) + float(detail)

    def logit(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """The antisymmetric logit of ``P(a_i > b_i | prompts_i)``, float64 [n]. Host-side."""
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"lengths differ: {len(prompts)} prompts, {len(a)} a, {len(b)} b")
        out = np.empty(len(prompts), np.float64)
        for i, (x, ya, yb) in enumerate(zip(prompts, a, b, strict=True)):
            sa, sb = _style(ya), _style(yb)
            cycle = 0.0 if sa < 0 or sb < 0 else {0: 0.0, 1: 1.0, 2: -1.0}[(sa - sb) % 3]
            dq = self.quality(x, ya) - self.quality(x, yb)
            out[i] = self.quality_strength * dq + self.style_strength * cycle
        return out

    def probability(self, prompts: Sequence[str], a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """``P(a_i > b_i | prompts_i)``, float64 [n]. Host-side."""
        return _sigmoid(self.logit(prompts, a, b))

    def preference_matrices(self) -> np.ndarray:
        """``P[prompt, i, j] = P(y_i > y_j | x)`` over `all_responses`, float64."""
        resp, R = self.all_responses(), len(_RESPONSES)
        a, b = [resp[i] for i in range(R) for _ in range(R)], resp * R
        return np.stack([self.probability([x] * R * R, a, b).reshape(R, R) for x in _PROMPTS])

    def exact_nash(self, mu: np.ndarray, tau: float) -> np.ndarray:
        """The regularized NE of every prompt's game against reference ``mu [prompts, R]``."""
        from nlhf_jax.tabular import solvers  # jax, only needed here

        return solvers.regularized_nash_batch(self.preference_matrices(), mu, tau)

    # --- the behaviour policy and data -------------------------------------------------------

    def behaviour_policy(self) -> np.ndarray:
        """``mu_b[prompt, response]``: likes quality, and style 0 beyond what it is worth."""
        q = np.array([[self.quality(x, y) for y in _RESPONSES] for x in _PROMPTS])
        style0 = np.array([f[0] == 0 for f in _FEATURES])
        logits = self.behaviour_quality * q + self.behaviour_style_bias * style0[None, :]
        p = np.exp(logits - logits.max(-1, keepdims=True))
        return p / p.sum(-1, keepdims=True)

    def demonstrations(self, num: int, seed: int | Sequence[int]) -> list[dict]:
        """``num`` {prompt, response}: uniform prompts, behaviour-policy replies."""
        rng = np.random.default_rng(seed)
        pi = self.behaviour_policy()
        x = rng.integers(0, len(_PROMPTS), num)
        y = _sample_rows(rng, pi[x])
        return [
            {"prompt": _PROMPTS[i], "response": _RESPONSES[j]} for i, j in zip(x, y, strict=True)
        ]

    def preference_pairs(self, num: int, seed: int | Sequence[int]) -> list[dict]:
        """``num`` pairs of two behaviour replies, a 0/1 ``label`` drawn from the judge, and the
        judge's ``probability`` of a > b."""
        rng = np.random.default_rng(seed)
        pi = self.behaviour_policy()
        x = rng.integers(0, len(_PROMPTS), num)
        ya, yb = _sample_rows(rng, pi[x]), _sample_rows(rng, pi[x])
        return self._pairs(rng, x, ya, yb, with_label=True)

    def cyclic_pairs(self, num: int, seed: int | Sequence[int]) -> list[dict]:
        """``num`` pairs of equal quality and different styles, with the judge's ``probability``.

        Only the style cycle separates them, so a Bradley-Terry reward model (a total order)
        gets at most 2/3 of the style pairs right, while a preference model can get all.
        """
        rng = np.random.default_rng(seed)
        x = rng.integers(0, len(_PROMPTS), num)
        ya = rng.integers(0, len(_RESPONSES), num)
        yb = np.empty_like(ya)
        for n, (i, j) in enumerate(zip(x, ya, strict=True)):
            q = self.quality(_PROMPTS[i], _RESPONSES[j])
            same = [
                k
                for k, f in enumerate(_FEATURES)
                if f[0] != _FEATURES[j][0] and self.quality(_PROMPTS[i], _RESPONSES[k]) == q
            ]
            yb[n] = same[rng.integers(len(same))]
        return self._pairs(rng, x, ya, yb, with_label=False)

    def _pairs(self, rng, x, ya, yb, *, with_label: bool) -> list[dict]:
        prompts = [_PROMPTS[i] for i in x]
        a, b = [_RESPONSES[j] for j in ya], [_RESPONSES[j] for j in yb]
        p = self.probability(prompts, a, b)
        label = (rng.random(len(p)) < p).astype(int)
        rows = []
        for n in range(len(p)):
            row = {"prompt": prompts[n], "response_a": a[n], "response_b": b[n]}
            if with_label:
                row["label"] = int(label[n])
            rows.append(row | {"probability": float(p[n])})
        return rows

    # --- settings ----------------------------------------------------------------------------

    def to_json(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"version": TASK_VERSION, **dataclasses.asdict(self)}, f, indent=2)

    @classmethod
    def from_json(cls, path: str) -> TextTask:
        """The settings saved by `to_json` (or `write_task_files`' task.json)."""
        with open(path) as f:
            raw = json.load(f)
        if raw.get("version") != TASK_VERSION:
            raise ValueError(f"{path}: text task version {raw.get('version')}, need {TASK_VERSION}")
        return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls) if f.name in raw})


def _style(response: str) -> int:
    parsed = parse_response(response)
    return -1 if parsed is None else parsed[0]


def _sigmoid(d: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-d))


def _sample_rows(rng: np.random.Generator, probs_nr: np.ndarray) -> np.ndarray:
    """One index per row of a probability matrix (inverse-CDF sampling)."""
    cdf = np.cumsum(probs_nr, axis=-1)
    u = rng.random((len(probs_nr), 1)) * cdf[:, -1:]
    return np.minimum((u > cdf).sum(-1), probs_nr.shape[-1] - 1)


def _write_jsonl(path: str, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def build_tokenizer(out_dir: str, *, vocab_size: int = 384):
    """A byte-level BPE tokenizer trained on the task's texts, with `CHAT_TEMPLATE`, saved.

    Raises:
      RuntimeError: if some prompt or reply does not survive encode/decode unchanged.
    """
    from nlhf_jax.models.tokenizer import build_bpe_tokenizer

    chat = [f"User: {p}\nAssistant:" for p in _PROMPTS]
    tok = build_bpe_tokenizer(out_dir, texts=_PROMPTS + _RESPONSES + chat, vocab_size=vocab_size)
    for text in _PROMPTS + _RESPONSES:
        ids = tok.encode(text, add_special_tokens=False)
        if tok.decode(ids, skip_special_tokens=True) != text:
            raise RuntimeError(f"tokenizer does not round-trip {text!r}")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def write_task_files(
    out_dir: str,
    *,
    task: TextTask | None = None,
    seed: int = 0,
    num_demos: int = 4000,
    num_pairs: int = 4000,
    num_eval_pairs: int = 500,
    num_cyclic: int = 500,
    prompt_repeats: int = 10,
    model: dict | None = None,
) -> dict[str, str]:
    """Writes the task's data, tokenizer, a tiny random checkpoint and settings to ``out_dir``.

    Args:
      out_dir: output directory, created if needed.
      task: the settings; default `TextTask()`.
      seed: seeds every draw and the checkpoint's initialization.
      num_demos, num_pairs, num_eval_pairs, num_cyclic: rows of the respective files.
      prompt_repeats: how often each prompt appears in prompts.jsonl.
      model: `TransformerConfig` fields overriding `DEFAULT_MODEL` (vocab_size is derived).

    Returns:
      Name -> path of everything written (also printed, one line each).
    """
    from flax import nnx

    from nlhf_jax.models import Transformer, TransformerConfig
    from nlhf_jax.models.hf import save_pretrained

    task = task or TextTask()
    os.makedirs(out_dir, exist_ok=True)
    names = ("demos", "pairs", "pairs_eval", "pairs_cyclic", "prompts", "eval_prompts")
    paths = {k: os.path.join(out_dir, k + ".jsonl") for k in names}
    # Separate streams per file, so changing one count leaves the other files as they were.
    _write_jsonl(paths["demos"], task.demonstrations(num_demos, [seed, 0]))
    # pairs.jsonl has hard labels only: the readers prefer `probability` when it is present.
    hard = task.preference_pairs(num_pairs, [seed, 1])
    _write_jsonl(paths["pairs"], [{k: v for k, v in r.items() if k != "probability"} for r in hard])
    for name, rows in (
        ("pairs_eval", task.preference_pairs(num_eval_pairs, [seed, 2])),
        ("pairs_cyclic", task.cyclic_pairs(num_cyclic, [seed, 3])),
    ):
        _write_jsonl(paths[name], [{k: v for k, v in r.items() if k != "label"} for r in rows])
    _write_jsonl(paths["prompts"], [{"prompt": p} for p in _PROMPTS * prompt_repeats])
    _write_jsonl(paths["eval_prompts"], [{"prompt": p} for p in task.eval_prompts()])

    paths["tokenizer"] = os.path.join(out_dir, "tokenizer")
    tok = build_tokenizer(paths["tokenizer"])
    paths["checkpoint"] = os.path.join(out_dir, "checkpoint")
    vocab = -(-len(tok) // 64) * 64  # rounded up to a multiple of 64
    config = TransformerConfig(vocab_size=vocab, **(DEFAULT_MODEL | (model or {})))
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ids["pad_token_id"] = tok.pad_token_id
    save_pretrained(Transformer(config, rngs=nnx.Rngs(seed)), paths["checkpoint"], **ids)
    tok.save_pretrained(paths["checkpoint"])
    paths["task"] = os.path.join(out_dir, "task.json")
    task.to_json(paths["task"])
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(
        prog="python -m nlhf_jax.tasks.text",
        description="Write the offline text task's files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-demos", type=int, default=4000)
    parser.add_argument("--num-pairs", type=int, default=4000)
    parser.add_argument("--verbose", action="store_true", help="show the libraries' logs")
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)
    return write_task_files(
        args.out, seed=args.seed, num_demos=args.num_demos, num_pairs=args.num_pairs
    )


if __name__ == "__main__":
    main()
