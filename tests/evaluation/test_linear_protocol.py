import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from simclr_med.evaluation import linear_protocol as lp


def _imbalanced_labels():
    return np.repeat([0, 1, 2, 3], [50, 30, 12, 3])


def _separable(n_per_class, num_classes=3, dim=16, seed=0, noise=0.5, sample_seed=None):
    """Graded classes: means evenly spaced along one direction, far apart relative to the noise.

    `seed` fixes the class means, `sample_seed` the noise, so train and test share the means.
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim)
    means = np.arange(num_classes)[:, None] * 3.0 * direction / np.linalg.norm(direction)
    y = np.repeat(np.arange(num_classes), n_per_class)
    noise_rng = np.random.default_rng(seed if sample_seed is None else sample_seed)
    x = means[y] + noise_rng.normal(scale=noise, size=(len(y), dim))
    return x.astype("float32"), y


def test_balanced_subset_sizes_and_nesting():
    y = _imbalanced_labels()
    small = lp.balanced_subset(y, 5, seed=1)
    medium = lp.balanced_subset(y, 20, seed=1)
    full = lp.balanced_subset(y, None, seed=1)
    assert np.bincount(y[small]).tolist() == [5, 5, 5, 3]
    assert np.bincount(y[medium]).tolist() == [20, 20, 12, 3]
    assert np.array_equal(full, np.arange(len(y)))
    assert set(small) <= set(medium) <= set(full)
    assert not np.array_equal(small, lp.balanced_subset(y, 5, seed=2))


def test_folds_are_disjoint_cover_everything_and_stratified():
    y = _imbalanced_labels()
    folds = lp.stratified_folds(y, 5, seed=0)
    assert len(folds) == 5
    val = np.concatenate([va for _, va in folds])
    assert np.array_equal(np.sort(val), np.arange(len(y)))  # disjoint + covering
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert len(tr) + len(va) == len(y)
        assert np.abs(np.bincount(y[va], minlength=4)[:2] - np.array([10, 6])).max() <= 1
    assert max(len(va) for _, va in folds) - min(len(va) for _, va in folds) <= 1
    with pytest.raises(ValueError, match="at least 5"):
        lp.stratified_folds(np.arange(3), 5)


def test_oversampling_balances_classes_and_keeps_originals():
    y = _imbalanced_labels()
    idx = np.arange(len(y))
    out = lp.oversample(idx, y, seed=0)
    assert np.bincount(y[out]).tolist() == [50, 50, 50, 50]
    assert set(idx) <= set(out)
    assert set(y[out]) == set(y)


def test_macro_auc_skips_classes_absent_from_test():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.1, 0.9, 0.0]])
    assert lp.macro_auc(y, probs) == 1.0
    assert np.isnan(lp.macro_auc(np.zeros(4, int), probs))


@pytest.mark.parametrize("model", ["keras", "sklearn"])
def test_end_to_end_separable_embeddings(model):
    x, y = _separable(60, seed=0)
    xt, yt = _separable(30, seed=0, sample_seed=1)
    result = lp.run_protocol(x, y, xt, yt, sizes={"S": 5, "F": None}, model=model,
                             graded=True, epochs=60, seed=0)
    assert set(result) == {"S", "F"}
    assert result["S"]["n_train"] == 15 and result["F"]["n_train"] == 180
    s, f = result["S"], result["F"]
    assert s["auc"] > 0.85 and s["kappa"] > 0.7  # 4 training examples per class per fold
    assert f["auc"] > 0.97 and f["accuracy"] > 0.9 and f["kappa"] > 0.9
    for r in result.values():
        assert len(r["fold_test_auc"]) == len(r["fold_val_auc"]) == 5
    json.dumps(result, allow_nan=False)


def test_random_labels_give_chance_auc():
    x, _ = _separable(60, seed=0)
    y = np.random.default_rng(1).integers(0, 3, size=len(x))
    result = lp.run_protocol(x, y, x[:90], y[:90][::-1].copy(), sizes={"F": None}, model="sklearn")
    assert result["F"]["auc"] < 0.75


def test_deterministic_with_seed():
    x, y = _separable(20, seed=3, noise=3.0)
    xt, yt = _separable(10, seed=3, noise=3.0, sample_seed=4)
    kw = dict(sizes={"S": 8}, model="keras", epochs=15, patience=3)
    a = lp.run_protocol(x, y, xt, yt, seed=7, **kw)
    b = lp.run_protocol(x, y, xt, yt, seed=7, **kw)
    c = lp.run_protocol(x, y, xt, yt, seed=8, **kw)
    assert a == b
    assert a != c


def test_bad_inputs_are_named():
    x, y = _separable(10)
    with pytest.raises(ValueError, match="training set: labels must be"):
        lp.run_protocol(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="widths differ"):
        lp.run_protocol(x, y, x[:, :4], y)
    with pytest.raises(ValueError, match="linear model 'svm'"):
        lp.run_protocol(x, y, x, y, model="svm")


def test_cli_writes_json(tmp_path, capsys):
    x, y = _separable(20, seed=0)
    np.savez(tmp_path / "train.npz", embeddings=x, labels=y)
    np.savez(tmp_path / "test.npz", embeddings=x[::2], labels=y[::2])
    np.savez(tmp_path / "bad.npz", features=x)
    out = tmp_path / "out" / "result.json"
    argv = ["--embeddings", str(tmp_path / "train.npz"), "--test", str(tmp_path / "test.npz"),
            "--output", str(out), "--small", "4", "--medium", "8", "--model", "sklearn"]
    lp.main(argv)
    result = json.loads(out.read_text())
    assert [result[k]["n_train"] for k in ("S", "M", "F")] == [12, 24, 60]
    assert result["F"]["auc"] > 0.95

    argv[argv.index("--test") + 1] = str(tmp_path / "bad.npz")
    with pytest.raises(SystemExit) as exit_info:
        lp.main(argv)
    assert exit_info.value.code == 2
    assert "bad.npz: missing array(s) ['embeddings', 'labels']" in capsys.readouterr().err


def test_module_is_runnable():
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-m", "simclr_med.evaluation.linear_protocol", "--help"],
                          capture_output=True, text=True, cwd=repo, env={**os.environ, "PYTHONPATH": repo})
    assert done.returncode == 0 and "--embeddings" in done.stdout
