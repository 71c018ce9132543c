"""Each TFDS builder on its fixture: contents match the CSVs, splits by patient, clear errors."""
import ast
import csv
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from simclr_med.data import datasets
from simclr_med.errors import DataError
from tests.fixtures import layouts
from tfds_builders import common
from tfds_builders.__main__ import main as cli_main
from tfds_builders.chexpert_v1.chexpert_v1_dataset_builder import SPLIT_IMAGES
from tfds_builders.cxr_labels import CHEXPERT_LABELS, CHEXPERT_TASKS, NIH_FOR_CHEXPERT, NIH_LABELS
from tfds_builders.derm_cases.derm_cases_dataset_builder import DermConfig
from tfds_builders.derm_cases.layouts import DERM_CONDITIONS

CXR_SPLITS = ("train", "validation", "test")


def build(name, manual, data_dir):
    return datasets.builder_for(name, data_dir, manual)


def examples(builder):
    """split → list of numpy examples."""
    return {s: list(tfds.as_numpy(builder.as_dataset(split=s, shuffle_files=False)))
            for s in builder.info.splits}


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def build_error(name, manual, data_dir) -> str:
    with pytest.raises(DataError) as err:
        build(name, manual, data_dir)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def assert_patient_level(split_of_example, patient_of_example):
    splits_of_patient = {}
    for key, split in split_of_example.items():
        splits_of_patient.setdefault(patient_of_example[key], set()).add(split)
    assert all(len(s) == 1 for s in splits_of_patient.values())


# --- derm_cases -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    root = tmp_path_factory.mktemp("generic")
    manual = layouts.write_generic_cases(root / "manual")
    return manual, build("derm_cases/generic", manual, root / "tfds")


def test_generic_examples_match_csv(generic):
    manual, builder = generic
    rows = read_rows(manual / "cases.csv")
    expected = {}
    for r in rows:
        expected.setdefault(r["case_id"], (r["label"], []))[1].append(r["image_path"])
    names = builder.info.features["label"].names
    assert names == sorted({r["label"] for r in rows})
    split_of = {}
    for split, exs in examples(builder).items():
        assert len(exs) == builder.info.splits[split].num_examples > 0
        for ex in exs:
            case = ex["case_id"].decode()
            label, paths = expected[case]
            assert case not in split_of
            split_of[case] = split
            assert names[ex["label"]] == label
            assert [i.decode() for i in ex["image_ids"]] == paths
            assert [bytes(b) for b in ex["images"]] == [(manual / p).read_bytes() for p in paths]
    assert set(split_of) == set(expected)
    assert builder.info.metadata["split_stats"]["train"]["num_images"] == sum(
        len(expected[c][1]) for c, s in split_of.items() if s == "train")


def test_split_helpers_keep_fractions_and_strata():
    sizes = {f"c{i}": 1 for i in range(200)}
    strata = {f"c{i}": i % 4 for i in range(200)}
    split = common.split_groups(sizes, {"train": 0.7, "validation": 0.1, "test": 0.2}, 0, strata)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "validation", "test")}
    assert (abs(counts["train"] - 140) <= 1 and abs(counts["validation"] - 20) <= 1
            and abs(counts["test"] - 40) <= 1)
    for k in range(4):  # every stratum spread in proportion
        n = sum(1 for c, s in split.items() if strata[c] == k and s == "test")
        assert 8 <= n <= 12
    assert split == common.split_groups(sizes, {"train": 0.7, "validation": 0.1, "test": 0.2}, 0, strata)
    assert split != common.split_groups(sizes, {"train": 0.7, "validation": 0.1, "test": 0.2}, 1, strata)
    # weighted: patients of many images count by images
    weighted = common.split_groups({f"p{i}": 1 + i % 5 for i in range(300)}, {"a": 0.25, "b": 0.75}, 0)
    images_a = sum(1 + int(p[1:]) % 5 for p, s in weighted.items() if s == "a")
    assert abs(images_a / 900 - 0.25) < 0.01


def _scin_expected(manual):
    labels = {r["case_id"]: r["weighted_skin_condition_label"]
              for r in read_rows(manual / "dataset/scin_labels.csv")}
    by_lower = {c.lower(): c for c in DERM_CONDITIONS}
    expected = {}
    for r in read_rows(manual / "dataset/scin_cases.csv"):
        text = labels.get(r["case_id"], "")
        if text:
            weights = ast.literal_eval(text)
            top = max(weights, key=weights.get)
            n = sum(bool(r[f"image_{k}_path"]) for k in (1, 2, 3))
            expected[r["case_id"]] = (by_lower.get(top.lower(), "Other"), n)
    return expected


