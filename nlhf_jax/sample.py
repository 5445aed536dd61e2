"""Decode a trained policy's responses to text.

    python -m nlhf_jax.sample --run runs/nash_md --prompts prompts.jsonl --out samples.jsonl \
        [--num-samples 4] [--temperature 1.0] [--top-p 0.95] [--top-k 0] [--max-new-tokens 64]

Reads the policy and the tokenizer its run kept, samples ``--num-samples`` responses to every
prompt of the file (field ``prompt``; the run's chat template setting applies), and writes one
JSON object per response: ``prompt``, ``sample`` (index), ``response`` (text), ``tokens``,
``logprob`` (the policy's log-probability of the response at temperature 1) and ``finished``
(it ended with EOS rather than at the length limit). A synthetic-task run (no tokenizer) samples
the task's own prompts when ``--prompts`` is not given, its tokens written as symbols.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from nlhf_jax.checkpoint import load_policy, run_tokenizer
from nlhf_jax.console import quiet_libraries
from nlhf_jax.data import ChatOptions
from nlhf_jax.errors import UserError, exit_on_user_error
from nlhf_jax.evaluate.sampled import sample_policy
from nlhf_jax.sampling import SamplingConfig
from nlhf_jax.sources import encode_prompt_file, synthetic_source
from nlhf_jax.tasks.synthetic import SyntheticTask


def sample_run(
    run: str,
    out: str,
    *,
    prompts_file: str | None = None,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 64,
    max_prompt_len: int = 256,
    seed: int = 0,
) -> list[dict]:
    """Samples the run's policy on the prompts and writes ``out`` (JSONL); returns the rows."""
    if num_samples < 1:
        raise UserError(f"--num-samples {num_samples}: at least 1")
    policy = load_policy(run, os.path.basename(os.path.normpath(run)))
    tokenizer = run_tokenizer(run)
    if tokenizer is not None:
        if not prompts_file:
            raise UserError("--prompts is required for a text run")
        records, prompts, mask, _ = encode_prompt_file(
            prompts_file,
            tokenizer,
            max_prompt_len=max_prompt_len,
            chat_template=bool(policy.identity.get("chat_template", False)),
            chat=ChatOptions(**policy.identity.get("chat", {})),
        )
        texts = [r["prompt"] for r in records]
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)
    else:
        if prompts_file or "task" not in policy.identity:
            raise UserError(
                f"{run} keeps no tokenizer: only a synthetic-task run can be sampled without "
                "one, on its own prompts (leave out --prompts)"
            )
        source = synthetic_source(
            SyntheticTask(**policy.identity["task"]), data_dir="", eval_copies=1
        )
        prompts, mask = source.eval_prompts
        texts = [source.decode(x, m) for x, m in zip(prompts, mask, strict=True)]
        eos, pad, max_new_tokens = source.eos_id, source.pad_id, source.max_new_tokens
        decode = lambda ids: source.decode(ids, np.ones(len(ids), bool))
    try:
        settings = SamplingConfig(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p if top_p < 1.0 else None,
            eos_id=eos,
            pad_id=pad,
        )
    except ValueError as e:  # a flag out of range
        raise UserError(str(e)) from None
    tokens, masks, logp = sample_policy(
        policy, prompts, mask, num_samples, jax.random.key(seed), settings
    )
    rows = []
    for x, prompt in enumerate(texts):
        for k in range(num_samples):
            ids = tokens[x, k][masks[x, k]]
            rows.append(
                {
                    "prompt": prompt,
                    "sample": k,
                    "response": decode(ids),
                    "tokens": int(ids.size),
                    "logprob": float(logp[x, k]),
                    "finished": bool(ids.size and ids[-1] == eos),
                }
            )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nlhf_jax.sample",
        description="Decode a trained policy's responses.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--run",
        required=True,
        help="a policy run's workdir, a Hugging Face checkpoint directory or a GGUF file",
    )
    parser.add_argument("--prompts", help="JSONL/Parquet with a 'prompt' field")
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--num-samples", type=int, default=1, help="responses per prompt")
    parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0: off")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=3, help="responses printed to the console")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' logs")
    args = parser.parse_args(argv)
    quiet_libraries(args.verbose)

    def run() -> None:
        t0 = time.time()
        rows = sample_run(
            args.run,
            args.out,
            prompts_file=args.prompts,
            num_samples=args.num_samples,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            max_prompt_len=args.max_prompt_len,
            seed=args.seed,
        )
        for row in rows[: args.show]:
            print(f"{row['prompt']!r} -> {row['response']!r}")
        finished = np.mean([r["finished"] for r in rows])
        print(
            f"wrote {len(rows)} responses to {args.out} in {time.time() - t0:.1f} s "
            f"({finished:.0%} ended with EOS)"
        )

    exit_on_user_error(run)


if __name__ == "__main__":
    main()
