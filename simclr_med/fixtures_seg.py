"""Tiny synthetic segmentation set in the `seg_masks` manual-dir layout (tests and demos).

Each image is a bright random ellipse on dark noise; its mask is that ellipse (0/255), so a
model — or a test of joint image/mask augmentation — can check that the two stay aligned.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw


def write_seg_fixture(root: str, num_images: int = 12, size: int = 48, seed: int = 0) -> str:
    """Write `images/` and `masks/` under `root` and return `root`.

    Images alternate PNG and JPEG and every third one is wider than tall, so the pipeline's
    decoding and resizing paths are exercised.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for i in range(num_images):
        width, height = (size * 3 // 2, size) if i % 3 == 2 else (size, size)
        cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        rx, ry = rng.uniform(0.12, 0.28) * width, rng.uniform(0.12, 0.28) * height
        box = (cx - rx, cy - ry, cx + rx, cy + ry)

        pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
        ImageDraw.Draw(image).ellipse(box, fill=tuple(int(v) for v in rng.integers(190, 256, size=3)))
        mask = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask).ellipse(box, fill=255)

        name = f"case{i:03d}"
        ext = ".png" if i % 2 == 0 else ".jpg"
        image.save(os.path.join(root, "images", name + ext), quality=95)
        mask.save(os.path.join(root, "masks", name + ".png"))
    return root
