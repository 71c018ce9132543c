"""Image decoding and the augmentation presets of SimCLR, MICLe and the CheXpert experiments.

Every random choice is a stateless draw from an explicit seed, so a view is a pure function of
(image, seed): reproducible, and independent of the order in which tf.data's parallel map
finishes. Each view gets its own draws (Keras 3's RandomCrop/RandomGaussianBlur share one draw
per batch, which would make all views of a batch alike).

The input pipeline runs on the host CPU, where a TF op costs microseconds of overhead, so an
augmentation runs in two stages:
  * geometry, in graph mode because crop sizes vary: decode (only the crop window when a JPEG
    gives a single view), crop and bilinear resize to the output size;
  * photometric (flip, colour, blur, rotation), one XLA-compiled call for all views of an
    image, which fuses the per-pixel work into a few loops.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import tensorflow as tf

CROP_AREA = (0.08, 1.0)
CROP_MAX_RATIO = 4 / 3  # aspect ratios log-uniform in [3/4, 4/3]
CROP_ATTEMPTS = 10
CROP_DRAWS = 2 * CROP_ATTEMPTS + 2
COLOR_JITTER_DRAWS = 8  # 4 strengths + 4 keys whose argsort is the order
CENTER_CROP_PROPORTION = 0.875  # SimCLR evaluation: the central 87.5% (224 of 256)
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale's


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


# --- crop windows: (offset_y, offset_x, height, width), each int32 [views] ----------------------

def resized_crop_windows(height, width, u):
    """SimCLR's random resized crop: area U(0.08, 1) of the image, aspect log-U(3/4, 4/3).

    `u` holds CROP_DRAWS uniforms per view ([views, CROP_DRAWS]). Ten candidates are drawn at
    once and the first that fits is used; if none fits, the largest central crop with an aspect
    ratio in range (torchvision's fallback).
    """
    hw = tf.cast(tf.stack([height, width]), tf.float32)
    area = hw[0] * hw[1] * _lerp(*CROP_AREA, u[:, :CROP_ATTEMPTS])
    log_ratio = _lerp(-math.log(CROP_MAX_RATIO), math.log(CROP_MAX_RATIO), u[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS])
    # (h, w) = (sqrt(area / ratio), sqrt(area · ratio))
    size = tf.maximum(tf.round(tf.sqrt(area[..., None] * tf.exp(tf.stack([-log_ratio, log_ratio], -1)))), 1.0)
    fits = tf.reduce_all(size <= hw, axis=-1)  # [views, attempts]
    chosen = tf.gather(size, tf.argmax(tf.cast(fits, tf.int32), axis=1), batch_dims=1)
    found = tf.reduce_any(fits, axis=1, keepdims=True)
    size = tf.where(found, chosen, tf.minimum(hw, tf.round(hw[::-1] * CROP_MAX_RATIO)))
    slack = hw - size
    offset = tf.where(found, tf.minimum(tf.floor(u[:, -2:] * (slack + 1.0)), slack), tf.floor(slack / 2.0))
    offset, size = tf.cast(offset, tf.int32), tf.cast(size, tf.int32)
    return offset[:, 0], offset[:, 1], size[:, 0], size[:, 1]


def random_crop_windows(height, width, u, proportion=CENTER_CROP_PROPORTION):
    """A square of `proportion` of the shorter side at a random place ("resize 256, crop 224")."""
    side = tf.fill(tf.shape(u)[:1], _square_side(height, width, proportion))
    slack = tf.cast(tf.stack([height - side, width - side], axis=1), tf.float32)
    offset = tf.cast(tf.minimum(tf.floor(u[:, :2] * (slack + 1.0)), slack), tf.int32)
    return offset[:, 0], offset[:, 1], side, side


def center_crop_windows(height, width, num_views, proportion=CENTER_CROP_PROPORTION):
    """The central square covering `proportion` of the shorter side (SimCLR's evaluation crop)."""
    side = tf.fill([num_views], _square_side(height, width, proportion))
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def _square_side(height, width, proportion):
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    return tf.maximum(tf.cast(tf.round(proportion * shorter), tf.int32), 1)


def _lerp(low, high, u):
    return low + (high - low) * u


# --- geometry: decode, crop, resize --------------------------------------------------------------

def crop_and_resize(image, image_size: int, window_fn: Callable, num_views: int) -> tf.Tensor:
    """Cut the windows chosen by `window_fn(height, width)` and resize each to a square.

    `image` is encoded bytes (a tf.string scalar) or a decoded [H, W, C] tensor. Returns float32
    [num_views, image_size, image_size, 3] in [0, 1] (bilinear). A single view of a JPEG decodes
    only its window (decode_and_crop_jpeg); several views of one image share one full decode,
    which is cheaper than decoding every window.
    """
    if image.dtype != tf.string:
        return _crops(to_float_rgb(image), window_fn, num_views, image_size)

    def from_jpeg():
        if num_views > 1:
            decoded = tf.image.convert_image_dtype(tf.io.decode_jpeg(image, channels=3), tf.float32)
            return _crops(decoded, window_fn, num_views, image_size)
        shape = tf.image.extract_jpeg_shape(image)
        window = tf.concat(window_fn(shape[0], shape[1]), 0)
        crop = tf.image.decode_and_crop_jpeg(image, window, channels=3)
        return tf.image.resize(tf.image.convert_image_dtype(crop, tf.float32)[None], [image_size, image_size])

    def from_other():
        return _crops(decode_image(image), window_fn, num_views, image_size)

    views = tf.cond(tf.io.is_jpeg(image), from_jpeg, from_other)
    return tf.ensure_shape(views, [num_views, image_size, image_size, 3])


def _crops(image, window_fn, num_views, size):
    shape = tf.shape(image)
    y, x, h, w = window_fn(shape[0], shape[1])
    begin = tf.stack([y, x, tf.zeros_like(y)], axis=1)
    extent = tf.stack([h, w, tf.fill(tf.shape(h), 3)], axis=1)
    return tf.stack([tf.image.resize(tf.slice(image, begin[v], extent[v])[None], [size, size])[0]
                     for v in range(num_views)])


# --- photometric transforms of a stack of views [V, S, S, 3], per-view parameters [V] -------------
# Written as broadcast per-pixel arithmetic with per-view parameters instead of conditionals and
# MatMul/conv kernels: under XLA each becomes one or two fused loops whose size and compile time
# do not depend on the number of views.

def _color_map(images, matrix):
    """out[v, ..., i] = Σ_j matrix[v, i, j] · images[v, ..., j] for matrix [V, 3, 3]."""
    m = matrix[:, None, None]  # [V, 1, 1, 3, 3]
    return images[..., 0:1] * m[..., 0] + images[..., 1:2] * m[..., 1] + images[..., 2:3] * m[..., 2]


def _yiq_hue_basis():
    """Constant matrices A, B, C with hue_matrix(θ) = A + cos θ·B + sin θ·C.

    Rotating the (I, Q) chroma plane of YIQ by θ is the linear counterpart of an HSV hue shift.
    """
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    inv = np.linalg.inv(yiq)
    parts = (np.diag([1.0, 0.0, 0.0]), np.diag([0.0, 1.0, 1.0]), np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0.0]]))
    return [(inv @ p @ yiq).astype(np.float32) for p in parts]


