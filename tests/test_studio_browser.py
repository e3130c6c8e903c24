"""The studio in a real browser: Debian's chromium, headless, against a real `amadeus serve`.

Play a phrase on the page's keyboard and receive and schedule the answer; drop a MIDI file (a good one
and a broken one); no console errors; nothing loaded from outside the server; the page laid out on a
phone's screen; screenshots that are not blank. CI installs chromium (`make test` runs `make browser`)
and runs these; only a machine without chromium outside CI skips them.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pretty_midi
import pytest
from studio_browser import chromium_path, launch, serve
from test_live import save_tiny_checkpoint

if chromium_path() is None:
    if os.environ.get("CI"):
        raise RuntimeError("CI must run the studio's browser tests: install chromium (`make browser`)")
    pytest.skip("no chromium here (`make browser` installs it)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def studio_url(tmp_path_factory):
    work = tmp_path_factory.mktemp("studio")
    save_tiny_checkpoint(work / "save" / "performance_rnn.int8.sess", seed=2)
    with serve(work, ["--max-sessions", "4"]) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


class Watched:
    """A page with everything it says and loads recorded."""

    def __init__(self, browser, url, **context):
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(url + "/")
        self.page.wait_for_selector("body[data-ready='1']", timeout=30_000)

    def stats(self, name):
        return self.page.evaluate(f"window.studio.stats.{name}")

    def set(self, selector, value):
        """Type a setting as the player would, then leave the field (keys typed in it play nothing)."""
        self.page.fill(selector, str(value))
        self.page.dispatch_event(selector, "change")
        self.page.locator(selector).blur()
        self.page.wait_for_function("() => document.querySelector('#settings-error').textContent === ''")

    def close(self):
        self.context.close()


@pytest.fixture
def watched(browser, studio_url):
    page = Watched(browser, studio_url)
    yield page
    page.close()
    assert page.errors == []  # no console errors, whatever the test did
    outside = [u for u in page.requests if not u.startswith((studio_url, "ws://127.0.0.1", "data:", "blob:"))]
    assert outside == []  # the page loads nothing from anywhere but this server


def test_play_on_the_keyboard_and_the_answer_is_scheduled(watched):
    page = watched.page
    watched.set("#silence-ms", 300)
    watched.set("#length-seconds", 2)
    for pitch in (60, 64, 67, 72):
        key = page.locator(f"#keyboard [data-pitch='{pitch}']")
        key.dispatch_event("pointerdown", {"pointerId": 1, "isPrimary": True, "button": 0, "buttons": 1})
        page.wait_for_timeout(80)
        key.dispatch_event("pointerup", {"pointerId": 1, "isPrimary": True, "button": 0, "buttons": 0})
    page.wait_for_function("() => window.studio.stats.latencies.length >= 1", timeout=20_000)
    page.wait_for_function("() => window.studio.stats.scheduled.length >= 1", timeout=20_000)
    latency = watched.stats("latencies")[0]
    scheduled = watched.stats("scheduled")
    assert 0 <= latency < 1000  # the figure the benchmark reports (bench/studio.py)
    assert all(n["turn"] == 0 and 0 <= n["pitch"] <= 127 and 1 <= n["velocity"] <= 127 for n in scheduled)
    assert all(n["at_ms"] >= scheduled[0]["at_ms"] - 1 for n in scheduled)  # none before the first note
    link = page.wait_for_selector("#takes a[href$='.mid']", timeout=30_000)
    response = page.request.get(link.evaluate("a => a.href"))
    assert response.ok and response.body()[:4] == b"MThd"


def test_stop_and_again(watched):
    page = watched.page
    watched.set("#silence-ms", 200)
    watched.set("#length-seconds", 30)
    page.keyboard.down("a")
    page.wait_for_timeout(100)
    page.keyboard.up("a")
    page.wait_for_function("() => window.studio.stats.latencies.length >= 1", timeout=20_000)
    page.click("#stop-btn")
    page.wait_for_selector("#status[data-state='listening']", timeout=20_000)
    page.click("#again-btn")
    page.wait_for_function("() => window.studio.stats.latencies.length >= 2", timeout=20_000)
    page.click("#stop-btn")
    assert {n["turn"] for n in watched.stats("scheduled")} >= {1}


def phrase_bytes():
    pm = pretty_midi.PrettyMIDI(initial_tempo=90)
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(75, p, i * 0.33, i * 0.33 + 0.3) for i, p in enumerate((62, 66, 69, 74))]
    pm.instruments.append(piano)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def test_drop_a_midi_file_and_a_broken_one(watched):
    page = watched.page
    watched.set("#length-seconds", 1)
    page.set_input_files("#file-input", files=[{"name": "phrase.mid", "mimeType": "audio/midi",
                                                "buffer": phrase_bytes()}])
    page.wait_for_function("() => window.studio.stats.latencies.length >= 1", timeout=20_000)
    page.wait_for_function("() => window.studio.stats.scheduled.length >= 1", timeout=20_000)
    page.set_input_files("#file-input", files=[{"name": "broken.mid", "mimeType": "audio/midi",
                                                "buffer": b"MThd\x00\x00\x00\x06garbage"}])
    page.wait_for_function("() => document.body.innerText.includes('broken.mid')", timeout=20_000)


def test_on_a_phone_screen_and_not_blank(browser, studio_url, tmp_path):
    from PIL import Image

    for name, size in (("desktop", {"width": 1280, "height": 800}), ("phone", {"width": 390, "height": 844})):
        page = Watched(browser, studio_url, viewport=size, has_touch=name == "phone", is_mobile=name == "phone")
        try:
            width = page.page.evaluate("document.documentElement.scrollWidth")
            assert width <= size["width"] + 1, f"{name}: the page is {width} px wide"  # no sideways scrolling
            assert page.page.locator("#keyboard").is_visible() and page.page.locator("#handover-btn").is_visible()
            shot = tmp_path / f"studio-{name}.png"
            page.page.screenshot(path=str(shot))
            grey = np.asarray(Image.open(shot).convert("L"))
            assert int(grey.max()) - int(grey.min()) > 64 and len(np.unique(grey)) > 8, f"{name}: blank"
            assert page.errors == []
        finally:
            page.close()
