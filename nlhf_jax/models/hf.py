"""Load and save Llama/Mistral/Qwen2/Qwen3/Gemma 2/Gemma 3 checkpoints in the Hugging Face layout
(config.json + safetensors, or a GGUF file read as one: `nlhf_jax.models.gguf_file`): causal LMs
(`load_pretrained`, `save_pretrained`) and one-label sequence classifiers as reward models
(`load_reward_model`). A ``Gemma3ForConditionalGeneration`` checkpoint (Gemma 3 4B and larger)
loads as its language model; its vision tower is not read.

transformers 5 has no Flax models, so weights are read and written with `safetensors` and mapped
to our parameter tree here; `transformers.AutoConfig` reads the config. A directory written by
`save_pretrained` loads with `transformers.AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
import transformers
from flax import nnx

from nlhf_jax import parallel
from nlhf_jax.errors import MissingInput, UserError
from nlhf_jax.models import gguf_file
from nlhf_jax.models.config import RopeScaling, TransformerConfig
from nlhf_jax.models.preference import RewardModel
from nlhf_jax.models.transformer import Transformer

# Hugging Face model_type -> the class of its causal LM.
SUPPORTED = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gemma3": "Gemma3ForConditionalGeneration",  # image and text: its language model is read
}
# model_type -> our family (``TransformerConfig.family``) where they differ.
_FAMILY_OF = {"gemma3_text": "gemma3"}
_GEMMA = ("gemma2", "gemma3_text")
# The tensors of a Gemma3ForConditionalGeneration that are not its language model.
_VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.")
_VISION_PREFIXES += ("model.multi_modal_projector.",)
log = logging.getLogger(__name__)
_WEIGHTS = "model.safetensors"
_INDEX = "model.safetensors.index.json"
# Buffers some exporters write that carry no learned state; anything else unknown is an error.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def _read_config_json(path: str) -> dict:
    if gguf_file.is_gguf(path):
        return gguf_file.config_dict(path)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise MissingInput(f"no config.json in checkpoint directory: {config_file}")
    with open(config_file) as f:
        raw = json.load(f)
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        raise UserError(
            f"{config_file}: unsupported architecture model_type={model_type!r} "
            f"(architectures={raw.get('architectures')}); supported: {sorted(SUPPORTED)}"
        )
    return raw


def config_from_hf(
    hf_config: transformers.PretrainedConfig,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
) -> TransformerConfig:
    """Translates a transformers Llama/Mistral/Qwen2/Qwen3/Gemma2/Gemma3 config (a
    ``Gemma3Config``'s text config); raises on features our model lacks."""
    model_type = hf_config.model_type
    if model_type not in SUPPORTED:
        raise UserError(f"unsupported architecture {model_type!r}; supported: {sorted(SUPPORTED)}")
    if model_type == "gemma3":  # image and text: the language model's config
        tie = hf_config.tie_word_embeddings
        hf_config = hf_config.text_config
        hf_config.tie_word_embeddings = tie
        model_type = hf_config.model_type
    gemma = model_type in _GEMMA
    unsupported = []
    act = getattr(hf_config, "hidden_activation" if gemma else "hidden_act", None)
    if act != ("gelu_pytorch_tanh" if gemma else "silu"):
        field = "hidden_activation" if gemma else "hidden_act"
        unsupported.append(f"{field}={act!r} (only {'gelu_pytorch_tanh' if gemma else 'silu'!r})")
    if getattr(hf_config, "mlp_bias", False):
        unsupported.append("mlp_bias=True")
    if model_type != "qwen2" and getattr(hf_config, "attention_bias", False):
        unsupported.append("attention_bias=True")
    if getattr(hf_config, "use_sliding_window", False):
        unsupported.append("use_sliding_window=True")
    if getattr(hf_config, "use_bidirectional_attention", False):
        unsupported.append("use_bidirectional_attention=True")
    rope = dict(getattr(hf_config, "rope_parameters", None) or {})
    local_theta, linear = 0.0, 1.0
    if model_type == "gemma3_text":  # keyed by layer type
        local = rope.get("sliding_attention", {})
        if local.get("rope_type", "default") != "default":
            unsupported.append(f"sliding_attention rope_type={local['rope_type']!r}")
        local_theta = float(local.get("rope_theta", 10_000.0))
        rope = dict(rope.get("full_attention", {}))
        if rope.get("rope_type") == "linear":
            linear = float(rope.pop("factor"))
            rope["rope_type"] = "default"
    rope_type = rope.get("rope_type", "default")
    rope_scaling = None
    if rope_type == "llama3":
        rope_scaling = RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        unsupported.append(f"rope_type={rope_type!r} (only 'default' and 'llama3')")
    if unsupported:
        raise UserError(f"unsupported {model_type} config: {', '.join(unsupported)}")
    num_heads = hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // num_heads
    window = int(getattr(hf_config, "sliding_window", 0) or 0)
    extra = {}
    if gemma:
        extra = dict(
            activation="gelu_tanh",
            norm_offset=1.0,
            embed_scale=True,
            post_norms=True,
            query_pre_attn_scalar=int(hf_config.query_pre_attn_scalar),
            attn_softcap=float(hf_config.attn_logit_softcapping or 0.0),
            final_softcap=float(hf_config.final_logit_softcapping or 0.0),
            layer_types=tuple(hf_config.layer_types),
            rope_local_theta=local_theta,
            rope_linear_factor=linear,
        )
    return TransformerConfig(
        vocab_size=hf_config.vocab_size,
        d_model=hf_config.hidden_size,
        num_layers=hf_config.num_hidden_layers,
        num_heads=num_heads,
        num_kv_heads=getattr(hf_config, "num_key_value_heads", None) or num_heads,
        head_dim=head_dim,
        mlp_dim=hf_config.intermediate_size,
        rope_theta=float(rope.get("rope_theta", getattr(hf_config, "rope_theta", 10_000.0))),
        rope_scaling=rope_scaling,
        rms_norm_eps=hf_config.rms_norm_eps,
        tie_embeddings=bool(hf_config.tie_word_embeddings),
        qkv_bias=model_type == "qwen2",  # Qwen2 always has q/k/v biases, the others here never.
        qk_norm=model_type in ("qwen3", "gemma3_text"),
        sliding_window=window if model_type in ("mistral", *_GEMMA) else 0,
        family=_FAMILY_OF.get(model_type, model_type),
        param_dtype=param_dtype,
        dtype=dtype,
        max_position_embeddings=hf_config.max_position_embeddings,
        **extra,
    )


def hf_config_from(config: TransformerConfig, **overrides) -> transformers.PretrainedConfig:
    """The transformers config of `config`'s family (``TransformerConfig.model_family``: the
    loader's, or the one its features imply).

    `overrides` (e.g. `bos_token_id=1`) are passed to the transformers config constructor.
    """
    c = config
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling is not None:
        s = c.rope_scaling
        rope.update(
            rope_type="llama3",
            factor=s.factor,
            low_freq_factor=s.low_freq_factor,
            high_freq_factor=s.high_freq_factor,
            original_max_position_embeddings=s.original_max_position_embeddings,
        )
    model_type = c.model_family
    kwargs = dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.mlp_dim,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.num_kv_heads,
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=c.tie_embeddings,
        max_position_embeddings=c.max_position_embeddings,
        dtype=c.param_dtype,
    )
    if model_type in ("gemma2", "gemma3"):
        return _gemma_config(c, rope, kwargs | overrides)
    kwargs.update(rope_parameters=rope, architectures=[SUPPORTED[model_type]])
    if model_type == "qwen2":
        if c.head_dim * c.num_heads != c.d_model:
            raise UserError(
                f"Qwen2 configs cannot express head_dim={c.head_dim} != d_model / num_heads = "
                f"{c.d_model} / {c.num_heads}"
            )
        kwargs.update(use_sliding_window=False)
        return transformers.Qwen2Config(**(kwargs | overrides))
    if model_type == "qwen3":
        if c.qkv_bias:
            raise UserError("Qwen3 configs cannot express q/k/v biases without an o_proj bias")
        kwargs.update(head_dim=c.head_dim, attention_bias=False, use_sliding_window=False)
        return transformers.Qwen3Config(**(kwargs | overrides))
    if model_type == "mistral":
        kwargs.update(head_dim=c.head_dim, sliding_window=c.sliding_window or None)
        return transformers.MistralConfig(**(kwargs | overrides))
    kwargs.update(head_dim=c.head_dim, attention_bias=False, mlp_bias=False)
    return transformers.LlamaConfig(**(kwargs | overrides))


