"""`derm_cases/generic` on real chest X-rays: patients as cases, several real images per case.

Uses ../shared/data/covid_cxr_sample beside the repo (RGB, RGBA and grayscale; JPEG and PNG; many sizes):
the generic layout is written over symlinks to those images, as a user would for their own data.
"""
import io
from pathlib import Path

import pytest
import tensorflow as tf
from PIL import Image

from simclr_med.data import datasets
from simclr_med.errors import DataError
from tests.fixtures.real_cxr import patient_cases, write_manual

SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "covid_cxr_sample"

pytestmark = pytest.mark.skipif(not (SAMPLE / "metadata.csv").is_file(),
                                reason=f"real chest X-ray sample not found: no {SAMPLE / 'metadata.csv'}")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_cxr")
    cases, _ = patient_cases(SAMPLE)
    write_manual(root / "manual", cases, SAMPLE)
    return cases, datasets.builder_for("derm_cases/generic", root / "tfds", root / "manual"), root / "tfds"


def test_real_images_build_as_patient_bags(real):
    cases, builder, data_dir = real
    assert builder.info.features["label"].names == ["COVID-19", "No Finding", "Other pneumonia"]
    assert builder.info.metadata["skipped_images"] == []
    seen, modes = {}, set()
    for split in ("train", "validation", "test"):
        ds, meta = datasets.load("derm_cases/generic", split, data_dir=data_dir)
        assert meta.num_examples > 0 and meta.has_bags
        for ex in ds.as_numpy_iterator():
            pid = ex["case_id"].decode().removeprefix("patient")
            assert pid not in seen  # a patient is in one split only
            seen[pid] = split
            label, files, _ = cases[pid]
            assert meta.class_names[ex["label"]] == label
            assert [i.decode() for i in ex["image_ids"]] == [f"images/{n}" for n in files]
            for name, data in zip(files, ex["images"]):
                assert data == (SAMPLE / "images" / name).read_bytes()
                with Image.open(io.BytesIO(data)) as im:
                    modes.add(im.mode)
                    decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
                    assert decoded.shape == (im.height, im.width, 3)
    assert set(seen) == set(cases)
    assert {"RGB", "L", "RGBA"} <= modes


def test_real_label_fraction_keeps_whole_patients(real):
    cases, _, data_dir = real
    ds, meta = datasets.load("derm_cases/generic", "train", data_dir=data_dir, label_fraction=0.3, seed=0)
    part = list(ds.as_numpy_iterator())
    assert len(part) == meta.num_examples
    for ex in part:
        assert len(ex["images"]) == len(cases[ex["case_id"].decode().removeprefix("patient")][1])


def test_upstream_duplicates_are_refused(tmp_path):
    """The sample lists a few files under two patient ids; used as is, that would leak images
    across splits, so the builder names the row instead."""
    _, rows = patient_cases(SAMPLE)
    cases = {}
    for r in rows:
        cases.setdefault(r["patientid"], ("x", [], r))[1].append(r["filename"])
    write_manual(tmp_path / "manual", cases, SAMPLE)
    with pytest.raises(DataError, match=r"cases.csv row \d+: image 'images/.*' is also used by case"):
        datasets.builder_for("derm_cases/generic", tmp_path / "tfds", tmp_path / "manual")
