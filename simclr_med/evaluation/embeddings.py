"""Pooled encoder embeddings of a dataset split, cached as .npz for frozen-encoder protocols.

`linear_protocol` and `dvme` train small heads on frozen embeddings many times (folds, seeds,
subsets); one forward pass per (source, dataset, split), kept on disk, serves them all.

A source is a simclr-med run directory or checkpoint prefix (depth/width read from the run's
`flags_*.json`), an exported SavedModel (its `serving_default` is fed the decoded uint8 images,
so its own preprocessing applies), or a Keras `.keras` / `.weights.h5` encoder file.
Run and Keras sources see the evaluator's input (augmentation "none"). Rows follow the evaluator:
multi-class rows are cases (embeddings averaged over the case's images, as in predictions.npz);
multi-label rows are images, with `image_ids` (a patient's studies can differ in labels).

    python -m simclr_med.evaluation.embeddings --source runs/demo_pretrain --dataset demo --split train \
        --data_dir /tmp/tfds --output emb_train.npz
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

import numpy as np
import tensorflow as tf

from simclr_med import io
from simclr_med.data import augment, datasets
from simclr_med.errors import CheckpointError, DataError, SimclrMedError, storage_errors
from simclr_med.evaluation import metrics
from simclr_med.models import resnet
from simclr_med.train import checkpoints

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved embedding source. `image_size` is None for SavedModels (fixed at export)."""

    kind: str  # checkpoint | saved_model | keras
    path: str  # checkpoint prefix, SavedModel directory or Keras file
    image_size: int | None
    resnet_depth: int | None
    width_multiplier: int | None

    def fingerprint(self) -> str:
        """Changes when the source's weights may have changed (new step, rewritten file)."""
        main = {"checkpoint": self.path + ".index", "keras": self.path,
                "saved_model": os.path.join(self.path, "saved_model.pb")}[self.kind]
        return json.dumps({**dataclasses.asdict(self), "path": io.run_path(self.path),
                           "mtime": io.mtime(main)}, sort_keys=True)


def run_flags(run_dir: str) -> dict:
    """The flags a run was started with (its newest `flags_<mode>.json`); {} when it has none."""
    files = sorted(io.glob(os.path.join(run_dir, "flags_*.json")), key=io.mtime)
    if not files:
        return {}
    try:
        return io.read_json(files[-1])
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{files[-1]}: unreadable run flags ({e})") from None


def resolve_source(path: str, *, image_size: int | None = None, resnet_depth: int | None = None,
                   width_multiplier: int | None = None) -> Source:
    """Classifies `path` and fills in the encoder shape; explicit arguments override the run's flags."""
    if io.isfile(os.path.join(path, "saved_model.pb")):
        return Source("saved_model", path, None, None, None)
    if path.endswith(checkpoints.KERAS_FILES):
        if not io.isfile(path):
            raise CheckpointError(f"--source={path}: no such file")
        if image_size is None:
            raise CheckpointError(f"--source={path}: a Keras file does not record the input size; "
                                  "pass --image_size")
        return Source("keras", path, image_size, resnet_depth or 50, width_multiplier or 1)
    prefix = checkpoints.resolve_checkpoint(path)
    flags = run_flags(os.path.dirname(prefix))
    depth = resnet_depth or flags.get("resnet_depth")
    width = width_multiplier or flags.get("width_multiplier")
    size = image_size or flags.get("image_size")
    if not (depth and width and size):
        raise CheckpointError(f"--source={path}: no flags_*.json beside {prefix}; pass --resnet_depth, "
                              "--width_multiplier and --image_size")
    return Source("checkpoint", prefix, int(size), int(depth), int(width))


def _image_rows(ds) -> tf.data.Dataset:
    """One element per image in the split's order; deterministic, so a cache is reproducible."""
    def unbag(ex):
        n = tf.shape(ex["images"])[0]
        row = {"image": ex["images"], "image_ids": ex["image_ids"], "case_ids": tf.fill([n], ex["case_id"])}
        for key in ("label", "labels", "label_mask"):
            if key in ex:
                row[key] = tf.repeat(ex[key][tf.newaxis], n, axis=0)
        return tf.data.Dataset.from_tensor_slices(row)

    options = tf.data.Options()
    options.deterministic = True
    return ds.flat_map(unbag).with_options(options)


