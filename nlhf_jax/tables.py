"""The README's result tables: one renderer per ``<!-- results:NAME -->`` block, from the dict a
run's ``results.json`` holds (``nlhf_jax.readme`` is the command that applies them)."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable

from nlhf_jax.console import fixed

# NAME -> render(results) -> markdown; NAME -> compact(results) -> the fields render reads.
RENDERERS: dict[str, Callable[[dict], str]] = {}
COMPACT: dict[str, Callable[[dict], dict]] = {}


def renderer(name: str):
    """Registers ``render(results: dict) -> str`` as the table of ``<!-- results:NAME -->``."""

    def register(render: Callable[[dict], str]) -> Callable[[dict], str]:
        RENDERERS[name] = render
        return render

    return register


def source_line(name: str, results: dict) -> str:
    """``From `results/NAME.json` (seed, machine, jax, commit, date).`` for a table's head."""
    env = results.get("environment")
    if not env:
        return f"From `results/{name}.json`."
    machine, versions = env.get("machine", {}), env.get("versions", {})
    parts = [f"seed {env['seed']}"] if env.get("seed") is not None else []
    parts.append(f"{machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} CPUs")
    if machine.get("backend", "cpu") != "cpu":
        kinds = " / ".join(machine.get("device_kinds", []))
        parts.append(f"{machine.get('device_count', '?')} x {kinds}")
    if "jax" in versions:
        parts.append(f"jax {versions['jax']}")
    if "git" in env:
        dirty = " with uncommitted changes" if env["git"].get("dirty") else ""
        parts.append(f"commit {env['git']['commit'][:7]}{dirty}")
    if "date" in env:
        parts.append(env["date"][:10])
    return f"From `results/{name}.json` ({', '.join(parts)})."


def _paragraph(text: str) -> str:
    """``text`` wrapped at the README's 100 columns, never inside a `code span`."""
    unbroken = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", "\0"), text)
    wrapped = textwrap.fill(unbroken, 100, break_long_words=False, break_on_hyphens=False)
    return wrapped.replace("\0", " ")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


# --- tabular: python -m nlhf_jax.tabular --out runs/tabular ---------------------------------


def _compact_tabular(r: dict) -> dict:
    """The lab's trajectories at the table's checkpoints only (the full file is ~0.5 MB)."""
    if "checkpoints" in r:
        return r
    from nlhf_jax.tabular.lab import checkpoints

    ts = checkpoints(r["config"]["steps"])
    at = lambda v: [v[t] for t in ts]
    out = {
        "config": r["config"],
        "n": len(r["nash"][-1]),
        "residual": r["residual"],
        "checkpoints": ts,
        "algorithms": {
            name: {
                "description": a["description"],
                "kl": at(a["kl"]),
                "gap": at(a["gap"]),
                **({"gap0": at(a["gap0"])} if "gap0" in a else {}),
            }
            for name, a in r["algorithms"].items()
        },
        "nash_md_bound": at(r["nash_md_bound"]),
        "nash_mp_bound": at(r["nash_mp_bound"]),
    }
    return out | {k: r[k] for k in ("seconds", "environment") if k in r}


COMPACT["tabular"] = _compact_tabular


def _sci(x: float) -> str:
    # Values within float64 rounding of zero (KL can come out as -1e-16) print as such.
    return "<1e-15" if abs(x) < 1e-15 else f"{x:.2e}"


@renderer("tabular")
def render_tabular(results: dict) -> str:
    r = _compact_tabular(results)
    cfg, ts = r["config"], r["checkpoints"]
    head = (
        f"game={cfg['game']} n={r['n']} tau={cfg['tau']} contexts={cfg['contexts']} "
        f"mu={cfg['mu']} steps={cfg['steps']}; max fixed-point residual of `pi*`: "
        f"{r['residual']:.1e}. Columns T: the mean over contexts of `KL(pi* || pi_T)`; gap(T): the "
        "duality gap of pi_T in the tau-regularized game; gap0(T): in the unregularized game "
        "(its NE: the LP's)."
    )
    bounds = {
        "nash_md": ("bound", r["nash_md_bound"], "8/(tau^2 (T+1)), Theorem 1"),
        "nash_mp": ("envelope", r["nash_mp_bound"], "(1+2 beta)^-T KL_0"),
    }
    rows = []
    for name, a in r["algorithms"].items():
        gap0 = _sci(a["gap0"][-1]) if "gap0" in a else "n/a"
        rows.append([name, *map(_sci, a["kl"]), _sci(a["gap"][-1]), gap0, a["description"]])
        if name in bounds:
            label, values, description = bounds[name]
            rows.append([f"{name} {label}", *map(_sci, values), "", "", description])
    header = ["algorithm", *(f"T={t}" for t in ts), "gap(T)", "gap0(T)", "description"]
    return f"{_paragraph(source_line('tabular', r) + ' ' + head)}\n\n{_table(header, rows)}"


