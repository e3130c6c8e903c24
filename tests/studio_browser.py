"""Shared by the studio's browser tests and bench/studio.py: a real `amadeus serve` process and Debian's
chromium, headless, driven by Playwright (which launches the system browser: it downloads none)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serve(workdir: Path, extra: Sequence[str] = ()) -> Iterator[str]:
    """`amadeus serve --port 0` in `workdir` (its save/ and takes/); yields the page's address."""
    proc = subprocess.Popen([sys.executable, "-m", "amadeus.cli", "serve", "--port", "0", *extra], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        while not lines or not lines[-1].startswith("amadeus studio:"):
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise RuntimeError("amadeus serve ended before serving:\n" + "".join(lines))
            lines.append(line)
        yield lines[-1].split()[-1].rstrip("/")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def launch(playwright, **kwargs):
    """Debian's chromium, headless; sound may start without a click (there is no one to click)."""
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                      args=["--autoplay-policy=no-user-gesture-required"], **kwargs)
