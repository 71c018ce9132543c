"""MICLe pair sampling: distinct, uniform, reproducible, and selecting still-encoded images."""
import collections
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_med.data import micle_pairs  # noqa: E402


@tf.function
def _pairs(n, seeds):
    """pick_pair in graph mode (as in a tf.data map), for many seeds at once."""
    return tf.map_fn(lambda s: tf.stack(micle_pairs.pick_pair(n, s)), seeds, fn_output_signature=tf.int32)


def _seeds(count, salt=0):
    return tf.stack([tf.fill([count], tf.constant(salt, tf.int64)), tf.range(count, dtype=tf.int64)], axis=1)


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_pairs_are_distinct_and_uniform_over_ordered_pairs(n):
    draws = 600 * n * (n - 1)
    pairs = _pairs(tf.constant(n, tf.int64), _seeds(draws)).numpy()
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert ((pairs >= 0) & (pairs < n)).all()
    counts = collections.Counter(map(tuple, pairs))
    assert len(counts) == n * (n - 1)
    expected = draws / (n * (n - 1))
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 3 * n * (n - 1)  # mean n(n−1) − 1 under uniformity; a biased sampler lands far above


def test_a_single_image_pairs_with_itself():
    pairs = _pairs(tf.constant(1, tf.int32), _seeds(50)).numpy()
    assert (pairs == 0).all()


def test_same_seed_same_pair_new_seed_new_pair():
    seeds = _seeds(200, salt=3)
    first, again = _pairs(tf.constant(6), seeds).numpy(), _pairs(tf.constant(6), seeds).numpy()
    np.testing.assert_array_equal(first, again)
    other = _pairs(tf.constant(6), _seeds(200, salt=4)).numpy()
    assert (first != other).any(axis=1).mean() > 0.8


def test_select_pair_returns_matching_encoded_images_and_ids():
    images = tf.constant([b"bytes-%d" % k for k in range(5)])
    ids = tf.constant([b"case/%d" % k for k in range(5)])
    for i in range(20):
        (image1, id1), (image2, id2) = micle_pairs.select_pair(images, ids, tf.constant([1, i], tf.int64))
        assert image1.dtype == tf.string  # still encoded: only these two get decoded downstream
        assert image1.numpy().replace(b"bytes-", b"case/") == id1.numpy()
        assert image2.numpy().replace(b"bytes-", b"case/") == id2.numpy()
        assert id1.numpy() != id2.numpy()
