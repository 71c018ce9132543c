"""Encoder weights from a google-research/simclr TF1 checkpoint (the released SimCLR v1/v2 models).

The paper starts from SimCLR models pretrained on ImageNet; Chen et al. released them as
name-based TF1 checkpoints (`model.ckpt-<step>.{index,data-*}`). `tf.layers` named every
convolution `conv2d_<k>` and every BatchNorm `batch_normalization_<k>` in creation order, under
`base_model/` (`ema_model/base_model/` for the moving-average copy): the stem, then for each block
its projection shortcut (first block of a stage) and its convolutions in order. That is the order
of `resnet.build_resnet`'s layer names, so the k-th convolution here is `conv2d_<k>` there. Every
shape is checked, so another depth or width, or a selective-kernel (`_sk1`) model, fails with a
message instead of loading into the wrong layers. (SimCLR's ResNet-18/34, never released, have a
projection in their first block where `build_resnet` has none: the count check refuses them too.)

`build_resnet` pads strided convolutions as SimCLR does (`conv.fixed_padding`), so the imported
encoder computes the original network's features (tests/train/test_simclr_tf1.py checks this against
SimCLR's network written from its code).
"""
from __future__ import annotations

import re

import keras
import tensorflow as tf

from simclr_med.errors import CheckpointError

PREFIXES = ("base_model/", "ema_model/base_model/")  # the trained weights first, then their moving average
_BN_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_CONV_NAME = re.compile(r"stage(\d+)_block(\d+)_(?:proj_conv|conv(\d+))$")
_TF1_CONV_KEY = re.compile(r"conv2d(?:_\d+)?/kernel")  # fullmatch


def base_prefix(reader) -> str | None:
    """The variable scope of the encoder in a SimCLR TF1 checkpoint; None for any other checkpoint."""
    keys = reader.get_variable_to_shape_map()
    return next((p for p in PREFIXES if p + "conv2d/kernel" in keys), None)


def conv_bn_pairs(encoder: keras.Model) -> list[tuple[keras.layers.Layer, keras.layers.Layer]]:
    """(convolution, its BatchNorm) in SimCLR's creation order: stem, then per block projection,
    conv1, conv2, …"""
    def order(layer):
        if layer.name == "stem_conv":
            return (0, 0, 0)
        stage, block, conv = _CONV_NAME.match(layer.name).groups()
        return (int(stage), int(block), int(conv or 0))  # the projection (no number) comes first

    convs = sorted((layer for layer in encoder.layers
                    if layer.name == "stem_conv" or _CONV_NAME.match(layer.name)), key=order)
    return [(c, encoder.get_layer(c.name.replace("conv", "bn"))) for c in convs]


def load(encoder: keras.Model, path: str, reader, prefix: str) -> None:
    """Assigns the checkpoint's convolutions and BatchNorms (in `prefix`) to `encoder`'s."""
    keys = reader.get_variable_to_shape_map()
    pairs = conv_bn_pairs(encoder)
    found = sum(1 for k in keys if k.startswith(prefix) and _TF1_CONV_KEY.fullmatch(k[len(prefix):]))
    if found != len(pairs):
        raise CheckpointError(
            f"--checkpoint={path}: SimCLR checkpoint with {found} convolutions under {prefix!r}; "
            f"this encoder has {len(pairs)} (--resnet_depth/--width_multiplier must match; "
            f"selective-kernel models, `_sk1`, are not supported)")
    sources = []
    for k, (conv, bn) in enumerate(pairs):
        suffix = f"_{k}" if k else ""
        sources.append((conv.kernel, f"{prefix}conv2d{suffix}/kernel"))
        sources += [(getattr(bn, w), f"{prefix}batch_normalization{suffix}/{w}") for w in _BN_WEIGHTS]
    _assign_all(sources, reader, path, "--resnet_depth/--width_multiplier must match the checkpoint")


def load_head(head: keras.Model, path: str, reader, prefix: str) -> bool:
    """Assigns the checkpoint's projection head (`head_contrastive/nl_<j>`, beside the encoder in
    `prefix`) to `head`, `heads.build_projection_head`'s layers in the same order; False when the
    checkpoint has none. v1 models have 2 layers, v2 models 3."""
    keys = reader.get_variable_to_shape_map()
    scope = prefix.replace("base_model/", "head_contrastive/")
    found = sum(1 for k in keys if re.fullmatch(re.escape(scope) + r"nl_\d+/dense/kernel", k))
    if not found:
        return False
    layers = sum(1 for layer in head.layers if isinstance(layer, keras.layers.Dense))
    if found != layers:
        raise CheckpointError(
            f"--checkpoint={path}: its projection head has {found} layers, this one {layers} "
            f"(--num_proj_layers={found}, or --nocheckpoint_head for a fresh head)")
    sources = []
    for j in range(layers):
        sources.append((head.get_layer(f"dense{j}").kernel, f"{scope}nl_{j}/dense/kernel"))
        bn_weights = head.get_layer(f"bn{j}").weights
        sources += [(w, f"{scope}nl_{j}/batch_normalization/{w.name}") for w in bn_weights]
    _assign_all(sources, reader, path, "--proj_out_dim must match the checkpoint, or --nocheckpoint_head")
    return True


def _assign_all(sources, reader, path: str, hint: str) -> None:
    """Assigns each (variable, checkpoint key) once all are found with the right shapes, so an error
    leaves the model as it was."""
    keys = reader.get_variable_to_shape_map()
    for variable, key in sources:
        if key not in keys:
            raise CheckpointError(f"--checkpoint={path}: has no {key} (for {variable.path})")
        if tuple(keys[key]) != tuple(variable.shape):
            raise CheckpointError(
                f"--checkpoint={path}: {key} has shape {keys[key]}, but {variable.path} of this model is "
                f"{tuple(variable.shape)} ({hint})")
    for variable, key in sources:
        variable.assign(tf.convert_to_tensor(reader.get_tensor(key), variable.dtype))
