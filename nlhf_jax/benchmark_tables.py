"""The benchmarks' tables (``benchmarks/*.py`` -> ``runs/benchmarks/*.json`` -> ``results/``),
registered with the other renderers of ``nlhf_jax.tables``."""

from __future__ import annotations

import os

import numpy as np

from nlhf_jax.tables import COMPACT, _paragraph, _table, renderer, source_line

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
    load = r.get("environment", {}).get("machine", {}).get("load_average")
    if load:  # other work on the machine slows the seconds, not the memory
        text += f" Load average over the 15 minutes before writing: {load[2]:.1f}."
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


def _load(r: dict) -> str:
    """The machine's load averages at the start and the end of a timed run, when recorded."""
    machine = r.get("environment", {}).get("machine", {})
    start, end = machine.get("load_average_at_start"), machine.get("load_average")
    if not start or not end:
        return ""
    return f" 1-minute load average {start[0]:.2f} at the start, {end[0]:.2f} at the end."


def _trl_nash_md(name: str, r: dict) -> str:
    """Our Nash-MD-PG step and TRL's, examples/s: on a preset's random weights, or on a
    checkpoint's (``--checkpoint``, its name in the settings' ``preset``)."""
    s = r["settings"]
    rows = [
        [str(x["new_tokens"]), f"{x['ours_examples_per_s']:.2f}", f"{x['trl_examples_per_s']:.3f}",
         f"{x['ratio']:.1f}x", f"{x['ours_mixture_seconds']:.3f}",
         f"{x['trl_mixture_seconds']:.2f}", f"{x['mixture_ratio']:.1f}x"]
        for x in r["rows"]
    ]  # fmt: skip
    flags = f"--new {','.join(map(str, s['new']))}"
    shape = f"`{s['preset']}` shape"
    if s.get("checkpoint"):
        flags = f"--checkpoint {s['preset']} --batch {s['batch']} --prompt {s['prompt']} {flags}"
        shape = f"`{s['preset']}`'s weights and tokenizer on both sides"
    text = (
        f"{source_line(name, r)} `python benchmarks/trl_nash_md.py {flags} --steps {s['steps']} "
        f"--warmup {s['warmup']} --torch-threads {s['torch_threads']}`: {shape}, batch "
        f"{s['batch']}, prompt {s['prompt']}; the median of {s['steps']} timed steps after "
        f"{s['warmup']} untimed.{_load(r)}"
    )
    header = ["new tokens", "ours examples/s", "TRL examples/s", "ours / TRL",
              "ours mixture s", "TRL mixture s", "mixture ratio"]  # fmt: skip
    return f"{_paragraph(text)}\n\n{_table(header, rows)}"


@renderer("benchmark_trl_nash_md")
def render_benchmark_trl_nash_md(r: dict) -> str:
    """``python benchmarks/trl_nash_md.py``: our Nash-MD-PG step and TRL's on the ``toy``
    shape's random weights."""
    return _trl_nash_md("benchmark_trl_nash_md", r)


@renderer("trl_nash_md_smollm2")
def render_trl_nash_md_smollm2(r: dict) -> str:
    """``python benchmarks/trl_nash_md.py --checkpoint SmolLM2...gguf``: the same on real
    weights, one judge for both sides."""
    return _trl_nash_md("trl_nash_md_smollm2", r)


@renderer("benchmark_tunix_sampler")
def render_benchmark_tunix_sampler(r: dict) -> str:
    """``benchmarks/tunix_sampler.py``: our policy sampler beside Tunix's, tokens/s."""
    s = r["settings"]
    rows = [
        [x["sampler"], f"{x['generate_tok_s']:,.1f}", f"{x['generate_s']:.2f}",
         f"{x['decode_tok_s']:,.1f}"]
        for x in r["rows"]
    ]  # fmt: skip
    ratio, same = r["ratio_ours_over_tunix"], r["agreement"]
    text = (
        f"{source_line('benchmark_tunix_sampler', r)} `benchmarks/tunix_sampler.py --shape "
        f"{s['shape']} --batch {s['batch']} --prompt {s['prompt']} --new {s['new']} --repeats "
        f"{s['repeats']}` ({s['dtype']}, the median of {s['repeats']} timed calls after a "
        f"warm-up): ours / Tunix {ratio['generate_tok_s']:.2f} for the whole generation, "
        f"{ratio['decode_tok_s']:.2f} for decoding alone; greedy tokens equal in "
        f"{same['same_tokens']:.0%} of positions ({same['distinct_per_row']:.0f} distinct tokens a "
        f"row).{_load(r)}"
    )
    header = ["sampler", "generate tok/s", "generate s", "decode tok/s"]
    return f"{_paragraph(text)}\n\n{_table(header, rows)}"


