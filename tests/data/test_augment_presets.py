"""Augmentation presets: shapes, ranges, per-image randomness, reproducibility, odd inputs, and the
operations and strengths of the paper's recipes."""
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.config import Config
from simclr_med.data import augment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESETS = ["simclr", "chexpert_pretrain", "chexpert_finetune", "derm_finetune", "crop_only", "none"]


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


@pytest.mark.parametrize("preset", ["simclr", "chexpert_pretrain", "derm_finetune", "crop_only"])
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


def _spy(monkeypatch, *names):
    """Record the arguments of each call of augment's building blocks `names` (still run as usual)."""
    calls = {name: [] for name in names}
    def spy(name, block):
        def call(*args):
            calls[name].append(args)
            return block(*args)
        return call

    for name in names:
        monkeypatch.setattr(augment, name, spy(name, getattr(augment, name)))
    return calls


def _photometric(preset, strength, u=0.0, size=40):
    """One view through a preset's photometric part, eagerly (so spies see every call); u = 0 takes
    every random_apply branch."""
    recipe = augment.get_preset(preset)
    view = tf.random.stateless_uniform([size, size, 3], [1, 2])
    return recipe.photometric(view, tf.fill([recipe.num_draws], float(u)), strength)


def test_chexpert_pretraining_recipe_jitters_at_strength_one_half(monkeypatch):
    """The paper's CheXpert pretraining jitter strength is 0.5, and --color_jitter_strength is what the
    preset applies."""
    cfg = Config.from_flagfile(os.path.join(REPO, "flags", "chexpert_simclr.cfg"))
    assert cfg.augmentation == "chexpert_pretrain"
    calls = _spy(monkeypatch, "color_jitter", "rotate", "_flip")
    _photometric(cfg.augmentation, cfg.color_jitter_strength)
    assert [args[1] for args in calls["color_jitter"]] == [0.5]
    assert len(calls["rotate"]) == len(calls["_flip"]) == 1


def test_derm_finetuning_crops_flips_rotates_jitters_and_blurs(monkeypatch):
    """The operations the paper calls critical for Derm fine-tuning, and the recipe that uses them."""
    cfg = Config.from_flagfile(os.path.join(REPO, "flags", "derm_finetune.cfg"))
    assert cfg.augmentation == "derm_finetune" and cfg.train_mode == "finetune"
    recipe = augment.get_preset("derm_finetune")
    assert recipe.window == "resized"  # random resized crop
    calls = _spy(monkeypatch, "_flip", "rotate", "color_jitter", "gaussian_blur", "to_grayscale")
    _photometric("derm_finetune", cfg.color_jitter_strength)
    assert len(calls["_flip"]) == 1
    [(_, angle)] = calls["rotate"]
    assert float(angle) == pytest.approx(-math.radians(20.0))  # u = 0: the end of U(-20°, 20°)
    assert [args[1] for args in calls["color_jitter"]] == [cfg.color_jitter_strength] == [0.5]
    [(_, sigma, kernel_size)] = calls["gaussian_blur"]
    assert float(sigma) == pytest.approx(0.1) and kernel_size == 4  # 10% of the side
    assert not calls["to_grayscale"]  # colour is kept

    calls = _spy(monkeypatch, "color_jitter", "gaussian_blur")
    _photometric("derm_finetune", 0.5, u=0.99)  # above both probabilities: neither applies
    assert not calls["color_jitter"] and not calls["gaussian_blur"]


def test_derm_finetuning_changes_colour_where_crop_only_does_not():
    jpeg = tf.io.encode_jpeg(np.full((40, 40, 3), 128, np.uint8))
    flat = augment.augment_views(jpeg, "crop_only", 16, tf.constant([0, 1], tf.int64), 8).numpy()
    np.testing.assert_allclose(flat, 128 / 255, atol=1 / 255)
    tuned = augment.augment_views(jpeg, "derm_finetune", 16, tf.constant([0, 1], tf.int64), 8,
                                  color_jitter_strength=0.5).numpy()
    centre_means = tuned[:, 6:10, 6:10].mean(axis=(1, 2, 3))  # the rotation only blackens corners
    assert np.ptp(centre_means) > 0.02
