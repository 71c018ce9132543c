"""MICLe pair sampling (Algorithm 1 of Azizi et al.): two different images of one case."""
from __future__ import annotations

import tensorflow as tf


def pick_pair(num_images, seed) -> tuple[tf.Tensor, tf.Tensor]:
    """Two different indices drawn uniformly from [0, num_images), or (0, 0) for a single image.

    The second index is drawn from the n − 1 remaining ones, so every ordered pair of distinct
    images is equally likely. `seed` is a stateless seed of shape [2].
    """
    n = tf.cast(num_images, tf.float32)
    u = tf.random.stateless_uniform([2], seed)
    first = tf.minimum(tf.cast(u[0] * n, tf.int32), tf.cast(num_images, tf.int32) - 1)
    rest = tf.minimum(tf.cast(u[1] * (n - 1.0), tf.int32), tf.maximum(tf.cast(num_images, tf.int32) - 2, 0))
    second = tf.where(num_images > 1, rest + tf.cast(rest >= first, tf.int32), 0)
    return first, second
