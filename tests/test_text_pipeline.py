"""The text path end to end, on a tiny random Qwen2 made here by transformers (torch CPU):
SFT on a demonstrations file -> a preference model and a reward model on that backbone ->
Nash-MD-PG and RLHF on a prompts file -> sampled evaluation -> samples -> export, and
transformers loading the export with equal logits. Small on purpose: each stage runs a few
steps; what is checked is that every stage reads what the previous one wrote, and the
properties that hold at any size (antisymmetry, KL of mu to itself, logits parity, resumable
data), not how well a few steps learn (README's measured figures do that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from nlhf_jax import checkpoint
from nlhf_jax.evaluate.on_prompts import evaluate_on_prompts
from nlhf_jax.export import export_run
from nlhf_jax.models import forward_full, hf
from nlhf_jax.sample import sample_run
from nlhf_jax.tasks import text
from nlhf_jax.train import loop, methods
from nlhf_jax.train.online import ONLINE_METHODS
from nlhf_jax.train.text_stages import stage_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _qwen2_checkpoint(path: str, vocab_size: int) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The text task's files (small), and a transformers-made Qwen2 with the task's tokenizer."""
    root = str(tmp_path_factory.mktemp("text"))
    paths = text.write_task_files(
        root, num_demos=800, num_pairs=600, num_eval_pairs=100, num_cyclic=100
    )
    ckpt = os.path.join(root, "qwen2")
    tok = text.build_tokenizer(ckpt)
    _qwen2_checkpoint(ckpt, vocab_size=-(-len(tok) // 64) * 64)
    return {**paths, "root": root, "qwen2": ckpt}


def _config(stage: str, files: dict, runs: str, **overrides):
    c = stage_config(stage)
    c.batch_size, c.log_every = 8, 1000
    c.data.data_dir = os.path.join(runs, "data")
    c.sampling.max_new_tokens = 12
    if stage in ("sft", "preference_model", "reward_model"):
        c.model.hf_checkpoint = files["qwen2"]
    if stage == "sft":
        c.data.train_file = files["demos"]
    elif stage in ("preference_model", "reward_model"):
        c.data.train_file = files["pairs"]
        c.data.eval_file = f"{files['pairs_eval']},{files['pairs_cyclic']}"
        c.data.eval_batch_size = 50
    else:
        c.init_from = os.path.join(runs, "sft")
        c.judge = os.path.join(runs, "pm")
        c.reward_model = os.path.join(runs, "rm")
        c.data.prompts_file = files["prompts"]
        c.data.eval_prompts_file = files["eval_prompts"]
        c.mesh.num_devices = 1
    for key, value in overrides.items():
        c[key] = value
    return c


def _train(stage, files, runs, steps, name=None, **overrides):
    config = _config(stage, files, runs, **overrides)
    workdir = os.path.join(runs, name or stage)
    trainer = methods.build(config, workdir)
    loop.run(trainer, workdir, num_steps=steps, eval_every=steps, quiet=True)
    return workdir


@pytest.fixture(scope="module")
def runs(files, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("runs"))
    _train("sft", files, root, 60)
    _train("preference_model", files, root, 30, name="pm")
    _train("reward_model", files, root, 10, name="rm")
    _train("nash_md", files, root, 4)
    _train("rlhf", files, root, 4)
    return root


def _rows(workdir, kind):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind]


def _assert_same(tree, reference):
    """Every leaf of ``reference`` is in ``tree`` under the same path, bit for bit."""
    flat = lambda t: {
        jax.tree_util.keystr(p): np.asarray(x)
        for p, x in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(t))
    }
    got, want = flat(tree), flat(reference)
    assert want and set(want) <= set(got), sorted(set(want) - set(got))
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, key)


def test_sft_starts_from_the_checkpoint_and_learns(files, runs, tmp_path):
    trainer = methods.build(_config("sft", files, str(tmp_path)), str(tmp_path / "sft0"))
    _assert_same(trainer.init_state().params, nnx.state(hf.load_pretrained(files["qwen2"])))
    sft = os.path.join(runs, "sft")
    # The random checkpoint starts near log(vocab) = log(384) = 5.95 nats a token; the task's
    # responses carry far less (one of 60 per prompt over ~10 tokens): 60 steps must halve it.
    assert _rows(sft, "train")[-1]["nll"] < 0.5 * np.log(384)
    with open(os.path.join(sft, "samples.jsonl")) as f:
        texts = [json.loads(line) for line in f]
    assert {t["step"] for t in texts} == {0, 60}  # sampled texts at each evaluation
    assert all(isinstance(t["response"], str) for t in texts)
    assert os.path.isdir(os.path.join(sft, checkpoint.TOKENIZER_DIR))


