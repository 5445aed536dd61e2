"""What an evaluation writes: printed tables, ``results.json`` and two figures."""

from __future__ import annotations

import json
import os

import numpy as np

from nlhf_jax.errors import UserError


def matrix_table(methods: list[str], M, title: str, stderr=None) -> str:
    """The win-rate matrix as text: row i, column j = P(method i beats method j)."""
    width = max(10, *(len(m) + 2 for m in methods))
    cell = 16 if stderr is not None else 8
    lines = [title, " " * width + "".join(f"{m:>{max(cell, len(m) + 2)}}" for m in methods)]
    for i, row_name in enumerate(methods):
        cells = []
        for j, col_name in enumerate(methods):
            text = f"{M[i][j]:.3f}" if stderr is None else f"{M[i][j]:.3f}±{stderr[i][j]:.3f}"
            cells.append(f"{text:>{max(cell, len(col_name) + 2)}}")
        lines.append(f"{row_name:<{width}}" + "".join(cells))
    return "\n".join(lines)


def method_table(results: dict) -> str:
    """One row per method: duality gap, exploitability in the unregularized game, KLs, win
    rate against the reference, invalid mass."""
    methods, ref = results["methods"], results["methods"].index(results["reference_name"])
    columns = {
        "duality_gap": results["duality_gap"],
        **({"exploit(tau=0)": results["exploitability"]} if "exploitability" in results else {}),
        "KL(pi||mu)": results["kl_to_reference"],
        "KL(NE||pi)": results["kl_nash_to_policy"],
        "win_vs_ref": [row[ref] for row in results["win_rate"]],
    }
    if "win_rate_judge" in results:
        columns["win_vs_ref_judge"] = [row[ref] for row in results["win_rate_judge"]]
    columns["invalid_mass"] = results["invalid_mass"]
    width = max(10, *(len(m) + 2 for m in methods))
    head = f"{'method':<{width}}" + "".join(f"{c:>18}" for c in columns)
    lines = [head, "-" * len(head)]
    for i, name in enumerate(methods):
        lines.append(f"{name:<{width}}" + "".join(f"{v[i]:>18.4g}" for v in columns.values()))
    return "\n".join(lines)


def write_json(path: str, obj: dict) -> None:
    """Writes ``obj`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def plot_win_rates(path: str, methods: list[str], matrices: dict[str, np.ndarray]) -> None:
    """Heatmaps with the numbers written in, one panel per matrix (oracle, judge, sampled)."""
    # A bare Figure (no pyplot): nothing global changes, so a notebook's inline plots survive.
    from matplotlib.figure import Figure

    n = len(methods)
    size = 1.0 + 0.8 * n
    fig = Figure(figsize=(size * len(matrices) + 2, size + 1), constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(1, len(matrices), sharey=True))
    for ax, (title, M) in zip(axes, matrices.items(), strict=True):
        image = ax.imshow(M, vmin=0.0, vmax=1.0, cmap="RdBu_r")
        for i in range(n):
            for j in range(n):
                color = "white" if abs(M[i][j] - 0.5) > 0.3 else "black"
                ax.text(j, i, f"{M[i][j]:.2f}", ha="center", va="center", color=color)
        ax.set_xticks(range(n), methods, rotation=45, ha="right")
        ax.set_xlabel("opponent (column)")
        ax.set_title(title, fontsize=10)
    axes[0].set_yticks(range(n), methods)
    axes[0].set_ylabel("row (the method that wins with the probability shown)")
    bar = fig.colorbar(image, ax=list(axes), shrink=0.8)
    bar.set_label("P(row beats column)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def read_metrics(workdir: str) -> list[dict]:
    """The rows of a run's ``metrics.jsonl`` (none if it has none). A resumed run may have
    logged a step twice; the later row wins. Raises naming the file and line if one is not
    JSON."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {number} is not JSON: {e}") from None
            rows[(row.get("kind"), row.get("step"))] = row
    return sorted(rows.values(), key=lambda r: r.get("step", 0))


