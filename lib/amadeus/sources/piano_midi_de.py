"""`piano-midi-de`: the classical piano collection of piano-midi.de (Bernd Krueger), CC BY-SA 3.0 DE.

The index page lists one page per composer (table rows of class "midi"); each composer page links
every piece in several versions. `file_pattern` keeps one version (default: the single-track
`*format0.mid`, as the seed project did) so no piece is counted twice.
Files land in `dataset/midi/<name>/<composer page>/<file>`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from urllib.parse import urlsplit

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.sources.archive import is_midi_name
from amadeus.sources.base import Context
from amadeus.sources.downloader import HttpConfig
from amadeus.sources.scrape import Crawler, links, safe_part, url_path_name

INDEX_URL = "http://www.piano-midi.de/midi_files.htm"


@dataclass(kw_only=True)
class Config(HttpConfig):
    index_url: str = knob(INDEX_URL, help="the page listing the composer pages")
    file_pattern: str = knob("*format0.mid", help="glob on the file name (case-insensitive)")
    row_class: str = knob("midi", help="class of the index rows that link composer pages ('': any)")
    delay: float = knob(1.0, min=0, help="minimum seconds between two requests (politeness)")


def composer_pages(html: str, index_url: str, row_class: str) -> list[str]:
    host = urlsplit(index_url).netloc
    pages = []
    for ln in links(html, index_url):
        name = url_path_name(ln.url).lower()
        same_site = urlsplit(ln.url).netloc == host
        in_row = not row_class or row_class in ln.row_class.split()
        if same_site and in_row and name.endswith((".htm", ".html")) and ln.url != index_url:
            pages.append(ln.url)
    return list(dict.fromkeys(pages))


def fetch(config: Config, ctx: Context) -> None:
    items: list[tuple[str, str]] = []
    with ctx.downloader(config) as dl:
        crawl = Crawler(dl, ctx)
        index = crawl.page(config.index_url)
        if index is None:
            raise UserError(f"source '{ctx.name}': index page {config.index_url} could not be fetched")
        pages = composer_pages(index, config.index_url, config.row_class)
        if not pages:
            raise UserError(f"source '{ctx.name}': no composer pages linked from {config.index_url}")
        ctx.log(f"  {config.index_url}: {len(pages)} composer pages")
        for page in pages:
            html = crawl.page(page)
            if html is None:
                continue
            folder = safe_part(url_path_name(page).rsplit(".", 1)[0])
            for ln in links(html, page):
                name = url_path_name(ln.url)
                if is_midi_name(name) and fnmatch.fnmatch(name.lower(), config.file_pattern.lower()):
                    items.append((ln.url, f"{folder}/{safe_part(name)}"))
        if not items:
            raise UserError(f"source '{ctx.name}': no MIDI links matching {config.file_pattern!r} "
                            f"on {len(pages)} composer pages")
        crawl.download_all(items)
