"""Judges people already have, on tiny transformers-made checkpoints with the text task's
tokenizer: a sequence-classification reward model (parity with transformers' logits, the fused
step), a causal LM asked "A or B?" (parity of its two answer logits, antisymmetry), a host
function of the decoded texts, and the text task's exact judge; Nash-MD-PG (and RLHF on a
reward model with another tokenizer) trains a few steps against each. Bad judges are one line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from nlhf_jax import judges
from nlhf_jax.errors import UserError, exit_on_user_error
from nlhf_jax.evaluate.on_prompts import evaluate_on_prompts
from nlhf_jax.judges.causal_lm import CausalLMJudge
from nlhf_jax.judges.hf_reward import RetokenizedRewardJudge
from nlhf_jax.models import tokenizer as tokenizers
from nlhf_jax.pipelines.text import stage_config
from nlhf_jax.tasks import text
from nlhf_jax.train import loop, methods

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Float32 on both sides; torch and XLA sum in different orders (a few ulps of O(1) values), and
# a mapping error (a transposed matrix, the wrong token read) moves a score by O(0.1).
ATOL = 1e-4
SMALL = dict(
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,  # larger than the default, so scores are O(1)
)
ARCHS = {
    "qwen2": ("Qwen2Config", "Qwen2ForSequenceClassification"),
    "llama": ("LlamaConfig", "LlamaForSequenceClassification"),
    "qwen3": ("Qwen3Config", "Qwen3ForSequenceClassification"),
    "mistral": ("MistralConfig", "MistralForSequenceClassification"),
    "gemma2": ("Gemma2Config", "Gemma2ForSequenceClassification"),
    "gemma3": ("Gemma3TextConfig", "Gemma3TextForSequenceClassification"),
}
# Mistral's window shorter than the rows: ours reads prompts left-padded and responses
# right-padded (padding between them), transformers one contiguous row: equal rewards mean the
# window counts token positions.
EXTRA = {
    "mistral": dict(sliding_window=6),
    "gemma2": dict(sliding_window=6, head_dim=8, attn_logit_softcapping=3.0),
    "gemma3": dict(sliding_window=6, head_dim=8, layer_types=["sliding_attention"] * 2),
}


def prefer_longer(prompts, responses_a, responses_b):
    """A host judge for the tests: the longer response wins with probability 0.8."""
    la, lb = np.array([len(a) for a in responses_a]), np.array([len(b) for b in responses_b])
    return np.where(la > lb, 0.8, np.where(la < lb, 0.2, 0.5))


PREFER_LONGER = f"{__name__}:prefer_longer"  # the module as pytest imported it


def wrong_shape(prompts, responses_a, responses_b):
    return np.full((len(prompts), 1), 0.5)


def above_one(prompts, responses_a, responses_b):
    return np.full(len(prompts), 1.5)


def a_list(prompts, responses_a, responses_b):
    return [0.5] * len(prompts)


def _save(model, tok, path):
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The text task (few rows), its tokenizer, and judges made by transformers."""
    root = str(tmp_path_factory.mktemp("checkpoint_judges"))
    paths = text.write_task_files(root, num_demos=64, num_pairs=8, num_eval_pairs=8, num_cyclic=8)
    tok = tokenizers.load_tokenizer(paths["tokenizer"])
    vocab = -(-len(tok) // 64) * 64
    torch.manual_seed(0)
    for arch, (config_cls, model_cls) in ARCHS.items():
        # Llama's pad id is the EOS: the score is then read before a trailing EOS, as
        # transformers does (the rightmost token that is not the pad id).
        pad = tok.eos_token_id if arch == "llama" else tok.pad_token_id
        config = getattr(transformers, config_cls)(
            vocab_size=vocab, num_labels=1, pad_token_id=pad, **SMALL, **EXTRA.get(arch, {})
        )
        model = getattr(transformers, model_cls)(config).eval()
        paths[f"rm_{arch}"] = _save(model, tok, os.path.join(root, f"rm_{arch}"))
    lm = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(vocab_size=vocab, **SMALL))
    paths["lm"] = _save(lm.eval(), tok, os.path.join(root, "lm"))
    gemma3 = transformers.Gemma3TextConfig(vocab_size=vocab, **SMALL, **EXTRA["gemma3"])
    gemma3.layer_types = ["sliding_attention", "full_attention"]
    lm = transformers.Gemma3ForCausalLM(gemma3)
    paths["lm_gemma3"] = _save(lm.eval(), tok, os.path.join(root, "lm_gemma3"))
    # Ends in a newline, so the answers are "A" and "B", one byte token each of the task's tiny
    # BPE (which never merged " A": the default template is refused on it).
    paths["template"] = os.path.join(root, "template.txt")
    with open(paths["template"], "w") as f:
        f.write("Prompt: {prompt}\nA: {response_a}\nB: {response_b}\nBetter:\n")
    other = tokenizers.build_bpe_tokenizer(os.path.join(root, "other_tok"), vocab_size=300)
    config = transformers.LlamaConfig(vocab_size=320, num_labels=1, pad_token_id=0, **SMALL)
    rm = transformers.LlamaForSequenceClassification(config).eval()
    paths["rm_other"] = _save(rm, other, os.path.join(root, "rm_other"))
    return {**paths, "root": root, "vocab": vocab}