def _encoder_rows(source: Source, rows: tf.data.Dataset, batch_size: int) -> list[dict]:
    """Embeddings of the evaluation crop (augmentation "none"), the input the evaluator scores."""
    encoder = resnet.build_resnet(source.resnet_depth, source.width_multiplier)
    checkpoints.load_encoder(encoder, source.path)
    embed = tf.function(lambda x: tf.cast(encoder(x, training=False), tf.float32), reduce_retracing=True)
    size, seed = source.image_size, tf.zeros([2], tf.int64)
    data = rows.map(lambda r: {**r, "image": augment.augment(r["image"], "none", size, seed)},
                    num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
    return [{**{k: v.numpy() for k, v in batch.items() if k != "image"},
             "embeddings": embed(batch["image"]).numpy()}
            for batch in data]


def _decode_uint8(row):
    image = tf.io.decode_image(row["image"], channels=3, dtype=tf.uint8, expand_animations=False)
    return {**row, "image": image}


def _saved_model_rows(source: Source, rows: tf.data.Dataset, batch_size: int) -> list[dict]:
    """Embeddings from `serving_default` fed the decoded images; equal sizes are batched together."""
    try:
        serve = tf.saved_model.load(source.path).signatures["serving_default"]
    except (OSError, KeyError, ValueError, tf.errors.OpError) as e:
        raise CheckpointError(f"--source={source.path}: not a simclr-med SavedModel ({e})") from None
    parts, pending = [], {}

    def flush(shape):
        index, images = zip(*pending.pop(shape))
        for i, embedding in zip(index, serve(images=tf.constant(np.stack(images)))["embedding"].numpy()):
            parts[i]["embeddings"] = embedding[None]

    for i, row in enumerate(rows.map(_decode_uint8, num_parallel_calls=tf.data.AUTOTUNE).as_numpy_iterator()):
        image = row.pop("image")
        parts.append({k: np.asarray(v)[None] for k, v in row.items()})
        pending.setdefault(image.shape, []).append((i, image))
        # At most `batch_size` decoded images wait: with many image sizes (CheXpert widths vary)
        # groups rarely fill, and waiting for them would hold the whole split in memory.
        if sum(map(len, pending.values())) >= batch_size:
            flush(max(pending, key=lambda shape: len(pending[shape])))
    for shape in list(pending):
        flush(shape)
    return parts


def _concat(parts: list[dict]) -> dict:
    if not parts:
        raise DataError("the split is empty: no embeddings to compute")
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    out["embeddings"] = out["embeddings"].astype(np.float32)
    for key in ("case_ids", "image_ids"):
        out[key] = out[key].astype(str)
    if "label" in out:
        out["labels"] = out.pop("label").astype(np.int64)
    return out


def _per_case(rows: dict) -> dict:
    """Multi-class: one row per case, embeddings averaged over its images (as the evaluator does)."""
    avg = metrics.average_by_case({k: rows[k] for k in ("embeddings", "labels", "case_ids")})
    return {**avg, "embeddings": avg["embeddings"].astype(np.float32)}


def load_cache(path: str) -> dict:
    """The arrays of an embeddings .npz (strings as str)."""
    try:
        return io.load_npz(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable embeddings .npz ({e})") from None


def extract(source: str, dataset: str, split: str, *, data_dir, output: str | None = None,
            manual_dir=None, image_size: int | None = None, resnet_depth: int | None = None,
            width_multiplier: int | None = None, batch_size: int = 64, label_fraction: float = 1.0,
            seed: int = 0, uncertainty_policy: str = "mixed") -> dict:
    """Embeddings of `dataset`/`split` from `source`, cached in `output` when given.

    Returns {"embeddings" [N,D] float32, "labels", "case_ids" (multi-label also "label_mask",
    "image_ids"), "class_names", "multi_label", "cache_key"}. A cache written for the same source
    (same checkpoint step and file times), data and preprocessing is reused; any other file at
    `output` is replaced.
    """
    src = resolve_source(source, image_size=image_size, resnet_depth=resnet_depth,
                         width_multiplier=width_multiplier)
    key = json.dumps({"source": json.loads(src.fingerprint()), "dataset": dataset, "split": split,
                      "data_dir": io.run_path(data_dir), "manual_dir": io.run_path(manual_dir),
                      "label_fraction": label_fraction, "seed": seed,
                      "uncertainty_policy": uncertainty_policy}, sort_keys=True)
    if output and io.exists(output):
        cached = load_cache(output)
        if str(cached.get("cache_key", "")) == key:
            log.info("reusing cached embeddings %s", output)
            return cached
        log.warning("%s was computed from another source or data; recomputing", output)

    ds, meta = datasets.load(dataset, split, data_dir=data_dir, manual_dir=manual_dir,
                             uncertainty_policy=uncertainty_policy, label_fraction=label_fraction, seed=seed)
    compute = _saved_model_rows if src.kind == "saved_model" else _encoder_rows
    rows = _concat(compute(src, _image_rows(ds), batch_size))
    out = rows if meta.multi_label else _per_case(rows)
    out.update(class_names=np.array(meta.class_names), multi_label=np.array(meta.multi_label),
               cache_key=np.array(key))
    if output:
        io.write_npz(output, out)
        log.info("wrote %d embeddings of width %d to %s", *out["embeddings"].shape, output)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", required=True,
                   help="run dir, checkpoint prefix, SavedModel dir, .keras or .weights.h5")
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(datasets.NAMES)}")
    p.add_argument("--split", required=True)
    p.add_argument("--data_dir", required=True, help="TFDS data dir (built on first use)")
    p.add_argument("--manual_dir", default=None)
    p.add_argument("--output", required=True, help=".npz to write (reused when it matches)")
    p.add_argument("--image_size", type=int, default=None,
                   help="input size (default: the run's; required for Keras files; "
                        "SavedModels use their own)")
    p.add_argument("--resnet_depth", type=int, default=None, help="default: the run's (Keras files: 50)")
    p.add_argument("--width_multiplier", type=int, default=None, help="default: the run's (Keras files: 1)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--label_fraction", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uncertainty_policy", default="mixed")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with storage_errors(args.output):
            out = extract(args.source, args.dataset, args.split, data_dir=args.data_dir, output=args.output,
                          manual_dir=args.manual_dir, image_size=args.image_size,
                          resnet_depth=args.resnet_depth, width_multiplier=args.width_multiplier,
                          batch_size=args.batch_size, label_fraction=args.label_fraction, seed=args.seed,
                          uncertainty_policy=args.uncertainty_policy)
    except (SimclrMedError, ValueError) as e:
        print(f"simclr-med: error: {e}", file=sys.stderr)
        return 2
    print(f"{args.output}: {out['embeddings'].shape[0]} rows × {out['embeddings'].shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