def test_scin_joins_on_string_case_id_and_maps_labels(tmp_path):
    manual = layouts.write_scin(tmp_path / "scin")
    expected = _scin_expected(manual)
    assert "0012" in expected and "Other" in {v[0] for v in expected.values()}
    for root in (manual, manual / "dataset"):  # the bucket root or its dataset/ folder
        builder = build("derm_cases/scin", root, tmp_path / root.name)
        names = builder.info.features["label"].names
        assert names == list(DERM_CONDITIONS) + ["Other"]
        got = {ex["case_id"].decode(): (names[ex["label"]], len(ex["images"]))
               for exs in examples(builder).values() for ex in exs}
        assert got == expected
        assert any("1 case(s)" in n for n in builder.info.metadata["notes"])


def test_scin_label_list_is_configurable(tmp_path):
    manual = layouts.write_scin(tmp_path / "scin")
    config = DermConfig(name="scin_eczema", layout="scin", class_names=("Eczema", "Other"))
    builder = tfds.builder("derm_cases", config=config, data_dir=tmp_path / "t")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    got = {ex["case_id"].decode(): builder.info.features["label"].names[ex["label"]]
           for exs in examples(builder).values() for ex in exs}
    assert got == {c: ("Eczema" if label == "Eczema" else "Other")
                   for c, (label, _) in _scin_expected(manual).items()}


def test_ham10000_groups_images_by_lesion(tmp_path):
    manual = layouts.write_ham10000(tmp_path / "ham")
    rows = read_rows(manual / "HAM10000_metadata.csv")
    builder = build("derm_cases/ham10000", manual, tmp_path / "tfds")
    names = builder.info.features["label"].names
    got = {ex["case_id"].decode(): ex for exs in examples(builder).values() for ex in exs}
    assert set(got) == {r["lesion_id"] for r in rows}
    for r in rows:
        ex = got[r["lesion_id"]]
        assert names[ex["label"]] == r["dx"]
        assert any(i.decode().endswith(f"/{r['image_id']}.jpg") for i in ex["image_ids"])
        assert ex["metadata"]["age"].decode() == (str(int(float(r["age"]))) if r["age"] else "")
    parts = {i.decode().split("/")[0] for ex in got.values() for i in ex["image_ids"]}
    assert parts == {"HAM10000_images_part_1", "HAM10000_images_part_2"}


# --- chexpert_v1 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chexpert(tmp_path_factory):
    """Both layouts: with the CheXpert-v1.0-small/ root folder and without it."""
    out = {}
    for with_root in (True, False):
        root = tmp_path_factory.mktemp(f"chexpert_{with_root}")
        manual = layouts.write_chexpert(root / "manual", with_root=with_root)
        out[with_root] = manual, build("chexpert_v1", manual, root / "tfds")
    return out


@pytest.mark.parametrize("with_root", [True, False])
def test_chexpert_examples_match_csv(chexpert, with_root):
    manual, builder = chexpert[with_root]
    csv_dir = manual / "CheXpert-v1.0-small" if with_root else manual
    train = {r["Path"]: r for r in read_rows(csv_dir / "train.csv")}
    valid = {r["Path"]: r for r in read_rows(csv_dir / "valid.csv")}
    split_of, patient_of = {}, {}
    for split, exs in examples(builder).items():
        for ex in exs:
            path = ex["image_id"].decode()
            row = valid[path] if split == "valid" else train[path]
            split_of[path], patient_of[path] = split, ex["patient_id"].decode()
            assert patient_of[path] == path.split("/")[2]
            assert ex["study_id"].decode() == "/".join(path.split("/")[2:4])
            for value, column in zip(ex["raw_labels"], CHEXPERT_LABELS):
                assert (math.isnan(value) and row[column] == "") or value == float(row[column])
            assert bytes(ex["image"]) == (csv_dir / path.split("/", 1)[1]).read_bytes()
            assert ex["metadata"]["ap_pa"].decode() == row["AP/PA"]
    assert {p for p, s in split_of.items() if s == "valid"} == set(valid)
    assert {p for p, s in split_of.items() if s != "valid"} == set(train)
    assert all(any(s == split for s in split_of.values()) for split in CXR_SPLITS)
    assert_patient_level(split_of, patient_of)
    raw = np.stack([ex["raw_labels"] for ex in examples(builder)["train"]])
    assert np.isnan(raw).any() and (raw == -1).any()  # blanks and uncertain both kept


