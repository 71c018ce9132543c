"""Winograd 3×3 convolution = tf.nn.conv2d in float64, in values and both gradients; and when conv.py
uses it."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.models import conv, winograd


def _conv_and_grads(fn, x, kernel, upstream):
    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = fn(x, kernel)
        loss = tf.reduce_sum(y * upstream)
    return [y, *tape.gradient(loss, [x, kernel])]


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("h,w", [(1, 1), (2, 2), (4, 4), (5, 7), (8, 8), (9, 3)])
def test_matches_direct_convolution(tile, h, w):
    rng = np.random.default_rng(h * 10 + w + tile)
    x, kernel = rng.normal(size=(2, h, w, 6)), rng.normal(size=(3, 3, 6, 5))
    upstream = rng.normal(size=(2, h, w, 5))
    expected = _conv_and_grads(lambda a, k: tf.nn.conv2d(a, k, 1, "SAME"), tf.constant(x),
                               tf.constant(kernel), tf.constant(upstream))
    got = _conv_and_grads(lambda a, k: winograd.conv3x3(a, k, tile), tf.constant(x, tf.float32),
                          tf.constant(kernel, tf.float32), tf.constant(upstream, tf.float32))
    for name, a, b in zip(["output", "input gradient", "kernel gradient"], expected, got):
        scale = np.abs(a.numpy()).max()
        assert np.abs(b.numpy() - a.numpy()).max() <= 2e-5 * scale, name


def test_unknown_batch_size_in_a_traced_function():
    kernel = tf.random.normal([3, 3, 4, 4])
    fn = tf.function(lambda a: winograd.conv3x3(a, kernel, 4),
                     input_signature=[tf.TensorSpec([None, 6, 6, 4])])
    x = tf.random.normal([3, 6, 6, 4])
    np.testing.assert_allclose(fn(x).numpy(), tf.nn.conv2d(x, kernel, 1, "SAME").numpy(),
                               rtol=1e-4, atol=1e-4)


@pytest.fixture
def winograd_calls(monkeypatch):
    """Counts conv.py's Winograd calls; channels >= 4 qualify, so that tests stay small."""
    calls = []
    real = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, k, tile: calls.append(tile) or real(x, k, tile))
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 4)
    monkeypatch.setattr(conv, "accelerator_visible", lambda: False)
    return calls


@pytest.mark.parametrize("h,tile", [(2, 2), (4, 4), (7, 4)])
def test_conv2d_layer_uses_winograd_and_matches_keras(winograd_calls, h, tile):
    x = np.random.default_rng(h).normal(size=(2, h, h, 4))
    ref = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, dtype="float64")
    fast = conv.Conv2D(4, 3, padding="same", use_bias=False)
    ref.build(x.shape), fast.build(x.shape)
    fast.kernel.assign(ref.kernel.numpy().astype(np.float32))
    np.testing.assert_allclose(fast(tf.constant(x, tf.float32)).numpy(), ref(tf.constant(x)).numpy(),
                               rtol=1e-4, atol=1e-4)
    assert winograd_calls == [tile]


@pytest.mark.parametrize("case", ["switched off", "stride 2", "5x5 kernel", "few channels", "float16",
                                  "accelerator"])
def test_conv2d_layer_keeps_other_paths(winograd_calls, monkeypatch, case):
    kwargs = {"filters": 4 if case != "few channels" else 3, "kernel_size": 5 if case == "5x5 kernel" else 3,
              "strides": 2 if case == "stride 2" else 1, "winograd": case != "switched off",
              "dtype": "float16" if case == "float16" else "float32"}
    if case == "accelerator":
        monkeypatch.setattr(conv, "accelerator_visible", lambda: True)
    layer = conv.Conv2D(padding="same", use_bias=False, **kwargs)
    layer(tf.random.normal([2, 8, 8, 4]))
    assert winograd_calls == []


def test_winograd_setting_survives_serialization():
    layer = conv.Conv2D(4, 3, padding="same", winograd=False)
    assert conv.Conv2D.from_config(layer.get_config()).winograd is False