def test_preference_model_backbone_is_the_checkpoint(files, runs, tmp_path):
    config = _config("preference_model", files, str(tmp_path))
    trainer = methods.build(config, str(tmp_path / "pm0"))
    state = trainer.init_state()
    _assert_same(state.params["backbone"], nnx.state(hf.load_pretrained(files["qwen2"])))
    assert not np.any(np.asarray(state.params["head"]["w"]))  # a fresh, zero head
    identity = checkpoint.read_identity(os.path.join(runs, "pm"))
    assert identity["backbone"] == files["qwen2"]
    evals = _rows(os.path.join(runs, "pm"), "eval")
    assert {"pairs_eval/accuracy", "pairs_cyclic/accuracy"} <= set(evals[-1])


def test_online_runs_log_win_rates_and_texts(runs):
    for name in ("nash_md", "rlhf"):
        workdir = os.path.join(runs, name)
        last = _rows(workdir, "eval")[-1]
        assert 0.0 <= last["eval/win_rate_vs_reference"] <= 1.0
        assert "exact/duality_gap" not in last  # a text task has no exact evaluation
        with open(os.path.join(workdir, "samples.jsonl")) as f:
            rows = [json.loads(line) for line in f]
        assert {r["step"] for r in rows} == {0, 4}
        assert all(r["prompt"].endswith(".") for r in rows)  # decoded task prompts


def test_sampled_evaluation_on_a_prompts_file(files, runs, tmp_path):
    ref = os.path.join(runs, "sft")
    results = evaluate_on_prompts(
        ref,
        {"nash_md": os.path.join(runs, "nash_md"), "rlhf": os.path.join(runs, "rlhf")},
        files["eval_prompts"],
        [os.path.join(runs, "pm"), files["task"]],
        str(tmp_path / "eval"),
        samples=4,
        max_new_tokens=12,
        quiet=True,
    )
    assert results["methods"] == ["sft", "nash_md", "rlhf"]
    for judge in ("pm", "text_task"):
        M = np.array(results[f"win_rate/{judge}"])
        S = np.array(results[f"win_rate_stderr/{judge}"])
        np.testing.assert_allclose(M + M.T, 1.0, atol=1e-12)
        assert np.all(np.diag(S) == 0) and np.all(S[~np.eye(3, dtype=bool)] >= 0)
    # mu against itself: log mu - log mu over mu's own samples is exactly 0.
    assert results["kl_to_reference"][0] == pytest.approx(0.0, abs=1e-5)
    assert os.path.exists(tmp_path / "eval" / "win_rate.png")


def test_sample_cli_writes_text(files, runs, tmp_path):
    out = str(tmp_path / "samples.jsonl")
    rows = sample_run(
        os.path.join(runs, "nash_md"), out, prompts_file=files["eval_prompts"], num_samples=2
    )
    with open(out) as f:
        written = [json.loads(line) for line in f]
    assert written == rows and len(rows) == 2 * 10
    assert all(isinstance(r["response"], str) and r["logprob"] <= 0 for r in rows)


def test_export_loads_in_transformers_with_equal_logits(runs, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    run = os.path.join(runs, "nash_md")
    out = str(tmp_path / "hf")
    export_run(run, out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = np.array([tok("Tell me about the moon.")["input_ids"]])
    policy = checkpoint.load_policy(run)
    ours = np.asarray(forward_full(policy.graphdef, policy.params, ids, np.ones_like(ids, bool)))
    with torch.no_grad():
        theirs = model(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    generated = model.generate(torch.tensor(ids), max_new_tokens=4, do_sample=False)[0]
    # Greedy: transformers' first new token is the argmax of our logits at the last position.
    assert 0 < len(generated) - ids.shape[1] <= 4
    assert int(generated[ids.shape[1]]) == int(np.argmax(ours[0, -1]))


@pytest.mark.parametrize("method", sorted(set(ONLINE_METHODS) - {"nash_md", "rlhf"}))
def test_every_online_method_runs_on_the_prompts_file(files, runs, tmp_path, method):
    workdir = _train(method, files, str(tmp_path), 2, name=method, init_from=f"{runs}/sft",
                     judge=f"{runs}/pm")  # fmt: skip
    assert _rows(workdir, "train") and os.path.isdir(os.path.join(workdir, "tokenizer"))


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "nlhf_jax.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
    )


def test_bad_prompts_file_is_one_line_and_leaves_nothing_behind(files, runs, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    workdir = str(tmp_path / "run")
    common = [
        "--config", "configs/text.py:nash_md", "--workdir", workdir,
        f"--config.init_from={runs}/sft", f"--config.judge={runs}/pm",
        f"--config.data.eval_prompts_file={files['eval_prompts']}",
        "--config.num_steps=1", "--config.batch_size=4", "--config.sampling.max_new_tokens=4",
    ]  # fmt: skip
    bad = _cli(*common, f"--config.data.prompts_file={empty}", cwd=REPO)
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    assert f"error: {empty}: no prompts" in bad.stderr
    good = _cli(*common, f"--config.data.prompts_file={files['prompts']}", cwd=REPO)
    assert good.returncode == 0, good.stderr[-2000:]
    assert checkpoint.latest_step(workdir) == 1
