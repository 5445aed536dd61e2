"""The benchmarks' tables (``benchmarks/*.py`` -> ``runs/benchmarks/*.json`` -> ``results/``),
registered with the other renderers of ``nlhf_jax.tables``."""

from __future__ import annotations

from nlhf_jax.tables import _paragraph, _table, renderer, source_line

# --- benchmark_sampling: python benchmarks/sampling.py -> runs/benchmarks/sampling.json ------


@renderer("benchmark_train_step")
def render_benchmark_train_step(r: dict) -> str:
    """``python benchmarks/train_step.py``: training, decode and the whole Nash-MD-PG step."""
    s, dev = r["settings"], r["device"]
    mfu = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"
    rows = [
        [f"train forward + backward, seq {t['seq']}", str(t["batch"]),
         f"{t['tokens_per_s']:,.0f} tok/s", f"{t['flops_per_s'] / 1e12:.3f}", mfu(t["mfu"])]
        for t in r["train"]
    ]  # fmt: skip
    for d in r["decode"]:
        for kind in ("policy", "mixture"):
            rows.append(
                [f"{kind} decode, prompt {s['prompt']} + {d['new_tokens']} new", str(d["batch"]),
                 f"{d[kind]['tokens_per_s']:,.0f} tok/s", "", mfu(d[kind]["mbu"]) + " (MBU)"]
            )  # fmt: skip
    for n in r["nash"]:
        rows.append(
            [f"Nash-MD-PG step, prompt {n['prompt']} + {n['new_tokens']} new", str(n["batch"]),
             f"{n['pairs_per_s']:,.1f} pairs/s ({n['seconds']:.3f} s/step)",
             f"{n['flops_per_s'] / 1e12:.3f}", mfu(n["mfu"])]
        )  # fmt: skip
    text = (
        f"{source_line('benchmark_train_step', r)} Preset `{s['preset']}`, attention "
        f"`{s['attention']}`, remat `{s['remat']}`, on {dev['kind']}; the median of "
        f"{s['repeats']} timed calls after a warm-up. FLOPs: {r['formulas']['train_flops']}; "
        "MFU and MBU need the device's published peak (unknown for a CPU: n/a)."
    )
    table = _table(["part", "batch", "throughput", "TFLOP/s", "MFU"], rows)
    return "\n".join([_paragraph(text), "", table])


@renderer("benchmark_sampling")
def render_benchmark_sampling(r: dict) -> str:
    s = r["settings"]
    header = [
        "new tokens",
        "policy tok/s",
        "mixture tok/s",
        "uncached mixture tok/s",
        "mixture / policy",
        "mixture / uncached",
        "growing-prefix factor",
        "same tokens",
    ]
    rows = []
    for row in r["rows"]:
        pol, mix = row["policy_tok_s"], row["mixture_tok_s"]
        cells = [str(row["new_tokens"]), f"{pol:.0f}", f"{mix:.0f}"]
        if "uncached_tok_s" in row:
            unc = row["uncached_tok_s"]
            cells += [f"{unc:.0f}", f"{mix / pol:.2f}", f"{mix / unc:.1f}x"]
            cells += [f"{row['growing_prefix_factor']:.2f}", f"{row['same_tokens']:.0%}"]
        else:
            cells += ["skipped", f"{mix / pol:.2f}", "", "", ""]
        rows.append(cells)
    timed = "one timed call" if s["repeats"] == 1 else f"the median of {s['repeats']} timed calls"
    settings = (
        f"`{s['preset']}` preset, batch {s['batch']}, prompt {s['prompt']}, beta {s['beta']}; "
        f"{timed} after a warm-up; tokens/s of generated tokens "
        f"(`python benchmarks/sampling.py --new {s['new']} --repeats {s['repeats']}`)."
    )
    load = r.get("environment", {}).get("machine", {}).get("load_average")
    if load:  # a busy machine slows every column; say how busy it was
        settings += f" Load average over the 15 minutes before writing: {load[2]:.1f}."
    text = f"{source_line('benchmark_sampling', r)} {settings}"
    return f"{_paragraph(text)}\n\n{_table(header, rows)}"


