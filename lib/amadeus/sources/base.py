"""What every source kind shares: the fetch context, the split file, sha256 params, MIDI sniffing."""

from __future__ import annotations

import csv
import io
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from amadeus.errors import UserError
from amadeus.fileio import atomic_open
from amadeus.sources.downloader import Downloader, Fetched, HttpConfig

SPLITS = ("train", "validation", "test")
SPLIT_FILE = "split.csv"  # contract with preprocess: header `path,split`, paths relative to the folder
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass
class Context:
    """Where a source writes (`out`, a staging folder that becomes dataset/midi/<name>) and keeps
    downloads between runs (`cache`), plus what it fetched and skipped for the record."""

    name: str
    out: Path
    cache: Path
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr)
    fetched: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    downloaded_bytes: int = 0

    def downloader(self, http: HttpConfig) -> Downloader:
        return Downloader(http, log=self.log)

    def note(self, f: Fetched) -> None:
        self.fetched.append(f.record())
        if not f.cached:
            self.downloaded_bytes += f.bytes

    def skip(self, item: str, reason: str, note: str = "") -> None:
        self.log(f"  skipped {item}: {reason}{note}")
        self.skipped.append({"item": item, "reason": reason})


def check_sha256_param(value: str, key: str) -> str:
    if value and not _HEX64.fullmatch(value):
        raise UserError(f"params.yaml: {key}: {value!r} is not a sha256 (64 hex digits, or empty)")
    return value.lower()


def url_filename(url: str, default: str = "download") -> str:
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = re.sub(r"[^\w.+-]", "_", name)
    return name if name.strip("._") else default


def looks_like_midi(path: Path) -> bool:
    """A Standard MIDI File starts with 'MThd'; RIFF-wrapped MIDI (.rmi) with 'RIFF'...'RMID'."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[:4] == b"MThd" or (head[:4] == b"RIFF" and head[8:12] == b"RMID")


def write_split(out: Path, rows: list[tuple[str, str]]) -> Path:
    """Write `split.csv` (path,split) after checking every split name and path."""
    for path, split in rows:
        if split not in SPLITS:
            raise UserError(f"{out.name}: split '{split}' for {path} is not one of {', '.join(SPLITS)}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "split"])
    w.writerows(sorted(rows))
    with atomic_open(out / SPLIT_FILE, "w") as f:
        f.write(buf.getvalue())
    return out / SPLIT_FILE


def read_split(path: Path) -> list[tuple[str, str]]:
    """Rows of a split.csv; a UserError when its header or split names are wrong."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "split"} <= set(reader.fieldnames):
            raise UserError(f"{path}: expected a CSV with header 'path,split'")
        rows = [(r["path"], r["split"]) for r in reader]
    for p, s in rows:
        if s not in SPLITS:
            raise UserError(f"{path}: split '{s}' for {p} is not one of {', '.join(SPLITS)}")
    return rows


def unpack_midi(path: Path, out: Path, max_bytes: int, name: str = "") -> int:
    """Put the MIDI files of a downloaded archive (or a single MIDI file) into `out`; returns the count."""
    from amadeus.sources.archive import extract, is_archive, is_midi_name

    if is_archive(path):
        written = extract(path, out, select=lambda rel: rel if is_midi_name(rel) else None,
                          max_bytes=max_bytes, strip_root=True)
        return len(written)
    if looks_like_midi(path):
        base = name or path.name
        if not is_midi_name(base):
            base += ".mid"
        shutil.copyfile(path, out / base)
        return 1
    raise UserError(f"{path}: neither a zip/tar archive nor a MIDI file")
