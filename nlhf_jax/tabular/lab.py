"""The tabular lab: every algorithm on a batch of games, measured against the exact NE.

Used by ``python -m nlhf_jax.tabular`` and the Colab. Runs each algorithm with ``jax.vmap`` over a
batch of contexts (one game and reference policy per prompt) and reports the mean over contexts
of KL(pi*, pi_t) and of the duality gap, beside the theoretical bounds.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nlhf_jax.tabular import algorithms as alg
from nlhf_jax.tabular import games, sampled, solvers

GAMES = ("random", "dice", "rps", "three_annotators", "bradley_terry")


@dataclasses.dataclass(frozen=True)
class LabConfig:
    """Settings of one lab run."""

    game: str = "random"  # one of GAMES
    n: int = 10  # number of responses (random and bradley_terry games)
    tau: float = 0.1  # KL regularization (beta in Nash-MP and EGPO)
    steps: int = 1000  # iterations of every algorithm
    contexts: int = 8  # prompts: independent games / reference policies, vmapped
    mu: str = "random"  # reference policy: "random" (Dirichlet) or "uniform"
    eps: float = 0.1  # three_annotators' parameter
    beta_mix: float = 0.125  # mixture weight of Nash-MD-PG and IPO-MD (the paper's best)
    pg_lr: float = 0.5  # Nash-MD-PG step size on the logits
    pg_batch: int = 64  # sampled pairs per Nash-MD-PG step
    seed: int = 0


def make_games(cfg: LabConfig):
    """``P[c, n, n]`` and ``mu[c, n]`` for the configured game."""
    if cfg.game not in GAMES:
        raise ValueError(f"unknown game {cfg.game!r}; choose one of {', '.join(GAMES)}")
    kg, km = jax.random.split(jax.random.key(cfg.seed))
    fixed = {
        "dice": games.nontransitive_dice,
        "rps": games.rock_paper_scissors,
        "three_annotators": lambda: games.three_annotators(cfg.eps),
    }
    if cfg.game == "random":
        P = jax.vmap(lambda k: games.random_preference(k, cfg.n))(
            jax.random.split(kg, cfg.contexts)
        )
    elif cfg.game == "bradley_terry":
        scores = jax.random.normal(kg, (cfg.contexts, cfg.n))
        P = jax.vmap(games.bradley_terry)(scores)
    else:
        P = jnp.broadcast_to(fixed[cfg.game](), (cfg.contexts, 3, 3))
    n = P.shape[-1]
    if cfg.mu == "uniform":
        mu = jnp.full((cfg.contexts, n), 1.0 / n)
    elif cfg.mu == "random":
        mu = jax.vmap(lambda k: games.random_reference(k, n))(jax.random.split(km, cfg.contexts))
    else:
        raise ValueError(f"unknown mu {cfg.mu!r}; choose 'random' or 'uniform'")
    return P, mu


def algorithm_table(cfg: LabConfig):
    """name -> (description, f(P, mu, key) -> trajectory [steps + 1, n]) for one context."""
    tau, T, b = cfg.tau, cfg.steps, cfg.beta_mix
    # The exact methods ignore the key; only Nash-MD-PG samples.
    exact = lambda f, **kw: lambda P, mu, key: f(P, mu, tau, T, **kw)
    pg = lambda P, mu, key: sampled.nash_md_pg(
        P, mu, tau, T, key, beta=b, lr=cfg.pg_lr, batch_size=cfg.pg_batch
    )
    omwu = lambda P, mu, key: alg.optimistic(P, mu, 0.0, T, eta=0.3)
    return {
        "nash_md": ("Nash-MD, eta_t = 2/(tau(t+2))", exact(alg.nash_md)),
        "omd": ("online mirror descent, same eta_t", exact(alg.online_mirror_descent)),
        "nash_mp": ("Nash mirror prox, eta = 2 beta (2 queries/iter)", exact(alg.nash_mirror_prox)),
        "egpo": ("extragradient (EGPO), lr = 1/(beta+1)", exact(alg.extragradient)),
        "inpo": ("INPO rounds, tau/eta = 1/3", exact(alg.inpo)),
        "online_ipo": ("online IPO, natural-gradient lr 0.05", exact(alg.online_ipo)),
        "ipo_md": (f"IPO-MD, beta = {b}", exact(alg.ipo_md, beta=b)),
        "fictitious_play": ("fictitious play (average iterate)", exact(alg.fictitious_play)),
        "sppo": ("SPPO / MWU self-play, no KL, eta = 1/tau", exact(alg.sppo)),
        "mpo": ("MPO, eta = 1, magnet moved every 50 steps", exact(alg.magnetic, magnet_every=50)),
        "onpo": ("ONPO, optimistic OMD, eta = 0.3", exact(alg.optimistic, eta=0.3)),
        "omwu": ("OMWU, optimistic, no KL (tau = 0), eta = 0.3", omwu),
        "comal": ("COMAL, INPO rounds of 50, reference reset", exact(alg.comal)),
        "mnpo": ("MNPO, population of 3 (0.5, 0.3, 0.2)", exact(alg.mnpo, weights=(0.5, 0.3, 0.2))),
        "nash_md_pg": (f"Nash-MD-PG, sampled pairs, beta = {b}", pg),
        "bt_rlhf": ("BT reward from pairs ~ mu, then RLHF", exact(sampled.bt_rlhf)),
    }


def checkpoints(steps: int) -> list[int]:
    """0, 1, 10, 100, ... up to ``steps``, and ``steps`` itself."""
    ts = [0] + [10**k for k in range(int(np.log10(max(steps, 1))) + 1) if 10**k <= steps]
    return sorted(set([*ts, steps]))


def run_lab(cfg: LabConfig, progress=None) -> dict:
    """Runs every algorithm on the configured games. Returns a dict of numpy arrays and floats:
    ``nash`` [c, n], ``lp_nash`` [c, n] (unregularized), and per algorithm ``kl``, ``gap``
    (regularized) and ``gap0`` (unregularized), each [steps + 1] and averaged over contexts,
    plus the bounds ``nash_md_bound`` and ``nash_mp_bound``. ``progress(message)`` is called as
    each algorithm starts."""
    P, mu = make_games(cfg)
    tau = cfg.tau
    pi_star = jax.vmap(solvers.regularized_nash, in_axes=(0, 0, None))(P, mu, tau)
    keys = jax.random.split(jax.random.key(cfg.seed + 1), cfg.contexts)
    gap_fn = jax.vmap(jax.vmap(solvers.duality_gap, (None, None, None, 0)), (0, 0, None, 0))
    out = {
        "config": dataclasses.asdict(cfg),
        "nash": np.asarray(pi_star),
        "lp_nash": np.stack([solvers.nash_lp(p)[0] for p in np.asarray(P)]),
        "residual": float(
            jnp.max(jax.vmap(solvers.fixed_point_residual, (0, 0, None, 0))(P, mu, tau, pi_star))
        ),
        "algorithms": {},
    }
    table = algorithm_table(cfg)
    for i, (name, (desc, f)) in enumerate(table.items()):
        if progress:
            progress(f"[{i + 1}/{len(table)}] {name}")
        traj = jax.vmap(f)(P, mu, keys)  # [c, T + 1, n]
        kl = jax.vmap(jax.vmap(solvers.kl, (None, 0)))(pi_star, traj)
        out["algorithms"][name] = {
            "description": desc,
            "kl": np.asarray(jnp.mean(kl, 0)),
            "gap": np.asarray(jnp.mean(gap_fn(P, mu, tau, traj), 0)),
            # Exploitability in the unregularized game (what MPO, COMAL and OMWU aim at).
            "gap0": np.asarray(jnp.mean(gap_fn(P, mu, 0.0, traj), 0)),
            "final_policy": np.asarray(traj[:, -1]),
        }
    t = np.arange(cfg.steps + 1)
    kl0 = out["algorithms"]["nash_mp"]["kl"][0]
    out["nash_md_bound"] = 8.0 / (tau**2 * (t + 1))
    out["nash_mp_bound"] = (1.0 + 2.0 * tau) ** (-t.astype(float)) * kl0
    return out
