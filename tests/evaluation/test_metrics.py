"""Metrics checked against scikit-learn on random inputs."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, recall_score, roc_auc_score, top_k_accuracy_score

from simclr_med.errors import DataError
from simclr_med.evaluation import metrics
from tests.fixtures.predictions import make_pred

CLASSES = ["Acne", "Eczema", "Melanoma", "Psoriasis", "Tinea", "Other"]
CXR = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia"]
NUM_CLASSES, NUM_CXR = len(CLASSES), len(CXR)


def random_multiclass(seed, n=300, num_classes=NUM_CLASSES, absent=()):
    rng = np.random.default_rng(seed)
    present = [c for c in range(num_classes) if c not in absent]
    labels = rng.choice(present, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, labels


def random_multilabel(seed, n=400, k=NUM_CXR):
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, k)) < 0.3).astype(np.float32)
    mask = (rng.random((n, k)) < 0.8).astype(np.float32)
    probs = np.clip(0.4 * labels + 0.6 * rng.random((n, k)), 0, 1)
    return probs, labels, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_matches_sklearn(seed):
    probs, labels = random_multiclass(seed)
    out = metrics.multiclass_metrics(probs, labels, CLASSES)
    all_classes = list(range(len(CLASSES)))
    for k in (1, 3):
        assert out[f"top{k}_accuracy"] == pytest.approx(
            top_k_accuracy_score(labels, probs, k=k, labels=all_classes))
    named = [c for c in all_classes if CLASSES[c] != "Other"]
    assert out["top1_sensitivity"] == pytest.approx(
        recall_score(labels, probs.argmax(1), labels=named, average="macro"))
    recall3 = [top_k_accuracy_score(labels[labels == c], probs[labels == c], k=3,
                                    labels=all_classes) for c in named]
    assert out["top3_sensitivity"] == pytest.approx(np.mean(recall3))
    assert out["auc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))
    for c, name in enumerate(CLASSES):
        assert out[f"auc_{name}"] == pytest.approx(roc_auc_score(labels == c, probs[:, c]))
        assert out[f"sensitivity_top1_{name}"] == pytest.approx(
            np.mean(probs[labels == c].argmax(1) == c))
    assert out["num_examples"] == len(labels)
    assert all(type(v) in (float, int) for v in out.values())


def test_tied_scores_count_as_a_random_tie_break():
    """A collapsed model (every class equal) is at chance, not at 100%; a saturated softmax's zeros tie."""
    uniform = metrics.multiclass_metrics(np.full((6, 6), 1 / 6), np.arange(6), CLASSES)
    assert uniform["top1_accuracy"] == pytest.approx(1 / 6) and uniform["top3_accuracy"] == pytest.approx(0.5)
    assert uniform["top1_sensitivity"] == pytest.approx(1 / 6)
    saturated = np.zeros((1, 6))
    saturated[0, 0] = 1.0  # the true class, 3, ties with four others below the first
    hits = [metrics.top_k_hits(saturated, np.array([3]), k)[0] for k in (1, 2, 3, 5, 6)]
    np.testing.assert_allclose(hits, [0.0, 1 / 5, 2 / 5, 4 / 5, 1.0])


def test_other_is_excluded_from_sensitivity_only():
    probs, labels = random_multiclass(3)
    other = CLASSES.index("Other")
    probs[labels == other, other] = 0.0  # Other is never predicted: recall 0
    with_other = metrics.multiclass_metrics(probs, labels, CLASSES, exclude=())
    without = metrics.multiclass_metrics(probs, labels, CLASSES)
    named = [c for c in range(len(CLASSES)) if c != other]
    assert without["top1_sensitivity"] == pytest.approx(
        recall_score(labels, probs.argmax(1), labels=named, average="macro"))
    assert with_other["top1_sensitivity"] == pytest.approx(
        recall_score(labels, probs.argmax(1), average="macro"))
    assert without["top1_sensitivity"] > with_other["top1_sensitivity"]
    assert without["top1_accuracy"] == with_other["top1_accuracy"]


def test_absent_class_is_skipped():
    probs, labels = random_multiclass(4, absent=(2,))
    out = metrics.multiclass_metrics(probs, labels, CLASSES)
    present = [c for c in range(len(CLASSES)) if c != 2]
    assert "auc_Melanoma" not in out and "sensitivity_top1_Melanoma" not in out
    assert out["auc"] == pytest.approx(
        np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present]))
    named = [c for c in present if CLASSES[c] != "Other"]
    assert out["top1_sensitivity"] == pytest.approx(
        recall_score(labels, probs.argmax(1), labels=named, average="macro"))


def test_compute_metrics_uses_eval_tasks():
    probs, labels = random_multiclass(5)
    pred = {"probs": probs, "labels": labels, "class_names": np.array(CLASSES),
            "multi_label": np.array(False), "eval_tasks": np.array(CLASSES[:3])}
    out = metrics.compute_metrics(pred)
    assert out["top1_sensitivity"] == pytest.approx(
        recall_score(labels, probs.argmax(1), labels=[0, 1, 2], average="macro"))


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_matches_sklearn_with_mask(seed):
    probs, labels, mask = random_multilabel(seed)
    out = metrics.multilabel_metrics(probs, labels, mask, CXR)
    expected = {}
    for k, name in enumerate(CXR):
        keep = mask[:, k] > 0
        expected[name] = roc_auc_score(labels[keep, k], probs[keep, k])
        assert out[f"auc_{name}"] == pytest.approx(expected[name])
    assert out["mean_auc"] == pytest.approx(np.mean([expected[t] for t in CXR[:5]]))
    # Masked entries are ignored: scrambling them changes nothing.
    scrambled = np.where(mask > 0, labels, 1 - labels)
    assert metrics.multilabel_metrics(probs, scrambled, mask, CXR) == out


