"""``python -m nlhf_jax.export``: a policy run becomes a directory transformers' PyTorch classes
load, with logits, tokenizer and greedy generation matching ours; user mistakes end in one line."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from nlhf_jax import checkpoint
from nlhf_jax.errors import UserError
from nlhf_jax.export import export_run
from nlhf_jax.models import Transformer, TransformerConfig, forward_full, hf
from nlhf_jax.sampling import PolicySampler, SamplingConfig
from nlhf_jax.tasks import text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Float32 on both sides; torch and XLA sum in different orders (a few ulps, ~1e-6 on logits of
# magnitude ~5). A mapping error (a transposed matrix, a head order, a bias) moves them by O(1).
ATOL = 1e-4


def _make_run(workdir: str, config: TransformerConfig, params, tokenizer=None) -> str:
    identity = {"method": "sft", "model": dataclasses.asdict(config)}
    ckpt = checkpoint.Checkpoints(workdir, identity, async_save=False)
    ckpt.save(1, {"params": params}, {})
    ckpt.close()
    if tokenizer is not None:
        checkpoint.save_tokenizer(tokenizer, workdir)
    return workdir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(our model, its run's tokenizer, the run dir, the export dir, export_run's line)."""
    root = tmp_path_factory.mktemp("export")
    tok = text.build_tokenizer(str(root / "tokenizer_src"))
    config = TransformerConfig(
        vocab_size=-(-len(tok) // 64) * 64,
        d_model=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        mlp_dim=192,
        qkv_bias=True,
        init_std=0.1,  # Logits of O(1), so the comparison is not between near-zero numbers.
    )
    graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
    # Norm scales start at 1 and biases at 0: randomize them so that a mistake in either shows.
    keys = iter(jax.random.split(jax.random.key(1), 16))
    perturb = lambda path, x: (
        x + 0.3 * jax.random.normal(next(keys), x.shape, x.dtype)
        if any(str(getattr(k, "key", "")).endswith(("scale", "bias")) for k in path)
        else x
    )
    nnx.replace_by_pure_dict(
        params, jax.tree_util.tree_map_with_path(perturb, nnx.to_pure_dict(params))
    )
    run = _make_run(str(root / "run"), config, params, tok)
    out = str(root / "hf")
    line = export_run(run, out)
    return nnx.merge(graphdef, params), tok, run, out, line


def test_writes_a_complete_directory_and_says_so(exported):
    model, tok, run, out, line = exported
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "generation_config.json"} <= names
    assert "tokenizer.json" in names and "tokenizer_config.json" in names
    assert not os.path.exists(out + ".tmp") and not os.path.exists(out + ".old")
    assert line.startswith(f"wrote {out}: qwen2 weights, tokenizer") and "\n" not in line
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model)))
    assert f"{num_params:,} parameters (float32), step 1 of {run}" in line
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ids["pad_token_id"] = tok.pad_token_id
    for name in ("config.json", "generation_config.json"):
        with open(os.path.join(out, name)) as f:
            assert ids.items() <= json.load(f).items(), name


def test_pytorch_logits_match_ours(exported):
    model, tok, _, out, _ = exported
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(torch_model).__name__ == "Qwen2ForCausalLM"
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, len(tok), (3, 10))
    mask = np.arange(10)[None, :] < np.array([[10], [7], [4]])  # Right-padded rows.
    tokens = np.where(mask, tokens, tok.pad_token_id)
    with torch.no_grad():
        theirs = torch_model(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))
        ).logits.numpy()
    graphdef, state = nnx.split(model)
    ours = np.asarray(forward_full(graphdef, state, jnp.asarray(tokens), jnp.asarray(mask)))
    assert np.abs(ours[mask]).max() > 1.0
    np.testing.assert_allclose(theirs[mask], ours[mask], atol=ATOL, rtol=0)


