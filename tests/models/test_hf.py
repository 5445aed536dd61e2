"""Golden parity with transformers' PyTorch Llama/Mistral/Qwen2/Qwen3/Gemma2/Gemma3, export/import,
tokenizers, bad input."""

from __future__ import annotations

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from nlhf_jax.models import Transformer, TransformerConfig, forward_full, hf, tokenizer

# Float32 on both sides; torch (MKL/oneDNN) and XLA (Eigen) sum in different orders, so logits of
# magnitude ~4 differ by a few ulps per reduction: ~3e-6 measured. 1e-5 absolute + 1e-5 relative
# (~80 ulps at that scale) is a float32 round-off bound, not a loosened one: any mapping error
# (a transposed matrix, a wrong head order, RoPE layout, a bias) moves logits by O(0.1-1).
ATOL = RTOL = 1e-5
SEQ = 12


def _torch_model(kind: str):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    common = dict(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # Grouped-query attention, as in the real checkpoints.
        initializer_range=0.2,  # Larger than default so logits are O(1), not ~0.
        max_position_embeddings=64,
    )
    if kind == "llama":  # Untied, with Llama-3 RoPE scaling: the original context of 16 puts
        # head_dim 8's wavelengths (6.3, 63, 628, 6283) in both the interpolated and scaled bands.
        rope = dict(rope_type="llama3", rope_theta=10_000.0, factor=8.0, low_freq_factor=1.0)
        rope.update(high_freq_factor=4.0, original_max_position_embeddings=16)
        config = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters=rope)
        model_cls = transformers.LlamaForCausalLM
    elif kind == "mistral":  # Untied, a sliding window shorter than the SEQ = 12 tokens.
        config = transformers.MistralConfig(**common, sliding_window=5, tie_word_embeddings=False)
        model_cls = transformers.MistralForCausalLM
    elif kind == "gemma2":  # Tied; local/global layers with a window shorter than the rows,
        # both soft-caps near the values' scale (so they bend them), a query scale that is not
        # head_dim's, head_dim 16 != hidden / heads.
        gemma = dict(head_dim=16, sliding_window=5, query_pre_attn_scalar=24)
        config = transformers.Gemma2Config(
            **common, **gemma, attn_logit_softcapping=3.0, final_logit_softcapping=2.0
        )
        model_cls = transformers.Gemma2ForCausalLM
    elif kind == "gemma3":  # Untied; one global layer after a local one, RoPE bases per layer
        # type with linear scaling on the global layer (as Gemma 3 4B's), q/k norms.
        rope = {
            "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
        }
        config = transformers.Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=5,
            query_pre_attn_scalar=24,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters=rope,
            tie_word_embeddings=False,
        )
        model_cls = transformers.Gemma3ForCausalLM
    elif kind == "qwen3":  # Untied, q/k norms, head_dim 16 != hidden / heads = 8 (as Qwen3's).
        config = transformers.Qwen3Config(**common, head_dim=16, tie_word_embeddings=False)
        model_cls = transformers.Qwen3ForCausalLM
    else:  # Tied, with q/k/v biases.
        config = transformers.Qwen2Config(**common, tie_word_embeddings=True)
        model_cls = transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # Norm weights init to 1 and biases to 0: randomize so they count.
        for name, p in model.named_parameters():
            if "norm" in name or "bias" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _torch_logits(model, tokens_bt: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(tokens_bt)).logits.numpy()


def _our_logits(model: Transformer, tokens_bt: np.ndarray) -> np.ndarray:
    graphdef, state = nnx.split(model)
    tokens_bt = jnp.asarray(tokens_bt)
    return np.asarray(forward_full(graphdef, state, tokens_bt, jnp.ones(tokens_bt.shape, bool)))


def _params(model: Transformer) -> dict[str, np.ndarray]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): np.asarray(v.get_value()) for path, v in flat}


@pytest.fixture(scope="module", params=["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"])
def checkpoint(request, tmp_path_factory):
    """(torch model, its save_pretrained directory, token batch)."""
    model = _torch_model(request.param)
    path = str(tmp_path_factory.mktemp(request.param))
    model.save_pretrained(path)
    tokens_bt = np.random.default_rng(0).integers(0, 97, (2, SEQ))
    return model, path, tokens_bt


