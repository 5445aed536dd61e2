"""What the ``python -m`` entry points print: their own lines, not their libraries' chatter.

Every entry point calls ``quiet_libraries(verbose)`` once its flags are parsed. By default
(``verbose=False``) it silences what the libraries print on their own: absl logging (orbax logs
every save, tfds "Using custom data configuration"), the loggers of tensorflow_datasets, orbax,
jax, grain and transformers, tfds's progress bars, XLA's C++ log, and the ``warnings`` the libraries
raise (deprecations and the like). Errors still show. ``--verbose`` (``verbose=True``) undoes all
of it and shows the libraries' INFO logs as well.
"""

from __future__ import annotations

import logging
import os
import warnings

# Python loggers of the libraries, besides absl's own (which carries tfds's and orbax's logs).
_LOGGERS = ("tensorflow_datasets", "orbax", "jax", "grain", "etils", "transformers")
# Set only where the user has not set them: XLA's C++ log (tsl honours it, as TensorFlow did;
# at "1", what `import jax` sets, its warnings show: on a GPU, XLA's tuning chatter) and
# transformers' logger, whose level transformers resets from this variable on first use.
_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}
_SET_BY_IMPORTS = {"TF_CPP_MIN_LOG_LEVEL": "1"}  # by `import jax`, not by the user
# Warnings attributed to these modules are the libraries' business, not the user's.
_LIBRARY_MODULES = (
    r"(absl|array_record|chex|etils|flax|google|grain|jax|jaxlib|matplotlib|ml_collections|"
    r"optax|orbax|tensorflow_datasets|tokenizers|transformers)(\.|$)"
)

# What the last quiet_libraries(False) changed, so that quiet_libraries(True) can undo it.
_changed: dict = {"env": {}, "filters": []}


def _errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_libraries(verbose: bool = False) -> None:
    """Silences (``verbose=False``) or restores (``verbose=True``) the libraries' console output.

    Idempotent; a call with the other value undoes the previous one. Our own loggers
    (``nlhf_jax.*``) keep showing warnings, and ``UserError`` lines are untouched either way.
    """
    from absl import logging as absl_logging

    absl_logger = absl_logging.get_absl_logger()
    _undo(absl_logger)
    if verbose:
        absl_logging.set_verbosity(absl_logging.INFO)  # in an absl app: the root logger's level
        for name in _LOGGERS:
            logging.getLogger(name).setLevel(logging.NOTSET)
        if absl_logging.get_absl_handler() not in logging.root.handlers:  # not an absl app
            logging.basicConfig(format="%(levelname).1s %(name)s: %(message)s")
            logging.root.setLevel(logging.INFO)
        _tfds_chatter(show=True)
        return
    for key, value in _ENV.items():
        if os.environ.get(key) in (None, _SET_BY_IMPORTS.get(key)):
            _changed["env"][key] = os.environ.get(key)
            os.environ[key] = value
    # In an absl app this is the root logger's level: our own loggers show warnings, not INFO.
    absl_logging.set_verbosity(absl_logging.WARNING)
    # A filter, not a level: absl.logging.set_verbosity (e.g. in checkpoint.py) resets the absl
    # logger's level, and in an absl app it sets the root level, which our loggers use too.
    absl_logger.addFilter(_errors_only)
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    before = list(warnings.filters)
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", module=_LIBRARY_MODULES)
    _changed["filters"] = [f for f in warnings.filters if f not in before]
    _tfds_chatter(show=False)


def _undo(absl_logger: logging.Logger) -> None:
    absl_logger.removeFilter(_errors_only)
    for key, previous in _changed["env"].items():
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous
    ours = _changed["filters"]
    # Only "ignore" entries are removed, and warnings never caches an ignore: no stale state.
    warnings.filters[:] = [f for f in warnings.filters if f not in ours]
    _changed["env"], _changed["filters"] = {}, []


def _tfds_chatter(show: bool) -> None:
    """tfds's progress bars (its "dataset prepared" lines are INFO logs of our builders:
    `nlhf_jax.data.builders.QuietBuild`)."""
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(show)


def fixed(x: float, digits: int = 3) -> str:
    """``x`` to ``digits`` decimals, never "-0.000" (a tiny negative estimate rounds to 0): the
    rule of every printed and rendered table."""
    return f"{round(x, digits) + 0.0:.{digits}f}"
