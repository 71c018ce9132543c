"""Evaluation metrics of the paper, computed from a predictions file (docs/CONTRACTS.md).

Multi-class (Derm): top-1/top-3 accuracy, top-k sensitivity (per-class recall@k averaged over
the named conditions, i.e. without "Other"), one-vs-rest AUC. Multi-label (CheXpert/NIH): AUC
per label and the mean over the 5 CheXpert pathologies.

Every function returns a flat dict of plain Python floats/ints (or None where a figure is
undefined) so results go straight into JSON. Per-class figures use the keys
`sensitivity_top1_<class>`, `sensitivity_top3_<class>` and `auc_<class>`; a class absent from
the labels has no per-class key (its recall and AUC are undefined).
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

from simclr_med import io
from simclr_med.data.labels import CHEXPERT_TASKS, chexpert_name
from simclr_med.errors import DataError

# Arrays of a predictions dict with one row per example (the rest describe the label space).
ROW_KEYS = ("probs", "labels", "label_mask", "case_ids", "embeddings")


def binary_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC via the Mann-Whitney rank statistic (ties count half); None if y has one class.

    Much cheaper than sklearn's roc_auc_score, which matters inside a 1,000-replicate bootstrap.
    """
    y = np.asarray(y, bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(scores)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def finite(value) -> float | None:
    """A metric value as a float; None where it is undefined (None, NaN, ±inf) or not a number."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def top_k_hits(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row, the chance that the true class is among the top k when ties are broken at random.

    A saturated or collapsed model scores classes equally; counting a tie as a hit would give
    a constant prediction 100% accuracy, counting it as a miss 0%.
    """
    true_scores = probs[np.arange(len(labels)), labels][:, None]
    higher = (probs > true_scores).sum(axis=1)
    tied = (probs == true_scores).sum(axis=1)  # the true class included
    return np.clip((k - higher) / tied, 0.0, 1.0)


def multiclass_metrics(probs, labels, class_names: Sequence[str], exclude=("Other",),
                       graded: bool = False) -> dict:
    """Derm-protocol metrics for one label per example.

    `top{k}_sensitivity` averages recall@k over the classes present in `labels` minus `exclude`;
    `auc` averages one-vs-rest AUC over every class present (and not all examples).
    `graded=True` adds `kappa_quadratic` of the arg-max prediction (ordinal labels, e.g. DR 0-4).
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    _check_multiclass(probs, labels, class_names)
    hits = {k: top_k_hits(probs, labels, k) for k in (1, 3)}
    out = {"num_examples": int(len(labels))}
    for k in (1, 3):
        out[f"top{k}_accuracy"] = float(np.mean(hits[k]))
    present = [c for c in range(len(class_names)) if np.any(labels == c)]
    for k in (1, 3):
        recalls = {c: float(np.mean(hits[k][labels == c])) for c in present}
        named = [r for c, r in recalls.items() if class_names[c] not in exclude]
        out[f"top{k}_sensitivity"] = float(np.mean(named)) if named else None
        out.update({f"sensitivity_top{k}_{class_names[c]}": r for c, r in recalls.items()})
    aucs = {class_names[c]: binary_auc(labels == c, probs[:, c]) for c in present}
    aucs = {name: a for name, a in aucs.items() if a is not None}
    out["auc"] = float(np.mean(list(aucs.values()))) if aucs else None
    out.update({f"auc_{name}": a for name, a in aucs.items()})
    if graded:
        out["kappa_quadratic"] = cohen_kappa_quadratic(labels, probs.argmax(axis=1),
                                                       num_classes=len(class_names))
    return out


def multilabel_metrics(probs, labels, mask, class_names: Sequence[str],
                       tasks: Sequence[str] = CHEXPERT_TASKS) -> dict:
    """AUC per label over unmasked entries (`auc_<name>`) and `mean_auc` over `tasks`.

    A label whose unmasked entries are all one class has AUC None and is left out of the mean
    with a warning. A task missing from `class_names` may be there under its NIH name.
    """
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.float64)
    mask = np.ones_like(labels) if mask is None else np.asarray(mask, np.float64)
    _check_multilabel(probs, labels, mask, class_names)
    task_names = resolve_tasks(tasks, class_names)
    out = {"num_examples": int(len(labels))}
    for k, name in enumerate(class_names):
        keep = mask[:, k] > 0
        out[f"auc_{name}"] = binary_auc(labels[keep, k] > 0.5, probs[keep, k])
    undefined = [t for t in task_names if out[f"auc_{t}"] is None]
    if undefined:
        warnings.warn(f"AUC undefined (one class only among unmasked labels) for {undefined}; "
                      "left out of mean_auc", RuntimeWarning, stacklevel=2)
    defined = [out[f"auc_{t}"] for t in task_names if out[f"auc_{t}"] is not None]
    out["mean_auc"] = float(np.mean(defined)) if defined else None
    return out


def resolve_tasks(tasks: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """Map task names onto `class_names`, which may name a finding the NIH way (Effusion)."""
    by_finding = {chexpert_name(c): c for c in class_names}
    resolved = []
    for task in tasks:
        name = task if task in class_names else by_finding.get(chexpert_name(task))
        if name not in class_names:
            raise ValueError(f"task {task!r} is not one of the class names {list(class_names)}")
        resolved.append(name)
    return resolved


def cohen_kappa_quadratic(y_true, y_pred, num_classes: int | None = None) -> float | None:
    """Cohen's kappa with quadratic weights on grade *values* 0..K-1; None when undefined.

    Weights use the grade distance itself, so a grade absent from both raters still counts
    (sklearn's cohen_kappa_score weights by position among the grades present instead).
    """
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"kappa needs two 1-D arrays of equal length, got {y_true.shape} "
                         f"and {y_pred.shape}")
    if y_true.size and min(y_true.min(), y_pred.min()) < 0:
        raise ValueError("kappa needs non-negative integer grades")
    k = num_classes or int(max(y_true.max(), y_pred.max())) + 1
    observed = np.zeros((k, k))
    np.add.at(observed, (y_true, y_pred), 1.0)
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(y_true.size, 1)
    grades = np.arange(k)
    weights = (grades[:, None] - grades[None, :]) ** 2
    denominator = float((weights * expected).sum())
    if denominator == 0.0:
        return None
    return float(1.0 - (weights * observed).sum() / denominator)


def compute_metrics(pred: dict, graded: bool = False) -> dict:
    """Metrics of a loaded predictions dict, multi-class or multi-label after `multi_label`.

    `eval_tasks` chooses what the headline figures average over: the multi-label tasks, or
    for multi-class the classes counted in top-k sensitivity (the rest, e.g. Other, excluded).
    """
    class_names = list(pred["class_names"])
    tasks = list(pred.get("eval_tasks", []))
    if bool(pred["multi_label"]):
        return multilabel_metrics(pred["probs"], pred["labels"], pred.get("label_mask"),
                                  class_names, tasks=tasks or CHEXPERT_TASKS)
    exclude = [c for c in class_names if c not in tasks] if tasks else ("Other",)
    return multiclass_metrics(pred["probs"], pred["labels"], class_names, exclude=exclude,
                              graded=graded)


def load_result(path) -> dict:
    """A result.json (a flat JSON object of metrics), with a one-line error for anything else."""
    try:
        result = io.read_json(path)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(result, dict):
        raise DataError(f"{path}: expected a JSON object of metrics")
    return result


def load_predictions(path) -> dict:
    """Read a predictions .npz into a dict of numpy arrays (strings as str); validate it."""
    try:
        pred = io.load_npz(path)
    except ValueError as err:  # object arrays, or not an npz at all
        raise DataError(f"{path}: not a readable predictions .npz ({err})") from None
    for key, value in pred.items():
        if value.dtype.kind == "S":
            pred[key] = value.astype(str)
    check_predictions(pred, source=str(path))
    return pred


def check_predictions(pred: dict, source: str = "predictions") -> None:
    """Raise a one-line DataError naming `source` when `pred` breaks the contract."""
    required = ["probs", "labels", "case_ids", "class_names", "multi_label"]
    if "multi_label" in pred and bool(pred["multi_label"]):
        required.append("label_mask")
    missing = [k for k in required if k not in pred]
    if missing:
        raise DataError(f"{source}: missing arrays {missing} (has {sorted(pred)})")
    n = len(pred["probs"])
    for key in ROW_KEYS + tuple(k for k in pred if k.startswith("meta_")):
        if key in pred and len(pred[key]) != n:
            raise DataError(f"{source}: '{key}' has {len(pred[key])} rows, probs has {n}")
    try:
        if bool(pred["multi_label"]):
            _check_multilabel(pred["probs"], pred["labels"], pred["label_mask"],
                              pred["class_names"])
        else:
            _check_multiclass(pred["probs"], pred["labels"], pred["class_names"])
    except ValueError as err:
        raise DataError(f"{source}: {err}") from None


def select_rows(pred: dict, rows: np.ndarray) -> dict:
    """A predictions dict restricted to (or resampled at) `rows`; label-space arrays kept."""
    return {key: (value[rows] if key in ROW_KEYS or key.startswith("meta_") else value)
            for key, value in pred.items()}


def case_groups(case_ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique case ids in order of first appearance, row -> case index, first row per case)."""
    _, first, inverse = np.unique(np.asarray(case_ids), return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    return np.asarray(case_ids)[first[order]], position[inverse.ravel()], first[order]


def average_by_case(rows: dict) -> dict:
    """One row per case (in order of first appearance) of a dict of per-image rows.

    `probs` and `embeddings` are averaged (float64) over the case's images, as the paper scores
    multi-image cases; the other row arrays (ROW_KEYS, meta_*) come from its first image, and
    label-space arrays are kept. A case's images must share its labels and label mask, so
    conflicting ones (e.g. CheXpert studies of one patient) are an error.
    """
    cases, index, first = case_groups(rows["case_ids"])
    for key in ("labels", "label_mask"):
        if key in rows:
            values = np.asarray(rows[key])
            same = (values == values[first][index]).reshape(len(values), -1).all(axis=1)
            if not same.all():
                row = int(np.argmin(same))
                raise DataError(f"case {str(cases[index[row]])!r}: row {row} has different {key} from "
                                 "the case's first image; cannot average by case")
    out = select_rows(rows, first)
    counts = np.bincount(index, minlength=len(cases))[:, None]
    for key in ("probs", "embeddings"):
        if key in rows:
            values = np.asarray(rows[key], np.float64)
            summed = np.zeros((len(cases), values.shape[1]))
            np.add.at(summed, index, values)
            out[key] = summed / counts
    return out


def _check_multiclass(probs, labels, class_names) -> None:
    probs, labels = np.asarray(probs), np.asarray(labels)
    if len(probs) == 0:
        raise DataError("no examples")
    if probs.ndim != 2 or probs.shape[1] != len(class_names):
        raise DataError(f"probs must be [N, {len(class_names)}] for {len(class_names)} "
                         f"class names, got {probs.shape}")
    if labels.shape != (len(probs),):
        raise DataError(f"multi-class labels must be [{len(probs)}], got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"multi-class labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if bad.size:
        raise DataError(f"row {bad[0]}: label {labels[bad[0]]} outside 0..{len(class_names) - 1}")
    _check_finite(probs)


def _check_multilabel(probs, labels, mask, class_names) -> None:
    probs, labels, mask = np.asarray(probs), np.asarray(labels), np.asarray(mask)
    shape = (len(probs), len(class_names))
    if len(probs) == 0:
        raise DataError("no examples")
    for name, array in (("probs", probs), ("labels", labels), ("label_mask", mask)):
        if array.shape != shape:
            raise DataError(f"multi-label {name} must be {list(shape)}, got {list(array.shape)}")
    bad = np.argwhere((mask > 0) & (labels != 0) & (labels != 1))
    if bad.size:
        row, col = bad[0]
        raise DataError(f"row {row}: unmasked label {labels[row, col]} for "
                         f"{str(class_names[col])!r} is not 0 or 1")
    _check_finite(probs)


def _check_finite(probs: np.ndarray) -> None:
    bad = np.argwhere(~np.isfinite(probs))
    if bad.size:
        raise DataError(f"row {bad[0][0]}: probs not finite ({probs[tuple(bad[0])]})")