# --- demo: make demo (python -m nlhf_jax.train) -> runs/demo/results.json --------------------


def _num(x: float) -> str:
    """3 decimals (``fixed``), an exact 0 as "0"."""
    return "0" if x == 0 else fixed(x)


@renderer("demo")
def render_demo(r: dict, name: str = "demo") -> str:
    methods, win, reg = r["methods"], r["win_rate"], r["win_rate_regularized"]
    ref = r.get("reference_name", methods[0])
    i_ref = methods.index(ref)
    gaps = r["duality_gap"]
    best = min(range(len(methods)), key=gaps.__getitem__)
    exploit = r.get("exploitability")  # results written before it have none
    header = ["policy", "duality gap", *(["exploitability (tau = 0)"] if exploit else [])]
    header += ["KL(pi \\|\\| mu)", f"beats {ref}"]
    if "nash_md" in methods:
        header += ["vs nash_md, raw", "vs nash_md, regularized"]
    rows = []
    for i, method in enumerate(methods):
        gap = f"**{gaps[i]:.3f}**" if i == best else f"{gaps[i]:.3f}"
        row = [f"{method} (mu)" if i == i_ref else method, gap]
        row += [f"{exploit[i]:.3f}"] if exploit else []
        row += [_num(r["kl_to_reference"][i]), f"{win[i][i_ref]:.3f}"]
        if "nash_md" in methods:
            j = methods.index("nash_md")
            row += [f"{win[i][j]:.3f}", f"{reg[i][j]:.3f}"]
        rows.append(row)
    cfg = r.get("config", {})
    lines = [
        _paragraph(
            f"{source_line(name, r)} tau = {cfg.get('tau')}; win rates (row beats column) are "
            "exact under the true oracle, raw or in the tau-regularized game"
            + (
                "; exploitability: the duality gap of the unregularized game (tau = 0), "
                "`2 max_y P(y > pi) - 1`."
                if exploit
                else "."
            )
        ),
        "",
        _table(header, rows),
    ]
    if "judge_nash_duality_gap" in r:
        floor = (
            "The judge's floor: the exact regularized NE of the learned judge's game has duality "
            f"gap {r['judge_nash_duality_gap']:.3f} in the true game."
        )
        lines += ["", _paragraph(floor)]
    return "\n".join(lines)


# RLP run -> (its stage-1 policy, the judge it refreshed): the demo's names
# (nlhf_jax/pipelines/demo.py).
_RLP = {
    "rlp_uml": ("rlhf", "reward_model"),
    "rlp_spg": ("rlhf", "reward_model"),
    "nash_md_rlp": ("nash_md", "preference_model"),
}


def _figure(value, i: int, j: int | None = None, digits: int = 3, mark_half: bool = False):
    """Entry i (or [i][j]) of a results figure: a plain list/matrix (one seed) or an aggregate
    (``mean ± halfwidth``, ``*`` where a head-to-head interval excludes 1/2)."""
    pick = (lambda m: m[i]) if j is None else (lambda m: m[i][j])
    if not isinstance(value, dict):
        return f"{pick(value):.{digits}f}"
    text = f"{pick(value['mean']):.{digits}f}"
    if value.get("halfwidth") is not None:
        text += f" ± {pick(value['halfwidth']):.{digits}f}"
    if mark_half and value.get("differs_from_half") and pick(value["differs_from_half"]):
        text += " *"
    return text