_HUE_A, _HUE_B, _HUE_C = _yiq_hue_basis()
_GRAY_MATRIX = np.tile(GRAY_WEIGHTS[None], [3, 1])
_EYE = np.eye(3, dtype=np.float32)


def color_jitter(images, brightness, contrast, saturation, hue, order):
    """Brightness, contrast, saturation and hue changes applied in a per-view order.

    brightness/contrast/saturation are factors ([V]; 1 = unchanged), hue a shift in turns ([V]),
    `order` a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue) per view ([V, 4]).
    Brightness multiplies (SimCLR v2), contrast scales about the per-channel mean
    (tf.image.adjust_contrast), saturation blends with the grayscale image (torchvision) and hue
    rotates the YIQ chroma plane. As in SimCLR the result is clipped to [0, 1] after every step,
    which is what makes the order matter.
    """
    factor = lambda f: f[:, None, None] * _EYE  # noqa: E731
    theta = (2.0 * math.pi * hue)[:, None, None]
    matrices = tf.stack([  # [V, 4, 3, 3]: each change as a colour matrix
        factor(brightness),
        factor(contrast),
        factor(saturation) + (1.0 - saturation)[:, None, None] * _GRAY_MATRIX,
        _HUE_A + tf.cos(theta) * _HUE_B + tf.sin(theta) * _HUE_C,
    ], axis=1)
    for step in range(4):
        op = order[:, step]
        # Contrast also adds (1 − f) · mean of the image as it is at this step.
        offset = tf.where(op == 1, 1.0 - contrast, 0.0)[:, None] * tf.reduce_mean(images, axis=[1, 2])
        shifted = _color_map(images, tf.gather(matrices, op, batch_dims=1)) + offset[:, None, None, :]
        images = tf.clip_by_value(shifted, 0.0, 1.0)
    return images


