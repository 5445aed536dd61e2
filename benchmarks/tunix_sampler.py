"""Greedy decoding: our ``PolicySampler`` next to Tunix's sampler, same Qwen2 weights and prompts.

Optional peer benchmark: Tunix (PyPI ``google-tunix``) lives in its own virtualenv, and the
script runs there, with this checkout on ``PYTHONPATH`` (it imports only ``nlhf_jax.sampling``,
``nlhf_jax.models`` and ``nlhf_jax.provenance``, which need jax and flax, and
``nlhf_jax.models.hf``, which loads under the transformers 5.x that Tunix resolves to). Set-up
once (torch, CPU build, only to write the random checkpoint with transformers)::

    python3 -m venv ../tunix-venv
    ../tunix-venv/bin/pip install google-tunix==0.1.7 torch==2.13.0

Run from the repository's root (the real shape; ``--shape tiny`` for a smoke test)::

    PYTHONPATH=. ../tunix-venv/bin/python benchmarks/tunix_sampler.py \\
        --shape qwen2.5-0.5b [--batch 8] [--prompt 128] [--new 128] [--repeats 3] \\
        [--dtype float32] [--out runs/benchmarks/tunix_sampler.json]

(``JAX_PLATFORMS=cpu`` for CPU; on a GPU both samplers need ``jax[cuda12]`` in that venv.)
Without Tunix (e.g. in the project's own venv) it prints one line and exits 0.

What is compared: a ``transformers.Qwen2ForCausalLM`` with random weights (seed 0, no download;
see ``write_checkpoint``) is saved as safetensors to a temporary directory, and our
``nlhf_jax.models.hf.load_pretrained`` and Tunix's
``tunix.models.qwen2.params.create_model_from_safe_tensors`` each load that file. Both decode
greedily (temperature 0, no EOS: exactly --new tokens a row) from the same --batch random prompts
of --prompt tokens, with a KV cache of prompt + new slots, in --dtype (weights and compute). Two
timings per sampler, each the median of --repeats calls after one warm-up call (compilation
excluded):

- generate: the public call (ours ``PolicySampler(...)(state, prompt, mask, key)``; Tunix's
  ``Sampler(...)(strings, ...)``, which also tokenizes, here with a trivial id tokenizer,
  builds its state on the host and copies the tokens back): prefill + decode.
- decode: the decode loop alone, after an untimed prefill (ours ``nlhf_jax.sampling.decode``
  as ``benchmarks/train_step.py`` times it; Tunix's jitted ``_decode_fn``, a private method of
  its ``Sampler``). Both run --new single-token forwards of the batch: ours samples every token
  in the loop, Tunix samples the first in its prefill, so its last forward is unused. Ours
  also records each token's log-probability (log-softmaxes over the vocabulary every step);
  Tunix's greedy path only takes the argmax.

Tokens/s = batch x new / seconds; the ratio is ours / Tunix's tokens/s (> 1: ours faster). As a
sanity check the greedy tokens are compared: the fraction of equal tokens and the mean fraction
of each row before its first difference (random weights give near-ties, and the two models sum
in different orders, so a row may fork; reported, not asserted), beside the mean number of
distinct tokens a row (1 would make the comparison vacuous). Settings, both rows and the machine
(``nlhf_jax.provenance``) go to --out as JSON.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import statistics
import tempfile
import time

import numpy as np

SHAPES = {  # Qwen2: tied embeddings, q/k/v biases, RoPE theta 1e6, RMSNorm eps 1e-6.
    "qwen2.5-0.5b": dict(layers=24, d=896, heads=14, kv_heads=2, mlp=4864, vocab=151936),
    "tiny": dict(layers=2, d=64, heads=4, kv_heads=2, mlp=256, vocab=1024),
}
ROPE_THETA, RMS_EPS = 1_000_000, 1e-6


def write_checkpoint(shape: dict, path: str) -> None:
    """A random Qwen2 checkpoint written by transformers (float32 safetensors).

    The weights are redrawn after transformers' init: with its std 0.02 and tied embeddings,
    greedy decoding only repeats the last prompt token (the embedding dominates the residual),
    which would make the token check vacuous. Matrices get std 1/sqrt(fan-in), biases and norm
    scales random values (so their loading is checked too); the embedding keeps std 0.02.
    """
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    config = transformers.Qwen2Config(
        vocab_size=shape["vocab"],
        hidden_size=shape["d"],
        intermediate_size=shape["mlp"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": float(ROPE_THETA)},
        tie_word_embeddings=True,
        use_sliding_window=False,
    )
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():  # the tied lm_head is embed_tokens
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.1)
            elif p.ndim == 1:  # q/k/v biases
                p.normal_(0.0, 0.1)
            elif "embed_tokens" not in name:
                p.normal_(0.0, p.shape[1] ** -0.5)
    model.save_pretrained(path)


def median_run(run, repeats: int):
    """``run() -> (seconds, tokens)``: one warm-up call, then the median of `repeats` calls."""
    _, tokens = run()
    return statistics.median(run()[0] for _ in range(repeats)), tokens


def ours(path: str, prompt: np.ndarray, new: int, dtype: str, repeats: int):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from nlhf_jax.models.hf import load_pretrained
    from nlhf_jax.sampling import PolicySampler, SamplingConfig, decode, prefill

    model = load_pretrained(path, dtype=dtype, param_dtype=dtype)
    config = model.config
    graphdef, state = nnx.split(model)
    settings = SamplingConfig(max_new_tokens=new, temperature=0.0)
    sampler = PolicySampler(graphdef, config, settings)
    b, p = prompt.shape
    prompt_bt, key = jnp.asarray(prompt), jax.random.key(0)
    mask_bt = jnp.ones_like(prompt_bt, bool)

    def generate():
        start = time.perf_counter()
        tokens = jax.block_until_ready(sampler(state, prompt_bt, mask_bt, key).tokens)
        return time.perf_counter() - start, np.asarray(tokens)

    def decode_only():
        graph = ((graphdef,), (config,), (state,))
        caches, last = prefill(*graph, prompt_bt, mask_bt, max_len=p + new)
        jax.block_until_ready(caches)
        start = time.perf_counter()
        out, _ = decode(
            (graphdef,),
            settings,
            (state,),
            jnp.ones((1,)),
            caches,
            last,
            jnp.full((b,), p, jnp.int32),
            key,
        )
        tokens = jax.block_until_ready(out.tokens)
        return time.perf_counter() - start, np.asarray(tokens)

    return timings("nlhf_jax.sampling.PolicySampler", generate, decode_only, b * new, repeats)


class IdTokenizer:
    """Tunix's sampler takes strings: these are space-separated token ids. No BOS, no EOS; the
    pad id is the vocabulary size, which no prompt holds and no argmax emits."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text: str, **_) -> list[int]:
        return [int(t) for t in text.split()]

    def decode(self, ids, **_) -> str:
        return " ".join(map(str, ids))

    def bos_id(self):
        return None

    def eos_id(self) -> int:
        return -1

    def pad_id(self) -> int:
        return self.vocab


