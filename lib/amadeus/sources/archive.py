"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: no absolute path, no `..` step, nothing that
resolves outside the target folder, no symlinks, hardlinks, devices or fifos, and the total unpacked
size under a limit (counted again while writing, so a lying header cannot bypass it). One bad member
refuses the whole archive: a dataset archive that tries any of this is not to be trusted.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from amadeus.errors import UserError

MIDI_SUFFIXES = (".mid", ".midi")


def is_midi_name(name: str) -> bool:
    return name.lower().endswith(MIDI_SUFFIXES)


def is_archive(path: Path) -> bool:
    return zipfile.is_zipfile(path) or _is_tar(path)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


@dataclass
class _Member:
    name: str  # normalised posix path inside the archive
    size: int
    is_dir: bool
    handle: object  # ZipInfo or TarInfo


def _safe_name(raw: str, archive: Path) -> str:
    name = raw.replace("\\", "/")
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UserError(f"{archive.name}: member '{raw}' has an absolute path; refusing to extract it")
    if ".." in p.parts:
        raise UserError(f"{archive.name}: member '{raw}' escapes the target folder; refusing to extract it")
    return "/".join(part for part in p.parts if part not in ("", "."))


def _zip_members(zf: zipfile.ZipFile, archive: Path) -> list[_Member]:
    out = []
    for info in zf.infolist():
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UserError(f"{archive.name}: member '{info.filename}' is a symbolic link; "
                            f"refusing to extract it")
        out.append(_Member(_safe_name(info.filename, archive), info.file_size, info.is_dir(), info))
    return out


def _tar_members(tf: tarfile.TarFile, archive: Path) -> list[_Member]:
    out = []
    for info in tf.getmembers():
        if info.issym() or info.islnk():
            raise UserError(f"{archive.name}: member '{info.name}' is a link; refusing to extract it")
        if not (info.isfile() or info.isdir()):
            raise UserError(f"{archive.name}: member '{info.name}' is a device or fifo; "
                            f"refusing to extract it")
        out.append(_Member(_safe_name(info.name, archive), info.size, info.isdir(), info))
    return out


@contextmanager
def _opened(archive: Path) -> Iterator[tuple[list[_Member], Callable[[_Member], IO[bytes]]]]:
    """The checked member list and a way to read a member; a UserError for any unsafe member."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                yield _zip_members(zf, archive), lambda m: zf.open(m.handle)
        elif _is_tar(archive):
            with tarfile.open(archive) as tf:
                yield _tar_members(tf, archive), lambda m: tf.extractfile(m.handle)
        else:
            raise UserError(f"{archive}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise UserError(f"{archive}: damaged archive ({e}); delete it and rerun") from None


def common_root(names: list[str]) -> str:
    """The single top-level folder every member sits in ('' when there is none)."""
    tops = {n.split("/", 1)[0] for n in names if n}
    if len(tops) == 1 and all("/" in n for n in names if n and not n.endswith("/")):
        top = tops.pop()
        if any(n.startswith(top + "/") for n in names):
            return top
    return ""


def extract(archive: Path, target: Path, *, select: Callable[[str], str | None] = lambda n: n,
            max_bytes: int = 4 << 30, strip_root: bool = False) -> list[Path]:
    """Extract the members `select` keeps (it maps a member path to an output path or None).

    Returns the written files. Every member of the archive is checked first (see the module doc).
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    written: list[Path] = []
    with _opened(archive) as (members, open_member):
        names = [m.name for m in members if not m.is_dir]
        prefix = common_root(names) if strip_root else ""
        plan: list[tuple[_Member, Path]] = []
        total = 0
        for m in members:
            if m.is_dir or not m.name:
                continue
            rel = m.name[len(prefix) + 1:] if prefix else m.name
            out = select(rel)
            if out is None:
                continue
            dest = (target / _safe_name(out, archive)).resolve()
            if not dest.is_relative_to(root) or dest == root:
                raise UserError(f"{archive.name}: member '{m.name}' escapes the target folder; "
                                f"refusing to extract it")
            total += m.size
            plan.append((m, dest))
        if total > max_bytes:
            raise UserError(f"{archive.name}: unpacks to {total:,} bytes, over the limit of {max_bytes:,}; "
                            f"raise max_extract_mb in params.yaml if this is expected")
        budget = max_bytes
        for m, dest in plan:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open_member(m) as src, open(dest, "wb") as f:
                while block := src.read(1 << 20):
                    budget -= len(block)
                    if budget < 0:
                        raise UserError(f"{archive.name}: unpacks to more than the limit of "
                                        f"{max_bytes:,} bytes (its header lied); refusing it")
                    f.write(block)
            written.append(dest)
    return written


def copy_tree(src: Path, dest: Path, keep: Callable[[str], bool] = is_midi_name) -> list[Path]:
    """Copy the files under `src` whose relative path `keep` accepts, keeping relative paths."""
    written = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        if path.is_file() and keep(rel):
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
            written.append(out)
    return written
