"""The text path end to end: SFT on a demonstrations file -> a preference model and a reward
model on that backbone -> Nash-MD-PG and RLHF on a prompts file -> sampled evaluation -> samples
-> export, and transformers loading the export with equal logits. The chain of runs is
colabs/04_text_pipeline.ipynb's (its end-to-end run, on the built-in text example with
NLHF_COLAB_SMALL=1: each stage a few steps); the tests that start from a checkpoint use a tiny
random Qwen2 made here by transformers (torch CPU). What is checked is that every stage reads
what the previous one wrote, and the properties that hold at any size (antisymmetry, KL of mu
to itself, logits parity, resumable data), not how well a few steps learn (docs/text.md's
measured figures do that).
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
from nlhf_jax.export import export_run
from nlhf_jax.models import forward_full, hf
from nlhf_jax.pipelines.text import stage_config
from nlhf_jax.sample import sample_run
from nlhf_jax.tasks import text
from nlhf_jax.train import loop, methods

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
    c.data.max_prompt_len, c.data.max_response_len = 32, 16  # the task's texts fit these
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
        c.judge = os.path.join(runs, "rm" if stage == "rlhf" else "pm")
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


# The notebook's NLHF_COLAB_SMALL steps per stage (its STEPS), and the task files it wrote.
NOTEBOOK_STEPS = {"sft": 30, "nash_md": 3, "rlhf": 3}
NOTEBOOK_CHECKPOINT = "data/text/checkpoint"  # as the notebook names it (relative to its dir)


@pytest.fixture(scope="module")
def runs(executed_notebook):
    """The notebook's runs: sft, pm, rm, nash_md and rlhf (batch 8, 12 new tokens)."""
    return os.path.join(executed_notebook("04_text_pipeline.ipynb"), "runs", "text")


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
    # responses carry far less (one of 60 per prompt over ~10 tokens): 30 steps must halve it.
    assert _rows(sft, "train")[-1]["nll"] < 0.5 * np.log(384)
    with open(os.path.join(sft, "samples.jsonl")) as f:
        texts = [json.loads(line) for line in f]
    steps = NOTEBOOK_STEPS["sft"]
    assert {t["step"] for t in texts} == {0, steps}  # sampled texts at each evaluation
    assert all(isinstance(t["response"], str) for t in texts)
    assert os.path.isdir(os.path.join(sft, checkpoint.TOKENIZER_DIR))


def test_preference_model_backbone_is_the_checkpoint(files, runs, tmp_path):
    config = _config("preference_model", files, str(tmp_path))
    trainer = methods.build(config, str(tmp_path / "pm0"))
    state = trainer.init_state()
    _assert_same(state.params["backbone"], nnx.state(hf.load_pretrained(files["qwen2"])))
    assert not np.any(np.asarray(state.params["head"]["w"]))  # a fresh, zero head
    identity = checkpoint.read_identity(os.path.join(runs, "pm"))
    assert identity["backbone"] == NOTEBOOK_CHECKPOINT
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
        assert {r["step"] for r in rows} == {0, NOTEBOOK_STEPS[name]}
        assert all(r["prompt"].endswith(".") for r in rows)  # decoded task prompts


def test_sampled_evaluation_on_a_prompts_file(runs):
    """The notebook's evaluate_on_prompts: sft, nash_md and rlhf on the eval prompts file, 4
    samples a prompt, judged by the preference model and by the task's exact judge."""
    with open(os.path.join(runs, "eval", "results.json")) as f:
        results = json.load(f)
    assert results["methods"] == ["sft", "nash_md", "rlhf"]
    for judge in ("pm", "text_task"):
        M = np.array(results[f"win_rate/{judge}"])
        S = np.array(results[f"win_rate_stderr/{judge}"])
        np.testing.assert_allclose(M + M.T, 1.0, atol=1e-12)
        assert np.all(np.diag(S) == 0) and np.all(S[~np.eye(3, dtype=bool)] >= 0)
    # mu against itself: log mu - log mu over mu's own samples is exactly 0.
    assert results["kl_to_reference"][0] == pytest.approx(0.0, abs=1e-5)
    assert os.path.exists(os.path.join(runs, "eval", "win_rate.png"))


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


