"""Decoding, crop windows and the photometric building blocks of simclr_med.data.augment.

(tests/test_augment_presets.py runs every preset on every input kind; here the parts are checked
against independent references: numpy, scipy, tf.image.)
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.ndimage  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_med.data import augment  # noqa: E402

PRESETS = list(augment.PRESETS)


def _colourful(h=48, w=64, seed=0):
    """Smooth random colours: JPEG-friendly, and every transform visibly changes it."""
    small = np.random.default_rng(seed).uniform(0, 255, (1, 4, 4, 3)).astype(np.float32)
    return tf.cast(tf.image.resize(small, [h, w], "bicubic")[0] + 0.5, tf.uint8).numpy().clip(0, 255)


def _seed(i):
    return tf.constant([11, i], tf.int64)


# --- decoding ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels,dtype", [(1, np.uint8), (2, np.uint8), (3, np.uint8), (4, np.uint8),
                                            (1, np.uint16), (4, np.uint16)])
def test_decode_image_gives_rgb_in_unit_range(channels, dtype):
    top = np.iinfo(dtype).max
    pixels = np.random.default_rng(channels).integers(0, top, (5, 7, channels), dtype=dtype)
    decoded = augment.decode_image(tf.io.encode_png(pixels)).numpy()
    expected = pixels[..., :1] if channels <= 2 else pixels[..., :3]  # gray tiled, alpha dropped
    np.testing.assert_allclose(decoded, np.broadcast_to(expected / top, (5, 7, 3)), atol=1e-6)


def test_decoded_tensors_in_any_layout_are_accepted():
    gray16 = np.full((6, 9, 1), 65535 // 4, np.uint16)
    views = augment.augment_views(tf.constant(gray16), "none", 8, _seed(0))
    np.testing.assert_allclose(views.numpy(), 0.25, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[H, W, 1\|2\|3\|4\]"):
        augment.to_float_rgb(tf.zeros([4, 4, 5]))


def test_a_single_jpeg_view_decodes_only_its_window_but_the_same_pixels():
    pixels = _colourful(61, 83)
    jpeg = tf.io.encode_jpeg(pixels, quality=95)
    decoded = tf.io.decode_jpeg(jpeg)  # the same decoder, in full
    for i in range(5):
        cropped = augment.augment_views(jpeg, "crop_only", 32, _seed(i))  # decode_and_crop_jpeg path
        reference = augment.augment_views(decoded, "crop_only", 32, _seed(i))  # full decode, slice
        difference = np.abs(cropped.numpy() - reference.numpy())  # libjpeg may upsample chroma
        assert difference.mean() < 0.5 / 255 and difference.max() < 8 / 255  # differently at the edge


# --- crop windows ----------------------------------------------------------------------------------

def _torchvision_window(height, width, u, attempts=10):
    """RandomResizedCrop.get_params (torchvision) driven by the same uniforms, in numpy."""
    area = height * width
    log_lo, log_hi = np.log(3 / 4), np.log(4 / 3)
    for k in range(attempts):
        target = area * (0.08 + 0.92 * u[k])
        ratio = np.exp(log_lo + (log_hi - log_lo) * u[attempts + k])
        w, h = round(np.sqrt(target * ratio)), round(np.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            return int(u[-2] * (height - h + 1)), int(u[-1] * (width - w + 1)), h, w
    if width / height < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif width / height > 4 / 3:
        h, w = height, round(height * 4 / 3)
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize("height,width", [(90, 120), (64, 64), (20, 200), (1, 300), (300, 7)])
def test_resized_crop_windows_are_torchvisions(height, width):
    u = tf.random.stateless_uniform([500, augment.CROP_DRAWS], _seed(height)).numpy()
    got = np.stack([t.numpy() for t in augment.resized_crop_windows(height, width, tf.constant(u))], 1)
    expected = np.array([_torchvision_window(height, width, row) for row in u.astype(np.float64)])
    # float32 vs float64 may round a candidate the other way now and then
    assert (got == expected).all(axis=1).mean() > 0.98
    y, x, h, w = got.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= height).all() and (x + w <= width).all()


def test_resized_crop_windows_cover_the_simclr_ranges():
    u = tf.random.stateless_uniform([4000, augment.CROP_DRAWS], _seed(1))
    y, x, h, w = (t.numpy() for t in augment.resized_crop_windows(90, 120, u))
    area, aspect = h * w / (90 * 120), w / h
    assert 0.075 < area.min() < 0.1 and area.max() > 0.95
    assert aspect.min() > 0.72 and aspect.max() < 1.39 and aspect.min() < 0.77 and aspect.max() > 1.3
    assert len(set(zip(y, x))) > 1000  # positions vary too


@pytest.mark.parametrize("height,width,expected", [(1, 300, (1, 1)), (300, 1, (1, 1)), (20, 200, (20, 27)),
                                                   (200, 20, (27, 20))])
def test_impossible_aspect_falls_back_to_the_largest_centred_in_range_crop(height, width, expected):
    u = tf.random.stateless_uniform([50, augment.CROP_DRAWS], _seed(2))
    y, x, h, w = (t.numpy() for t in augment.resized_crop_windows(height, width, u))
    fallback = (h == expected[0]) & (w == expected[1])
    assert fallback.any() and ((0.72 < w / h) & (w / h < 1.39) | fallback).all()
    np.testing.assert_array_equal(y[fallback], (height - expected[0]) // 2)
    np.testing.assert_array_equal(x[fallback], (width - expected[1]) // 2)


def test_evaluation_crop_is_the_central_seven_eighths_resized():
    pixels = _colourful(50, 70)
    view = augment.augment(tf.io.encode_png(pixels), "none", 32, _seed(0)).numpy()
    side = round(0.875 * 50)
    top, left = (50 - side + 1) // 2, (70 - side + 1) // 2
    expected = tf.image.resize(pixels[top:top + side, left:left + side] / 255.0, [32, 32]).numpy()
    np.testing.assert_allclose(view, expected, atol=1e-5)


# --- photometric building blocks --------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_gaussian_blur_matches_scipy_with_reflected_borders(sigma):
    image = np.random.default_rng(0).uniform(size=(40, 40, 3)).astype(np.float32)
    taps = np.arange(-2, 3)
    weights = np.exp(-taps ** 2 / (2 * sigma ** 2))
    weights /= weights.sum()
    expected = scipy.ndimage.correlate1d(image, weights, axis=0, mode="mirror")
    expected = scipy.ndimage.correlate1d(expected, weights, axis=1, mode="mirror")
    np.testing.assert_allclose(augment.gaussian_blur(tf.constant(image), sigma, 4).numpy(), expected,
                               atol=1e-5)


def test_rotation_turns_about_the_centre_and_fills_corners_with_zero():
    image = np.random.default_rng(0).uniform(size=(9, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(augment.rotate(tf.constant(image), 0.0).numpy(), image, atol=1e-6)
    quarter = augment.rotate(tf.constant(image), np.pi / 2).numpy()
    assert (np.allclose(quarter, np.rot90(image, 1), atol=1e-5)
            or np.allclose(quarter, np.rot90(image, -1), atol=1e-5))
    diagonal = augment.rotate(tf.ones([9, 9, 3]), np.pi / 4).numpy()
    assert diagonal[0, 0].max() == 0.0 and diagonal[4, 4].min() == pytest.approx(1.0)


def test_colour_jitter_parameters_and_their_effects():
    image = tf.constant(_colourful(16, 16) / 255.0, tf.float32)
    gray = augment.to_grayscale(image).numpy()
    assert np.allclose(gray[..., 0], gray[..., 1]) and np.allclose(gray[..., 0], gray[..., 2])
    # u = 0.5 for the four strengths is the middle of each range: the identity.
    centre = tf.constant([0.5, 0.5, 0.5, 0.5, 0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(augment.color_jitter(image, 1.0, centre).numpy(), image.numpy(), atol=1e-6)
    np.testing.assert_allclose(augment.color_jitter(image, 0.0, tf.random.uniform([8])).numpy(),
                               image.numpy(), atol=1e-6)
    # Saturation at its floor (1 − 0.8) blends 80% of the way to gray.
    desaturated = augment.color_jitter(image, 1.0, tf.constant([0.5, 0.5, 0.0, 0.5, 0.1, 0.2, 0.3, 0.4]))
    np.testing.assert_allclose(desaturated.numpy(), 0.2 * image.numpy() + 0.8 * gray, atol=1e-5)
    # Full strength: values stay in [0, 1] and the image changes.
    strong = augment.color_jitter(image, 1.0, tf.constant([1.0, 0.0, 1.0, 1.0, 0.4, 0.3, 0.2, 0.1])).numpy()
    assert strong.min() >= 0.0 and strong.max() <= 1.0 and not np.allclose(strong, image.numpy(), atol=0.05)


def test_saturated_images_stay_in_unit_range_through_blur():
    """A blur's float weights sum to 1 only up to rounding: white pixels came out at 1.0000002."""
    white = tf.io.encode_png(np.full((96, 96, 3), 255, np.uint8))
    for s in range(10):
        views = augment.augment_images([white] * 4, "simclr", 64, tf.constant([s, 1], tf.int64), 2)
        assert float(tf.reduce_max(views)) <= 1.0 and float(tf.reduce_min(views)) >= 0.0


