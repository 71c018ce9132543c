"""A Conv2D that picks, per static input shape, the fastest TensorFlow formulation of the same op.

The choices come from timing fwd+bwd of every ResNet-50 convolution on a CPU
(benchmarks/conv_kernels.py; figures in the README). Which formulation wins depends on
TensorFlow's CPU kernels:

- oneDNN (TF_ENABLE_ONEDNN_OPTS=1, which run.py sets): the convolution kernels win, except on
  maps of a few pixels (the last stages at 64 px: up to 2×2 at stride 1, 8×8 at stride 2), where
  oneDNN falls back to slow generic code and im2col + one matmul is faster. Strided 1×1
  convolutions with fewer than 8 (or a non-multiple of 8) input channels also go to the matmul:
  TF 2.21's oneDNN filter gradient is wrong for them (tests/models/test_conv.py catches it).
- Eigen (TensorFlow's default on CPUs without AVX-512): the same tiny-map rule, plus 1×1
  convolutions as plain matmuls, and k×k stride-1 convolutions whose input gradient runs as a
  forward convolution of the output gradient with the flipped, transposed kernel (the same
  maths; Eigen's input-gradient kernel is slower than its forward one).
- Both: float32 stride-1 3×3 convolutions with ≥128 channels in and out run as Winograd
  convolutions (`winograd.py`; fewer multiplications in ResNet-50's stages 2–4).
- With a GPU or TPU visible, every convolution is `tf.nn.conv2d`: the choices above are CPU
  measurements, and accelerators have their own Winograd/implicit-GEMM kernels.

Every formulation computes the same convolution; weights, names and checkpoints are those of
`keras.layers.Conv2D`. Padding is SAME, or SimCLR's `fixed_padding` for the ResNet's strided
convolutions.
"""
from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from simclr_med.models import winograd

SELECTION_MAX_PIXELS = 64  # im2col by a 0/1 matmul up to here; its FLOPs grow with pixels²
GEMM_MAX_PIXELS = {1: 4, 2: SELECTION_MAX_PIXELS}  # stride -> largest H*W convolved as im2col + matmul
EIGEN_STRIDED_1X1_GEMM_MAX_PIXELS = 1024  # Eigen: larger strided 1x1 maps lose to the slice copy
WINOGRAD_MIN_CHANNELS = 128  # with fewer, the tile transforms cost more than the multiplications saved


@functools.cache
def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels (decided once, when TensorFlow loads)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return False