def test_logits_match_pytorch_transformers(checkpoint):
    torch_model, path, tokens_bt = checkpoint
    model = hf.load_pretrained(path)
    assert model.config.tie_embeddings == (torch_model.config.model_type in ("qwen2", "gemma2"))
    expected = _torch_logits(torch_model, tokens_bt)
    assert np.abs(expected).max() > 1.0  # The comparison is not between near-zero numbers.
    np.testing.assert_allclose(_our_logits(model, tokens_bt), expected, atol=ATOL, rtol=RTOL)


def test_export_round_trips_and_loads_in_pytorch(checkpoint, tmp_path):
    transformers = pytest.importorskip("transformers")
    source, path, tokens_bt = checkpoint
    model = hf.load_pretrained(path)
    hf.save_pretrained(model, str(tmp_path))

    reloaded = hf.load_pretrained(str(tmp_path))
    original, again = _params(model), _params(reloaded)
    assert original.keys() == again.keys()
    for name in original:  # Bit-identical: export and import only transpose and reshape.
        np.testing.assert_array_equal(again[name], original[name], err_msg=name)

    torch_model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert type(torch_model) is type(source)  # exported as its own family, not a look-alike
    np.testing.assert_allclose(
        _torch_logits(torch_model, tokens_bt), _our_logits(model, tokens_bt), atol=ATOL, rtol=RTOL
    )