_TOKENIZE_PARTS = {
    "build_text": "text dataset written, no tokenizing (`build_text`)",
    "pipeline_text": "pipeline tokenizing record by record, per epoch (`pipeline_text`)",
    "encode_only": "read + render + tokenize, batched (`encode_only`)",
    "build_tokenized": "tokenized dataset built, raw text (`build_tokenized`)",
    "build_tokenized_chat": "tokenized dataset built, chat template (`build_tokenized_chat`)",
    "pipeline_tokenized": "one epoch of batches from it (`pipeline_tokenized`)",
}


@renderer("benchmark_tokenize")
def render_benchmark_tokenize(r: dict) -> str:
    """``python benchmarks/tokenize_files.py``: rows/s of each part of reading a pair file."""
    s, f = r["settings"], r["figures"]
    rows = [
        [label, f"{f[k]['rows']:,}", f"{f[k]['seconds']:.1f}", f"{f[k]['rows_per_s']:,.0f}"]
        for k, label in _TOKENIZE_PARTS.items()
        if k in f
    ]
    est, tokens = r["hh_train_estimate_s"], r["tokens"]
    text = (
        f"{source_line('benchmark_tokenize', r)} `python benchmarks/tokenize_files.py --rows "
        f"{s['rows']}`: HH-like rows, one timed pass each; tokens per row (sampled, chat "
        f"template): prompt p50 {tokens['prompt']['p50']:.0f}, response p50 "
        f"{tokens['response_a']['p50']:.0f}. At these rates HH-RLHF's 160k training rows take "
        f"{est['build_tokenized_chat']:.0f} s to build once, then "
        f"{est['pipeline_tokenized_per_epoch']:.0f} s an epoch, against "
        f"{est['pipeline_text_per_epoch']:.0f} s an epoch tokenized in the pipeline."
    )
    header = [f"{s['rows']:,} HH-like rows", "rows", "seconds", "rows/s"]
    return f"{_paragraph(text)}\n\n{_table(header, rows)}"


# --- python benchmarks/text_long_responses.py -----------------------------------------------


@renderer("text_long_responses")
def render_text_long_responses(r: dict) -> str:
    """One row per seed of Nash-MD at configs/text.py's defaults from an early-stopped SFT:
    largest and last KL against the guard's limit, and the responses' lengths."""

    def lengths(s: dict) -> str:
        return f"{s['mean_tokens']:.1f} / {100 * s['at_limit']:.0f}%"

    rows = []
    for run in r["runs"]:
        outcome = "stopped by the guard" if run["exit_code"] else f"{run['steps']} steps"
        rows.append(
            [
                str(run["seed"]),
                outcome,
                f"{run['kl_max']:.2f} (step {run['kl_max_step']})",
                f"{run['kl_last']:.2f}",
                f"{run['response_len_first']:.1f} -> {run['response_len_last']:.1f}",
                lengths(run["samples"]) if "samples" in run else "",
            ]
        )
    first = r["runs"][0]
    text = (
        f"{source_line('text_long_responses', r)} `configs/text.py:nash_md` as it is (learning "
        f"rate {first['learning_rate']:g}, {first['num_steps']} steps, tau {first['tau']:g}, "
        f"beta {first['beta']:g}, responses up to {first['max_response_len']} tokens, guard "
        f"`max_kl` {first['max_kl_limit']:g}) from an SFT run stopped after "
        f"{r['sft_steps']} steps, whose samples are {lengths(r['sft_samples'])} (mean tokens / "
        "cut at the limit), against the example's preference model. KL is the logged "
        "`objective/kl` of every step (nats per response); response length is the logged "
        "`objective/response_len` at the first and last step; samples: 4 per evaluation prompt "
        f"at {first['max_response_len']} new tokens."
    )
    header = ["seed", "run", "largest KL", "last KL", "response length", "samples"]
    return "\n".join([_paragraph(text), "", _table(header, rows)])


# --- gguf_smollm2, gguf_gemma3: python benchmarks/gguf_real.py -> runs/benchmarks/gguf_*.json --


@renderer("gguf_smollm2")
def render_gguf_smollm2(r: dict) -> str:
    """``python benchmarks/gguf_real.py``: a real GGUF through our loader and transformers'."""
    return _render_gguf("gguf_smollm2", r)


