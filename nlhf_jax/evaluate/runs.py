"""Opening the workdirs of ``python -m nlhf_jax.train`` for evaluation: policies and judges.

A workdir's ``run.json`` says what it holds (``checkpoint.read_identity``): the method, the model
config and, for policy runs, the synthetic task's settings. Every check here fails with the run's
name and workdir in the message: not a run, not a policy, not a judge, another task.
"""

from __future__ import annotations

from nlhf_jax.checkpoint import PolicyRun, load_policy, policy_identity
from nlhf_jax.errors import UserError
from nlhf_jax.tasks.synthetic import SyntheticTask


def load_policies(runs: dict[str, str]) -> tuple[list[PolicyRun], SyntheticTask]:
    """The latest parameters of policy runs on the synthetic task (SFT or any online method)
    ``{name: workdir}``, and their common task. Every run.json is checked (a policy, one task)
    before any checkpoint is read."""
    identities = {name: policy_identity(name, wd) for name, wd in runs.items()}
    missing = [f"{n!r} ({runs[n]})" for n, i in identities.items() if "task" not in i]
    if missing:
        raise UserError(
            f"runs {', '.join(missing)} are not on the synthetic task; evaluate them on a "
            "prompts file (--prompts)"
        )
    (first, task_settings), *rest = ((n, i["task"]) for n, i in identities.items())
    others = [f"{n!r} ({t})" for n, t in rest if t != task_settings]
    if others:
        raise UserError(
            f"the runs are on different tasks: {first!r} on {task_settings}, "
            f"but {', '.join(others)}"
        )
    task = SyntheticTask(**task_settings)
    policies = []
    for name in identities:
        policy = load_policy(runs[name], name)
        if policy.config.vocab_size != task.vocab_size:
            raise UserError(
                f"run {name!r} has vocabulary {policy.config.vocab_size}, the task "
                f"{task.vocab_size}"
            )
        policies.append(policy)
    return policies, task


def parse_runs(specs: list[str]) -> dict[str, str]:
    """``["NAME=WORKDIR", ...]`` -> ``{name: workdir}`` in order; raises on a malformed entry or
    a name given twice."""
    runs: dict[str, str] = {}
    for spec in specs:
        name, sep, workdir = spec.partition("=")
        if not sep or not name or not workdir:
            raise UserError(f"{spec!r}: expected NAME=WORKDIR")
        if name in runs:
            raise UserError(f"duplicate run name {name!r} ({runs[name]} and {workdir})")
        runs[name] = workdir
    return runs
