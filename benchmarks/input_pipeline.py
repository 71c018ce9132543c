"""Input-pipeline rate alone: encoded JPEG cases → two augmented views, as pretraining consumes them.

    python benchmarks/input_pipeline.py [--method simclr|micle] [--preset simclr] [--source_size 96]
        [--image_size 64] [--batch_size 64] [--seconds 20] [--data demo]

Prints one JSON line per method. `--data synthetic` (default) holds random JPEG bags in memory,
like the reference measurement (96 → 64 px); `--data demo` reads the built-in demo TFDS dataset.
"""
import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from common import emit, environment, load_average, peak_rss_gib  # noqa: E402
from simclr_med import datasets, pipelines  # noqa: E402


def synthetic_cases(num_cases: int, source_size: int, images_per_case: int = 3):
    """Bags of random-texture JPEGs (smooth noise compresses like photographs, not like static)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (num_cases * images_per_case, source_size // 8, source_size // 8, 3), dtype=np.uint8)
    images = tf.image.resize(small, [source_size, source_size]).numpy().astype(np.uint8)
    encoded = [tf.io.encode_jpeg(im, quality=90).numpy() for im in images]
    bags = [encoded[i * images_per_case:(i + 1) * images_per_case] for i in range(num_cases)]
    ids = [[f"{c}/{k}".encode() for k in range(images_per_case)] for c in range(num_cases)]
    return tf.data.Dataset.from_tensor_slices({"images": bags, "image_ids": ids}).cache()


def measure(ds, method, args) -> dict:
    data = pipelines.pretrain_dataset(ds, method=method, batch_size=args.batch_size, image_size=args.image_size,
                                      augmentation=args.preset, seed=0)
    it = iter(data)
    for _ in range(3):  # warm-up: tracing, autotuning
        next(it)
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        next(it)
        batches += 1
    elapsed = time.perf_counter() - start
    pairs_per_s = batches * args.batch_size / elapsed
    return {"benchmark": "input_pipeline", "method": method, "preset": args.preset, "data": args.data,
            "source_size": args.source_size, "image_size": args.image_size, "batch_size": args.batch_size,
            "source_images_per_s": pairs_per_s * (1 if method == "simclr" else 2),
            "views_per_s": 2 * pairs_per_s, "batches": batches, "seconds": elapsed,
            "reference_source_images_per_s": 2600, "peak_rss_gib": peak_rss_gib(), "load_avg": load_average(),
            **environment()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["simclr", "micle", "both"], default="both")
    p.add_argument("--preset", default="simclr")
    p.add_argument("--source_size", type=int, default=96)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--data", choices=["synthetic", "demo"], default="synthetic")
    args = p.parse_args()
    if args.data == "demo":
        ds, _ = datasets.load("demo", "train", data_dir=os.path.join(tempfile.gettempdir(), "simclr_med_bench_data"))
        ds = ds.map(lambda ex: {"images": ex["images"], "image_ids": ex["image_ids"]}).cache()
    else:
        ds = synthetic_cases(512, args.source_size)
    for method in (["simclr", "micle"] if args.method == "both" else [args.method]):
        emit(measure(ds, method, args))


if __name__ == "__main__":
    main()
