"""`maestro-sample`: the embedded default data, 10 full MAESTRO performances (~170 min, ~102k notes).

They ship as test fixtures inside the source distribution of miditok 3.1.0
(docs/datasets.md#midi-inside-pypi-packages), so pip, the package client every user already has,
fetches them from PyPI. The sdist is pinned by
version and sha256, and each extracted file by md5. Files: CC BY-NC-SA 4.0 (MAESTRO); miditok code: MIT.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from hashlib import md5
from pathlib import Path

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.sources.archive import extract
from amadeus.sources.base import Context
from amadeus.sources.downloader import check_sha256, file_time, sha256_file

PACKAGE, VERSION = "miditok", "3.1.0"
SDIST = f"{PACKAGE}-{VERSION}.tar.gz"
SHA256 = "1f905b9be87a57dac28a86c1c7a7565674a5d2e57b2f650bc2fea97792f6bdef"
MEMBER = re.compile(r"tests/MIDIs_one_track/(Maestro_\d+\.mid)")
MD5 = {  # docs/datasets.md#midi-inside-pypi-packages, identical in symusic 0.6.0's sdist
    "Maestro_1.mid": "703692bbd148bc0fafa2ebf2c796d8bd",
    "Maestro_2.mid": "066a66737524377a518c154f7a6dc70f",
    "Maestro_3.mid": "c532439a8d88d20bce750846609b6a64",
    "Maestro_4.mid": "c540bbfa3f31336006403d708cc00691",
    "Maestro_5.mid": "e4e05b69d606d3f9d39d4c0f9c8023ec",
    "Maestro_6.mid": "39e9ab9a4887f3f26458852af2f42d8f",
    "Maestro_7.mid": "62c9f200b58d3dc039f2700da02f02d2",
    "Maestro_8.mid": "f21943b9c9feffcdff755a8654b1f632",
    "Maestro_9.mid": "b8121d6dab34bc521559e00f3f27e121",
    "Maestro_10.mid": "2d8cd797be303ab3daf24e489f13ad50",
}


@dataclass
class Config:
    index_url: str = knob("", help="package index for pip (empty: pip's own configuration)")
    timeout: float = knob(900.0, gt=0, help="seconds pip may take")


def fetch(config: Config, ctx: Context) -> None:
    sdist = ctx.cache / SDIST
    cached = sdist.is_file() and sha256_file(sdist) == SHA256
    if not cached:
        sdist.unlink(missing_ok=True)
        ctx.log(f"  pip download {PACKAGE}=={VERSION} (source distribution, {SHA256[:12]}...)")
        pip_download(config, ctx.cache)
    ctx.fetched.append({"url": f"pip:{PACKAGE}=={VERSION} (sdist)", "file": SDIST,
                        "bytes": sdist.stat().st_size, "sha256": sha256_file(sdist),
                        "time": file_time(sdist)})
    if not cached:
        ctx.downloaded_bytes += sdist.stat().st_size
    extract_sample(sdist, ctx.out)


def pip_download(config: Config, cache: Path) -> Path:
    """`pip download` the pinned sdist into `cache` with the running interpreter's pip."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".pip-") as tmp:
        # The sdist, not the wheel: only the sdist carries the MIDI files. `--no-binary miditok` rather
        # than `:all:`: pip must build miditok's metadata, and with `:all:` it also compiles the build
        # backend (hatchling and its dependencies) from source: 77-520 s on a cold cache here instead of
        # ~9 s. The sdist fetched is the same file (its sha256 is checked below).
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE,
               "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
               "--dest", tmp, f"{PACKAGE}=={VERSION}"]
        if config.index_url:
            cmd += ["--index-url", config.index_url]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=config.timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"pip download {PACKAGE}=={VERSION} took over {config.timeout:g}s; "
                            f"check the network or raise the timeout") from None
        if done.returncode != 0:
            lines = [ln.strip() for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if ln.startswith("ERROR")), lines[-1] if lines else "")
            if "No module named pip" in why:
                why = f"pip is not installed for {sys.executable} (python -m ensurepip)"
            raise UserError(f"pip download {PACKAGE}=={VERSION} failed: {why[:300]}")
        got = Path(tmp) / SDIST
        if not got.is_file():
            raise UserError(f"pip download {PACKAGE}=={VERSION} did not produce {SDIST} "
                            f"(got: {', '.join(p.name for p in Path(tmp).iterdir()) or 'nothing'})")
        check_sha256(got, SHA256, SDIST)
        shutil.move(got, cache / SDIST)
    return cache / SDIST


def extract_sample(sdist: Path, out: Path, *, sha256: str = SHA256,
                   md5s: dict[str, str] | None = None) -> list[Path]:
    """Verify the sdist, extract the Maestro_*.mid fixtures flat into `out`, verify each md5."""
    md5s = MD5 if md5s is None else md5s
    check_sha256(sdist, sha256, sdist.name)

    def select(rel: str) -> str | None:
        m = MEMBER.fullmatch(rel)
        return m.group(1) if m else None

    written = extract(sdist, out, select=select, strip_root=True, max_bytes=64 << 20)
    names = sorted(p.name for p in written)
    if names != sorted(md5s):
        missing = sorted(set(md5s) - set(names))
        raise UserError(f"{sdist.name}: expected {len(md5s)} MAESTRO files, found {len(names)} "
                        f"(missing: {', '.join(missing) or 'none'})")
    for p in written:
        got = md5(p.read_bytes()).hexdigest()
        if got != md5s[p.name]:
            raise UserError(f"{sdist.name}: {p.name}: md5 mismatch: expected {md5s[p.name]}, got {got}")
    return written
