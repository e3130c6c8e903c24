"""`piano-e-competition`: MIDI of the International Piano-e-Competition (Yamaha Disklavier recordings).

Scrapes the per-year listing pages `midi_<YEAR>.asp` for links to MIDI files (resolved as a browser
would, so root-relative `/MIDIFiles/...` and page-relative links both work). The default years are
those of the seed project's scraper (2002 2004 2006 2008 2009 2011; its `midi_20011.asp` typo missed
2011). No licence is published with the files; MAESTRO is the licensed successor of this data.
Files land in `dataset/midi/<name>/<year>/<file>`.
"""

from __future__ import annotations

from dataclasses import dataclass

from amadeus.errors import UserError
from amadeus.params import knob
from amadeus.sources.archive import is_midi_name
from amadeus.sources.base import Context
from amadeus.sources.downloader import HttpConfig
from amadeus.sources.scrape import Crawler, links, safe_part, url_path_name

# The listing pages sit at the site root and link /MIDIFiles/<year>/<name>.MID (as the public scrapers
# for 2002-2018 use them); the seed's older script used /ecompetition/midi_<year>.asp.
PAGE_URL = "http://www.piano-e-competition.com/midi_{year}.asp"


@dataclass(kw_only=True)
class Config(HttpConfig):
    page_url: str = knob(PAGE_URL, help="listing page; {year} is replaced by each year")
    years: list[int] = knob([2002, 2004, 2006, 2008, 2009, 2011], min=2002, max=2100)
    delay: float = knob(1.0, min=0, help="minimum seconds between two requests (politeness)")


def fetch(config: Config, ctx: Context) -> None:
    if "{year}" not in config.page_url:
        raise UserError(f"params.yaml: sources.{ctx.name}.page_url: must contain {{year}}")
    if not config.years:
        raise UserError(f"params.yaml: sources.{ctx.name}.years: give at least one year")
    items: list[tuple[str, str]] = []
    with ctx.downloader(config) as dl:
        crawl = Crawler(dl, ctx)
        for year in sorted(set(config.years)):
            page = config.page_url.replace("{year}", str(year))
            html = crawl.page(page)
            if html is None:
                continue
            found = [ln.url for ln in links(html, page) if is_midi_name(url_path_name(ln.url))]
            ctx.log(f"  {page}: {len(found)} MIDI links")
            items += [(u, f"{year}/{safe_part(url_path_name(u))}") for u in dict.fromkeys(found)]
        if not items:
            raise UserError(f"source '{ctx.name}': no MIDI links found on the pages for years "
                            f"{', '.join(map(str, config.years))}; check page_url ({config.page_url})")
        crawl.download_all(items)
