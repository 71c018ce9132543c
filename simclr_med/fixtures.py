"""Tiny manual downloads in each real layout, for tests and demos.

Real headers and path patterns, several images per case or patient, uncertain and blank labels,
mixed image sizes and modes (RGB and grayscale, JPEG and PNG). The images are 12–40 px of noise,
so each writer takes a fraction of a second. Every writer returns the folder to pass as
`manual_dir`.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from tfds_builders.cxr_labels import CHEXPERT_HEADER, CHEXPERT_LABELS, NIH_LABELS
from tfds_builders.derm_cases.layouts import HAM_DX, HAM_HEADER, HAM_IMAGE_DIRS
from tfds_builders.nih_chestxray14.nih_chestxray14_dataset_builder import HEADER as NIH_HEADER


def write_image(path: Path, rng: np.random.Generator, mode: str | None = None) -> None:
    """A small noise image; the format follows the suffix, the mode is RGB or L (or `mode`)."""
    mode = mode or ("RGB" if rng.random() < 0.5 else "L")
    width, height = (int(v) for v in rng.integers(12, 41, size=2))
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(path)


def _write_csv(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def rewrite_csv(path, edit) -> None:
    """Rewrites a CSV through `edit(records) -> records` (records include the header): for damaging a fixture."""
    with open(path, newline="") as f:
        records = list(csv.reader(f))
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(edit(records))


def set_cell(path, row, column, value) -> None:
    """Sets one cell; `row` counts the header as row 1 (as error messages do), `column` is a name or an index."""
    def edit(records):
        j = records[0].index(column) if isinstance(column, str) else column
        records[row - 1][j] = value
        return records
    rewrite_csv(path, edit)


def write_generic_cases(directory, num_cases: int = 12, labels=("eczema", "melanoma", "nevus"),
                        seed: int = 0) -> Path:
    """`cases.csv` + `images/`: `num_cases` cases of 1–3 images, labels in turn, metadata partly blank."""
    root = Path(directory)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(num_cases):
        case = f"case{i:03d}"
        meta = [f"FST{rng.integers(1, 7)}", ["F", "M", ""][i % 3], str(rng.integers(18, 90)) if i % 4 else ""]
        for k in range(int(rng.integers(1, 4))):
            rel = f"images/{case}_{k}.{'jpg' if (i + k) % 2 else 'png'}"
            write_image(root / rel, rng)
            rows.append([case, rel, labels[i % len(labels)], *meta])
    _write_csv(root / "cases.csv", ["case_id", "image_path", "label", "skin_type", "sex", "age"], rows)
    return root


# (case_id, weighted_skin_condition_label, number of images); ids are large signed integers as in
# SCIN, plus one with a leading zero that only survives when read as a string.
_SCIN_CASES = [
    ("-1000600354148496558", {"Eczema": 0.41, "Allergic Contact Dermatitis": 0.59}, 3),
    ("-1002039107727665188", {"Psoriasis": 1.0}, 1),
    ("-1003358831658393077", {"Acne": 0.5, "Folliculitis": 0.25, "Insect Bite": 0.25}, 2),
    ("-1009179239245320307", {"Insect Bite": 0.7, "Eczema": 0.3}, 2),  # not among the 26 → Other
    ("-1012124716624419137", {"Urticaria": 1.0}, 1),
    ("-1017512412341261721", {"Tinea": 0.6, "Eczema": 0.4}, 3),
    ("-1021563416545313361", {"Eczema": 1.0}, 2),
    ("-1024557419832455678", {"Psoriasis": 0.33, "Eczema": 0.67}, 1),
    ("-1031418012392346511", {"Acne": 1.0}, 2),
    ("-1039961312340033355", {"Drug Rash": 1.0}, 1),  # → Other
    ("-1042113350013219911", {"Folliculitis": 1.0}, 3),
    ("0012", {"Vitiligo": 1.0}, 1),
    ("-1050032211843922217", {"Melanocytic Nevus": 0.8, "Melanoma": 0.2}, 2),
    ("-1058310930125632001", None, 2),  # no dermatologist label: left out, reported
]


def write_scin(directory) -> Path:
    """The SCIN bucket layout: `dataset/scin_cases.csv`, `dataset/scin_labels.csv`, `dataset/images/`."""
    root = Path(directory)
    rng = np.random.default_rng(1)
    case_rows, label_rows = [], []
    for n, (cid, weights, num_images) in enumerate(_SCIN_CASES):
        paths = [f"dataset/images/{-(7 * n + k + 1) * 1234567890123}.png" for k in range(num_images)]
        for rel in paths:
            write_image(root / rel, rng, "RGB")
        paths += [""] * (3 - num_images)
        case_rows.append([cid, "USER_SUBMITTED", "SCIN_v1", "2023", ["AGE_18_TO_29", "AGE_40_TO_49", ""][n % 3],
                          ["FEMALE", "MALE", "OTHER_OR_UNSPECIFIED"][n % 3], f"FST{n % 6 + 1}", "RASH", "ONE_DAY",
                          *paths, *["CLOSE_UP" if p else "" for p in paths]])
        if n == len(_SCIN_CASES) - 1:
            label_rows.append([cid, "DEFAULT_YES", "", "", "", "", "", ""])
        elif weights is not None:
            names = list(weights)
            label_rows.append([cid, "DEFAULT_YES", str(names), str([4] * len(names)), str(weights),
                               f"FST{n % 6 + 1}", str(n % 10 + 1), str(n % 10 + 1)])
    _write_csv(root / "dataset/scin_cases.csv",
               ["case_id", "source", "release", "year", "age_group", "sex_at_birth", "fitzpatrick_skin_type",
                "related_category", "condition_duration", "image_1_path", "image_2_path", "image_3_path",
                "image_1_shot_type", "image_2_shot_type", "image_3_shot_type"], case_rows)
    _write_csv(root / "dataset/scin_labels.csv",
               ["case_id", "dermatologist_gradable_for_skin_condition_1", "dermatologist_skin_condition_on_label_name",
                "dermatologist_skin_condition_confidence", "weighted_skin_condition_label",
                "dermatologist_fitzpatrick_skin_type_label_1", "monk_skin_tone_label_india",
                "monk_skin_tone_label_us"], label_rows)
    return root


def write_ham10000(directory) -> Path:
    """`HAM10000_metadata.csv` + both image folders: 14 lesions (2 per dx) of 1–3 images."""
    root = Path(directory)
    rng = np.random.default_rng(2)
    rows, image = [], 24306
    for n in range(2 * len(HAM_DX)):
        lesion, dx = f"HAM_{n * 37 + 118:07d}", HAM_DX[n % len(HAM_DX)]
        age = "" if n == 3 else f"{rng.integers(2, 17) * 5}.0"
        for _ in range(int(rng.integers(1, 4))):
            image_id = f"ISIC_{image:07d}"
            write_image(root / HAM_IMAGE_DIRS[image % 2] / f"{image_id}.jpg", rng, "RGB")
            rows.append([lesion, image_id, dx, ["histo", "follow_up", "consensus", "confocal"][n % 4], age,
                         ["male", "female", "unknown"][n % 3], ["back", "face", "lower extremity", "trunk"][n % 4]])
            image += 1
    _write_csv(root / "HAM10000_metadata.csv", HAM_HEADER, rows)
    return root


def _chexpert_rows(root: Path, rng, patients, split: str, uncertain: bool) -> list[list]:
    rows = []
    for p in patients:
        sex = "Unknown" if p == 3 else ["Female", "Male"][p % 2]
        age = str(int(rng.integers(18, 91)))
        for study in range(1, int(rng.integers(1, 4)) + 1):
            values = ["1.0", "0.0", "-1.0", ""] if uncertain else ["1.0", "0.0"]
            labels = [values[int(rng.integers(len(values)))] for _ in CHEXPERT_LABELS]
            for view in range(1, int(rng.integers(1, 3)) + 1):
                frontal = view == 1
                rel = f"{split}/patient{p:05d}/study{study}/view{view}_{'frontal' if frontal else 'lateral'}.jpg"
                write_image(root / rel, rng, "L" if (p + view) % 5 else "RGB")
                ap_pa = ("LL" if p == 5 else "") if not frontal else ["AP", "PA"][study % 2]
                rows.append([f"CheXpert-v1.0-small/{rel}", sex, age, "Frontal" if frontal else "Lateral", ap_pa,
                             *labels])
    return rows


def write_chexpert(directory, with_root: bool = True) -> Path:
    """CheXpert-v1.0-small: 16 train patients (1–3 studies, 1–2 views), 3 valid patients.

    `with_root=False` unpacks without the `CheXpert-v1.0-small/` folder, as some mirrors do; the
    Path column keeps it either way.
    """
    manual = Path(directory)
    root = manual / "CheXpert-v1.0-small" if with_root else manual
    rng = np.random.default_rng(3)
    _write_csv(root / "train.csv", CHEXPERT_HEADER, _chexpert_rows(root, rng, range(1, 17), "train", True))
    _write_csv(root / "valid.csv", CHEXPERT_HEADER, _chexpert_rows(root, rng, range(17, 20), "valid", False))
    return manual


def write_nih(directory, split_dirs: bool = False, old_csv: bool = False) -> Path:
    """NIH ChestX-ray14: 18 patients of 1–4 PNGs, 5 of them in test_list.txt.

    `split_dirs`: images in images_001/images/ and images_002/images/ instead of images/.
    `old_csv`: Data_Entry_2017.csv with ages such as '058Y' (one implausible, 148Y) and a
    trailing comma, as in the first release.
    """
    root = Path(directory)
    rng = np.random.default_rng(4)
    rows, lists = [], {"train_val_list.txt": [], "test_list.txt": []}
    for p in range(1, 19):
        age = int(rng.integers(1, 95))
        for k in range(int(rng.integers(1, 5))):
            name = f"{p * 13:08d}_{k:03d}.png"
            folder = f"images_{1 + p % 2:03d}/images" if split_dirs else "images"
            write_image(root / folder / name, rng, "RGBA" if p == 4 and k == 0 else "L")
            found = [f for f in NIH_LABELS if rng.random() < 0.15]
            rng.shuffle(found)  # the order within the string is not reliable
            shown_age = (f"{148 if p == 7 else age:03d}Y" if old_csv else str(age))
            row = [name, "|".join(found) or "No Finding", str(k), str(p * 13), shown_age, ["M", "F"][p % 2],
                   ["PA", "AP"][k % 2], "1024", "1024", "0.143", "0.143"]
            rows.append(row + [""] if old_csv else row)
            lists["test_list.txt" if p > 13 else "train_val_list.txt"].append(name)
    header = list(NIH_HEADER) + ([""] if old_csv else [])
    _write_csv(root / ("Data_Entry_2017.csv" if old_csv else "Data_Entry_2017_v2020.csv"), header, rows)
    for name, names in lists.items():
        (root / name).write_text("\n".join(names) + "\n")
    return root

