"""The trainers ``python -m nlhf_jax.train`` knows: ``build(config, workdir) -> Trainer``."""

from __future__ import annotations

from nlhf_jax.errors import UserError
from nlhf_jax.train import defaults, online, pairwise, sft


def build(config, workdir: str):
    """The trainer of ``config.method``: SFT, a preference or reward model, or a registered
    online method (``nlhf_jax.train.online.METHODS``). Start-dependent defaults left unset are
    filled first (``defaults.resolve``)."""
    defaults.resolve(config)
    if config.method == "sft":
        return sft.build_sft(config, workdir)
    if config.method in ("preference_model", "reward_model"):
        return pairwise.build(config, workdir)
    if config.method in online.METHODS:
        return online.build_online(config, workdir)
    known = ", ".join(["sft", "preference_model", "reward_model", *sorted(online.METHODS)])
    raise UserError(f"unknown method {config.method!r}; known methods: {known}")
