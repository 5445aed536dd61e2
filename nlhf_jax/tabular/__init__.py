"""Exact preference games on probability vectors: games, solvers, the NLHF family of algorithms,
and the lab that measures them against theory (``python -m nlhf_jax.tabular``)."""

from nlhf_jax.tabular.algorithms import (
    extragradient,
    fictitious_play,
    inpo,
    ipo_md,
    nash_md,
    nash_mirror_prox,
    online_ipo,
    online_mirror_descent,
    sppo,
)
from nlhf_jax.tabular.games import (
    bradley_terry,
    check_preference,
    contextual_games,
    nontransitive_dice,
    random_preference,
    random_reference,
    rock_paper_scissors,
    three_annotators,
    three_annotators_nash,
)
from nlhf_jax.tabular.lab import LabConfig, run_lab
from nlhf_jax.tabular.sampled import bt_rlhf, fit_bradley_terry, nash_md_pg, pg_gradient_estimate
from nlhf_jax.tabular.solvers import (
    best_response,
    duality_gap,
    fixed_point_residual,
    kl,
    nash_lp,
    regularized_nash,
)

__all__ = [
    "LabConfig",
    "best_response",
    "bradley_terry",
    "bt_rlhf",
    "check_preference",
    "contextual_games",
    "duality_gap",
    "extragradient",
    "fictitious_play",
    "fit_bradley_terry",
    "fixed_point_residual",
    "inpo",
    "ipo_md",
    "kl",
    "nash_lp",
    "nash_md",
    "nash_md_pg",
    "nash_mirror_prox",
    "nontransitive_dice",
    "online_ipo",
    "online_mirror_descent",
    "pg_gradient_estimate",
    "random_preference",
    "random_reference",
    "regularized_nash",
    "rock_paper_scissors",
    "run_lab",
    "sppo",
    "three_annotators",
    "three_annotators_nash",
]
