"""The SimCLR projection head.

Hidden layers are Dense (no bias) → BN → ReLU at the encoder's width; the last layer is
Dense → BN without centring (as in SimCLR v2), giving the `proj_out_dim`-d vector the
contrastive loss sees. Downstream tasks use the encoder output, not this head.

`num_layers` counts the Dense layers, as SimCLR's --num_proj_layers does: 2 is the paper's "two
fully connected layers" (SimCLR v1's head), 3 SimCLR v2's default.
"""
from __future__ import annotations

import keras
from keras import layers


def build_projection_head(
    input_dim: int, *, num_layers: int = 3, out_dim: int = 128, sync_bn: bool = False,
    name: str = "projection_head",
) -> keras.Model:
    inputs = keras.Input((input_dim,), name="representation")
    x = inputs
    for i in range(num_layers):
        last = i == num_layers - 1
        x = layers.Dense(out_dim if last else input_dim, use_bias=False, name=f"dense{i}")(x)
        x = layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, center=not last, synchronized=sync_bn, name=f"bn{i}")(x)
        if not last:
            x = layers.ReLU(name=f"relu{i}")(x)
    return keras.Model(inputs, x, name=name)