def tunix(path: str, shape: dict, prompt: np.ndarray, new: int, dtype: str, repeats: int):
    import jax
    import jax.numpy as jnp
    from tunix.generate import sampler as sampler_lib
    from tunix.models.qwen2 import model as qwen2
    from tunix.models.qwen2 import params as qwen2_params

    head_dim = shape["d"] // shape["heads"]
    config = qwen2.ModelConfig(
        num_layers=shape["layers"],
        vocab_size=shape["vocab"],
        embed_dim=shape["d"],
        hidden_dim=shape["mlp"],
        num_heads=shape["heads"],
        head_dim=head_dim,
        num_kv_heads=shape["kv_heads"],
        rope_theta=ROPE_THETA,
        norm_eps=RMS_EPS,
        use_tied_embedding=True,
        dtype=jnp.dtype(dtype),
        param_dtype=jnp.dtype(dtype),
    )
    model = qwen2_params.create_model_from_safe_tensors(path, config, dtype=jnp.dtype(dtype))
    b, p = prompt.shape
    cache = sampler_lib.CacheConfig(p + new, shape["layers"], shape["kv_heads"], head_dim)
    sampler = sampler_lib.Sampler(model, IdTokenizer(shape["vocab"]), cache)
    texts = [" ".join(map(str, row)) for row in prompt]

    def generate():
        start = time.perf_counter()
        out = sampler(
            texts,
            max_generation_steps=new,
            max_prompt_length=p,
            temperature=0.0,
            eos_tokens=[-1],
            seed=0,  # an int: a key array passed in would be donated
        )
        return time.perf_counter() - start, np.stack(out.tokens)

    def decode_only():  # Sampler.__call__'s steps (after one call, which sets its EOS ids)
        weights = sampler._flattened_transformer_state
        state = sampler.init_sample_state(
            jnp.asarray(prompt),
            total_sampling_steps=p + new,
            include_logits=False,
            forbidden_token_ids=None,
            temperature=0.0,
            top_p=None,
            top_k=None,
            seed=jax.random.PRNGKey(0),
            beam_size=None,
        )
        state = jax.block_until_ready(sampler._compiled_prefill_fn(weights, state, echo=False))
        start = time.perf_counter()
        tokens = jax.block_until_ready(sampler._compiled_decode_fn(weights, state).token_buffer)
        return time.perf_counter() - start, np.asarray(tokens[:, p:])

    return timings("tunix.generate.sampler.Sampler", generate, decode_only, b * new, repeats)


