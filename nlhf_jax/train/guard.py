"""A divergence guard: host-side checks of each logged step's and each evaluation's metrics.

A run that blows up should stop at the step it did, naming the metric, before that state is
checkpointed (the loop checks before it saves), instead of finishing and checkpointing a
collapsed policy without a word. Three checks, each off when its limit is 0:

- every metric finite (loss, gradient norm, KL, ...): a NaN or an infinity anywhere;
- ``objective/kl`` (the sampled KL(pi || mu) of the online methods, nats per response) at most
  ``max_kl``;
- ``exact/invalid_mass`` (the policy's mass on malformed responses, at evaluations on the
  synthetic task): the run stops when its mass on well-formed responses has fallen below
  ``1 - max_invalid_mass`` times the starting policy's, i.e. when the invalid mass passes
  ``start + max_invalid_mass * (1 - start)`` (``max_invalid_mass`` itself for a clean start).

The invalid-mass check needs the start (the step-0 evaluation, read back from metrics.jsonl on
a resume): a run without one is not checked for it. Relative to the start, a policy that began
with much invalid mass (a short SFT run) is not stopped for a small rise. The defaults sit far
above every figure of the demo and far below a collapsed policy's (docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
import math

from nlhf_jax.errors import UserError


class Diverged(UserError):
    """The run tripped the guard; the message names the step, the metric and its value."""


@dataclasses.dataclass(frozen=True)
class DivergenceGuard:
    """Limits of the checks (0 turns a limit off).

    Attributes:
      finite: stop on a non-finite metric.
      max_kl: largest ``objective/kl`` allowed.
      max_invalid_mass: largest ``exact/invalid_mass`` allowed.
    """

    finite: bool = True
    max_kl: float = 10.0
    max_invalid_mass: float = 0.5

    def check(
        self,
        step: int,
        kind: str,
        metrics: dict,
        baseline: dict | None = None,
        saved: int | None = None,
    ) -> None:
        """Raises ``Diverged`` naming the step, the metric, the keys to change and what is on
        disk, or returns. ``baseline``: the starting policy's metrics (a limit below its value
        is raised to it); ``saved``: the latest checkpointed step (None: none yet)."""
        baseline = baseline or {}
        where = f"step {step} ({kind})"
        kept = (
            f"the latest checkpoint, step {saved}, holds the last good state"
            if saved is not None
            else "no checkpoint was saved"
        )
        if self.finite:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise Diverged(
                        f"the run diverged at {where}: {key} = {value}; {kept}. Lower "
                        "config.optimizer.learning_rate"
                    )
        limits = {"objective/kl": self.max_kl, "exact/invalid_mass": self.max_invalid_mass}
        for key, limit in limits.items():
            value = metrics.get(key)
            if key == "exact/invalid_mass":  # relative to the start (module docstring)
                if baseline.get(key) is None:
                    continue
                start = float(baseline[key])
                limit = limit and start + limit * (1.0 - start)
            if limit and value is not None and float(value) > limit:
                raise Diverged(
                    f"the run diverged at {where}: {key} = {float(value):.4g} > {limit:.4g} (the "
                    f"limit config.guard.{_config_key[key]}); {kept}. Lower "
                    f"config.optimizer.learning_rate, or raise config.guard.{_config_key[key]}"
                )


_config_key = {"objective/kl": "max_kl", "exact/invalid_mass": "max_invalid_mass"}


DEFAULT_GUARD = DivergenceGuard()
