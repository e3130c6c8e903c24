"""The studio's HTTP and WebSocket protocol, spoken by a plain client to a real server on 127.0.0.1.

A tiny Performance RNN answers; each test plays the page's part: MIDI messages stamped with the page's
clock, the hand-over button, stop, again, settings and dropped files.
"""

import asyncio
import base64
import io
import json
import time
from pathlib import Path

import mido
import pretty_midi
import pytest
from aiohttp import ClientSession, WSMsgType
from aiohttp.test_utils import TestServer
from test_live import save_tiny_checkpoint

from amadeus.studio.models import ModelShelf
from amadeus.studio.samples import render_samples
from amadeus.studio.server import Studio, make_app, take_path


@pytest.fixture(scope="module")
def samples():
    return render_samples()


@pytest.fixture
def studio(tmp_path, samples):
    ck = save_tiny_checkpoint(tmp_path / "save" / "performance_rnn.int8.sess", seed=3)
    other = save_tiny_checkpoint(tmp_path / "save" / "performance_rnn.sess", seed=5)
    return Studio(ModelShelf([ck, other]), tmp_path / "takes", samples, max_sessions=2, log=lambda line: None)


def run(studio, body):
    """Run `body(client_session, base_url)` against the studio served on 127.0.0.1."""

    async def main():
        server = TestServer(make_app(studio), host="127.0.0.1")
        await server.start_server()
        try:
            async with ClientSession() as http:
                return await body(http, str(server.make_url("")).rstrip("/"))
        finally:
            await server.close()

    return asyncio.run(main())


class Page:
    """The page's side of one socket: its clock (ms since it started), what it sends and hears."""

    def __init__(self, ws):
        self.ws, self.t0, self.heard = ws, time.monotonic(), []
        self.unread = []  # heard while waiting for something else: a later `until` may want it

    def now(self) -> float:
        return (time.monotonic() - self.t0) * 1000.0

    async def send(self, **message):
        await self.ws.send_str(json.dumps(message))

    async def key(self, pitch, velocity=80):
        await self.send(type="midi", data=[0x90, pitch, velocity], t=self.now())

    async def release(self, pitch):
        await self.send(type="midi", data=[0x80, pitch, 0], t=self.now())

    async def phrase(self, pitches=(60, 64, 67, 72), step=0.06):
        for p in pitches:
            await self.key(p)
            await asyncio.sleep(step)
            await self.release(p)

    async def until(self, kind, timeout=20.0, **match):
        """The first unread message of `kind` (matching `match`): messages arrive in the order the server
        sends them, which need not be the order a test asks for them (a "listening" may come before the
        reply to a settings message)."""

        def wanted(message):
            return message["type"] == kind and all(message.get(k) == v for k, v in match.items())

        for message in self.unread:
            if wanted(message):
                self.unread.remove(message)
                return message
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} {match} within {timeout} s; heard {[m['type'] for m in self.heard][-20:]}"
            msg = await self.ws.receive(timeout=left)
            assert msg.type == WSMsgType.TEXT, msg
            message = json.loads(msg.data)
            self.heard.append(message)
            if wanted(message):
                return message
            self.unread.append(message)


async def open_page(http, url, **settings):
    ws = await http.ws_connect(url + "/ws")
    page = Page(ws)
    ready = await page.until("ready")
    if settings:
        await page.send(type="settings", settings=settings)
        await page.until("settings")
    return page, ready


def midi_file_bytes(notes=((60, 0.0, 0.4), (64, 0.4, 0.8), (67, 0.8, 1.6))):
    pm = pretty_midi.PrettyMIDI(initial_tempo=100)
    piano = pretty_midi.Instrument(0)
    piano.notes += [pretty_midi.Note(70, p, s, e) for p, s, e in notes]
    pm.instruments.append(piano)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


# --- HTTP ------------------------------------------------------------------------------------------------

