"""User mistakes, told apart from programming errors.

A ``UserError`` is something the person running a command can fix: a bad file, a wrong config
key or value, a missing run, a tokenizer that does not fit the model. The ``python -m`` entry
points print its message as one line (``error: ...``) and exit with status 2; anything else is a
programming error and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """A mistake in the user's input; the message names the file, row, field or key."""


class MissingInput(UserError, FileNotFoundError):
    """A file, directory or run the user named does not exist (or holds nothing usable)."""


class Interrupted(Exception):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM after saving its state.

    Attributes:
      signum: the signal; the entry points exit with status 128 + signum (130, 143).
      step: the step saved.
      workdir: the run's directory.
    """

    def __init__(self, signum: int, step: int, workdir: str):
        self.signum, self.step, self.workdir = signum, step, workdir
        super().__init__(
            f"interrupted at step {step}: saved in {workdir}; run the same command to resume"
        )


def exit_on_user_error(main: Callable[[], object]) -> object:
    """Runs ``main``; a ``UserError`` ends the process with one line on stderr and status 2, an
    ``Interrupted`` run with one line and status 128 + its signal (130 for Ctrl-C, 143 for
    SIGTERM), so a chain of stages or a scheduler sees that it did not finish."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Interrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(128 + e.signum)
