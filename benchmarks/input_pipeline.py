"""Input-pipeline rate alone: encoded JPEG cases → two augmented views, as pretraining consumes them.

    python benchmarks/input_pipeline.py [--method all|simclr|micle|reference] [--preset simclr]
        [--source_size 96] [--image_size 64] [--batch_size 64] [--seconds 20] [--data synthetic|demo]

Prints one JSON line per method:
  simclr     pipelines.pretrain_dataset(method="simclr"): every image, two views of it
  micle      pipelines.pretrain_dataset(method="micle"): per case two different images, one view each
  reference  google-research/simclr's tf2 `preprocess_for_train` rebuilt from the same TF ops (full
             decode, sample_distorted_bounding_box crop, bicubic resize, flip, colour jitter with
             tf.image's HSV ops in random order, grayscale), two views of each image, no blur (that
             code blurs on the accelerator) - the baseline measured on the same data and machine.

`--data synthetic` (default) holds photo-like JPEGs in memory (smooth colour fields with mild
noise: about the bytes per image of STL-10's 96 px photos, whereas pure noise would make JPEG
decoding dominate), 1-6 per case; `--data demo` reads the built-in demo TFDS dataset.
source_images_per_s counts decoded images (micle decodes two per example). On a shared machine
the wall-clock rates move with other load, so the lines also carry this process's CPU time per
view and the rate that CPU cost would give on all cores of an otherwise idle machine.
"""
import argparse
import os
import resource
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simclr_med import tf_env  # noqa: E402  (after the sys.path lines above)

# TensorFlow reads its kernel settings once, at import: set them (as run.py does) before importing it.
tf_env.configure()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import emit, environment, load_average, peak_rss_gib  # noqa: E402

from simclr_med.data import datasets, pipelines  # noqa: E402

REFERENCE_SOURCE_IMAGES_PER_S = 2600  # /work/shared/NOTES.md: the unmodified reference code, 96 → 64 px


def synthetic_cases(num_cases: int, source_size: int, max_images: int = 6, seed: int = 0) -> tf.data.Dataset:
    """Case dicts as simclr_med.data.datasets yields them, with 1..max_images photo-like JPEGs each."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, max_images + 1, num_cases)
    small = rng.uniform(0, 255, (int(counts.sum()), 8, 8, 3)).astype(np.float32)
    images = tf.image.resize(small, [source_size, source_size], "bicubic").numpy()
    images += rng.normal(0, 6, images.shape)
    jpegs = [tf.io.encode_jpeg(np.clip(im, 0, 255).astype(np.uint8), quality=90).numpy() for im in images]
    ids = [f"case{c}/{k}.jpg" for c, n in enumerate(counts) for k in range(n)]
    return tf.data.Dataset.from_tensor_slices({
        "images": tf.RaggedTensor.from_row_lengths(jpegs, counts),
        "image_ids": tf.RaggedTensor.from_row_lengths(ids, counts),
    }).cache()


# --- the reference augmentation (google-research/simclr tf2/data_util.py), stateful randomness -----

def _random_apply(fn, p, x):
    return tf.cond(tf.random.uniform([]) < p, lambda: fn(x), lambda: x)


def _reference_jitter(image):
    def step(i, x):  # brightness as "simclrv2" (multiplicative), the rest tf.image's random ops
        return tf.switch_case(i, [lambda: x * tf.random.uniform([], 0.2, 1.8),
                                  lambda: tf.image.random_contrast(x, 0.2, 1.8),
                                  lambda: tf.image.random_saturation(x, 0.2, 1.8),
                                  lambda: tf.image.random_hue(x, 0.2)])
    for i in tf.unstack(tf.random.shuffle(tf.range(4))):
        image = tf.clip_by_value(step(i, image), 0.0, 1.0)
    return image


def _reference_view(image, size):
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), min_object_covered=0.1, aspect_ratio_range=(0.75, 1.33),
        area_range=(0.08, 1.0), max_attempts=100, use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, extent)[None], [size, size], method="bicubic")[0]
    image = tf.image.random_flip_left_right(image)
    image = _random_apply(_reference_jitter, 0.8, image)
    image = _random_apply(lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), 0.2, image)
    return tf.clip_by_value(tf.reshape(image, [size, size, 3]), 0.0, 1.0)


def reference_dataset(cases: tf.data.Dataset, batch_size: int, image_size: int) -> tf.data.Dataset:
    def two_views(encoded):
        image = tf.image.convert_image_dtype(tf.io.decode_jpeg(encoded, channels=3), tf.float32)
        return {"view1": _reference_view(image, image_size), "view2": _reference_view(image, image_size)}

    ds = cases.map(lambda case: case["images"]).unbatch().shuffle(10 * batch_size).repeat()
    ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


# --- measurement -----------------------------------------------------------------------------------

def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(ds: tf.data.Dataset, method: str, args) -> dict:
    if method == "reference":
        data = reference_dataset(ds, args.batch_size, args.image_size)
    else:
        data = pipelines.pretrain_dataset(ds, method=method, batch_size=args.batch_size,
                                          image_size=args.image_size, augmentation=args.preset, seed=0)
    it = iter(data)
    for _ in range(args.warmup_batches):  # tracing, XLA compilation, autotuning
        next(it)
    batches, start, cpu_start = 0, time.perf_counter(), _cpu_seconds()
    while time.perf_counter() - start < args.seconds:
        next(it)
        batches += 1
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    examples_per_s = batches * args.batch_size / elapsed
    cpu_us_per_view = 1e6 * cpu / (2 * batches * args.batch_size)
    return {"benchmark": "input_pipeline", "method": method,
            "preset": "reference (no blur)" if method == "reference" else args.preset, "data": args.data,
            "source_size": args.source_size, "image_size": args.image_size, "batch_size": args.batch_size,
            "source_images_per_s": examples_per_s * (2 if method == "micle" else 1),
            "views_per_s": 2 * examples_per_s, "cpu_us_per_view": cpu_us_per_view,
            "cpu_bound_views_per_s": os.cpu_count() * 1e6 / cpu_us_per_view,
            "batches": batches, "seconds": elapsed, "cpu_seconds": cpu,
            "reference_source_images_per_s": REFERENCE_SOURCE_IMAGES_PER_S, "peak_rss_gib": peak_rss_gib(),
            "load_avg": load_average(), **environment()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["all", "simclr", "micle", "reference", "both"], default="all",
                   help="both = simclr and micle")
    p.add_argument("--preset", default="simclr")
    p.add_argument("--source_size", type=int, default=96)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup_batches", type=int, default=10)
    p.add_argument("--data", choices=["synthetic", "demo"], default="synthetic")
    args = p.parse_args()
    if args.data == "demo":
        data_dir = os.path.join(tempfile.gettempdir(), "simclr_med_bench_data")
        ds, _ = datasets.load("demo", "train", data_dir=data_dir)
        ds = ds.map(lambda case: {"images": case["images"], "image_ids": case["image_ids"]}).cache()
    else:
        ds = synthetic_cases(512, args.source_size)
    groups = {"all": ["simclr", "micle", "reference"], "both": ["simclr", "micle"]}
    methods = groups.get(args.method, [args.method])
    for method in methods:
        emit(measure(ds, method, args))


if __name__ == "__main__":
    main()
