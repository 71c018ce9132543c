"""MICLe positive pairs: two different images of one bag (case), drawn afresh for every use.

Only the indices are drawn here; the pipeline then gathers the two encoded images, so a case
with six images still costs two decodes.
"""
from __future__ import annotations

import tensorflow as tf


def pick_pair(num_images, seed):
    """Two different indices into a bag of `num_images`, uniform over ordered pairs; (0, 0) if n = 1.

    `seed` is a stateless seed (shape [2]): the same seed gives the same pair, so a pipeline that
    derives it from an element counter gets a new, reproducible pair every epoch.
    """
    n = tf.cast(num_images, tf.int32)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    first = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=n, dtype=tf.int32)
    # Draw among the other n − 1 and skip over `first`.
    other = tf.random.stateless_uniform([], seeds[1], minval=0, maxval=tf.maximum(n - 1, 1), dtype=tf.int32)
    second = tf.where(n >= 2, other + tf.cast(other >= first, tf.int32), first)
    return first, second


def select_pair(images, image_ids, seed):
    """The two members of a bag chosen by `pick_pair`: ((image, id), (image, id)), still encoded."""
    first, second = pick_pair(tf.size(images), seed)
    return (images[first], image_ids[first]), (images[second], image_ids[second])
