"""The studio's hand-over latency, measured in the page: headless chromium plays phrases into `amadeus serve`.

    python bench/studio.py [--handovers 20] [--checkpoint save/performance_rnn.int8.sess] [--json out.json]

Each hand-over: the page's computer-keyboard input plays a phrase (8 notes, about 1.3 s), the
studio hands over after the silence (the page's setting, 800 ms by default), and the page records
`performance.now()` when it has scheduled the answer's first note, minus the hand-over moment mapped
onto its clock (docs/studio.md): the figure a player waits for. The answer is stopped once it has
started, and the next phrase follows. Target: p95 <= 50 ms with the default int8 model on 2 cores.

Baseline, in the same run and on the same model: `amadeus live`'s path (bench/live.py's session over
in-memory ports: hand-over to the first note-on leaving the output port), so the ratio is what the
browser, the socket and the page add. The server runs with one torch thread (`--threads 1`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the studio test's server and browser
from studio_browser import chromium_path, launch, serve  # noqa: E402

from amadeus.hardware import machine  # noqa: E402
from amadeus.live.turn import stats  # noqa: E402

PHRASE_KEYS = "asdfghjk"  # the page's computer keyboard: C4 D4 E4 F4 G4 A4 B4 C5


def studio_latencies(checkpoint: Path, handovers: int, silence_ms: float) -> list[float]:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="amadeus-bench-studio-"))
    with serve(work, ["--checkpoint", str(checkpoint.resolve()), "--threads", "1"]) as url, \
            sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.fill("#silence-ms", str(silence_ms))
        page.dispatch_event("#silence-ms", "change")
        page.locator("#silence-ms").blur()  # keys typed into the field would play nothing
        for n in range(handovers):
            page.wait_for_selector("#status[data-state='listening']", timeout=30_000)
            for key in PHRASE_KEYS:
                page.keyboard.down(key)
                page.wait_for_timeout(120)
                page.keyboard.up(key)
                page.wait_for_timeout(40)
            page.wait_for_function(f"() => window.studio.stats.latencies.length >= {n + 1}", timeout=30_000)
            page.click("#stop-btn")
            print(f"  {n + 1}/{handovers} studio hand-overs", file=sys.stderr)
        latencies = page.evaluate("window.studio.stats.latencies")
        browser.close()
    return [x / 1000.0 for x in latencies]


def live_latencies(checkpoint: Path, handovers: int, silence_ms: float) -> list[float]:
    """The baseline: the same model's hand-overs in `amadeus live`'s session, in this process."""
    import torch

    from amadeus import live
    from amadeus.generation import load

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from live import run_session, write_phrase  # bench/live.py

    torch.set_num_threads(1)
    loaded = load(checkpoint)
    tmp = Path(tempfile.mkdtemp(prefix="amadeus-bench-studio-live-"))
    write_phrase(tmp / "phrase.mid", seconds=1.5)
    messages = live.midi_file_messages(tmp / "phrase.mid")
    turns, _ = run_session(loaded.model, live.Codec(loaded.flavour), messages, handovers, silence_ms / 1000, 1.0,
                           warm=True, realtime=True, seed=0)
    return [t.latency for t in turns if t.latency is not None]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handovers", type=int, default=20)
    ap.add_argument("--silence", type=float, default=800.0, help="ms")
    ap.add_argument("--checkpoint", default="save/performance_rnn.int8.sess",
                    help="default: the pipeline's int8 Performance RNN (make repro)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        sys.exit(f"{checkpoint}: not found; run `make repro` first, or pass --checkpoint")
    if chromium_path() is None:
        sys.exit("no chromium: run `make browser`")

    print(f"machine: {machine()}; {os.cpu_count()} CPUs; python {platform.python_version()}; "
          f"server and baseline: 1 torch thread; checkpoint {checkpoint}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    started = time.monotonic()
    studio = studio_latencies(checkpoint, args.handovers, args.silence)
    baseline = live_latencies(checkpoint, args.handovers, args.silence)
    result = {"machine": machine(), "checkpoint": str(checkpoint), "handovers": args.handovers,
              "silence_ms": args.silence, "load_average_after": os.getloadavg(), "seconds": time.monotonic() - started}
    print(f"\n{'hand-over to first answer note':<44} {'p50':>7} {'p95':>7} {'max':>7}  (ms)")
    rows = (("studio (scheduled in the page)", studio), ("amadeus live (sent to the MIDI port)", baseline))
    for name, values in rows:
        s = {k: (v if k == "n" else round(v * 1000, 1)) for k, v in stats(values).items()}
        result[name.split()[0] + "_ms"] = s
        print(f"{name:<44} {s['p50']:>7} {s['p95']:>7} {s['max']:>7}  (n={s['n']})")
    ratio = float(np.median(studio)) / max(float(np.median(baseline)), 1e-9)
    result["studio_over_live_p50"] = round(ratio, 2)
    print(f"studio / live, p50: {ratio:.2f}x; load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("target: studio p95 <= 50 ms")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