@renderer("real_size")
def render_real_size(r: dict) -> str:
    """``python benchmarks/real_size.py``: each stage's peak RSS at both vocabularies."""
    return _real_size("real_size", r)


@renderer("real_size_tiny")
def render_real_size_tiny(r: dict) -> str:
    """``python benchmarks/real_size.py --shape tiny ...``: the same at the tiny shape."""
    return _real_size("real_size_tiny", r)


def _real_size(name: str, r: dict) -> str:
    gib = 2**30
    rows = []
    by = {(x["stage"], x["vocab"]): x for x in r["rows"]}
    vocabs = sorted({x["vocab"] for x in r["rows"]}, reverse=True)
    names = {
        "sft": "SFT",
        "pm": "preference model",
        "nash": "Nash-MD-PG, full fine-tuning",
        "nash_lora": "Nash-MD-PG, LoRA",
    }
    small = min(vocabs)
    counted = lambda x: x["state_bytes"] + x["frozen_bytes"]
    for stage, label in names.items():
        for vocab in vocabs:
            x = by.get((stage, vocab))
            if x is None:
                continue
            frac = x["fraction_of_peak"]
            rank = f" (rank {x['lora_rank']})" if x.get("lora_rank") else ""
            # The vocabulary's cost beyond what its parameters and Adam moments must hold: this
            # peak over the small vocabulary's peak plus the counted bytes that differ.
            base = by.get((stage, small))
            over = ""
            if base is not None and vocab != small:
                expected = base["peak_rss_bytes"] + counted(x) - counted(base)
                over = f"{x['peak_rss_bytes'] / expected:.2f}"
            rows.append([
                label + rank, f"{vocab:,}", f"{x['batch']} x {x['prompt']} + {x['response']}",
                f"{x['peak_rss_bytes'] / gib:.2f}", f"{counted(x) / gib:.2f}", over,
                f"{x['seconds_per_step']:.1f}", "n/a" if frac is None else f"{frac:.2f}",
            ])  # fmt: skip
    s = r["settings"]
    first = r["rows"][0]
    text = " ".join([
        f"{source_line(name, r)} `python benchmarks/real_size.py {_real_size_args(s)}`:",
        f"shape `{r['shape']}` ({first['parameters']:,} parameters at the first vocabulary),",
        f"random weights made by transformers, remat `{first.get('remat', 'none')}`; each row in",
        f"a process of its own; seconds per step: {_after_first(s['steps'])}; FLOP rate: the",
        "step's model FLOPs counted from its shapes (`model_flops` in the script) over its time,",
        "against a jitted float32 matmul of the step's largest shapes timed in the same process.",
        "Counted: the train state and frozen models",
        "from their shapes (a lower bound of the peak). vs small: the peak over the small",
        "vocabulary's peak plus the counted bytes that differ (1.00: the vocabulary costs only",
        "its parameters and Adam moments).",
    ])  # fmt: skip
    header = ["stage", "vocabulary", "batch x tokens", "peak RSS GiB", "counted GiB",
              "vs small", "s/step", "of peak FLOP/s"]  # fmt: skip
    return f"{_paragraph(text)}\n\n{_table(header, rows)}"


def _after_first(steps: int) -> str:
    if steps <= 1:
        return "the one step, compilation included"
    if steps == 2:
        return "the second step (the first compiles)"
    return f"the median of the {steps - 1} steps after the first (which compiles)"


def _real_size_args(s: dict) -> str:
    """The command-line options of a recorded ``real_size.py`` run that differ from its defaults."""
    defaults = {"shape": "qwen2.5-0.5b", "batch": 8, "prompt": 256, "response": 256, "new": 128,
                "steps": 3, "remat": "full", "stages": "sft,pm,nash,nash_lora",
                "vocab": "151936,512", "lora_rank": 16}  # fmt: skip
    return " ".join(
        f"--{k.replace('_', '-')} {s[k]}" for k, v in defaults.items() if k in s and s[k] != v
    )
