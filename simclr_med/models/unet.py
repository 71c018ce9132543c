"""U-Net on the project's ResNet encoder, with Dice loss and metric.

The encoder is exactly `build_resnet`, so a SimCLR/MICLe-pretrained encoder drops in by layer
name (or through the `encoder` attribute in checkpoints); the decoder upsamples ×2 five times,
concatenating the encoder stage with the same resolution each time, back to the input size.
"""
from __future__ import annotations

import keras
from keras import layers, ops

from simclr_med.errors import CheckpointError
from simclr_med.models.resnet import build_resnet, stage_output_names

DEFAULT_DECODER_FILTERS = (256, 128, 64, 32, 16)


class DecoderBlock(layers.Layer):
    """×2 bilinear upsampling, concatenation with the skip (if any), two conv-BN-ReLU."""

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.up = layers.UpSampling2D(2, interpolation="bilinear")
        self.convs = [layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                    kernel_initializer="he_normal", name=f"conv{i + 1}") for i in range(2)]
        # momentum 0.9 as in the encoder: short fine-tuning runs still get usable statistics
        self.norms = [layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}") for i in range(2)]

    def call(self, x, skip=None, training=False):
        x = self.up(x)
        if skip is not None:
            x = ops.concatenate([x, ops.cast(skip, x.dtype)], axis=-1)
        for conv, norm in zip(self.convs, self.norms):
            x = ops.relu(norm(conv(x), training=training))
        return x

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


