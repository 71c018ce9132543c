"""BatchNormalization on TensorFlow's fused kernel.

Keras 3 builds batch norm from moments and element-wise ops: about eight passes over every
activation forward and backward, which on a CPU costs ~15% of a ResNet training step. The fused
kernel (FusedBatchNormV3, oneDNN on CPU, cuDNN on GPU; grappler also fuses the following ReLU)
does it in one pass each way. Variables, moving-average update and biased variance are Keras',
so checkpoints are interchangeable; synchronized BN, masks and renorm use the Keras path.
"""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="simclr_med")
class BatchNormalization(keras.layers.BatchNormalization):

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        channels_last = self.axis in (-1, rank - 1)
        if (mask is not None or self.synchronized or self.renorm or not channels_last or rank not in (2, 4)
                or inputs.dtype == tf.float64 or inputs.shape[-1] is None):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        x = tf.reshape(inputs, [-1, 1, 1, channels]) if rank == 2 else inputs
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        moving_mean = tf.cast(self.moving_mean, tf.float32)
        moving_variance = tf.cast(self.moving_variance, tf.float32)
        update = bool(training) and self.trainable
        # FusedBatchNormV3 keeps x in its own dtype (float16/bfloat16 too) and the statistics in float32.
        y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=gamma, offset=beta, mean=tf.zeros([0]) if update else moving_mean,
            variance=tf.zeros([0]) if update else moving_variance, epsilon=self.epsilon,
            is_training=update)
        if update:
            n = tf.cast(tf.size(x) // channels, tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)  # the kernel returns the unbiased variance
            m = self.momentum
            self.moving_mean.assign(moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(moving_variance * m + variance * (1.0 - m))
        if rank == 2:
            y = tf.reshape(y, tf.shape(inputs))
        return tf.cast(y, self.compute_dtype)
