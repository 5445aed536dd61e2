"""Head-to-head evaluation of trained policies (see ``nlhf_jax.evaluate``).

On the synthetic task (exact, by enumeration; --sampled N adds the sampled estimate):

    python -m nlhf_jax.evaluate --reference runs/sft --judge runs/pm --out runs/eval \
        nash_md=runs/nash_md online_ipo=runs/online_ipo

On a prompts file (text runs; sampled, with standard errors, under one or more judges):

    python -m nlhf_jax.evaluate --prompts eval_prompts.jsonl --reference runs/sft \
        --judge runs/pm [--judge task.json] --samples 16 --out runs/eval nash_md=runs/nash_md

Several seeds' results (means and 95% intervals over seeds, ``nlhf_jax.evaluate.seeds``):

    python -m nlhf_jax.evaluate --aggregate runs/s0/results.json runs/s1/results.json --out DIR

Prints the win-rate matrices and a per-method table; with --out writes results.json and
win_rate.png (and, on the synthetic task, training_curves.png) there.
"""

from __future__ import annotations

import argparse
import os

from nlhf_jax.console import quiet_libraries
from nlhf_jax.errors import exit_on_user_error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nlhf_jax.evaluate",
        description="Exact (and optionally sampled) head-to-head evaluation of policy runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("runs", nargs="*", metavar="NAME=WORKDIR", help="policy runs")
    parser.add_argument(
        "--reference", help="the SFT run: the reference mu (also a method); required to evaluate"
    )
    parser.add_argument(
        "--aggregate",
        nargs="+",
        metavar="RESULTS_JSON",
        help="instead of evaluating: several seeds' results.json as means and 95%% intervals "
        "(written to --out/results.json)",
    )
    parser.add_argument(
        "--judge",
        action="append",
        default=[],
        help="a preference_model (or reward_model) run's workdir; with --prompts also a Hugging "
        "Face checkpoint directory (a reward model or a causal LM), module:function or a text "
        "task's task.json, and repeatable",
    )
    parser.add_argument(
        "--judge-dtype", default="", help="with --prompts: checkpoint judges' dtype (float32)"
    )
    parser.add_argument(
        "--judge-template", default="", help="with --prompts: a causal LM judge's template file"
    )
    parser.add_argument(
        "--prompts", help="a JSONL/Parquet prompts file: sampled evaluation of text runs"
    )
    parser.add_argument(
        "--samples", type=int, default=16, help="with --prompts: responses per prompt and policy"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="with --prompts: response length limit"
    )
    parser.add_argument(
        "--max-prompt-len", type=int, default=256, help="with --prompts: prompts keep their end"
    )
    parser.add_argument("--out", help="directory for results.json and the figures")
    parser.add_argument(
        "--tau", type=float, help="KL weight of the game (default: the runs' if recorded, else 0.1)"
    )
    parser.add_argument(
        "--sampled",
        type=int,
        default=0,
        metavar="N",
        help="also estimate the matrix from N sampled responses per prompt (0: off)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled estimate")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' logs")
    args = parser.parse_args(argv)
    if args.reference is None and not args.aggregate:
        parser.error("the following arguments are required: --reference")
    if args.sampled < 0 or args.sampled == 1:
        parser.error("--sampled must be 0 (off) or at least 2")
    if args.tau is not None and args.tau <= 0:
        parser.error("--tau must be positive")
    quiet_libraries(args.verbose)

    from nlhf_jax.evaluate.head_to_head import evaluate_runs
    from nlhf_jax.evaluate.on_prompts import evaluate_on_prompts
    from nlhf_jax.evaluate.runs import parse_runs

    def run() -> None:
        if args.aggregate:
            _aggregate(args.aggregate, args.out)
            return
        runs = parse_runs(args.runs)
        if args.prompts:
            evaluate_on_prompts(
                args.reference,
                runs,
                args.prompts,
                args.judge,
                args.out,
                samples=args.samples,
                max_new_tokens=args.max_new_tokens,
                max_prompt_len=args.max_prompt_len,
                seed=args.seed,
                judge_dtype=args.judge_dtype,
                judge_template=args.judge_template,
            )
            if args.out:
                print(f"\nwrote {args.out}/results.json and win_rate.png")
            return
        if len(args.judge) > 1:
            parser.error("one --judge on the synthetic task")
        evaluate_runs(
            args.reference,
            runs,
            args.judge[0] if args.judge else None,
            args.tau,
            args.out,
            sampled=args.sampled,
            seed=args.seed,
        )
        if args.out:
            print(f"\nwrote {args.out}/results.json, win_rate.png and training_curves.png")

    exit_on_user_error(run)


def _aggregate(paths: list[str], out: str | None) -> None:
    """Several seeds' results.json as one: prints the table, writes OUT/results.json."""
    from nlhf_jax import provenance
    from nlhf_jax.evaluate import report, seeds

    aggregated = seeds.aggregate(seeds.load(paths), paths)
    # The seeds' own environments differ (their dates) and are dropped: this is the aggregation's.
    aggregated["environment"] = provenance.environment()
    print(seeds.table(aggregated))
    if out:
        os.makedirs(out, exist_ok=True)
        report.write_json(os.path.join(out, "results.json"), aggregated)
        print(f"\nwrote {out}/results.json")


if __name__ == "__main__":
    main()
