"""The offline text task: its judge's properties, the token-level judge, data and written files."""

import itertools
import json
import os

import numpy as np
import pytest

from nlhf_jax.data import readers
from nlhf_jax.judges.text_task import TextTaskJudge
from nlhf_jax.models import hf
from nlhf_jax.models.tokenizer import load_tokenizer
from nlhf_jax.tasks.text import TextTask, write_task_files

TASK = TextTask()
# The surface forms, restated here so the reference semantics below do not come from the module.
OPENERS = ["Certainly:", "Sure thing,", "Behold,"]
DETAIL = ", full of small surprises."
GARBAGE = [
    "",
    "   ",
    "hello world",
    "Certainly:",
    "certainly: the ocean is wonderful.",  # wrong case
    "Certainly: the ocean is wonderful",  # no full stop
    "Certainly the ocean is wonderful.",
    "Hi! the ocean is wonderful.",  # unknown opener
    "Certainly: the ocean is wonderful. Certainly: the ocean is wonderful.",
    "<eos>",
]


def _reference(prompt, response):
    """(quality, style) re-derived from the text: style from the opener, +1 if the reply talks
    about the prompt's topic, +1 with the detail clause; None for a malformed reply."""
    response = " ".join(response.split())
    style = next((s for s, o in enumerate(OPENERS) if response.startswith(o + " ")), None)
    if style is None or " is wonderful" not in response:
        return None
    topic = response[len(OPENERS[style]) + 1 : response.index(" is wonderful")]
    tail = response[response.index(" is wonderful") + len(" is wonderful") :]
    if tail not in (".", DETAIL):
        return None
    return float(prompt.endswith(f" about {topic}.")) + float(tail == DETAIL), style


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    path = tmp_path_factory.mktemp("text_task")
    task = TextTask(style_strength=2.5, behaviour_quality=1.25)  # not the defaults
    paths = write_task_files(
        str(path), task=task, seed=3, num_demos=200, num_pairs=300, num_eval_pairs=50,
        num_cyclic=60,
    )  # fmt: skip
    return path, paths, task


@pytest.fixture(scope="module")
def tokenizer(out):
    return load_tokenizer(str(out[0] / "checkpoint"))


def test_reference_semantics_cover_the_response_space():
    responses = TASK.all_responses()
    assert len(set(responses)) == len(responses)
    for x in TASK.prompts():
        qualities = []
        for y in responses:
            q, _ = _reference(x, y)
            assert TASK.quality(x, y) == q
            qualities.append(q)
        assert sorted(set(qualities)) == [0.0, 1.0, 2.0]  # every level is reachable
    assert all(_reference(TASK.prompts()[0], g) is None for g in GARBAGE)


def test_antisymmetric_and_half_against_itself():
    rng = np.random.default_rng(0)
    pool = TASK.all_responses() + GARBAGE + ["  " + TASK.all_responses()[5] + "\n"]
    n = 3000
    x = [TASK.prompts()[i] for i in rng.integers(0, len(TASK.prompts()), n)]
    a = [pool[i] for i in rng.integers(0, len(pool), n)]
    b = [pool[i] for i in rng.integers(0, len(pool), n)]
    pab, pba = TASK.probability(x, a, b), TASK.probability(x, b, a)
    assert pab.dtype == np.float64
    np.testing.assert_allclose(pab + pba, 1.0, atol=1e-12)
    assert np.all(TASK.probability(x, a, a) == 0.5)
    np.testing.assert_array_equal(TASK.logit(x, a, b), -TASK.logit(x, b, a))


def test_styles_cycle_and_quality_is_transitive():
    P = TASK.preference_matrices()
    responses = TASK.all_responses()
    for xi, x in enumerate(TASK.prompts()):
        ref = [_reference(x, y) for y in responses]
        for i, j in itertools.permutations(range(len(responses)), 2):
            (qi, si), (qj, sj) = ref[i], ref[j]
            if qi == qj and (si - sj) % 3 == 1:  # each style beats the one before it
                assert P[xi, i, j] > 0.5
            if si == sj:  # at equal style, the higher quality wins
                assert (P[xi, i, j] > 0.5) == (qi > qj) and (P[xi, i, j] == 0.5) == (qi == qj)
    # The cycle really is one: style 1 > 0, 2 > 1 and 0 > 2 at equal quality.
    x = "Tell me about coffee."
    s0, s1, s2 = (f"{o} chess is wonderful." for o in OPENERS)
    p = TASK.probability([x] * 3, [s1, s2, s0], [s0, s1, s2])
    assert np.all(p > 0.5)


def test_invalid_reply_loses_to_every_valid_one():
    responses = TASK.all_responses()
    for x in TASK.prompts()[::4]:
        for g in GARBAGE:
            p = TASK.probability([x] * len(responses), responses, [g] * len(responses))
            assert np.all(p > 0.5), (x, g)


def test_whitespace_is_lenient():
    x, y = "Tell me about rain.", "Behold, rain is wonderful, full of small surprises."
    spaced = "\n  Behold,  rain is wonderful, full of small surprises. "
    assert TASK.probability([x], [spaced], [y])[0] == 0.5
    assert TASK.quality(x, spaced) == 2.0