def test_serves_the_page_samples_and_nothing_else(studio):
    async def body(http, url):
        async with http.get(url + "/") as r:
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]  # nothing from elsewhere
        for name in ("studio.js", "studio.css"):
            async with http.get(f"{url}/static/{name}") as r:
                assert r.status == 200, name
        async with http.get(url + "/samples/index.json") as r:
            index = await r.json()
        async with http.get(url + index["data"]) as r:
            pcm = await r.read()
        assert len(pcm) == 2 * index["frames"] * len(index["pitches"]) and index["pitches"][0] == 21
        statuses = []
        for path in ("/static/..%2Fserver.py", "/static/nothing.js", "/takes/..%2F..%2Fsave%2Fperformance_rnn.sess",
                     "/takes/../save/performance_rnn.sess", "/etc/passwd", "/save/performance_rnn.sess"):
            async with http.get(url + path) as r:
                statuses.append(r.status)
        return statuses

    assert run(studio, body) == [404] * 6


def test_take_path_stays_inside_the_takes_folder(tmp_path):
    takes = tmp_path / "takes"
    (takes / "a").mkdir(parents=True)
    (takes / "a" / "take-001.mid").write_bytes(b"MThd")
    (takes / "a" / "notes.txt").write_text("x")
    (tmp_path / "secret.mid").write_bytes(b"MThd")
    (takes / "link.mid").symlink_to(tmp_path / "secret.mid")
    assert take_path(takes, "a/take-001.mid") == (takes / "a" / "take-001.mid").resolve()
    for name in ("a/notes.txt", "../secret.mid", "link.mid", "a/missing.mid", "a"):
        assert take_path(takes, name) is None, name


# --- a turn ----------------------------------------------------------------------------------------------

def test_a_phrase_is_answered_after_the_silence_with_notes_planned_ahead(studio):
    async def body(http, url):
        page, ready = await open_page(http, url, silence_ms=300, seconds=2.0)
        assert [m["id"] for m in ready["models"]] == ["performance_rnn.int8", "performance_rnn"]
        assert ready["settings"]["model"] == "performance_rnn.int8"  # int8 by default
        await page.until("listening")
        await page.phrase()
        released = page.now()
        answering = await page.until("answering", turn=0)
        first = await page.until("notes", turn=0)
        received = page.now()
        take = await page.until("take", turn=0)
        await page.until("done", turn=0)
        async with http.get(url + take["midi"]) as r:
            data = await r.read()
        media = await page.until("take", turn=0, timeout=60)  # the WAV and piano roll follow
        async with http.get(url + media["wav"]) as r:
            assert r.status == 200 and (await r.read())[:4] == b"RIFF"
        async with http.get(url + media["png"]) as r:
            assert r.status == 200 and (await r.read())[:4] == b"\x89PNG"
        return answering, released, first, received, page.heard, take, data

    answering, released, first, received, heard, take, data = run(studio, body)
    # The hand-over is the silence's end, on the page's clock (the clock maps within a few ms).
    assert abs(answering["handover_t"] - (released + 300)) < 60
    assert first["notes"][0]["kind"] == "on"
    assert received - answering["handover_t"] < 500  # generous: the studio's figure is bench/studio.py's
    notes = [n for m in heard if m["type"] == "notes" for n in m["notes"]]
    ons = [n for n in notes if n["kind"] == "on"]
    offs = [n for n in notes if n["kind"] == "off"]
    assert len(ons) >= 1 and len(ons) == len(offs)  # every note the answer starts, it ends
    assert all(n["t"] >= first["notes"][0]["t"] - 1 for n in notes)
    assert max(n["t"] for n in notes) - first["notes"][0]["t"] <= 2000 + 1  # 2 s of music
    midi = mido.MidiFile(file=io.BytesIO(data))
    assert len(midi.tracks) >= 2  # the phrase and the answer, in one file
    player = next(t for t in midi.tracks if t.name == "player")
    assert [m.note for m in player if m.type == "note_on" and m.velocity > 0] == [60, 64, 67, 72]


