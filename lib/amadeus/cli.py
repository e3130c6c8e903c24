"""The `amadeus` command: the work users do outside the pipeline.

    amadeus info save/performance_rnn.sess
    amadeus generate --checkpoint save/performance_rnn.int8.sess --prompt in.mid --length 1000 --out out.mid
    amadeus render in.mid out.wav
    amadeus live --checkpoint save/performance_rnn.int8.sess --synth
    amadeus import-perceiver-io path/to/hf-model-dir save/sam.sess
    amadeus report
    amadeus preprocess MIDI_DIR OUT_DIR

Subcommands import their modules lazily so `amadeus --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from amadeus.errors import main_entry


def _info(args: argparse.Namespace) -> None:
    from amadeus.checkpoint import describe

    print(describe(args.checkpoint))


def _generate(args: argparse.Namespace) -> None:
    from amadeus.generation import generate_cli

    generate_cli(args)


def _render(args: argparse.Namespace) -> None:
    from amadeus.render import render_cli

    render_cli(args.midi, args.wav, soundfont=args.soundfont, normalize=args.normalize)


def _import_perceiver_io(args: argparse.Namespace) -> None:
    from amadeus.perceiver_io_import import import_perceiver_io

    import_perceiver_io(args.src, args.dst)
    print(f"wrote {args.dst}")


def _report(args: argparse.Namespace) -> None:
    from amadeus.report import summary

    print(summary(args.metrics_dir))


def _live(args: argparse.Namespace) -> None:
    from amadeus.live.cli import run_command

    run_command(args)


def _preprocess(args: argparse.Namespace) -> None:
    from amadeus import codec
    from amadeus.fileio import write_json
    from amadeus.preprocess import PreprocessConfig, preprocess

    metrics = preprocess(args.midi_dir, args.out_dir, PreprocessConfig(workers=args.workers),
                         codec.CodecConfig(flavour=args.flavour))
    write_json(f"{args.out_dir}/metrics.json", metrics)
    print(metrics)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("amadeus")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "unknown"
    parser = argparse.ArgumentParser(prog="amadeus", description="Expressive piano performance generation.")
    parser.add_argument("--version", action="version", version=f"amadeus {release}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a .sess checkpoint (family, config, step, parameters, params)")
    p.add_argument("checkpoint")
    p.set_defaults(run=_info)

    p = sub.add_parser("generate", help="continue a MIDI prompt (or generate from nothing)")
    from amadeus.generation_args import add_generate_arguments

    add_generate_arguments(p)
    p.set_defaults(run=_generate)

    p = sub.add_parser("render", help="render a MIDI file to WAV through fluidsynth")
    p.add_argument("midi")
    p.add_argument("wav")
    p.add_argument("--soundfont", default=None, help="an .sf2 file (default: pretty_midi's TimGM6mb.sf2)")
    p.add_argument("--normalize", action="store_true",
                   help="scale this file's peak to -1 dBFS (default: one fixed gain for every file, lowered "
                        "only to stay under -1 dBFS, so quiet playing stays quiet)")
    p.set_defaults(run=_render)

    p = sub.add_parser("report", help="a short summary of the pipeline's metrics (output/metrics)")
    p.add_argument("--metrics-dir", default=None, help="default: the pipeline's output/metrics")
    p.set_defaults(run=_report)

    p = sub.add_parser("live", help="play a phrase on a MIDI keyboard, hear the continuation")
    from amadeus.live import add_arguments

    add_arguments(p)
    p.set_defaults(run=_live)

    p = sub.add_parser("import-perceiver-io", help="convert a perceiver-io Hugging Face model dir to .sess")
    p.add_argument("src", help="folder with config.json and pytorch_model.bin (or model.safetensors)")
    p.add_argument("dst", help="the .sess file to write")
    p.set_defaults(run=_import_perceiver_io)

    p = sub.add_parser("preprocess", help="encode a folder of MIDI files to .data files (outside DVC)")
    p.add_argument("midi_dir")
    p.add_argument("out_dir")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--flavour", default="magenta", choices=("magenta", "perceiver-io"))
    p.set_defaults(run=_preprocess)
    for command in sub.choices.values():  # `amadeus generate --version` works as well
        command.add_argument("--version", action="version", version=f"amadeus {release}")
    return parser


@main_entry
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