@renderer("gguf_gemma3")
def render_gguf_gemma3(r: dict) -> str:
    """``python benchmarks/gguf_real.py --gguf GEMMA3 ... --judge-pairs``: the same checks,
    the file's digest, and the model as a causal-LM judge of HH-RLHF pairs."""
    return _render_gguf("gguf_gemma3", r)


def _render_gguf(name: str, r: dict) -> str:
    c = r["config"]
    prompts = (
        "chat prompts rendered with the file's template"
        if r.get("chat_template", True)
        else "prompts as plain text (the file has no chat template: a base model)"
    )
    text = (
        f"{source_line(name, r)} `{r['gguf']}` ({c['num_layers']} layers, d "
        f"{c['d_model']}, vocabulary {c['vocab_size']:,}), {r['prompts']} {prompts}, up to "
        f"{r['new_tokens']} greedy tokens each (ours: the KV-cached `PolicySampler`; "
        "transformers: `generate(do_sample=False)`), both stopping at EOS."
    )
    rows = [
        ["tokenizer ids equal to transformers'", "yes" if r["tokenizer_ids_equal"] else "no"],
        [
            "largest logit difference (float32)",
            f"{r['max_abs_logit_difference']:.1e} (largest logit {r['max_abs_logit']:.1f})",
        ],
        ["argmax agreement on the prompts", f"{r['argmax_agreement']:.0%}"],
        ["greedy responses token for token equal", f"{r['greedy_equal']} of {r['prompts']}"],
        [
            "load time, ours / transformers'",
            f"{r['load_seconds']['ours']:.1f} s / {r['load_seconds']['transformers']:.1f} s",
        ],
    ]
    if r.get("sha256_expected"):
        same = r["sha256"] == r["sha256_expected"]
        rows.append(
            [
                "SHA-256 as its SHA256SUMS lists",
                f"{'yes' if same else 'NO'} ({r['sha256'][:12]}...)",
            ]
        )
    j = r.get("judge")
    if j:
        rows.append(
            [
                f"as a causal-LM judge: agreement with the labels of {j['n']} pairs "
                f"(`{os.path.basename(j['pairs'])}`, from row {j['first'].rsplit(':', 1)[-1]})",
                f"{j['agreement']:.1%} +- {j['agreement_stderr']:.1%} (s.e.); mean P(preferred) "
                f"{j['mean_p_preferred']:.3f}, log loss {j['log_loss']:.3f} ({j['seconds']:.0f} s)",
            ]
        )
    samples = [[x["prompt"], x["ours"].replace("\n", " ")[:160]] for x in r["rows"][:3]]
    return "\n".join(
        [
            _paragraph(text),
            "",
            _table(["check", "result"], rows),
            "",
            _table(["prompt", "greedy response (ours; the first 160 characters)"], samples),
        ]
    )


# --- real_size_smollm2: python benchmarks/real_size.py --checkpoint SmolLM2 ... --append -------


@renderer("real_size_smollm2")
def render_real_size_smollm2(r: dict) -> str:
    """Each stage of a real checkpoint at the shapes it was measured, remat none beside full."""
    gib = 2**30
    names = {"sft": "SFT", "pm": "preference model", "nash": "Nash-MD-PG, full",
             "nash_lora": "Nash-MD-PG, LoRA"}  # fmt: skip
    rows = []
    for x in sorted(r["rows"], key=lambda x: (list(names).index(x["stage"]), x["remat"])):
        if x["stage"] == "pm":
            shape = f"{x['batch']} x ({x['prompt']} + 2 x {x['response'] // 2})"
        elif x["stage"] == "sft":
            shape = f"{x['batch']} x ({x['prompt']} + {x['response']})"
        else:
            shape = f"{x['batch']} x ({x['prompt']} + {x['response']} new)"
        rank = f" (rank {x['lora_rank']})" if x.get("lora_rank") else ""
        frac = x.get("fraction_of_peak")
        rows.append([
            names[x["stage"]] + rank, shape, x["remat"], f"{x['peak_rss_bytes'] / gib:.2f}",
            f"{x['seconds_per_step']:.1f}", "n/a" if frac is None else f"{frac:.2f}",
        ])  # fmt: skip
    first = r["rows"][0]
    text = " ".join([
        f"{source_line('real_size_smollm2', r)} `python benchmarks/real_size.py --checkpoint",
        f"{r['shape']} --stages STAGE --remat full,none --append` at each stage's shape",
        f"({first['parameters']:,} parameters, float32, random token batches): each row in a",
        "process of its own; peak RSS is the process's high-water mark (loading and compiling",
        "included); s/step: the median of the steps after the first; FLOP rate: the step's model",
        "FLOPs counted from its shapes over its time, against a jitted float32 matmul of the",
        "step's largest shapes in the same process. Nash-MD-PG's judge is a 2-layer preference",
        "model (under 1% of the step). The recomputation of remat full is not counted as model",
        "FLOPs.",
    ])  # fmt: skip
    header = ["stage", "batch x tokens", "remat", "peak RSS GiB", "s/step", "of peak FLOP/s"]
    return f"{_paragraph(text)}\n\n{_table(header, rows)}"