@pytest.fixture(scope="module")
def task_tokenizer(files):
    return tokenizers.load_tokenizer(files["tokenizer"])


def _texts(n: int, seed: int = 0):
    """n (prompt, a, b) of the task's texts, of different lengths (some a == b)."""
    rng = np.random.default_rng(seed)
    task = text.TextTask()
    prompts, replies = task.prompts(), task.all_responses()
    x = [prompts[i] for i in rng.integers(len(prompts), size=n)]
    a = [replies[i] for i in rng.integers(len(replies), size=n)]
    b = [replies[i] for i in rng.integers(len(replies), size=n)]
    b[0] = a[0]
    return x, a, b


def _left(rows, pad):
    width = max(map(len, rows))
    out, mask = np.full((len(rows), width), pad, np.int32), np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        out[i, width - len(r) :], mask[i, width - len(r) :] = r, True
    return out, mask


def _right(rows, pad):
    out, mask = _left([r[::-1] for r in rows], pad)
    return out[:, ::-1].copy(), mask[:, ::-1].copy()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_reward_checkpoint_rewards_equal_transformers_logits(files, arch):
    """Our layout (prompts left-padded, responses right-padded, rows of different lengths, each
    ending in EOS) against transformers on the same tokens in one right-padded row each."""
    # The policies' tokenizer is the checkpoint's own (transformers loads a tokenizer saved
    # beside a qwen2 config.json as Qwen2Tokenizer, which adds a token): the jittable judge.
    tok = tokenizers.load_tokenizer(files[f"rm_{arch}"])
    judge = judges.load(files[f"rm_{arch}"], tokenizer=tok, vocab_size=files["vocab"])
    assert isinstance(judge, judges.ModelJudge) and judge.jittable and judges.has_reward(judge)
    x, a, _ = _texts(6)
    prompts = [tok.encode(p) for p in x]
    replies = [[*tok.encode(r), tok.eos_token_id] for r in a]
    prompt, prompt_mask = _left(prompts, tok.pad_token_id)
    reply, reply_mask = _right(replies, tok.pad_token_id)
    ours = np.asarray(judge.reward(prompt, prompt_mask, reply, reply_mask))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(files[f"rm_{arch}"])
    pad = model.config.pad_token_id
    ids, mask = _right([p + r for p, r in zip(prompts, replies, strict=True)], pad)
    with torch.no_grad():
        theirs = model.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask * 1)).logits
    np.testing.assert_allclose(ours, theirs.numpy()[:, 0], atol=ATOL)
    assert np.ptp(ours) > 0.01  # not a constant that would match anything


