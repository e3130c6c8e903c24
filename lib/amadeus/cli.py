"""The `amadeus` command: the work users do outside the pipeline.

    amadeus info save/performance_rnn.sess
    amadeus generate --prompt in.mid --bars 8 --full take.mid --wav take.wav
    amadeus render in.mid out.wav
    amadeus live --synth
    amadeus serve
    amadeus import-perceiver-io path/to/hf-model-dir save/sam.sess
    amadeus quantize save/sam.sess save/sam.int8.sess --data my-data/
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


def _quantize(args: argparse.Namespace) -> None:
    from amadeus.quantize_file import quantize_cli

    quantize_cli(args)


def _report(args: argparse.Namespace) -> None:
    from amadeus.report import summary

    print(summary(args.metrics_dir))


def _live(args: argparse.Namespace) -> None:
    from amadeus.live.cli import run_command

    run_command(args)


def _serve(args: argparse.Namespace) -> None:
    from amadeus.studio.cli import run

    run(args)


def _preprocess(args: argparse.Namespace) -> None:
    from amadeus import codec
    from amadeus.fileio import write_json
    from amadeus.preprocess import PreprocessConfig, preprocess

    metrics = preprocess(args.midi_dir, args.out_dir, PreprocessConfig(workers=args.workers),
                         codec.CodecConfig(flavour=args.flavour))
    write_json(f"{args.out_dir}/metrics.json", metrics)
    print(metrics)


# Shown under each command's --help (tests/test_cli_args.py parses every one of them).
EXAMPLES = {
    "info": ["amadeus info save/performance_rnn.int8.sess"],
    "generate": ["amadeus generate --prompt phrase.mid --bars 8 --full take.mid --wav take.wav",
                 "amadeus generate --checkpoint save/perceiver_ar.sess --seconds 20 --seed 7 --key 'D minor' "
                 "--out new.mid"],
    "render": ["amadeus render take.mid take.wav"],
    "report": ["amadeus report"],
    "live": ["amadeus live --synth",
             "amadeus live --input-file phrase.mid --out null --record takes/"],
    "serve": ["amadeus serve",
              "amadeus serve --host 0.0.0.0 --https --takes my-takes/"],
    "import-perceiver-io": ["amadeus import-perceiver-io path/to/hf-model-dir save/sam.sess"],
    "quantize": ["amadeus quantize save/sam.sess save/sam.int8.sess --data sam-data/"],
    "preprocess": ["amadeus preprocess my-midi/ my-data/ --workers 2"],
}


def _command(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    epilog = "example:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("amadeus")
    except PackageNotFoundError:  # run from a source tree that was never installed
        release = "unknown"
    parser = argparse.ArgumentParser(prog="amadeus", description="Expressive piano performance generation.")
    parser.add_argument("--version", action="version", version=f"amadeus {release}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _command(sub, "info", "describe a .sess checkpoint (family, config, step, parameters, params)")
    p.add_argument("checkpoint")
    p.set_defaults(run=_info)

    p = _command(sub, "generate", "continue a MIDI prompt (or generate from nothing)")
    from amadeus.generation_args import add_generate_arguments

    add_generate_arguments(p)
    p.set_defaults(run=_generate)

    p = _command(sub, "render", "render a MIDI file to WAV through fluidsynth")
    p.add_argument("midi")
    p.add_argument("wav")
    p.add_argument("--soundfont", default=None, help="an .sf2 file (default: pretty_midi's TimGM6mb.sf2)")
    p.add_argument("--normalize", action="store_true",
                   help="scale this file's peak to -1 dBFS (default: one fixed gain for every file, lowered "
                        "only to stay under -1 dBFS, so quiet playing stays quiet)")
    p.set_defaults(run=_render)

    p = _command(sub, "report", "a short summary of the pipeline's metrics (output/metrics)")
    p.add_argument("--metrics-dir", default=None, help="default: the pipeline's output/metrics")
    p.set_defaults(run=_report)

    p = _command(sub, "live", "play a phrase on a MIDI keyboard, hear the continuation")
    from amadeus.live import add_arguments

    add_arguments(p)
    p.set_defaults(run=_live)

    p = _command(sub, "serve", "the studio: play and hear the continuation in a web browser")
    from amadeus.studio.cli import add_arguments as add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(run=_serve)

    p = _command(sub, "import-perceiver-io", "convert a perceiver-io Hugging Face model dir to .sess")
    p.add_argument("src", help="folder with config.json and pytorch_model.bin (or model.safetensors)")
    p.add_argument("dst", help="the .sess file to write")
    p.set_defaults(run=_import_perceiver_io)

    p = _command(sub, "quantize", "an int8 copy of an fp32 checkpoint, calibrated on a folder of .data files")
    p.add_argument("src", help="the fp32 .sess (e.g. from import-perceiver-io)")
    p.add_argument("dst", help="the int8 .sess to write")
    p.add_argument("--data", required=True, help="a folder from `amadeus preprocess` in the checkpoint's codec "
                   "(e.g. --flavour perceiver-io for an imported model)")
    p.add_argument("--windows", type=int, default=16,
                   help="windows to calibrate on, and as many to measure the NLL on (default: 16)")
    p.add_argument("--window", type=int, default=None, help="events per window (default: the model's context)")
    p.add_argument("--mode", default="asymmetric_signed", help="int8 grid (default: asymmetric_signed)")
    p.add_argument("--seed", type=int, default=0, help="which windows (default: 0)")
    p.set_defaults(run=_quantize)

    p = _command(sub, "preprocess", "encode a folder of MIDI files to .data files (outside DVC)")
    p.add_argument("midi_dir")
    p.add_argument("out_dir")
    p.add_argument("--workers", type=int, default=0, help="worker processes (default: 0, one per core when "
                   "the folder is large enough)")
    p.add_argument("--flavour", default="magenta", choices=("magenta", "perceiver-io"),
                   help="event codec flavour (default: magenta)")
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