def _gemma_config(c: TransformerConfig, rope: dict, kwargs: dict):
    """``hf_config_from`` of the Gemma families; ``kwargs``: the fields all families share."""
    if c.rope_scaling is not None:
        raise UserError("Gemma configs cannot express Llama-3 RoPE scaling")
    if c.model_family == "gemma3" and c.rope_linear_factor != 1.0:
        rope = rope | {"rope_type": "linear", "factor": c.rope_linear_factor}
    elif c.rope_linear_factor != 1.0:
        raise UserError("Gemma 2 configs cannot express linear RoPE scaling")
    kwargs = (
        dict(
            head_dim=c.head_dim,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=c.query_pre_attn_scalar or c.head_dim,
            attn_logit_softcapping=c.attn_softcap or None,
            final_logit_softcapping=c.final_softcap or None,
            sliding_window=c.sliding_window or None,
            layer_types=list(c.layer_types) or None,
            attention_bias=False,
        )
        | kwargs
    )
    if c.model_family == "gemma2":
        kwargs.update(rope_parameters=rope, architectures=[SUPPORTED["gemma2"]])
        return transformers.Gemma2Config(**kwargs)
    local = {"rope_type": "default", "rope_theta": c.rope_local_theta or c.rope_theta}
    kwargs.update(
        rope_parameters={"full_attention": rope, "sliding_attention": local},
        architectures=[SUPPORTED["gemma3_text"]],
    )
    return transformers.Gemma3TextConfig(**kwargs)


