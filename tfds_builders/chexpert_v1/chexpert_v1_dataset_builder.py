"""CheXpert v1.0 (small or full): one example per image with the 14 raw labels.

Splits: `valid` is the official valid.csv; `train`/`validation`/`test` re-split train.csv by
patient in the paper's proportions (167,429 / 22,240 / 33,745 images: 75 / 10 / 15%).
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from simclr_med.errors import DataError
from tfds_builders import common
from tfds_builders.cxr_labels import CHEXPERT_HEADER, CHEXPERT_LABELS

ROOTS = ("CheXpert-v1.0-small", "CheXpert-v1.0")
# The paper prints 67,429 training images: the three then add up to 100,000 fewer than train.csv's
# 223,414, which 167,429 makes up exactly (and 75 / 10 / 15% instead of 54.6 / 18.0 / 27.3%).
SPLIT_IMAGES = {"train": 167_429, "validation": 22_240, "test": 33_745}
SPLIT_SEED = 0
METADATA_KEYS = ("sex", "age", "view", "ap_pa")
_LABEL_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": math.nan}
_PATH = re.compile(r"(patient\d+)/(study\d+)/[^/]+$")

_INSTRUCTIONS = """
Pass the folder that holds CheXpert-v1.0-small/ (or CheXpert-v1.0/) as manual_dir, or that folder
itself (mirrors that unpack without the root folder): train.csv, valid.csv, train/, valid/.
"""


@dataclasses.dataclass
class Row:
    image_id: str  # the Path column, as written
    path: Path
    where: str
    patient_id: str
    study_id: str
    raw: np.ndarray
    metadata: dict


def locate(manual_dir: Path) -> Path:
    """The folder holding train.csv: `<manual>/CheXpert-v1.0-small`, `…/CheXpert-v1.0` or `<manual>`."""
    for root in ROOTS + ("",):
        if (manual_dir / root / "train.csv").is_file():
            return manual_dir / root
    raise DataError(f"CheXpert train.csv not found under {manual_dir}: looked for "
                    f"{', '.join(f'{r}/train.csv' for r in ROOTS)}, train.csv")


def _image_path(manual_dir: Path, csv_dir: Path, rel: str, where: str) -> Path:
    """`Path` is relative to the folder above CheXpert-v1.0*/; mirrors drop that root folder, from the
    files or from the CSV, so the path under the CSV's folder is tried too."""
    path = common.inside(manual_dir, rel, where)
    parts = path.relative_to(manual_dir).parts
    if len(parts) > 1 and parts[0].startswith("CheXpert-v1.0"):
        parts = parts[1:]
    candidates = (path, csv_dir.joinpath(*parts))
    for candidate in candidates:
        found = common.find_file(candidate)
        if found:
            return found
    raise common.missing_image(next((c for c in candidates if c.is_dir()), path), where, rel, manual_dir)


def read_rows(manual_dir: Path, csv_dir: Path, name: str) -> list[Row]:
    """Checked rows of train.csv or valid.csv (exact 19-column header)."""
    rows, seen = [], {}
    for row, r in common.read_csv(csv_dir / name, header=CHEXPERT_HEADER):
        where = f"{name} row {row}"
        rel = r["Path"]
        match = _PATH.search(rel)
        if not match:
            raise DataError(f"{where}: Path {rel!r} is not of the form <split>/patientN/studyN/<view>.jpg")
        if rel in seen:
            raise DataError(f"{where}: duplicated row, Path {rel!r} is already at row {seen[rel]}")
        seen[rel] = row
        raw = np.empty(len(CHEXPERT_LABELS), np.float32)
        for i, col in enumerate(CHEXPERT_LABELS):
            if r[col] not in _LABEL_VALUES:
                raise DataError(f"{where}: column {col!r} has {r[col]!r}; expected 1.0, 0.0, -1.0 or blank")
            raw[i] = _LABEL_VALUES[r[col]]
        metadata = {"sex": r["Sex"], "age": r["Age"], "view": r["Frontal/Lateral"], "ap_pa": r["AP/PA"]}
        rows.append(Row(rel, _image_path(manual_dir, csv_dir, rel, where), where, match.group(1),
                        f"{match.group(1)}/{match.group(2)}", raw, metadata))
    if not rows:
        raise DataError(f"{csv_dir / name}: no rows")
    return rows


