"""Readers of the three Derm-style manual-download layouts into one list of cases.

Everything that can be checked without decoding images is checked here, before TFDS writes
anything: headers, labels, duplicates, paths, that every image file exists.
"""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from simclr_med.errors import DataError
from tfds_builders.common import find_file, first_existing, inside, missing_image, nfc, read_csv

# The paper's Derm label space (spellings unverified; pass another list to DermConfig to change).
DERM_CONDITIONS = (
    "Acne", "Actinic Keratosis", "Allergic Contact Dermatitis", "Alopecia Areata",
    "Androgenetic Alopecia", "Basal Cell Carcinoma", "Cyst", "Eczema", "Folliculitis",
    "Hidradenitis", "Lentigo", "Melanocytic Nevus", "Melanoma",
    "Post Inflammatory Hyperpigmentation", "Psoriasis", "SCC/SCCIS", "SK/ISK", "Scar Condition",
    "Seborrheic Dermatitis", "Skin Tag", "Stasis Dermatitis", "Tinea", "Tinea Versicolor",
    "Urticaria", "Verruca vulgaris", "Vitiligo",
)
OTHER = "Other"
HAM_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")

GENERIC_CSV = "cases.csv"
GENERIC_REQUIRED = ("case_id", "image_path", "label")
GENERIC_OPTIONAL = ("skin_type", "sex", "age")
SCIN_CSVS = ("scin_cases.csv", "scin_labels.csv")
HAM_CSV = "HAM10000_metadata.csv"
HAM_HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
HAM_IMAGE_DIRS = ("HAM10000_images_part_1", "HAM10000_images_part_2")

METADATA_KEYS = {
    "generic": GENERIC_OPTIONAL,
    "scin": ("skin_type", "sex", "age"),
    "ham10000": ("sex", "age", "localization", "dx_type"),
}


@dataclasses.dataclass
class Case:
    case_id: str
    label: str
    row: int  # first row naming the case, for messages
    images: list = dataclasses.field(default_factory=list)  # (image_id, path, where)
    metadata: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Index:
    cases: list
    class_names: list
    sources: list  # the index files, fingerprinted to tell downloads apart
    notes: list  # rows left out on purpose, reported to the user


def _add_image(case: Case, manual_dir: Path, path: Path, source: str, row: int, seen: dict) -> None:
    """Appends an image to its case, refusing duplicates, images shared by cases, missing files.

    The id is the path as the CSV writes it; names are compared after Unicode normalisation
    (common.find_file), so the file may be stored composed or decomposed.
    """
    where = f"{source} row {row}"
    image_id = path.relative_to(manual_dir).as_posix()
    if nfc(image_id) in seen:
        prev_row, prev_case = seen[nfc(image_id)]
        if prev_case == case.case_id:
            raise DataError(f"{where}: duplicated row, image {image_id!r} of case {case.case_id!r} "
                            f"is already listed in {source} row {prev_row}")
        raise DataError(f"{where}: image {image_id!r} is also used by case {prev_case!r} ({source} row "
                        f"{prev_row}); an image may belong to one case only")
    found = find_file(path)
    if found is None:
        raise missing_image(path, where, image_id, manual_dir)
    seen[nfc(image_id)] = (row, case.case_id)
    case.images.append((image_id, found, where))


def _check_labels(cases, class_names, source: str) -> None:
    known = set(class_names)
    for c in cases:
        if c.label not in known:
            raise DataError(f"{source} row {c.row}: unknown label {c.label!r} for case {c.case_id!r}; "
                            f"known labels: {', '.join(class_names)}")


def read_generic(manual_dir: Path, class_names=None) -> Index:
    """`cases.csv`: one row per image (`case_id,image_path,label[,skin_type,sex,age]`)."""
    [path] = source_files("generic", manual_dir)
    cases: dict[str, Case] = {}
    seen: dict = {}
    for row, r in read_csv(path, required=GENERIC_REQUIRED, optional=GENERIC_OPTIONAL):
        where = f"{GENERIC_CSV} row {row}"
        if not r["case_id"]:
            raise DataError(f"{where}: empty case_id")
        if not r["label"]:
            raise DataError(f"{where}: empty label for case {r['case_id']!r}")
        case = cases.setdefault(r["case_id"], Case(r["case_id"], r["label"], row))
        if r["label"] != case.label:
            raise DataError(f"{where}: case {case.case_id!r} has label {r['label']!r} but row {case.row} "
                            f"gives {case.label!r}; a case has one label")
        for key in GENERIC_OPTIONAL:
            if not case.metadata.get(key):
                case.metadata[key] = r.get(key, "")
        _add_image(case, manual_dir, inside(manual_dir, r["image_path"], where), GENERIC_CSV, row, seen)
    names = list(class_names) if class_names else sorted({c.label for c in cases.values()})
    _check_labels(cases.values(), names, GENERIC_CSV)
    return Index(list(cases.values()), names, [path], [])


def _scin_label(text: str, where: str, class_names) -> str:
    """Argmax of the dermatologists' weighted differential, mapped into `class_names`."""
    try:
        weights = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        weights = None
    if not isinstance(weights, dict) or not weights or not all(
            isinstance(v, (int, float)) for v in weights.values()):
        raise DataError(f"{where}: weighted_skin_condition_label {text[:80]!r} is not a dict of "
                        f"condition -> weight")
    top = str(max(weights.items(), key=lambda kv: kv[1])[0]).strip()
    by_lower = {n.lower(): n for n in class_names}
    if top.lower() in by_lower:
        return by_lower[top.lower()]
    if OTHER in class_names:
        return OTHER
    raise DataError(f"{where}: condition {top!r} is not one of the configured classes and there is no "
                    f"{OTHER!r} class")


