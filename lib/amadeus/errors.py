"""Expected failures and how a command reports them: one clear line, non-zero exit, no traceback.

Every command and stage main is decorated with `main_entry` (tests/test_entrypoints.py fails on one
that is not), so the mapping below is the one place that decides what a user sees:

    UserError (WriteError included)        -> "error: <message>", exit 2
    OSError from the file system (no space, read-only, permission, missing, ...)
                                           -> "error: <path>: <cause in plain words>", exit 2
    BrokenPipeError on stdout (`| head`)   -> nothing more printed, exit 141
    KeyboardInterrupt                      -> "interrupted", exit 130
    anything else                          -> the traceback: it is a bug, and the traceback finds it
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., object])

# Set on every wrapped main; tests/test_entrypoints.py checks it on every entry point.
ENTRY_MARK = "__amadeus_main_entry__"

# 128 + SIGPIPE: what a shell reports for `cat`, `yes` etc. when the reader of their pipe went away,
# so `set -o pipefail` scripts still learn the output was cut short; 0 would claim it was complete.
EXIT_BROKEN_PIPE = 141

# errno -> plain words. Only these are "expected": a file-system state the user can change.
OS_CAUSES: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "is a folder, not a file",
    errno.EEXIST: "already exists",
    errno.ENAMETOOLONG: "file name too long",
    errno.ELOOP: "too many levels of symbolic links",
    errno.EFBIG: "file too large for this file system",
    errno.EMFILE: "too many open files",
    errno.EIO: "input/output error (failing disk or lost network mount)",
}


class UserError(Exception):
    """A failure the user can fix (bad parameter, missing or corrupt file, missing library).

    The message is one line naming the thing and the fix; commands print it without a traceback.
    """


class WriteError(UserError):
    """Writing `path` failed for `cause` (plain words); names the file the user asked for, never a temp."""

    def __init__(self, path: str | os.PathLike, cause: str):
        super().__init__(f"{os.fspath(path)}: {cause}")
        self.path = os.fspath(path)
        self.cause = cause


def os_cause(e: OSError) -> str | None:
    """Plain words for an expected file-system OSError, None for one that is not (a bug to show)."""
    return OS_CAUSES.get(e.errno) if e.errno is not None else None


def os_error_line(e: OSError) -> str | None:
    """`<path>: <cause>` for an expected OSError (the path it names, if any), else None."""
    cause = os_cause(e)
    if cause is None:
        return None
    names = [os.fspath(n) for n in (e.filename, e.filename2) if n is not None]
    return f"{' -> '.join(names)}: {cause}" if names else cause


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's exit flush cannot raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout already closed or not a real file
        pass


def _fail(line: str, code: int) -> None:
    print(line, file=sys.stderr)
    sys.exit(code)


def main_entry(main: F) -> F:
    """Wrap a command's or stage's main() so expected failures end as one line (see the module doc)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            result = main(*args, **kwargs)
            sys.stdout.flush()  # a reader that went away shows up here, still inside the handler
            return result
        except BrokenPipeError:
            _quiet_stdout()
            sys.exit(EXIT_BROKEN_PIPE)
        except UserError as e:
            _fail(f"error: {e}", 2)
        except OSError as e:
            line = os_error_line(e)
            if line is None:
                raise
            _fail(f"error: {line}", 2)
        except KeyboardInterrupt:
            _fail("interrupted", 130)

    setattr(wrapper, ENTRY_MARK, True)
    return wrapper  # type: ignore[return-value]


# The earlier name; same wrapper.
exits_cleanly = main_entry