def test_the_button_hands_over_and_stop_cancels(studio):
    async def body(http, url):
        page, _ = await open_page(http, url, silence_ms=8000, seconds=30.0)
        await page.until("listening")
        await page.phrase((62, 65))
        pressed = page.now()
        await page.send(type="handover", t=pressed)
        answering = await page.until("answering", turn=0)
        await page.until("notes", turn=0)
        await page.send(type="stop")
        await page.until("cancel", turn=0)
        await page.until("done", turn=0)
        await page.until("listening")
        return answering, pressed

    answering, pressed = run(studio, body)
    assert abs(answering["handover_t"] - pressed) < 30  # the button, not the 8 s silence


def test_again_answers_the_same_phrase_anew(studio):
    async def body(http, url):
        page, _ = await open_page(http, url, silence_ms=200, seconds=1.5, keep_phrases=True)
        await page.phrase()
        await page.until("done", turn=0)
        await page.send(type="again")
        again = await page.until("answering", turn=1)
        await page.until("done", turn=1)
        takes = [m for m in page.heard if m["type"] == "take"]
        return again, takes

    again, takes = run(studio, body)
    assert again["handover_t"] is not None
    assert {t["turn"] for t in takes} >= {0, 1}
    kept = list((studio.takes / "my-playing").glob("*.mid"))
    assert len(kept) == 1  # the phrase, once: "again" answers it without keeping it twice
    pm = pretty_midi.PrettyMIDI(str(kept[0]))
    assert [n.pitch for n in pm.instruments[0].notes] == [60, 64, 67, 72]  # the player's notes alone


def test_a_dropped_file_is_the_phrase_and_a_broken_one_is_one_line(studio):
    async def body(http, url):
        page, _ = await open_page(http, url, seconds=1.0)
        await page.send(type="settings", settings={"length_unit": "bars", "bars": 1})
        await page.until("settings")
        data = base64.b64encode(midi_file_bytes()).decode()
        await page.send(type="file", name="phrase.mid", data=data, t=page.now())
        meter = await page.until("settings")  # bars now count at the file's 100 bpm
        shown = await page.until("phrase")
        await page.until("answering", turn=0)
        await page.until("done", turn=0)
        await page.send(type="file", name="broken.mid", data=base64.b64encode(b"MThd\0\0\0\6junk").decode(),
                        t=page.now())
        broken = await page.until("error")
        await page.send(type="file", name="huge.mid", data="A" * (2 << 20), t=page.now())
        huge = await page.until("error")
        await page.send(type="file", name="x.mid", data="%%%", t=page.now())
        damaged = await page.until("error")
        return meter, shown, broken, huge, damaged

    meter, shown, broken, huge, damaged = run(studio, body)
    assert meter["settings"]["bpm"] == pytest.approx(100) and meter["settings"]["beats_per_bar"] == 4
    assert [n["pitch"] for n in shown["notes"]] == [60, 64, 67]
    assert shown["notes"][-1]["end"] - shown["notes"][0]["start"] == pytest.approx(1600, abs=5)
    for error, word in ((broken, "broken.mid"), (damaged, "x.mid")):
        assert word in error["message"] and "\n" not in error["message"]
    assert "too big" in huge["message"] or "MB" in huge["message"]


