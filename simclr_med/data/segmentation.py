"""The `seg_masks` data (images/ and masks/ of one manual dir) as batches of image and mask.

Image and mask move together: the same resize grid (nearest for masks, so they stay class
indices) and the same random flips.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_med import io
from simclr_med.errors import DataError
from tfds_builders.seg_masks import SegMasks


def _builder(data_dir: str, manual_dir: str | None) -> SegMasks:
    """The prepared builder; builds from `manual_dir` on first use, reuses `data_dir` afterwards."""
    builder = SegMasks(data_dir=data_dir)
    if not builder.is_prepared():
        if not manual_dir:
            raise DataError(f"seg_masks is not built in {data_dir}; pass manual_dir (images/, masks/)")
        if not io.isdir(manual_dir):
            raise DataError(f"{manual_dir}: manual dir not found (expected images/ and masks/ in it)")
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def check_mask_classes(data_dir: str, num_classes: int, manual_dir: str | None = None) -> None:
    """Fails naming the mask whose values do not fit `num_classes`: out-of-range indices would be
    dropped by the one-hot Dice silently, and binary training would merge classes into foreground."""
    builder = _builder(data_dir, manual_dir)
    for split in builder.info.splits:
        ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        for name, top in ds.map(lambda ex: (ex["name"], tf.reduce_max(ex["mask"]))).as_numpy_iterator():
            if top >= max(num_classes, 2):
                hint = "binary masks hold 0/255 or 0/1" if num_classes == 1 else "class indices start at 0"
                raise DataError(f"masks/{name.decode()}.png holds class {top}, but num_classes={num_classes} "
                                f"(pass --num_classes={top + 1}; {hint})")


def num_examples(split: str, data_dir: str, manual_dir: str | None = None) -> int:
    """Size of a split, from the builder's metadata."""
    return _builder(data_dir, manual_dir).info.splits[split].num_examples


def _preprocess(example, image_size, num_classes):
    image = tf.image.resize(tf.cast(example["image"], tf.float32) / 255.0, (image_size, image_size),
                            method="bilinear", antialias=True)
    # Nearest neighbour keeps masks as class indices; binary sets treat any non-zero as foreground.
    mask = tf.image.resize(example["mask"], (image_size, image_size), method="nearest")
    mask = tf.cast(mask > 0 if num_classes == 1 else mask, tf.float32)
    return image, mask


def _joint_flip(image, mask, seed):
    """The same random flips for image and mask: stacking them makes one flip op move both."""
    stacked = tf.concat([image, mask], axis=-1)
    stacked = tf.image.stateless_random_flip_left_right(stacked, seed)
    stacked = tf.image.stateless_random_flip_up_down(stacked, seed + [0, 1])
    return stacked[..., :3], stacked[..., 3:]


def load_segmentation(
    split: str, data_dir: str, manual_dir: str | None = None, image_size: int = 224,
    batch_size: int = 8, training: bool = False, *, num_classes: int = 1, seed: int = 0,
) -> tf.data.Dataset:
    """Batches of (image [B,S,S,3] float32 in [0,1], mask [B,S,S,1] float32).

    Masks are 0/1 for `num_classes=1`, class indices otherwise. Training: infinite, shuffled,
    jointly flipped, drop_remainder; evaluation: one ordered pass.
    """
    ds = _builder(data_dir, manual_dir).as_dataset(split=split, shuffle_files=training)
    ds = ds.map(lambda ex: _preprocess(ex, image_size, num_classes), num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        ds = ds.repeat().shuffle(256, seed=seed)
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda pair, s: _joint_flip(*pair, s), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)
