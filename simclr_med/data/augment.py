"""Image decoding and the augmentation presets of SimCLR, MICLe, the CheXpert and Derm experiments.

Every random choice is a stateless draw from an explicit seed, so a view is a pure function of
(image, seed): reproducible, and independent of the order in which tf.data's parallel map
finishes. Each view gets its own draws (Keras 3's RandomCrop/RandomGaussianBlur share one draw
per batch, which would make all views of a batch alike).

The input pipeline runs on the host CPU, where a TF op costs microseconds of overhead, so an
augmentation runs in two stages:
  * geometry, in graph mode because crop sizes vary: decode (only the crop window when a JPEG
    gives a single view), crop and bilinear resize to the output size;
  * photometric (flip, colour, blur, rotation), one XLA-compiled call for all the views made
    together (the pipelines augment a few images per call), fusing the per-pixel work into a
    few loops. On 2 CPU cores this makes the SimCLR preset with blur a little cheaper than
    google-research/simclr's augmentation without it (benchmarks/input_pipeline.py).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

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
    straight to float32 keeps their full range instead of truncating to 8 bits). That is right
    because the builders store 16-bit PNGs rescaled to the full range from their significant
    bits, and EXIF-rotated images upright (tfds_builders.common.prepare_image): TF sees neither.
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
    max_log_ratio = math.log(CROP_MAX_RATIO)
    log_ratio = _lerp(-max_log_ratio, max_log_ratio, u[:, CROP_ATTEMPTS:2 * CROP_ATTEMPTS])
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


# --- photometric transforms of one float32 [S, S, 3] view ------------------------------------------
# Written as per-pixel arithmetic (no MatMul/conv kernels): under XLA each becomes a fused loop,
# whereas on a CPU even a [S·S, 3] × [3, 3] MatMul costs ~25 µs of kernel overhead.

def _color_matrix(image, matrix):
    """out[..., i] = Σ_j matrix[i, j] · image[..., j]."""
    return image[..., 0:1] * matrix[:, 0] + image[..., 1:2] * matrix[:, 1] + image[..., 2:3] * matrix[:, 2]


def _yiq_hue_basis():
    """Constant matrices A, B, C with hue_matrix(θ) = A + cos θ·B + sin θ·C.

    Rotating the (I, Q) chroma plane of YIQ by θ is the linear counterpart of an HSV hue shift.
    """
    yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    inv = np.linalg.inv(yiq)
    parts = (np.diag([1.0, 0.0, 0.0]), np.diag([0.0, 1.0, 1.0]),
             np.array([[0, 0, 0], [0, 0, -1], [0, 1, 0.0]]))
    return [(inv @ p @ yiq).astype(np.float32) for p in parts]


_HUE_A, _HUE_B, _HUE_C = _yiq_hue_basis()
_GRAY_MATRIX = np.tile(GRAY_WEIGHTS[None], [3, 1])


def color_jitter(image, strength, u):
    """SimCLR colour jitter: brightness, contrast, saturation (0.8·s) and hue (0.2·s), random order.

    `u` is COLOR_JITTER_DRAWS uniforms. Brightness multiplies (SimCLR v2), contrast scales about
    the per-channel mean (tf.image.adjust_contrast), saturation blends with the grayscale image
    (torchvision) and hue rotates the YIQ chroma plane by up to ±0.2·s turns. As in SimCLR the
    image is clipped to [0, 1] after every step, which is what makes the order matter. The steps
    run as a loop around one switch so that XLA compiles the four transforms once, not 4 × 4
    times (conditionals dominate XLA's compile time).
    """
    b = c = s = 0.8 * strength
    brightness = _lerp(max(1.0 - b, 0.0), 1.0 + b, u[0])
    contrast = _lerp(1.0 - c, 1.0 + c, u[1])
    saturation = _lerp(1.0 - s, 1.0 + s, u[2])
    theta = 2.0 * math.pi * _lerp(-0.2 * strength, 0.2 * strength, u[3])
    saturation_matrix = saturation * np.eye(3, dtype=np.float32) + (1.0 - saturation) * _GRAY_MATRIX
    hue_matrix = _HUE_A + tf.cos(theta) * _HUE_B + tf.sin(theta) * _HUE_C
    order = tf.argsort(u[4:8])

    def step(k, x):
        x = tf.switch_case(order[k], [
            lambda: x * brightness,
            lambda: tf.image.adjust_contrast(x, contrast),
            lambda: _color_matrix(x, saturation_matrix),
            lambda: _color_matrix(x, hue_matrix),
        ])
        return k + 1, tf.clip_by_value(x, 0.0, 1.0)

    return tf.while_loop(lambda k, x: k < 4, step, (tf.constant(0), image), maximum_iterations=4)[1]


def to_grayscale(image):
    """Luma, kept as 3 channels so the network input shape is unchanged."""
    gray = _color_matrix(image, _GRAY_MATRIX[:1])
    return tf.concat([gray, gray, gray], axis=-1)


def gaussian_blur(image, sigma, kernel_size):
    """Separable Gaussian blur with reflected borders; `kernel_size` as SimCLR (10% of the side).

    The radius is kernel_size // 2 (64 px → 7 taps). Each pass is a sum of shifted copies, which
    XLA fuses into one loop.
    """
    radius = kernel_size // 2
    height, width = image.shape[0], image.shape[1]
    if radius < 1:
        return image
    if radius >= min(height, width):
        raise ValueError(f"gaussian_blur: kernel radius {radius} too large "
                         f"for an image of shape {image.shape}")
    taps = np.arange(-radius, radius + 1, dtype=np.float32)
    weights = tf.exp((-0.5 * taps ** 2) / tf.square(sigma))
    weights = weights / tf.reduce_sum(weights)
    padded = tf.pad(image, [[radius, radius], [0, 0], [0, 0]], mode="REFLECT")
    image = tf.add_n([weights[t] * padded[t:t + height] for t in range(taps.size)])
    padded = tf.pad(image, [[0, 0], [radius, radius], [0, 0]], mode="REFLECT")
    return tf.add_n([weights[t] * padded[:, t:t + width] for t in range(taps.size)])


def rotate(image, angle):
    """Rotate a [H, W, 3] image about its centre by `angle` radians; bilinear, zero outside.

    Gather-based so that it compiles with XLA (ImageProjectiveTransformV3 does not).
    """
    height, width = image.shape[0], image.shape[1]
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(height, dtype=np.float32) - cy, np.arange(width, dtype=np.float32) - cx,
                         indexing="ij")
    cos, sin = tf.cos(angle), tf.sin(angle)
    src_y = cos * yy - sin * xx + cy  # the input pixel each output pixel samples
    src_x = sin * yy + cos * xx + cx
    y0, x0 = tf.floor(src_y), tf.floor(src_x)
    flat = tf.reshape(image, [height * width, 3])
    out = 0.0
    for dy, wy in ((0.0, 1.0 - (src_y - y0)), (1.0, src_y - y0)):
        for dx, wx in ((0.0, 1.0 - (src_x - x0)), (1.0, src_x - x0)):
            py, px = y0 + dy, x0 + dx
            inside = (py >= 0) & (py <= height - 1) & (px >= 0) & (px <= width - 1)
            index = tf.clip_by_value(py, 0, height - 1) * width + tf.clip_by_value(px, 0, width - 1)
            out += tf.where(inside, wy * wx, 0.0)[..., None] * tf.gather(flat, tf.cast(index, tf.int32))
    return out


def random_apply(fn, p, u, image):
    """fn(image) if u < p else image, where u ~ U(0, 1) is the caller's draw."""
    return tf.cond(u < p, lambda: fn(image), lambda: image)


def _flip(image, u):
    return tf.where(u < 0.5, tf.reverse(image, axis=[1]), image)


# --- presets: the photometric part of each, per view (u: that view's uniforms) ------------------

def _simclr(x, u, strength):
    """SimCLR (Derm): flip, jitter p=0.8, grayscale p=0.2, Gaussian blur p=0.5 with σ ~ U(0.1, 2).

    Every step keeps values in [0, 1] (jitter clips; gray and blur are convex combinations).
    """
    x = random_apply(lambda v: color_jitter(v, strength, u[5:]), 0.8, u[1], _flip(x, u[0]))
    x = random_apply(to_grayscale, 0.2, u[2], x)
    sigma = _lerp(0.1, 2.0, u[4])
    return random_apply(lambda v: gaussian_blur(v, sigma, x.shape[0] // 10), 0.5, u[3], x)


def _chexpert_pretrain(x, u, strength):
    """CheXpert pretraining: jitter (p=0.8), rotation U(−45°, 45°), flip; no blur.

    The jitter strength is `strength` as given (the paper's recipe: 0.5), so that
    --color_jitter_strength is the strength applied.
    """
    x = random_apply(lambda v: color_jitter(v, strength, u[3:]), 0.8, u[0], x)
    return _flip(rotate(x, math.radians(45.0) * (2.0 * u[1] - 1.0)), u[2])


def _chexpert_finetune(x, u, strength):
    """CheXpert fine-tuning: rotation U(−20°, 20°), flip p=0.5, brightness +U(−0.2, 0.2), contrast
    ×U(0.8, 1.2), clip to [0, 1].

    The rotation turns the cropped view about its centre (rather than the image before cropping)
    so that JPEGs still decode only the crop window.
    """
    del strength
    x = _flip(rotate(x, math.radians(20.0) * (2.0 * u[0] - 1.0)), u[1])
    x = tf.image.adjust_contrast(x + _lerp(-0.2, 0.2, u[2]), _lerp(0.8, 1.2, u[3]))
    return tf.clip_by_value(x, 0.0, 1.0)


def _derm_finetune(x, u, strength):
    """Derm fine-tuning: flip, rotation U(−20°, 20°), jitter p=0.8, Gaussian blur p=0.5 with σ ~ U(0.1, 2).

    The paper names the operations (colour, crop with resize, blur, rotation, flips) but not their
    ranges: the rotation is its CheXpert fine-tuning range, jitter and blur are SimCLR's, at the
    strength the recipe sets. No grayscale: colour carries diagnostic signal in dermatology.
    """
    x = _flip(rotate(x, math.radians(20.0) * (2.0 * u[1] - 1.0)), u[0])
    x = random_apply(lambda v: color_jitter(v, strength, u[5:]), 0.8, u[2], x)
    sigma = _lerp(0.1, 2.0, u[4])
    return random_apply(lambda v: gaussian_blur(v, sigma, x.shape[0] // 10), 0.5, u[3], x)


def _crop_only(x, u, strength):
    del strength
    return _flip(x, u[0])


@dataclasses.dataclass(frozen=True)
class Preset:
    """One recipe: how views are cut out (`window`) and what happens to each view afterwards.

    `photometric(view, u, color_jitter_strength)` gets `num_draws` uniforms `u`; None means the
    resized crop is the result.
    """
    window: str  # resized | random | center
    num_draws: int
    photometric: Callable | None


PRESETS = {
    "simclr": Preset("resized", 5 + COLOR_JITTER_DRAWS, _simclr),
    "chexpert_pretrain": Preset("resized", 3 + COLOR_JITTER_DRAWS, _chexpert_pretrain),
    # Crop: 87.5% of the shorter side at a random place.
    "chexpert_finetune": Preset("random", 4, _chexpert_finetune),
    # Crop: SimCLR's random resized crop.
    "derm_finetune": Preset("resized", 5 + COLOR_JITTER_DRAWS, _derm_finetune),
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
    """All views of one image in one XLA call (one launch instead of hundreds of small ops).

    A map over the views, so that XLA compiles the per-view code once. The final clip holds
    [0, 1] against rounding (a blur's weights sum to 1 only up to float error).
    """
    views = tf.map_fn(lambda args: photometric(args[0], args[1], strength), (views, u),
                      fn_output_signature=tf.TensorSpec(views.shape[1:], tf.float32))
    return tf.clip_by_value(views, 0.0, 1.0)


def augment_images(images, preset: str, image_size: int, seed, views_per_image: int = 1,
                   color_jitter_strength: float = 1.0) -> tf.Tensor:
    """Independent augmentations of several images: float32 [len(images) · views, S, S, 3] in [0, 1].

    `images` is a list of images (encoded bytes or decoded [H, W, C] tensors) or a 1-D string
    tensor of static length; rows [i·V, (i+1)·V) are the views of image i. The views of one image
    share its decode; an image with a single view decodes only its crop window (JPEG). All
    photometric work runs in one XLA call. `seed` is a stateless seed (shape [2]).
    `color_jitter_strength` is the jitter strength the simclr, chexpert_pretrain and derm_finetune
    presets apply; the others ignore it.
    """
    if isinstance(images, tf.Tensor) and images.dtype == tf.string and images.shape.rank == 1:
        images = tf.unstack(images)
    recipe = get_preset(preset)
    v = views_per_image
    u = tf.random.stateless_uniform([len(images) * v, CROP_DRAWS + recipe.num_draws], seed)
    views = tf.concat([crop_and_resize(image, image_size, _window_fn(recipe, u[i * v:(i + 1) * v], v), v)
                       for i, image in enumerate(images)], axis=0)
    if recipe.photometric is None:
        return views
    return _photometric(views, u[:, CROP_DRAWS:], recipe.photometric, float(color_jitter_strength))


def augment_views(image, preset: str, image_size: int, seed, num_views: int = 1,
                  color_jitter_strength: float = 1.0) -> tf.Tensor:
    """`num_views` independent augmentations of one image: float32 [num_views, S, S, 3] in [0, 1]."""
    return augment_images([image], preset, image_size, seed, num_views, color_jitter_strength)


def augment(image, preset: str, image_size: int, seed, color_jitter_strength: float = 1.0) -> tf.Tensor:
    """One augmented view of `image`: float32 [image_size, image_size, 3] in [0, 1]."""
    return augment_images([image], preset, image_size, seed, 1, color_jitter_strength)[0]


def _window_fn(recipe, u, num_views):
    if recipe.window == "resized":
        return lambda h, w: resized_crop_windows(h, w, u[:, :CROP_DRAWS])
    if recipe.window == "random":
        return lambda h, w: random_crop_windows(h, w, u[:, :CROP_DRAWS])
    return lambda h, w: center_crop_windows(h, w, num_views)
