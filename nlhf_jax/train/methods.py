"""The methods ``python -m nlhf_jax.train`` knows: name -> ``build(config, workdir) -> Trainer``."""

from __future__ import annotations

from nlhf_jax.errors import UserError
from nlhf_jax.train import online, pairwise, policy

METHODS = {
    "preference_model": pairwise.build,
    "reward_model": pairwise.build,
    "sft": policy.build_sft,
    **dict.fromkeys(online.ONLINE_METHODS, online.build_online),
}


def build(config, workdir: str):
    if config.method not in METHODS:
        raise UserError(
            f"unknown method {config.method!r}; known methods: {', '.join(sorted(METHODS))}"
        )
    return METHODS[config.method](config, workdir)