def test_causal_lm_judge_matches_transformers_and_is_antisymmetric(files, task_tokenizer):
    judge = judges.load(files["lm"], tokenizer=task_tokenizer, template=files["template"])
    assert isinstance(judge, CausalLMJudge) and not judge.jittable
    assert not judges.has_reward(judge)
    x, a, b = _texts(5)
    ours = judge.answer_logits(x, a, b)
    model = transformers.AutoModelForCausalLM.from_pretrained(files["lm"]).eval()
    with torch.no_grad():
        theirs = [
            model(torch.tensor([judge.encode(*t)])).logits[0, -1, list(judge.labels)].numpy()
            for t in zip(x, a, b, strict=True)
        ]
    np.testing.assert_allclose(ours, np.stack(theirs), atol=ATOL)
    # P = (P_A(a, b) + 1 - P_A(b, a)) / 2 from transformers' logits of both orders.
    swapped = judge.answer_logits(x, b, a)
    p_a = lambda logits: 1 / (1 + np.exp(-(logits[:, 0] - logits[:, 1])))
    p = judge.probability(x, a, b)
    np.testing.assert_allclose(p[1:], ((p_a(ours) + 1 - p_a(swapped)) / 2)[1:], atol=ATOL)
    assert p[0] == 0.5  # a == b
    np.testing.assert_allclose(p + judge.probability(x, b, a), 1.0, rtol=0, atol=1e-7)
    assert np.ptp(p) > 1e-3
    # On token arrays (the protocol): the policies' tokens decoded, then the same texts.
    tok = task_tokenizer
    arrays = [_left([tok.encode(t) for t in x], 0), _right([tok.encode(t) for t in a], 0)]
    arrays.append(_right([tok.encode(t) for t in b], 0))
    np.testing.assert_allclose(judge(*[m for pair in arrays for m in pair]), p, atol=1e-12)
    bf16 = judges.load(
        files["lm"], tokenizer=task_tokenizer, dtype="bfloat16", template=files["template"]
    )
    np.testing.assert_allclose(bf16.probability(x, a, b), p, atol=0.02)  # bf16 rounding


def test_causal_lm_judge_scores_answers_of_several_tokens(files, task_tokenizer):
    """The default template on the task's tiny BPE: " A" and " B" are two tokens each. l_A and
    l_B are then the answers' summed log-probabilities after the template, as transformers gives
    them; P from them as from one-token logits (both orders, P + P' = 1)."""
    judge = judges.load(files["lm"], tokenizer=task_tokenizer)
    assert judge.labels is None and all(len(a) == 2 for a in judge.answers)
    x, a, b = _texts(4)
    ours = judge.answer_logits(x, a, b)
    model = transformers.AutoModelForCausalLM.from_pretrained(files["lm"]).eval()

    def logprob(row, answer):
        ids = torch.tensor([row + list(answer)])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        return sum(float(logp[len(row) - 1 + i, t]) for i, t in enumerate(answer))

    rows = [judge.encode(*t) for t in zip(x, a, b, strict=True)]
    theirs = [[logprob(r, judge.answers[0]), logprob(r, judge.answers[1])] for r in rows]
    np.testing.assert_allclose(ours, theirs, atol=ATOL)
    p = judge.probability(x, a, b)
    np.testing.assert_allclose(p + judge.probability(x, b, a), 1.0, rtol=0, atol=1e-7)
    assert p[0] == 0.5 and np.ptp(p) > 1e-3


def test_reward_checkpoint_with_its_own_tokenizer_runs_on_the_host(files, task_tokenizer):
    judge = judges.load(files["rm_other"], tokenizer=task_tokenizer, vocab_size=files["vocab"])
    assert isinstance(judge, RetokenizedRewardJudge) and judges.has_reward(judge)
    x, a, b = _texts(4)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(files["rm_other"])
    model.eval()
    with torch.no_grad():  # one row at a time: no padding involved on their side
        rows = [torch.tensor([judge.encode(p, r)]) for p, r in zip(x, a, strict=True)]
        theirs = np.array([model(row).logits[0, 0] for row in rows])
    np.testing.assert_allclose(judge.rewards(x, a), theirs, atol=ATOL)
    np.testing.assert_allclose(judge.probability(x, a, b) + judge.probability(x, b, a), 1.0)