def _scin_image(manual_dir: Path, rel: str, where: str) -> Path:
    """SCIN paths are relative to the bucket root (`dataset/images/…`); the manual dir may be
    that root or its `dataset/` folder."""
    path = inside(manual_dir, rel, where)
    parts = path.relative_to(manual_dir).parts
    if not find_file(path) and len(parts) > 1 and find_file(manual_dir.joinpath(*parts[1:])):
        return find_file(manual_dir.joinpath(*parts[1:]))
    return path


def _scin_root(manual_dir: Path) -> Path:
    return manual_dir if (manual_dir / SCIN_CSVS[0]).is_file() else manual_dir / "dataset"


def read_scin(manual_dir: Path, class_names) -> Index:
    """SCIN: `scin_cases.csv` + `scin_labels.csv` joined on the string `case_id`."""
    cases_csv, labels_csv = source_files("scin", manual_dir)
    labels = {}
    for row, r in read_csv(labels_csv, required=("case_id", "weighted_skin_condition_label")):
        if r["case_id"] in labels:
            raise DataError(f"{SCIN_CSVS[1]} row {row}: duplicated case_id {r['case_id']!r} "
                            f"(first at row {labels[r['case_id']][0]})")
        labels[r["case_id"]] = (row, r["weighted_skin_condition_label"])
    cases: dict[str, Case] = {}
    seen: dict = {}
    unlabeled = 0
    image_cols = ("image_1_path", "image_2_path", "image_3_path")
    for row, r in read_csv(cases_csv, required=("case_id",) + image_cols):
        where = f"{SCIN_CSVS[0]} row {row}"
        cid = r["case_id"]
        if not cid:
            raise DataError(f"{where}: empty case_id")
        if cid in cases:
            raise DataError(f"{where}: duplicated case_id {cid!r} (first at row {cases[cid].row})")
        label_row, text = labels.get(cid, (None, ""))
        if not text or text.lower() in ("nan", "none", "{}"):
            unlabeled += 1
            continue
        case = Case(cid, _scin_label(text, f"{SCIN_CSVS[1]} row {label_row}", class_names), row)
        case.metadata = {"skin_type": r.get("fitzpatrick_skin_type", ""), "sex": r.get("sex_at_birth", ""),
                         "age": r.get("age_group", "")}
        for col in image_cols:
            if r[col]:
                _add_image(case, manual_dir, _scin_image(manual_dir, r[col], where), SCIN_CSVS[0], row, seen)
        if not case.images:
            raise DataError(f"{where}: case {cid!r} lists no image")
        cases[cid] = case
    notes = [f"{unlabeled} case(s) of {SCIN_CSVS[0]} have no weighted_skin_condition_label and were "
             f"left out"] if unlabeled else []
    return Index(list(cases.values()), list(class_names), [cases_csv, labels_csv], notes)


def _ham_images(manual_dir: Path) -> dict[str, Path]:
    """`<image_id>` → file, over both image folders (Kaggle also ships lower-case copies)."""
    index: dict[str, Path] = {}
    for name in HAM_IMAGE_DIRS + tuple(d.lower() for d in HAM_IMAGE_DIRS):
        folder = manual_dir / name
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() == ".jpg":
                    index.setdefault(f.stem, f)
    if not index:
        raise DataError(f"no HAM10000 images under {manual_dir}: expected {HAM_IMAGE_DIRS[0]}/ and "
                        f"{HAM_IMAGE_DIRS[1]}/ holding <image_id>.jpg")
    return index


def _age(text: str) -> str:
    try:
        return str(int(float(text))) if text else ""
    except ValueError:
        return text


def read_ham10000(manual_dir: Path, class_names) -> Index:
    """HAM10000: one row per image; `lesion_id` is the case."""
    [path] = source_files("ham10000", manual_dir)
    files = _ham_images(manual_dir)
    cases: dict[str, Case] = {}
    seen: dict = {}
    for row, r in read_csv(path, header=HAM_HEADER, header_prefix=True):
        where = f"{HAM_CSV} row {row}"
        if not r["lesion_id"] or not r["image_id"]:
            raise DataError(f"{where}: empty lesion_id or image_id")
        case = cases.setdefault(r["lesion_id"], Case(r["lesion_id"], r["dx"], row))
        if r["dx"] != case.label:
            raise DataError(f"{where}: lesion {case.case_id!r} has dx {r['dx']!r} but row {case.row} gives "
                            f"{case.label!r}")
        if r["image_id"] not in files:
            raise DataError(f"{where}: image '{r['image_id']}.jpg' not found in {HAM_IMAGE_DIRS[0]}/ or "
                            f"{HAM_IMAGE_DIRS[1]}/ under {manual_dir}")
        if not case.metadata:
            case.metadata = {"sex": r["sex"], "age": _age(r["age"]), "localization": r["localization"],
                             "dx_type": r["dx_type"]}
        _add_image(case, manual_dir, files[r["image_id"]], HAM_CSV, row, seen)
    _check_labels(cases.values(), class_names, HAM_CSV)
    return Index(list(cases.values()), list(class_names), [path], [])


READERS = {"generic": read_generic, "scin": read_scin, "ham10000": read_ham10000}


def source_files(layout: str, manual_dir: Path) -> list[Path]:
    """The index files of a download (what its fingerprint covers)."""
    if layout == "generic":
        return [first_existing(manual_dir, [GENERIC_CSV], "generic layout's index")]
    if layout == "ham10000":
        return [first_existing(manual_dir, [HAM_CSV], "HAM10000 metadata")]
    root = _scin_root(manual_dir)
    return [first_existing(root, [name], "SCIN table") for name in SCIN_CSVS]
