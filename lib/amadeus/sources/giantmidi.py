"""`giantmidi-piano`: GiantMIDI-Piano (ByteDance), 10,855 piano pieces transcribed from recordings.

CC BY 4.0. The official copy sits behind a disclaimer on a file-sharing site (see
github.com/bytedance/GiantMIDI-Piano, `disclaimer.md`), so there is no stable URL: params give either
`path` (the archive or folder the user downloaded) or `url` (a mirror). The sha256 of what was used is
recorded; when params give one, it is enforced.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.sources.archive import copy_tree
from amadeus.sources.base import Context, check_sha256_param, unpack_midi, url_filename
from amadeus.sources.downloader import HttpConfig, file_time, sha256_file

HOWTO = ("download the MIDI archive from https://github.com/bytedance/GiantMIDI-Piano (accept its "
         "disclaimer), then set path: to the file")


@dataclass(kw_only=True)
class Config(HttpConfig):
    path: str = knob("", help="the downloaded archive (zip/tar) or an extracted folder")
    url: str = knob("", help="or a URL of the archive (a mirror)")
    sha256: str = knob("", help="expected sha256 of the archive (empty: record it, do not check)")
    max_extract_mb: int = knob(4096, min=1, help="refuse an archive that unpacks to more")


def fetch(config: Config, ctx: Context) -> None:
    key = f"sources.{ctx.name}"
    sha = check_sha256_param(config.sha256, f"{key}.sha256")
    if bool(config.path) == bool(config.url):
        raise UserError(f"params.yaml: {key}: give exactly one of path or url; {HOWTO}")
    if config.url:
        with ctx.downloader(config) as dl:
            got = dl.download(config.url, ctx.cache / url_filename(config.url, "giantmidi.zip"), sha)
        ctx.note(got)
        unpack_midi(got.path, ctx.out, config.max_extract_mb << 20)
        return
    src = Path(config.path).expanduser()
    if src.is_dir():
        copy_tree(src, ctx.out)
        ctx.fetched.append({"url": src.resolve().as_uri()})
        return
    if not src.is_file():
        raise UserError(f"{key}.path: {src} not found; {HOWTO}")
    digest = sha256_file(src)
    if sha and digest != sha:  # the user's own file: report, never delete it
        raise UserError(f"{src}: sha256 mismatch: expected {sha}, got {digest}; "
                        f"check {key}.sha256 or download the archive again")
    ctx.fetched.append({"url": src.resolve().as_uri(), "file": src.name, "bytes": src.stat().st_size,
                        "sha256": digest, "time": file_time(src)})
    unpack_midi(src, ctx.out, config.max_extract_mb << 20)

