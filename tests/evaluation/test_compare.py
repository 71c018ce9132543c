"""The compare CLI: reports of predictions files and repeated runs, as text and JSON."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from simclr_med.errors import DataError
from simclr_med.evaluation import compare, metrics, statistics
from tests.fixtures.predictions import make_pred, save_pred


def test_cli_end_to_end(tmp_path, capsys):
    a = save_pred(tmp_path / "a.npz", make_pred(300, signal=0.3, seed=1))
    b = save_pred(tmp_path / "b.npz", make_pred(300, signal=3.0, seed=2))
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
    a = save_pred(tmp_path / "a.npz", make_pred(50))
    b = save_pred(tmp_path / "b.npz", make_pred(60))
    proc = subprocess.run([sys.executable, "-m", "simclr_med.evaluation.compare", a, b,
                           "--bootstrap", "10"], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
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
        paths.append(save_pred(tmp_path / f"{name}.npz", dict(base, probs=probs)))
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
    paths.append(save_pred(tmp_path / "c.npz", ignored))
    with pytest.raises(DataError, match=r"c.npz: label mask \(another --uncertainty_policy\?\) of case "
                                        r"'patient1' \(row 7\) differs"):
        statistics.align_predictions([metrics.load_predictions(p) for p in paths], paths)


def test_compare_and_plots_import_without_tensorflow():
    """The CLIs that read result files start in about a second: importing them loads no TensorFlow."""
    code = ("import sys, simclr_med.evaluation.compare, simclr_med.evaluation.plots; "
            "sys.exit('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:] or "importing compare/plots loaded TensorFlow"
