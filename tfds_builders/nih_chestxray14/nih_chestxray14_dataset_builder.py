"""NIH ChestX-ray14: one example per image, 14 findings plus the 5 CheXpert tasks mapped.

Splits follow the official patient-level lists: `test` = test_list.txt; `train` and `validation`
divide train_val_list.txt by patient (validation ≈ 10% of its images, fixed seed).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from simclr_med.errors import DataError
from tfds_builders import common
from tfds_builders.cxr_labels import CHEXPERT_TASKS, NIH_FOR_CHEXPERT, NIH_LABELS

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
# The raw header: the commas inside brackets make 11 fields.
HEADER = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
          "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]")
LISTS = {"train_val": "train_val_list.txt", "test": "test_list.txt"}
VALIDATION_FRACTION = 0.1
SPLIT_SEED = 0
MAX_AGE = 120  # old CSVs hold ages such as 148 or 412: recorded as unknown
METADATA_KEYS = ("sex", "age", "view", "follow_up")
log = logging.getLogger(__name__)
_IMAGE = re.compile(r"(\d{8})_\d{3}\.png")
_AGE = re.compile(r"0*(\d+)\s*([YMD]?)", re.IGNORECASE)

_INSTRUCTIONS = """
Pass the folder of the NIH download as manual_dir: Data_Entry_2017_v2020.csv (or Data_Entry_2017.csv),
train_val_list.txt, test_list.txt and the PNGs in images/ or images_001/images/ ... images_012/images/.
"""


@dataclasses.dataclass
class Row:
    image_id: str
    path: Path
    where: str
    patient_id: str
    labels: np.ndarray
    metadata: dict


def parse_age(text: str, where: str) -> str:
    """Years as text ('058Y' → '58', '6M' → '0'); '' when implausible (> MAX_AGE)."""
    match = _AGE.fullmatch(text)
    if not match:
        raise DataError(f"{where}: Patient Age {text!r} is not an age such as 58 or 058Y")
    n, unit = int(match.group(1)), match.group(2).upper()
    years = n // 12 if unit == "M" else n // 365 if unit == "D" else n
    return str(years) if years <= MAX_AGE else ""


def _findings(text: str) -> set[str]:
    """The findings of a Finding Labels cell, in any order."""
    return {f.strip() for f in text.split("|")}


def parse_findings(text: str, where: str) -> np.ndarray:
    found = _findings(text)
    labels = np.zeros(len(NIH_LABELS), np.float32)
    if found == {"No Finding"}:
        return labels
    for f in found:
        if f not in NIH_LABELS:
            raise DataError(f"{where}: unknown finding {f!r} in {text!r}; "
                            f"known: No Finding, {', '.join(NIH_LABELS)}")
        labels[NIH_LABELS.index(f)] = 1.0
    return labels


def index_images(manual_dir: Path) -> dict[str, Path]:
    """File name → path over images/ and images_NNN/images/."""
    files: dict[str, Path] = {}
    folders = [manual_dir / "images"] + sorted(manual_dir.glob("images_*/images"))
    for folder in folders:
        if folder.is_dir():
            with os.scandir(folder) as it:
                for entry in sorted(it, key=lambda e: e.name):
                    files.setdefault(entry.name, folder / entry.name)
    if not files:
        raise DataError(f"no NIH images under {manual_dir}: expected images/ or images_001/images/ ...")
    return files


def _read_list(path: Path) -> dict[str, int]:
    names = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if name:
            if name in names:
                raise DataError(f"{path.name} line {line_no}: {name!r} is already at line {names[name]}")
            names[name] = line_no
    return names


def source_files(manual_dir: Path) -> list[Path]:
    """The data entry CSV and the two split lists."""
    csv_path = common.first_existing(manual_dir, CSV_NAMES, "NIH ChestX-ray14 data entry CSV")
    lists = [common.first_existing(manual_dir, [v], "official split list") for v in LISTS.values()]
    return [csv_path] + lists


def read_rows(manual_dir: Path) -> tuple[list[Row], dict[str, str], list[str]]:
    """Checked rows, image → list name ('train_val' / 'test'), and notes for the user."""
    csv_path = source_files(manual_dir)[0]
    lists = {k: _read_list(manual_dir / v) for k, v in LISTS.items()}
    files = index_images(manual_dir)
    rows, seen, list_of, implausible = [], {}, {}, 0
    for row, r in common.read_csv(csv_path, header=HEADER):
        where = f"{csv_path.name} row {row}"
        name = r["Image Index"]
        match = _IMAGE.fullmatch(name)
        if not match:
            raise DataError(f"{where}: Image Index {name!r} is not of the form NNNNNNNN_NNN.png")
        if name in seen:
            first_row, first = seen[name]
            if _findings(first) != _findings(r["Finding Labels"]):
                raise DataError(f"{where}: {name!r} is listed twice with different findings: {first!r} (row "
                                f"{first_row}) vs {r['Finding Labels']!r}")
            raise DataError(f"{where}: duplicated row, {name!r} is already at row {first_row}")
        seen[name] = row, r["Finding Labels"]
        patient = match.group(1)
        if r["Patient ID"] and (not r["Patient ID"].isdigit() or int(r["Patient ID"]) != int(patient)):
            raise DataError(f"{where}: Patient ID {r['Patient ID']!r} does not match image {name!r}")
        in_lists = [k for k, names in lists.items() if name in names]
        if len(in_lists) != 1:
            raise DataError(f"{where}: image {name!r} is in {len(in_lists)} of {', '.join(LISTS.values())}; "
                            f"expected exactly one")
        list_of[name] = in_lists[0]
        if name not in files:
            raise DataError(f"{where}: image {name!r} not found in images/ or images_NNN/images/ "
                            f"under {manual_dir}")
        age = parse_age(r["Patient Age"], where)
        implausible += age == ""
        rows.append(Row(name, files[name], where, patient, parse_findings(r["Finding Labels"], where),
                        {"sex": r["Patient Gender"], "age": age, "view": r["View Position"],
                         "follow_up": r["Follow-up #"]}))
    if not rows:
        raise DataError(f"{csv_path.name}: no rows, only the header; expected one row per image")
    for key, names in lists.items():
        for name, line_no in names.items():
            if name not in seen:
                raise DataError(f"{LISTS[key]} line {line_no}: {name!r} is not in {csv_path.name}")
    notes = [f"{implausible} row(s) of {csv_path.name} have an implausible Patient Age (> {MAX_AGE}); "
             f"kept with age unknown"] if implausible else []
    return rows, list_of, notes


def assign_splits(rows: list[Row], list_of: dict[str, str]) -> dict[str, list[Row]]:
    test_patients = {r.patient_id for r in rows if list_of[r.image_id] == "test"}
    sizes: dict[str, int] = {}
    for r in rows:
        if list_of[r.image_id] == "train_val":
            if r.patient_id in test_patients:
                raise DataError(f"{r.where}: patient {r.patient_id} is in both {LISTS['train_val']} and "
                                f"{LISTS['test']}; the official split is by patient")
            sizes[r.patient_id] = sizes.get(r.patient_id, 0) + 1
    fractions = {"train": 1 - VALIDATION_FRACTION, "validation": VALIDATION_FRACTION}
    by_patient = common.split_groups(sizes, fractions, SPLIT_SEED)
    common.check_splits_nonempty(by_patient, ["train", "validation"], "patients", LISTS["train_val"])
    if not test_patients:
        raise DataError(f"{LISTS['test']}: split test would be empty")
    splits = {s: [r for r in rows if list_of[r.image_id] == "train_val" and by_patient[r.patient_id] == s]
              for s in ("train", "validation")}
    splits["test"] = [r for r in rows if list_of[r.image_id] == "test"]
    return splits


class Builder(tfds.core.GeneratorBasedBuilder):
    """NIH ChestX-ray14 with its 14 findings and the CheXpert tasks they correspond to."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "16-bit PNGs stored rescaled from their significant bits, EXIF-rotated images "
                              "stored upright (metadata pixel_bits, exif_upright)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    pixel_bits = 0  # --pixel_bits, set by tfds_builders.registry before a build (common.significant_bits)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="NIH ChestX-ray14: encoded radiograph, 14 multi-hot findings (NIH order), "
                        "the 5 CheXpert tasks mapped (Pleural Effusion = Effusion), patient id, view, "
                        "demographics.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "image_id": tfds.features.Text(),
                "patient_id": tfds.features.Text(),
                "labels": tfds.features.Tensor(shape=(len(NIH_LABELS),), dtype=np.float32),
                "chexpert_labels": tfds.features.Tensor(shape=(len(CHEXPERT_TASKS),), dtype=np.float32),
                "metadata": tfds.features.FeaturesDict({k: tfds.features.Text() for k in METADATA_KEYS}),
            }),
            homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
            metadata=tfds.core.MetadataDict(),
        )

    def source_files(self, manual_dir) -> list:
        """The download's index files; their fingerprint tells a rebuilt download apart."""
        return source_files(Path(manual_dir))

    def _split_generators(self, dl_manager):
        manual_dir = common.manual_dir_of(dl_manager, _INSTRUCTIONS)
        rows, list_of, notes = read_rows(manual_dir)
        for note in notes:
            log.warning("nih_chestxray14: %s", note)
        self.image_log = common.ImageLog(self.pixel_bits)
        self.info.metadata.update(source_sha256=common.fingerprint(self.source_files(manual_dir)),
                                  notes=notes, **self.image_log.metadata())
        return {split: self._generate_examples(split=split, rows=rs)
                for split, rs in assign_splits(rows, list_of).items()}

    def _generate_examples(self, split, rows):
        """Every image is a labelled example, so an unreadable one stops the build."""
        columns = [NIH_LABELS.index(NIH_FOR_CHEXPERT[t]) for t in CHEXPERT_TASKS]
        images = common.read_images(((r.path, r.where, r.image_id) for r in rows), self.pixel_bits)
        for r, data in zip(rows, images):
            if isinstance(data, common.UnreadableImage):
                raise data
            self.image_log.add(r.image_id, data)
            yield r.image_id, {"image": data.data, "image_id": r.image_id, "patient_id": r.patient_id,
                               "labels": r.labels, "chexpert_labels": r.labels[columns],
                               "metadata": r.metadata}
        self.image_log.record(self.info.metadata, f"nih_chestxray14 {split}")
