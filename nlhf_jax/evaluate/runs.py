"""Opening the workdirs of ``python -m nlhf_jax.train`` for evaluation: policies and judges.

A workdir's ``run.json`` says what it holds (``checkpoint.read_identity``): the method, the model
config and, for policy runs, the synthetic task's settings. Every check here fails with the run's
name and workdir in the message: not a run, not a policy, not a judge, another task.
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from nlhf_jax.judges import ModelJudge
from nlhf_jax.models import (
    PreferenceModel,
    RewardModel,
    RopeScaling,
    Transformer,
    TransformerConfig,
)
from nlhf_jax.tasks.synthetic import SyntheticTask
from nlhf_jax.train.checkpoint import load_params, read_identity

# Runs that hold a judge rather than a policy.
JUDGE_METHODS = ("preference_model", "reward_model")


@dataclasses.dataclass
class Policy:
    """A trained policy: its run's identity, model and latest parameters."""

    name: str
    workdir: str
    identity: dict
    config: TransformerConfig
    graphdef: nnx.GraphDef
    params: nnx.State


def transformer_config(fields: dict) -> TransformerConfig:
    """The ``TransformerConfig`` of a run.json ``model`` dict (its ``rope_scaling`` is a dict)."""
    fields = dict(fields)
    if fields.get("rope_scaling") is not None:
        fields["rope_scaling"] = RopeScaling(**fields["rope_scaling"])
    return TransformerConfig(**fields)


def _identity(name: str, workdir: str) -> dict:
    try:
        return read_identity(workdir)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"run {name!r}: {e}") from None


def policy_identity(name: str, workdir: str) -> dict:
    """The run.json of a policy run; raises if it is not a run, or not a policy's."""
    identity = _identity(name, workdir)
    method = identity.get("method")
    if method in JUDGE_METHODS or "task" not in identity:
        raise ValueError(
            f"run {name!r} ({workdir}) is a {method!r} run, not a policy run on the synthetic "
            "task; pass judges with --judge"
        )
    return identity


def load_policies(runs: dict[str, str]) -> tuple[list[Policy], SyntheticTask]:
    """The latest parameters of policy runs (SFT or any online method) ``{name: workdir}``, and
    their common task. Every run.json is checked (a policy, one task) before any checkpoint is
    read."""
    identities = {name: policy_identity(name, wd) for name, wd in runs.items()}
    (first, task_settings), *rest = ((n, i["task"]) for n, i in identities.items())
    others = [f"{n!r} ({t})" for n, t in rest if t != task_settings]
    if others:
        raise ValueError(
            f"the runs are on different tasks: {first!r} on {task_settings}, "
            f"but {', '.join(others)}"
        )
    task = SyntheticTask(**task_settings)
    policies = []
    for name, identity in identities.items():
        cfg = transformer_config(identity["model"])
        if cfg.vocab_size != task.vocab_size:
            raise ValueError(
                f"run {name!r} has vocabulary {cfg.vocab_size}, the task {task.vocab_size}"
            )
        graphdef, like = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)))
        params = load_params(runs[name], like)
        policies.append(Policy(name, runs[name], identity, cfg, graphdef, params))
    return policies, task


def load_judge(
    workdir: str, task: SyntheticTask, kinds: tuple[str, ...] = JUDGE_METHODS
) -> ModelJudge:
    """A run of one of ``kinds`` (``preference_model``, ``reward_model``) as a judge of the
    task's responses.

    A judge trained on synthetic pairs of another task (``data.task`` in its run.json) is an
    error; one trained on other data must at least share the task's vocabulary.
    """
    identity = _identity("judge", workdir)
    method = identity.get("method")
    if method not in kinds:
        raise ValueError(f"{workdir} is a {method!r} run, not a {' or '.join(kinds)} run")
    trained_on = identity.get("data", {}).get("task")
    if trained_on is not None and trained_on != dataclasses.asdict(task):
        raise ValueError(
            f"--judge {workdir} was trained on pairs of another task: {trained_on}, "
            f"the policies' is {dataclasses.asdict(task)}"
        )
    cfg = transformer_config(identity["model"])
    if cfg.vocab_size != task.vocab_size:
        raise ValueError(
            f"--judge {workdir} has vocabulary {cfg.vocab_size}, the task {task.vocab_size}"
        )
    if method == "preference_model":
        model = PreferenceModel(cfg, sep_id=identity["sep_id"], rngs=nnx.Rngs(0))
    else:
        model = RewardModel(cfg, rngs=nnx.Rngs(0))
    graphdef, like = nnx.split(model)
    return ModelJudge(graphdef, load_params(workdir, like))


def parse_runs(specs: list[str]) -> dict[str, str]:
    """``["NAME=WORKDIR", ...]`` -> ``{name: workdir}`` in order; raises on a malformed entry or
    a name given twice."""
    runs: dict[str, str] = {}
    for spec in specs:
        name, sep, workdir = spec.partition("=")
        if not sep or not name or not workdir:
            raise ValueError(f"{spec!r}: expected NAME=WORKDIR")
        if name in runs:
            raise ValueError(f"duplicate run name {name!r} ({runs[name]} and {workdir})")
        runs[name] = workdir
    return runs
