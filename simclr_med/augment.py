"""Image decoding and the augmentation presets of SimCLR, MICLe and the CheXpert experiments.

Every random choice is a stateless draw from an explicit seed, so a view is a pure function of
(image, seed): reproducible, and independent of the order in which tf.data's parallel map
finishes. Each view gets its own draws (Keras 3's RandomCrop/RandomGaussianBlur share one draw
per batch, which would make all views of a batch alike).

The input pipeline runs on the host CPU, where TF ops cost microseconds each, so the code keeps
the op count low: one uniform draw per view feeds every random choice, crop + resize + flip of
all views of an image is a single `crop_and_resize`, and the colour transforms are cheap 3×3
colour matrices or fused kernels instead of HSV round trips.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import tensorflow as tf

CROP_AREA = (0.08, 1.0)
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
CROP_ATTEMPTS = 10
CROP_DRAWS = 2 * CROP_ATTEMPTS + 2
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

    `u` holds CROP_DRAWS uniforms per view ([views, CROP_DRAWS]). Ten candidates are tried at
    once and the first that fits is used; if none fits, the largest central crop with an
    aspect ratio in range (torchvision's fallback).
    """
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h_f * w_f * _lerp(*CROP_AREA, u[:, :CROP_ATTEMPTS])
    ratio = tf.exp(_lerp(*CROP_LOG_RATIO, u[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS]))
    cand_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    cand_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (cand_w >= 1) & (cand_w <= width) & (cand_h >= 1) & (cand_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(fits, axis=1)

    min_ratio, max_ratio = math.exp(CROP_LOG_RATIO[0]), math.exp(CROP_LOG_RATIO[1])
    fallback_w = tf.where(w_f / h_f > max_ratio, tf.cast(tf.round(h_f * max_ratio), tf.int32), width)
    fallback_h = tf.where(w_f / h_f < min_ratio, tf.cast(tf.round(w_f / min_ratio), tf.int32), height)
    h = tf.where(found, tf.gather(cand_h, first, batch_dims=1), tf.maximum(fallback_h, 1))
    w = tf.where(found, tf.gather(cand_w, first, batch_dims=1), tf.maximum(fallback_w, 1))
    y = tf.where(found, _random_offset(height - h, u[:, -2]), (height - h) // 2)
    x = tf.where(found, _random_offset(width - w, u[:, -1]), (width - w) // 2)
    return y, x, h, w


def random_crop_windows(height, width, u, proportion=CENTER_CROP_PROPORTION):
    """A square of `proportion` of the shorter side at a random place ("resize 256, crop 224")."""
    side = tf.fill(tf.shape(u)[:1], _square_side(height, width, proportion))
    return _random_offset(height - side, u[:, 0]), _random_offset(width - side, u[:, 1]), side, side


def center_crop_windows(height, width, num_views, proportion=CENTER_CROP_PROPORTION):
    """The central square covering `proportion` of the shorter side (SimCLR's evaluation crop)."""
    side = tf.fill([num_views], _square_side(height, width, proportion))
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def _square_side(height, width, proportion):
    shorter = tf.cast(tf.minimum(height, width), tf.float32)
    return tf.maximum(tf.cast(tf.round(proportion * shorter), tf.int32), 1)


def _lerp(low, high, u):
    return low + (high - low) * u


def _random_offset(slack, u):
    """Uniform integer in [0, slack] from u ~ U(0, 1)."""
    return tf.minimum(tf.cast(u * tf.cast(slack + 1, tf.float32), tf.int32), slack)


# --- decode + crop + resize + flip ----------------------------------------------------------------

def crop_resize_flip(image, image_size: int, window_fn: Callable, flips: tf.Tensor) -> tf.Tensor:
    """Crop the windows chosen by `window_fn(height, width)`, resize each to a square, flip some.

    `image` is encoded bytes (a tf.string scalar) or a decoded [H, W, C] tensor; `flips` is bool
    [views]. Returns float32 [views, image_size, image_size, 3] in [0, 1]. All views come from
    one decode and one `crop_and_resize` (bilinear). A single view of a JPEG decodes only its
    window (decode_and_crop_jpeg); several views of one image share a full decode, which is
    cheaper than decoding each window.
    """
    num_views = flips.shape[0]
    if image.dtype != tf.string:
        return _crop_and_resize(to_float_rgb(image), window_fn, flips, image_size)

    def from_jpeg():
        if num_views == 1:
            shape = tf.image.extract_jpeg_shape(image)
            y, x, h, w = window_fn(shape[0], shape[1])
            crop = tf.image.decode_and_crop_jpeg(image, tf.concat([y, x, h, w], 0), channels=3)
            crops = _crop_and_resize(crop, lambda hh, ww: (0 * y, 0 * x, h, w), flips, image_size)
        else:
            crops = _crop_and_resize(tf.io.decode_jpeg(image, channels=3), window_fn, flips, image_size)
        return crops * (1.0 / 255.0)

    def from_other():
        return _crop_and_resize(decode_image(image), window_fn, flips, image_size)

    crops = tf.cond(tf.io.is_jpeg(image), from_jpeg, from_other)
    return tf.ensure_shape(crops, [num_views, image_size, image_size, 3])


def _crop_and_resize(image, window_fn, flips, size):
    """Bilinear crop+resize of each window with pixel-centre alignment (as tf.image.resize).

    crop_and_resize samples output pixel j at box_start + j·(box_end − box_start)/(size − 1)
    in [0, dim − 1] units, so the box is set to the centres of the first and last output
    pixels; swapping its x ends flips the view.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    y, x, h, w = window_fn(height, width)

    def ends(start, extent, dim):
        start, extent, last = tf.cast(start, tf.float32), tf.cast(extent, tf.float32), tf.cast(dim - 1, tf.float32)
        step = extent / size
        lo = tf.clip_by_value(start + 0.5 * step - 0.5, 0.0, last)
        hi = tf.clip_by_value(start + (size - 0.5) * step - 0.5, 0.0, last)
        scale = 1.0 / tf.maximum(last, 1.0)
        return lo * scale, hi * scale

    y1, y2 = ends(y, h, height)
    x1, x2 = ends(x, w, width)
    x1, x2 = tf.where(flips, x2, x1), tf.where(flips, x1, x2)
    boxes = tf.stack([y1, x1, y2, x2], axis=1)
    return tf.image.crop_and_resize(
        image[None], boxes, tf.zeros_like(y), [size, size], method="bilinear")


# --- photometric transforms of one float32 [S, S, 3] view --------------------------------------

def _apply_color_matrix(image, matrix):
    """out[..., i] = Σ_j matrix[i, j] · image[..., j], as one small matmul."""
    flat = tf.matmul(tf.reshape(image, [-1, 3]), matrix, transpose_b=True)
    return tf.reshape(flat, tf.shape(image))


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
COLOR_JITTER_DRAWS = 8


def color_jitter(image, strength, u):
    """SimCLR colour jitter: brightness, contrast, saturation (0.8·s) and hue (0.2·s), random order.

    `u` is COLOR_JITTER_DRAWS uniforms. Brightness multiplies, contrast scales about the
    per-channel mean (tf.image.adjust_contrast), saturation blends with the grayscale image (as
    torchvision) and hue rotates the YIQ chroma plane. As in SimCLR the image is clipped to
    [0, 1] after every step.
    """
    b = c = s = 0.8 * strength
    brightness = _lerp(max(1.0 - b, 0.0), 1.0 + b, u[0])
    contrast = _lerp(1.0 - c, 1.0 + c, u[1])
    saturation = _lerp(1.0 - s, 1.0 + s, u[2])
    theta = 2.0 * math.pi * _lerp(-0.2 * strength, 0.2 * strength, u[3])
    saturation_matrix = saturation * np.eye(3, dtype=np.float32) + (1.0 - saturation) * _GRAY_MATRIX
    hue_matrix = _HUE_A + tf.cos(theta) * _HUE_B + tf.sin(theta) * _HUE_C
    order = tf.argsort(u[4:8])
    for step in range(4):
        image = tf.switch_case(order[step], [
            lambda x=image: x * brightness,
            lambda x=image: tf.image.adjust_contrast(x, contrast),
            lambda x=image: _apply_color_matrix(x, saturation_matrix),
            lambda x=image: _apply_color_matrix(x, hue_matrix),
        ])
        image = tf.clip_by_value(image, 0.0, 1.0)
    return image


def to_grayscale(image):
    """Luma, kept as 3 channels so the network input shape is unchanged."""
    return _apply_color_matrix(image, _GRAY_MATRIX)


def gaussian_blur(image, sigma, kernel_size):
    """Separable Gaussian blur of a square [S, S, 3] image, reflected borders.

    `kernel_size` follows SimCLR (10% of the side; radius kernel_size // 2). Each 1-D pass is
    one [S, S] banded matrix times the image: on a CPU a matmul beats depthwise_conv2d on a
    3-channel image several times over.
    """
    size, radius = image.shape[0], kernel_size // 2
    if radius < 1:
        return image
    if size is None or image.shape[1] != size or radius >= size:
        raise ValueError(f"gaussian_blur needs a static square image larger than the kernel, got {image.shape}")
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    weights = tf.exp(-(taps ** 2) / (2.0 * tf.square(sigma)))
    weights = weights / tf.reduce_sum(weights)
    # operator[i, j] = Σ weights[t] over taps t whose reflected source pixel reflect(i + t) is j.
    rows = np.repeat(np.arange(size), taps.size)
    cols = np.abs(rows + np.tile(taps.astype(np.int64), size))
    cols = np.where(cols > size - 1, 2 * (size - 1) - cols, cols)
    operator = tf.scatter_nd(np.stack([rows, cols], 1), tf.tile(weights, [size]), [size, size])
    vertical = tf.reshape(operator @ tf.reshape(image, [size, -1]), [size, size, 3])
    both = operator @ tf.reshape(tf.transpose(vertical, [1, 0, 2]), [size, -1])
    return tf.transpose(tf.reshape(both, [size, size, 3]), [1, 0, 2])


def rotate(image, angle, fill_value=0.0):
    """Rotate [H, W, 3] about its centre by `angle` radians (bilinear; corners get fill_value)."""
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


# --- presets ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Preset:
    """One recipe: how views are cut out (`window`, `flip`) and what happens to each afterwards.

    `photometric(view, u, image_size, color_jitter_strength)` gets `num_draws` uniforms `u`.
    """
    window: str  # resized | random | center
    flip: bool
    num_draws: int
    photometric: Callable


def _simclr(x, u, image_size, strength):
    """Jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5 with σ ~ U(0.1, 2)."""
    x = random_apply(lambda v: color_jitter(v, strength, u[3:]), 0.8, u[0], x)
    x = random_apply(to_grayscale, 0.2, u[1], x)
    sigma = _lerp(0.1, 2.0, u[3 + COLOR_JITTER_DRAWS])
    x = random_apply(lambda v: gaussian_blur(v, sigma, image_size // 10), 0.5, u[2], x)
    return tf.clip_by_value(x, 0.0, 1.0)


def _chexpert_pretrain(x, u, image_size, strength):
    """Jitter with s = 0.5·strength (p=0.8), then rotation U(−45°, 45°); no blur."""
    x = random_apply(lambda v: color_jitter(v, 0.5 * strength, u[2:]), 0.8, u[0], x)
    return tf.clip_by_value(rotate(x, math.radians(45.0) * (2.0 * u[1] - 1.0)), 0.0, 1.0)


def _chexpert_finetune(x, u, image_size, strength):
    """Rotation U(−20°, 20°), brightness +U(−0.2, 0.2), contrast ×U(0.8, 1.2), clip.

    The rotation turns the cropped view about its centre (rather than the image before
    cropping) so that JPEGs still decode only the crop window.
    """
    x = tf.clip_by_value(rotate(x, math.radians(20.0) * (2.0 * u[0] - 1.0)), 0.0, 1.0)
    x = tf.image.adjust_contrast(x + _lerp(-0.2, 0.2, u[1]), _lerp(0.8, 1.2, u[2]))
    return tf.clip_by_value(x, 0.0, 1.0)


def _clip_only(x, u, image_size, strength):
    return tf.clip_by_value(x, 0.0, 1.0)


PRESETS = {
    # SimCLR (Derm): random resized crop, flip, jitter, grayscale, blur.
    "simclr": Preset("resized", True, 3 + COLOR_JITTER_DRAWS + 1, _simclr),
    # CheXpert pretraining: crop, jitter s=0.5, rotation up to 45°, flip; no blur.
    "chexpert_pretrain": Preset("resized", True, 2 + COLOR_JITTER_DRAWS, _chexpert_pretrain),
    # CheXpert fine-tuning: crop (87.5% of the shorter side), flip p=0.5, rotation, brightness, contrast.
    "chexpert_finetune": Preset("random", True, 3, _chexpert_finetune),
    # MICLe "partial augmentation": random resized crop (and flip) only.
    "crop_only": Preset("resized", True, 0, _clip_only),
    # Evaluation: central 87.5% crop, resized; deterministic.
    "none": Preset("center", False, 0, _clip_only),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown augmentation {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def augment_views(image, preset: str, image_size: int, seed, num_views: int = 1,
                  color_jitter_strength: float = 1.0) -> tf.Tensor:
    """`num_views` independent augmentations of one image: float32 [num_views, S, S, 3] in [0, 1].

    `image` is encoded bytes or a decoded [H, W, C] tensor; `seed` a stateless seed (shape [2]).
    """
    recipe = get_preset(preset)
    u = tf.random.stateless_uniform([num_views, CROP_DRAWS + 1 + recipe.num_draws], seed)
    crop_u, flip_u, photo_u = u[:, :CROP_DRAWS], u[:, CROP_DRAWS], u[:, CROP_DRAWS + 1:]
    if recipe.window == "resized":
        window_fn = lambda h, w: resized_crop_windows(h, w, crop_u)  # noqa: E731
    elif recipe.window == "random":
        window_fn = lambda h, w: random_crop_windows(h, w, crop_u)  # noqa: E731
    else:
        window_fn = lambda h, w: center_crop_windows(h, w, num_views)  # noqa: E731
    flips = flip_u < 0.5 if recipe.flip else tf.zeros([num_views], tf.bool)
    views = crop_resize_flip(image, image_size, window_fn, flips)
    return tf.stack([
        recipe.photometric(views[v], photo_u[v], image_size, color_jitter_strength)
        for v in range(num_views)])


def augment(image, preset: str, image_size: int, seed, color_jitter_strength: float = 1.0) -> tf.Tensor:
    """One augmented view of `image`: float32 [image_size, image_size, 3] in [0, 1]."""
    return augment_views(image, preset, image_size, seed, 1, color_jitter_strength)[0]