def render_rlp(name: str, r: dict) -> str:
    """RLP against the policy it refreshes: the exact game figures, the head to head, and each
    judge's accuracy on pairs from the stage-1 and the stage-2 policy (RLP's premise)."""
    methods, acc = r["methods"], r["judge_accuracy_on_policy"]
    judges, pols = acc["judges"], acc["policies"]
    header = [
        "RLP run (vs stage 1)",
        "duality gap",
        "KL(pi \\|\\| mu)",
        "vs stage 1, raw",
        "vs stage 1, regularized",
        "first judge on stage-1 pairs",
        "refreshed judge on stage-1 pairs",
        "first judge on own pairs",
        "refreshed judge on own pairs",
    ]
    rows = []
    for run, (stage1, first) in _RLP.items():
        if run not in methods or f"{run} judge" not in judges:
            continue
        i, j = methods.index(run), methods.index(stage1)
        fj, rj = judges.index(first), judges.index(f"{run} judge")
        s1, own = pols.index(stage1), pols.index(run)
        rows.append(
            [
                f"{run} ({stage1})",
                f"{_figure(r['duality_gap'], i)} ({_figure(r['duality_gap'], j)})",
                f"{_figure(r['kl_to_reference'], i)} ({_figure(r['kl_to_reference'], j)})",
                _figure(r["win_rate"], i, j, mark_half=True),
                _figure(r["win_rate_regularized"], i, j, mark_half=True),
                _figure(acc["accuracy"], fj, s1),
                _figure(acc["accuracy"], rj, s1),
                _figure(acc["accuracy"], fj, own),
                _figure(acc["accuracy"], rj, own),
            ]
        )
    n = r.get("num_seeds", 1)
    spread = f"mean ± 95% interval over {n} seeds, `*`: it excludes 1/2; " if n > 1 else ""
    text = (
        f"{source_line(name, r)} {spread}exact, true oracle. Head to head: P(the RLP run beats "
        "its stage-1 policy). Judge accuracy: how often the judge picks the oracle's winner of "
        "y != y' drawn from a policy (the first judge: the reward model for RLHF, the preference "
        "model for Nash-MD; the refreshed one: the RLP run's retrained judge)."
    )
    return "\n".join([_paragraph(text), "", _table(header, rows)])


@renderer("demo_since")
def render_demo_since(r: dict) -> str:
    """The demo's table of ``configs/demo_since.py``: the methods since the seeds beside
    Nash-MD-PG and INPO."""
    return render_demo(r, "demo_since")


@renderer("demo_avx2")
def render_demo_avx2(r: dict) -> str:
    """The demo's table from a run with XLA's CPU code limited to AVX2 (another machine's code)."""
    return render_demo(r, "demo_avx2")


@renderer("demo_rlp")
def render_demo_rlp(r: dict) -> str:
    return render_rlp("demo", r)


@renderer("reproduce_rlp")
def render_reproduce_rlp(r: dict) -> str:
    return render_rlp("reproduce", r)


# Paired contrasts README's claims rest on: (a, b) -> the per-seed difference a - b.
CONTRASTS = [
    ("rlhf", "sft"),
    ("best_response", "nash_md"),
    ("nash_ema", "nash_md"),
    ("inpo", "nash_md"),
    ("nash_md", "nash_mp"),
    ("nash_md", "self_play"),
    ("rlp_uml", "rlhf"),
    ("rlp_spg", "rlhf"),
    ("rlp_spg", "rlp_uml"),
    ("nash_md_rlp", "nash_md"),
]
# The same for the methods since the seeds (configs/demo_since.py over seeds).
SINCE_CONTRASTS = [
    ("sppo", "nash_md"),
    ("egpo", "nash_md"),
    ("comal", "nash_md"),
    ("mpo", "nash_md"),
    ("mnpo", "nash_md"),
    ("onpo", "nash_md"),
    ("onpo", "online_ipo"),
    ("egpo", "inpo"),
    ("comal", "inpo"),
    ("mpo", "inpo"),
    ("mnpo", "inpo"),
]


def _paired(diffs) -> str:
    """``mean ± 95% t-interval halfwidth`` of per-seed differences, ``*`` if it excludes 0."""
    import numpy as np
    from scipy import stats

    d = np.asarray(diffs, float)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    mark = " *" if abs(d.mean()) > half else ""
    return f"{d.mean():+.3f} ± {half:.3f}{mark}"


