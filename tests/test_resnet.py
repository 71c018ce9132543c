"""ResNet encoders: sizes, and the small-map GEMM convolution equals a plain Conv2D."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med import resnet


@pytest.mark.parametrize("depth,dim,params", [(18, 512, 11_186_112), (50, 2048, 23_561_152)])
def test_standard_sizes(depth, dim, params):
    enc = resnet.build_resnet(depth)
    assert enc.output_shape == (None, dim) and enc.count_params() == params
    assert resnet.feature_dim(depth, 1) == dim
    assert resnet.build_resnet(18, 2).output_shape == (None, 1024)


@pytest.mark.parametrize("hw,kernel,stride", [(1, 3, 1), (2, 3, 2), (3, 3, 2), (4, 3, 1), (4, 1, 2), (2, 7, 2), (4, 3, 2)])
def test_small_conv_matches_conv2d(hw, kernel, stride):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(3, hw, hw + (hw > 1), 5)).astype(np.float32))
    ref = keras.layers.Conv2D(6, kernel, strides=stride, padding="same", use_bias=False)
    small = resnet.SmallConv2D(6, kernel, strides=stride, padding="same", use_bias=False)
    ref.build(x.shape), small.build(x.shape)
    small.kernel.assign(ref.kernel)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        a, b = ref(x), small(x)
        la, lb = tf.reduce_sum(a * a), tf.reduce_sum(b * b)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tape.gradient(la, ref.kernel).numpy(), tape.gradient(lb, small.kernel).numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(tape.gradient(la, x).numpy(), tape.gradient(lb, x).numpy(), rtol=1e-4, atol=1e-4)


def test_stage_names_exist():
    enc = resnet.build_resnet(18)
    for name in resnet.stage_output_names(18):
        enc.get_layer(name)
