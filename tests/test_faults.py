"""Write failures on real file systems (a tiny tmpfs for a full disk, a read-only tmpfs), stale temps
of killed writers, a closed stdout pipe and a missing CUDA: each one line, exit 2 (141 for the pipe),
nothing half-written left."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from amadeus import checkpoint, fileio
from amadeus.errors import UserError, WriteError, main_entry

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@contextlib.contextmanager
def tmpfs(where: Path, options: str) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}): needs root in a VM")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "full", "size=64k") as m:
        yield m


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "ro", "size=1m,ro") as m:
        yield m


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*"))


def fill(folder: Path) -> None:
    """Take every free block (the last write fails with ENOSPC, as a real full disk does)."""
    with contextlib.suppress(OSError), open(folder / "pad", "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


def big() -> dict:
    return {"x": torch.zeros(100_000)}  # 400 KB: more than the 64 KB disk


def test_checkpoint_save_on_a_full_disk_names_the_file_and_leaves_nothing(full_disk):
    target = full_disk / "model.sess"
    with pytest.raises(WriteError) as e:
        checkpoint.save(target, big())  # torch's own error is an inline_container.cc RuntimeError
    assert str(e.value) == f"{target}: no space left on device"
    assert leftovers(full_disk) == []


def test_checkpoint_save_on_a_read_only_disk_names_the_target_not_the_temp(read_only):
    target = read_only / "save" / "model.sess"
    with pytest.raises(WriteError) as e:
        checkpoint.save(read_only / "model.sess", big())
    assert str(e.value) == f"{read_only / 'model.sess'}: read-only file system"
    with pytest.raises(WriteError) as e:  # the folder would have to be made first
        fileio.write_json(target, {})
    assert str(e.value) == f"{target}: read-only file system"


def test_text_write_on_a_full_disk(full_disk):
    target = full_disk / "m.json"
    with pytest.raises(WriteError, match=r"m\.json: no space left on device$"):
        fileio.write_json(target, {"k": "v" * 200_000})
    assert leftovers(full_disk) == []


def test_an_input_error_inside_a_write_is_not_blamed_on_the_target(tmp_path):
    with pytest.raises(FileNotFoundError), fileio.atomic_open(tmp_path / "out.bin") as f:
        f.write(open(tmp_path / "missing.bin", "rb").read())  # noqa: SIM115
    assert leftovers(tmp_path) == []


def _one_line(r: subprocess.CompletedProcess, *parts: str) -> None:
    err = r.stderr.strip()
    assert r.returncode == 2, r.stderr
    assert "\n" not in err and "Traceback" not in err, err
    for part in parts:
        assert part in err, err


def test_generate_out_on_a_full_and_a_read_only_disk(tmp_path, full_disk, read_only):
    sys.path.insert(0, str(ROOT / "tests"))
    from test_generation import save_checkpoint, tiny_model

    sess = tmp_path / "t.sess"
    save_checkpoint(sess, tiny_model())
    for folder, cause in ((full_disk, "no space left on device"), (read_only, "read-only file system")):
        out = folder / "out.mid"
        if folder == full_disk:
            fill(folder)
        r = subprocess.run([PY, "-m", "amadeus.cli", "generate", "--checkpoint", str(sess), "--length", "400",
                            "--seed", "0", "--out", str(out)], capture_output=True, text=True, timeout=120)
        _one_line(r, f"error: {out}: {cause}")
        assert [n for n in leftovers(folder) if n != "pad"] == []


def test_a_stage_writing_metrics_on_a_read_only_disk(read_only, tmp_path):
    # The download stage of a local source: it writes the source record under dataset/ (read-only here).
    midi = tmp_path / "midi"
    midi.mkdir()
    sys.path.insert(0, str(ROOT / "tests"))
    from test_generation import prompt_midi

    prompt_midi().write(str(midi / "a.mid"))
    params = tmp_path / "params.yaml"
    params.write_text(f"sources:\n  mine: {{kind: local, path: {midi}}}\n")
    r = subprocess.run([PY, str(ROOT / "stages" / "download.py"), "mine", "--params", str(params)],
                       cwd=read_only, capture_output=True, text=True, timeout=120)
    _one_line(r, "error: ", "read-only file system")
    assert leftovers(read_only) == []


def test_stale_temps_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([PY, "-c", "import time; time.sleep(30)"])
    try:
        stale = tmp_path / f".model.sess.{dead_pid}.abc123.tmp"
        live = tmp_path / f".model.sess.{alive.pid}.def456.tmp"
        mine = tmp_path / f".model.sess.{os.getpid()}.ghi789.tmp"
        other = tmp_path / ".hidden.tmp"  # not named like one of ours: never touched
        for p in (stale, live, mine, other):
            p.write_bytes(b"half")
        assert fileio.remove_stale_temps(tmp_path, "other.sess") == []
        assert fileio.remove_stale_temps(tmp_path) == [stale]
        assert {p.name for p in tmp_path.iterdir()} == {live.name, mine.name, other.name}
        stale.write_bytes(b"half")
        fileio._swept.discard(os.fspath(tmp_path.resolve()))
        checkpoint.save(tmp_path / "model.sess", {"x": 1})  # the next write sweeps the folder
        assert not stale.exists() and live.exists()
    finally:
        alive.kill()
        alive.wait()


def test_broken_stdout_pipe_is_quiet(tmp_path):
    code = ("from amadeus.errors import main_entry\n"
            "@main_entry\n"
            "def main():\n"
            "    for i in range(200000): print('line', i)\n"
            "main()\n")
    r = subprocess.run(f"{PY} -c \"{code}\" | head -1", shell=True, capture_output=True, text=True,
                       executable="/bin/bash", timeout=60)
    assert r.stdout == "line 0\n"
    assert r.stderr == "", r.stderr
    r = subprocess.run(f"set -o pipefail; {PY} -c \"{code}\" | head -1", shell=True, capture_output=True,
                       executable="/bin/bash", timeout=60)
    assert r.returncode == 141


def test_user_error_and_os_error_become_one_line(capsys, tmp_path):
    @main_entry
    def reads() -> None:
        open(tmp_path / "nope.mid")  # noqa: SIM115

    with pytest.raises(SystemExit) as e:
        reads()
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.mid'}: no such file or directory\n"

    @main_entry
    def bug() -> None:
        raise ValueError("a bug keeps its traceback")

    with pytest.raises(ValueError):
        bug()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the error cannot happen")
def test_cuda_without_cuda_is_one_line():
    from amadeus.hardware import resolve_device

    with pytest.raises(UserError, match="^params.yaml: train.device is cuda but .*use auto or cpu$"):
        resolve_device("cuda", "params.yaml: train.device")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".", "", "x\\0y", "/abs"])
def test_a_source_name_with_a_path_in_it_is_refused(tmp_path, name):
    from amadeus.pipeline import download, paths

    with pytest.raises(UserError, match=r"^params.yaml: sources: .* is not a valid source name; allowed: "):
        download.run({"sources": {name: {"kind": "local", "path": str(tmp_path)}}}, tmp_path, name)
    with pytest.raises(UserError):
        paths.midi_dir(name, tmp_path)
    assert leftovers(tmp_path) == []
    assert paths.midi_dir("maestro-sample_v1.2", tmp_path) == tmp_path / "dataset" / "midi" / "maestro-sample_v1.2"


def test_an_endless_download_stops_at_max_bytes(tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from amadeus.sources.downloader import Downloader, HttpConfig

    class Endless(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self.send_response(200)
            if self.path == "/lying":
                self.send_header("Content-Length", str(10 << 30))
            self.end_headers()  # no Content-Length on /endless: the body ends when the server closes
            with contextlib.suppress(OSError):
                while True:
                    self.wfile.write(b"\0" * 65536)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with Downloader(HttpConfig(retries=0, max_bytes=1 << 20, read_timeout=5)) as dl:
            for route, said in (("/endless", "sent more than max_bytes"), ("/lying", "announces")):
                with pytest.raises(UserError, match=f"^{base}{route}: {said}.*1,048,576 bytes.*partial file deleted"):
                    dl.download(base + route, tmp_path / "x.zip")
                assert leftovers(tmp_path) == []
    finally:
        httpd.shutdown()
        httpd.server_close()