def _hf_layout(
    c: TransformerConfig, prefix: str = "model."
) -> Iterator[tuple[tuple[str, ...], str, tuple[int, ...], str]]:
    """Yields (our param path, HF tensor name with `{i}` for the layer, HF shape, kind).

    kind "linear": HF stores [out, in] and ours is in-major: ours = W.T reshaped.
    kind "direct": same element order, ours = W reshaped.
    ``prefix``: of the backbone's tensors (a Gemma3ForConditionalGeneration's language model:
    ``language_model.model.``).
    """
    d, q_out, kv_out = c.d_model, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    yield ("embed",), f"{prefix}embed_tokens.weight", (c.vocab_size, d), "direct"
    attn = prefix + "layers.{i}.self_attn"
    for name, shape in (("q", (q_out, d)), ("k", (kv_out, d)), ("v", (kv_out, d))):
        yield ("layers", "attn", f"{name}_proj"), f"{attn}.{name}_proj.weight", shape, "linear"
        if c.qkv_bias:
            bias = f"{attn}.{name}_proj.bias"
            yield ("layers", "attn", f"{name}_bias"), bias, shape[:1], "direct"
    if c.qk_norm:
        for name in ("q", "k"):
            norm = ("layers", "attn", f"{name}_norm", "scale")
            yield norm, f"{attn}.{name}_norm.weight", (c.head_dim,), "direct"
    yield ("layers", "attn", "o_proj"), f"{attn}.o_proj.weight", (d, q_out), "linear"
    mlp = prefix + "layers.{i}.mlp"
    yield ("layers", "mlp", "gate_proj"), f"{mlp}.gate_proj.weight", (c.mlp_dim, d), "linear"
    yield ("layers", "mlp", "up_proj"), f"{mlp}.up_proj.weight", (c.mlp_dim, d), "linear"
    yield ("layers", "mlp", "down_proj"), f"{mlp}.down_proj.weight", (d, c.mlp_dim), "linear"
    layer = prefix + "layers.{i}."
    # HF's post_attention_layernorm is the MLP's input norm in Llama, the attention output's in
    # Gemma (whose MLP input norm is pre_feedforward_layernorm).
    norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    if c.post_norms:
        norms.update(
            post_attn_norm="post_attention_layernorm",
            mlp_norm="pre_feedforward_layernorm",
            post_mlp_norm="post_feedforward_layernorm",
        )
    for ours, theirs in norms.items():
        yield ("layers", ours, "scale"), f"{layer}{theirs}.weight", (d,), "direct"
    yield ("final_norm", "scale"), f"{prefix}norm.weight", (d,), "direct"
    if not c.tie_embeddings:
        yield ("lm_head",), _lm_head(prefix), (c.vocab_size, d), "linear"


def _lm_head(prefix: str) -> str:
    return (
        "language_model.lm_head.weight" if prefix == "language_model.model." else "lm_head.weight"
    )


def _prefix(reader) -> str:
    """The backbone's tensor prefix: ``model.``, or a Gemma3ForConditionalGeneration's."""
    for prefix in ("language_model.model.", "model.language_model."):
        if f"{prefix}embed_tokens.weight" in reader.file_of:
            return prefix
    return "model."


