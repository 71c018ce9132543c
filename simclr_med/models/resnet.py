"""ResNet-v1 encoders (depth 18–200, width ×1–×4) as used by SimCLR.

The encoder is a functional `keras.Model` that maps images in [0, 1] to the globally pooled
representation. Strided convolutions pad as SimCLR's (`conv.fixed_padding`), so the released
SimCLR models (`simclr_tf1`) compute here what they computed there. Layer names are stable
(`stem_conv`, `stage3_block2_out`, …) so that a U-Net can tap intermediate stages and weights can
be moved between pretraining, fine-tuning and export.
"""
from __future__ import annotations

import keras
from keras import layers

from simclr_med.models import batchnorm, conv

# depth -> (block kind, blocks per stage)
_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}

# SimCLR's BatchNorm settings: momentum 0.9, epsilon 1e-5.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


def stage_output_names(depth: int) -> list[str]:
    """Names of the layers that end each resolution level (strides 2, 4, 8, 16, 32)."""
    blocks = _SPECS[depth][1]
    return ["stem_relu"] + [f"stage{s + 1}_block{n}_out" for s, n in enumerate(blocks)]


def feature_dim(depth: int, width_multiplier: int) -> int:
    kind = _SPECS[depth][0]
    return 512 * width_multiplier * (4 if kind == "bottleneck" else 1)


def _bn(name, sync_bn, zero_gamma=False):
    return batchnorm.BatchNormalization(
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPSILON,
        gamma_initializer="zeros" if zero_gamma else "ones",
        synchronized=sync_bn,
        name=name,
    )


def _conv(filters, kernel, strides, name, winograd):
    return conv.Conv2D(
        filters, kernel, strides=strides, padding="same", use_bias=False,
        kernel_initializer="he_normal", name=name, winograd=winograd, fixed_padding=True,
    )


def _block(x, filters, strides, kind, name, sync_bn, zero_init_residual, winograd):
    """One residual block; `filters` is the bottleneck width (output is 4× for bottleneck)."""
    out_filters = filters * 4 if kind == "bottleneck" else filters
    shortcut = x
    if strides != 1 or x.shape[-1] != out_filters:
        shortcut = _conv(out_filters, 1, strides, f"{name}_proj_conv", winograd)(x)
        shortcut = _bn(f"{name}_proj_bn", sync_bn)(shortcut)

    if kind == "bottleneck":
        y = _conv(filters, 1, 1, f"{name}_conv1", winograd)(x)
        y = layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1", sync_bn)(y))
        y = _conv(filters, 3, strides, f"{name}_conv2", winograd)(y)
        y = layers.ReLU(name=f"{name}_relu2")(_bn(f"{name}_bn2", sync_bn)(y))
        y = _conv(out_filters, 1, 1, f"{name}_conv3", winograd)(y)
        y = _bn(f"{name}_bn3", sync_bn, zero_gamma=zero_init_residual)(y)
    else:
        y = _conv(filters, 3, strides, f"{name}_conv1", winograd)(x)
        y = layers.ReLU(name=f"{name}_relu1")(_bn(f"{name}_bn1", sync_bn)(y))
        y = _conv(out_filters, 3, 1, f"{name}_conv2", winograd)(y)
        y = _bn(f"{name}_bn2", sync_bn, zero_gamma=zero_init_residual)(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def build_resnet(
    depth: int = 50,
    width_multiplier: int = 1,
    *,
    sync_bn: bool = False,
    zero_init_residual: bool = True,
    winograd: bool = True,
    input_shape=(None, None, 3),
    name: str = "encoder",
) -> keras.Model:
    """ResNet-v1 trunk + global average pooling → (batch, feature_dim(depth, width)).

    `winograd`: let conv.py run wide 3×3 convolutions as Winograd convolutions on CPU (same maths).
    """
    if depth not in _SPECS:
        raise ValueError(f"resnet depth {depth} is not one of {sorted(_SPECS)}")
    kind, blocks = _SPECS[depth]
    width = 64 * width_multiplier

    inputs = keras.Input(shape=input_shape, name="image")
    x = _conv(width, 7, 2, "stem_conv", winograd)(inputs)
    x = layers.ReLU(name="stem_relu")(_bn("stem_bn", sync_bn)(x))
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, num_blocks in enumerate(blocks):
        for b in range(num_blocks):
            strides = 2 if (b == 0 and stage > 0) else 1
            x = _block(x, width * 2**stage, strides, kind, f"stage{stage + 1}_block{b + 1}",
                       sync_bn, zero_init_residual, winograd)
    outputs = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, outputs, name=name)
