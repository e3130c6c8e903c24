"""The downloader and safe extraction against a real HTTP server on 127.0.0.1 started by the test."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from amadeus.errors import UserError
from amadeus.sources import archive
from amadeus.sources.downloader import Downloader, HttpConfig, HttpError, quiet

# ---------------------------------------------------------------------------------------------------
# A small HTTP/1.1 server with Range support and scripted failures (also used by test_sources.py).


@dataclass
class Route:
    body: bytes
    fail_first: int = 0  # answer 500 this many times first
    drop_first: int = 0  # send the headers and half the body, then cut the connection, this many times
    ignore_range: bool = False  # answer 200 with the whole body even to a Range request
    content_type: str = "application/octet-stream"
    hits: int = 0


@dataclass
class Request:
    path: str
    headers: dict
    port: int
    time: float


@dataclass
class Server:
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    base: str = ""

    def add(self, path: str, body: bytes | str, **kw) -> str:
        if isinstance(body, str):
            body = body.encode()
            kw.setdefault("content_type", "text/html; charset=utf-8")
        self.routes[path] = Route(body, **kw)
        return self.base + path

    def requests(self, path: str) -> list[Request]:
        return [r for r in self.log if r.path == path]


def _handler(server: Server):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, so "one connection" can be checked

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            server.log.append(Request(self.path, dict(self.headers), self.client_address[1], time.monotonic()))
            route = server.routes.get(self.path)
            if route is None:
                self._send(404, b"not found")
                return
            route.hits += 1
            if route.hits <= route.fail_first:
                self._send(500, b"try again")
                return
            body, status, headers = route.body, 200, {"Content-Type": route.content_type,
                                                      "Accept-Ranges": "bytes"}
            rng = self.headers.get("Range")
            if rng and not route.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                body = body[start:]
            if route.hits <= route.fail_first + route.drop_first:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._send(status, body, headers)

    return Handler


@contextlib.contextmanager
def running_server() -> Iterator[Server]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server():
    with running_server() as state:
        yield state


FAST = HttpConfig(connect_timeout=5, read_timeout=5, retries=3, backoff=0.01)


def payload(n: int = 300_000) -> bytes:
    return os.urandom(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------------
# Downloads


def test_download_verifies_sha256_and_leaves_no_part_file(server, tmp_path):
    data = payload()
    url = server.add("/data.bin", data)
    with Downloader(FAST) as dl:
        got = dl.download(url, tmp_path / "data.bin", sha(data))
    assert (tmp_path / "data.bin").read_bytes() == data
    assert got.sha256 == sha(data) and got.bytes == len(data) and not got.cached
    assert not (tmp_path / "data.bin.part").exists()


def test_404_is_one_clear_error_without_retries(server, tmp_path):
    with Downloader(FAST) as dl, pytest.raises(HttpError, match="HTTP 404") as e:
        dl.download(server.base + "/missing.zip", tmp_path / "missing.zip")
    assert e.value.status == 404
    assert len(server.requests("/missing.zip")) == 1
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_500_then_ok_is_retried(server, tmp_path):
    data = payload(5000)
    url = server.add("/flaky.bin", data, fail_first=2)
    with Downloader(FAST) as dl:
        dl.download(url, tmp_path / "flaky.bin", sha(data))
    assert (tmp_path / "flaky.bin").read_bytes() == data
    assert len(server.requests("/flaky.bin")) == 3


def test_retries_run_out_with_a_clear_message(server, tmp_path):
    url = server.add("/down.bin", b"x", fail_first=100)
    cfg = HttpConfig(retries=2, backoff=0.01)
    with Downloader(cfg) as dl, pytest.raises(UserError, match="failed after 3 attempts.*HTTP 500"):
        dl.download(url, tmp_path / "down.bin")
    assert len(server.requests("/down.bin")) == 3
    assert not (tmp_path / "down.bin").exists()


def test_connection_dropped_half_way_resumes_with_range(server, tmp_path):
    data = payload(400_000)
    url = server.add("/big.bin", data, drop_first=1)
    with Downloader(FAST) as dl:
        dl.download(url, tmp_path / "big.bin", sha(data))
    assert (tmp_path / "big.bin").read_bytes() == data
    first, second = server.requests("/big.bin")
    assert "Range" not in first.headers
    resumed_at = int(second.headers["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at < len(data)  # it continued from the partial file, not from zero


def test_resuming_that_moves_forward_does_not_use_up_retries(server, tmp_path):
    data = payload(1_000_000)  # big enough that every cut connection saved some 64 KiB chunks
    url = server.add("/flakyline.bin", data, drop_first=3)
    with Downloader(HttpConfig(retries=0, backoff=0.01)) as dl:
        dl.download(url, tmp_path / "flakyline.bin", sha(data))
    assert (tmp_path / "flakyline.bin").read_bytes() == data
    assert len(server.requests("/flakyline.bin")) == 4


def test_server_ignoring_range_starts_over_and_ends_identical(server, tmp_path):
    data = payload(200_000)
    url = server.add("/norange.bin", data, drop_first=1, ignore_range=True)
    with Downloader(FAST) as dl:
        dl.download(url, tmp_path / "norange.bin", sha(data))
    assert (tmp_path / "norange.bin").read_bytes() == data
    assert "Range" in server.requests("/norange.bin")[1].headers


def test_part_file_from_an_earlier_run_is_resumed(server, tmp_path):
    data = payload(50_000)
    url = server.add("/partial.bin", data)
    (tmp_path / "partial.bin.part").write_bytes(data[:12_345])
    with Downloader(FAST) as dl:
        dl.download(url, tmp_path / "partial.bin", sha(data))
    assert (tmp_path / "partial.bin").read_bytes() == data
    assert server.requests("/partial.bin")[0].headers["Range"] == "bytes=12345-"


def test_wrong_checksum_deletes_the_file_and_says_expected_vs_got(server, tmp_path):
    data = payload(10_000)
    url = server.add("/bad.bin", data)
    wrong = "0" * 64
    with Downloader(FAST) as dl, pytest.raises(UserError) as e:
        dl.download(url, tmp_path / "bad.bin", wrong)
    assert f"expected {wrong}, got {sha(data)}" in str(e.value)
    assert not any(tmp_path.iterdir())


def test_complete_cached_file_is_not_downloaded_again(server, tmp_path):
    data = payload(10_000)
    url = server.add("/once.bin", data)
    with Downloader(FAST) as dl:
        dl.download(url, tmp_path / "once.bin", sha(data))
        again = dl.download(url, tmp_path / "once.bin", sha(data))
    assert again.cached and len(server.requests("/once.bin")) == 1


def test_polite_one_connection_delay_and_user_agent(server, tmp_path):
    for i in range(3):
        server.add(f"/page{i}.html", f"<p>{i}</p>")
    with Downloader(HttpConfig(delay=0.2)) as dl:
        texts = [dl.get_text(server.base + f"/page{i}.html") for i in range(3)]
    assert texts == ["<p>0</p>", "<p>1</p>", "<p>2</p>"]
    times = [r.time for r in server.log]
    assert all(b - a >= 0.18 for a, b in zip(times, times[1:], strict=False))
    assert all(r.headers["User-Agent"].startswith("amadeus/") for r in server.log)
    assert len({r.port for r in server.log}) == 1  # one keep-alive connection for all requests


def test_robots_txt_is_respected(server):
    server.add("/robots.txt", "User-agent: *\nDisallow: /private/\n", content_type="text/plain")
    with Downloader(FAST) as dl:
        assert dl.allowed(server.base + "/public/a.mid")
        assert not dl.allowed(server.base + "/private/a.mid")


def test_progress_is_quiet_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "1")
    assert quiet()


# ---------------------------------------------------------------------------------------------------
# Safe extraction


def make_zip(path: Path, members: dict[str, bytes], symlink: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)  # S_IFLNK: how zip stores a symlink
            zf.writestr(info, "/etc/passwd")
    return path


def make_tar(path: Path, members: dict[str, bytes], link: tuple[str, str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = link[2], link[1]
            tf.addfile(info)
    return path


def test_zip_and_tar_extract_with_root_stripped(tmp_path):
    members = {"set/a/one.mid": b"MThd1", "set/two.MIDI": b"MThd2", "set/notes.txt": b"x"}
    for arc in (make_zip(tmp_path / "m.zip", members), make_tar(tmp_path / "m.tar.gz", members)):
        out = tmp_path / arc.name.replace(".", "_")
        written = archive.extract(arc, out, strip_root=True,
                                  select=lambda rel: rel if archive.is_midi_name(rel) else None)
        assert sorted(p.relative_to(out).as_posix() for p in written) == ["a/one.mid", "two.MIDI"]
        assert (out / "a/one.mid").read_bytes() == b"MThd1"


@pytest.mark.parametrize("maker", [make_zip, make_tar])
def test_member_escaping_the_target_is_refused(tmp_path, maker):
    arc = maker(tmp_path / ("evil.zip" if maker is make_zip else "evil.tgz"),
                {"ok.mid": b"MThd", "../evil.mid": b"MThd"})
    with pytest.raises(UserError, match="escapes the target folder"):
        archive.extract(arc, tmp_path / "out")
    assert not (tmp_path / "evil.mid").exists()
    assert not any((tmp_path / "out").iterdir())  # refused before anything was written


def test_absolute_member_is_refused(tmp_path):
    arc = make_tar(tmp_path / "abs.tgz", {"/tmp/abs.mid": b"MThd"})
    with pytest.raises(UserError, match="absolute path"):
        archive.extract(arc, tmp_path / "out")


def test_symlink_members_are_refused(tmp_path):
    tar = make_tar(tmp_path / "sym.tgz", {"a.mid": b"MThd"}, link=("link.mid", "/etc/passwd", tarfile.SYMTYPE))
    with pytest.raises(UserError, match="is a link"):
        archive.extract(tar, tmp_path / "out1")
    hard = make_tar(tmp_path / "hard.tgz", {"a.mid": b"MThd"}, link=("hard.mid", "a.mid", tarfile.LNKTYPE))
    with pytest.raises(UserError, match="is a link"):
        archive.extract(hard, tmp_path / "out2")
    zf = make_zip(tmp_path / "sym.zip", {"a.mid": b"MThd"}, symlink="link.mid")
    with pytest.raises(UserError, match="symbolic link"):
        archive.extract(zf, tmp_path / "out3")


def test_device_member_is_refused(tmp_path):
    arc = make_tar(tmp_path / "dev.tgz", {}, link=("null", "", tarfile.CHRTYPE))
    with pytest.raises(UserError, match="device"):
        archive.extract(arc, tmp_path / "out")


def test_size_limit_is_enforced(tmp_path):
    arc = make_zip(tmp_path / "big.zip", {"big.mid": b"\0" * 100_000})
    with pytest.raises(UserError, match="over the limit"):
        archive.extract(arc, tmp_path / "out", max_bytes=50_000)
    assert archive.extract(arc, tmp_path / "out2", max_bytes=100_000)


def test_damaged_or_unknown_archive_is_a_clear_error(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"this is not an archive")
    with pytest.raises(UserError, match="not a zip or tar archive"):
        archive.extract(tmp_path / "junk.zip", tmp_path / "out")