# --- real_recipe: python benchmarks/real_recipe.py -> runs/benchmarks/real_recipe.json ---------


def _compact_real_recipe(r: dict) -> dict:
    """The recipe's figures without the per-seed example texts (greedy ones stay)."""
    drop = lambda e: {k: v for k, v in e.items() if k not in ("examples", "environment")}
    out = dict(r)
    out["seeds"] = {s: drop(e) for s, e in r["seeds"].items()}
    out["once"] = drop(r["once"]) if r.get("once") else None
    out["aggregated"] = {k: v for k, v in r["aggregated"].items() if k not in ("examples",)}
    return out


COMPACT["real_recipe"] = _compact_real_recipe

_POLICY_NAMES = {"nash_md": "Nash-MD-PG", "rlhf": "RLHF", "online_ipo": "online IPO",
                 "inpo": "INPO", "checkpoint": "the start", "start": "the start"}  # fmt: skip


def _vs_start(per_seed: list[dict], name: str, judge: str) -> str:
    """Win rate of ``name`` against the start under ``judge``: each seed's ± its standard error
    over prompts, and with several seeds their mean ± the 95% interval over seeds."""
    values = []
    for e in per_seed:
        i, j = e["methods"].index(name), e["methods"].index(e["reference_name"])
        values.append((e[f"win_rate/{judge}"][i][j], e[f"win_rate_stderr/{judge}"][i][j]))
    each = ", ".join(f"{m:.3f} ± {s:.3f}" for m, s in values)
    if len(values) == 1:
        return each
    from nlhf_jax.evaluate.seeds import _interval  # the seeds table's 95% t-interval

    over_seeds = _interval(np.asarray([m for m, _ in values]), head_to_head=False)
    return f"**{over_seeds['mean']:.3f} ± {over_seeds['halfwidth']:.3f}** ({each})"


def _policies(r: dict, seeds: list[dict]) -> list[tuple[str, list[dict]]]:
    """(policy, its evaluations): the methods of every seed, then those run once, if any."""
    every = [m for m in seeds[0]["methods"] if m != seeds[0]["reference_name"]]
    once = r.get("once")
    extra = [] if not once else [m for m in once["methods"] if m != once["reference_name"]]
    return [(m, seeds) for m in every] + [(m, [once]) for m in extra]


def _per_seed_mean(per_seed: list[dict], name: str, key: str) -> str:
    vals = [e[key][e["methods"].index(name)] for e in per_seed]
    return " / ".join(f"{v:.3f}" if key.startswith("kl") else f"{v:.1f}" for v in vals)


