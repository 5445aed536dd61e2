"""GGUF checkpoints (llama.cpp's single-file format) read as Hugging Face checkpoints: a config,
tensors under their Hugging Face names, dequantized, and the tokenizer with its chat template
from the file's metadata.

Read with the ``gguf`` package (llama.cpp's own reader; numpy only, no torch). Two conversions
undo what llama.cpp's converter did:

- names: ``blk.{i}.attn_q.weight`` is ``model.layers.{i}.self_attn.q_proj.weight`` and so on
  (``_NAMES``);
- the Llama family's q and k projections are stored with the rows of each head permuted for
  llama.cpp's interleaved RoPE (its ``convert_hf_to_gguf.py``, ``LlamaModel.permute``): rows
  ``[half, pair]`` of a head become ``[pair, half]``; ``_unpermute`` puts them back. Qwen2,
  Qwen3 and Gemma use the rotate-half RoPE in llama.cpp too and are stored as they are;
- Gemma's norm weights are stored plus one (ggml scales by ``w``, Gemma by ``1 + w``): one is
  taken off again.

What a Gemma GGUF does not record is llama.cpp's fixed choice for the architecture: one global
layer in 2 (Gemma 2) or 6 (Gemma 3), local layers' RoPE base 10,000 (Gemma 3), and the query
scale ``head_dim`` except for the 27B models (``d_model / heads``).

The tokenizer: the byte-level BPE vocabularies (``tokenizer.ggml.model == "gpt2"``) whose
pre-tokenizer (``tokenizer.ggml.pre``) is one of ``_PRE_TOKENIZERS``, rebuilt with ``tokenizers``
as a ``PreTrainedTokenizerFast``; control tokens are special tokens, the chat template is the
file's ``tokenizer.chat_template``. SentencePiece vocabularies (``"llama"``: Gemma's, Llama 2's)
are built by transformers' own GGUF converter. Anything else is refused in one line naming the
file.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from nlhf_jax.errors import MissingInput, UserError

SUFFIX = ".gguf"

# general.architecture -> the transformers class the file's tensors are a checkpoint of.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
_GEMMA = ("gemma2", "gemma3")
# Gemma: (one global layer in how many, the 27B model's layer count: its query scale differs).
_GEMMA_LAYOUT = {"gemma2": (2, 46), "gemma3": (6, 62)}

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
# Gemma's four norms a block: ffn_norm is the MLP's input norm, HF's pre_feedforward_layernorm.
_GEMMA_BLOCK_NAMES = _BLOCK_NAMES | {
    "ffn_norm.weight": "pre_feedforward_layernorm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}

# The pre-tokenizer splits of llama.cpp's llama-vocab.cpp for the byte-level vocabularies this
# loader knows (regexes as published there and in the models' tokenizer.json files).
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# pre -> (split digits one by one first, the split regex)
_PRE_TOKENIZERS = {
    "default": (False, _GPT2_SPLIT),
    "gpt-2": (False, _GPT2_SPLIT),
    "smollm": (True, _GPT2_SPLIT),  # SmolLM's tokenizer.json: Digits(individual) + ByteLevel
    "starcoder": (True, _GPT2_SPLIT),
    "llama-bpe": (False, _LLAMA3_SPLIT),
    "llama3": (False, _LLAMA3_SPLIT),
    "qwen2": (False, _QWEN2_SPLIT),
}
_CONTROL, _USER_DEFINED = 3, 4  # tokenizer.ggml.token_type values (llama.cpp's llama_token_type)


def is_gguf(path: str) -> bool:
    """Whether ``path`` names a GGUF file (by its suffix; the file may not exist)."""
    return str(path).lower().endswith(SUFFIX)


@functools.lru_cache(maxsize=4)
def _reader(path: str):
    import gguf

    if not os.path.isfile(path):
        raise MissingInput(f"GGUF checkpoint not found: {path}")
    try:
        return gguf.GGUFReader(path, "r")
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable GGUF file ({e})") from None


def _field(path: str, key: str, default=None):
    field = _reader(path).fields.get(key)
    if field is None:
        if default is None:
            raise UserError(f"{path}: GGUF metadata lacks {key}")
        return default
    return field.contents()


def _architecture(path: str) -> str:
    arch = _field(path, "general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{path}: unsupported GGUF architecture general.architecture={arch!r}; "
            f"supported: {sorted(ARCHITECTURES)}"
        )
    return arch


def config_dict(path: str) -> dict:
    """The file's model, as the fields of a transformers ``config.json``."""
    arch = _architecture(path)
    reader = _reader(path)
    get = lambda key, default=None: _field(path, f"{arch}.{key}", default)
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names or get("rope.scaling.type", "none") != "none":
        raise UserError(
            f"{path}: RoPE scaling (rope_freqs.weight or {arch}.rope.scaling.type) in a GGUF "
            "is not supported; use the Hugging Face checkpoint directory"
        )
    num_heads = int(get("attention.head_count"))
    d = int(get("embedding_length"))
    head_dim = int(get("attention.key_length", d // num_heads))
    vocab = int(get("vocab_size", len(reader.fields["tokenizer.ggml.tokens"].data)))
    hf = {
        "model_type": arch,
        "architectures": [ARCHITECTURES[arch]],
        "vocab_size": vocab,
        "hidden_size": d,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": num_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", num_heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": int(get("context_length")),
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": float(get("rope.freq_base", 10_000.0)),
        },
        "tie_word_embeddings": "output.weight" not in names,
    }
    if arch in _GEMMA:
        hf.update(_gemma_fields(path, arch, hf))
    for key, name in (
        ("bos_token_id", "bos"),
        ("eos_token_id", "eos"),
        ("pad_token_id", "padding"),
    ):
        value = _field(path, f"tokenizer.ggml.{name}_token_id", -1)
        if value != -1:
            hf[key] = int(value)
    return hf


def _gemma_fields(path: str, arch: str, hf: dict) -> dict:
    """The Gemma config fields of a Gemma GGUF (module docstring: what the file leaves out)."""
    get = lambda key, default=None: _field(path, f"{arch}.{key}", default)
    every, layers_27b = _GEMMA_LAYOUT[arch]
    pattern = get("attention.sliding_window_pattern", every)
    layers, theta = hf["num_hidden_layers"], hf["rope_parameters"]["rope_theta"]
    big = layers == layers_27b
    fields = {
        "model_type": "gemma3_text" if arch == "gemma3" else arch,
        "hidden_activation": "gelu_pytorch_tanh",
        "sliding_window": int(get("attention.sliding_window")),
        "layer_types": [
            "sliding_attention" if local else "full_attention" for local in _local(pattern, layers)
        ],
        "query_pre_attn_scalar": hf["hidden_size"] // hf["num_attention_heads"]
        if big
        else hf["head_dim"],
        "attn_logit_softcapping": float(get("attn_logit_softcapping", 0.0)) or None,
        "final_logit_softcapping": float(get("final_logit_softcapping", 0.0)) or None,
    }
    if arch == "gemma3":
        local = float(get("rope.freq_base_swa", 10_000.0))
        fields["rope_parameters"] = {
            "full_attention": {"rope_type": "default", "rope_theta": theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        }
    return fields


def _local(pattern, layers: int) -> list[bool]:
    """Per layer, whether it is local: ``pattern`` is llama.cpp's sliding_window_pattern, one
    global layer in every ``pattern`` (the last of each group) or a flag per layer."""
    if isinstance(pattern, int):
        return [(i + 1) % pattern != 0 for i in range(layers)]
    return [bool(flag) for flag in pattern]


def hf_config(path: str):
    """The file's model as a transformers config object (Llama, Qwen2, Qwen3, Gemma2 or
    Gemma3's text model)."""
    import transformers

    fields = dict(config_dict(path))
    model_type = fields.pop("model_type")
    cls = {
        "llama": transformers.LlamaConfig,
        "qwen2": transformers.Qwen2Config,
        "qwen3": transformers.Qwen3Config,
        "gemma2": transformers.Gemma2Config,
        "gemma3_text": transformers.Gemma3TextConfig,
    }
    return cls[model_type](**fields)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation undone: per head, rows [pair, half] -> [half, pair]."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


class Tensors:
    """The file's tensors under their Hugging Face names, dequantized to float32 on ``get``
    (the interface of ``nlhf_jax.models.hf``'s safetensors reader: ``file_of``, ``get``,
    ``shape``)."""

    def __init__(self, path: str):
        self.path = path
        config = config_dict(path)
        self._heads = {
            "q_proj": config["num_attention_heads"],
            "k_proj": config["num_key_value_heads"],
        }
        self._permuted = config["model_type"] == "llama"
        self._gemma = config["model_type"] in ("gemma2", "gemma3_text")
        self._tensors, self.file_of = {}, {}
        for t in _reader(path).tensors:
            name = _hf_name(t.name, _GEMMA_BLOCK_NAMES if self._gemma else _BLOCK_NAMES)
            if name is None:
                raise UserError(
                    f"{path}: GGUF tensor {t.name} has no Hugging Face counterpart here"
                )
            self._tensors[name] = t
            self.file_of[name] = path

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(
            int(n) for n in reversed(self._tensors[name].shape)
        )  # GGML lists dims inner-first

    def get(self, name: str) -> np.ndarray:
        import gguf

        t = self._tensors[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape(self.shape(name))
        proj = name.split(".")[-2]
        if self._permuted and name.endswith("weight") and proj in self._heads:
            w = _unpermute(w, self._heads[proj])
        if self._gemma and name.endswith("norm.weight"):
            w = w - 1.0  # stored as 1 + w (module docstring)
        return w


def _hf_name(name: str, block_names: dict) -> str | None:
    if name in _NAMES:
        return _NAMES[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in block_names:
        return f"model.layers.{parts[1]}.{block_names[parts[2]]}"
    return None


def load_tokenizer(path: str):
    """The file's tokenizer (``PreTrainedTokenizerFast``) with its chat template."""
    import tokenizers
    import transformers
    from tokenizers import decoders, models, pre_tokenizers

    kind = _field(path, "tokenizer.ggml.model")
    pre = _field(path, "tokenizer.ggml.pre", "default")
    if kind == "llama":  # SentencePiece: transformers' own GGUF converter
        folder, name = os.path.split(os.path.abspath(path))
        return transformers.AutoTokenizer.from_pretrained(
            folder, gguf_file=name, local_files_only=True
        )
    if kind != "gpt2" or pre not in _PRE_TOKENIZERS:
        raise UserError(
            f"{path}: tokenizer.ggml.model={kind!r} with tokenizer.ggml.pre={pre!r} is not "
            "supported; supported: 'llama' (SentencePiece) and 'gpt2' (byte-level BPE) with "
            f"pre in {sorted(_PRE_TOKENIZERS)}"
        )
    tokens = [str(t) for t in _field(path, "tokenizer.ggml.tokens")]
    merges = [tuple(str(m).split(" ", 1)) for m in _field(path, "tokenizer.ggml.merges")]
    types = list(_field(path, "tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab = {token: i for i, token in enumerate(tokens)}
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    digits, split = _PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [
        pre_tokenizers.Split(tokenizers.Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    tok.add_tokens(
        [
            tokenizers.AddedToken(t, special=ty == _CONTROL, normalized=False)
            for t, ty in zip(tokens, types, strict=True)
            if ty in (_CONTROL, _USER_DEFINED)
        ]
    )
    specials = {}
    for key, name in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        token_id = _field(path, f"tokenizer.ggml.{name}_token_id", -1)
        if token_id != -1:
            specials[f"{key}_token"] = tokens[int(token_id)]
    bos = specials.get("bos_token")
    if bos is not None and _field(path, "tokenizer.ggml.add_bos_token", False):
        from tokenizers import processors

        bos_id = vocab[bos]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0",
            pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
            special_tokens=[(bos, bos_id)],
        )
    template = _field(path, "tokenizer.chat_template", "") or None
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, chat_template=template, clean_up_tokenization_spaces=False, **specials
    )