def assign_splits(train_rows: list[Row], valid_rows: list[Row]) -> dict[str, list[Row]]:
    """Patient-level re-split of train.csv; valid.csv kept as `valid`."""
    sizes: dict[str, int] = {}
    for r in train_rows:
        sizes[r.patient_id] = sizes.get(r.patient_id, 0) + 1
    for r in valid_rows:
        if r.patient_id in sizes:
            raise DataError(f"{r.where}: patient {r.patient_id} is also in train.csv; the official splits "
                            f"share no patient")
    by_patient = common.split_groups(sizes, SPLIT_IMAGES, SPLIT_SEED)
    common.check_splits_nonempty(by_patient, list(SPLIT_IMAGES), "patients", "train.csv")
    splits = {s: [r for r in train_rows if by_patient[r.patient_id] == s] for s in SPLIT_IMAGES}
    splits["valid"] = valid_rows
    return splits


class Builder(tfds.core.GeneratorBasedBuilder):
    """CheXpert v1.0 chest radiographs with raw labels, for any uncertainty policy at load time."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Re-split 75 / 10 / 15% (the paper's sizes, its 67,429 read as 167,429).",
                     "1.2.0": "16-bit PNGs stored rescaled from their significant bits, EXIF-rotated images "
                              "stored upright (metadata pixel_bits, exif_upright)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    pixel_bits = 0  # --pixel_bits, set by tfds_builders.registry before a build (common.significant_bits)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="CheXpert v1.0: encoded radiograph, 14 raw labels (1, 0, -1 uncertain, NaN blank) "
                        "in CheXpert column order, patient/study ids, view and demographics.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "image_id": tfds.features.Text(),
                "patient_id": tfds.features.Text(),
                "study_id": tfds.features.Text(),
                "raw_labels": tfds.features.Tensor(shape=(len(CHEXPERT_LABELS),), dtype=np.float32),
                "metadata": tfds.features.FeaturesDict({k: tfds.features.Text() for k in METADATA_KEYS}),
            }),
            homepage="https://stanfordmlgroup.github.io/competitions/chexpert/",
            metadata=tfds.core.MetadataDict(),
        )

    def source_files(self, manual_dir) -> list:
        """The download's index files; their fingerprint tells a rebuilt download apart."""
        csv_dir = locate(Path(manual_dir))
        return [csv_dir / "train.csv",
                common.first_existing(csv_dir, ["valid.csv"], "official validation set")]

    def _split_generators(self, dl_manager):
        manual_dir = common.manual_dir_of(dl_manager, _INSTRUCTIONS)
        sources = self.source_files(manual_dir)
        csv_dir = sources[0].parent
        train = read_rows(manual_dir, csv_dir, "train.csv")
        valid = read_rows(manual_dir, csv_dir, "valid.csv")
        self.image_log = common.ImageLog(self.pixel_bits)
        self.info.metadata.update(source_sha256=common.fingerprint(sources), **self.image_log.metadata())
        return {split: self._generate_examples(split=split, rows=rows)
                for split, rows in assign_splits(train, valid).items()}

    def _generate_examples(self, split, rows):
        """Every image is a labelled example, so an unreadable one stops the build."""
        images = common.read_images(((r.path, r.where, r.image_id) for r in rows), self.pixel_bits)
        for r, data in zip(rows, images):
            if isinstance(data, common.UnreadableImage):
                raise data
            self.image_log.add(r.image_id, data)
            yield r.image_id, {"image": data.data, "image_id": r.image_id, "patient_id": r.patient_id,
                               "study_id": r.study_id, "raw_labels": r.raw, "metadata": r.metadata}
        self.image_log.record(self.info.metadata, f"chexpert_v1 {split}")