def test_jitter_order_matters_because_each_step_is_clipped():
    image = tf.constant(_colourful(16, 16) / 255.0, tf.float32)
    strengths = [1.0, 0.0, 0.5, 0.5]  # brightness ×1.8, contrast ×0.2
    bright_first = augment.color_jitter(image, 1.0, tf.constant(strengths + [0.0, 0.1, 0.2, 0.3])).numpy()
    contrast_first = augment.color_jitter(image, 1.0, tf.constant(strengths + [0.1, 0.0, 0.2, 0.3])).numpy()
    assert np.abs(bright_first - contrast_first).mean() > 0.01


# --- presets ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("height,width", [(7, 300), (300, 7), (1, 1), (5, 9), (33, 47)])
def test_presets_handle_odd_sizes(preset, height, width):
    views = augment.augment_views(tf.io.encode_jpeg(_colourful(height, width)), preset, 32, _seed(height), 2)
    assert views.shape == (2, 32, 32, 3) and views.dtype == tf.float32
    values = views.numpy()
    assert np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0


@pytest.mark.parametrize("preset", PRESETS)
def test_same_seed_same_views_other_seed_other_views(preset):
    jpeg = tf.io.encode_jpeg(_colourful())
    a = augment.augment_images([jpeg, jpeg], preset, 24, _seed(5), 2).numpy()
    b = augment.augment_images([jpeg, jpeg], preset, 24, _seed(5), 2).numpy()
    np.testing.assert_array_equal(a, b)
    if preset != "none":
        c = augment.augment_images([jpeg, jpeg], preset, 24, _seed(6), 2).numpy()
        assert not np.allclose(a, c)
        assert len({v.tobytes() for v in a}) == 4  # every view its own draw, also across images


def test_simclr_grays_about_a_fifth_of_the_views():
    jpeg = tf.io.encode_jpeg(_colourful())
    views = np.concatenate([augment.augment_views(jpeg, "simclr", 16, _seed(i), 20).numpy()
                            for i in range(10)])
    gray = np.mean([np.allclose(v[..., 0], v[..., 1], atol=1e-6)
                    and np.allclose(v[..., 1], v[..., 2], atol=1e-6)
                    for v in views])
    assert 0.1 < gray < 0.3


def test_finetune_changes_brightness_and_contrast_but_pretraining_crop_only_does_not():
    jpeg = tf.io.encode_jpeg(np.full((40, 40, 3), 128, np.uint8))
    flat = augment.augment_views(jpeg, "crop_only", 16, _seed(0), 8).numpy()
    np.testing.assert_allclose(flat, 128 / 255, atol=1 / 255)
    tuned = augment.augment_views(jpeg, "chexpert_finetune", 16, _seed(0), 8).numpy()
    centre_means = tuned[:, 6:10, 6:10].mean(axis=(1, 2, 3))  # the rotation only blackens corners
    assert np.ptp(centre_means) > 0.05 and np.abs(centre_means - 128 / 255).max() < 0.25
