"""Derm-style bagged cases: one example per case holding all of its images (1–6 in the paper).

Images stay encoded (JPEG/PNG bytes as found in the download) because they differ in size and
mode within a case and because MICLe decodes only the two it samples.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from simclr_med.errors import DataError
from tfds_builders import common
from tfds_builders.derm_cases import layouts

log = logging.getLogger(__name__)

SPLITS = {"train": 0.7, "validation": 0.1, "test": 0.2}
_VERSION = "1.1.0"  # every config's
_RELEASE_NOTES = {"1.0.0": "Initial release.",
                  "1.1.0": "16-bit PNGs stored rescaled from their significant bits, EXIF-rotated images "
                           "stored upright (metadata pixel_bits, exif_upright)."}
SPLIT_SEED = 0

_INSTRUCTIONS = """
Pass the folder of your download as manual_dir, unchanged:
* generic: `cases.csv` (columns case_id,image_path,label and optionally skin_type,sex,age; one row
  per image; image_path relative to manual_dir) next to the images it names.
* scin: the SCIN bucket's `dataset/` folder (scin_cases.csv, scin_labels.csv, images/) or its parent
  (gs://dx-scin-public-data).
* ham10000: HAM10000_metadata.csv with HAM10000_images_part_1/ and HAM10000_images_part_2/.
"""


class DermConfig(tfds.core.BuilderConfig):
    """A layout and its label space (`class_names=None`: the sorted labels found in the CSV)."""

    def __init__(self, *, layout: str, class_names=None, **kwargs):
        super().__init__(version=_VERSION, release_notes=_RELEASE_NOTES, **kwargs)
        self.layout = layout
        self.class_names = tuple(class_names) if class_names else None


class Builder(tfds.core.GeneratorBasedBuilder):
    """Derm-style cases from a generic CSV, SCIN or HAM10000 manual download."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = _RELEASE_NOTES
    MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTRUCTIONS
    pixel_bits = 0  # --pixel_bits, set by tfds_builders.registry before a build (common.significant_bits)
    BUILDER_CONFIGS = [
        DermConfig(name="generic", layout="generic",
                   description="cases.csv: one row per image with case_id, image_path, label."),
        DermConfig(name="scin", layout="scin", class_names=layouts.DERM_CONDITIONS + (layouts.OTHER,),
                   description="SCIN; label = argmax of weighted_skin_condition_label, "
                               "26 conditions + Other."),
        DermConfig(name="ham10000", layout="ham10000", class_names=layouts.HAM_DX,
                   description="HAM10000; one case per lesion_id, label = dx."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        keys = layouts.METADATA_KEYS[self.builder_config.layout]
        names = self.builder_config.class_names
        return tfds.core.DatasetInfo(
            builder=self,
            description="Cases of 1 or more encoded skin images with one condition label per case.",
            features=tfds.features.FeaturesDict({
                "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
                "image_ids": tfds.features.Sequence(tfds.features.Text()),
                "case_id": tfds.features.Text(),
                "label": tfds.features.ClassLabel(names=names) if names else tfds.features.ClassLabel(),
                "metadata": tfds.features.FeaturesDict({k: tfds.features.Text() for k in keys}),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def source_files(self, manual_dir) -> list:
        """The download's index files; their fingerprint tells a rebuilt download apart."""
        return layouts.source_files(self.builder_config.layout, Path(manual_dir))

    def _split_generators(self, dl_manager):
        manual_dir = common.manual_dir_of(dl_manager, _INSTRUCTIONS)
        index = layouts.READERS[self.builder_config.layout](manual_dir, self.builder_config.class_names)
        if not index.cases:
            raise DataError(f"no labelled case found in {', '.join(p.name for p in index.sources)} "
                            f"under {manual_dir}")
        if self.builder_config.class_names is None:
            self.info.features["label"].names = index.class_names
        for note in index.notes:
            log.warning("%s: %s", self.builder_config.name, note)
        by_id = {c.case_id: c for c in index.cases}
        assignment = common.split_groups({c.case_id: 1 for c in index.cases}, SPLITS, SPLIT_SEED,
                                         strata={c.case_id: c.label for c in index.cases})
        common.check_splits_nonempty(assignment, list(SPLITS), "cases", index.sources[0].name)
        self.image_log = common.ImageLog(self.pixel_bits)
        self.info.metadata.update(source_sha256=common.fingerprint(self.source_files(manual_dir)),
                                  notes=index.notes, skipped_images=[], split_stats={},
                                  **self.image_log.metadata())
        cases_of = {split: [by_id[k] for k, s in assignment.items() if s == split] for split in SPLITS}
        return {split: self._generate_examples(split=split, cases=cases) for split, cases in cases_of.items()}

    def _generate_examples(self, split, cases):
        """Reads and checks every image: a corrupt one is skipped and reported, but a case with
        no readable image stops the build (its label would be lost)."""
        jobs = [(path, where, image_id) for c in cases for image_id, path, where in c.images]
        results = common.read_images(jobs, self.pixel_bits)
        stats = {"num_cases": 0, "num_images": 0, "max_images": 0}
        for case in cases:
            images, ids = [], []
            for image_id, _, _ in case.images:
                data = next(results)
                if isinstance(data, common.UnreadableImage):
                    log.warning("skipped: %s", data)
                    self.info.metadata["skipped_images"].append(str(data))
                    continue
                self.image_log.add(image_id, data)
                images.append(data.data)
                ids.append(image_id)
            if not images:
                raise DataError(f"{case.images[-1][2]}: case {case.case_id!r} has no readable image "
                                f"({len(case.images)} listed, all unreadable: {data})")
            stats["num_cases"] += 1
            stats["num_images"] += len(images)
            stats["max_images"] = max(stats["max_images"], len(images))
            yield case.case_id, {"images": images, "image_ids": ids, "case_id": case.case_id,
                                 "label": case.label, "metadata": case.metadata}
        self.info.metadata["split_stats"][split] = stats
        self.image_log.record(self.info.metadata, f"derm_cases/{self.builder_config.name} {split}")