# Each family's training loss gets its own panel: a policy-gradient surrogate (near 0), IPO's
# squared error and INPO's are on different scales, so one shared axis flattens all but one.
# Keyed by the method a run's run.json records (a "self_play" run is a nash_md run); a method
# not listed here gets a panel of its own.
LOSS_FAMILIES = {
    "nash_md": "policy gradient",
    "nash_ema": "policy gradient",
    "nash_mp": "policy gradient",
    "rlhf": "policy gradient",
    "online_ipo": "IPO",
    "ipo_md": "IPO",
    "egpo": "IPO",
    "onpo": "IPO",
    "inpo": "INPO",
    "comal": "INPO",
    "mpo": "INPO",
    "mnpo": "INPO",
    "sppo": "SPPO",
    "sft": "SFT (negative log-likelihood)",
}


def loss_family(method: str) -> str:
    """The loss panel of a run whose run.json records ``method``."""
    return LOSS_FAMILIES.get(method, method)


def method_colors(names: list[str]) -> dict[str, tuple[float, ...]]:
    """One colour per run name, in the order given, from a qualitative colormap (tab10, or
    tab20 beyond ten runs): the same run has the same colour in every panel."""
    from matplotlib import colormaps

    colors = colormaps["tab10" if len(names) <= 10 else "tab20"].colors
    return {name: tuple(colors[i % len(colors)]) for i, name in enumerate(names)}


def _run_method(workdir: str, name: str) -> str:
    """The method a run's run.json records; the run's name where it has none."""
    path = os.path.join(workdir, "run.json")
    if not os.path.exists(path):
        return name
    with open(path) as f:
        try:
            return json.load(f).get("method", name)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not JSON: {e}") from None


def _points(rows: list[dict], kind: str, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if r.get("kind") == kind and key in r]


def _run_tau(workdir: str) -> float | None:
    """The tau a run trained with (its config.json), if it records one."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        try:
            return json.load(f).get("tau")
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not JSON: {e}") from None


def plot_training_curves(path: str, runs: dict[str, str], reference_gap: float):
    """Each run's logged ``exact/duality_gap`` (eval rows, in the game of the run's own tau)
    and training ``loss`` against steps, from its ``metrics.jsonl``; one loss panel per method
    family (``LOSS_FAMILIES``; SFT's negative log-likelihood on a log scale) and one colour per
    run throughout. The reference's own gap is drawn once per tau the runs used (what each
    run's curve starts from); ``reference_gap`` stands in for runs that logged none. Legends
    sit beside the panels, not over the curves. Returns the figure."""
    # A bare Figure (no pyplot): nothing global changes, so a notebook's inline plots survive.
    from matplotlib.figure import Figure

    colors = method_colors(list(runs))
    gaps, losses = {}, {}  # name -> points; family -> {name: points}
    references = {}  # tau (or None) -> the reference's duality gap in that game
    for name, workdir in runs.items():
        rows = read_metrics(workdir)
        if gap := _points(rows, "eval", "exact/duality_gap"):
            gaps[name] = gap
            ref = _points(rows, "eval", "exact/reference_duality_gap")
            references.setdefault(_run_tau(workdir), ref[0][1] if ref else reference_gap)
        if loss := _points(rows, "train", "loss"):
            family = loss_family(_run_method(workdir, name))
            losses.setdefault(family, {})[name] = loss
    ncols = min(2, 1 + len(losses))
    nrows = -(-(1 + len(losses)) // ncols)
    fig = Figure(figsize=(7.4 * ncols, 3.9 * nrows), constrained_layout=True)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    gap_ax = axes[0]
    for name, points in gaps.items():
        gap_ax.plot(*zip(*points, strict=True), marker=".", color=colors[name], label=name)
    styles = iter(("--", ":", "-.", (0, (5, 1))))
    for tau, gap in sorted(references.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        if gap > 0:  # a log axis
            label = "reference mu" + (f", tau {tau:g}" if tau is not None else "")
            gap_ax.axhline(gap, color="gray", ls=next(styles, "--"), label=label)
    gap_ax.set(xlabel="step", ylabel="duality gap", title="exact duality gap, each run's own tau")
    gap_ax.set_yscale("log")
    for ax, (family, curves) in zip(axes[1:], losses.items(), strict=False):
        for name, points in curves.items():
            ax.plot(*zip(*points, strict=True), marker=".", color=colors[name], label=name)
        ax.set(xlabel="step", ylabel="loss", title=f"training loss: {family}")
        if family == LOSS_FAMILIES["sft"]:
            ax.set_yscale("log")  # it falls by orders of magnitude
    for ax in axes[1 + len(losses) :]:
        ax.set_axis_off()
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.savefig(path, dpi=120)
    return fig