class UNet(keras.Model):
    """ResNet-encoder U-Net: images [B, S, S, 3] in [0, 1] → masks [B, S, S, C] (S divisible by 32).

    `num_classes=1` gives a sigmoid foreground probability; C > 1 a softmax over C classes
    (class 0 = background).
    """

    def __init__(self, depth: int = 50, width_multiplier: int = 1, num_classes: int = 1, *,
                 decoder_filters=DEFAULT_DECODER_FILTERS, sync_bn: bool = False, **kwargs):
        super().__init__(**kwargs)
        if len(decoder_filters) != 5:
            raise ValueError(f"decoder_filters needs 5 entries (strides 32→1), got {len(decoder_filters)}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.depth, self.width_multiplier, self.num_classes = depth, width_multiplier, num_classes
        self.decoder_filters, self.sync_bn = tuple(decoder_filters), sync_bn
        self.encoder = build_resnet(depth, width_multiplier, sync_bn=sync_bn)
        taps = [self.encoder.get_layer(n).output for n in stage_output_names(depth)]
        self.features = keras.Model(self.encoder.input, taps, name="encoder_features")
        self.decoder = [DecoderBlock(f, name=f"decoder{i + 1}") for i, f in enumerate(decoder_filters)]
        self.head = layers.Conv2D(num_classes, 1, activation="sigmoid" if num_classes == 1 else "softmax",
                                  dtype="float32", name="mask")  # float32 output under mixed precision

    def call(self, images, training=False):
        size = images.shape[1:3]
        if any(s is not None and s % 32 for s in size):
            raise ValueError(f"U-Net input size {tuple(size)} must be divisible by 32")
        feats = self.features(images, training=training)  # strides 2, 4, 8, 16, 32
        x = feats[-1]
        for block, skip in zip(self.decoder, [*feats[-2::-1], None]):
            x = block(x, skip, training=training)
        return self.head(x)

    def get_config(self):
        return {**super().get_config(), "depth": self.depth, "width_multiplier": self.width_multiplier,
                "num_classes": self.num_classes, "decoder_filters": self.decoder_filters,
                "sync_bn": self.sync_bn}


def load_encoder_weights(unet: UNet, source: keras.Model) -> int:
    """Copy a trained `build_resnet` encoder (or a model with an `encoder`) into the U-Net.

    Layers are matched by name and must match one-to-one with equal shapes, so a depth or width
    mismatch fails loudly instead of silently leaving layers at their random initialisation.
    Returns the number of layers copied.
    """
    source = getattr(source, "encoder", source)
    target = unet.encoder
    src = {layer.name: layer for layer in source.layers if layer.weights}
    dst = {layer.name: layer for layer in target.layers if layer.weights}
    if src.keys() != dst.keys():
        extra, missing = sorted(src.keys() - dst.keys()), sorted(dst.keys() - src.keys())
        raise CheckpointError(
            f"encoder {source.name!r} does not match the U-Net's (depth {unet.depth}): "
            f"layers only in the source {extra[:5]}, only in the U-Net {missing[:5]}")
    for name, layer in src.items():
        values = layer.get_weights()
        shapes = [tuple(v.shape) for v in values]
        expected = [tuple(w.shape) for w in dst[name].weights]
        if shapes != expected:
            raise CheckpointError(f"encoder layer {name!r}: source weights {shapes} vs U-Net {expected} "
                             "(different width or input channels?)")
        dst[name].set_weights(values)
    return len(src)


def _channels(y_true, y_pred):
    """(target, prediction) with matching channels; class-index targets become one-hot.

    For C > 1 the background channel is dropped: it covers most pixels and would dominate.
    """
    y_pred = ops.cast(y_pred, "float32")
    num_classes = y_pred.shape[-1]
    y_true = ops.cast(y_true, "float32")
    if num_classes > 1:
        if y_true.shape[-1] == 1:
            y_true = ops.one_hot(ops.cast(y_true[..., 0], "int32"), num_classes)
        return y_true[..., 1:], y_pred[..., 1:]
    return y_true, y_pred


def dice_coefficient(y_true, y_pred, smooth: float = 1.0):
    """Per-image Dice [B], averaged over foreground channels: (2|T∩P| + s) / (|T| + |P| + s).

    Soft when `y_pred` holds probabilities. `smooth` makes an empty mask predicted empty score 1.
    """
    t, p = _channels(y_true, y_pred)
    axes = (1, 2)
    inter = ops.sum(t * p, axis=axes)
    total = ops.sum(t, axis=axes) + ops.sum(p, axis=axes)
    return ops.mean((2.0 * inter + smooth) / (total + smooth), axis=-1)


class DiceLoss(keras.losses.Loss):
    """1 − soft Dice per image, plus `crossentropy_weight` × pixel cross-entropy.

    Dice alone ignores pixel calibration and gives weak gradients early on; the cross-entropy
    term (binary for 1 channel, categorical for C) fixes both.
    """

    def __init__(self, crossentropy_weight: float = 0.0, smooth: float = 1.0, name="dice_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.crossentropy_weight, self.smooth = crossentropy_weight, smooth

    def call(self, y_true, y_pred):
        loss = 1.0 - dice_coefficient(y_true, y_pred, self.smooth)
        if self.crossentropy_weight:
            y_pred = ops.cast(y_pred, "float32")
            if y_pred.shape[-1] == 1:
                ce = keras.losses.binary_crossentropy(ops.cast(y_true, "float32"), y_pred)
            else:
                labels = ops.cast(y_true, "int32")
                labels = labels[..., 0] if labels.shape[-1] == 1 else ops.argmax(labels, axis=-1)
                ce = keras.losses.sparse_categorical_crossentropy(labels, y_pred)
            loss = loss + self.crossentropy_weight * ops.mean(ce, axis=(1, 2))
        return loss

    def get_config(self):
        return {**super().get_config(), "crossentropy_weight": self.crossentropy_weight,
                "smooth": self.smooth}


class Dice(keras.metrics.Metric):
    """Mean per-image Dice of hard masks: thresholded sigmoid, or argmax of a softmax."""

    def __init__(self, threshold: float = 0.5, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.cast(y_pred, "float32")
        if y_pred.shape[-1] == 1:
            hard = ops.cast(y_pred >= self.threshold, "float32")
        else:
            hard = ops.one_hot(ops.argmax(y_pred, axis=-1), y_pred.shape[-1])
        dice = dice_coefficient(y_true, hard, smooth=1e-6)
        weight = ops.ones_like(dice) if sample_weight is None else ops.cast(sample_weight, "float32")
        self.total.assign_add(ops.sum(dice * weight))
        self.count.assign_add(ops.sum(weight))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}
