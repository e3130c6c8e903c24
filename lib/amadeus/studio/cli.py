"""`amadeus serve`: start the studio and print its address; Ctrl-C or SIGTERM stop it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from amadeus.checkpoint_choice import DEFAULT_CHECKPOINTS
from amadeus.errors import UserError
from amadeus.live.config import DEFAULT_TAKES, LEARN_FOLDER

if TYPE_CHECKING:
    from amadeus.studio.server import Studio

DEFAULT_PORT = 8000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 lets a phone or "
                        "tablet on your network in: use it with --https, which Web MIDI needs off this machine)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--https", action="store_true",
                   help="serve over HTTPS with a certificate made on this machine (kept in --cert-dir)")
    p.add_argument("--cert-dir", default=None,
                   help="where --https keeps its certificate (default: ~/.config/amadeus/studio)")
    p.add_argument("--checkpoint", action="append", default=None,
                   help="a .sess file to offer (repeat for several; default: the pipeline's, those of "
                        f"{', '.join(DEFAULT_CHECKPOINTS)} that exist, int8 first)")
    p.add_argument("--takes", default=DEFAULT_TAKES,
                   help="folder for the takes (one subfolder per tab) and, when the player keeps them, their "
                        f"phrases in {LEARN_FOLDER}/ (default: %(default)s)")
    p.add_argument("--max-sessions", type=int, default=2,
                   help="tabs playing at once; the next is told the studio is busy (default: %(default)s)")
    p.add_argument("--soundfont", default=None, help="an .sf2 file for the page's piano and the takes' WAVs "
                                                     "(default: pretty_midi's TimGM6mb.sf2)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for generation (default: %(default)s: one core answers, one plays)")


def run(args: argparse.Namespace) -> None:
    from amadeus.studio.models import ModelShelf
    from amadeus.studio.samples import render_samples
    from amadeus.studio.server import Studio
    from amadeus.take import check_folder

    if not 0 <= args.port <= 65535:
        raise UserError(f"serve: --port must be 0..65535, got {args.port}")
    if args.max_sessions < 1:
        raise UserError(f"serve: --max-sessions must be >= 1, got {args.max_sessions}")
    if args.threads < 1:
        raise UserError(f"serve: --threads must be >= 1, got {args.threads}")
    shelf = ModelShelf(args.checkpoint or ())
    takes = check_folder(args.takes, "--takes folder")
    samples = render_samples(args.soundfont)
    context = None
    if args.https:
        from amadeus.studio.tls import ensure_certificate, ssl_context

        cert, key, fingerprint = ensure_certificate(args.cert_dir)
        context = ssl_context(cert, key)
        print(f"certificate: {cert} (SHA-256 {fingerprint}); your browser will ask you to trust it once")
    import torch

    torch.set_num_threads(args.threads)
    studio = Studio(shelf, Path(takes), samples, args.max_sessions, args.soundfont)
    asyncio.run(_serve(studio, args.host, args.port, context))


async def _serve(studio: Studio, host: str, port: int, context: ssl.SSLContext | None) -> None:
    from aiohttp import web

    from amadeus.studio.server import make_app
    from amadeus.studio.tls import local_addresses

    runner = web.AppRunner(make_app(studio), handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise UserError(f"serve: cannot listen on {host}:{port}: {e.strerror}") from None
    bound = runner.addresses[0][1]
    scheme = "https" if context is not None else "http"
    everywhere = host in ("0.0.0.0", "::")
    print(f"amadeus studio: {scheme}://{'127.0.0.1' if everywhere else host}:{bound}/", flush=True)
    if everywhere:
        for address in local_addresses():
            if address != "127.0.0.1":
                print(f"  on your network: {scheme}://{address}:{bound}/", flush=True)
    models = ", ".join(m["label"] for m in studio.shelf.catalogue())
    print(f"models: {models}; takes in {studio.takes}/; Ctrl-C stops", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        print("stopping: the open tabs' takes are saved", flush=True)
        await runner.cleanup()
