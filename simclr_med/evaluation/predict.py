"""Predictions and the paper's metrics for a trained classifier.

Derm-style cases are scored per case (probabilities averaged over the case's images, as the
paper does for multi-image cases); chest X-rays per image. A model trained on one label
space can be scored on another (zero-shot CheXpert → NIH) over the pathologies they share.
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

from simclr_med.evaluation import metrics
from simclr_med.errors import DataError

# Names that mean the same finding in different datasets (CheXpert name → alternatives).
ALIASES = {"Pleural Effusion": ("Effusion",)}


def _canonical(name: str) -> str:
    for canon, others in ALIASES.items():
        if name in others:
            return canon
    return name


def label_alignment(model_classes, data_classes) -> tuple[list[int], list[int], list[str]]:
    """Columns of the model output and of the dataset labels that name the same finding."""
    data_index = {_canonical(c): i for i, c in enumerate(data_classes)}
    model_cols, data_cols, names = [], [], []
    for i, c in enumerate(model_classes):
        j = data_index.get(_canonical(c))
        if j is not None:
            model_cols.append(i)
            data_cols.append(j)
            names.append(c)
    if not names:
        raise DataError(f"the model's classes {list(model_classes)} share none with the evaluation "
                        f"dataset's {list(data_classes)}")
    return model_cols, data_cols, names


def predict(model, dataset) -> dict:
    """Runs the classifier over an eval pipeline built `with_ids=True`; one row per image."""
    @tf.function
    def step(images):
        embedding = model.embed(images, training=False)
        return model.probabilities(model.head(tf.cast(embedding, tf.float32))), tf.cast(embedding, tf.float32)

    rows = {"probs": [], "embeddings": [], "case_ids": [], "labels": [], "label_mask": []}
    for batch in dataset:
        probs, emb = step(batch["image"])
        rows["probs"].append(probs.numpy())
        rows["embeddings"].append(emb.numpy())
        rows["case_ids"].append(batch["case_id"].numpy().astype(str))
        for key, value in batch.get("metadata", {}).items():
            rows.setdefault(f"meta_{key}", []).append(value.numpy().astype(str))
        if "labels" in batch:
            rows["labels"].append(batch["labels"].numpy())
            rows["label_mask"].append(batch["label_mask"].numpy())
        else:
            rows["labels"].append(batch["label"].numpy())
    if not rows["probs"]:
        raise DataError("the evaluation split is empty")
    return {k: np.concatenate(v) for k, v in rows.items() if v}


def score(raw: dict, *, model_classes, model_multi_label: bool, data_classes, eval_tasks) -> dict:
    """Turns per-image rows into a predictions dict (contract in docs/CONTRACTS.md)."""
    if model_multi_label != ("label_mask" in raw):
        raise DataError("the model is " + ("multi-label" if model_multi_label else "multi-class")
                        + " but the evaluation dataset is not")
    pred = {"class_names": np.array(model_classes), "multi_label": np.array(model_multi_label)}
    meta = {k: v for k, v in raw.items() if k.startswith("meta_")}
    if model_multi_label:
        model_cols, data_cols, names = label_alignment(model_classes, data_classes)
        pred.update(probs=raw["probs"][:, model_cols], labels=raw["labels"][:, data_cols],
                    label_mask=raw["label_mask"][:, data_cols], case_ids=raw["case_ids"],
                    class_names=np.array(names), embeddings=raw["embeddings"], **meta)
        tasks = [t for t in eval_tasks if _canonical(t) in {_canonical(n) for n in names}]
        pred["eval_tasks"] = np.array([n for n in names if _canonical(n) in {_canonical(t) for t in tasks}] or names)
    else:
        if list(data_classes) != list(model_classes):
            raise DataError(f"the evaluation dataset's classes {list(data_classes)} differ from the "
                            f"model's {list(model_classes)}")
        pred.update(metrics.average_by_case(raw["probs"], raw["case_ids"], raw["labels"]))
        _, index, _ = metrics.case_groups(raw["case_ids"])
        counts = np.bincount(index)
        emb = np.zeros((len(counts), raw["embeddings"].shape[1]), np.float32)
        np.add.at(emb, index, raw["embeddings"])
        pred["embeddings"] = emb / counts[:, None]
        first = metrics.case_groups(raw["case_ids"])[2]
        pred.update({k: v[first] for k, v in meta.items()})
        pred["eval_tasks"] = np.array(list(eval_tasks))
    return pred


def write_results(pred: dict, out_dir: str, *, step: int, extra: dict) -> dict:
    """result.json, result_<step>.json and predictions.npz in `out_dir`; returns the result."""
    result = metrics.compute_metrics(pred)
    result.update(global_step=step, num_examples=int(len(pred["probs"])), **extra)
    os.makedirs(out_dir, exist_ok=True)
    text = json.dumps(result, indent=2, sort_keys=True, default=float)
    for name in ("result.json", f"result_{step}.json"):
        _atomic_write(os.path.join(out_dir, name), text.encode())
    tmp = os.path.join(out_dir, "predictions.tmp.npz")
    np.savez_compressed(tmp, **pred)
    os.replace(tmp, os.path.join(out_dir, "predictions.npz"))
    return result


def _atomic_write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
