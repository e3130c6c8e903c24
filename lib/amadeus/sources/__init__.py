"""Dataset sources: each one fills `dataset/midi/<name>/` with MIDI files (and maybe `split.csv`).

params.yaml names the sources and their settings:

    sources:
      maestro-sample: {kind: maestro-sample}
      mine: {kind: local, path: ~/midi}

`fetch(name, settings, dest)` builds the kind's config (validated like every params section), lets
the kind write into a staging folder, and only when that succeeded swaps the folder into place with
`SOURCE.json` (what was fetched: URL, bytes, sha256, time; and every file's size and sha256). A run
whose record matches the settings and the files on disk does nothing. Downloads are kept in a cache
folder outside the output (`dataset/downloads/<name>/`), so DVC rerunning the stage (it deletes the
output first) or a failed extraction does not download again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amadeus.errors import UserError
from amadeus.fileio import write_json
from amadeus.params import build
from amadeus.sources import ecomp, giantmidi, local, maestro, maestro_sample, piano_midi_de, url
from amadeus.sources.archive import is_midi_name
from amadeus.sources.base import SPLIT_FILE, Context
from amadeus.sources.downloader import sha256_file

RECORD = "SOURCE.json"
RECORD_FORMAT = "amadeus.source/1"
FETCH_LOG = "FETCH_LOG.json"  # in the download cache: what was fetched, when (not a DVC output)


@dataclass(frozen=True)
class SourceKind:
    config: type
    fetch: Callable[[Any, Context], None]


SOURCE_KINDS: dict[str, SourceKind] = {
    "local": SourceKind(local.Config, local.fetch),
    "maestro-sample": SourceKind(maestro_sample.Config, maestro_sample.fetch),
    "maestro-v3": SourceKind(maestro.Config, maestro.fetch),
    "giantmidi-piano": SourceKind(giantmidi.Config, giantmidi.fetch),
    "piano-e-competition": SourceKind(ecomp.Config, ecomp.fetch),
    "piano-midi-de": SourceKind(piano_midi_de.Config, piano_midi_de.fetch),
    "url": SourceKind(url.Config, url.fetch),
}


@dataclass
class FetchReport:
    name: str
    kind: str
    files: int  # MIDI files now in the folder
    bytes: int  # their total size
    seconds: float
    record: Path  # the SOURCE.json written (or found up to date)
    downloaded_bytes: int = 0  # 0 when everything came from the cache or was up to date
    up_to_date: bool = False  # True: nothing to do, the folder already matched the settings
    skipped: int = 0  # dead links / non-MIDI files left out (listed in the record)
    split: bool = False  # the source wrote its official split.csv


def config_for(name: str, settings: Mapping) -> tuple[str, Any]:
    """(kind, validated config dataclass) for `sources.<name>`."""
    where = f"sources.{name}"
    if not isinstance(settings, Mapping):
        raise UserError(f"params.yaml: {where}: expected a mapping with a 'kind' key")
    kind = settings.get("kind")
    if kind not in SOURCE_KINDS:
        raise UserError(f"params.yaml: {where}.kind: {kind!r} is not a source kind; "
                        f"choose one of: {', '.join(SOURCE_KINDS)}")
    rest = {k: v for k, v in settings.items() if k != "kind"}
    return kind, build(SOURCE_KINDS[kind].config, rest, where)


def fetch(name: str, settings: Mapping, dest: Path, *, cache: Path | None = None,
          log: Callable[[str], None] | None = None) -> FetchReport:
    """Fill `dest` (dataset/midi/<name>) from the source `settings`; see the module doc."""
    start = time.monotonic()
    kind, config = config_for(name, settings)
    dest = Path(dest)
    cache = Path(cache) if cache is not None else dest.parent.parent / "downloads" / name
    log = log or (lambda msg: print(msg, file=sys.stderr))
    wanted = {"kind": kind, **dataclasses.asdict(config)}

    record = _up_to_date(dest, wanted)
    if record is not None:
        return FetchReport(name, kind, len(record["files"]), sum(f["bytes"] for f in record["files"]),
                           time.monotonic() - start, dest / RECORD, up_to_date=True,
                           skipped=len(record.get("skipped", [])), split=(dest / SPLIT_FILE).is_file())

    cache.mkdir(parents=True, exist_ok=True)
    staging = cache / ".staging"  # beside the cache, not in dataset/midi: a crash leaves no stray folder there
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ctx = Context(name=name, out=staging, cache=cache, log=log)
    try:
        SOURCE_KINDS[kind].fetch(config, ctx)
        files = [p for p in sorted(staging.rglob("*")) if p.is_file() and is_midi_name(p.name)]
        if not files:
            raise UserError(f"source '{name}' ({kind}): no MIDI files (.mid/.midi) found; check its settings")
        entries = [{"path": p.relative_to(staging).as_posix(), "bytes": p.stat().st_size,
                    "sha256": sha256_file(p)} for p in files]
        write_json(staging / RECORD, {
            "format": RECORD_FORMAT, "name": name, "settings": wanted,
            "fetched": [_portable(f) for f in ctx.fetched], "skipped": ctx.skipped, "files": entries,
        })
        write_json(cache / FETCH_LOG, {"name": name, "fetched": ctx.fetched})  # when and from where, untracked
        _swap_in(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return FetchReport(name, kind, len(entries), sum(e["bytes"] for e in entries),
                       time.monotonic() - start, dest / RECORD, downloaded_bytes=ctx.downloaded_bytes,
                       skipped=len(ctx.skipped), split=(dest / SPLIT_FILE).is_file())


def _portable(entry: dict) -> dict:
    """A fetched-file entry as SOURCE.json keeps it: no download time and no absolute local path, so the
    record (a DVC output) is the same on every machine and every rerun; those stay in the cache's log."""
    out = {k: v for k, v in entry.items() if k != "time"}
    if str(out.get("url", "")).startswith("file:"):
        out["url"] = "file:" + (out.get("file") or Path(out["url"]).name)
    return out


def _up_to_date(dest: Path, wanted: dict) -> dict | None:
    """The record when `dest` holds exactly what these settings fetched before (sizes checked)."""
    try:
        record = json.loads((dest / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if record.get("format") != RECORD_FORMAT or record.get("settings") != json.loads(json.dumps(wanted)):
        return None
    for f in record.get("files", []):
        p = dest / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"]:
            return None
    return record if record.get("files") else None


def _swap_in(staging: Path, dest: Path) -> None:
    """Replace `dest` by the finished staging folder (the old one is removed only after the move)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    old = staging.with_name(".previous")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        shutil.move(dest, old)
    shutil.move(staging, dest)
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["FETCH_LOG", "SOURCE_KINDS", "FetchReport", "config_for", "fetch", "RECORD"]