def test_bad_settings_and_messages_are_named_and_the_tab_goes_on(studio):
    async def body(http, url):
        page, _ = await open_page(http, url)
        errors = []
        for settings in ({"temperature": 9}, {"tempo": 1}, {"model": "nope"}, {"key": "H major"},
                         {"lowest": "C9x"}, {"dynamics": "fortissimo"}, {"length_unit": "bars", "bars": 500}):
            await page.send(type="settings", settings=settings)
            errors.append((await page.until("error"))["message"])
        await page.ws.send_str("not json")
        errors.append((await page.until("error"))["message"])
        await page.send(type="dance")
        errors.append((await page.until("error"))["message"])
        await page.send(type="midi", data=[300, 1], t=0)
        errors.append((await page.until("error"))["message"])
        await page.send(type="settings", settings={"model": "performance_rnn", "temperature": 0.8})
        return errors, await page.until("settings")

    errors, settings = run(studio, body)
    for word, error in zip(("creativity", "tempo", "nope", "key", "lowest note", "dynamics", "bars", "JSON",
                            "dance", "MIDI message"), errors, strict=True):
        assert word in error and "\n" not in error, (word, error)
    assert settings["settings"]["model"] == "performance_rnn" and settings["settings"]["temperature"] == 0.8


def test_sessions_are_bounded_and_the_next_tab_is_told_busy(studio):
    studio.max_sessions = 1

    async def body(http, url):
        first, _ = await open_page(http, url)
        second = await http.ws_connect(url + "/ws")
        busy = json.loads((await second.receive(timeout=10)).data)
        closed = await second.receive(timeout=10)
        await first.ws.close()
        await asyncio.sleep(0.3)
        third, ready = await open_page(http, url)  # a place is free again
        return busy, closed, ready

    busy, closed, ready = run(studio, body)
    assert busy["type"] == "busy" and "busy" in busy["message"]
    assert closed.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert ready["type"] == "ready"


def test_generation_never_blocks_the_event_loop(studio):
    async def body(http, url):
        page, _ = await open_page(http, url, silence_ms=100, seconds=20.0)
        await page.phrase()
        await page.until("notes", turn=0)
        slowest = 0.0
        for _ in range(10):  # the answer is being generated meanwhile, on the session's thread
            start = time.monotonic()
            async with http.get(url + "/samples/index.json") as r:
                await r.read()
            slowest = max(slowest, time.monotonic() - start)
        await page.send(type="stop")
        await page.until("cancel", turn=0)
        return slowest

    assert run(studio, body) < 0.25


def test_serve_prints_its_address_and_stops_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    import requests

    save_tiny_checkpoint(tmp_path / "save" / "performance_rnn.int8.sess")
    proc = subprocess.Popen([sys.executable, "-m", "amadeus.cli", "serve", "--port", "0", "--https", "--cert-dir",
                             str(tmp_path / "cert")], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("amadeus studio:"):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        url = lines[-1].split()[-1]
        assert url.startswith("https://127.0.0.1:")
        page = requests.get(url, verify=str(tmp_path / "cert" / "studio-cert.pem"), timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "SHA-256" in "".join(lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert Path(tmp_path / "takes").is_dir()


def test_a_new_model_is_a_new_session_and_no_take_is_overwritten(studio):
    async def body(http, url):
        page, first = await open_page(http, url, silence_ms=200, seconds=20.0)
        await page.phrase()
        await page.until("notes", turn=0)
        await page.send(type="settings", settings={"model": "performance_rnn", "seconds": 1.0})
        cancelled = await page.until("cancel", turn=0)  # the running answer stops with its session
        await page.until("done", turn=0)  # ... and its turn ends: the next "done" of turn 0 is the new session's
        second = await page.until("ready")
        await page.until("settings")
        await page.phrase((55, 59, 62))
        await page.until("answering", turn=0)
        await page.until("done", turn=0)
        return first, cancelled, second, page.heard

    first, cancelled, second, heard = run(studio, body)
    assert second["session"] != first["session"] and second["settings"]["model"] == "performance_rnn"
    order = [m["type"] for m in heard]
    last_ready = len(order) - 1 - order[::-1].index("ready")
    assert order.index("cancel") < last_ready  # the page hears the old session end first
    takes = sorted(studio.takes.glob("*/take-001.mid"))
    assert len(takes) == 2 and takes[0].parent != takes[1].parent  # one folder per session