# The methods whose state holds more than the policy (INPO's previous policy, Mirror Prox's
# anchor and half-step policy); every method's step is tested on the synthetic task
# (tests/train/test_online.py), and the text path feeds them all the same prompts and judge.
@pytest.mark.parametrize("method", ["inpo", "nash_mp"])
def test_online_methods_with_state_run_on_the_prompts_file(files, runs, tmp_path, method):
    workdir = _train(method, files, str(tmp_path), 2, name=method, init_from=f"{runs}/sft",
                     judge=f"{runs}/pm")  # fmt: skip
    assert _rows(workdir, "train") and os.path.isdir(os.path.join(workdir, "tokenizer"))


def _cli(*args, cwd=None):
    return _cli_module("nlhf_jax.train", *args, cwd=cwd)


def _cli_module(module, *args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_bad_prompts_file_is_one_line_and_leaves_nothing_behind(files, runs, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    workdir = str(tmp_path / "run")
    # The notebook's Nash-MD settings (configs/text_example.py's, batch 8, 12 new tokens, 3
    # steps): the run compiles what the notebook's kernel compiled, from the session's cache.
    common = [
        "--config", "configs/text.py:nash_md", "--workdir", workdir,
        f"--config.init_from={runs}/sft", f"--config.judge={runs}/pm",
        f"--config.data.eval_prompts_file={files['eval_prompts']}",
        "--config.num_steps=3", "--config.eval_every=3", "--config.batch_size=8",
        "--config.sampling.max_new_tokens=12", "--config.optimizer.learning_rate=1e-3",
        "--config.data.max_prompt_len=32", "--config.data.max_response_len=16",
    ]  # fmt: skip
    bad = _cli(*common, f"--config.data.prompts_file={empty}", cwd=REPO)
    assert bad.returncode == 2, bad.stderr
    assert "Traceback" not in bad.stderr
    assert f"error: {empty}: no prompts" in bad.stderr
    good = _cli(*common, f"--config.data.prompts_file={files['prompts']}", cwd=REPO)
    assert good.returncode == 0, good.stderr[-2000:]
    assert checkpoint.latest_step(workdir) == 3


def _lora(config, rank=4):
    config.lora.rank = rank
    config.lora.alpha = 8.0
    return config


@pytest.fixture(scope="module")
def lora_sft(files, tmp_path_factory):
    """SFT of rank-4 adapters on the checkpoint: 6 steps at a learning rate that moves them."""
    root = str(tmp_path_factory.mktemp("lora"))
    config = _lora(_config("sft", files, root))
    config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
    workdir = os.path.join(root, "sft_lora")
    loop.run(methods.build(config, workdir), workdir, num_steps=6, eval_every=6, quiet=True)
    return workdir


def test_lora_trains_and_checkpoints_the_adapters_only(files, lora_sft):
    from nlhf_jax.models import lora

    identity = checkpoint.read_identity(lora_sft)
    assert identity["base"] == {"hf_checkpoint": os.path.abspath(files["qwen2"])}
    config = checkpoint.transformer_config(identity["model"])
    adapters = nnx.to_pure_dict(checkpoint.load_adapters(lora_sft, config))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(adapters)]
    assert paths and all("_lora" in p for p in paths)  # nothing of the base in the checkpoint
    n_adapters = sum(x.size for x in jax.tree.leaves(adapters))
    n_base = sum(x.size for x in jax.tree.leaves(nnx.state(hf.load_pretrained(files["qwen2"]))))
    assert n_adapters < 0.2 * n_base
    assert any(np.abs(x).max() > 0 for p, x in jax.tree_util.tree_leaves_with_path(adapters)
               if jax.tree_util.keystr(p).endswith("['b']"))  # fmt: skip
    # The policy a later stage loads is the base with the adapters folded in: it computes what
    # the adapted model computes (to float32 rounding of W + s A B).
    policy = checkpoint.load_policy(lora_sft)
    assert policy.config.lora is None
    base = hf.load_pretrained(files["qwen2"])
    adapted = lora.attach(base, config.lora, 0)
    graphdef, _, base_state = lora.split(adapted)
    whole = nnx.merge_state(base_state, checkpoint.load_adapters(lora_sft, config))
    ids = np.array([[5, 9, 17, 33, 64, 2]])
    mask = np.ones_like(ids, bool)
    want = np.asarray(forward_full(graphdef, whole, ids, mask))
    got = np.asarray(forward_full(policy.graphdef, policy.params, ids, mask))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.abs(want - np.asarray(forward_full(*nnx.split(base), ids, mask))).max() > 1e-4


def test_lora_exports_merged_and_as_a_peft_adapter(files, lora_sft, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    policy = checkpoint.load_policy(lora_sft)
    ids = np.array([[5, 9, 17, 33, 64, 2, 7]])
    ours = np.asarray(forward_full(policy.graphdef, policy.params, ids, np.ones_like(ids, bool)))
    merged = str(tmp_path / "merged")
    export_run(lora_sft, merged)
    with torch.no_grad():
        model = transformers.AutoModelForCausalLM.from_pretrained(merged).eval()
        np.testing.assert_allclose(model(torch.tensor(ids)).logits.numpy(), ours, atol=1e-4)
    adapter_dir = str(tmp_path / "adapter")
    out = _cli_module("nlhf_jax.export", "--run", lora_sft, "--out", adapter_dir, "--peft")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PEFT LoRA adapters (rank 4" in out.stdout
    base = transformers.AutoModelForCausalLM.from_pretrained(files["qwen2"]).eval()
    model = peft.PeftModel.from_pretrained(base, adapter_dir).eval()
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.tensor(ids)).logits.numpy(), ours, atol=1e-4)


def test_lora_online_run_plays_against_its_own_base(files, runs, tmp_path):
    """Nash-MD-PG with adapters on the SFT policy: the reference is the frozen base itself, so
    at the first step (fresh adapters change nothing) the policy's and the reference's
    log-probs of the same samples are equal and the sampled KL is 0 to float32 rounding."""
    workdir = str(tmp_path / "nash_md_lora")
    config = _lora(_config("nash_md", files, runs), rank=2)
    trainer = methods.build(config, workdir)
    state = trainer.init_state()
    leaves = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state.params))
    assert all("_lora" in jax.tree_util.keystr(p) for p, _ in leaves)
    state, metrics = trainer.step(state, next(trainer.data))
    # 0 up to float32 rounding: the policy and the reference are two compiled programs over the
    # same weights (a reference that were another model would give a KL of order 1e-2 or more).
    assert abs(float(metrics["objective/kl"])) < 1e-5
    assert np.isfinite(float(metrics["loss"]))
    # A trainer starts once: the run is a second one.
    loop.run(methods.build(config, workdir), workdir, num_steps=2, quiet=True)
    identity = checkpoint.read_identity(workdir)
    assert identity["base"] == {"init_from": os.path.abspath(config.init_from)}
    merged = checkpoint.load_policy(workdir)  # the SFT policy with the adapters folded in
    assert merged.config == checkpoint.load_policy(config.init_from).config


def test_sft_micro_batches_give_the_full_batch_update(files, tmp_path):
    """Demonstrations of different lengths: the loss is a mean over response tokens, so each
    micro-batch weighs by its tokens and the accumulated gradient is the whole batch's."""
    out = {}
    for micro in (0, 2):
        config = _config("sft", files, str(tmp_path), micro_batch_size=micro)
        config.optimizer.warmup_steps = 0
        trainer = methods.build(config, str(tmp_path / f"m{micro}"))
        batch = next(trainer.data)
        lengths = batch["response_mask"].sum(-1)
        assert len(set(lengths.tolist())) > 1  # the weighting matters for this batch
        state, metrics = trainer.step(trainer.init_state(), batch)
        adam = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
        out[micro] = jax.device_get((next(x for x in adam if hasattr(x, "mu")).mu, metrics))
    (mu_full, m_full), (mu_micro, m_micro) = out[0], out[2]
    assert m_micro["nll"] == pytest.approx(m_full["nll"], rel=1e-5)
    for a, b in zip(jax.tree.leaves(mu_micro), jax.tree.leaves(mu_full), strict=True):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max() + 1e-12)
