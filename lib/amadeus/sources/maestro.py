"""`maestro-v3`: the official MIDI-only zip of MAESTRO v3.0.0 with its train/validation/test split.

1276 performances, 198.7 h, 7.04 M notes (docs/datasets.md#maestro-v300); CC BY-NC-SA 4.0. The zip holds
`maestro-v3.0.0/<year>/<file>.midi` plus `maestro-v3.0.0.csv`/`.json`, whose `split` column is the
official split (a composition never spans two splits); it becomes `split.csv` for preprocess.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.sources.archive import extract, is_midi_name
from amadeus.sources.base import Context, check_sha256_param, url_filename, write_split
from amadeus.sources.downloader import HttpConfig

URL = "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip"
SHA256 = "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c"  # 58,416,533 bytes


@dataclass(kw_only=True)
class Config(HttpConfig):
    url: str = knob(URL)
    sha256: str = knob(SHA256, help="expected sha256 of the zip (empty: record it, do not check)")
    max_extract_mb: int = knob(1024, min=1, help="refuse an archive that unpacks to more")


def _keep(rel: str) -> str | None:
    low = rel.lower()
    if is_midi_name(low) or low.endswith((".csv", ".json")) or low.split("/")[-1] in ("license", "readme"):
        return rel
    return None


def fetch(config: Config, ctx: Context) -> None:
    sha = check_sha256_param(config.sha256, f"sources.{ctx.name}.sha256")
    with ctx.downloader(config) as dl:
        got = dl.download(config.url, ctx.cache / url_filename(config.url, "maestro.zip"), sha)
    ctx.note(got)
    extract(got.path, ctx.out, select=_keep, strip_root=True, max_bytes=config.max_extract_mb << 20)
    rows = official_split(ctx.out)
    missing = [p for p, _ in rows if not (ctx.out / p).is_file()]
    if missing:
        raise UserError(f"{got.path.name}: {len(missing)} files named in the metadata are missing "
                        f"(first: {missing[0]}); delete {got.path} and rerun")
    write_split(ctx.out, rows)


def official_split(folder: Path) -> list[tuple[str, str]]:
    """(midi path, split) from the dataset's metadata CSV, or its JSON (pandas column layout)."""
    csvs = sorted(p for p in folder.glob("*.csv") if p.name != "split.csv")
    if csvs:
        with open(csvs[0], newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"midi_filename", "split"} <= set(reader.fieldnames):
                raise UserError(f"{csvs[0].name}: expected columns midi_filename and split")
            return [(r["midi_filename"], r["split"]) for r in reader]
    jsons = sorted(folder.glob("*.json"))
    if jsons:
        meta = json.loads(jsons[0].read_text(encoding="utf-8"))
        if not {"midi_filename", "split"} <= set(meta):
            raise UserError(f"{jsons[0].name}: expected keys midi_filename and split")
        return [(meta["midi_filename"][k], meta["split"][k]) for k in meta["midi_filename"]]
    raise UserError(f"{folder}: no MAESTRO metadata (maestro-v3.0.0.csv or .json) in the archive")
