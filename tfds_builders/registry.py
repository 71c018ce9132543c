"""The dataset names users type, each a builder class and config; and building one from a manual download.

The one table of names: `python -m tfds_builders` and `simclr_med.data.datasets` both read it, so a new
dataset is added here once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_med.errors import DataError
from tfds_builders import common
from tfds_builders.chexpert_v1 import chexpert_v1_dataset_builder
from tfds_builders.derm_cases import derm_cases_dataset_builder
from tfds_builders.nih_chestxray14 import nih_chestxray14_dataset_builder


@dataclasses.dataclass(frozen=True)
class Dataset:
    builder: type  # the tfds.core.DatasetBuilder subclass
    config: str | None
    kind: str  # the shape of its examples: "derm" (cases of images, one label), "chexpert" or "nih"

    @property
    def tfds_name(self) -> str:
        return f"{self.builder.name}/{self.config}" if self.config else self.builder.name


DATASETS = {
    "derm_cases/generic": Dataset(derm_cases_dataset_builder.Builder, "generic", "derm"),
    "derm_cases/scin": Dataset(derm_cases_dataset_builder.Builder, "scin", "derm"),
    "derm_cases/ham10000": Dataset(derm_cases_dataset_builder.Builder, "ham10000", "derm"),
    "chexpert_v1": Dataset(chexpert_v1_dataset_builder.Builder, None, "chexpert"),
    "nih_chestxray14": Dataset(nih_chestxray14_dataset_builder.Builder, None, "nih"),
}
NAMES = tuple(DATASETS)


def dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    return DATASETS[name]


@contextlib.contextmanager
def _own_tempdir():
    """A temporary directory for Python's `tempfile`, removed afterwards: TFDS makes an empty one
    that it never removes each time it creates an unprepared builder (initialize_from_bucket)."""
    with tempfile.TemporaryDirectory(prefix="simclr_med_tfds_") as tmp:
        previous, tempfile.tempdir = tempfile.tempdir, tmp
        try:
            yield
        finally:
            tempfile.tempdir = previous


def check_data_dir(data_dir) -> None:
    """Through tf.io.gfile, as TFDS itself: data_dir may be a bucket (gs://); the manual dir is local."""
    if data_dir and tf.io.gfile.exists(os.fspath(data_dir)) and not tf.io.gfile.isdir(os.fspath(data_dir)):
        raise DataError(f"data_dir {os.fspath(data_dir)!r} is not a directory")


def builder_for(name: str, data_dir, manual_dir=None,
                pixel_bits: int | None = None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of `name`, built from `manual_dir` if data_dir has none yet.

    A build that fails leaves nothing that looks complete (TFDS writes to a temporary folder).
    With `manual_dir` given, an existing build must come from the same download (same index
    files), else this raises rather than silently using stale data. `pixel_bits` (--pixel_bits) is
    the depth of 16-bit PNGs, 0 per image (common.significant_bits); a build of such images made
    with another setting is refused, None accepts any.
    """
    tfds_name = dataset(name).tfds_name
    check_data_dir(data_dir)
    with _own_tempdir():
        builder = tfds.builder(tfds_name, data_dir=os.fspath(data_dir) if data_dir else None)
    if manual_dir and not Path(manual_dir).is_dir():
        raise DataError(f"manual_dir {os.fspath(manual_dir)!r} is not a directory")
    common.check_pixel_bits(builder, pixel_bits)
    if builder.is_prepared():
        if manual_dir and builder.info.metadata.get("source_sha256") != common.fingerprint(
                builder.source_files(manual_dir)):
            raise DataError(f"{builder.data_path} was built from a different download than {manual_dir}; "
                            f"use another data_dir, or delete {builder.data_path} to rebuild")
        return builder
    if not manual_dir:
        raise DataError(f"{name} is not built under {data_dir or tfds.core.constants.DATA_DIR}; pass "
                        f"manual_dir (the folder of the download): "
                        f"{' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}")
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    builder.pixel_bits = pixel_bits or 0
    builder.download_and_prepare(download_config=config)
    return builder
