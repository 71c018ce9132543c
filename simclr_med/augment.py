"""Image decoding and the augmentation presets of SimCLR, MICLe and the CheXpert experiments.

Every random choice is a stateless draw from an explicit seed, so a view is a pure function of
(image, seed): reproducible, and independent of the order in which tf.data's parallel map
finishes. Each image gets its own draws (Keras 3's RandomCrop/RandomGaussianBlur share one draw
per batch, which would make all views of a batch alike).

Speed matters here because the input pipeline runs on the host CPU: JPEGs decode only their
crop window, and the colour transforms are 3×3 colour matrices instead of HSV round trips.
"""
from __future__ import annotations

import math
from typing import Callable

import tensorflow as tf

GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale's luma weights
CROP_AREA = (0.08, 1.0)
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
CROP_ATTEMPTS = 10
CENTER_CROP_PROPORTION = 0.875  # SimCLR evaluation: central 87.5% (224 of 256)

# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG/PNG/GIF/BMP bytes → float32 [H, W, 3] in [0, 1].

    Grayscale is tiled to RGB, alpha dropped, and 16-bit PNGs are scaled by 1/65535 (decoding
    straight to float32 keeps their full range instead of truncating to 8 bits).
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.float32, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """An already decoded [H, W, C] image (C in 1..4, integer or float) → float32 RGB in [0, 1]."""
    channels = image.shape[-1]
    if image.shape.rank != 3 or channels not in (1, 2, 3, 4):
        raise ValueError(f"expected an image of shape [H, W, 1|2|3|4], got {image.shape}")
    image = tf.image.convert_image_dtype(image, tf.float32)
    if channels <= 2:  # gray (+ alpha)
        return tf.tile(image[..., :1], [1, 1, 3])
    return image[..., :3]


# --- crop windows: (offset_y, offset_x, height, width) as int32 scalars ---------------------------

