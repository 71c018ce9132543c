"""simclr_med.models.conv.Conv2D computes keras' Conv2D (in float64), in values and gradients, on every
path."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.models import conv

# (height, width, input channels, kernel, stride), with the formulation `conv.convolution` picks
# (Eigen / oneDNN).
CASES = [
    (6, 7, 5, 1, 1),     # matmul / kernel
    (8, 8, 5, 1, 2),     # sliced matmul, both
    (40, 34, 5, 1, 2),   # sliced matmul, both: oneDNN's filter gradient is wrong for 5 channels
    (40, 34, 16, 1, 2),  # kernel, both
    (2, 2, 5, 3, 1),     # im2col + matmul on tiny maps, both
    (1, 1, 5, 3, 1),
    (4, 4, 5, 3, 2),
    (3, 5, 5, 7, 2),
    (6, 5, 5, 3, 1),     # forward-conv input gradient / kernel
    (9, 9, 5, 7, 1),
    (9, 8, 5, 3, 2),     # kernel, both
    (12, 12, 3, 7, 2),   # a stem: kernel, both
]


def _grads(conv_fn, x, kernel):
    """y = conv_fn(x), and the gradients of sum(y·sin y) (a non-uniform output gradient) to x and the
    kernel variable."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = conv_fn(x)
        loss = tf.reduce_sum(y * tf.sin(y))
    dx, dk = tape.gradient(loss, [x, kernel])
    return y.numpy(), dx.numpy(), dk.numpy()


@pytest.mark.parametrize("onednn", [False, True], ids=["eigen-policy", "onednn-policy"])
@pytest.mark.parametrize("h,w,channels,kernel,stride", CASES)
def test_matches_keras_conv2d(h, w, channels, kernel, stride, onednn, monkeypatch):
    monkeypatch.setattr(conv, "onednn_enabled", lambda: onednn)
    x = np.random.default_rng(h * w + kernel).normal(size=(3, h, w, channels))
    # The reference runs in float64, on Eigen's kernels whatever TF_ENABLE_ONEDNN_OPTS says.
    ref = keras.layers.Conv2D(6, kernel, strides=stride, padding="same", use_bias=False, dtype="float64")
    fast = conv.Conv2D(6, kernel, strides=stride, padding="same", use_bias=False)
    ref.build(x.shape), fast.build(x.shape)
    fast.kernel.assign(ref.kernel.numpy().astype(np.float32))
    expected = _grads(ref, tf.constant(x), ref.kernel)
    got = _grads(fast, tf.constant(x, tf.float32), fast.kernel)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fixed", [False, True], ids=["same", "fixed"])
@pytest.mark.parametrize("h,w,kernel,stride", [
    # patches by a 0/1 matmul
    (4, 4, 3, 2), (8, 8, 3, 2), (7, 5, 5, 2), (2, 2, 3, 1), (1, 1, 3, 1), (8, 8, 1, 2),
    (9, 9, 3, 2), (10, 12, 3, 2), (12, 10, 3, 1), (10, 9, 1, 2),  # by slices: more than SELECTION_MAX_PIXELS
    (6, 7, 1, 1),  # none needed
])
def test_gemm_conv_matches_tensorflow_on_both_patch_gatherings(h, w, kernel, stride, fixed):
    """Every im2col branch, in float64 against TensorFlow's own convolution, values and gradients,
    with SAME padding or SimCLR's fixed padding."""
    rng = np.random.default_rng(h * w * kernel + stride)
    x = tf.constant(rng.normal(size=(2, h, w, 3)))
    k = tf.Variable(rng.normal(size=(kernel, kernel, 3, 4)))
    if fixed:
        pads = (conv.fixed_padding(kernel),) * 2
        expected = _grads(lambda x: tf.nn.conv2d(tf.pad(x, [[0, 0], *pads, [0, 0]]), k, stride, "VALID"),
                          x, k)
    else:
        pads = None
        expected = _grads(lambda x: tf.nn.conv2d(x, k, stride, "SAME"), x, k)
    got = _grads(lambda x: conv.gemm_conv(x, k, stride, pads), x, k)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("onednn", [False, True], ids=["eigen-policy", "onednn-policy"])
@pytest.mark.parametrize("h,w,channels,kernel,stride", [case for case in CASES if case[4] > 1])
def test_fixed_padding_pads_like_simclr(h, w, channels, kernel, stride, onednn, monkeypatch):
    """fixed_padding=True is SimCLR's conv2d_fixed_padding: (k-1)//2 zeros before, then VALID."""
    monkeypatch.setattr(conv, "onednn_enabled", lambda: onednn)
    x = np.random.default_rng(h * w + kernel).normal(size=(3, h, w, channels))
    pad = keras.layers.ZeroPadding2D((((kernel - 1) // 2, kernel // 2),) * 2, dtype="float64")
    ref = keras.layers.Conv2D(6, kernel, strides=stride, use_bias=False, dtype="float64")  # padding="valid"
    fast = conv.Conv2D(6, kernel, strides=stride, padding="same", use_bias=False, fixed_padding=True)
    ref.build(pad.compute_output_shape(x.shape)), fast.build(x.shape)
    fast.kernel.assign(ref.kernel.numpy().astype(np.float32))
    expected = _grads(lambda x: ref(pad(x)), tf.constant(x), ref.kernel)
    got = _grads(fast, tf.constant(x, tf.float32), fast.kernel)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride, fixed", [(1, False), (2, True)])
def test_unknown_spatial_shape_falls_back_and_xla_compiles(stride, fixed):
    layer = conv.Conv2D(4, 3, strides=stride, padding="same", fixed_padding=fixed)
    layer.build((None, None, None, 2))
    x = tf.random.normal([2, 6, 6, 2])
    dynamic = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 2])])
    np.testing.assert_allclose(dynamic(x).numpy(), layer(x).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tf.function(layer, jit_compile=True)(x).numpy(), layer(x).numpy(),
                               rtol=1e-4, atol=1e-4)


def test_same_padding_matches_tensorflow():
    # (size, kernel, stride) -> TensorFlow's SAME padding: the extra pixel goes after.
    expected = {(5, 3, 1): (1, 1), (4, 3, 2): (0, 1), (5, 3, 2): (1, 1), (64, 7, 2): (2, 3),
                (1, 3, 2): (1, 1), (4, 1, 2): (0, 0)}
    assert {key: conv.same_padding(*key) for key in expected} == expected