class _TensorReader:
    """Reads named tensors from `model.safetensors` or the shards of its index."""

    def __init__(self, path: str):
        single, index = os.path.join(path, _WEIGHTS), os.path.join(path, _INDEX)
        if os.path.isfile(single):
            with safetensors.safe_open(single, "np") as f:
                self.file_of = dict.fromkeys(f.keys(), single)
        elif os.path.isfile(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.file_of = {k: os.path.join(path, v) for k, v in weight_map.items()}
            for shard in sorted(set(self.file_of.values())):
                if not os.path.isfile(shard):
                    raise MissingInput(f"{index} lists shard {shard}, which does not exist")
        else:
            raise MissingInput(f"no weights in {path}: neither {single} nor {index} exists")
        self._open: dict[str, object] = {}

    def get(self, name: str) -> np.ndarray:
        file = self.file_of[name]
        if file not in self._open:
            self._open[file] = safetensors.safe_open(file, "np")
        return self._open[file].get_tensor(name)

    def shape(self, name: str) -> tuple[int, ...]:
        file = self.file_of[name]
        if file not in self._open:
            self._open[file] = safetensors.safe_open(file, "np")
        return tuple(self._open[file].get_slice(name).get_shape())


def _hf_config(path: str, dtype: str, param_dtype: str):
    if gguf_file.is_gguf(path):
        hf_config = gguf_file.hf_config(path)
        return hf_config, config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype)
    _read_config_json(path)
    # Weights only from safetensors (a pickle-based .bin/.pt beside them is never read) and no
    # code from the directory (trust_remote_code off).
    hf_config = transformers.AutoConfig.from_pretrained(
        path, local_files_only=True, trust_remote_code=False
    )
    return hf_config, config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype)


def _fill(path: str, config: TransformerConfig, reader: _TensorReader, pure: dict) -> set[str]:
    """Reads every tensor `_hf_layout(config)` names into `pure` (a `Transformer`'s pure dict,
    in place); returns the names read."""
    used = set()
    for our_path, hf_name, hf_shape, kind in _hf_layout(config, _prefix(reader)):
        layers = range(config.num_layers) if our_path[0] == "layers" else [None]
        parts = []
        for i in layers:
            name = hf_name.format(i=i)
            if name not in reader.file_of:
                raise UserError(f"{path}: checkpoint lacks tensor {name}")
            found = reader.shape(name)
            if found != hf_shape:
                raise UserError(
                    f"{path}: parameter {name} has shape {found}, but config.json implies "
                    f"{hf_shape}; the weights are from another model shape"
                )
            w = reader.get(name)
            parts.append(w.T if kind == "linear" else w)
            used.add(name)
        array = np.stack(parts) if layers[0] is not None else parts[0]
        leaf = pure
        for key in our_path[:-1]:
            leaf = leaf[key]
        target = leaf[our_path[-1]]
        leaf[our_path[-1]] = jnp.asarray(array.reshape(target.shape), dtype=target.dtype)
    return used


def _refuse_unused(path: str, reader: _TensorReader, used: set[str], what: str) -> None:
    vision = [n for n in reader.file_of if n.startswith(_VISION_PREFIXES)]
    if vision and _prefix(reader) != "model.":
        log.warning(
            "%s: an image-and-text checkpoint: its language model is loaded, its vision tower "
            "(%d tensors) is not used",
            path,
            len(vision),
        )
        used = used | set(vision)
    unexpected = sorted(
        n for n in reader.file_of if n not in used and not n.endswith(_IGNORED_SUFFIXES)
    )
    if unexpected:
        raise UserError(
            f"{path}: {len(unexpected)} tensors not used by a {what} of this config, "
            f"e.g. {unexpected[:5]}"
        )