def test_a_gemma3_image_and_text_checkpoint_loads_its_language_model(tmp_path, caplog):
    """A Gemma3ForConditionalGeneration (Gemma 3 4B and larger) loads as its language model, with
    one line saying the vision tower is not used; on text its logits are the whole model's."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    text = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2)
    text.update(num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=5)
    text.update(layer_types=["sliding_attention", "full_attention"], initializer_range=0.2)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    vision.update(num_attention_heads=2, image_size=28, patch_size=14)
    config = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=96
    )
    torch.manual_seed(0)
    whole = transformers.Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in whole.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    whole.save_pretrained(str(tmp_path))
    with caplog.at_level("WARNING", logger="nlhf_jax.models.hf"):
        model = hf.load_pretrained(str(tmp_path))
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: an image-and-text checkpoint: its language model is loaded, its vision "
        f"tower ({sum('vision_tower' in n or 'projector' in n for n in whole.state_dict())} "
        "tensors) is not used"
    ]
    assert model.config.model_family == "gemma3"
    tokens_bt = np.random.default_rng(0).integers(0, 90, (2, SEQ))  # no image token
    np.testing.assert_allclose(
        _our_logits(model, tokens_bt), _torch_logits(whole, tokens_bt), atol=ATOL, rtol=RTOL
    )


def test_sharded_index_checkpoint_loads(checkpoint, tmp_path):
    torch_model, path, _ = checkpoint
    torch_model.save_pretrained(str(tmp_path), max_shard_size="20KB")
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    sharded, single = _params(hf.load_pretrained(str(tmp_path))), _params(hf.load_pretrained(path))
    for name in single:
        np.testing.assert_array_equal(sharded[name], single[name], err_msg=name)


# Bad input. These need no torch: the checkpoints are written by our own exporter.
TINY = TransformerConfig(
    vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48
)


@pytest.fixture
def exported(tmp_path):
    path = tmp_path / "ckpt"
    hf.save_pretrained(Transformer(TINY, rngs=nnx.Rngs(0)), str(path))
    return path


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))


def test_export_import_without_torch_is_identical(exported):
    model = Transformer(TINY, rngs=nnx.Rngs(0))
    loaded = hf.load_pretrained(str(exported))
    assert loaded.config == TINY.replace(family=TINY.model_family)  # the loader names it
    for name, value in _params(model).items():
        np.testing.assert_array_equal(_params(loaded)[name], value, err_msg=name)


def test_shape_mismatch_names_parameter_and_both_shapes(exported):
    _edit_config(exported, intermediate_size=40)
    with pytest.raises(ValueError) as info:
        hf.load_pretrained(str(exported))
    message = str(info.value)
    assert "model.layers.0.mlp.gate_proj.weight" in message
    assert "(48, 32)" in message and "(40, 32)" in message


def test_unsupported_architecture_is_named(exported):
    _edit_config(exported, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match=r"unsupported architecture model_type='gpt2'.*GPT2LMHead"):
        hf.load_pretrained(str(exported))


def test_unsupported_feature_is_named(exported):
    _edit_config(exported, hidden_act="gelu")
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        hf.load_pretrained(str(exported))


def test_missing_files_are_named(exported, tmp_path):
    weights = exported / "model.safetensors"
    os.remove(weights)
    with pytest.raises(FileNotFoundError, match=str(weights)):
        hf.load_pretrained(str(exported))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty / "config.json")):
        hf.load_pretrained(str(empty))


def test_missing_shard_and_missing_tensor_are_named(exported):
    tensors = safetensors.numpy.load_file(str(exported / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    safetensors.numpy.save_file(tensors, str(exported / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks tensor model\.layers\.1\.mlp\.up_proj\.weight"):
        hf.load_pretrained(str(exported))

    shutil.move(exported / "model.safetensors", exported / "part-1.safetensors")
    index = {"weight_map": {name: "part-1.safetensors" for name in tensors}}
    index["weight_map"]["model.norm.weight"] = "part-2.safetensors"
    (exported / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match=str(exported / "part-2.safetensors")):
        hf.load_pretrained(str(exported))


def test_unexpected_tensors_are_not_silently_dropped(exported):
    tensors = safetensors.numpy.load_file(str(exported / "model.safetensors"))
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(32, np.float32)
    safetensors.numpy.save_file(tensors, str(exported / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 tensors not used.*o_proj\.bias"):
        hf.load_pretrained(str(exported))


def test_builtin_tokenizer_round_trips_offline(tmp_path):
    built = tokenizer.build_bpe_tokenizer(str(tmp_path), vocab_size=512)
    loaded = tokenizer.load_tokenizer(str(tmp_path), vocab_size=512)
    assert 256 < len(loaded) <= 512  # All 256 bytes, the specials and some merges.
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    text = "Nash équilibre: rock > scissors 🙂"  # Unseen characters still encode (byte-level).
    ids = loaded(text)["input_ids"]
    assert ids == built(text)["input_ids"] and max(ids) < len(loaded)
    assert loaded.decode(ids) == text
    assert len(ids) < len(text.encode())  # Merges were learned.


def test_tokenizer_larger_than_model_vocab_names_both_sizes(tmp_path):
    built = tokenizer.build_bpe_tokenizer(str(tmp_path), ["ab ab abc abc abcd"] * 3, vocab_size=300)
    with pytest.raises(ValueError, match=rf"has {len(built)} tokens.*vocab_size=260"):
        tokenizer.load_tokenizer(str(tmp_path), vocab_size=260)
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        tokenizer.load_tokenizer(str(tmp_path / "nope"))


def test_the_family_is_the_loaders_not_a_guess_from_features():
    """The loader records the checkpoint's family; export writes that family's config (not one
    inferred from q/k norms or biases, which another family may share); a family whose
    features the config lacks is refused; a run.json written before the field compares as the
    family its features imply."""
    from nlhf_jax.checkpoint import _comparable

    qwen3 = TINY.replace(qk_norm=True, family="qwen3")
    assert hf.hf_config_from(qwen3).model_type == "qwen3"
    assert hf.config_from_hf(hf.hf_config_from(qwen3)).family == "qwen3"
    assert hf.hf_config_from(TINY.replace(qkv_bias=True)).model_type == "qwen2"  # unnamed: implied
    with pytest.raises(ValueError, match="family='llama' has qkv_bias=False, qk_norm=False and"):
        TINY.replace(qk_norm=True, family="llama")
    # Gemma 3 norms q and k as Qwen3 does: its blocks say which it is, unnamed or exported.
    gemma = dict(activation="gelu_tanh", norm_offset=1.0, embed_scale=True, post_norms=True)
    assert TINY.replace(qk_norm=True, **gemma).model_family == "gemma3"
    assert hf.hf_config_from(TINY.replace(qk_norm=True, **gemma)).model_type == "gemma3_text"
    assert hf.hf_config_from(TINY.replace(**gemma)).model_type == "gemma2"
    with pytest.raises(ValueError, match=r"family='qwen3' has .* Gemma's blocks False"):
        TINY.replace(qk_norm=True, family="qwen3", **gemma)
    with pytest.raises(ValueError, match="family='gpt2': choose one of"):
        TINY.replace(family="gpt2")
    import dataclasses

    old = dataclasses.asdict(TINY.replace(qk_norm=True))
    for field in ("family", "activation", "layer_types", "rope_linear_factor"):  # added later
        del old[field]
    new = dataclasses.asdict(qwen3)
    assert _comparable({"model": old}) == _comparable({"model": new})
    assert _comparable({"model": old}) != _comparable({"model": dataclasses.asdict(TINY)})
