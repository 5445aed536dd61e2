"""Evaluation on a prompts file, from samples: what is measurable when responses cannot be
enumerated (any text task).

    python -m nlhf_jax.evaluate --prompts eval_prompts.jsonl --reference runs/sft \
        --judge runs/pm [--judge task.json] --samples 16 --out runs/eval \
        nash_md=runs/nash_md rlhf=runs/rlhf

Every policy (the reference first) draws ``N`` responses to every prompt at temperature 1; for
each judge the k-th response of policy i is judged against the k-th of policy j, which gives the
win-rate matrix with stratified standard errors (``sampled_win_rates``). KL(pi || mu) is
estimated from the same samples as the mean of ``log pi(y|x) - log mu(y|x)``. A judge is a
``preference_model`` (or ``reward_model``) run, a Hugging Face checkpoint directory (a reward
model or a causal LM, ``--judge-dtype``, ``--judge-template``), ``module:function`` on the
decoded texts, or a text task's ``task.json`` for its exact programmatic judge
(``nlhf_jax.tasks.text``): every kind of ``nlhf_jax.judges``. The runs share the reference's
tokenizer, which every text run keeps in its workdir.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from nlhf_jax import judges, provenance
from nlhf_jax.checkpoint import load_policy, policy_identity, run_tokenizer
from nlhf_jax.console import fixed
from nlhf_jax.data import ChatOptions
from nlhf_jax.errors import UserError
from nlhf_jax.evaluate import report
from nlhf_jax.evaluate.sampled import sample_policy, sampled_kl, sampled_win_rates
from nlhf_jax.sampling import SamplingConfig
from nlhf_jax.sources import encode_prompt_file


def load_judges(
    specs: list[str], tokenizer, vocab_size: int, dtype: str = "", template: str = ""
) -> dict[str, object]:
    """``{name: judge}`` of ``nlhf_jax.judges.load`` specs: a judge run's workdir or a Hugging
    Face checkpoint directory (named by its directory), ``module:function`` (by the function)
    or a text task's ``task.json`` (named "text_task"). ``dtype`` and ``template`` apply to
    the checkpoint judges (a causal LM's template)."""
    out = {}
    for spec in specs:
        if spec.endswith(".json"):
            name = "text_task"
        elif judges.is_function(spec):
            name = spec.rpartition(":")[2]
        else:
            name = os.path.basename(os.path.normpath(spec))
        out[name] = judges.load(
            spec, tokenizer=tokenizer, vocab_size=vocab_size, dtype=dtype, template=template
        )
    return out


def evaluate_on_prompts(
    reference: str,
    runs: dict[str, str],
    prompts_file: str,
    judges: list[str],
    out: str | None = None,
    *,
    samples: int = 16,
    max_new_tokens: int = 64,
    max_prompt_len: int = 256,
    seed: int = 0,
    quiet: bool = False,
    judge_dtype: str = "",
    judge_template: str = "",
) -> dict:
    """Sampled head-to-head evaluation of text policy runs; returns what results.json holds.

    Args:
      reference: the SFT run (mu); also a method of the matrix (named by ``runs`` if it names
        the same workdir, else "sft").
      runs: ``{name: workdir}`` of policy runs.
      prompts_file: JSONL/Parquet with a ``prompt`` field.
      judges: judge runs' workdirs or text tasks' task.json files (at least one).
      out: a directory for results.json and win_rate.png, or None.
      samples: responses per prompt and policy (at least 2).
      max_new_tokens: the length limit of sampled responses.
      max_prompt_len: prompts are truncated from the left to this.
      seed: of the samples.
      quiet: print nothing.
      judge_dtype: the checkpoint judges' dtype (empty: float32).
      judge_template: a causal LM judge's prompt template file (empty: its default).
    """
    from nlhf_jax.evaluate.head_to_head import _named_runs

    if samples < 2:
        raise UserError(f"--samples {samples}: at least 2 responses per prompt")
    if not judges:
        raise UserError(
            "name at least one --judge: a preference_model run, a Hugging Face checkpoint, "
            "module:function or a task.json"
        )
    named = _named_runs(reference, runs, policy_identity("reference", reference)["method"])
    tokenizer = run_tokenizer(reference)
    if tokenizer is None:
        raise UserError(
            f"{reference} keeps no tokenizer: it is not a text run (evaluate synthetic-task "
            "runs without --prompts)"
        )
    policies = [load_policy(wd, name) for name, wd in named.items()]
    vocab = {p.config.vocab_size for p in policies}
    if len(vocab) > 1:
        raise UserError(f"the runs have different vocabularies: {sorted(vocab)}")
    judge_fns = load_judges(judges, tokenizer, vocab.pop(), judge_dtype, judge_template)
    records, prompts, prompt_mask, truncated = encode_prompt_file(
        prompts_file,
        tokenizer,
        max_prompt_len=max_prompt_len,
        chat_template=bool(policies[0].identity.get("chat_template", False)),
        chat=ChatOptions(**policies[0].identity.get("chat", {})),
    )
    settings = SamplingConfig(
        max_new_tokens=max_new_tokens,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
    )
    key = jax.random.key(seed)
    drawn = [
        sample_policy(p, prompts, prompt_mask, samples, jax.random.fold_in(key, i), settings)
        for i, p in enumerate(policies)
    ]
    methods = [p.name for p in policies]
    results = {"methods": methods, "reference_name": methods[0], "judges": list(judge_fns)}
    kl = [sampled_kl(policies[0], prompts, prompt_mask, *d) for d in drawn]
    results["kl_to_reference"] = [k[0] for k in kl]
    results["kl_to_reference_stderr"] = [k[1] for k in kl]
    results["mean_response_tokens"] = [float(d[1].sum(-1).mean()) for d in drawn]
    results["ended_with_eos"] = [
        float(((d[0] == tokenizer.eos_token_id) & d[1]).any(-1).mean()) for d in drawn
    ]
    for name, judge in judge_fns.items():
        triples = [(tokens, mask, mask.any(-1)) for tokens, mask, _ in drawn]
        mean, stderr = sampled_win_rates(judge, prompts, triples, methods, prompt_mask)
        results[f"win_rate/{name}"] = mean.tolist()
        results[f"win_rate_stderr/{name}"] = stderr.tolist()
    results["examples"] = [
        {
            "prompt": records[x]["prompt"],
            **{
                m: tokenizer.decode(d[0][x, 0][d[1][x, 0]], skip_special_tokens=True)
                for m, d in zip(methods, drawn, strict=True)
            },
        }
        for x in range(min(3, len(records)))
    ]
    results["config"] = {
        "reference": reference,
        "runs": named,
        "prompts_file": prompts_file,
        "num_prompts": len(records),
        "truncated_prompts": truncated,
        "judges": judges,
        "samples": samples,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    results["environment"] = provenance.environment(seed=seed)
    if not quiet:
        _print(results)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        report.write_json(os.path.join(out, "results.json"), results)
        panels = {f"{n} (N={samples})": np.array(results[f"win_rate/{n}"]) for n in judge_fns}
        report.plot_win_rates(os.path.join(out, "win_rate.png"), methods, panels)
    return results


def _print(results: dict) -> None:
    methods, c = results["methods"], results["config"]
    print(f"{c['num_prompts']} prompts x {c['samples']} samples per policy")
    for name in results["judges"]:
        title = f"win rate, sampled ± standard error, judge {name} (row beats column):"
        print(
            "\n"
            + report.matrix_table(
                methods, results[f"win_rate/{name}"], title, results[f"win_rate_stderr/{name}"]
            )
        )
    width = max(10, *(len(m) + 2 for m in methods))
    print(f"\n{'method':<{width}}{'KL(pi||mu)':>20}{'tokens':>10}{'ended':>10}")
    for i, m in enumerate(methods):
        kl, se = results["kl_to_reference"][i], results["kl_to_reference_stderr"][i]
        kl = f"{fixed(kl)}±{fixed(se)}"
        print(
            f"{m:<{width}}{kl:>20}{results['mean_response_tokens'][i]:>10.1f}"
            f"{results['ended_with_eos'][i]:>10.2f}"
        )
    for row in results["examples"]:
        print(f"\nprompt: {row['prompt']!r}")
        for m in methods:
            print(f"  {m}: {row[m]!r}")
