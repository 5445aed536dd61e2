"""Several seeds' evaluations as one: a mean and a 95% Student-t interval for every figure.

    python -m nlhf_jax.evaluate --aggregate runs/s0/results.json runs/s1/results.json --out DIR

``aggregate`` walks the seeds' ``results.json`` dicts together. Every numeric leaf present with
the same shape in all of them (a scalar, a per-method list, a win-rate matrix, a figure added
later) becomes ``{"mean", "halfwidth", "values"}``: ``values`` per seed, and the halfwidth
``t_{0.975, n-1} sd / sqrt(n)`` of the interval over the n seeds (None, JSON null, for one
seed: one draw has no spread). A head-to-head matrix (a ``win_rate*`` leaf of two dimensions)
also gets ``differs_from_half``: True where its interval excludes 1/2, i.e. one method beats
the other over seeds. Any other leaf is kept if all seeds agree on it (``methods``) and else
dropped and named in ``not_aggregated``. ``table`` is the README's per-method summary.
"""

from __future__ import annotations

import json
import math

import numpy as np

from nlhf_jax.console import fixed
from nlhf_jax.errors import MissingInput, UserError

# Top-level keys that hold a run's settings, not measurements: their numbers (tau, the task's
# sizes) are kept when the seeds agree, never averaged.
SETTINGS = ("config", "environment")
# Win rates are computed in float64 from probabilities summing to one; a matrix's diagonal is
# 1/2 only up to this roundoff, and must not count as differing from it.
_ROUNDOFF = 1e-9


def load(paths: list[str]) -> list[dict]:
    """The ``results.json`` files at ``paths``; raises naming a file that is missing or not
    JSON, or two files whose methods differ."""
    results = []
    for path in paths:
        try:
            with open(path) as f:
                results.append(json.load(f))
        except FileNotFoundError:
            raise MissingInput(f"{path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path} is not readable JSON: {e}") from None
        if not isinstance(results[-1], dict):
            raise UserError(f"{path} is not a results.json (a JSON object)")
    _check_methods(results, paths)
    return results


def _check_methods(results: list[dict], names: list[str]) -> None:
    first = results[0].get("methods")
    for result, name in zip(results[1:], names[1:], strict=True):
        if result.get("methods") != first:
            raise UserError(
                f"different methods: {names[0]} has {first}, {name} has {result.get('methods')}"
            )


def aggregate(
    results: list[dict], names: list[str] | None = None, *, seeds: list | None = None
) -> dict:
    """Several seeds' results as one (see the module docstring).

    Args:
      results: one ``results.json`` dict per seed, all over the same methods.
      names: where each came from (their paths), recorded as ``sources`` and used in errors;
        default ``seed 0``, ``seed 1``, ...
      seeds: the seed of each; default each result's ``seed`` or ``environment.seed`` if it
        records one, else None.

    Returns:
      The first seed's structure with its numeric leaves replaced by ``{"mean", "halfwidth",
      "values"}`` (and ``differs_from_half`` on head-to-head matrices), plus ``num_seeds``,
      ``seeds``, ``sources`` and ``not_aggregated`` (dotted keys of the leaves dropped). No
      NaN or infinity anywhere (they become None), so the dict is valid JSON as it is.
    """
    if not results:
        raise UserError("no results to aggregate")
    names = list(names) if names is not None else [f"seed {i}" for i in range(len(results))]
    if len(names) != len(results):
        raise ValueError(f"{len(names)} names for {len(results)} results")
    _check_methods(results, names)
    if seeds is None:
        seeds = [r.get("seed", (r.get("environment") or {}).get("seed")) for r in results]
    dropped: list[str] = []
    merged = _merge(results, (), dropped)
    return {
        **merged,
        "num_seeds": len(results),
        "seeds": list(seeds),
        "sources": names,
        "not_aggregated": dropped,
    }


def _merge(values: list, path: tuple[str, ...], dropped: list[str]):
    """The seeds' ``values`` at ``path`` as one; appends to ``dropped`` what cannot be."""
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        merged = {}
        for key in keys:
            if all(key in v for v in values):
                merged[key] = _merge([v[key] for v in values], (*path, key), dropped)
                if merged[key] is _DROP:
                    del merged[key]
            else:
                dropped.append(".".join((*path, key)))
        return merged
    arrays = [_numeric(v) for v in values]
    same_shape = all(a is not None and a.shape == arrays[0].shape for a in arrays)
    if same_shape and not (path and path[0] in SETTINGS):
        return _interval(np.stack(arrays), head_to_head=_is_head_to_head(path, arrays[0]))
    if all(_equal(v, values[0]) for v in values[1:]):
        return values[0]
    dropped.append(".".join(path))
    return _DROP


_DROP = object()  # a leaf left out of the aggregate