def resized_crop_window(height, width, seed):
    """SimCLR's random resized crop: area U(0.08, 1), aspect log-U(3/4, 4/3).

    Ten candidates are drawn at once and the first that fits is used; if none fits, the
    largest central crop with an aspect ratio in range (torchvision's fallback).
    """
    u = tf.random.stateless_uniform([2 * CROP_ATTEMPTS + 2], seed)
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h_f * w_f * (CROP_AREA[0] + (CROP_AREA[1] - CROP_AREA[0]) * u[:CROP_ATTEMPTS])
    ratio = tf.exp(CROP_LOG_RATIO[0] + (CROP_LOG_RATIO[1] - CROP_LOG_RATIO[0]) * u[CROP_ATTEMPTS:2 * CROP_ATTEMPTS])
    cand_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    cand_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (cand_w >= 1) & (cand_w <= width) & (cand_h >= 1) & (cand_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    min_ratio, max_ratio = math.exp(CROP_LOG_RATIO[0]), math.exp(CROP_LOG_RATIO[1])
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio > max_ratio, tf.cast(tf.round(h_f * max_ratio), tf.int32), width)
    fb_h = tf.where(in_ratio < min_ratio, tf.cast(tf.round(w_f / min_ratio), tf.int32), height)
    found = tf.reduce_any(fits)
    h = tf.maximum(tf.where(found, cand_h[first], fb_h), 1)
    w = tf.maximum(tf.where(found, cand_w[first], fb_w), 1)
    y = tf.where(found, _random_offset(height - h, u[-2]), (height - h) // 2)
    x = tf.where(found, _random_offset(width - w, u[-1]), (width - w) // 2)
    return y, x, h, w


def center_crop_window(height, width, proportion=CENTER_CROP_PROPORTION):
    """The central square covering `proportion` of the shorter side (SimCLR's evaluation crop)."""
    side = tf.maximum(tf.cast(tf.round(proportion * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32), 1)
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def random_crop_window(height, width, seed, proportion=CENTER_CROP_PROPORTION):
    """A square of `proportion` of the shorter side at a random place: "resize to 256, crop 224"."""
    side = tf.maximum(tf.cast(tf.round(proportion * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32), 1)
    u = tf.random.stateless_uniform([2], seed)
    return _random_offset(height - side, u[0]), _random_offset(width - side, u[1]), side, side


def _lerp(low, high, u):
    return low + (high - low) * u


def _random_offset(slack, u):
    """Uniform integer in [0, slack] from u ~ U(0, 1)."""
    return tf.minimum(tf.cast(u * tf.cast(slack + 1, tf.float32), tf.int32), slack)


def crop_and_resize(image: tf.Tensor, image_size: int, window_fn: Callable) -> tf.Tensor:
    """Crop the window chosen by `window_fn(height, width)` and resize it to a square.

    `image` is encoded bytes (a tf.string scalar) or a decoded [H, W, C] tensor. A JPEG decodes
    only the window (decode_and_crop_jpeg), which is most of the speed of the input pipeline.
    """
    if image.dtype == tf.string:
        def from_jpeg():
            shape = tf.image.extract_jpeg_shape(image)
            window = tf.stack(window_fn(shape[0], shape[1]))
            return tf.cast(tf.image.decode_and_crop_jpeg(image, window, channels=3), tf.float32) / 255.0

        def from_other():
            return _crop(decode_image(image), window_fn)

        crop = tf.cond(tf.io.is_jpeg(image), from_jpeg, from_other)
    else:
        crop = _crop(to_float_rgb(image), window_fn)
    resized = tf.image.resize(crop[None], [image_size, image_size], method="bicubic", antialias=False)
    return tf.ensure_shape(resized[0], [image_size, image_size, 3])


def _crop(image, window_fn):
    shape = tf.shape(image)
    y, x, h, w = window_fn(shape[0], shape[1])
    return image[y:y + h, x:x + w]


# --- photometric transforms on one float32 [H, W, 3] image ------------------------------------------

def _apply_color_matrix(image, matrix, offset=None):
    """out[..., i] = Σ_j matrix[i, j] · image[..., j] (+ offset[i]) as one small matmul."""
    flat = tf.matmul(tf.reshape(image, [-1, 3]), matrix, transpose_b=True)
    if offset is not None:
        flat = flat + offset
    return tf.reshape(flat, tf.shape(image))


def _gray_matrix():
    return tf.tile(tf.constant([GRAY_WEIGHTS]), [3, 1])


def _hue_matrix(delta):
    """RGB→RGB matrix rotating the YIQ chroma plane by delta turns (a linear HSV hue shift)."""
    yiq = tf.constant(_RGB_TO_YIQ)
    c, s = tf.cos(2.0 * math.pi * delta), tf.sin(2.0 * math.pi * delta)
    one, zero = tf.ones_like(c), tf.zeros_like(c)
    rotation = tf.reshape(tf.stack([one, zero, zero, zero, c, -s, zero, s, c]), [3, 3])
    return tf.linalg.inv(yiq) @ rotation @ yiq


def color_jitter(image, strength, seed):
    """SimCLR colour jitter: brightness, contrast, saturation (0.8·s) and hue (0.2·s) in random order.

    Brightness multiplies, contrast scales about the per-channel mean (as tf.image), saturation
    blends with the grayscale image (as torchvision) and hue rotates the chroma plane; each is a
    3×3 colour matrix, and the result is clipped to [0, 1] after every step as in SimCLR.
    """
    u = tf.random.stateless_uniform([8], seed)
    b = c = s = 0.8 * strength
    brightness = _lerp(max(1.0 - b, 0.0), 1.0 + b, u[0])
    contrast = _lerp(1.0 - c, 1.0 + c, u[1])
    saturation = _lerp(1.0 - s, 1.0 + s, u[2])
    hue = 0.2 * strength * (2.0 * u[3] - 1.0)
    eye = tf.eye(3)
    matrices = tf.stack([
        brightness * eye,
        contrast * eye,
        saturation * eye + (1.0 - saturation) * _gray_matrix(),
        _hue_matrix(hue),
    ])
    order = tf.argsort(u[4:])
    for step in range(4):
        op = order[step]
        # Only contrast has an offset: (1 - f) · mean, which needs the current image.
        offset = tf.where(op == 1, 1.0 - contrast, 0.0) * tf.reduce_mean(image, axis=[0, 1])
        image = tf.clip_by_value(_apply_color_matrix(image, matrices[op], offset), 0.0, 1.0)
    return image


def to_grayscale(image):
    """Luma, kept as 3 channels so the network input shape is unchanged."""
    return _apply_color_matrix(image, _gray_matrix())


def gaussian_blur(image, sigma, kernel_size):
    """Separable Gaussian blur with σ per call and reflected borders.

    Each 1-D pass is one [S, S] banded matrix times the image: on a CPU one matmul beats
    depthwise_conv2d on a 3-channel image by ~4×. `kernel_size` follows SimCLR (10% of the
    image side, made odd).
    """
    radius = kernel_size // 2
    size = image.shape[0]
    if radius < 1:
        return image
    if image.shape[1] != size or size is None:
        raise ValueError(f"gaussian_blur expects a square image of static size, got {image.shape}")
    # Row i of the reflected-border operator: weights on source pixels, with taps that fall
    # outside [0, size) folded back inside (reflect without repeating the edge pixel).
    pos = tf.range(size, dtype=tf.float32)
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-tf.square(taps) / (2.0 * tf.square(sigma)))
    weights = weights / tf.reduce_sum(weights)
    src = pos[:, None] + taps[None, :]  # [size, taps]
    src = tf.abs(src)
    src = tf.where(src > size - 1, 2.0 * (size - 1) - src, src)
    operator = tf.reduce_sum(
        tf.one_hot(tf.cast(src, tf.int32), size) * weights[None, :, None], axis=1)  # [size, size]
    vertical = tf.reshape(operator @ tf.reshape(image, [size, -1]), [size, size, 3])
    transposed = tf.transpose(vertical, [1, 0, 2])
    both = tf.reshape(operator @ tf.reshape(transposed, [size, -1]), [size, size, 3])
    return tf.transpose(both, [1, 0, 2])


def rotate(image, angle, fill_value=0.0):
    """Rotate about the image centre by `angle` radians (bilinear; corners filled with fill_value)."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cy, cx = (h - 1.0) / 2.0, (w - 1.0) / 2.0
    c, s = tf.cos(angle), tf.sin(angle)
    # Maps each output pixel to the input pixel it samples.
    transform = tf.stack([c, -s, cx - c * cx + s * cy, s, c, cy - s * cx - c * cy, 0.0, 0.0])
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=shape[:2],
        fill_value=tf.constant(fill_value, tf.float32), interpolation="BILINEAR", fill_mode="CONSTANT")
    return tf.ensure_shape(rotated[0], image.shape)


def random_apply(fn, p, u, image):
    """fn(image) if u < p else image, where u ~ U(0, 1) is the caller's draw."""
    return tf.cond(u < p, lambda: fn(image), lambda: image)


# --- presets -------------------------------------------------------------------------------------

def simclr(image, image_size, seed, color_jitter_strength=1.0):
    """SimCLR (Derm): resized crop, flip, jitter p=0.8, grayscale p=0.2, blur p=0.5 (σ∈[0.1, 2])."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    u = tf.random.stateless_uniform([4], seeds[0])
    x = crop_and_resize(image, image_size, lambda h, w: resized_crop_window(h, w, seeds[1]))
    x = _flip(x, u[0])
    x = random_apply(lambda v: color_jitter(v, color_jitter_strength, seeds[2]), 0.8, u[1], x)
    x = random_apply(to_grayscale, 0.2, u[2], x)
    sigma = tf.random.stateless_uniform([], seeds[3], 0.1, 2.0)
    x = random_apply(lambda v: gaussian_blur(v, sigma, image_size // 10), 0.5, u[3], x)
    return tf.clip_by_value(x, 0.0, 1.0)


def chexpert_pretrain(image, image_size, seed, color_jitter_strength=1.0):
    """CheXpert pretraining: resized crop, jitter s=0.5 (p=0.8), rotation U(−45°, 45°), flip; no blur.

    `color_jitter_strength` scales the preset's own strength of 0.5.
    """
    seeds = tf.random.experimental.stateless_split(seed, 3)
    u = tf.random.stateless_uniform([3], seeds[0])
    x = crop_and_resize(image, image_size, lambda h, w: resized_crop_window(h, w, seeds[1]))
    x = random_apply(lambda v: color_jitter(v, 0.5 * color_jitter_strength, seeds[2]), 0.8, u[0], x)
    x = rotate(x, math.radians(45.0) * (2.0 * u[1] - 1.0))
    x = _flip(x, u[2])
    return tf.clip_by_value(x, 0.0, 1.0)


def chexpert_finetune(image, image_size, seed, color_jitter_strength=1.0):
    """CheXpert fine-tuning: rotation U(−20°, 20°), crop, flip p=0.5, brightness +U(−0.2, 0.2),
    contrast ×U(0.8, 1.2), clip to [0, 1]. The whole image is rotated before cropping, so this
    preset decodes the full image. `color_jitter_strength` is unused (no jitter here).
    """
    del color_jitter_strength
    seeds = tf.random.experimental.stateless_split(seed, 2)
    u = tf.random.stateless_uniform([4], seeds[0])
    full = decode_image(image) if image.dtype == tf.string else to_float_rgb(image)
    x = rotate(full, math.radians(20.0) * (2.0 * u[0] - 1.0))
    x = crop_and_resize(x, image_size, lambda h, w: random_crop_window(h, w, seeds[1]))
    x = _flip(tf.clip_by_value(x, 0.0, 1.0), u[1])
    x = x + 0.2 * (2.0 * u[2] - 1.0)
    mean = tf.reduce_mean(x, axis=[0, 1])
    x = (x - mean) * (0.8 + 0.4 * u[3]) + mean
    return tf.clip_by_value(x, 0.0, 1.0)


def crop_only(image, image_size, seed, color_jitter_strength=1.0):
    """MICLe's partial augmentation: random resized crop and flip only."""
    del color_jitter_strength
    seeds = tf.random.experimental.stateless_split(seed, 2)
    u = tf.random.stateless_uniform([], seeds[0])
    x = crop_and_resize(image, image_size, lambda h, w: resized_crop_window(h, w, seeds[1]))
    return tf.clip_by_value(_flip(x, u), 0.0, 1.0)


def none(image, image_size, seed=None, color_jitter_strength=1.0):
    """Evaluation: central 87.5% crop resized to the output size; deterministic."""
    del seed, color_jitter_strength
    return tf.clip_by_value(crop_and_resize(image, image_size, center_crop_window), 0.0, 1.0)


def _flip(image, u):
    return tf.cond(u < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)


PRESETS = {
    "simclr": simclr,
    "chexpert_pretrain": chexpert_pretrain,
    "chexpert_finetune": chexpert_finetune,
    "crop_only": crop_only,
    "none": none,
}


def get_preset(name: str) -> Callable:
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def augment(image, preset: str, image_size: int, seed, color_jitter_strength: float = 1.0) -> tf.Tensor:
    """One augmented view: float32 [image_size, image_size, 3] in [0, 1].

    `image` is encoded bytes or a decoded [H, W, C] tensor; `seed` is a stateless seed (shape [2]).
    """
    seed = tf.convert_to_tensor(seed)
    return get_preset(preset)(image, image_size, seed, color_jitter_strength)
