"""Predictions and the paper's metrics for a trained classifier, from a checkpoint or in training.

Derm-style cases are scored per case (probabilities averaged over the case's images, as the
paper does for multi-image cases); chest X-rays per image. A model trained on one label
space can be scored on another (zero-shot CheXpert → NIH) over the pathologies they share.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from simclr_med import io
from simclr_med.data import datasets, pipelines
from simclr_med.data.labels import chexpert_name
from simclr_med.errors import CheckpointError, DataError
from simclr_med.evaluation import metrics
from simclr_med.train import checkpoints


def label_alignment(model_classes, data_classes) -> tuple[list[int], list[int], list[str]]:
    """Columns of the model output and of the dataset labels that name the same finding."""
    data_index = {chexpert_name(c): i for i, c in enumerate(data_classes)}
    model_cols, data_cols, names = [], [], []
    for i, c in enumerate(model_classes):
        j = data_index.get(chexpert_name(c))
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
        wanted = {chexpert_name(t) for t in eval_tasks}
        pred["eval_tasks"] = np.array([n for n in names if chexpert_name(n) in wanted] or names)
    else:
        if list(data_classes) != list(model_classes):
            raise DataError(f"the evaluation dataset's classes {list(data_classes)} differ from the "
                            f"model's {list(model_classes)}")
        pred.update(metrics.average_by_case(raw))
        pred["eval_tasks"] = np.array(list(eval_tasks))
    return pred


def eval_data(cfg, name: str, split: str):
    """(pipeline, metadata) of `name`/`split` as every classifier evaluation reads it: each image
    once, in order, with its case id, after the evaluation crop."""
    ds, meta = datasets.load(name, split, data_dir=cfg.data_dir, manual_dir=cfg.manual_dir or None,
                             uncertainty_policy=cfg.uncertainty_policy, seed=cfg.seed,
                             pixel_bits=cfg.pixel_bits)
    return pipelines.supervised_dataset(ds, meta, batch_size=cfg.eval_batch_size, image_size=cfg.image_size,
                                        augmentation="none", training=False, with_ids=True), meta


def restore_checkpoint(model, path: str) -> int:
    """Restores the weights of checkpoint `path` into `model`; returns its step."""
    try:
        checkpoints.restore_weights(model, path)
    except (tf.errors.OpError, IndexError, ValueError, AssertionError) as e:
        raise CheckpointError(f"{path}: does not match this model ({str(e).splitlines()[0][:200]})") from None
    step = checkpoints.step_of(path)
    return step if step >= 0 else checkpoints.global_step(model.optimizer)


def evaluate_checkpoint(model, checkpoint: str | None, data, classes: dict, *,
                        out_dir: str | None = None, extra: dict | None = None) -> dict:
    """Scores a classifier: `checkpoint` restored into `model` (None: `model` as it is).

    `data()` gives the (pipeline, metadata) of `eval_data`; it is called after the restore, so
    a checkpoint that does not fit fails before any data is read. `classes` is the run's
    classes.json. Returns the metrics, or with `out_dir` the result written there by
    `write_results` (`extra` added).
    """
    step = restore_checkpoint(model, checkpoint) if checkpoint else None
    dataset, meta = data()
    pred = score(predict(model, dataset), model_classes=classes["class_names"],
                 model_multi_label=classes["multi_label"], data_classes=meta.class_names,
                 eval_tasks=classes["eval_tasks"])
    if out_dir is None:
        return metrics.compute_metrics(pred)
    step = checkpoints.global_step(model.optimizer) if step is None else step
    return write_results(pred, out_dir, step=step, extra=extra or {})


def write_results(pred: dict, out_dir: str, *, step: int, extra: dict) -> dict:
    """result.json, result_<step>.json and predictions.npz in `out_dir`; returns the result."""
    result = metrics.compute_metrics(pred)
    result.update(global_step=step, num_examples=int(len(pred["probs"])), **extra)
    for name in ("result.json", f"result_{step}.json"):
        io.write_json(os.path.join(out_dir, name), result, sort_keys=True, default=float)
    io.write_npz(os.path.join(out_dir, "predictions.npz"), pred, compressed=True)
    return result
