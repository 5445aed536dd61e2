"""Nash-MD with the text config's defaults (``configs/text.py:nash_md``) on responses that run to
its maximum length, watched by the divergence guard.

    python benchmarks/text_long_responses.py [--judge runs/text/pm] [--runs runs/text_long] \
        [--sft-steps 20] [--seeds 0] [--out runs/benchmarks/text_long_responses.json]

On the offline text example's files (``python -m nlhf_jax.tasks.text --out data/text``, made
if missing) and its preference model (``configs/text_example.py:preference_model``, trained into
``--judge`` if missing), every run through ``python -m`` as a user runs it:

1. SFT with ``configs/text.py:sft`` stopped after ``--sft-steps`` steps: it has not yet learned
   to end its replies, so at ``data.max_response_len`` 128 (the text config's default) nearly
   every response it samples runs to the limit, the case in which a sequence-level KL is largest;
2. Nash-MD from it with ``configs/text.py:nash_md`` unchanged (steps, tau, beta, guard) but for
   its inputs and the learning rate 1e-4 (the config's default when this was recorded), once
   per seed, logging every step (``log_every=1``), so ``metrics.jsonl`` holds every value of
   ``objective/kl`` the guard checked;
3. 4 samples per evaluation prompt from both policies at 128 new tokens
   (``python -m nlhf_jax.sample``).

The results file holds each run's largest and last ``objective/kl`` against the guard's
``max_kl``, the logged response length, and the sampled lengths (mean tokens, the share that
ended with EOS, the share cut at the limit). A run the guard stops is recorded as stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

from nlhf_jax import provenance

DATA = "data/text"  # the example's files, as configs/text_example.py names them
# The text config's rates when this was recorded; its checkpoint is random, not pretrained, so
# the pretrained start's defaults (nlhf_jax.train.defaults.resolve) do not apply to it.
SFT_LR, NASH_MD_LR = 3e-3, 1e-4
MAX_RESPONSE_LEN = 128  # configs/text.py's data.max_response_len (nlhf_jax.train.defaults)


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", *args]
    print("+ python -m " + " ".join(args), flush=True)
    done = subprocess.run(command, text=True, capture_output=True)
    if done.stdout.strip():
        print(done.stdout.strip().splitlines()[-1], flush=True)
    return done


def _must(*args: str) -> None:
    done = _run(*args)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {done.stderr.strip()[-2000:]}")


def _lengths(path: str) -> dict:
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    tokens = np.array([r["tokens"] for r in rows])
    return {
        "samples": len(rows),
        "mean_tokens": float(tokens.mean()),
        "finished": float(np.mean([r["finished"] for r in rows])),
        "at_limit": float(np.mean(tokens >= MAX_RESPONSE_LEN)),
    }


def _sample(run: str, prompts: str, seed: int) -> dict:
    out = os.path.join(run, "long_samples.jsonl")
    _must(
        "nlhf_jax.sample",
        f"--run={run}",
        f"--prompts={prompts}",
        f"--out={out}",
        "--num-samples=4",
        f"--max-new-tokens={MAX_RESPONSE_LEN}",
        f"--seed={seed}",
        "--show=0",
    )
    return _lengths(out)


def _nash_md(args, seed: int) -> dict:
    workdir = os.path.join(args.runs, f"seed_{seed}", "nash_md")
    done = _run(
        "nlhf_jax.train",
        "--config=configs/text.py:nash_md",
        f"--workdir={workdir}",
        f"--config.init_from={args.runs}/sft",
        f"--config.judge={args.judge}",
        f"--config.data.prompts_file={DATA}/prompts.jsonl",
        f"--config.data.eval_prompts_file={DATA}/eval_prompts.jsonl",
        f"--config.seed={seed}",
        "--config.log_every=1",
        f"--config.optimizer.learning_rate={NASH_MD_LR}",
    )
    config = json.load(open(os.path.join(workdir, "config.json"), encoding="utf-8"))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if r["kind"] == "train"]
    kl = np.array([r["objective/kl"] for r in train])
    worst = int(np.argmax(kl))
    record = {
        "seed": seed,
        "exit_code": done.returncode,
        "stopped_by_guard": done.returncode != 0 and "guard" in done.stderr,
        "message": done.stderr.strip().splitlines()[-1] if done.returncode else "",
        "steps": train[-1]["step"],
        "num_steps": config["num_steps"],
        "learning_rate": config["optimizer"]["learning_rate"],
        "tau": config["tau"],
        "beta": config["beta"],
        "max_kl_limit": config["guard"]["max_kl"],
        "max_response_len": config["data"]["max_response_len"],
        "kl_max": float(kl[worst]),
        "kl_max_step": train[worst]["step"],
        "kl_last": float(kl[-1]),
        "response_len_first": train[0]["objective/response_len"],
        "response_len_last": train[-1]["objective/response_len"],
    }
    if done.returncode == 0:
        record["samples"] = _sample(workdir, f"{DATA}/eval_prompts.jsonl", seed)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judge", default="runs/text/pm")
    parser.add_argument("--runs", default="runs/text_long")
    parser.add_argument("--sft-steps", type=int, default=20)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="runs/benchmarks/text_long_responses.json")
    args = parser.parse_args()

    if not os.path.exists(os.path.join(DATA, "task.json")):
        _must("nlhf_jax.tasks.text", f"--out={DATA}")
    _must(
        "nlhf_jax.train",
        "--config=configs/text_example.py:preference_model",
        f"--workdir={args.judge}",
    )
    _must(
        "nlhf_jax.train",
        "--config=configs/text.py:sft",
        f"--workdir={args.runs}/sft",
        f"--config.model.hf_checkpoint={DATA}/checkpoint",
        f"--config.data.train_file={DATA}/demos.jsonl",
        f"--config.num_steps={args.sft_steps}",
        f"--config.optimizer.learning_rate={SFT_LR}",
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    result = {
        "environment": provenance.environment(seed=seeds[0]),
        "sft_steps": args.sft_steps,
        "sft_samples": _sample(f"{args.runs}/sft", f"{DATA}/eval_prompts.jsonl", 0),
        "runs": [_nash_md(args, seed) for seed in seeds],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
