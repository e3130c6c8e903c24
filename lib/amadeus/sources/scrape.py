"""Shared by the web-page sources: link extraction, cached pages, and polite per-file downloads.

Pages and files are kept in the source's cache folder, so a rerun (or DVC's rerun after it removed the
output) makes no requests at all; delete `dataset/downloads/<name>/` to scrape afresh.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from amadeus.errors import UserError
from amadeus.fileio import atomic_open, write_json
from amadeus.sources.base import Context, looks_like_midi
from amadeus.sources.downloader import Downloader, HttpError


@dataclass
class Link:
    url: str  # absolute
    row_class: str  # class of the table row the link sits in ('' outside a classed row)


class _LinkParser(HTMLParser):
    def __init__(self, page_url: str):
        super().__init__(convert_charrefs=True)
        self.base = page_url
        self.row_class = ""
        self.links: list[Link] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "base" and a.get("href"):
            self.base = urljoin(self.base, a["href"])
        elif tag == "tr":
            self.row_class = a.get("class", "")
        elif tag == "a" and a.get("href"):
            href = a["href"].strip()
            if not href.lower().startswith(("javascript:", "mailto:", "#")):
                self.links.append(Link(urljoin(self.base, href).split("#", 1)[0], self.row_class))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("tr", "table"):
            self.row_class = ""


def links(html: str, page_url: str) -> list[Link]:
    """Every <a href> of a page as an absolute URL (resolved like a browser, <base href> included)."""
    p = _LinkParser(page_url)
    p.feed(html)
    p.close()
    return p.links


def url_path_name(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[-1]


def safe_part(text: str) -> str:
    return re.sub(r"[^\w.+-]", "_", text).strip("._") or "_"


class Crawler:
    """Polite page and file fetching for one scraping source, remembering what failed for good.

    Dead links (4xx), robots.txt refusals and non-MIDI files are kept in `failed.json` in the cache
    and not asked for again on a rerun (delete the cache folder to retry them).
    """

    def __init__(self, dl: Downloader, ctx: Context):
        self.dl, self.ctx = dl, ctx
        self.failed_path = ctx.cache / "failed.json"
        self.failed: dict[str, str] = {}
        if self.failed_path.is_file():
            self.failed = json.loads(self.failed_path.read_text())

    def _fail(self, url: str, reason: str) -> None:
        self.ctx.skip(url, reason)
        if self.failed.get(url) != reason:
            self.failed[url] = reason
            write_json(self.failed_path, self.failed)

    def _known_bad(self, url: str) -> bool:
        if url in self.failed:
            self.ctx.skip(url, self.failed[url], note=" (remembered from an earlier run)")
            return True
        return False

    def page(self, url: str) -> str | None:
        """A listing page, from the cache when it was fetched before; None (and a skip) on a 4xx."""
        key = hashlib.sha256(url.encode()).hexdigest()[:12]
        cached = self.ctx.cache / "pages" / f"{safe_part(url_path_name(url))}-{key}.html"
        if cached.is_file():
            return cached.read_text(encoding="utf-8")
        if self._known_bad(url):
            return None
        if not self.dl.allowed(url):
            self._fail(url, "robots.txt disallows it")
            return None
        try:
            text = self.dl.get_text(url)
        except HttpError as e:
            self._fail(url, f"HTTP {e.status}")
            return None
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cached, "w") as f:
            f.write(text)
        return text

    def download_all(self, items: list[tuple[str, str]]) -> int:
        """Download (url, relative path) pairs into the cache and copy them to the output.

        A dead link (4xx), a robots.txt refusal or a file that is not MIDI is skipped and recorded; a
        network failure after the retries stops the whole fetch (rerun to continue where it stopped).
        """
        ctx = self.ctx
        seen: dict[str, str] = {}  # relative path -> url
        done = 0
        for n, (url, rel) in enumerate(items, 1):
            if seen.get(rel) == url:
                continue  # the same link twice
            if rel in seen:  # two different files with one name: keep both
                stem, dot, ext = rel.rpartition(".")
                rel = f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:8]}{dot}{ext}"
            seen[rel] = url
            cached = ctx.cache / "files" / rel
            if not cached.is_file():
                if self._known_bad(url):
                    continue
                if not self.dl.allowed(url):
                    self._fail(url, "robots.txt disallows it")
                    continue
            try:
                got = self.dl.download(url, cached, desc=f"[{n}/{len(items)}] {cached.name}")
            except HttpError as e:
                self._fail(url, f"HTTP {e.status}")
                continue
            if not looks_like_midi(got.path):
                got.path.unlink()
                self._fail(url, "not a MIDI file")
                continue
            ctx.note(got)
            out = ctx.out / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(got.path, out)
            done += 1
        if items and not done:
            raise UserError(f"source '{ctx.name}': none of the {len(items)} linked MIDI files could be "
                            f"fetched (see the skipped lines above)")
        return done