def test_chexpert_layouts_give_the_same_split(chexpert, tmp_path):
    splits = [{ex["image_id"]: s for s, exs in examples(chexpert[w][1]).items() for ex in exs}
              for w in (True, False)]
    assert splits[0] == splits[1]
    # A re-packaged CSV whose Path lacks the root folder finds the images beside it.
    manual = shutil.copytree(chexpert[True][0], tmp_path / "m")
    for name in ("train.csv", "valid.csv"):
        layouts.rewrite_csv(manual / "CheXpert-v1.0-small" / name,
                             lambda rs: [rs[0]] + [[r[0].split("/", 1)[1]] + r[1:] for r in rs[1:]])
    rootless = {ex["image_id"].decode(): s
                for s, exs in examples(build("chexpert_v1", manual, tmp_path / "t")).items() for ex in exs}
    assert rootless == {k.decode().split("/", 1)[1]: s for k, s in splits[0].items()}


# --- nih_chestxray14 --------------------------------------------------------------------------

@pytest.mark.parametrize("split_dirs,old_csv", [(False, False), (True, True)])
def test_nih_examples_match_csv_and_lists(tmp_path, split_dirs, old_csv):
    manual = layouts.write_nih(tmp_path / "nih", split_dirs=split_dirs, old_csv=old_csv)
    csv_name = "Data_Entry_2017.csv" if old_csv else "Data_Entry_2017_v2020.csv"
    with open(manual / csv_name, newline="") as f:
        records = list(csv.reader(f))[1:]
    rows = {r[0]: r for r in records}
    test_list = set((manual / "test_list.txt").read_text().split())
    builder = build("nih_chestxray14", manual, tmp_path / "tfds")
    split_of, patient_of = {}, {}
    for split, exs in examples(builder).items():
        for ex in exs:
            name = ex["image_id"].decode()
            row = rows[name]
            split_of[name], patient_of[name] = split, ex["patient_id"].decode()
            assert (split == "test") == (name in test_list)
            assert patient_of[name] == name[:8] and int(row[3]) == int(name[:8])
            findings = set(row[1].split("|")) - {"No Finding"}
            assert {NIH_LABELS[i] for i in np.flatnonzero(ex["labels"])} == findings
            assert list(ex["chexpert_labels"]) == [ex["labels"][NIH_LABELS.index(NIH_FOR_CHEXPERT[t])]
                                                   for t in CHEXPERT_TASKS]
            age = int(row[4].rstrip("Y"))
            assert ex["metadata"]["age"].decode() == (str(age) if age <= 120 else "")
    assert set(split_of) == set(rows)
    assert all(any(s == split for s in split_of.values()) for split in CXR_SPLITS)
    assert_patient_level(split_of, patient_of)
    if old_csv:
        assert all(len(r[4]) == 4 and r[4].endswith("Y") for r in records)
        implausible = sum(int(r[4].rstrip("Y")) > 120 for r in records)
        assert implausible and builder.info.metadata["notes"][0].startswith(f"{implausible} row(s)")


# --- command line -----------------------------------------------------------------------------

