"""Stage preprocess@<source>: dataset/midi/<source>/ -> dataset/processed/<source>/ (*.data + manifest)."""

import argparse

from amadeus import codec
from amadeus.errors import exits_cleanly
from amadeus.fileio import write_json
from amadeus.params import build, load_yaml, section
from amadeus.preprocess import PreprocessConfig, preprocess


@exits_cleanly
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", help="a name under `sources:` in params.yaml")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()
    params = load_yaml(args.params)
    section(params, f"sources.{args.source}")  # the source must be declared
    config = build(PreprocessConfig, section(params, "preprocess"), "preprocess")
    codec_config = build(codec.CodecConfig, section(params, "codec"), "codec")
    metrics = preprocess(f"dataset/midi/{args.source}", f"dataset/processed/{args.source}", config, codec_config)
    write_json(f"output/metrics/preprocess_{args.source}.json", metrics)
    print(f"preprocess {args.source}: {metrics['files_ok']}/{metrics['files_total']} files, "
          f"{metrics['notes']:,} notes, {metrics['events']:,} events, {metrics['music_seconds'] / 60:.1f} min "
          f"of music, {metrics['notes_per_second']:,} notes/s, splits {metrics['splits']}")


if __name__ == "__main__":
    main()
