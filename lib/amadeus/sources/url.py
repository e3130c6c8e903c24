"""`url`: any zip/tar archive of MIDI files, or one MIDI file, from a URL, with an optional sha256."""

from __future__ import annotations

from dataclasses import dataclass

from amadeus.params import knob
from amadeus.sources.base import Context, check_sha256_param, unpack_midi, url_filename
from amadeus.sources.downloader import HttpConfig


@dataclass(kw_only=True)
class Config(HttpConfig):
    url: str = knob(help="http(s) URL of a .zip, .tar(.gz/.bz2/.xz) or .mid file")
    sha256: str = knob("", help="expected sha256 (empty: record it, do not check)")
    max_extract_mb: int = knob(4096, min=1, help="refuse an archive that unpacks to more")


def fetch(config: Config, ctx: Context) -> None:
    sha = check_sha256_param(config.sha256, f"sources.{ctx.name}.sha256")
    with ctx.downloader(config) as dl:
        got = dl.download(config.url, ctx.cache / url_filename(config.url), sha)
    ctx.note(got)
    unpack_midi(got.path, ctx.out, config.max_extract_mb << 20)