def sample_color_jitter(u, strength, apply):
    """SimCLR's jitter parameters from 8 uniforms per view ([V, 8]); identity where not `apply`.

    brightness U(max(0, 1 − 0.8s), 1 + 0.8s), contrast and saturation U(1 − 0.8s, 1 + 0.8s), hue
    U(−0.2s, 0.2s), order uniform over the 24 permutations.
    """
    b = c = s = 0.8 * strength
    low = np.array([max(1.0 - b, 0.0), 1.0 - c, 1.0 - s, -0.2 * strength], np.float32)
    high = np.array([1.0 + b, 1.0 + c, 1.0 + s, 0.2 * strength], np.float32)
    params = tf.where(apply[:, None], _lerp(low, high, u[:, :4]), [1.0, 1.0, 1.0, 0.0])
    return dict(zip(("brightness", "contrast", "saturation", "hue"), tf.unstack(params, axis=1)),
                order=tf.argsort(u[:, 4:8], axis=1))


def grayscale(images, apply):
    """Luma (as 3 channels, so the input shape is unchanged) where `apply` ([V] bool)."""
    return _color_map(images, tf.where(apply[:, None, None], _GRAY_MATRIX, _EYE))


def gaussian_blur(images, sigma, kernel_size):
    """Separable Gaussian blur with per-view σ ([V]; 0 = no blur) and reflected borders.

    The radius is kernel_size // 2, kernel_size being 10% of the side as in SimCLR (64 px → 7
    taps). Each pass is a sum of shifted copies, which XLA fuses into one loop.
    """
    radius = kernel_size // 2
    height, width = images.shape[1], images.shape[2]
    if radius < 1:
        return images
    if radius >= min(height, width):
        raise ValueError(f"gaussian_blur: kernel radius {radius} too large for images of shape {images.shape}")
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    weights = tf.exp((-0.5 * taps ** 2) / tf.maximum(tf.square(sigma), 1e-12)[:, None])  # σ = 0 → [0 .. 1 .. 0]
    weights = (weights / tf.reduce_sum(weights, axis=1, keepdims=True))[:, :, None, None, None]
    padded = tf.pad(images, [[0, 0], [radius, radius], [0, 0], [0, 0]], mode="REFLECT")
    images = tf.add_n([weights[:, t] * padded[:, t:t + height] for t in range(taps.size)])
    padded = tf.pad(images, [[0, 0], [0, 0], [radius, radius], [0, 0]], mode="REFLECT")
    return tf.add_n([weights[:, t] * padded[:, :, t:t + width] for t in range(taps.size)])


def rotate(images, angle):
    """Rotate each view about its centre by `angle` radians ([V]); bilinear, zero outside.

    Gather-based so that it compiles with XLA (ImageProjectiveTransformV3 does not).
    """
    height, width = images.shape[1], images.shape[2]
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float32) - cy, np.arange(width, dtype=np.float32) - cx,
                         indexing="ij")
    cos, sin = tf.cos(angle)[:, None, None], tf.sin(angle)[:, None, None]
    src_y = cos * yy - sin * xx + cy  # [V, H, W]: the input pixel each output pixel samples
    src_x = sin * yy + cos * xx + cx
    y0, x0 = tf.floor(src_y), tf.floor(src_x)
    flat = tf.reshape(images, [-1, height * width, 3])
    out = 0.0
    for dy, wy in ((0.0, 1.0 - (src_y - y0)), (1.0, src_y - y0)):
        for dx, wx in ((0.0, 1.0 - (src_x - x0)), (1.0, src_x - x0)):
            py, px = y0 + dy, x0 + dx
            inside = (py >= 0) & (py <= height - 1) & (px >= 0) & (px <= width - 1)
            index = tf.clip_by_value(py, 0, height - 1) * width + tf.clip_by_value(px, 0, width - 1)
            out += tf.where(inside, wy * wx, 0.0)[..., None] * tf.gather(flat, tf.cast(index, tf.int32), batch_dims=1)
    return out


def flip_left_right(images, apply):
    """Mirror the views where `apply` ([V] bool)."""
    return tf.where(apply[:, None, None, None], tf.reverse(images, axis=[2]), images)


def adjust_contrast(images, factor):
    """Scale each view about its per-channel mean by `factor` ([V])."""
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return (images - mean) * factor[:, None, None, None] + mean


# --- presets: the photometric part of each (u: [V, num_draws] uniforms) -------------------------