def test_a_gemma3_policy_trains_against_a_gemma2_reward_checkpoint_from_the_command_line(
    files, tmp_path
):
    """Nash-MD from a Gemma 3 causal LM (local and global layers) as policy and reference,
    judged by a Gemma 2 reward checkpoint (soft-capped attention), through ``python -m
    nlhf_jax.train`` as a user runs it."""
    workdir = tmp_path / "nash_md"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-m", "nlhf_jax.train", "--config", "configs/text.py:nash_md",
         f"--workdir={workdir}", f"--config.init_from={files['lm_gemma3']}",
         f"--config.judge={files['rm_gemma2']}", f"--config.data.prompts_file={files['prompts']}",
         "--config.num_steps=2", "--config.batch_size=8", "--config.log_every=1",
         "--config.eval_every=0", "--config.data.max_prompt_len=32",
         "--config.data.max_response_len=8", "--config.optimizer.warmup_steps=0"],
        capture_output=True, text=True, cwd=repo, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    with open(workdir / "metrics.jsonl") as f:
        train = [r for r in map(json.loads, f) if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(np.isfinite(r["loss"]) and 0 <= r["judge/min"] <= r["judge/max"] <= 1 for r in train)
    with open(workdir / "run.json") as f:
        assert json.load(f)["model"]["family"] == "gemma3"


def _config(stage: str, files: dict, **overrides):
    c = stage_config(stage)
    c.batch_size, c.log_every, c.seed = 8, 1000, 0
    c.data.max_prompt_len, c.data.max_response_len = 32, 16
    c.data.data_dir = os.path.join(files["root"], "data")
    c.sampling.max_new_tokens = 8
    if stage == "sft":
        c.model.hf_checkpoint, c.data.train_file = files["checkpoint"], files["demos"]
    else:
        c.init_from = os.path.join(files["root"], "sft")
        c.data.prompts_file, c.data.eval_prompts_file = files["prompts"], files["eval_prompts"]
        c.optimizer.warmup_steps = 0
    for key, value in overrides.items():
        c[key] = value
    return c


@pytest.fixture(scope="module")
def sft(files):
    """An SFT run whose policy is the checkpoint itself: the reference and starting policy.
    Its quality does not matter here, so its one step leaves the state as it is (nothing to
    compile) and its evaluation is skipped."""
    workdir = os.path.join(files["root"], "sft")
    trainer = methods.build(_config("sft", files), workdir)
    trainer = dataclasses.replace(trainer, step=lambda state, batch: (state, {}), evaluate=None)
    loop.run(trainer, workdir, num_steps=1, quiet=True)
    return workdir


def _steps(files, tmp_path, method, judge, steps, **overrides):
    """The online trainer against ``judge`` and its metrics over ``steps`` steps (through the
    trainer's own step and check, without the loop's checkpoints)."""
    trainer = methods.build(_config(method, files, judge=judge, **overrides), str(tmp_path))
    state, rows = trainer.init_state(), []
    for _ in range(steps):
        state, metrics = trainer.step(state, next(trainer.data))
        rows.append(jax.device_get(metrics))
        trainer.check(rows[-1])
    return trainer, state, rows


@pytest.mark.parametrize("method", ["comal", "mpo", "mnpo", "egpo", "sppo", "onpo"])
def test_the_methods_since_the_seeds_train_on_text_with_a_host_judge(files, sft, tmp_path, method):
    """COMAL, MPO, MNPO, EGPO, SPPO and ONPO on the text path, their step split around a host
    judge (a function of the decoded texts): two rounds of one step, so the reference or
    population moves (EGPO: a half step and a full step; ONPO: its optimizer's state)."""
    schedule = {
        "comal": {"reset_steps": 2, "round_steps": 1},
        "mpo": {"magnet_steps": 2, "round_steps": 1},
        "mnpo": {"round_steps": 1},
        "egpo": {},
        "sppo": {"round_steps": 1},
        "onpo": {},
    }[method]
    _, state, rows = _steps(files, tmp_path, method, PREFER_LONGER, 2, **schedule)
    optimistic = lambda x: hasattr(x, "previous_gradient")  # optax's optimistic state
    kept = jax.tree.leaves(state.opt_state, is_leaf=optimistic) if method == "onpo" else []
    assert int(state.step) == 2 and (state.aux or any(optimistic(x) for x in kept))
    for row in rows:
        assert np.isfinite(row["loss"]) and "time/judge_s" in row


@pytest.mark.parametrize(
    "kind, steps", [("reward", 2), ("causal_lm", 2), ("function", 1), ("task_json", 1)]
)
def test_nash_md_trains_against_each_kind(files, sft, tmp_path, kind, steps):
    """The reward checkpoint (the policies' tokenizer) runs in the fused step; the others in the
    split step, whose programs they share (one compilation for the three)."""
    judge = {
        "reward": files["rm_qwen2"],
        "causal_lm": files["lm"],
        "function": PREFER_LONGER,
        "task_json": files["task"],
    }[kind]
    overrides = {"judge_template": files["template"]} if kind == "causal_lm" else {}
    trainer, state, rows = _steps(files, tmp_path, "nash_md", judge, steps, **overrides)
    assert int(state.step) == steps
    for row in rows:
        assert np.isfinite(row["loss"]) and 0 <= row["judge/min"] <= row["judge/max"] <= 1
        assert ("time/judge_s" in row) == (kind != "reward")  # the fused step has no host part
    if kind == "function":  # a host judge in the trainer's evaluation
        assert 0 <= trainer.evaluate(state)["eval/win_rate_vs_reference"] <= 1


def test_rlhf_takes_a_reward_checkpoint_and_refuses_other_judges(files, sft, tmp_path):
    """RLHF reads the reward of a sequence classifier, fused or on the host (the host reward in
    the split step: tests/train/test_host_judges.py); a judge without one is refused."""
    for judge in (files["rm_qwen2"], files["rm_other"]):
        methods.build(_config("rlhf", files, judge=judge), str(tmp_path / "rlhf"))
    refused = r"maximizes a scalar reward; config.judge=.* gives none"
    for judge, kw in ((files["lm"], {"judge_template": files["template"]}), (PREFER_LONGER, {})):
        with pytest.raises(UserError, match=refused):
            methods.build(_config("rlhf", files, judge=judge, **kw), str(tmp_path / "refused"))


def test_bad_judges_are_one_line(files, sft, task_tokenizer, tmp_path, capsys):
    vocab = files["vocab"]
    load = lambda spec, **kw: judges.load(spec, tokenizer=task_tokenizer, vocab_size=vocab, **kw)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"neither a training run .* nor a Hugging Face checkpoint"):
        load(str(empty))
    (empty / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": []}))
    with pytest.raises(UserError, match=r"architectures=\[\] in its config.json; a checkpoint"):
        load(str(empty))
    no_pad = tmp_path / "no_pad"
    task_tokenizer.save_pretrained(no_pad)
    config = json.load(open(os.path.join(files["rm_qwen2"], "config.json")))
    (no_pad / "config.json").write_text(json.dumps(config))
    cfg = json.load(open(no_pad / "tokenizer_config.json"))
    (no_pad / "tokenizer_config.json").write_text(json.dumps({**cfg, "pad_token": None}))
    with pytest.raises(UserError, match="its tokenizer has no pad token"):
        load(str(no_pad))
    for fn, why in (
        ("wrong_shape", r"shape \[8\] .*; it returned shape \[8, 1\]"),
        ("above_one", r"it returned values in \[1.5, 1.5\]"),
        ("a_list", "it returned a list"),
    ):
        judge = load(f"{__name__}:{fn}")
        with pytest.raises(UserError, match=rf"judge {__name__}:{fn}: the function must .*{why}"):
            judge.probability(*_texts(8))
    with pytest.raises(UserError, match="cannot import module 'no_such_module_here'"):
        load("no_such_module_here:fn")
    with pytest.raises(UserError, match="has no attribute 'missing'"):
        load(f"{__name__}:missing")
    with pytest.raises(UserError, match="dtype 'bf16' is not a floating dtype"):
        load(files["lm"], dtype="bf16")
    template = tmp_path / "template.txt"
    template.write_text("Prompt: {prompt}\nA: {response_a}\nWhich?")
    with pytest.raises(UserError, match=r"lacks \{response_b\}"):
        load(files["lm"], template=str(template))
    with pytest.raises(UserError, match="only a causal LM judge reads a template"):
        methods.build(
            _config("nash_md", files, judge=files["rm_qwen2"], judge_template=str(template)),
            str(tmp_path / "refused"),
        )
    # What the entry points do with it (python -m nlhf_jax.evaluate --judge ...): one line and
    # exit status 2.
    evaluate = lambda: evaluate_on_prompts(sft, {"sft2": sft}, files["eval_prompts"], [str(empty)])
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(evaluate)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: judge {empty}: architectures=")
