"""Every supported dataset as the same stream of standardized examples (docs/CONTRACTS.md).

`load` builds the TFDS dataset from the user's manual download on first use and reuses it after;
labels policies (CheXpert uncertainty) and label fractions are applied here, at load time, so
one build serves every experiment.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from simclr_med import io
from simclr_med.data.demo import write_demo_cases
from simclr_med.errors import DataError
from tfds_builders import common, registry
from tfds_builders.cxr_labels import (
    CHEXPERT_TASKS,
    NIH_FOR_CHEXPERT,
    NIH_LABELS,
    POLICIES,
    apply_uncertainty_policy,
)

__all__ = ["DatasetMeta", "NAMES", "apply_uncertainty_policy", "builder_for", "load", "select_cases"]

# The real datasets are tfds_builders' table; the demo is derm_cases/generic over data it writes itself.
_DEMO = "derm_cases/generic"
NAMES = ("demo", *registry.NAMES)
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


def _kind(name: str) -> str:
    if name not in NAMES:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(NAMES)}")
    return registry.DATASETS[_DEMO if name == "demo" else name].kind


def _demo_dirs(data_dir) -> tuple[str, str]:
    """The demo's own manual dir and TFDS dir under data_dir: never mixed with a user's generic build."""
    root = os.fspath(data_dir or tfds.core.constants.DATA_DIR)
    manual = os.path.join(root, "demo_manual")
    # Published whole, so an interrupted write never looks complete; a copy another process
    # published first is kept.
    io.publish_dir(manual, write_demo_cases, replace=False)
    if not io.isfile(os.path.join(manual, "cases.csv")):
        raise DataError(f"{manual} exists but holds no cases.csv; delete it to let the demo rewrite it")
    return os.path.join(root, "demo_tfds"), manual


def builder_for(name: str, data_dir, manual_dir=None,
                pixel_bits: int | None = None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of `name` (see tfds_builders.registry.builder_for); `demo` writes its
    own manual dir under data_dir first, so it takes none."""
    _kind(name)
    if name != "demo":
        return registry.builder_for(name, data_dir, manual_dir, pixel_bits)
    registry.check_data_dir(data_dir)
    if manual_dir:
        raise DataError("the demo dataset writes its own data; do not pass manual_dir with it")
    return registry.builder_for(_DEMO, *_demo_dirs(data_dir), pixel_bits)


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
        raise DataError(f"label_fraction={fraction} leaves class {str(class_names[k])!r} "
                        f"with no example in {where} "
                        f"({len(np.unique(case_ids[has]))} case(s) have it); use a larger fraction")
    return keep


def load(name: str, split: str, *, data_dir, manual_dir=None, uncertainty_policy: str = "mixed",
         label_fraction: float = 1.0, seed: int = 0,
         pixel_bits: int | None = None) -> tuple[tf.data.Dataset, DatasetMeta]:
    """(dataset of standardized examples, DatasetMeta) for `name`/`split`; see docs/CONTRACTS.md.

    `pixel_bits`: --pixel_bits for a build (None: 0 when building, any setting when reusing)."""
    kind = _kind(name)
    if uncertainty_policy not in POLICIES:
        raise ValueError(f"uncertainty_policy {uncertainty_policy!r} is not one of {', '.join(POLICIES)}")
    if not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction={label_fraction} must be in (0, 1]")
    builder = builder_for(name, data_dir, manual_dir, pixel_bits)
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
