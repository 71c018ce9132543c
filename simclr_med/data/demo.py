"""Synthetic Derm-style cases for the demo: a task a small network can learn in minutes on a CPU.

Four classes told apart by shape or texture (a solid disk, a solid square, a striped patch, a
checkered patch) on a noisy background. Colours, positions, sizes, stripe angles and noise vary,
so colour is no shortcut; the images of one case share the lesion's colour and pattern scale but
differ in framing, like several photos of one lesion (what MICLe uses as positives). Written in
the generic layout (`cases.csv` + `images/`), mixing sizes (64–96 px), PNG and JPEG.
"""
from __future__ import annotations

import csv
import os
from io import BytesIO, StringIO

import numpy as np
from PIL import Image

from simclr_med import io

CLASSES = ("checker", "disk", "square", "stripes")


def _draw(kind: str, size: int, colour, scale: float, rng: np.random.Generator) -> np.ndarray:
    background = rng.uniform(40, 215, size=3)
    image = np.broadcast_to(background, (size, size, 3)).copy()
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, size=2) * size
    r = size * rng.uniform(0.18, 0.3)
    if kind == "disk":
        region = (x - cx) ** 2 + (y - cy) ** 2 < r ** 2
    else:
        region = (np.abs(x - cx) < r) & (np.abs(y - cy) < r)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        region &= np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / scale) > 0
    elif kind == "checker":
        region &= ((np.floor(x / scale) + np.floor(y / scale)) % 2) == 0
    image[region] = colour
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_demo_cases(directory, num_cases: int = 200, seed: int = 0):
    """Writes `num_cases` cases of 1–4 images (balanced classes) to `directory`, cases.csv last (what
    marks the folder complete in a bucket); deterministic. Returns `directory`."""
    root = os.fspath(directory)
    io.makedirs(os.path.join(root, "images"))
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_cases):
        kind = CLASSES[i % len(CLASSES)]
        colour = rng.uniform(0, 255, size=3)
        scale = rng.uniform(5, 9)
        meta = [f"FST{rng.integers(1, 7)}", ["F", "M"][int(rng.integers(2))], str(rng.integers(18, 90))]
        for k in range(int(rng.integers(1, 5))):
            size = int(rng.choice([64, 72, 80, 96]))
            png = rng.random() < 0.5
            rel = f"images/case{i:04d}_{k}.{'png' if png else 'jpg'}"
            image = BytesIO()
            Image.fromarray(_draw(kind, size, colour, scale, rng)).save(
                image, "PNG" if png else "JPEG", quality=90)
            io.write_bytes(os.path.join(root, rel), image.getvalue())
            rows.append([f"case{i:04d}", rel, kind, *meta])
    table = StringIO()
    writer = csv.writer(table)
    writer.writerow(["case_id", "image_path", "label", "skin_type", "sex", "age"])
    writer.writerows(rows)
    io.write_text(os.path.join(root, "cases.csv"), table.getvalue())
    return directory
