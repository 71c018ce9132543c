"""TFDS builder for any segmentation set laid out as paired image and mask files.

Manual dir layout::

    images/<name>.png|.jpg|.jpeg   any size, grayscale / RGB / RGBA, 8 or 16 bit
    masks/<name>.png               same stem and size; 0/255 (binary) or class indices 0..C-1

Binary 0/255 masks are stored as 0/1, so every stored mask holds class indices. Splits
(70/15/15 % train/validation/test) come from a fixed-seed permutation of the sorted names, so
they are the same on every machine. Everything is checked before anything is written: a
missing mask, a size mismatch or an unreadable file fails with the file named.
"""
from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from simclr_med.errors import DataError
from tfds_builders import common

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_INSTRUCTIONS = """
Pass as manual_dir a folder with images/<name>.png|.jpg|.jpeg and masks/<name>.png (same stem and
size; masks 0/255 or class indices).
"""
SPLIT_SEED = 0
VALIDATION_FRACTION = 0.15
TEST_FRACTION = 0.15


class SegMasksError(DataError):
    """A problem with the manual dir's files; the message names the file."""


def _list(folder: str, extensions) -> dict[str, str]:
    """stem → file name for the image files of one folder (other files are ignored)."""
    if not os.path.isdir(folder):
        raise SegMasksError(f"{folder}: folder not found (expected images/ and masks/ in the manual dir)")
    found: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if name.startswith(".") or ext.lower() not in extensions:
            continue
        if stem in found:
            raise SegMasksError(f"{os.path.join(folder, name)}: two files named {stem!r} "
                                f"({found[stem]}, {name})")
        found[stem] = name
    return found


def pair_files(manual_dir: str) -> list[tuple[str, str, str]]:
    """Sorted (name, image path, mask path) triples; every image needs a mask and vice versa."""
    images = _list(os.path.join(manual_dir, "images"), IMAGE_EXTENSIONS)
    masks = _list(os.path.join(manual_dir, "masks"), (".png",))
    for stem in sorted(images.keys() - masks.keys()):
        raise SegMasksError(f"{os.path.join(manual_dir, 'images', images[stem])}: no mask masks/{stem}.png")
    for stem in sorted(masks.keys() - images.keys()):
        mask_path = os.path.join(manual_dir, "masks", masks[stem])
        raise SegMasksError(f"{mask_path}: no image images/{stem}.png|jpg")
    if len(images) < 3:
        raise SegMasksError(f"{manual_dir}: {len(images)} image/mask pairs; "
                            "need at least 3 for train/validation/test")
    return [(s, os.path.join(manual_dir, "images", images[s]), os.path.join(manual_dir, "masks", masks[s]))
            for s in sorted(images)]


def split_names(names: list[str]) -> dict[str, list[str]]:
    """Fixed-seed train/validation/test assignment; each split gets at least one name."""
    order = [names[i] for i in np.random.default_rng(SPLIT_SEED).permutation(len(names))]
    n_val = max(1, round(len(names) * VALIDATION_FRACTION))
    n_test = max(1, round(len(names) * TEST_FRACTION))
    return {
        "train": sorted(order[n_val + n_test:]),
        "validation": sorted(order[:n_val]),
        "test": sorted(order[n_val:n_val + n_test]),
    }


def _open(path: str, load: bool = True) -> Image.Image:
    """PIL image; `load=False` reads only the header (enough for the size check)."""
    try:
        img = Image.open(path)
        if load:
            img.load()
    except Exception as e:  # noqa: BLE001 — PIL raises many types for corrupt files
        raise SegMasksError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return img


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """16-bit and 32-bit integer images → 8 bit by their type's range (not per-image contrast)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu" and array.max(initial=0) > 255:
        return (array.astype(np.float64) / 257.0).clip(0, 255).round().astype(np.uint8)
    return array.clip(0, 255).astype(np.uint8)


def read_image(path: str, image_log: common.ImageLog | None = None) -> np.ndarray:
    """[H, W, 3] uint8 from any grayscale / RGB / RGBA / palette / 16-bit file.

    A 16-bit PNG is first rescaled by the bits its samples use (common.prepare_image: a 12-bit
    export would otherwise come out at 1/16 of its brightness). EXIF orientation is not applied:
    the mask, drawn on the stored pixels, would no longer match.
    """
    img = _open(path)
    if img.format == "PNG":
        with open(path, "rb") as f:
            data = f.read()
        stored = common.prepare_image(data, path, os.path.basename(path))
        if image_log is not None:
            image_log.add(os.path.basename(path), stored)
        if stored.data is not data:
            img = Image.open(io.BytesIO(stored.data))
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.repeat(gray[..., None], 3, axis=-1)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def read_mask(path: str) -> np.ndarray:
    """[H, W, 1] uint8 class indices; a mask of only 0 and 255 becomes 0/1."""
    img = _open(path)
    array = np.asarray(img)  # palette ("P") masks keep their indices, as class-index masks should
    if array.ndim == 3:
        if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, min(3, array.shape[-1]))):
            raise SegMasksError(f"{path}: colour mask; save one channel of class indices (or 0/255)")
        array = array[..., 0]
    if array.dtype.kind == "f" or array.max(initial=0) > 255:
        raise SegMasksError(f"{path}: mask values must be 0/255 or class indices below 256")
    array = array.astype(np.uint8)
    if np.isin(array, (0, 255)).all():
        array = (array // 255).astype(np.uint8)
    return array[..., None]


class SegMasks(tfds.core.GeneratorBasedBuilder):
    """Paired images and masks from a manual dir."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "16-bit PNGs read by their significant bits (metadata pixel_bits)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Image segmentation pairs (images/<name>, masks/<name>.png) from a manual dir.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                "name": tfds.features.Text(),
            }),
            supervised_keys=("image", "mask"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        manual_dir = os.fspath(common.manual_dir_of(dl_manager, _INSTRUCTIONS))
        pairs = pair_files(manual_dir)
        checked = {name: (image, mask) for name, image, mask in pairs}
        for image_path, mask_path in checked.values():  # fail before writing anything
            image_size, mask_size = _open(image_path, False).size, _open(mask_path, False).size
            if image_size != mask_size:
                raise SegMasksError(f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image "
                                    f"{os.path.basename(image_path)} is {image_size[0]}x{image_size[1]}")
        self.image_log = common.ImageLog()
        self.info.metadata.update(self.image_log.metadata())
        return {
            split: self._generate_examples(split, [(n, *checked[n]) for n in names])
            for split, names in split_names(sorted(checked)).items()
        }

    def _generate_examples(self, split, pairs):
        for name, image_path, mask_path in pairs:
            image = read_image(image_path, self.image_log)
            yield name, {"image": image, "mask": read_mask(mask_path), "name": name}
        self.image_log.record(self.info.metadata, f"seg_masks {split}")
