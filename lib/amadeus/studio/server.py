"""The studio's web server (aiohttp): the page, its piano samples, the takes, and one WebSocket per tab.

What it serves, and nothing else: `/` and `/static/<file>` (the page's own files, listed when the
server starts), `/samples/...` (the piano, rendered at start), `/takes/<folder>/<file>.mid|.wav|.png`
(inside the takes folder only) and `/ws`. A Content-Security-Policy of 'self' tells the browser to
load nothing from anywhere else, so the page works with no internet.

`/ws` speaks JSON (docs/studio.md lists the messages). Each socket is a `TabSession`; at most
`max_sessions` at once, the next is told "busy". Whatever blocks (loading a model, reading a file) runs
in a worker thread; the answers are generated on each session's own thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from amadeus.errors import UserError
from amadeus.studio.models import ModelShelf
from amadeus.studio.samples import PianoSamples
from amadeus.studio.tab import MAX_FILE_BYTES, TabSession

STATIC = Path(__file__).parent / "static"
TAKE_SUFFIXES = {".mid": "audio/midi", ".wav": "audio/wav", ".png": "image/png"}
# A message this big closes the socket (code 1009); a file up to it is refused with a line in the page.
MAX_MESSAGE = 4 * MAX_FILE_BYTES
CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
       "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


@dataclasses.dataclass
class Studio:
    shelf: ModelShelf
    takes: Path
    samples: PianoSamples
    max_sessions: int = 2
    soundfont: str | None = None
    log: Callable[[str], None] = print
    active: int = 0
    sockets: weakref.WeakSet = dataclasses.field(default_factory=weakref.WeakSet)


STUDIO = web.AppKey("studio", Studio)


def make_app(studio: Studio) -> web.Application:
    app = web.Application(client_max_size=64 * 1024, middlewares=[_headers])
    app[STUDIO] = studio
    static = {p.name: p for p in STATIC.iterdir() if p.is_file()}  # the page's files, and only those

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def asset(request: web.Request) -> web.FileResponse:
        path = static.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def sample_index(request: web.Request) -> web.Response:
        return web.json_response(studio.samples.index("/samples/piano.pcm"))

    async def sample_data(request: web.Request) -> web.Response:
        return web.Response(body=studio.samples.pcm, content_type="application/octet-stream",
                            headers={"Cache-Control": "max-age=86400"})

    async def take(request: web.Request) -> web.FileResponse:
        path = take_path(studio.takes, request.match_info["path"])
        if path is None:
            raise web.HTTPNotFound()
        return web.FileResponse(path, headers={"Content-Type": TAKE_SUFFIXES[path.suffix],
                                               "Content-Disposition": f'attachment; filename="{path.name}"'})

    app.router.add_get("/", page)
    app.router.add_get("/static/{name}", asset)
    app.router.add_get("/samples/index.json", sample_index)
    app.router.add_get("/samples/piano.pcm", sample_data)
    app.router.add_get("/takes/{path:.+}", take)
    app.router.add_get("/ws", socket)
    app.on_shutdown.append(_close_sockets)
    return app


def take_path(root: Path, name: str) -> Path | None:
    """The take file `name` names inside `root`, or None (outside it, a link out, another kind of file)."""
    root = root.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root) or path.suffix not in TAKE_SUFFIXES or not path.is_file():
        return None
    return path


@web.middleware
async def _headers(request: web.Request, handler: Callable) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path in ("/",) or request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-cache")  # a new version of the page is seen at once
    return response


async def _close_sockets(app: web.Application) -> None:
    for ws in list(app[STUDIO].sockets):
        await ws.close(code=1001, message=b"the studio is shutting down")


async def socket(request: web.Request) -> web.WebSocketResponse:
    studio = request.app[STUDIO]
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30.0)
    await ws.prepare(request)
    if studio.active >= studio.max_sessions:
        await ws.send_json({"type": "busy", "message": f"the studio is busy: {studio.active} players already "
                                                       "(try again in a while)"})
        await ws.close()
        return ws
    studio.active += 1
    studio.sockets.add(ws)
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def emit(message: dict[str, Any]) -> None:  # from any thread
        with contextlib.suppress(RuntimeError):  # the server has stopped: nobody is listening any more
            loop.call_soon_threadsafe(outbox.put_nowait, message)

    tab = TabSession(studio.shelf, studio.takes, emit, studio.soundfont, studio.log)
    pump: asyncio.Task | None = None
    try:
        try:
            await loop.run_in_executor(None, tab.start)
        except UserError as e:
            await ws.send_json({"type": "error", "message": str(e)})
            return ws
        pump = asyncio.create_task(_pump(outbox, ws))  # "ready" first: the session said it as it started
        studio.log(f"tab {tab.id}: connected ({studio.active} of {studio.max_sessions})")
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await _handle(tab, message.data, ws, loop)
            elif message.type == WSMsgType.BINARY:
                await ws.send_json({"type": "error", "message": "the studio speaks JSON text messages"})
            elif message.type == WSMsgType.ERROR:
                break
    finally:
        studio.active -= 1
        await loop.run_in_executor(None, tab.close)
        if pump is not None:
            await asyncio.sleep(0)  # let the pump send what the session said last
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        studio.log(f"tab {tab.id}: closed")
    return ws


async def _pump(outbox: asyncio.Queue, ws: web.WebSocketResponse) -> None:
    """Send what the session says, in order, as soon as it says it."""
    while True:
        message = await outbox.get()
        if ws.closed:
            return
        with contextlib.suppress(ConnectionError):
            await ws.send_str(json.dumps(message))


async def _handle(tab: TabSession, text: str, ws: web.WebSocketResponse, loop: asyncio.AbstractEventLoop) -> None:
    """One message from the page; a bad one is answered with one `error` line, and the tab goes on."""
    try:
        message = json.loads(text)
        if not isinstance(message, dict):
            raise ValueError
    except ValueError:
        await ws.send_json({"type": "error", "message": "not a JSON object"})
        return
    kind = message.get("type")
    try:
        if kind == "midi":
            tab.midi(message.get("data"), message.get("t"))
        elif kind == "handover":
            tab.hand_over(message.get("t"))
        elif kind == "stop":
            tab.stop_answer()
        elif kind == "again":
            tab.clock.arrived(message.get("t"))  # the answer's clock: a page may ask before it has played
            tab.again()
        elif kind == "settings":
            settings = await loop.run_in_executor(None, tab.apply, message.get("settings"))
            await ws.send_json({"type": "settings", "settings": dataclasses.asdict(settings)})
        elif kind == "file":
            await loop.run_in_executor(None, tab.file, message.get("name"), message.get("data"), message.get("t"))
        else:
            raise UserError(f"unknown message type {kind!r}; the page sends midi, handover, stop, again, "
                            "settings or file")
    except UserError as e:
        await ws.send_json({"type": "error", "message": str(e)})