def timings(name: str, generate, decode_only, tokens: int, repeats: int):
    gen_s, gen_tokens = median_run(generate, repeats)
    dec_s, dec_tokens = median_run(decode_only, repeats)
    assert np.array_equal(gen_tokens, dec_tokens), f"{name}: generate and decode tokens differ"
    row = dict(
        sampler=name,
        generate_s=gen_s,
        generate_tok_s=tokens / gen_s,
        decode_s=dec_s,
        decode_tok_s=tokens / dec_s,
    )
    print(f"{name:<34} {row['generate_tok_s']:>14.0f} {row['decode_tok_s']:>12.0f}", flush=True)
    return row, gen_tokens


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """Fraction of equal tokens, mean fraction of each row before its first difference, and the
    mean number of distinct tokens in a row of `a` (1 would make the comparison vacuous)."""
    equal = a == b
    prefix = np.where(equal.all(1), a.shape[1], np.argmin(equal, 1))
    return dict(
        same_tokens=float(equal.mean()),
        same_prefix=float(prefix.mean() / a.shape[1]),
        distinct_per_row=float(np.mean([len(np.unique(row)) for row in a])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", help="parameter and compute dtype, both")
    parser.add_argument("--out", default="runs/benchmarks/tunix_sampler.json", help="JSON file")
    args = parser.parse_args()
    if importlib.util.find_spec("tunix") is None:
        print("skipped: Tunix is not installed (pip install google-tunix==0.1.7; see --help)")
        return
    if importlib.util.find_spec("torch") is None:
        parser.error("transformers needs torch to write the checkpoint: pip install torch==2.13.0")

    import jax

    from nlhf_jax import provenance

    shape = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    prompt = rng.integers(3, shape["vocab"], (args.batch, args.prompt), dtype=np.int32)
    print(
        f"device: {jax.devices()[0].device_kind}  shape: {args.shape} {shape}  dtype: "
        f"{args.dtype}  batch: {args.batch}  prompt: {args.prompt}  new: {args.new}  greedy"
    )
    with tempfile.TemporaryDirectory() as path:
        write_checkpoint(shape, path)
        print(f"{'sampler':<34} {'generate tok/s':>14} {'decode tok/s':>12}")
        ours_row, ours_tokens = ours(path, prompt, args.new, args.dtype, args.repeats)
        tunix_row, tunix_tokens = tunix(path, shape, prompt, args.new, args.dtype, args.repeats)
    ratio = {k: ours_row[k] / tunix_row[k] for k in ("generate_tok_s", "decode_tok_s")}
    agree = agreement(ours_tokens, tunix_tokens)
    print(
        f"ours / Tunix: generate {ratio['generate_tok_s']:.2f}x, decode "
        f"{ratio['decode_tok_s']:.2f}x  greedy tokens equal: {agree['same_tokens']:.3f} "
        f"(mean agreeing prefix {agree['same_prefix']:.3f}; distinct tokens a row "
        f"{agree['distinct_per_row']:.1f} of {args.new})"
    )
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        environment = provenance.environment()
        for name in ("google-tunix", "torch"):
            environment["versions"][name] = importlib.metadata.version(name)
        result = {
            "settings": {**vars(args), "shape_config": shape, "rope_theta": ROPE_THETA},
            "rows": [ours_row, tunix_row],
            "ratio_ours_over_tunix": ratio,
            "agreement": agree,
            "environment": environment,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
