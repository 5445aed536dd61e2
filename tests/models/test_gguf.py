"""GGUF checkpoints: written here with ``gguf``'s writer the way llama.cpp's converter writes
them (names, the Llama family's q/k row permutation, quantized tensors, the tokenizer and chat
template in the metadata), then read by our loader and checked against transformers reading the
same file (``from_pretrained(dir, gguf_file=...)``) and against the model that was written."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nlhf_jax import checkpoint
from nlhf_jax.errors import UserError
from nlhf_jax.models import forward_full, hf
from nlhf_jax.models.tokenizer import build_bpe_tokenizer, load_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

# Float32 tensors on both sides: the round-off bound of tests/models/test_hf.py (torch and XLA
# sum in different orders); a mapping error moves logits by O(0.1-1).
ATOL = RTOL = 1e-5
TEXTS = [
    "The cat sat on the mat in 2024, and 31415 times more.",
    "Hello world! Don't stop: it's 9 o'clock.\n\nNew  lines   and spaces.",
]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# HF name -> GGUF name, as llama.cpp's convert_hf_to_gguf.py writes them.
_BLOCK = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


# Gemma's four norms a block (its ffn_norm is the MLP's input norm).
_GEMMA_BLOCK = _BLOCK | {
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "pre_feedforward_layernorm.weight": "ffn_norm.weight",
    "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}


def _gguf_name(name: str, block: dict = _BLOCK) -> str:
    top = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    if name in top:
        return top[name]
    if name == "lm_head.weight":
        return "output.weight"
    _, _, i, rest = name.split(".", 3)
    return f"blk.{i}.{block[rest]}"


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: each head's rows [half, pair] stored as [pair, half]."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _tokenizer(out_dir: str):
    tok = build_bpe_tokenizer(
        out_dir, texts=TEXTS * 20 + ["2024 2025 20 24 31415"] * 20, vocab_size=300
    )
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    return tok, tokens, merges


def write_gguf(path: str, model, arch: str, *, pre: str, quantized: tuple[str, ...] = ()) -> None:
    """``model`` (a transformers causal LM) as llama.cpp writes it; the tensors whose GGUF name
    ends with one of ``quantized`` as Q8_0."""
    c = model.config
    _, tokens, merges = _tokenizer(os.path.join(os.path.dirname(path), "bpe"))
    tokens = [*tokens, "<|im_start|>", "<|im_end|>"]
    tokens += [f"<unused{i}>" for i in range(c.vocab_size - len(tokens))]
    types = [
        gguf.TokenType.CONTROL if t.startswith("<") and t.endswith(">") else gguf.TokenType.NORMAL
        for t in tokens
    ]
    w = gguf.GGUFWriter(path, arch)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    rope = c.rope_parameters.get("full_attention", c.rope_parameters)  # Gemma 3's: per type
    w.add_rope_freq_base(rope["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<bos>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<pad>"))
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    gemma = arch.startswith("gemma")
    if gemma:  # what llama.cpp writes of Gemma 3; its pattern and local RoPE base are implied
        w.add_sliding_window(c.sliding_window)
    heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        data = p.detach().numpy().astype(np.float32)
        proj = name.split(".")[-2]
        if arch == "llama" and name.endswith("weight") and proj in heads:
            data = _permute(data, heads[proj])
        if gemma and name.endswith("norm.weight"):
            data = data + 1.0  # llama.cpp stores Gemma's 1 + w
        gname = _gguf_name(name, _GEMMA_BLOCK if gemma else _BLOCK)
        if gname.endswith(quantized) and data.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(gname, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            w.add_tensor(gname, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _torch_model(arch: str):
    common = dict(
        vocab_size=320,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.2,
        max_position_embeddings=64,
    )
    if arch == "llama":  # tied, as SmolLM2
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**common, tie_word_embeddings=True)
        )
    elif arch == "gemma3":  # as Gemma 3 270M: head_dim 256 (its query scale), one global
        # layer after five local ones with a window shorter than the rows, RoPE bases 1e6 / 1e4
        rope = {
            "full_attention": {"rope_type": "default", "rope_theta": 1e6},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
        config = transformers.Gemma3TextConfig(
            **common | {"num_hidden_layers": 6},
            head_dim=256,
            query_pre_attn_scalar=256,
            sliding_window=5,
            rope_parameters=rope,
        )
        model = transformers.Gemma3ForCausalLM(config)
    else:  # untied, with q/k/v biases
        model = transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(**common, tie_word_embeddings=False)
        )
    torch.manual_seed(0)
    model = type(model)(model.config).eval()
    with torch.no_grad():  # norms init to 1 and biases to 0: randomize so they count
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(
    scope="module", params=[("llama", "gpt-2"), ("qwen2", "qwen2"), ("gemma3", "default")]
)
def written(request, tmp_path_factory):
    """(arch, torch model, float32 GGUF path, GGUF path with Q8_0 projections)."""
    arch, pre = request.param
    root = tmp_path_factory.mktemp(f"gguf_{arch}")
    model = _torch_model(arch)
    plain, quant = str(root / "model-f32.gguf"), str(root / "model-q8_0.gguf")
    write_gguf(plain, model, arch, pre=pre)
    write_gguf(
        quant,
        model,
        arch,
        pre=pre,
        quantized=("attn_q.weight", "attn_k.weight", "ffn_down.weight", "token_embd.weight"),
    )
    return arch, model, plain, quant


def _ours(path: str, tokens: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(hf.load_pretrained(path))
    tokens = jnp.asarray(tokens)
    return np.asarray(forward_full(graphdef, state, tokens, jnp.ones(tokens.shape, bool)))


def _transformers(path: str):
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


def _logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


TOKENS = np.random.default_rng(0).integers(0, 320, size=(2, 12))


def _prompts_file(tmp_path, texts):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


@pytest.fixture
def length_judge(tmp_path, monkeypatch) -> str:
    """A host judge, ``module:function``, that prefers the longer response (written here)."""
    (tmp_path / "judge_mod.py").write_text(
        "import numpy as np\n"
        "def longer(prompts, a, b):\n"
        "    return np.array([0.5 + 0.4 * np.sign(len(x) - len(y)) for x, y in zip(a, b)])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "judge_mod:longer"


def test_float32_gguf_is_the_model_written(written):
    """The round trip: the model llama.cpp's layout encodes (permuted q/k, GGUF names, a tied
    head left out) is the one written, as our loader and transformers read it."""
    _, model, plain, _ = written
    want = _logits(model, TOKENS)
    np.testing.assert_allclose(_ours(plain, TOKENS), want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(_logits(_transformers(plain), TOKENS), want, atol=ATOL, rtol=RTOL)


def test_quantized_gguf_matches_transformers_dequantized(written):
    """Q8_0 tensors dequantize to what transformers' GGUF loading gives, and differ from the
    float32 model (so the quantized path was taken)."""
    _, model, _, quant = written
    ours = _ours(quant, TOKENS)
    np.testing.assert_allclose(ours, _logits(_transformers(quant), TOKENS), atol=ATOL, rtol=RTOL)
    assert np.abs(ours - _logits(model, TOKENS)).max() > 1e-4


def test_tokenizer_and_chat_template_from_metadata(written):
    """Ids equal to transformers' GGUF tokenizer on plain text, special tokens kept whole, and
    the file's chat template rendered."""
    _, _, plain, _ = written
    ours = load_tokenizer(plain)
    theirs = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(plain), gguf_file=os.path.basename(plain)
    )
    for text in TEXTS:
        assert ours(text).input_ids == theirs(text).input_ids
        assert ours.decode(ours(text).input_ids) == text
    chat = ours.apply_chat_template(
        [{"role": "user", "content": TEXTS[0]}], tokenize=False, add_generation_prompt=True
    )
    assert chat == f"<|im_start|>user\n{TEXTS[0]}<|im_end|>\n<|im_start|>assistant\n"
    ids = ours(chat).input_ids
    assert ids[0] == ours.convert_tokens_to_ids("<|im_start|>") and ours.eos_token == "<|im_end|>"
    assert ours.pad_token == "<pad>" and ids.count(ours.convert_tokens_to_ids("<|im_end|>")) == 1


