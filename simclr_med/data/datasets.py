"""Every supported dataset as the same stream of standardized examples (docs/CONTRACTS.md).

`load` builds the TFDS dataset from the user's manual download on first use and reuses it after;
labels policies (CheXpert uncertainty) and label fractions are applied here, at load time, so
one build serves every experiment.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import tfds_builders  # noqa: F401  (registers the builders with TFDS)
from simclr_med.data.demo import write_demo_cases
from simclr_med.errors import DataError
from tfds_builders import common
from tfds_builders.cxr_labels import (CHEXPERT_TASKS, NIH_FOR_CHEXPERT, NIH_LABELS, POLICIES,
                                      apply_uncertainty_policy)

__all__ = ["DatasetMeta", "NAMES", "apply_uncertainty_policy", "builder_for", "load", "select_cases"]

# name → (TFDS name, kind)
_DATASETS = {
    "demo": ("derm_cases/generic", "derm"),
    "derm_cases/generic": ("derm_cases/generic", "derm"),
    "derm_cases/scin": ("derm_cases/scin", "derm"),
    "derm_cases/ham10000": ("derm_cases/ham10000", "derm"),
    "chexpert_v1": ("chexpert_v1", "chexpert"),
    "nih_chestxray14": ("nih_chestxray14", "nih"),
}
NAMES = tuple(_DATASETS)
# The features the label-fraction pass reads (never the images).
_INDEX_FEATURES = {"derm": ("case_id", "label", "image_ids"), "chexpert": ("patient_id", "raw_labels"),
                   "nih": ("patient_id", "labels")}
_READ_CONFIG = dict(try_autocache=False)  # caching is the pipeline's decision (--cache_dataset)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    name: str
    class_names: list
    num_classes: int
    multi_label: bool
    eval_tasks: list  # the classes the headline metric averages over
    num_examples: int  # of this split, after label_fraction
    num_images: int  # images in those examples (= num_examples for chest X-rays)
    has_bags: bool  # some example holds more than one image
    metadata_keys: list


def _kind(name: str) -> tuple[str, str]:
    if name not in _DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    return _DATASETS[name]


def _demo_dirs(data_dir) -> tuple[Path, Path]:
    """The demo's own manual dir and TFDS dir under data_dir: never mixed with a user's generic build."""
    root = Path(data_dir or tfds.core.constants.DATA_DIR)
    manual = root / "demo_manual"
    if not manual.exists():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".demo_manual.", dir=root))
        try:
            write_demo_cases(tmp)
            tmp.rename(manual)  # atomic: an interrupted write never looks complete
        except OSError:
            if not (manual / "cases.csv").is_file():  # not merely another process finishing first
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not (manual / "cases.csv").is_file():
        raise DataError(f"{manual} exists but holds no cases.csv; delete it to let the demo rewrite it")
    return root / "demo_tfds", manual


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


def builder_for(name: str, data_dir, manual_dir=None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of `name`, built from `manual_dir` if data_dir has none yet.

    A build that fails leaves nothing that looks complete (TFDS writes to a temporary folder).
    With `manual_dir` given, an existing build must come from the same download (same index
    files), else this raises rather than silently using stale data.
    """
    tfds_name, _ = _kind(name)
    if data_dir and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"data_dir {os.fspath(data_dir)!r} is not a directory")
    if name == "demo":
        if manual_dir:
            raise DataError("the demo dataset writes its own data; do not pass manual_dir with it")
        data_dir, manual_dir = _demo_dirs(data_dir)
    with _own_tempdir():
        builder = tfds.builder(tfds_name, data_dir=os.fspath(data_dir) if data_dir else None)
    if manual_dir and not Path(manual_dir).is_dir():
        raise DataError(f"manual_dir {os.fspath(manual_dir)!r} is not a directory")
    if builder.is_prepared():
        if manual_dir and builder.info.metadata.get("source_sha256") != common.fingerprint(
                builder.source_files(manual_dir)):
            raise DataError(f"{builder.data_path} was built from a different download than {manual_dir}; "
                            f"use another data_dir, or delete {builder.data_path} to rebuild")
        return builder
    if not manual_dir:
        raise DataError(f"{name} is not built under {data_dir or tfds.core.constants.DATA_DIR}; pass manual_dir "
                        f"(the folder of the download): {' '.join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


def _case_id(kind: str, ex):
    return ex["case_id"] if kind == "derm" else ex["patient_id"]


def _targets(kind: str, ex, policy: str) -> dict:
    if kind == "derm":
        return {"label": ex["label"]}
    if kind == "chexpert":
        labels, mask = apply_uncertainty_policy(ex["raw_labels"], policy)
        return {"labels": labels, "label_mask": mask}
    return {"labels": ex["labels"], "label_mask": tf.ones_like(ex["labels"])}


def _standardize(kind: str, policy: str):
    def fn(ex):
        if kind == "derm":
            images, ids = ex["images"], ex["image_ids"]
        else:
            images, ids = ex["image"][tf.newaxis], ex["image_id"][tf.newaxis]
        return {"images": images, "image_ids": ids, "case_id": _case_id(kind, ex),
                **_targets(kind, ex, policy), "metadata": ex["metadata"]}
    return fn


def _label_index(builder, split: str, kind: str, policy: str):
    """Per example: case id, label(s), mask, number of images — without reading the images."""
    decoders = tfds.decode.PartialDecoding({k: True for k in _INDEX_FEATURES[kind]})
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders,
                            read_config=tfds.ReadConfig(**_READ_CONFIG))

    def row(ex):
        t = _targets(kind, ex, policy)
        labels = t.get("label", t.get("labels"))
        mask = t.get("label_mask", tf.ones_like(labels, tf.float32))
        n = tf.size(ex["image_ids"]) if kind == "derm" else tf.constant(1)
        return _case_id(kind, ex), labels, mask, n

    parts = list(zip(*ds.map(row).batch(4096).as_numpy_iterator()))
    if not parts:
        raise DataError(f"{builder.name}/{split} is empty")
    case_ids, labels, mask, n = (np.concatenate(p) for p in parts)
    return case_ids.astype(str), labels, mask, n