def test_multilabel_single_class_label_is_none_and_warned():
    probs, labels, mask = random_multilabel(2)
    labels[:, 1] = 0.0  # Cardiomegaly: negatives only
    with pytest.warns(RuntimeWarning, match="Cardiomegaly"):
        out = metrics.multilabel_metrics(probs, labels, mask, CXR)
    assert out["auc_Cardiomegaly"] is None
    others = [roc_auc_score(labels[mask[:, k] > 0, k], probs[mask[:, k] > 0, k])
              for k in (0, 2, 3, 4)]
    assert out["mean_auc"] == pytest.approx(np.mean(others))


def test_multilabel_nih_names_and_unknown_task():
    probs, labels, mask = random_multilabel(6, k=5)
    nih = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"]
    out = metrics.multilabel_metrics(probs, labels, mask, nih)
    assert "auc_Effusion" in out and out["mean_auc"] is not None
    with pytest.raises(ValueError, match="Fracture"):
        metrics.multilabel_metrics(probs, labels, mask, nih, tasks=["Fracture"])


def test_multilabel_rejects_unmasked_uncertain_label():
    probs, labels, mask = random_multilabel(7)
    labels[5, 2], mask[5, 2] = -1.0, 1.0
    with pytest.raises(ValueError, match="row 5"):
        metrics.multilabel_metrics(probs, labels, mask, CXR)


def test_binary_auc_with_ties_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    assert metrics.binary_auc(y, scores) == pytest.approx(roc_auc_score(y, scores))
    assert metrics.binary_auc(np.zeros(5), scores[:5]) is None


def test_kappa_matches_sklearn():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.clip(y_true + rng.integers(-2, 3, 300), 0, 4)
    assert metrics.cohen_kappa_quadratic(y_true, y_pred) == pytest.approx(
        cohen_kappa_score(y_true, y_pred, weights="quadratic"))
    assert metrics.cohen_kappa_quadratic(y_true, y_true) == pytest.approx(1.0)
    assert metrics.cohen_kappa_quadratic([2, 2], [2, 2]) is None


def test_graded_adds_kappa_of_argmax():
    probs, labels = random_multiclass(8, num_classes=5)
    out = metrics.multiclass_metrics(probs, labels, [str(g) for g in range(5)], graded=True)
    assert out["kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(labels, probs.argmax(1), weights="quadratic"))


def test_average_by_case_matches_groupby():
    rng = np.random.default_rng(0)
    case_ids = np.array(["c3", "c1", "c3", "c2", "c1", "c3"])
    probs = rng.random((6, 4))
    case_label = {"c1": 0, "c2": 3, "c3": 1}
    labels = np.array([case_label[c] for c in case_ids])
    out = metrics.average_by_case({"probs": probs, "case_ids": case_ids, "labels": labels})
    expected = pd.DataFrame(probs).groupby(case_ids, sort=False).mean()
    assert list(out["case_ids"]) == ["c3", "c1", "c2"]
    np.testing.assert_allclose(out["probs"], expected.to_numpy())
    assert list(out["labels"]) == [1, 0, 3]
    labels[4] = 2
    with pytest.raises(ValueError, match="'c1'.*row 4"):
        metrics.average_by_case({"probs": probs, "case_ids": case_ids, "labels": labels})


def test_by_case_averages_images():
    pred = make_pred(300, images_per_case=3)
    collapsed = metrics.average_by_case(pred)
    assert len(collapsed["probs"]) == 100 and len(collapsed["meta_sex"]) == 100
    np.testing.assert_allclose(collapsed["probs"][0], pred["probs"][:3].mean(0), rtol=1e-6)


def test_load_predictions_roundtrip_and_errors(tmp_path):
    probs, labels = random_multiclass(9, n=20)
    arrays = {"probs": probs.astype(np.float32), "labels": labels,
              "case_ids": np.array([f"c{i}" for i in range(20)]),
              "class_names": np.array(CLASSES), "multi_label": np.array(False),
              "eval_tasks": np.array(CLASSES[:-1])}
    np.savez(tmp_path / "ok.npz", **arrays)
    pred = metrics.load_predictions(tmp_path / "ok.npz")
    assert metrics.compute_metrics(pred) == metrics.multiclass_metrics(
        probs.astype(np.float32), labels, CLASSES)
    np.savez(tmp_path / "nolabels.npz", **{k: v for k, v in arrays.items() if k != "labels"})
    with pytest.raises(DataError, match="nolabels.npz.*labels"):
        metrics.load_predictions(tmp_path / "nolabels.npz")
    bad = dict(arrays, labels=np.where(np.arange(20) == 7, 99, labels))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="bad.npz: row 7"):
        metrics.load_predictions(tmp_path / "bad.npz")


def test_finite_keeps_numbers_only():
    assert metrics.finite(np.float32(0.5)) == 0.5 and metrics.finite(3) == 3.0
    for undefined in (None, float("nan"), float("inf"), "0.5", b"1", [0.5], {"auc": 0.5}):
        assert metrics.finite(undefined) is None, undefined