@renderer("real_recipe")
def render_real_recipe(r: dict) -> str:
    """The real recipe: judges' held-out accuracy, each policy against the start under the
    held-out judge B and the training judge A, KL and length, greedy responses side by side."""
    s, parts = r["settings"], r["parts"]
    seeds = [r["seeds"][k] for k in sorted(r["seeds"], key=int)]
    minutes = r["total_seconds"] / 60
    text = " ".join([
        f"{source_line('real_recipe', r)} `python benchmarks/real_recipe.py --checkpoint",
        f"{os.path.basename(s['checkpoint'])} --pairs {os.path.basename(s['pairs'])}`:",
        f"{minutes:.0f} minutes of stages on this machine. HH-RLHF harmless-base test split",
        f"({r['rows']:,} rows) parted by position: half A `[:40%]` (judge A, the reward model,",
        "the policies' prompts), half B `[40%:80%]` (judge B, the held-out evaluator), then",
        f"{s['judge_eval']} held-out pairs from 80% for the judges' accuracy and",
        f"{s['eval_prompts']} evaluation prompts from 90%. Lengths: prompts {s['prompt_len']}",
        f"tokens (the chat template's, left-truncated), responses {s['response_len']}. Judges:",
        f"{s['judge_steps']} steps of batch {s['batch']} from the checkpoint's backbone at the",
        "pretrained defaults. Policies: from the GGUF with no SFT stage,",
        f"{s['policy_steps']} steps of batch {s['batch']} at learning rate {s['policy_lr']:g}",
        "(full fine-tuning" + (f", LoRA rank {s['lora_rank']}" if s["lora_rank"] else "") + ")",
        "against judge A (RLHF: the reward model).",
    ])  # fmt: skip
    judges = []
    names = {"judge_a": ("judge A (preference model)", parts["half_a"]),
             "judge_b": ("judge B (preference model)", parts["half_b"]),
             "rm_a": ("RLHF's reward model", parts["half_a"])}  # fmt: skip
    for key, (label, trained) in names.items():
        row = r["judges"][key]
        acc = next(v for k, v in row.items() if k.endswith("/accuracy"))
        loss = next(v for k, v in row.items() if k.endswith("/log_loss"))
        judges.append([label, f"`{os.path.basename(trained)}`", f"{acc:.3f}", f"{loss:.3f}"])
    policy_rows = []
    for name, per_seed in _policies(r, seeds):
        policy_rows.append([
            _POLICY_NAMES[name], str(len(per_seed)), _vs_start(per_seed, name, "judge_b"),
            _vs_start(per_seed, name, "judge_a"), _per_seed_mean(per_seed, name, "kl_to_reference"),
            _per_seed_mean(per_seed, name, "mean_response_tokens"),
        ])  # fmt: skip
    start = seeds[0]["methods"].index(seeds[0]["reference_name"])
    policy_rows.append([
        "the start", "", "0.500", "0.500", "0",
        _per_seed_mean(seeds, seeds[0]["methods"][start], "mean_response_tokens"),
    ])  # fmt: skip
    greedy = r["greedy"]
    shown = [n for n in ("start", "nash_md", "rlhf") if n in greedy]
    side = []
    for i, row in enumerate(greedy["start"][:2]):
        prompt = row["prompt"].strip().replace("\n", " ")[-120:]
        side.append([f"…{prompt}"] + [greedy[n][i]["response"].replace("\n", " ")[:140]
                                      for n in shown])  # fmt: skip
    header = ["policy", "seeds", "win rate vs the start, judge B (held out)",
              "vs the start, judge A (trained on)", "KL to the start, per seed",
              "response tokens"]  # fmt: skip
    note = (
        f"Win rates: the policy's responses against the start's on the {s['eval_prompts']} "
        f"evaluation prompts, {s['samples']} samples each, ± the standard error over prompts for "
        "each seed; in bold the mean over seeds ± its 95% t-interval. KL: sampled, in nats per "
        "response."
    )
    return "\n".join([
        _paragraph(text), "",
        _table(["judge", "trained on", "held-out accuracy", "log loss"], judges), "",
        _table(header, policy_rows), "", _paragraph(note), "",
        _table(["prompt (its end)", *(f"{_POLICY_NAMES.get(n, n)}, greedy (seed 0)"
                                      for n in shown)], side),
    ])  # fmt: skip


@renderer("real_recipe_summary")
def render_real_recipe_summary(r: dict) -> str:
    """The README's lines of the real recipe: each policy against the start under the held-out
    judge B, its KL to the start, and the judges' held-out accuracy."""
    seeds = [r["seeds"][k] for k in sorted(r["seeds"], key=int)]
    acc = {k: next(v for n, v in row.items() if n.endswith("/accuracy"))
           for k, row in r["judges"].items()}  # fmt: skip
    rows = []
    for name, per_seed in _policies(r, seeds):
        kl = [e["kl_to_reference"][e["methods"].index(name)] for e in per_seed]
        rows.append([_POLICY_NAMES[name], str(len(per_seed)),
                     _vs_start(per_seed, name, "judge_b"), f"{sum(kl) / len(kl):.3f}"])  # fmt: skip
    text = (
        f"{source_line('real_recipe', r)} SmolLM2-135M-Instruct from its GGUF, trained on half A "
        f"of HH-RLHF harmless-base against judge A (held-out accuracy {acc['judge_a']:.3f}), "
        f"scored against the start by judge B, trained on half B (accuracy {acc['judge_b']:.3f})."
    )
    header = ["policy", "seeds", "win rate vs the start, held-out judge B", "mean KL to the start"]
    return f"{_paragraph(text)}\n\n{_table(header, rows)}"
