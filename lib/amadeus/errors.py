"""Expected failures and how a command reports them: one clear line, non-zero exit, no traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A failure the user can fix (bad parameter, missing or corrupt file, missing library).

    The message is one line naming the thing and the fix; commands print it without a traceback.
    """


def exits_cleanly(main: F) -> F:
    """Wrap a command's main(): UserError -> one line on stderr and exit 2; Ctrl-C -> exit 130."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
