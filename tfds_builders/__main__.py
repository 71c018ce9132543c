"""Build a dataset ahead of time: `python -m tfds_builders NAME --manual_dir DIR --data_dir DIR`.

The same as `tfds build tfds_builders/<builder> --config <config> ...`, whose command line in
tensorflow-datasets 4.9.10 does not start without apache-beam and mlcroissant installed.
`simclr_med.data.datasets.load(NAME, ..., data_dir=DIR)` then reuses the build.
"""
from __future__ import annotations

import argparse
import sys

from simclr_med.data import datasets
from simclr_med.errors import DataError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfds_builders", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=datasets.NAMES)
    parser.add_argument("--manual_dir", help="the folder of the download, as unpacked")
    parser.add_argument("--data_dir", help="where TFDS writes the dataset (default: TFDS's own)")
    args = parser.parse_args(argv)
    try:
        builder = datasets.builder_for(args.name, args.data_dir, args.manual_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{s}: {v.num_examples}" for s, v in sorted(builder.info.splits.items()))
    print(f"{args.name} ready in {builder.data_path} ({counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