def test_command_line_builds_what_load_reuses(tmp_path, capsys):
    manual = layouts.write_generic_cases(tmp_path / "m")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "tfds_builders", "derm_cases/generic",
                           "--manual_dir", str(manual), "--data_dir", str(tmp_path / "t")],
                          cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "derm_cases/generic ready in" in done.stdout
    assert datasets.load("derm_cases/generic", "train", data_dir=tmp_path / "t")[1].num_examples > 0
    assert cli_main(["chexpert_v1", "--manual_dir", str(manual), "--data_dir", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: CheXpert train.csv not found") and err.count("\n") == 1
    assert cli_main(["demo", "--data_dir", str(tmp_path / "d")]) == 1  # run.py writes the demo, not this
    err = capsys.readouterr().err
    assert err.startswith("error: demo needs no download") and err.count("\n") == 1
    assert not (tmp_path / "d").exists()


# --- errors -----------------------------------------------------------------------------------

def _first_row(manual, predicate):
    """(row number, row) of the first data row of cases.csv satisfying predicate; header = row 1."""
    rows = read_rows(manual / "cases.csv")
    for i, r in enumerate(rows):
        if predicate(r, rows):
            return i + 2, r
    raise AssertionError("fixture has no such row")


def _images_of(rows, case):
    return sum(x["case_id"] == case for x in rows)


def test_missing_csv_and_missing_manual_dir(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    (manual / "cases.csv").unlink()
    assert "cases.csv not found under" in build_error("derm_cases/generic", manual, tmp_path / "t")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert "does not exist or is empty" in build_error("chexpert_v1", folder, tmp_path / "t")
    (folder / "README.txt").write_text("not CheXpert")
    assert "CheXpert train.csv not found" in build_error("chexpert_v1", folder, tmp_path / "t")
    assert "is not a directory" in build_error("chexpert_v1", tmp_path / "nope", tmp_path / "t")
    assert "pass manual_dir" in build_error("nih_chestxray14", None, tmp_path / "t")


def test_reordered_and_wrong_headers(tmp_path):
    manual = layouts.write_chexpert(tmp_path / "cx")
    train_csv = manual / "CheXpert-v1.0-small/train.csv"
    layouts.rewrite_csv(train_csv, lambda rs: [[r[0], r[2], r[1], *r[3:]] for r in rs])
    msg = build_error("chexpert_v1", manual, tmp_path / "t")
    assert "train.csv row 1: columns are reordered" in msg
    nih = layouts.write_nih(tmp_path / "nih")
    layouts.rewrite_csv(nih / "Data_Entry_2017_v2020.csv", lambda rs: [r[:7] for r in rs])
    assert "Data_Entry_2017_v2020.csv row 1: unexpected header" in build_error(
        "nih_chestxray14", nih, tmp_path / "t")
    generic = layouts.write_generic_cases(tmp_path / "g")
    layouts.rewrite_csv(generic / "cases.csv",
                        lambda rs: [["case_id", "image_path", "lable", *rs[0][3:]]] + rs[1:])
    assert "cases.csv row 1: missing column(s) label" in build_error(
        "derm_cases/generic", generic, tmp_path / "t")


def test_missing_image_names_the_row(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    row, r = _first_row(manual, lambda r, rows: int(r["case_id"][-3:]) == 5)
    (manual / r["image_path"]).unlink()
    msg = build_error("derm_cases/generic", manual, tmp_path / "t")
    assert f"cases.csv row {row}: image '{r['image_path']}' not found" in msg


def test_corrupt_single_image_case_fails_and_leaves_no_dataset(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    row, r = _first_row(manual, lambda r, rows: _images_of(rows, r["case_id"]) == 1)
    good = (manual / r["image_path"]).read_bytes()
    (manual / r["image_path"]).write_bytes(good[: len(good) // 2])
    msg = build_error("derm_cases/generic", manual, tmp_path / "t")
    assert f"cases.csv row {row}" in msg and "no readable image" in msg and "truncated" in msg
    assert not tfds.builder("derm_cases/generic", data_dir=tmp_path / "t").is_prepared()
    (manual / r["image_path"]).write_bytes(good)  # fixed: the next load builds
    assert build("derm_cases/generic", manual, tmp_path / "t").is_prepared()


def test_corrupt_image_in_a_bag_is_skipped_and_reported(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    row, r = _first_row(manual, lambda r, rows: _images_of(rows, r["case_id"]) >= 2)
    (manual / r["image_path"]).write_bytes(b"not an image at all")
    builder = build("derm_cases/generic", manual, tmp_path / "t")
    [skipped] = builder.info.metadata["skipped_images"]
    assert f"cases.csv row {row}" in skipped and r["image_path"] in skipped
    case = next(ex for exs in examples(builder).values() for ex in exs
                if ex["case_id"].decode() == r["case_id"])
    assert r["image_path"].encode() not in list(case["image_ids"])
    assert len(case["images"]) == _images_of(read_rows(manual / "cases.csv"), r["case_id"]) - 1


def test_phone_camera_jpeg_with_extra_frames_is_kept(tmp_path):
    """PIL calls a JPEG with a second (preview) frame MPO; the pipelines decode its first frame."""
    manual = layouts.write_generic_cases(tmp_path / "m")
    _, r = _first_row(manual, lambda r, rows: _images_of(rows, r["case_id"]) >= 2)
    first, preview = (Image.fromarray(np.full((24, 32, 3), v, np.uint8)) for v in (200, 0))
    first.save(manual / r["image_path"], "MPO", save_all=True, append_images=[preview])
    builder = build("derm_cases/generic", manual, tmp_path / "t")
    assert builder.info.metadata["skipped_images"] == []
    case = next(ex for exs in examples(builder).values() for ex in exs
                if ex["case_id"].decode() == r["case_id"])
    index = list(case["image_ids"]).index(r["image_path"].encode())
    image = tf.io.decode_image(case["images"][index]).numpy()
    assert image.shape == (24, 32, 3) and abs(float(image.mean()) - 200) < 2


def test_chexpert_split_sizes_cover_train_csv():
    assert sum(SPLIT_IMAGES.values()) == 223_414  # train.csv's images


def test_empty_image_in_chexpert_fails(tmp_path):
    manual = layouts.write_chexpert(tmp_path / "cx")
    rows = read_rows(manual / "CheXpert-v1.0-small/train.csv")
    (manual / rows[6]["Path"]).write_bytes(b"")
    msg = build_error("chexpert_v1", manual, tmp_path / "t")
    assert "train.csv row 8" in msg and "is empty" in msg


def test_bad_values_name_file_and_row(tmp_path):
    ham = layouts.write_ham10000(tmp_path / "ham")
    lesion = read_rows(ham / "HAM10000_metadata.csv")[1]["lesion_id"]  # all its rows: an unknown dx
    layouts.rewrite_csv(ham / "HAM10000_metadata.csv",
                        lambda rs: [r[:2] + ["xyz"] + r[3:] if r[0] == lesion else r for r in rs])
    msg = build_error("derm_cases/ham10000", ham, tmp_path / "t")
    first = next(i for i, r in enumerate(read_rows(ham / "HAM10000_metadata.csv"), 2)
                 if r["lesion_id"] == lesion)
    assert f"HAM10000_metadata.csv row {first}: unknown label 'xyz'" in msg

    cx = layouts.write_chexpert(tmp_path / "cx")
    layouts.set_cell(cx / "CheXpert-v1.0-small/train.csv", 6, "Edema", "2.0")
    assert "train.csv row 6: column 'Edema' has '2.0'" in build_error("chexpert_v1", cx, tmp_path / "t")

    nih = layouts.write_nih(tmp_path / "nih")
    layouts.set_cell(nih / "Data_Entry_2017_v2020.csv", 3, "Finding Labels", "Edema|Flu")
    msg = build_error("nih_chestxray14", nih, tmp_path / "t")
    assert "Data_Entry_2017_v2020.csv row 3: unknown finding 'Flu'" in msg

    scin = layouts.write_scin(tmp_path / "scin")
    layouts.set_cell(scin / "dataset/scin_labels.csv", 3, "weighted_skin_condition_label", "{'Eczema': ")
    msg = build_error("derm_cases/scin", scin, tmp_path / "t")
    assert "scin_labels.csv row 3: weighted_skin_condition_label" in msg


def test_nih_image_outside_the_official_lists(tmp_path):
    nih = layouts.write_nih(tmp_path / "nih")
    names = (nih / "test_list.txt").read_text().split()
    (nih / "test_list.txt").write_text("\n".join(names[1:]) + "\n")
    msg = build_error("nih_chestxray14", nih, tmp_path / "t")
    assert f"image '{names[0]}' is in 0 of train_val_list.txt, test_list.txt" in msg


def test_path_escaping_the_manual_dir(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    shutil.copy(manual / read_rows(manual / "cases.csv")[0]["image_path"], tmp_path / "outside.png")
    layouts.set_cell(manual / "cases.csv", 3, "image_path", "../outside.png")
    assert "cases.csv row 3: image path '../outside.png' escapes the manual dir" in build_error(
        "derm_cases/generic", manual, tmp_path / "t")


def test_duplicated_rows_and_shared_images(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    layouts.rewrite_csv(manual / "cases.csv", lambda rs: rs + [rs[4]])
    n = len(read_rows(manual / "cases.csv")) + 1
    assert f"cases.csv row {n}: duplicated row" in build_error("derm_cases/generic", manual, tmp_path / "t")
    layouts.rewrite_csv(manual / "cases.csv", lambda rs: rs[:-1] + [["other_case"] + rs[4][1:]])
    assert "is also used by case" in build_error("derm_cases/generic", manual, tmp_path / "t")

    cx = layouts.write_chexpert(tmp_path / "cx")
    layouts.rewrite_csv(cx / "CheXpert-v1.0-small/valid.csv", lambda rs: rs + [rs[1]])
    assert "valid.csv row" in build_error("chexpert_v1", cx, tmp_path / "t")


def test_inconsistent_case_label_and_empty_split(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    row, r = _first_row(manual, lambda r, rows: _images_of(rows, r["case_id"]) >= 2)
    layouts.set_cell(manual / "cases.csv", row + 1, "label", "psoriasis")
    msg = build_error("derm_cases/generic", manual, tmp_path / "t")
    assert f"cases.csv row {row + 1}: case '{r['case_id']}' has label 'psoriasis'" in msg

    small = layouts.write_generic_cases(tmp_path / "small", num_cases=2)
    assert "would be empty" in build_error("derm_cases/generic", small, tmp_path / "t2")


def test_rebuilt_download_is_not_silently_replaced(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m")
    build("derm_cases/generic", manual, tmp_path / "t")
    layouts.rewrite_csv(manual / "cases.csv", lambda rs: rs[:-1])
    assert "built from a different download" in build_error("derm_cases/generic", manual, tmp_path / "t")
