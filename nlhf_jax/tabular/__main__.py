"""The exact tabular NLHF lab.

    python -m nlhf_jax.tabular [--game random --n 10 --tau 0.1 --steps 1000 --contexts 8]
                               [--out DIR]

Prints, for every algorithm, the mean over contexts of KL(pi*, pi_T) to the exact regularized NE
at several T and the final duality gap, with Theorem 1's bound beside Nash-MD and the
(1 + 2 beta)^(-T) envelope beside Nash-MP; writes ``convergence.png`` and ``results.json`` to
``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from nlhf_jax import provenance
from nlhf_jax.console import quiet_libraries
from nlhf_jax.tabular.lab import GAMES, LabConfig, checkpoints, run_lab


def _num(x: float) -> str:
    # Values within float64 rounding of zero (KL can come out as -1e-16) print as such.
    return "<1e-15" if abs(x) < 1e-15 else f"{x:.2e}"


def format_table(res: dict) -> str:
    """The lab's results as a fixed-width text table."""
    cfg = res["config"]
    ts = checkpoints(cfg["steps"])
    head = (
        f"{'algorithm':<17}"
        + "".join(f"{'T=' + str(t):>11}" for t in ts)
        + f"{'gap(T)':>11}{'gap0(T)':>11}  description"
    )
    lines = [
        f"game={cfg['game']} n={res['nash'].shape[-1]} tau={cfg['tau']} contexts={cfg['contexts']} "
        f"mu={cfg['mu']} steps={cfg['steps']}  "
        f"(max fixed-point residual of pi*: {res['residual']:.1e})",
        "mean over contexts of KL(pi* || pi_T); "
        "gap(T) = duality gap of pi_T in the tau-regularized game, gap0(T) in the unregularized",
        head,
        "-" * len(head),
    ]
    row = lambda name, v: f"{name:<17}" + "".join(f"{_num(v[t]):>11}" for t in ts)
    for name, a in res["algorithms"].items():
        gaps = f"{_num(a['gap'][-1]):>11}{_num(a['gap0'][-1]):>11}"
        lines.append(row(name, a["kl"]) + f"{gaps}  {a['description']}")
        if name == "nash_md":
            lines.append(
                row("  bound", res["nash_md_bound"]) + " " * 22 + "  8/(tau^2 (T+1)), Theorem 1"
            )
        if name == "nash_mp":
            lines.append(
                row("  envelope", res["nash_mp_bound"]) + " " * 22 + "  (1+2 beta)^-T KL_0"
            )
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    """Convergence curves, log scale, with the bounds overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(13, 5))
    t = np.arange(1, res["config"]["steps"] + 2)
    colors = plt.get_cmap("tab20").colors
    for i, (name, a) in enumerate(res["algorithms"].items()):
        style = {"color": colors[(2 * i) % 20 + (2 * i) // 20], "label": name}
        ax[0].loglog(t, np.maximum(a["kl"], 1e-18), **style)
        ax[1].loglog(t, np.maximum(np.abs(a["gap"]), 1e-18), **style)
    ax[0].loglog(t, res["nash_md_bound"], "k--", label="Nash-MD bound 8/(tau^2(T+1))")
    ax[0].loglog(
        t, np.maximum(res["nash_mp_bound"], 1e-18), "k:", label="Nash-MP envelope (1+2beta)^-T KL0"
    )
    ax[0].set(xlabel="iteration + 1", ylabel="KL(pi* || pi_t)", ylim=(1e-18, 1e3))
    ax[1].set(xlabel="iteration + 1", ylabel="duality gap", ylim=(1e-18, 1e1))
    ax[0].legend(fontsize=7)
    cfg = res["config"]
    fig.suptitle(f"{cfg['game']}, tau={cfg['tau']}, {cfg['contexts']} contexts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nlhf_jax.tabular", description=__doc__.split("\n")[0]
    )
    defaults = LabConfig()
    for field in dataclasses.fields(LabConfig):
        kw = {"choices": GAMES} if field.name == "game" else {}
        default = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name}", type=type(default), default=default, **kw)
    parser.add_argument(
        "--out", default="runs/tabular", help="directory for convergence.png and results.json"
    )
    parser.add_argument("--float32", action="store_true", help="run in float32 (default: float64)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' logs")
    args = vars(parser.parse_args(argv))
    out_dir, f32 = args.pop("out"), args.pop("float32")
    quiet_libraries(args.pop("verbose"))
    import jax

    jax.config.update("jax_enable_x64", not f32)
    cfg = LabConfig(**args)
    start = time.time()
    res = run_lab(cfg, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(format_table(res))
    os.makedirs(out_dir, exist_ok=True)
    plot(res, os.path.join(out_dir, "convergence.png"))
    res["seconds"] = time.time() - start
    res["environment"] = provenance.environment(seed=cfg.seed)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(_jsonable(res), f)
    print(
        f"\nwrote {out_dir}/convergence.png and {out_dir}/results.json "
        f"in {time.time() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
