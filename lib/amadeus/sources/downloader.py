"""The one HTTP downloader every remote source uses.

Streams to `<file>.part` with a progress bar, retries 5xx / 429 / connection errors with exponential
backoff, resumes a partial file with an HTTP Range request (and starts over when the server ignores
Range and answers 200), renames atomically when complete and verifies the sha256. A mismatch deletes
the file and says expected vs got. Requests go one at a time over one keep-alive connection, at least
`delay` seconds apart, with a User-Agent naming the project: polite to small community sites.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib import robotparser
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm

from amadeus import __version__
from amadeus.errors import UserError
from amadeus.params import knob

USER_AGENT = f"amadeus/{__version__} (expressive piano MIDI pipeline; polite dataset downloader)"
CHUNK = 1 << 16
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


@dataclass
class HttpConfig:
    """Network knobs shared by every remote source (each source's params may override them)."""

    connect_timeout: float = knob(15.0, gt=0, help="seconds to open a connection")
    read_timeout: float = knob(60.0, gt=0, help="seconds without a byte before giving up on a read")
    retries: int = knob(5, min=0, max=20, help="retries after a 5xx/429 answer or a broken connection")
    backoff: float = knob(2.0, min=0, help="first retry waits this many seconds; each next one doubles")
    delay: float = knob(0.0, min=0, help="minimum seconds between two requests (politeness)")
    user_agent: str = knob(USER_AGENT)
    # The largest dataset file we fetch (GiantMIDI-Piano's zip) is under 1 GB; the cap stops an endless
    # or hostile response from filling the disk before the sha256 check could fail.
    max_bytes: int = knob(8 << 30, min=1, help="largest file a download may be; a bigger one is refused")


@dataclass
class Fetched:
    """What one download produced (the source record keeps url, bytes, sha256, time)."""

    url: str
    path: Path
    bytes: int
    sha256: str
    seconds: float
    cached: bool = False  # True: the complete file was already in the cache, nothing downloaded

    def record(self) -> dict:
        """For SOURCE.json; `time` is when the file was downloaded (also when it now came from the
        cache), so rebuilding from the cache writes the same record and DVC sees no change."""
        return {"url": self.url, "file": self.path.name, "bytes": self.bytes, "sha256": self.sha256,
                "time": file_time(self.path)}


class HttpError(UserError):
    """A definitive HTTP failure (e.g. 404) that retrying will not fix; scrapers may skip the item."""

    def __init__(self, url: str, status: int, reason: str):
        super().__init__(f"{url}: HTTP {status} {reason}".rstrip())
        self.status = status


class _Retry(Exception):
    """Internal: this attempt failed in a way worth retrying (`progressed`: it saved some bytes)."""

    def __init__(self, message: str, progressed: bool = False):
        super().__init__(message)
        self.progressed = progressed


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> str:
    """sha256 of `path`; on mismatch delete the file and raise a UserError with expected vs got."""
    got = sha256_file(path)
    if expected and got != expected.lower():
        path.unlink(missing_ok=True)
        raise UserError(f"{what}: sha256 mismatch: expected {expected.lower()}, got {got} "
                        f"(file deleted; check the URL/sha256 in params.yaml)")
    return got


def quiet() -> bool:
    """Progress bars only for a person at a terminal: off under CI or when stderr is not a tty."""
    return bool(os.environ.get("CI")) or not sys.stderr.isatty()


def file_time(path: Path) -> str:
    """A file's modification time as UTC ISO 8601 (for a download: when it completed)."""
    return datetime.fromtimestamp(Path(path).stat().st_mtime, UTC).isoformat(timespec="seconds")


class Downloader:
    """Sequential, polite HTTP client: `get_text` for pages, `download` for files."""

    def __init__(self, config: HttpConfig | None = None, *, log=None):
        self.config = config or HttpConfig()
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.session = requests.Session()
        # One connection per host, reused (keep-alive); requests are made one after the other.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = self.config.user_agent
        self._last_request = 0.0
        self._robots: dict[str, robotparser.RobotFileParser | None] = {}

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- requests -------------------------------------------------------------------------------------

    def _get(self, url: str, headers: dict | None = None) -> requests.Response:
        wait = self._last_request + self.config.delay - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_request = time.monotonic()
        try:
            return self.session.get(url, headers=headers or {}, stream=True, allow_redirects=True,
                                    timeout=(self.config.connect_timeout, self.config.read_timeout))
        except requests.exceptions.InvalidURL as e:
            raise UserError(f"{url}: not a valid URL ({e})") from None
        except (requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema):
            raise UserError(f"{url}: not an http(s) URL") from None
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Retry(_short(e)) from None

    def _attempts(self, url: str, work):
        """Run `work()` with retries and exponential backoff on `_Retry`.

        An attempt that saved bytes before the connection broke does not use up a retry: a long
        download over a flaky line keeps resuming as long as it moves forward.
        """
        last, attempt = "", 0
        while attempt <= self.config.retries:
            try:
                return work()
            except _Retry as e:
                last = str(e)
                if not e.progressed:
                    attempt += 1
            if attempt <= self.config.retries:
                pause = self.config.backoff * 2 ** max(attempt - 1, 0)
                self.log(f"  retry {attempt}/{self.config.retries} in {pause:g}s: {url}: {last}")
                time.sleep(pause)
        raise UserError(f"{url}: failed after {self.config.retries + 1} attempts ({last}); "
                        f"check the network and rerun (partial downloads resume)")

    def get_text(self, url: str) -> str:
        """A page's text (for scrapers), with the same retries."""

        def work() -> str:
            with self._get(url) as r:
                _raise_for_status(url, r)
                try:
                    body = r.content
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
                    raise _Retry(_short(e)) from None
                r.encoding = r.encoding or r.apparent_encoding
                return body.decode(r.encoding or "utf-8", errors="replace")

        return self._attempts(url, work)

    def allowed(self, url: str) -> bool:
        """robots.txt says our User-Agent may fetch `url` (no robots.txt, or an unreadable one: yes)."""
        parts = urlsplit(url)
        root = f"{parts.scheme}://{parts.netloc}"
        if root not in self._robots:
            rp: robotparser.RobotFileParser | None = None
            try:
                text = self.get_text(urljoin(root, "/robots.txt"))
                rp = robotparser.RobotFileParser()
                rp.parse(text.splitlines())
            except UserError:
                rp = None  # missing or unreachable robots.txt: no rules to follow
            self._robots[root] = rp
        rp = self._robots[root]
        return rp is None or rp.can_fetch(self.config.user_agent, url)

    # -- files ----------------------------------------------------------------------------------------

    def download(self, url: str, path: Path, sha256: str = "", *, desc: str = "") -> Fetched:
        """Download `url` to `path` (resuming `path.part`); verify `sha256` when given.

        A complete `path` already there (with the right sha256 when one is given) is reused as is.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        if path.exists():
            got = sha256_file(path)
            if not sha256 or got == sha256.lower():
                return Fetched(url, path, path.stat().st_size, got, 0.0, cached=True)
            self.log(f"  {path}: cached copy has the wrong sha256; downloading again")
            path.unlink()
        part = path.with_name(path.name + ".part")
        self._attempts(url, lambda: self._stream(url, part, desc or path.name))
        got = check_sha256(part, sha256, url)
        os.replace(part, path)
        return Fetched(url, path, path.stat().st_size, got, time.monotonic() - start)

    def _stream(self, url: str, part: Path, desc: str) -> None:
        offset = part.stat().st_size if part.exists() else 0
        # identity: byte offsets and Content-Length must count the file's bytes, not a gzip stream's.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with self._get(url, headers) as r:
            if r.status_code == 416 and offset:
                _drain(r)
                # Range past the end: the .part may already be whole, or the file changed; start over.
                total = _content_range_total(r.headers.get("Content-Range", ""))
                if total == offset:
                    return
                part.unlink()
                raise _Retry("server refused the resume range; restarting from zero")
            _raise_for_status(url, r)
            if offset and r.status_code == 206:
                start = _content_range_start(r.headers.get("Content-Range", ""))
                if start != offset:
                    part.unlink()
                    raise _Retry(f"server resumed at byte {start}, not {offset}; restarting from zero")
                mode = "ab"
            else:
                if offset:
                    self.log(f"  {url}: server ignored the Range request; downloading from the start")
                offset, mode = 0, "wb"
            length = r.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=desc[:40], disable=quiet(), leave=False)
            try:
                if total is not None and total > self.config.max_bytes:
                    raise self._too_big(url, part, f"announces {total:,} bytes, more")
                with open(part, mode) as f:
                    size = offset
                    for chunk in r.iter_content(CHUNK):
                        size += len(chunk)
                        if size > self.config.max_bytes:
                            raise self._too_big(url, part, "sent more")
                        f.write(chunk)
                        bar.update(len(chunk))
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.Timeout) as e:
                size = part.stat().st_size
                raise _Retry(f"connection broken at byte {size}: {_short(e)}", size > offset) from None
            finally:
                bar.close()
        size = part.stat().st_size
        if total is not None and size < total:
            raise _Retry(f"connection closed at byte {size} of {total}", size > offset)


    def _too_big(self, url: str, part: Path, what: str) -> UserError:
        """Refuse a download over `max_bytes`; the partial file goes (resuming it would only grow it)."""
        part.unlink(missing_ok=True)
        return UserError(f"{url}: {what} than max_bytes ({self.config.max_bytes:,} bytes); partial file deleted "
                         f"(raise max_bytes in the source's params if the file really is that big)")


def _raise_for_status(url: str, r: requests.Response) -> None:
    if r.status_code >= 400:
        _drain(r)
    if r.status_code in RETRY_STATUS:
        raise _Retry(f"HTTP {r.status_code} {r.reason or ''}".rstrip())
    if r.status_code >= 400:
        raise HttpError(url, r.status_code, r.reason or "")


def _drain(r: requests.Response) -> None:
    """Read a small error body so the keep-alive connection can be reused (politeness: one connection)."""
    length = r.headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= 1 << 20:
        with contextlib.suppress(requests.RequestException):
            r.content  # noqa: B018 (reading it is the point)


def _content_range_start(value: str) -> int | None:
    m = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", value)
    return int(m.group(1)) if m else None


def _content_range_total(value: str) -> int | None:
    m = re.match(r"bytes\s+[\d*-]+/(\d+)", value)
    return int(m.group(1)) if m else None


def _short(e: BaseException) -> str:
    """One line from a requests/urllib3 exception (they nest several reprs)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    with contextlib.suppress(Exception):
        m = re.search(r"\b(Connection refused|Read timed out|Name or service not known|"
                      r"Connection reset by peer|IncompleteRead\([^)]*\)|Connection broken)", text)
        if m:
            return m.group(1)
    return text[:200]
