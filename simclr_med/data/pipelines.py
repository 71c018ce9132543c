"""tf.data input pipelines from the standardized case elements of `simclr_med.data.datasets`.

Both builders take an optional `tf.distribute.InputContext`, so they can be handed to
`strategy.distribute_datasets_from_function`: each input pipeline reads a disjoint shard of the
cases and batches at the per-replica batch size.

Augmentation seeds come from a counter taken after `repeat()`, so every epoch draws new crops
(and new MICLe pairs) while a fixed `seed` reproduces the same stream; because the counter
travels with the data, the parallel map may finish out of order without changing any view.
A run that resumes at `start_step` > 0 draws another stream (shuffle order and augmentations):
restarting the same one would train again on the data of its first steps after every restart.
Training pipelines augment small groups of MICRO_BATCH examples per map call (then `rebatch`),
which spreads tf.data's and XLA's per-call overhead (~10% less CPU per view at 64 px).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from simclr_med.data import augment, micle_pairs

METHODS = ("simclr", "micle")
MICRO_BATCH = 4
SHUFFLE_BATCHES = 10  # shuffle buffer, in batches (as the SimCLR reference); at least 1024 elements


def pretrain_dataset(ds: tf.data.Dataset, *, method: str, batch_size: int, image_size: int, augmentation: str,
                     color_jitter_strength: float = 1.0, seed: int = 0, start_step: int = 0,
                     input_context: tf.distribute.InputContext | None = None,
                     with_ids: bool = False, deterministic: bool = False) -> tf.data.Dataset:
    """Infinite, shuffled batches {"view1", "view2"}: float32 [B, S, S, 3] in [0, 1].

    simclr: every image of every case is an example, two augmentations of itself.
    micle: every case is an example, two different images of it each augmented (MICLe's
    Algorithm 1); a single-image case gives two augmentations of that image.
    with_ids adds the image ids "id1", "id2" (strings: for tests, not for accelerators).
    deterministic keeps the batches' composition fixed for a given seed too (for evaluation: the
    contrastive loss depends on which examples share a batch); training lets groups finish out of order.
    """
    if method not in METHODS:
        raise ValueError(f"pretrain_dataset: method={method!r} is not one of {', '.join(METHODS)}")
    augment.get_preset(augmentation)
    _require(ds, ("images", "image_ids"), "pretrain_dataset")
    ds, batch_size, pipeline_id = _shard(ds, batch_size, input_context)
    seed = _stream_seed(seed, start_step)
    ds = ds.map(lambda e: {"images": e["images"], "image_ids": e["image_ids"]})
    if method == "simclr":
        ds = ds.unbatch()
    ds = _shuffle_repeat(ds, batch_size, seed)
    # A group of cases has ragged image lists; a group of single images is a plain [k] batch.
    ds = ds.ragged_batch(MICRO_BATCH, drop_remainder=True) if method == "micle" \
        else ds.batch(MICRO_BATCH, drop_remainder=True)
    ds = ds.enumerate()

    def views(index, group):
        key = _group_seed(seed, pipeline_id, index)
        if method == "simclr":
            images, ids = group["images"], group["image_ids"]
            out = augment.augment_images(images, augmentation, image_size, key, 2, color_jitter_strength)
            id1 = id2 = ids
        else:
            pair_keys = tf.unstack(tf.random.experimental.stateless_split(key, MICRO_BATCH + 1))
            pairs = [micle_pairs.select_pair(group["images"][i], group["image_ids"][i], pair_keys[i])
                     for i in range(MICRO_BATCH)]
            images = [image for pair in pairs for image, _ in pair]
            out = augment.augment_images(images, augmentation, image_size, pair_keys[-1], 1,
                                         color_jitter_strength)
            id1 = tf.stack([pair[0][1] for pair in pairs])
            id2 = tf.stack([pair[1][1] for pair in pairs])
        out = tf.reshape(out, [MICRO_BATCH, 2, image_size, image_size, 3])  # rows: (example, view)
        result = {"view1": out[:, 0], "view2": out[:, 1]}
        if with_ids:
            result.update(id1=id1, id2=id2)
        return result

    ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    return _finish(ds.rebatch(batch_size, drop_remainder=True))


def supervised_dataset(ds: tf.data.Dataset, meta, *, batch_size: int, image_size: int, augmentation: str,
                       training: bool, color_jitter_strength: float = 1.0, seed: int = 0, start_step: int = 0,
                       input_context: tf.distribute.InputContext | None = None,
                       with_ids: bool = False) -> tf.data.Dataset:
    """Batches {"image": float32 [B, S, S, 3], "label": int64 [B]} or {"image", "labels", "label_mask"}.

    Every image of a case is an example carrying the case's label. Training: infinite, shuffled,
    augmented with `augmentation`, drop_remainder. Evaluation: one pass in order, augmentation
    "none" (central crop) whatever `augmentation` says, every image of every case, so that the
    evaluator can average predictions per case. with_ids adds "case_id" and the case's
    "metadata" per image (strings: for host-side evaluation and tests, not for accelerators).
    """
    label_keys = ("labels", "label_mask") if meta.multi_label else ("label",)
    augment.get_preset(augmentation)
    _require(ds, ("images", "case_id") + label_keys, "supervised_dataset")
    ds, batch_size, pipeline_id = _shard(ds, batch_size, input_context)

    def per_image(e):
        n = tf.size(e["images"])
        repeat = lambda x: tf.repeat(x[None], n, axis=0)  # noqa: E731
        out = {"image": e["images"], **{key: repeat(e[key]) for key in label_keys}}
        if with_ids:
            out["case_id"] = repeat(e["case_id"])
            out["metadata"] = {key: repeat(value) for key, value in e.get("metadata", {}).items()}
        return out

    ds = ds.map(per_image).unbatch()
    if not training:
        ds = ds.map(lambda e: {**e, "image": augment.augment(e["image"], "none", image_size, [0, 0])},
                    num_parallel_calls=tf.data.AUTOTUNE)
        return _finish(ds.batch(batch_size))

    seed = _stream_seed(seed, start_step)
    ds = _shuffle_repeat(ds, batch_size, seed).batch(MICRO_BATCH, drop_remainder=True).enumerate()

    def augmented(index, group):
        key = _group_seed(seed, pipeline_id, index)
        images = augment.augment_images(group["image"], augmentation, image_size, key,
                                        color_jitter_strength=color_jitter_strength)
        return {**group, "image": images}

    ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return _finish(ds.rebatch(batch_size, drop_remainder=True))


def _require(ds, keys, caller):
    spec = ds.element_spec
    missing = [k for k in keys if not isinstance(spec, dict) or k not in spec]
    if missing:
        have = ", ".join(sorted(spec)) if isinstance(spec, dict) else type(spec).__name__
        raise ValueError(f"{caller}: input elements lack {', '.join(missing)} (have: {have}); "
                         "expected the case dicts of simclr_med.data.datasets")
    for key in ("images", "image_ids"):
        if key in keys and (spec[key].dtype != tf.string or spec[key].shape.rank != 1):
            raise ValueError(f"{caller}: {key!r} is {spec[key].dtype.name} of shape {spec[key].shape}; "
                             "expected a 1-D string tensor (a case's encoded images and their ids)")


def _shard(ds, batch_size, input_context):
    """This input pipeline's disjoint share of the cases and its per-replica batch size."""
    if input_context is None:
        return ds, batch_size, 0
    per_replica = input_context.get_per_replica_batch_size(batch_size)
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds, per_replica, input_context.input_pipeline_id


def _shuffle_repeat(ds, batch_size, seed):
    """Reshuffled every epoch, endless."""
    buffer = max(SHUFFLE_BATCHES * batch_size, 1024)
    return ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True).repeat()


def _stream_seed(seed: int, start_step: int) -> int:
    """The seed of the input stream of a run that starts at `start_step` (`seed` itself at 0)."""
    if start_step == 0:
        return seed
    return int(np.random.SeedSequence([seed, start_step]).generate_state(1)[0])


def _group_seed(seed, pipeline_id, index):
    """A stateless seed unique to (seed, input pipeline, group counter)."""
    return tf.random.experimental.stateless_fold_in(tf.constant([seed, pipeline_id], tf.int64), index)


def _finish(ds):
    # Out-of-order completion only in the augmentation maps (their deterministic=): upstream of
    # `shard`, an order that differs between hosts would give two hosts a case and another none.
    options = tf.data.Options()
    options.experimental_optimization.map_parallelization = True
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)