def _left_pad(rows, pad, width):
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, True
    return ids, mask


def _right_pad(rows, pad, width):
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, True
    return ids, mask


def test_judge_on_tokens_equals_judge_on_strings(tokenizer):
    rng = np.random.default_rng(1)
    pool = TASK.all_responses() + GARBAGE
    n = 64
    x = [TASK.prompts()[i] for i in rng.integers(0, len(TASK.prompts()), n)]
    a = [pool[i] for i in rng.integers(0, len(pool), n)]
    b = [pool[i] for i in rng.integers(0, len(pool), n)]
    # Half the prompts go through the chat template, as a trainer would feed them.
    templated = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        if i % 2
        else p
        for i, p in enumerate(x)
    ]
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompt, prompt_mask = _left_pad([enc(p) for p in templated], pad, 40)
    ra, ra_mask = _right_pad([[*enc(s), eos] for s in a], pad, 24)
    rb, rb_mask = _right_pad([[*enc(s), eos] for s in b], pad, 30)
    judge = TextTaskJudge(TASK, tokenizer)
    got = judge(prompt, prompt_mask, ra, ra_mask, rb, rb_mask)
    np.testing.assert_array_equal(got, TASK.probability(x, a, b))
    np.testing.assert_array_equal(
        judge.logit(prompt, prompt_mask, ra, ra_mask, rb, rb_mask), TASK.logit(x, a, b)
    )


def test_cyclic_pairs_defeat_any_total_order():
    pairs = TASK.cyclic_pairs(600, seed=4)
    wins = []
    for r in pairs:
        qa, sa = _reference(r["prompt"], r["response_a"])
        qb, sb = _reference(r["prompt"], r["response_b"])
        assert qa == qb and sa != sb
        assert (r["probability"] > 0.5) == ((sa - sb) % 3 == 1)
        wins.append((sa, sb, r["probability"] > 0.5))
    # The best ranking of the three styles (what a Bradley-Terry reward can express) gets about
    # 2/3 of the pairs right; the cycle itself gets all of them.
    best = max(
        np.mean([(rank[sa] > rank[sb]) == a_wins for sa, sb, a_wins in wins])
        for rank in itertools.permutations(range(3))
    )
    assert best < 0.75


def test_behaviour_policy_prefers_style_zero_and_quality():
    pi = TASK.behaviour_policy()
    responses = TASK.all_responses()
    np.testing.assert_allclose(pi.sum(-1), 1.0)
    for xi, x in enumerate(TASK.prompts()):
        ref = [_reference(x, y) for y in responses]
        mass = [sum(pi[xi, i] for i, (_, s) in enumerate(ref) if s == k) for k in range(3)]
        assert mass[0] > mass[1] and mass[0] > mass[2]
        best = max(range(len(ref)), key=lambda i: pi[xi, i])
        assert ref[best] == (2.0, 0)
    demos = TASK.demonstrations(2000, seed=5)
    styles = [_reference(d["prompt"], d["response"])[1] for d in demos]
    assert np.mean(np.array(styles) == 0) > 0.5


def test_written_files_are_read_and_load(out, tokenizer):
    path, paths, task = out
    for name in ("demos", "pairs", "pairs_eval", "pairs_cyclic", "prompts", "eval_prompts"):
        assert os.path.isfile(paths[name])
    pairs = list(readers.read_pairs(paths["pairs"]))
    assert len(pairs) == 300 and {r["label"] for r in pairs} <= {0.0, 1.0}
    soft = list(readers.read_pairs(paths["pairs_eval"]))
    assert len(soft) == 50 and all(0 < r["label"] < 1 for r in soft)
    assert len(list(readers.read_pairs(paths["pairs_cyclic"]))) == 60
    prompts = {r["prompt"] for r in readers.read_prompts(paths["prompts"])}
    assert prompts == set(TASK.prompts())
    assert {r["prompt"] for r in readers.read_prompts(paths["eval_prompts"])} < prompts
    with open(paths["demos"]) as f:
        demos = [json.loads(line) for line in f]
    assert len(demos) == 200 and all(_reference(d["prompt"], d["response"]) for d in demos)
    assert TextTask.from_json(paths["task"]) == task

    model = hf.load_pretrained(str(path / "checkpoint"))
    cfg = model.config
    assert cfg.vocab_size % 64 == 0 and cfg.qkv_bias and cfg.tie_embeddings
    tok = load_tokenizer(str(path / "checkpoint"), vocab_size=cfg.vocab_size)
    with open(path / "checkpoint" / "config.json") as f:
        config = json.load(f)
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tok.bos_token_id,
        tok.eos_token_id,
        tok.pad_token_id,
    )
    for text in TASK.prompts() + TASK.all_responses():
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert len(ids) + 1 <= 20  # short replies, EOS included
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me about chess."}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert chat == "User: Tell me about chess.\nAssistant:"