def select_cases(case_ids, labels, label_mask, fraction: float, seed: int, class_names,
                 where: str = "the split") -> np.ndarray:
    """Per-example keep mask for a `fraction` of the cases (patients), stratified by label.

    Whole cases are kept or dropped. Cases are grouped by label (multi-label: by which classes
    the case has positives for), shuffled with `seed` within each group, and taken by weighted
    round robin so each group keeps about `fraction` of its examples. Same inputs → same subset.
    Raises if a class present in the split would lose all its examples (positives).
    """
    case_ids, labels = np.asarray(case_ids), np.asarray(labels)
    multi_label = labels.ndim == 2
    cases, first, inverse = np.unique(case_ids, return_index=True, return_inverse=True)
    weights = np.bincount(inverse)
    if multi_label:
        positive = (labels * np.asarray(label_mask)) > 0
        per_case = np.zeros((len(cases), labels.shape[1]), bool)
        np.logical_or.at(per_case, inverse, positive)
        strata = [tuple(r) for r in per_case.astype(int).tolist()]
    else:
        strata = labels[first].tolist()
    order = common.stratified_order(list(cases), strata, seed)
    position = {c: i for i, c in enumerate(cases)}
    assignment = common.weighted_round_robin([(c, int(weights[position[c]])) for c in order],
                                             {"keep": fraction, "drop": 1.0 - fraction})
    keep = np.array([assignment[c] == "keep" for c in cases])[inverse]
    if multi_label:
        present, kept = positive.any(0), positive[keep].any(0)
    else:
        present = np.isin(np.arange(len(class_names)), labels)
        kept = np.isin(np.arange(len(class_names)), labels[keep])
    for k in np.flatnonzero(present & ~kept):
        has = positive[:, k] if multi_label else labels == k
        raise DataError(f"label_fraction={fraction} leaves class {str(class_names[k])!r} with no example in {where} "
                        f"({len(np.unique(case_ids[has]))} case(s) have it); use a larger fraction")
    return keep


def load(name: str, split: str, *, data_dir, manual_dir=None, uncertainty_policy: str = "mixed",
         label_fraction: float = 1.0, seed: int = 0) -> tuple[tf.data.Dataset, DatasetMeta]:
    """(dataset of standardized examples, DatasetMeta) for `name`/`split`; see docs/CONTRACTS.md."""
    _, kind = _kind(name)
    if uncertainty_policy not in POLICIES:
        raise ValueError(f"uncertainty_policy {uncertainty_policy!r} is not one of {', '.join(POLICIES)}")
    if not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction={label_fraction} must be in (0, 1]")
    builder = builder_for(name, data_dir, manual_dir)
    if split not in builder.info.splits:
        raise DataError(f"{name} has no split {split!r}; splits: {', '.join(sorted(builder.info.splits))}")
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=tfds.ReadConfig(**_READ_CONFIG))
    ds = ds.map(_standardize(kind, uncertainty_policy), num_parallel_calls=tf.data.AUTOTUNE)

    if kind == "derm":
        class_names = list(builder.info.features["label"].names)
        eval_tasks = [c for c in class_names if c != "Other"]
    elif kind == "chexpert":
        class_names = eval_tasks = list(CHEXPERT_TASKS)
    else:
        class_names, eval_tasks = list(NIH_LABELS), [NIH_FOR_CHEXPERT[t] for t in CHEXPERT_TASKS]

    if label_fraction < 1.0:
        case_ids, labels, mask, n = _label_index(builder, split, kind, uncertainty_policy)
        keep = select_cases(case_ids, labels, mask, label_fraction, seed, class_names, f"{name}/{split}")
        kept = sorted(set(case_ids[keep]))
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(kept), tf.ones(len(kept), tf.int64)), 0)
        ds = ds.filter(lambda ex: table.lookup(ex["case_id"]) > 0)
        num_examples, num_images, max_images = int(keep.sum()), int(n[keep].sum()), int(n[keep].max())
    else:
        num_examples = builder.info.splits[split].num_examples
        stats = builder.info.metadata.get("split_stats", {}).get(split, {})
        num_images, max_images = stats.get("num_images", num_examples), stats.get("max_images", 1)

    meta = DatasetMeta(name=name, class_names=class_names, num_classes=len(class_names),
                       multi_label=kind != "derm", eval_tasks=eval_tasks, num_examples=num_examples,
                       num_images=num_images, has_bags=max_images > 1,
                       metadata_keys=list(builder.info.features["metadata"].keys()))
    return ds, meta
