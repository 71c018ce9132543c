"""Build a dataset ahead of time: `python -m tfds_builders NAME --manual_dir DIR --data_dir DIR`.

The same as `tfds build tfds_builders/<builder> --config <config> ...`, whose command line in
tensorflow-datasets 4.9.10 does not start without apache-beam and mlcroissant installed.
`simclr_med.data.datasets.load(NAME, ..., data_dir=DIR)` then reuses the build. NAME is one of the
manual downloads; the synthetic `demo` has none and is written by run.py on first use, so it is refused here.
"""
from __future__ import annotations

import argparse
import sys

from simclr_med.errors import DataError
from tfds_builders import registry

_DEMO = "demo needs no download: run.py --dataset=demo writes and builds it under --data_dir on first use"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfds_builders", description=__doc__.splitlines()[0])
    parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(registry.NAMES)}")
    parser.add_argument("--manual_dir", help="the folder of the download, as unpacked")
    parser.add_argument("--data_dir", help="where TFDS writes the dataset (default: TFDS's own)")
    parser.add_argument("--pixel_bits", type=int,
                        help="bits per sample of 16-bit PNGs (run.py's --pixel_bits; "
                             "default: each image's own, recorded in the build's metadata)")
    args = parser.parse_args(argv)
    try:
        if args.name == "demo":
            raise DataError(_DEMO)
        builder = registry.builder_for(args.name, args.data_dir, args.manual_dir, args.pixel_bits)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s}: {v.num_examples}" for s, v in sorted(builder.info.splits.items()))
    print(f"{args.name} ready in {builder.data_path} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
