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


def exit_on_user_error(main: Callable[[], object]) -> object:
    """Runs ``main``; a ``UserError`` ends the process with one line on stderr and status 2."""
    try:
        return main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
