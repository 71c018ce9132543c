"""Bootstrap intervals, paired differences, t-tests, alignment and the compare CLI."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from simclr_med.evaluation import compare
from simclr_med.evaluation import metrics
from simclr_med.errors import DataError

CLASSES = ["Acne", "Eczema", "Melanoma", "Psoriasis", "Other"]


def make_pred(n=400, signal=1.0, seed=0, label_seed=0, images_per_case=1):
    """Multi-class predictions; the same label_seed gives the same test set."""
    cases = n // images_per_case
    label_rng = np.random.default_rng(label_seed)
    case_labels = label_rng.integers(0, len(CLASSES), cases)
    sex = label_rng.choice(["female", "male"], cases)
    labels = np.repeat(case_labels, images_per_case)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(labels), len(CLASSES)))
    logits[np.arange(len(labels)), labels] += signal
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return {"probs": probs.astype(np.float32), "labels": labels,
            "case_ids": np.repeat([f"case{i:04d}" for i in range(cases)], images_per_case),
            "class_names": np.array(CLASSES), "multi_label": np.array(False),
            "eval_tasks": np.array(CLASSES[:-1]), "meta_sex": np.repeat(sex, images_per_case)}


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (100, 2000):
        ci = compare.bootstrap_ci(make_pred(n), n_boot=200, seed=0)
        for name in ("top1_accuracy", "top1_sensitivity", "auc"):
            assert ci[name]["low"] <= ci[name]["value"] <= ci[name]["high"]
        assert ci["top1_accuracy"]["value"] == metrics.compute_metrics(
            make_pred(n))["top1_accuracy"]
        widths.append(ci["top1_accuracy"]["high"] - ci["top1_accuracy"]["low"])
    assert widths[1] < widths[0] / 2


def test_bootstrap_is_reproducible_with_seed():
    pred = make_pred(200)
    assert compare.bootstrap_ci(pred, n_boot=50, seed=3) == compare.bootstrap_ci(
        pred, n_boot=50, seed=3)
    assert compare.bootstrap_ci(pred, n_boot=50, seed=3) != compare.bootstrap_ci(
        pred, n_boot=50, seed=4)


def test_resampling_keeps_cases_whole():
    case_ids = np.array(["a", "b", "b", "c", "c", "c"])
    for rows in compare.resample_rows(case_ids, n_boot=20, seed=0):
        drawn = case_ids[rows]
        assert len(set(drawn)) <= 3
        for case, size in (("a", 1), ("b", 2), ("c", 3)):
            assert np.sum(drawn == case) % size == 0
        assert sum(np.sum(drawn == c) // s for c, s in (("a", 1), ("b", 2), ("c", 3))) == 3


def test_paired_difference_with_itself_is_zero():
    pred = make_pred(300)
    diff = compare.paired_bootstrap_diff(pred, pred, n_boot=100)
    for d in diff.values():
        if d["diff"] is not None:
            assert d["diff"] == 0.0 and d["low"] == 0.0 and d["high"] == 0.0
            assert not d["significant"] and d["p_value"] == 1.0


def test_significance_is_the_p_value_even_where_the_interval_edge_disagrees():
    diffs = np.where(np.arange(1000) < 25, -0.01, 0.1)  # 2.5% at or below 0: p = 2 * 26 / 1001
    d = compare.diff_summary(0.5, 0.6, np.zeros(1000), diffs)
    assert d["low"] > 0 and d["p_value"] == pytest.approx(52 / 1001)
    assert not d["significant"] and d["replicates"] == 1000


def test_clearly_better_model_is_significant_and_weak_gap_is_not():
    weak, strong = make_pred(600, signal=0.5, seed=1), make_pred(600, signal=2.5, seed=2)
    diff = compare.paired_bootstrap_diff(weak, strong, n_boot=200,
                                         metrics=["top1_accuracy", "auc"])
    for d in diff.values():
        assert d["significant"] and d["low"] > 0 and d["p_value"] < 0.05
    similar = make_pred(600, signal=0.5, seed=3)
    assert not compare.paired_bootstrap_diff(weak, similar, n_boot=200)["auc"]["significant"]


def test_ttest_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.80, 0.01, 10), rng.normal(0.82, 0.01, 10)
    out = compare.ttest(a, b)
    expected = stats.ttest_ind(b, a)
    assert out["t"] == pytest.approx(expected.statistic)
    assert out["p_value"] == pytest.approx(expected.pvalue)
    assert out["mean_diff"] == pytest.approx(b.mean() - a.mean())
    assert out["significant"] == (expected.pvalue < 0.05)
    welch = compare.ttest(a, b, equal_var=False)
    assert welch["p_value"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    with pytest.raises(ValueError, match="t-test"):
        compare.ttest([0.5], [0.6])


def test_repeated_runs_summary():
    runs = {"a": [{"auc": 0.8}, {"auc": 0.9}, {"auc": 0.85}], "b": [{"auc": 0.7}]}
    out = compare.repeated_runs_summary(runs)
    assert out["a"]["auc"]["mean"] == pytest.approx(0.85)
    assert out["a"]["auc"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.85], ddof=1))
    assert out["b"]["auc"] == {"mean": 0.7, "std": None, "n": 1}


def test_alignment_reorders_by_case_and_rejects_other_test_sets():
    base = make_pred(100)
    order = np.random.default_rng(0).permutation(100)
    shuffled = metrics.select_rows(base, order)
    _, aligned = compare.align_predictions([base, shuffled], ["a.npz", "b.npz"])
    np.testing.assert_array_equal(aligned["probs"], base["probs"])
    other = make_pred(100, label_seed=5)
    other["case_ids"] = np.array([f"x{i}" for i in range(100)])
    with pytest.raises(ValueError, match="b.npz: not the same test set"):
        compare.align_predictions([base, other], ["a.npz", "b.npz"])
    relabelled = make_pred(100, label_seed=5)
    with pytest.raises(ValueError, match="b.npz: label of case"):
        compare.align_predictions([base, relabelled], ["a.npz", "b.npz"])


def test_subgroup_metrics_match_subsets():
    pred = make_pred(300)
    out = compare.subgroup_metrics(pred, "sex")
    assert set(out) == {"female", "male"}
    rows = np.flatnonzero(pred["meta_sex"] == "male")
    assert out["male"] == metrics.compute_metrics(metrics.select_rows(pred, rows))
    with pytest.raises(ValueError, match=r"meta_age.*\['sex'\]"):
        compare.subgroup_metrics(pred, "age")


def test_by_case_averages_images():
    pred = make_pred(300, images_per_case=3)
    collapsed = compare.by_case(pred)
    assert len(collapsed["probs"]) == 100 and len(collapsed["meta_sex"]) == 100
    np.testing.assert_allclose(collapsed["probs"][0], pred["probs"][:3].mean(0), rtol=1e-6)


def _save(path, pred):
    np.savez(path, **pred)
    return str(path)


def test_cli_end_to_end(tmp_path, capsys):
    a = _save(tmp_path / "a.npz", make_pred(300, signal=0.3, seed=1))
    b = _save(tmp_path / "b.npz", make_pred(300, signal=3.0, seed=2))
    out = tmp_path / "report.json"
    code = compare.main([a, b, "--names", "base,better", "--bootstrap", "100",
                         "--subgroup", "sex", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Paired difference better - base" in printed and "Subgroups by sex" in printed
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"base", "better"}
    comparison = report["comparisons"][0]
    assert comparison["metrics"]["top1_accuracy"]["significant"] is True
    ci = report["models"]["better"]["ci"]["top1_accuracy"]
    assert ci["low"] <= ci["value"] <= ci["high"]
    assert set(report["subgroups"]["sex"]["base"]) == {"female", "male"}


def test_cli_repeated_runs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    values = {"sup": rng.normal(0.70, 0.01, 5), "ssl": rng.normal(0.75, 0.01, 5)}
    for model, vals in values.items():
        for seed, v in enumerate(vals):
            (tmp_path / f"{model}_{seed}.json").write_text(json.dumps(
                {"auc": v, "top1_accuracy": v - 0.1, "global_step": 10, "seed": seed}))
    out = tmp_path / "runs.json"
    code = compare.main(["--runs", f"sup={tmp_path}/sup_*.json",
                         "--runs", f"ssl={tmp_path}/ssl_*.json", "--output", str(out)])
    assert code == 0
    report = json.loads(out.read_text())["runs"]
    assert set(report["summary"]["ssl"]) == {"auc", "top1_accuracy"}
    assert report["summary"]["ssl"]["auc"]["mean"] == pytest.approx(values["ssl"].mean())
    test = report["ttests"][0]["metrics"]["auc"]
    assert test["p_value"] == pytest.approx(stats.ttest_ind(values["ssl"], values["sup"]).pvalue)
    assert "t-test ssl vs sup" in capsys.readouterr().out


def test_cli_reports_mismatched_test_sets(tmp_path):
    a = _save(tmp_path / "a.npz", make_pred(50))
    b = _save(tmp_path / "b.npz", make_pred(60))
    proc = subprocess.run([sys.executable, "-m", "simclr_med.evaluation.compare", a, b,
                           "--bootstrap", "10"], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2
    assert "b.npz: not the same test set" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_multilabel_clusters_by_patient(tmp_path):
    tasks = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    rng = np.random.default_rng(0)
    n = 240
    labels = (rng.random((n, 5)) < 0.3).astype(np.float32)
    labels[:, 3] = 0.0  # Edema: negatives only, AUC undefined
    mask = (rng.random((n, 5)) < 0.9).astype(np.float32)
    base = {"labels": labels, "label_mask": mask, "class_names": np.array(tasks),
            "case_ids": np.repeat([f"patient{i}" for i in range(n // 4)], 4),
            "multi_label": np.array(True), "eval_tasks": np.array(tasks)}
    paths = []
    for name, signal in (("a", 0.1), ("b", 0.8)):
        probs = np.clip(signal * labels + rng.random((n, 5)), 0, None) / (1 + signal)
        paths.append(_save(tmp_path / f"{name}.npz", dict(base, probs=probs)))
    out = tmp_path / "report.json"
    with pytest.warns(RuntimeWarning, match="Edema"):
        code = compare.main([*paths, "--bootstrap", "50", "--output", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    ci = report["models"]["b"]["ci"]
    assert list(ci) == ["mean_auc"] + [f"auc_{t}" for t in tasks]
    assert ci["auc_Edema"] == {"value": None, "low": None, "high": None, "replicates": 0}
    assert ci["mean_auc"]["replicates"] == 50
    assert ci["mean_auc"]["low"] <= ci["mean_auc"]["value"] <= ci["mean_auc"]["high"]
    assert report["comparisons"][0]["metrics"]["mean_auc"]["significant"] is True
    # Equal labels under another mask (U-Ignore instead of U-Zeros) are another test set.
    ignored = dict(base, probs=labels, label_mask=np.where(np.arange(n)[:, None] == 7, 0.0, mask))
    paths.append(_save(tmp_path / "c.npz", ignored))
    with pytest.raises(DataError, match=r"c.npz: label mask \(another --uncertainty_policy\?\) of case "
                                        r"'patient1' \(row 7\) differs"):
        compare.align_predictions([metrics.load_predictions(p) for p in paths], paths)
