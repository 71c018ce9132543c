"""`datasets.load`: the element contract, uncertainty policies, label fractions, the demo data."""
import csv
import hashlib
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from simclr_med.data import datasets, demo
from simclr_med.errors import DataError
from tests.fixtures import layouts
from tfds_builders.cxr_labels import CHEXPERT_LABELS, CHEXPERT_TASKS, NIH_FOR_CHEXPERT, NIH_LABELS, POLICIES

BUILT = ("derm_cases/generic", "chexpert_v1", "nih_chestxray14")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One TFDS data dir holding a generic, a CheXpert and an NIH build (plus the demo, lazily)."""
    root = tmp_path_factory.mktemp("loaders")
    manuals = {"derm_cases/generic": layouts.write_generic_cases(root / "generic", num_cases=24),
               "chexpert_v1": layouts.write_chexpert(root / "chexpert"),
               "nih_chestxray14": layouts.write_nih(root / "nih")}
    for name, manual in manuals.items():
        datasets.builder_for(name, root / "tfds", manual)
    return root / "tfds", manuals


def elements(ds):
    return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("name", BUILT)
def test_elements_follow_the_contract(built, name):
    data_dir, _ = built
    ds, meta = datasets.load(name, "train", data_dir=data_dir)
    spec = ds.element_spec
    for key in ("images", "image_ids"):
        assert spec[key].dtype == tf.string and spec[key].shape.rank == 1
    assert spec["case_id"] == tf.TensorSpec([], tf.string)
    if meta.multi_label:
        assert spec["labels"] == spec["label_mask"] == tf.TensorSpec([meta.num_classes], tf.float32)
        assert "label" not in spec
    else:
        assert spec["label"] == tf.TensorSpec([], tf.int64) and "labels" not in spec
    assert set(spec["metadata"]) == set(meta.metadata_keys)
    assert all(s == tf.TensorSpec([], tf.string) for s in spec["metadata"].values())
    assert set(meta.eval_tasks) <= set(meta.class_names) and meta.num_classes == len(meta.class_names)

    exs = elements(ds)
    assert len(exs) == meta.num_examples > 0
    assert sum(len(ex["images"]) for ex in exs) == meta.num_images
    assert meta.has_bags == any(len(ex["images"]) > 1 for ex in exs)
    for ex in exs:
        assert len(ex["images"]) == len(ex["image_ids"]) >= 1
        for data in ex["images"]:  # encoded bytes that TF decodes whatever their mode
            assert tf.io.decode_image(data, channels=3, expand_animations=False).shape[-1] == 3


def test_label_spaces(built):
    data_dir, _ = built
    cx = datasets.load("chexpert_v1", "valid", data_dir=data_dir)[1]
    assert cx.class_names == cx.eval_tasks == list(CHEXPERT_TASKS) and not cx.has_bags
    nih = datasets.load("nih_chestxray14", "test", data_dir=data_dir)[1]
    assert nih.class_names == list(NIH_LABELS)
    assert nih.eval_tasks == [NIH_FOR_CHEXPERT[t] for t in CHEXPERT_TASKS] and "Effusion" in nih.eval_tasks


def test_apply_uncertainty_policy():
    raw = np.full((2, 14), np.nan, np.float32)
    names = list(CHEXPERT_LABELS)
    for task, value in {"Atelectasis": -1, "Cardiomegaly": -1, "Edema": 1, "Pleural Effusion": 0}.items():
        raw[0, names.index(task)] = value
    raw[1] = -1.0
    expected = {  # tasks: Atelectasis, Cardiomegaly, Consolidation (blank), Edema, Pleural Effusion
        "mixed": ([1, 0, 0, 1, 0], [1, 1, 1, 1, 1], [1, 0, 0, 1, 0]),
        "u_ones": ([1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
        "u_zeros": ([0, 0, 0, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]),
        "u_ignore": ([0, 0, 0, 1, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]),
    }
    for policy, (labels0, mask0, labels1) in expected.items():
        labels, mask = datasets.apply_uncertainty_policy(raw, policy)
        np.testing.assert_array_equal(labels.numpy()[0], labels0)
        np.testing.assert_array_equal(mask.numpy()[0], mask0)
        np.testing.assert_array_equal(labels.numpy()[1], labels1)
    with pytest.raises(ValueError, match="u_maybe"):
        datasets.apply_uncertainty_policy(raw, "u_maybe")


@pytest.mark.parametrize("policy", POLICIES)
def test_chexpert_policy_applied_at_load_time(built, policy):
    data_dir, manuals = built
    with open(manuals["chexpert_v1"] / "CheXpert-v1.0-small/train.csv", newline="") as f:
        rows = {r["Path"]: r for r in csv.DictReader(f)}
    seen_uncertain = False
    for split in ("train", "validation", "test"):
        ds = datasets.load("chexpert_v1", split, data_dir=data_dir, uncertainty_policy=policy)[0]
        for ex in elements(ds):
            row = rows[ex["image_ids"][0].decode()]
            for k, task in enumerate(CHEXPERT_TASKS):
                value = row[task]
                if value == "-1.0":
                    seen_uncertain = True
                    one = policy == "u_ones" or (policy == "mixed" and task in ("Atelectasis", "Edema"))
                    expected = (1, 1) if one else (0, 0 if policy == "u_ignore" else 1)
                    assert (ex["labels"][k], ex["label_mask"][k]) == expected
                else:
                    assert (ex["labels"][k], ex["label_mask"][k]) == (float(value == "1.0"), 1)
    assert seen_uncertain


def test_select_cases_is_stratified_by_case_and_deterministic():
    sizes = {0: 400, 1: 300, 2: 200, 3: 100}
    labels = np.array([k for k, n in sizes.items() for _ in range(n)])
    cases = np.array([f"case{i}" for i in range(len(labels))])
    keep = datasets.select_cases(cases, labels, None, 0.3, 0, ["a", "b", "c", "d"])
    for k, n in sizes.items():
        assert abs(keep[labels == k].sum() - 0.3 * n) <= 1
    np.testing.assert_array_equal(keep,
                                  datasets.select_cases(cases, labels, None, 0.3, 0, ["a", "b", "c", "d"]))
    assert not np.array_equal(keep, datasets.select_cases(cases, labels, None, 0.3, 1, ["a", "b", "c", "d"]))
    # several examples per case (CheXpert: images of a patient) are kept or dropped together
    patients = np.repeat([f"p{i}" for i in range(50)], 3)
    multi = (np.random.default_rng(0).random((150, 5)) < 0.3).astype(np.float32)
    keep = datasets.select_cases(patients, multi, np.ones_like(multi), 0.5, 0, list("abcde"))
    assert all(len(set(keep[patients == p])) == 1 for p in set(patients)) and abs(keep.mean() - 0.5) < 0.05
    with pytest.raises(DataError, match="leaves class '[a-d]' with no example in the split"):
        datasets.select_cases(cases[:901], labels[:901], None, 0.001, 0, ["a", "b", "c", "d"])


def test_label_fraction_keeps_whole_cases(built):
    data_dir, _ = built
    full = {ex["case_id"]: ex
            for ex in elements(datasets.load("derm_cases/generic", "train", data_dir=data_dir)[0])}
    ds, meta = datasets.load("derm_cases/generic", "train", data_dir=data_dir, label_fraction=0.5, seed=3)
    part = elements(ds)
    assert len(part) == meta.num_examples and abs(meta.num_examples - len(full) / 2) <= 1
    assert meta.num_images == sum(len(ex["images"]) for ex in part)
    for ex in part:
        assert list(ex["image_ids"]) == list(full[ex["case_id"]]["image_ids"])
    again = elements(datasets.load("derm_cases/generic", "train", data_dir=data_dir, label_fraction=0.5,
                                   seed=3)[0])
    assert [ex["case_id"] for ex in again] == [ex["case_id"] for ex in part]
    with pytest.raises(DataError, match="label_fraction=0.05 leaves class"):
        datasets.load("derm_cases/generic", "train", data_dir=data_dir, label_fraction=0.05)

    cx_full = elements(datasets.load("chexpert_v1", "train", data_dir=data_dir,
                                     uncertainty_policy="u_ones")[0])
    cx, cx_meta = datasets.load("chexpert_v1", "train", data_dir=data_dir, uncertainty_policy="u_ones",
                                label_fraction=0.7)
    kept = {ex["case_id"] for ex in elements(cx)}
    assert 0 < len(kept) < len({ex["case_id"] for ex in cx_full})
    assert cx_meta.num_examples == sum(ex["case_id"] in kept for ex in cx_full)  # whole patients


def test_label_fraction_is_stratified_on_demo(demo_data_dir):
    def per_class(fraction, seed=0):
        ds, meta = datasets.load("demo", "train", data_dir=demo_data_dir, label_fraction=fraction, seed=seed)
        labels = [ex["label"] for ex in elements(ds)]
        assert len(labels) == meta.num_examples
        return np.bincount(labels, minlength=4)

    full = per_class(1.0)
    assert full.sum() > 100
    quarter = per_class(0.25)
    assert np.all(np.abs(quarter - full / 4) <= 1)
    np.testing.assert_array_equal(quarter, per_class(0.25))


def test_bad_arguments(built):
    data_dir, _ = built
    with pytest.raises(DataError, match="valid names: demo, derm_cases/generic"):
        datasets.load("imagenet", "train", data_dir=data_dir)
    with pytest.raises(DataError, match="splits: test, train, valid, validation"):
        datasets.load("chexpert_v1", "training", data_dir=data_dir)
    with pytest.raises(ValueError, match="uncertainty_policy"):
        datasets.load("chexpert_v1", "train", data_dir=data_dir, uncertainty_policy="ones")
    with pytest.raises(ValueError, match="label_fraction"):
        datasets.load("chexpert_v1", "train", data_dir=data_dir, label_fraction=0.0)
    with pytest.raises(DataError, match="writes its own data"):
        datasets.load("demo", "train", data_dir=data_dir, manual_dir=str(data_dir))


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_demo_cases_are_deterministic_small_and_balanced(tmp_path):
    start = time.perf_counter()
    a = demo.write_demo_cases(tmp_path / "a")
    assert time.perf_counter() - start < 10
    b = demo.write_demo_cases(tmp_path / "b")
    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a) != _tree_digest(demo.write_demo_cases(tmp_path / "c", seed=1))
    with open(a / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    per_case = {}
    for r in rows:
        per_case.setdefault(r["case_id"], []).append(r)
    assert len(per_case) == 200 and {len(v) for v in per_case.values()} == {1, 2, 3, 4}
    labels = [v[0]["label"] for v in per_case.values()]
    assert {labels.count(c) for c in demo.CLASSES} == {50}
    sizes = {Image.open(a / r["image_path"]).size for r in rows}
    assert {w for w, _ in sizes} <= set(range(64, 97)) and len(sizes) > 1
    assert {r["image_path"].rsplit(".", 1)[1] for r in rows} == {"png", "jpg"}


def test_demo_builds_under_data_dir_beside_a_generic_build(built):
    data_dir, _ = built
    ds, meta = datasets.load("demo", "train", data_dir=data_dir)
    assert meta.name == "demo" and meta.class_names == list(demo.CLASSES) and meta.has_bags
    assert (data_dir / "demo_manual" / "cases.csv").is_file() and (data_dir / "demo_tfds").is_dir()
    assert abs(meta.num_examples - 140) <= 2
    generic = datasets.load("derm_cases/generic", "train", data_dir=data_dir)[1]
    assert generic.class_names == ["eczema", "melanoma", "nevus"]
    assert datasets.load("demo", "test", data_dir=data_dir)[1].num_examples + \
        datasets.load("demo", "validation", data_dir=data_dir)[1].num_examples + meta.num_examples == 200
