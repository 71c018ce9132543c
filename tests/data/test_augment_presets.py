"""Augmentation presets: shapes, ranges, per-image randomness, reproducibility, odd inputs."""
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.data import augment

PRESETS = ["simclr", "chexpert_pretrain", "chexpert_finetune", "crop_only", "none"]


def _encoded(kind, h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "rgb_jpeg":
        return tf.io.encode_jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    if kind == "gray_png":
        return tf.io.encode_png(rng.integers(0, 255, (h, w, 1), dtype=np.uint8))
    if kind == "rgba_png":
        return tf.io.encode_png(rng.integers(0, 255, (h, w, 4), dtype=np.uint8))
    if kind == "png16":
        return tf.io.encode_png(rng.integers(0, 65535, (h, w, 1), dtype=np.uint16))
    raise ValueError(kind)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("kind", ["rgb_jpeg", "gray_png", "rgba_png", "png16"])
def test_every_preset_on_every_input_kind(preset, kind):
    views = augment.augment_views(_encoded(kind), preset, 24, tf.constant([1, 2], tf.int64), 2)
    assert views.shape == (2, 24, 24, 3) and views.dtype == tf.float32
    assert float(tf.reduce_min(views)) >= 0.0 and float(tf.reduce_max(views)) <= 1.0


def test_sixteen_bit_png_keeps_its_range():
    image = augment.decode_image(tf.io.encode_png(np.full((8, 8, 1), 65535, np.uint16)))
    assert image.shape == (8, 8, 3) and float(tf.reduce_min(image)) == pytest.approx(1.0)


@pytest.mark.parametrize("preset", ["simclr", "chexpert_pretrain", "crop_only"])
def test_each_view_gets_its_own_draw_and_seeds_reproduce(preset):
    img = _encoded("rgb_jpeg")
    a = augment.augment_views(img, preset, 24, tf.constant([3, 4], tf.int64), 4).numpy()
    b = augment.augment_views(img, preset, 24, tf.constant([3, 4], tf.int64), 4).numpy()
    c = augment.augment_views(img, preset, 24, tf.constant([3, 5], tf.int64), 4).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert len({v.tobytes() for v in a}) == 4  # four views, four different augmentations


def test_evaluation_preset_is_deterministic_central_crop():
    img = _encoded("rgb_jpeg")
    a = augment.augment_views(img, "none", 24, tf.constant([0, 0], tf.int64), 1)
    b = augment.augment_views(img, "none", 24, tf.constant([9, 9], tf.int64), 1)
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown augmentation 'fancy'"):
        augment.get_preset("fancy")
