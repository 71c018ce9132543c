"""tf.data input: pretraining views (SimCLR / MICLe) and supervised batches.

Datasets arrive as cases of encoded images (docs/CONTRACTS.md). Decoding happens here, only for
the images a step uses, in parallel, with every random choice a stateless draw keyed by
(seed, element counter): reproducible, and different every epoch because the counter keeps
running across repeats.
"""
from __future__ import annotations

import tensorflow as tf

from simclr_med import augment, bags

SHUFFLE_BUFFER = 1024


def _shard(ds, batch_size: int, input_context):
    """Per-replica-group pipeline: its shard of the data and its share of the global batch."""
    if input_context is None:
        return ds, batch_size, 0
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds, input_context.get_per_replica_batch_size(batch_size), input_context.input_pipeline_id


def _options(training: bool):
    """Training may hand out elements in any order (faster); evaluation keeps the dataset's order."""
    options = tf.data.Options()
    options.deterministic = not training
    options.autotune.enabled = True
    return options


def _seeds(seed: int, shard: int, index):
    """Three independent stateless seeds for element `index` of shard `shard`."""
    base = tf.stack([tf.constant(seed * 1009 + shard, tf.int64), tf.cast(index, tf.int64)])
    return tf.random.experimental.stateless_split(base, 3)


def _finish(ds, batch_size: int, training: bool):
    return ds.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE).with_options(_options(training))


def pretrain_dataset(ds, *, method: str, batch_size: int, image_size: int, augmentation: str,
                     color_jitter_strength: float = 1.0, seed: int = 0, input_context=None,
                     with_ids: bool = False):
    """Infinite batches {"view1", "view2"} of positive pairs (+ "id1", "id2" when `with_ids`).

    simclr: every image of every case is an example; its two views are two augmentations.
    micle: every case is an example; its views come from two different images when it has several.
    """
    if method not in ("simclr", "micle"):
        raise ValueError(f"unknown pretraining method {method!r}: use simclr or micle")
    augment.get_preset(augmentation)  # unknown names fail here, not inside a tf.data map
    ds, batch, shard = _shard(ds, batch_size, input_context)
    ds = ds.map(lambda ex: {"images": ex["images"], "image_ids": ex["image_ids"]})
    if method == "simclr":  # unbag: one example per image
        ds = ds.flat_map(lambda ex: tf.data.Dataset.from_tensor_slices(ex).map(
            lambda im: {"images": im["images"][None], "image_ids": im["image_ids"][None]}))
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat().enumerate()

    def views(index, ex):
        pick_seed, seed1, seed2 = tf.unstack(_seeds(seed, shard, index))
        first, second = bags.pick_pair(tf.shape(ex["images"])[0], pick_seed)
        out = {
            "view1": augment.augment_views(ex["images"][first], augmentation, image_size, seed1, 1, color_jitter_strength)[0],
            "view2": augment.augment_views(ex["images"][second], augmentation, image_size, seed2, 1, color_jitter_strength)[0],
        }
        if with_ids:
            out.update(id1=ex["image_ids"][first], id2=ex["image_ids"][second])
        return out

    return _finish(ds.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False), batch, True)


def _targets(ex, meta) -> dict:
    if meta.multi_label:
        return {"labels": ex["labels"], "label_mask": ex["label_mask"]}
    return {"label": ex["label"]}


def supervised_dataset(ds, meta, *, batch_size: int, image_size: int, augmentation: str, training: bool,
                       seed: int = 0, input_context=None, with_ids: bool = False):
    """Batches {"image", "label"} or {"image", "labels", "label_mask"}, one row per image.

    Training: augmented, shuffled, infinite, full batches. Evaluation: one ordered pass with the
    evaluation crop; `with_ids` adds "case_id" and "metadata" so results can be grouped by case.
    """
    augment.get_preset(augmentation)
    ds, batch, shard = _shard(ds, batch_size, input_context)

    def unbag(ex):
        n = tf.shape(ex["images"])[0]
        repeat = lambda x: tf.repeat(x[None], n, axis=0)  # noqa: E731
        rows = {"image": ex["images"], **{k: repeat(v) for k, v in _targets(ex, meta).items()}}
        if with_ids:
            rows["case_id"] = repeat(ex["case_id"])
            rows["metadata"] = {k: repeat(v) for k, v in ex.get("metadata", {}).items()}
        return tf.data.Dataset.from_tensor_slices(rows)

    ds = ds.flat_map(unbag)
    if training:
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate()

    def prepare(index, ex):
        view_seed = _seeds(seed, shard, index)[0]
        return {**ex, "image": augment.augment_views(ex["image"], augmentation if training else "none",
                                                     image_size, view_seed, 1)[0]}

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return _finish(ds, batch, training)
