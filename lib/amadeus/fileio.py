"""Atomic file writes: a temp file in the same folder, fsync, then rename. A crash never leaves half a file.

The temp file is `.<name>.<pid>.<random>.tmp` beside the target. On any failure it is removed and a
file-system error becomes a `WriteError` naming the target (not the temp) and the cause in plain
words. A process killed mid-write cannot remove its temp, so the first write of a process into a
folder removes the temps whose writer pid is no longer running (`remove_stale_temps`); temps of live
writers (a concurrent process, or this one) are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import yaml

from amadeus.errors import WriteError, os_cause

# mkstemp creates files readable by the owner only; results should get the usual umask permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)

# Below this many free bytes, a failed write of unknown cause (torch.save's C++ writer reports a full
# disk as a RuntimeError from inline_container.cc) is reported as a full disk.
_NEARLY_FULL = 1 << 20

_swept: set[str] = set()  # folders whose stale temps this process has removed already


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _temp_pid(filename: str) -> int | None:
    """The writer pid in `.<name>.<pid>.<random>.tmp`, None for a file not named like one."""
    if not (filename.startswith(".") and filename.endswith(".tmp")):
        return None
    parts = filename[1:-4].rsplit(".", 2)  # mkstemp's random part has no dots; the name may
    if len(parts) != 3 or not parts[1].isdigit() or not parts[0]:
        return None
    return int(parts[1])


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete `.<name>.<pid>.*.tmp` (any name when None) in `folder` whose writer pid is not running.

    Returns what was removed. The pid rule is lock-free and safe for concurrent writers: a running
    process's temps stay, whatever their age. (A pid reused by an unrelated process only delays the
    cleanup to a later run.)
    """
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        pid = _temp_pid(entry.name)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        if name is not None and entry.name[1:-4].rsplit(".", 2)[0] != name:
            continue
        with contextlib.suppress(OSError):  # gone already, or a read-only folder: nothing to do
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: Path) -> None:
    key = os.fspath(folder.resolve())
    if key not in _swept:
        _swept.add(key)
        remove_stale_temps(folder)


def write_error(path: str | os.PathLike, e: BaseException, tmp: str | None = None) -> WriteError | None:
    """The WriteError naming `path` for a failed write, None when `e` is not a file-system failure.

    An OSError naming some other file (the body of the write read an input) is left to say so itself.
    """
    own = {os.fspath(path), tmp, os.fspath(Path(path).parent)}
    for cause_exc in _chain(e):
        if isinstance(cause_exc, OSError) and (cause_exc.filename is None or os.fspath(cause_exc.filename) in own
                                               or tmp is None):
            cause = os_cause(cause_exc)
            if cause is not None:
                return WriteError(path, cause)
    if isinstance(e, RuntimeError | OSError):
        # torch.save's zip writer loses the errno; free space tells a full disk from a bug.
        with contextlib.suppress(OSError):
            if shutil.disk_usage(Path(path).parent).free < _NEARLY_FULL:
                return WriteError(path, "no space left on device")
        text = str(e)
        if "No space left" in text or "errno 28" in text.lower():
            return WriteError(path, "no space left on device")
    return None


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _mkdir(folder: Path, target: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        err = write_error(target, e)
        if err is None:
            raise
        raise err from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on success it replaces `path` in one rename.

    On failure the temp is removed, and a file-system error (no space, read-only, permission, ...)
    is raised as a WriteError naming `path`.
    """
    path = Path(path)
    _mkdir(path.parent, path)
    _sweep_once(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    except OSError as e:
        err = write_error(path, e)
        if err is None:
            raise
        raise err from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = write_error(path, e, tmp) if isinstance(e, Exception) else None
        if err is None:
            raise
        raise err from e


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    with atomic_open(path, "w") as f:
        yaml.safe_dump(obj, f, sort_keys=False)
