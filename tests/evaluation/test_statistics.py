"""Bootstrap intervals, paired differences, t-tests, repeated runs, alignment and subgroups."""
import numpy as np
import pytest
from scipy import stats

from simclr_med.evaluation import metrics, statistics
from tests.fixtures.predictions import make_pred


def test_bootstrap_ci_contains_estimate_and_narrows():
    widths = []
    for n in (100, 2000):
        ci = statistics.bootstrap_ci(make_pred(n), n_boot=200, seed=0)
        for name in ("top1_accuracy", "top1_sensitivity", "auc"):
            assert ci[name]["low"] <= ci[name]["value"] <= ci[name]["high"]
        assert ci["top1_accuracy"]["value"] == metrics.compute_metrics(
            make_pred(n))["top1_accuracy"]
        widths.append(ci["top1_accuracy"]["high"] - ci["top1_accuracy"]["low"])
    assert widths[1] < widths[0] / 2


def test_bootstrap_is_reproducible_with_seed():
    pred = make_pred(200)
    assert statistics.bootstrap_ci(pred, n_boot=50, seed=3) == statistics.bootstrap_ci(
        pred, n_boot=50, seed=3)
    assert statistics.bootstrap_ci(pred, n_boot=50, seed=3) != statistics.bootstrap_ci(
        pred, n_boot=50, seed=4)


def test_resampling_keeps_cases_whole():
    case_ids = np.array(["a", "b", "b", "c", "c", "c"])
    for rows in statistics.resample_rows(case_ids, n_boot=20, seed=0):
        drawn = case_ids[rows]
        assert len(set(drawn)) <= 3
        for case, size in (("a", 1), ("b", 2), ("c", 3)):
            assert np.sum(drawn == case) % size == 0
        assert sum(np.sum(drawn == c) // s for c, s in (("a", 1), ("b", 2), ("c", 3))) == 3


def test_paired_difference_with_itself_is_zero():
    pred = make_pred(300)
    diff = statistics.paired_bootstrap_diff(pred, pred, n_boot=100)
    for d in diff.values():
        if d["diff"] is not None:
            assert d["diff"] == 0.0 and d["low"] == 0.0 and d["high"] == 0.0
            assert not d["significant"] and d["p_value"] == 1.0


def test_significance_is_the_p_value_even_where_the_interval_edge_disagrees():
    diffs = np.where(np.arange(1000) < 25, -0.01, 0.1)  # 2.5% at or below 0: p = 2 * 26 / 1001
    d = statistics.diff_summary(0.5, 0.6, np.zeros(1000), diffs)
    assert d["low"] > 0 and d["p_value"] == pytest.approx(52 / 1001)
    assert not d["significant"] and d["replicates"] == 1000


def test_clearly_better_model_is_significant_and_weak_gap_is_not():
    weak, strong = make_pred(600, signal=0.5, seed=1), make_pred(600, signal=2.5, seed=2)
    diff = statistics.paired_bootstrap_diff(weak, strong, n_boot=200,
                                         metrics=["top1_accuracy", "auc"])
    for d in diff.values():
        assert d["significant"] and d["low"] > 0 and d["p_value"] < 0.05
    similar = make_pred(600, signal=0.5, seed=3)
    assert not statistics.paired_bootstrap_diff(weak, similar, n_boot=200)["auc"]["significant"]


def test_ttest_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.80, 0.01, 10), rng.normal(0.82, 0.01, 10)
    out = statistics.ttest(a, b)
    expected = stats.ttest_ind(b, a)
    assert out["t"] == pytest.approx(expected.statistic)
    assert out["p_value"] == pytest.approx(expected.pvalue)
    assert out["mean_diff"] == pytest.approx(b.mean() - a.mean())
    assert out["significant"] == (expected.pvalue < 0.05)
    welch = statistics.ttest(a, b, equal_var=False)
    assert welch["p_value"] == pytest.approx(stats.ttest_ind(b, a, equal_var=False).pvalue)
    with pytest.raises(ValueError, match="t-test"):
        statistics.ttest([0.5], [0.6])


def test_repeated_runs_summary():
    runs = {"a": [{"auc": 0.8}, {"auc": 0.9}, {"auc": 0.85}], "b": [{"auc": 0.7}]}
    out = statistics.repeated_runs_summary(runs)
    assert out["a"]["auc"]["mean"] == pytest.approx(0.85)
    assert out["a"]["auc"]["std"] == pytest.approx(np.std([0.8, 0.9, 0.85], ddof=1))
    assert out["b"]["auc"] == {"mean": 0.7, "std": None, "n": 1}


def test_alignment_reorders_by_case_and_rejects_other_test_sets():
    base = make_pred(100)
    order = np.random.default_rng(0).permutation(100)
    shuffled = metrics.select_rows(base, order)
    _, aligned = statistics.align_predictions([base, shuffled], ["a.npz", "b.npz"])
    np.testing.assert_array_equal(aligned["probs"], base["probs"])
    other = make_pred(100, label_seed=5)
    other["case_ids"] = np.array([f"x{i}" for i in range(100)])
    with pytest.raises(ValueError, match="b.npz: not the same test set"):
        statistics.align_predictions([base, other], ["a.npz", "b.npz"])
    relabelled = make_pred(100, label_seed=5)
    with pytest.raises(ValueError, match="b.npz: label of case"):
        statistics.align_predictions([base, relabelled], ["a.npz", "b.npz"])


def test_subgroup_metrics_match_subsets():
    pred = make_pred(300)
    out = statistics.subgroup_metrics(pred, "sex")
    assert set(out) == {"female", "male"}
    rows = np.flatnonzero(pred["meta_sex"] == "male")
    assert out["male"] == metrics.compute_metrics(metrics.select_rows(pred, rows))
    with pytest.raises(ValueError, match=r"meta_age.*\['sex'\]"):
        statistics.subgroup_metrics(pred, "age")


def test_mean_std_skips_undefined_values():
    assert statistics.mean_std([0.8, None, 0.9]) == {"mean": pytest.approx(0.85),
                                                     "std": pytest.approx(np.std([0.8, 0.9], ddof=1)), "n": 2}
    assert statistics.mean_std([None]) == {"mean": None, "std": None, "n": 0}
