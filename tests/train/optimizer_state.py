"""What the trainers' tests read from an optimizer state."""

import jax


def adam_moments(state):
    """The Adam state (``.mu``, ``.nu``) inside a TrainState's optax chain."""
    found = jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu"))
    return next(x for x in found if hasattr(x, "mu"))