def test_smollm_pre_tokenizer_splits_digits(tmp_path):
    """SmolLM's pre-tokenizer (llama.cpp's "smollm": every digit alone, then GPT-2's split)
    never merges digits, although the vocabulary has merges for them; "gpt-2" does merge."""
    model = _torch_model("llama")
    digits = {}
    for pre in ("smollm", "gpt-2"):
        path = str(tmp_path / f"{pre}.gguf")
        write_gguf(path, model, "llama", pre=pre)
        tok = load_tokenizer(path)
        digits[pre] = tok.convert_ids_to_tokens(tok("2024 31415").input_ids)
    assert digits["smollm"] == ["2", "0", "2", "4", "Ġ", "3", "1", "4", "1", "5"]
    assert any(len(t.lstrip("Ġ")) > 1 for t in digits["gpt-2"])


def test_a_gguf_is_a_policy_sampled_as_transformers_generates(written, tmp_path):
    """``python -m nlhf_jax.sample --run FILE.gguf``: the file is a policy (no run needed), and
    greedy decoding with the KV cache gives transformers' ``generate`` tokens."""
    from nlhf_jax.sample import sample_run

    arch, _, _, quant = written
    prompts = _prompts_file(tmp_path, TEXTS)
    rows = sample_run(
        quant,
        str(tmp_path / "out.jsonl"),
        prompts_file=str(prompts),
        temperature=0.0,
        max_new_tokens=8,
    )
    tok = load_tokenizer(quant)
    model = _transformers(quant)
    identity = checkpoint.policy_identity("start", quant)
    assert identity["method"] == "checkpoint" and identity["chat_template"] is True
    for row, text in zip(rows, TEXTS, strict=True):
        chat = tok.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        x = torch.tensor([tok(chat).input_ids])
        with torch.no_grad():
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=8,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        new = out[0, x.shape[1] :].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        assert row["response"] == tok.decode(new, skip_special_tokens=True), arch