def _numeric(value) -> np.ndarray | None:
    """``value`` as a float array if it is a number or a non-empty rectangular list of them."""
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        return None
    try:
        array = np.asarray(value)
    except ValueError:  # ragged
        return None
    if array.dtype.kind not in "iuf" or array.size == 0:
        return None
    return array.astype(np.float64)


def _equal(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _is_head_to_head(path: tuple[str, ...], array: np.ndarray) -> bool:
    name = path[-1] if path else ""
    return name.startswith("win_rate") and "stderr" not in name and array.ndim == 2


def _interval(x: np.ndarray, head_to_head: bool) -> dict:
    """Mean and 95% t-interval halfwidth over the leading (seed) axis of ``x``."""
    n = len(x)
    # Where every seed gave the same value, that value and no spread, exactly (a float mean of
    # equal numbers can be off in the last bit, and then its deviations are not zero).
    same = np.all(x == x[0], axis=0)
    mean = np.where(same, x[0], x.mean(0))
    out = {"mean": _plain(mean), "halfwidth": None, "values": [_plain(v) for v in x]}
    if n > 1:
        sd = np.where(same, 0.0, x.std(0, ddof=1))
        from scipy import stats  # here, not at import: scipy.stats takes ~0.7 s to import

        halfwidth = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)
        out["halfwidth"] = _plain(halfwidth)
    if head_to_head:
        if n > 1:
            differs = np.abs(mean - 0.5) > halfwidth + _ROUNDOFF  # NaN compares False
            out["differs_from_half"] = differs.tolist()
        else:
            out["differs_from_half"] = None  # no interval from one seed
    return out


def _plain(a: np.ndarray):
    """An array as nested lists of Python floats, with None for NaN and infinities."""
    if a.ndim == 0:
        value = float(a)
        return value if math.isfinite(value) else None
    return [_plain(row) for row in a]


def _cell(stat, i: int, j: int | None, digits: int) -> str:
    """``mean ± halfwidth`` of entry i (or [i][j]) of an aggregated leaf, marked ``*`` where a
    head-to-head interval excludes 1/2."""
    pick = (lambda m: m[i]) if j is None else (lambda m: m[i][j])
    mean = pick(stat["mean"])
    if mean is None:
        return "n/a"
    text = fixed(mean, digits)
    if stat["halfwidth"] is not None and pick(stat["halfwidth"]) is not None:
        text += f" ± {fixed(pick(stat['halfwidth']), digits)}"
    if j is not None and stat.get("differs_from_half") and pick(stat["differs_from_half"]):
        text += " *"
    return text


def _stat(aggregated: dict, key: str) -> dict | None:
    value = aggregated.get(key)
    return value if isinstance(value, dict) and "mean" in value else None


def table(aggregated: dict) -> str:
    """A markdown table of ``aggregate``'s result, one row per method: duality gap, KL to the
    reference, win rate against the reference and (if it is a method) against nash_md, raw and
    in the regularized game; ``*`` where that interval excludes 1/2. Then the judge's floor."""
    methods = aggregated.get("methods")
    if not methods:
        return "(no methods: nothing to tabulate)"
    ref = methods.index(aggregated.get("reference_name", methods[0]))
    columns = [  # (header, key, column of a matrix or None, digits)
        ("duality gap", "duality_gap", None, 4),
        ("exploitability (τ = 0)", "exploitability", None, 4),
        ("KL(π‖μ)", "kl_to_reference", None, 4),
        (f"beats {methods[ref]} (oracle)", "win_rate", ref, 3),
    ]
    if "nash_md" in methods:
        md = methods.index("nash_md")
        columns.append(("vs nash_md, raw", "win_rate", md, 3))
        columns.append(("vs nash_md, regularized", "win_rate_regularized", md, 3))
    columns = [(h, _stat(aggregated, k), j, d) for h, k, j, d in columns if _stat(aggregated, k)]
    lines = [
        "| method | " + " | ".join(h for h, *_ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for i, name in enumerate(methods):
        cells = [_cell(stat, i, j, d) for _, stat, j, d in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = aggregated.get("num_seeds", 1)
    if n > 1:
        lines.append(
            f"\nmean ± halfwidth of the 95% Student-t interval over {n} seeds;\n`*`: the "
            "interval excludes 1/2 (one of the two methods wins over seeds)."
        )
    else:
        lines.append("\none seed: no interval.")
    floor = _stat(aggregated, "judge_nash_duality_gap")
    if floor is not None and floor["mean"] is not None:
        text = fixed(floor["mean"], 4)
        if floor["halfwidth"] is not None:
            text += f" ± {fixed(floor['halfwidth'], 4)}"
        lines.append(
            f"judge floor (duality gap of the exact NE of the learned judge's game): {text}"
        )
    return "\n".join(lines)