def test_tokenizer_round_trips(exported):
    _, tok, _, out, _ = exported
    loaded = transformers.AutoTokenizer.from_pretrained(out)
    sample = text.TextTask().prompts()[0] + " " + text.render_response(2, 3, True)
    ids = loaded(sample, add_special_tokens=False)["input_ids"]
    assert ids == tok(sample, add_special_tokens=False)["input_ids"]
    assert loaded.decode(ids) == sample
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    assert loaded.chat_template == text.CHAT_TEMPLATE


def test_greedy_generation_matches_ours(exported):
    model, tok, _, out, _ = exported
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompts = np.random.default_rng(1).integers(3, len(tok), (4, 6))
    with torch.no_grad():
        generated = torch_model.generate(
            torch.tensor(prompts),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=5,
            do_sample=False,
        ).numpy()[:, prompts.shape[1] :]
    # transformers stops once every row has emitted EOS (from generation_config.json); ours
    # writes pad_id after a row's EOS, as transformers does for the rows that finished first.
    theirs = np.full((len(prompts), 5), tok.pad_token_id)
    theirs[:, : generated.shape[1]] = generated
    settings = SamplingConfig(
        max_new_tokens=5, temperature=0.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id
    )
    graphdef, state = nnx.split(model)
    samples = PolicySampler(graphdef, model.config, settings)(
        state, jnp.asarray(prompts), jnp.ones(prompts.shape, bool), jax.random.key(0)
    )
    np.testing.assert_array_equal(theirs, np.asarray(samples.tokens))


def test_run_without_tokenizer_exports_weights_only_and_overwrite_replaces(exported, tmp_path):
    model, _, _, _, _ = exported
    run = _make_run(str(tmp_path / "synthetic"), model.config, nnx.state(model))
    out = tmp_path / "hf"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier export")
    with pytest.raises(UserError, match="exists and is not empty; pass --overwrite"):
        export_run(run, str(out))
    line = export_run(run, str(out), overwrite=True)
    assert "weights only" in line and "no tokenizer" in line
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    loaded = hf.load_pretrained(str(out))
    for ours, theirs in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_bfloat16_export(exported, tmp_path):
    model, _, run, _, _ = exported
    line = export_run(run, str(tmp_path / "bf16"), dtype="bfloat16")
    assert "(bfloat16)" in line
    with open(tmp_path / "bf16" / "config.json") as f:
        assert json.load(f)["dtype"] == "bfloat16"
    loaded = hf.load_pretrained(str(tmp_path / "bf16"), param_dtype="bfloat16")
    for ours, theirs in zip(
        jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(loaded)), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(ours.astype(jnp.bfloat16)), np.asarray(theirs))


def test_user_mistakes_raise_user_errors(exported, tmp_path):
    _, _, run, _, _ = exported
    with pytest.raises(UserError, match="no checkpoint of step 7; it has steps \\[1\\]"):
        export_run(run, str(tmp_path / "a"), step=7)
    with pytest.raises(UserError, match="contains\\) the run"):
        export_run(run, os.path.dirname(run), overwrite=True)
    judge = tmp_path / "pm"
    judge.mkdir()
    (judge / "run.json").write_text(json.dumps({"method": "preference_model", "model": {}}))
    with pytest.raises(UserError, match="not a policy run"):
        export_run(str(judge), str(tmp_path / "b"))
    with pytest.raises(UserError, match="dtype"):
        export_run(run, str(tmp_path / "c"), dtype="float16")
    assert not any(n in os.listdir(tmp_path) for n in ("a", "b", "c"))


@pytest.mark.parametrize("mistake", ["existing_out", "missing_run"])
def test_cli_user_mistake_is_one_error_line(exported, tmp_path, mistake):
    _, _, run, _, _ = exported
    out = tmp_path / "out"
    if mistake == "existing_out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        run = str(tmp_path / "no_such_run")
    result = subprocess.run(
        [sys.executable, "-m", "nlhf_jax.export", "--run", run, "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    if mistake == "existing_out":
        assert "--overwrite" in lines[0] and os.listdir(out) == ["keep.txt"]
    else:
        assert "no_such_run" in lines[0] and not out.exists()
