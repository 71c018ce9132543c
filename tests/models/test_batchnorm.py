"""simclr_med.models.batchnorm.BatchNormalization behaves as keras' BatchNormalization (fused kernel)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.models import batchnorm


def _pair(shape, **kw):
    ref = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, **kw)
    fused = batchnorm.BatchNormalization(momentum=0.9, epsilon=1e-5, **kw)
    ref.build(shape), fused.build(shape)
    rng = np.random.default_rng(1)
    for layer in (ref, fused):  # non-trivial parameters and statistics
        layer.gamma.assign(rng.normal(size=shape[-1:]).astype(np.float32) if layer is ref else ref.gamma)
        layer.beta.assign(rng.normal(size=shape[-1:]).astype(np.float32) if layer is ref else ref.beta)
        layer.moving_mean.assign(np.full(shape[-1:], 0.3, np.float32))
        layer.moving_variance.assign(np.full(shape[-1:], 2.0, np.float32))
    return ref, fused


def _run(layer, x, training):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * tf.cos(y))
    grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return ([y.numpy()] + [g.numpy() for g in grads]
            + [layer.moving_mean.numpy(), layer.moving_variance.numpy()])


@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (16, 7)])
@pytest.mark.parametrize("training", [True, False])
def test_matches_keras_values_gradients_and_moving_statistics(shape, training):
    x = tf.constant(np.random.default_rng(0).normal(2.0, 3.0, size=shape).astype(np.float32))
    ref, fused = _pair(shape)
    for a, b in zip(_run(ref, x, training), _run(fused, x, training)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    if training:  # the statistics moved towards the batch's (biased) mean and variance
        assert not np.allclose(fused.moving_mean.numpy(), 0.3)


def test_mixed_bfloat16_keeps_dtype_and_float32_statistics():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        layer = batchnorm.BatchNormalization()
        y = layer(tf.random.normal([8, 4, 4, 3]), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert y.dtype == tf.bfloat16 and layer.moving_mean.dtype == "float32"
    assert np.isfinite(layer.moving_variance.numpy()).all()


def test_synchronized_uses_the_keras_path():
    ref, fused = _pair((4, 3, 3, 2), synchronized=True)
    x = tf.random.normal([4, 3, 3, 2])
    np.testing.assert_allclose(ref(x, training=True).numpy(), fused(x, training=True).numpy(),
                               rtol=1e-5, atol=1e-5)