def load_pretrained(
    path: str, *, dtype: str = "float32", param_dtype: str = "float32"
) -> Transformer:
    """Loads a Llama/Mistral/Qwen2/Qwen3/Gemma2/Gemma3 checkpoint into a `Transformer`.

    Args:
      path: directory with config.json and model.safetensors (or model.safetensors.index.json
        and its shards), or a GGUF file (`nlhf_jax.models.gguf_file`: dequantized).
      dtype: compute dtype of the returned model.
      param_dtype: dtype the weights are cast to.

    Raises:
      FileNotFoundError: naming the missing file.
      ValueError: on an unsupported architecture, a missing or unexpected tensor, or a tensor
        whose shape differs from what config.json implies (named, with both shapes).
    """
    hf_config, config = _hf_config(path, dtype, param_dtype)
    reader = gguf_file.Tensors(path) if gguf_file.is_gguf(path) else _TensorReader(path)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(abstract)
    used = _fill(path, config, reader, pure)
    # A tied checkpoint may still carry a (duplicate) lm_head.weight; it is the embedding.
    if config.tie_embeddings:
        used.add(_lm_head(_prefix(reader)))
    _refuse_unused(path, reader, used, f"{hf_config.model_type} model")
    nnx.replace_by_pure_dict(abstract, pure)
    del reader, pure
    parallel.release_free_memory()  # the file's decoded (e.g. dequantized) copies are gone
    return nnx.merge(graphdef, abstract)


def model_config(path: str, *, dtype: str = "float32", param_dtype: str = "float32"):
    """The `TransformerConfig` of a checkpoint directory or GGUF file, without its weights."""
    return _hf_config(path, dtype, param_dtype)[1]


def read_config(path: str) -> dict:
    """A checkpoint directory's config.json (or a GGUF file's metadata in its fields), as a
    dict; raises naming the file if it is missing or its ``model_type`` is not one of
    ``SUPPORTED``."""
    return _read_config_json(path)


def load_reward_model(
    path: str, *, pad_id: int, dtype: str = "float32", param_dtype: str = "float32"
) -> RewardModel:
    """Loads a ``*ForSequenceClassification`` checkpoint of a supported family with one label (a
    reward model) into a `RewardModel`: the ``model.*`` tensors are its backbone, the row of
    ``score.weight [1, hidden]`` its head, and the reward is read where transformers reads it,
    at the last real token that is not ``pad_id`` (``RewardModel.pad_id``).

    Raises:
      ValueError (a ``UserError``): as `load_pretrained`, and on a classifier of several labels.
    """
    hf_config, config = _hf_config(path, dtype, param_dtype)
    config = config.replace(tie_embeddings=True)  # a classifier has no LM head
    reader = _TensorReader(path)
    make = lambda: RewardModel(config, pad_id=pad_id, rngs=nnx.Rngs(0))
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    pure = nnx.to_pure_dict(abstract)
    used = _fill(path, config, reader, pure["backbone"])
    if "score.weight" not in reader.file_of:
        raise UserError(f"{path}: checkpoint lacks tensor score.weight (the classifier's head)")
    found = reader.shape("score.weight")
    if found != (1, config.d_model):
        raise UserError(
            f"{path}: score.weight has shape {found}; a reward model has one label, "
            f"[1, {config.d_model}] (num_labels=1)"
        )
    target = pure["head"]["w"]
    pure["head"]["w"] = jnp.asarray(reader.get("score.weight")[0], dtype=target.dtype)
    _refuse_unused(path, reader, used | {"score.weight"}, f"{hf_config.model_type} classifier")
    nnx.replace_by_pure_dict(abstract, pure)
    del reader, pure
    parallel.release_free_memory()  # the file's decoded (e.g. dequantized) copies are gone
    return nnx.merge(graphdef, abstract)


def to_hf_tensors(model: Transformer) -> dict[str, np.ndarray]:
    """The model's weights as HF-named numpy arrays (in the parameter dtype)."""
    config = model.config
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tensors = {}
    for our_path, hf_name, hf_shape, kind in _hf_layout(config):
        value = pure
        for key in our_path:
            value = value[key]
        value = np.asarray(jax.device_get(value))
        per_layer = list(value) if our_path[0] == "layers" else [value]
        for i, w in enumerate(per_layer):
            w = w.reshape(hf_shape[::-1]).T if kind == "linear" else w.reshape(hf_shape)
            tensors[hf_name.format(i=i)] = np.ascontiguousarray(w)
    return tensors


def save_pretrained(model: Transformer, path: str, **hf_config_overrides) -> None:
    """Writes config.json and model.safetensors that transformers' PyTorch classes load.

    Args:
      model: the model to export, as its family (``TransformerConfig.model_family``).
      path: output directory, created if needed.
      **hf_config_overrides: extra transformers config fields, e.g. `eos_token_id`.
    """
    os.makedirs(path, exist_ok=True)
    hf_config_from(model.config, **hf_config_overrides).save_pretrained(path)
    safetensors.numpy.save_file(
        to_hf_tensors(model), os.path.join(path, _WEIGHTS), metadata={"format": "pt"}
    )
