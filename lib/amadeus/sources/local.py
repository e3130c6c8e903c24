"""`local`: a folder of the user's own MIDI files, copied keeping relative paths.

A `split.csv` (header `path,split`) in that folder is carried over, so a user can fix the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.sources.archive import copy_tree
from amadeus.sources.base import SPLIT_FILE, Context, read_split, write_split


@dataclass
class Config:
    path: str = knob(help="folder of .mid/.midi files (searched recursively)")


def fetch(config: Config, ctx: Context) -> None:
    src = Path(config.path).expanduser()
    if not src.is_dir():
        raise UserError(f"local source '{ctx.name}': folder {src} not found; set sources.{ctx.name}.path")
    copy_tree(src, ctx.out)
    if (src / SPLIT_FILE).is_file():
        rows = read_split(src / SPLIT_FILE)
        write_split(ctx.out, [(p, s) for p, s in rows if (ctx.out / p).is_file()])