def _simclr(x, u, strength):
    """SimCLR (Derm): flip, jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5 with σ ~ U(0.1, 2).

    Every step keeps values in [0, 1] (jitter clips; gray and blur are convex combinations).
    """
    x = flip_left_right(x, u[:, 0] < 0.5)
    x = color_jitter(x, **sample_color_jitter(u[:, 5:], strength, u[:, 1] < 0.8))
    x = grayscale(x, u[:, 2] < 0.2)
    sigma = tf.where(u[:, 3] < 0.5, _lerp(0.1, 2.0, u[:, 4]), 0.0)
    return tf.cond(tf.reduce_any(sigma > 0.0),
                   lambda: gaussian_blur(x, sigma, x.shape[1] // 10), lambda: x)


def _chexpert_pretrain(x, u, strength):
    """CheXpert pretraining: jitter with s = 0.5·strength (p=0.8), rotation U(−45°, 45°), flip; no blur."""
    x = color_jitter(x, **sample_color_jitter(u[:, 3:], 0.5 * strength, u[:, 0] < 0.8))
    x = rotate(x, math.radians(45.0) * (2.0 * u[:, 1] - 1.0))
    return flip_left_right(x, u[:, 2] < 0.5)


def _chexpert_finetune(x, u, strength):
    """CheXpert fine-tuning: rotation U(−20°, 20°), flip p=0.5, brightness +U(−0.2, 0.2), contrast
    ×U(0.8, 1.2), clip to [0, 1].

    The rotation turns the cropped view about its centre (rather than the image before cropping)
    so that JPEGs still decode only the crop window.
    """
    del strength
    x = flip_left_right(rotate(x, math.radians(20.0) * (2.0 * u[:, 0] - 1.0)), u[:, 1] < 0.5)
    x = adjust_contrast(x + _lerp(-0.2, 0.2, u[:, 2])[:, None, None, None], _lerp(0.8, 1.2, u[:, 3]))
    return tf.clip_by_value(x, 0.0, 1.0)


def _crop_only(x, u, strength):
    del strength
    return flip_left_right(x, u[:, 0] < 0.5)


@dataclasses.dataclass(frozen=True)
class Preset:
    """One recipe: how views are cut out (`window`) and what happens to them afterwards.

    `photometric(views, u, color_jitter_strength)` gets `num_draws` uniforms per view
    (u: [V, num_draws]); None means the resized crops are the result.
    """
    window: str  # resized | random | center
    num_draws: int
    photometric: Callable | None


PRESETS = {
    "simclr": Preset("resized", 5 + COLOR_JITTER_DRAWS, _simclr),
    "chexpert_pretrain": Preset("resized", 3 + COLOR_JITTER_DRAWS, _chexpert_pretrain),
    # Crop: 87.5% of the shorter side at a random place.
    "chexpert_finetune": Preset("random", 4, _chexpert_finetune),
    # MICLe's "partial augmentation": random resized crop (and flip) only.
    "crop_only": Preset("resized", 1, _crop_only),
    # Evaluation: central 87.5% crop, resized; deterministic.
    "none": Preset("center", 0, None),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


@tf.function(jit_compile=True)
def _photometric(views, u, photometric, strength):
    """All views of one image in a single XLA call (one launch instead of hundreds of small ops)."""
    return photometric(views, u, strength)


def augment_views(image, preset: str, image_size: int, seed, num_views: int = 1,
                  color_jitter_strength: float = 1.0) -> tf.Tensor:
    """`num_views` independent augmentations of one image: float32 [num_views, S, S, 3] in [0, 1].

    `image` is encoded bytes or a decoded [H, W, C] tensor; `seed` a stateless seed (shape [2]).
    For chexpert_pretrain, `color_jitter_strength` scales the preset's own strength of 0.5.
    """
    recipe = get_preset(preset)
    u = tf.random.stateless_uniform([num_views, CROP_DRAWS + recipe.num_draws], seed)
    if recipe.window == "resized":
        window_fn = lambda h, w: resized_crop_windows(h, w, u[:, :CROP_DRAWS])  # noqa: E731
    elif recipe.window == "random":
        window_fn = lambda h, w: random_crop_windows(h, w, u[:, :CROP_DRAWS])  # noqa: E731
    else:
        window_fn = lambda h, w: center_crop_windows(h, w, num_views)  # noqa: E731
    views = crop_and_resize(image, image_size, window_fn, num_views)
    if recipe.photometric is None:
        return views
    return _photometric(views, u[:, CROP_DRAWS:], recipe.photometric, float(color_jitter_strength))


def augment(image, preset: str, image_size: int, seed, color_jitter_strength: float = 1.0) -> tf.Tensor:
    """One augmented view of `image`: float32 [image_size, image_size, 3] in [0, 1]."""
    return augment_views(image, preset, image_size, seed, 1, color_jitter_strength)[0]