@renderer("reproduce_pairs")
def render_reproduce_pairs(r: dict, name: str = "reproduce", contrasts=CONTRASTS) -> str:
    """Seed-paired differences (a - b within each seed, then the interval over seeds): tighter
    than comparing two intervals, since both methods of a seed share its SFT policy and judges."""
    import numpy as np

    m = r["methods"]
    figures = {"duality gap": "duality_gap", "exploitability (tau = 0)": "exploitability",
               "KL(pi \\|\\| mu)": "kl_to_reference"}  # fmt: skip
    figures = {h: np.asarray(r[k]["values"]) for h, k in figures.items() if k in r}
    rows = [
        [f"{a} - {b}", *(_paired(v[:, m.index(a)] - v[:, m.index(b)]) for v in figures.values())]
        for a, b in contrasts
        if a in m and b in m
    ]
    acc = r.get("judge_accuracy_on_policy")
    judge_rows = []
    if acc:
        values = np.asarray(acc["accuracy"]["values"])
        J, P = acc["judges"], acc["policies"]
        for run, (stage1, first) in _RLP.items():
            if f"{run} judge" in J:
                rj, fj = J.index(f"{run} judge"), J.index(first)
                judge_rows.append(
                    [run, _paired(values[:, rj, P.index(stage1)] - values[:, fj, P.index(stage1)]),
                     _paired(values[:, rj, P.index(run)] - values[:, fj, P.index(run)])]
                )  # fmt: skip
    text = (
        f"{source_line(name, r)} Differences within each seed, then the mean ± 95% "
        f"interval over the {r.get('num_seeds')} seeds; `*`: the interval excludes 0."
    )
    lines = [_paragraph(text), "", _table(["a - b", *figures], rows)]
    if judge_rows:
        header = ["RLP run", "refreshed - first judge, stage-1 pairs", "the same, own pairs"]
        lines += ["", _table(header, judge_rows)]
    return "\n".join(lines)


@renderer("reproduce")
def render_reproduce(
    r: dict, name: str = "reproduce", own: str = "policies and RLP refreshes"
) -> str:
    """``make reproduce``: every figure of the demo as mean ± 95% interval over seeds."""
    from nlhf_jax.evaluate import seeds

    text = (
        f"{source_line(name, r)} Seeds {r.get('seeds')}: each seed is the whole pipeline "
        f"(its own SFT, preference and reward models, {own})."
    )
    return "\n".join([_paragraph(text), "", seeds.table(r)])


@renderer("reproduce_since")
def render_reproduce_since(r: dict) -> str:
    """``configs/demo_since.py`` over seeds: the methods since the seeds, mean ± 95% interval."""
    return render_reproduce(r, "reproduce_since", "policies")


@renderer("reproduce_since_pairs")
def render_reproduce_since_pairs(r: dict) -> str:
    """Seed-paired differences of the methods since the seeds against Nash-MD-PG and INPO."""
    return render_reproduce_pairs(r, "reproduce_since", SINCE_CONTRASTS)


# --- sampled evaluations on prompts: python -m nlhf_jax.evaluate --prompts ... --------------


def _sampled(results: dict, key: str, stderr: str, i: int, j: int | None = None) -> str:
    """Entry i (or [i][j]) of a sampled evaluation's figure ``key``: ``mean ± standard error``
    (figure ``stderr``) of one evaluation, or ``mean ± 95% interval`` over seeds of an aggregate
    (``*``: a head to head whose interval excludes 1/2)."""
    if isinstance(results[key], dict):
        return _figure(results[key], i, j, mark_half=True)
    pick = (lambda m: m[i]) if j is None else (lambda m: m[i][j])
    return f"{_num(pick(results[key]))} ± {_num(pick(results[stderr]))}"


def render_sampled(name: str, r: dict) -> str:
    """One row per policy (the reference, first, is the column it is measured against): its win
    rate against the reference and against every other policy under each judge, then KL."""
    methods, judges = r["methods"], r["judges"]
    header = ["policy (row beats column)"]
    for judge in judges:
        header += [f"{judge}: vs {m}" for m in methods[:-1]]
    header.append("KL(pi \\|\\| mu)")
    rows = []
    for i, method in enumerate(methods[1:], start=1):
        row = [method]
        for judge in judges:
            for j in range(len(methods) - 1):
                key = f"win_rate/{judge}"
                cell = "" if i == j else _sampled(r, key, f"win_rate_stderr/{judge}", i, j)
                row.append(cell)
        rows.append([*row, _sampled(r, "kl_to_reference", "kl_to_reference_stderr", i)])
    c = r["config"]
    spread = (
        f"mean ± 95% interval over seeds {r['seeds']}; `*`: the interval excludes 1/2"
        if "num_seeds" in r
        else "± standard error over prompts"
    )
    text = (
        f"{source_line(name, r)} {c['num_prompts']} prompts x {c['samples']} sampled responses "
        f"per policy, the reference `{methods[0]}` first; {spread}."
    )
    return "\n".join([_paragraph(text), "", _table(header, rows)])


for _name in ("text_example", "text_host_judge"):
    renderer(_name)(lambda r, _name=_name: render_sampled(_name, r))
