"""Head-to-head evaluation of trained policies (see ``nlhf_jax.evaluate``).

    python -m nlhf_jax.evaluate --reference runs/sft --judge runs/pm --out runs/eval \
        nash_md=runs/nash_md online_ipo=runs/online_ipo

Prints the win-rate matrix and a per-method table; with --out writes results.json,
win_rate.png and training_curves.png there.
"""

from __future__ import annotations

import argparse
import sys

from absl import logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nlhf_jax.evaluate",
        description="Exact (and optionally sampled) head-to-head evaluation of policy runs.",
    )
    parser.add_argument("runs", nargs="*", metavar="NAME=WORKDIR", help="policy runs")
    parser.add_argument(
        "--reference", required=True, help="the SFT run: the reference mu (also a method)"
    )
    parser.add_argument("--judge", help="a preference_model (or reward_model) run's workdir")
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
    args = parser.parse_args(argv)
    if args.sampled < 0 or args.sampled == 1:
        parser.error("--sampled must be 0 (off) or at least 2")
    if args.tau is not None and args.tau <= 0:
        parser.error("--tau must be positive")
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO

    from nlhf_jax.evaluate.head_to_head import evaluate_runs
    from nlhf_jax.evaluate.runs import parse_runs

    try:
        runs = parse_runs(args.runs)
        evaluate_runs(
            args.reference,
            runs,
            args.judge,
            args.tau,
            args.out,
            sampled=args.sampled,
            seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if args.out:
        print(f"\nwrote {args.out}/results.json, win_rate.png and training_curves.png")


if __name__ == "__main__":
    main()