def test_bad_gguf_is_one_line(tmp_path):
    missing = str(tmp_path / "none.gguf")
    with pytest.raises(UserError, match=r"GGUF checkpoint not found: .*none\.gguf"):
        hf.load_pretrained(missing)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match=r"junk\.gguf: not a readable GGUF file"):
        hf.read_config(str(junk))
    other = str(tmp_path / "other.gguf")
    w = gguf.GGUFWriter(other, "mamba")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UserError, match=r"other\.gguf: unsupported GGUF architecture .*'mamba'"):
        hf.load_pretrained(other)


def test_online_method_starts_from_a_gguf(written, tmp_path, length_judge):
    """Nash-MD with ``init_from`` a GGUF file: no SFT run; its start and reference are the file's
    weights, its tokenizer the file's, and the pretrained start's defaults apply."""
    from nlhf_jax.train import defaults, methods

    arch, _, plain, _ = written
    if arch != "llama":
        pytest.skip("one family is enough for the trainer")
    prompts = _prompts_file(tmp_path, TEXTS * 4)
    config = defaults.base_config("nash_md")
    config.init_from, config.judge = plain, length_judge
    config.data.source, config.data.prompts_file = "file", str(prompts)
    config.data.max_prompt_len, config.data.max_response_len = 32, 6
    config.batch_size, config.mesh.num_devices = 4, 1
    resolved = defaults.resolve(config)
    assert config.optimizer.learning_rate == defaults.PRETRAINED_ONLINE_LEARNING_RATE
    assert config.model.remat == defaults.PRETRAINED_REMAT and set(resolved) == {
        "optimizer.learning_rate",
        "model.remat",
    }
    trainer = methods.build(config, str(tmp_path / "run"))
    state = trainer.init_state()
    start = nnx.to_pure_dict(nnx.state(hf.load_pretrained(plain), nnx.Param))
    ours = jax.tree.leaves(jax.device_get(nnx.to_pure_dict(state.params)))
    want = jax.tree.leaves(start)
    assert len(ours) == len(want)
    for a, b in zip(ours, want, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert trainer.tokenizer.eos_token == "<|im_end|>"
    state, metrics = trainer.step(state, next(trainer.data))
    assert np.isfinite(float(metrics["loss"]))


def test_evaluate_takes_a_gguf_as_the_reference(written, tmp_path, length_judge):
    """``python -m nlhf_jax.evaluate --reference FILE.gguf``: the file is the reference policy
    (its tokenizer, its chat template), named by its kind, at KL 0 from itself."""
    from nlhf_jax.evaluate.on_prompts import evaluate_on_prompts

    arch, _, plain, _ = written
    if arch != "llama":
        pytest.skip("one family is enough for the evaluation")
    prompts = _prompts_file(tmp_path, TEXTS)
    results = evaluate_on_prompts(
        plain, {}, str(prompts), [length_judge], samples=2, max_new_tokens=4, quiet=True
    )
    assert results["methods"] == ["checkpoint"] and results["judges"] == ["longer"]
    assert abs(results["kl_to_reference"][0]) < 1e-5
    assert results["config"]["reference"] == plain and len(results["examples"]) == len(TEXTS)