@functools.cache
def accelerator_visible() -> bool:
    """Whether TensorFlow sees a GPU or TPU (decided once, after any TPU system is initialised)."""
    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def output_size(size: int, stride: int) -> int:
    """A SAME convolution's output length along one axis: ceil(size / stride)."""
    return -(-size // stride)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) along one axis."""
    total = max((output_size(size, stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def fixed_padding(kernel: int) -> tuple[int, int]:
    """SimCLR's padding of strided convolutions (before, after), whatever the size: (k − 1) // 2 before.

    Same output size as SAME; on even sizes SAME puts one pixel less before, which shifts the
    sampling grid by a pixel, so weights trained with one padding see shifted inputs with the other.
    """
    return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2


@functools.cache
def _patch_selection(h: int, w: int, k: int, stride: int, top: int, left: int) -> np.ndarray:
    """0/1 matrix [out_h·out_w·k·k, h·w]: row (output pixel, tap) picks that tap's input pixel;
    taps on the padding (`top` rows, `left` columns before) are all-zero rows."""
    out_h, out_w = output_size(h, stride), output_size(w, stride)
    rows, cols = np.meshgrid(np.arange(out_h) * stride - top, np.arange(out_w) * stride - left, indexing="ij")
    taps_r, taps_c = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    r = rows[:, :, None, None] + taps_r  # [out_h, out_w, k, k]
    c = cols[:, :, None, None] + taps_c
    inside = ((r >= 0) & (r < h) & (c >= 0) & (c < w)).ravel()
    selection = np.zeros([out_h * out_w * k * k, h * w], np.float32)
    selection[np.flatnonzero(inside), (r * w + c).ravel()[inside]] = 1
    return selection


def gemm_conv(x, kernel, stride: int, pads=None):
    """Convolution as im2col + one matmul (square kernel and stride, static H and W); `pads`:
    ((top, bottom), (left, right)) of an output the size of SAME's, default SAME's.

    On maps of at most SELECTION_MAX_PIXELS the patches are gathered by a matmul with a constant
    0/1 matrix: one small batched matmul each way instead of k² strided slices and their
    gradients, memory-bound copies that cost as much as the convolution's maths.
    """
    k, _, c_in, c_out = kernel.shape
    h, w = x.shape[1], x.shape[2]
    out_h, out_w = output_size(h, stride), output_size(w, stride)
    pad_h, pad_w = pads or (same_padding(h, k, stride), same_padding(w, k, stride))
    if k == 1 and stride == 1:
        patches = x
    elif h * w <= SELECTION_MAX_PIXELS:
        selection = _patch_selection(h, w, k, stride, pad_h[0], pad_w[0])
        patches = tf.matmul(tf.constant(selection, x.dtype), tf.reshape(x, [-1, h * w, c_in]))
    elif k == 1:
        patches = x[:, ::stride, ::stride, :]
    else:
        x = tf.pad(x, [[0, 0], pad_h, pad_w, [0, 0]])
        span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
        patches = tf.concat([x[:, i:i + span_h:stride, j:j + span_w:stride, :]
                             for i in range(k) for j in range(k)], axis=-1)
    out = tf.matmul(tf.reshape(patches, [-1, k * k * c_in]), tf.reshape(kernel, [k * k * c_in, c_out]))
    return tf.reshape(out, [-1, out_h, out_w, c_out])


@tf.custom_gradient
def conv_forward_input_grad(x, kernel):
    """Stride-1 SAME convolution (odd kernel) whose input gradient runs as a forward convolution."""
    y = tf.nn.conv2d(x, kernel, 1, "SAME")

    def grad(dy):
        dx = tf.nn.conv2d(dy, winograd.transposed_flip(kernel), 1, "SAME")
        dk = tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=tf.shape(kernel), out_backprop=dy,
                                             strides=[1, 1, 1, 1], padding="SAME")
        return dx, dk

    return y, grad


def _kernel_conv(x, kernel, stride: int, pads):
    """TensorFlow's convolution kernel, SAME (pads None) or on an explicitly padded input."""
    if pads is None:
        return tf.nn.conv2d(x, kernel, stride, "SAME")
    # pad + VALID: TensorFlow's explicit-padding convolution is slower on oneDNN (fwd + bwd).
    return tf.nn.conv2d(tf.pad(x, [[0, 0], *pads, [0, 0]]), kernel, stride, "VALID")


def _pads_differ(h, w, k: int, stride: int) -> bool:
    """Whether SimCLR's padding puts another number of pixels before than SAME (assumed if a size
    is unknown)."""
    return any(size is None or same_padding(size, k, stride)[0] != fixed_padding(k)[0] for size in (h, w))


def convolution(x, kernel, stride: int, allow_winograd: bool = True, fixed: bool = False):
    """Convolution with square kernel and stride, in the formulation fastest for x's shape, padded
    SAME, or by `fixed_padding` at stride > 1 when `fixed`."""
    k = kernel.shape[0]
    h, w = x.shape[1], x.shape[2]
    # None: SAME's, also where SimCLR's is the same (at stride 1, and on odd sizes).
    pads = (fixed_padding(k),) * 2 if fixed and stride > 1 and _pads_differ(h, w, k, stride) else None
    if h is None or w is None or accelerator_visible():
        return _kernel_conv(x, kernel, stride, pads)
    if (allow_winograd and k == 3 and stride == 1 and x.dtype == tf.float32
            and min(x.shape[-1], kernel.shape[-1]) >= WINOGRAD_MIN_CHANNELS):
        return winograd.conv3x3(x, kernel, winograd.tile_for(h, w))
    pixels = h * w
    # Strided 1x1 with channels not a multiple of 8: oneDNN's filter gradient is wrong (module doc);
    # whatever onednn_enabled() says, as it reads a private TensorFlow API.
    if pixels <= GEMM_MAX_PIXELS.get(stride, 0) or (k == 1 and stride > 1 and x.shape[-1] % 8):
        return gemm_conv(x, kernel, stride, pads)
    if onednn_enabled() or pads is not None:
        return _kernel_conv(x, kernel, stride, pads)
    if k == 1 and (stride == 1 or pixels <= EIGEN_STRIDED_1X1_GEMM_MAX_PIXELS):
        return gemm_conv(x, kernel, stride)
    if stride == 1 and k % 2 == 1:
        return conv_forward_input_grad(x, kernel)
    return tf.nn.conv2d(x, kernel, stride, "SAME")


@keras.saving.register_keras_serializable(package="simclr_med")
class Conv2D(keras.layers.Conv2D):
    """`keras.layers.Conv2D` computed by `convolution` when it applies (SAME, square, NHWC, no groups).

    `fixed_padding`: pad strided convolutions as SimCLR does (`fixed_padding`) instead of SAME.
    """

    def __init__(self, *args, winograd: bool = True, fixed_padding: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if fixed_padding and not self._fast_path_applies():
            raise ValueError("fixed_padding needs padding='same', channels_last, square kernel and strides, "
                             "no dilation or groups")
        self.winograd = winograd
        self.fixed_padding = fixed_padding

    def get_config(self):
        return {**super().get_config(), "winograd": self.winograd, "fixed_padding": self.fixed_padding}

    def _fast_path_applies(self) -> bool:
        return (self.padding == "same" and self.data_format == "channels_last" and self.groups == 1
                and self.dilation_rate == (1, 1) and self.strides[0] == self.strides[1]
                and self.kernel_size[0] == self.kernel_size[1])

    def convolution_op(self, inputs, kernel):
        if not self._fast_path_applies():
            return super().convolution_op(inputs, kernel)
        return convolution(inputs, tf.convert_to_tensor(kernel), self.strides[0], self.winograd,
                           self.fixed_padding)
