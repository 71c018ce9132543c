"""Label-efficiency curves and t-SNE plots are written and reject bad input clearly."""
import json

import numpy as np
import pytest

from simclr_med.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def write_results(tmp_path):
    rng = np.random.default_rng(0)
    values = {}
    for init, base in (("random", 0.5), ("simclr", 0.6)):
        for fraction in (0.1, 0.5, 1.0):
            for seed in range(3):
                v = base + 0.2 * fraction + rng.normal(0, 0.01)
                values.setdefault((init, fraction), []).append(v)
                path = tmp_path / f"{init}_{fraction}_{seed}" / "result.json"
                path.parent.mkdir()
                path.write_text(json.dumps({"top1_accuracy": v, "label_fraction": fraction,
                                            "init": init, "seed": seed, "global_step": 100}))
    return sorted(str(p) for p in tmp_path.glob("*/result.json")), values


def test_label_efficiency_curve(tmp_path):
    paths, values = write_results(tmp_path)
    out = tmp_path / "curve.png"
    data = plots.plot_label_efficiency(plots.load_results(paths), "top1_accuracy", str(out))
    assert_png(out)
    assert set(data) == {"random", "simclr"}
    assert data["simclr"]["x"] == [0.1, 0.5, 1.0]
    for i, fraction in enumerate((0.1, 0.5, 1.0)):
        vals = values[("simclr", fraction)]
        assert data["simclr"]["mean"][i] == pytest.approx(np.mean(vals))
        assert data["simclr"]["std"][i] == pytest.approx(np.std(vals, ddof=1))
        assert data["simclr"]["n"][i] == 3


def test_label_efficiency_cli_and_grouping(tmp_path, capsys):
    paths, _ = write_results(tmp_path)
    out = tmp_path / "sub" / "curve.png"
    assert plots.main(["label-efficiency", *paths, "--metric", "top1_accuracy",
                       "--group-by", "init,seed", "--output", str(out)]) == 0
    assert_png(out)
    assert "simclr, 2:" in capsys.readouterr().out


def test_label_efficiency_groups_real_run_results_by_their_init(tmp_path):
    """result.json as experiment.py writes it: each run has its own `checkpoint`, and the init
    it started from in `init_checkpoint` ("" for random init); seeds of one init are one curve."""
    paths = []
    for init in ("", "runs/micle"):
        for fraction in (0.1, 1.0):
            for seed in range(2):
                run = tmp_path / f"ft_{bool(init)}_{fraction}_{seed}"
                run.mkdir()
                (run / "result.json").write_text(json.dumps({
                    "top1_accuracy": 0.5 + fraction / 10 + seed / 100, "label_fraction": fraction,
                    "seed": seed, "checkpoint": f"{run}/ckpt-200", "init_checkpoint": init,
                    "global_step": 200}))
                paths.append(str(run / "result.json"))
    data = plots.label_efficiency_data(plots.load_results(paths), "top1_accuracy")
    assert set(data) == {"random init", "runs/micle"}
    assert data["runs/micle"]["x"] == [0.1, 1.0] and data["runs/micle"]["n"] == [2, 2]
    assert data["random init"]["mean"][1] == pytest.approx(0.605)


def test_label_efficiency_rejects_bad_input(tmp_path, capsys):
    paths, _ = write_results(tmp_path)
    results = plots.load_results(paths)
    with pytest.raises(ValueError, match=r"result.json: no field 'auc'"):
        plots.label_efficiency_data(results, "auc")
    with pytest.raises(ValueError, match="no field 'optimizer'"):
        plots.label_efficiency_data(results, "top1_accuracy", group_by=["optimizer"])
    with pytest.raises(ValueError, match="no results"):
        plots.label_efficiency_data([], "auc")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert plots.main(["label-efficiency", str(broken), "--metric", "auc",
                       "--output", str(tmp_path / "x.png")]) == 2
    assert "broken.json: not valid JSON" in capsys.readouterr().err


def test_undefined_metric_is_skipped_with_warning(tmp_path):
    results = [{"auc": 0.7, "label_fraction": 0.1, "init": "a"},
               {"auc": None, "label_fraction": 0.1, "init": "a", "result_file": "r2.json"}]
    with pytest.warns(RuntimeWarning, match="r2.json"):
        data = plots.label_efficiency_data(results, "auc")
    assert data["a"]["n"] == [1]


def clustered_embeddings(n=12, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    return rng.normal(size=(n, 8)) + 5 * np.eye(8)[labels], labels


def test_tsne_tiny_input(tmp_path):
    embeddings, labels = clustered_embeddings()
    out = tmp_path / "tsne.png"
    points = plots.plot_tsne(embeddings, labels, str(out))
    assert points.shape == (12, 2) and np.all(np.isfinite(points))
    assert_png(out)


def test_tsne_cli_from_predictions(tmp_path):
    embeddings, labels = clustered_embeddings(n=30)
    multi = (np.arange(30)[:, None] % np.array([2, 3]) == 0).astype(np.float32)
    path = tmp_path / "predictions.npz"
    np.savez(path, embeddings=embeddings.astype(np.float32), labels=multi,
             label_mask=np.ones_like(multi), class_names=np.array(["Edema", "Atelectasis"]),
             eval_tasks=np.array(["Atelectasis"]), meta_sex=np.array(["f", "m"] * 15))
    embeddings_out, groups = plots.load_embeddings(str(path), max_points=20)
    assert len(embeddings_out) == 20
    assert set(groups) <= {"Atelectasis: positive", "Atelectasis: negative"}
    for color_by in ("label", "sex", "Edema"):
        out = tmp_path / f"tsne_{color_by}.png"
        assert plots.main(["tsne", str(path), "--color-by", color_by, "--output", str(out)]) == 0
        assert_png(out)


def test_tsne_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="t-SNE needs embeddings"):
        plots.tsne_embedding(np.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        plots.tsne_embedding(np.full((5, 3), np.nan))
    with pytest.raises(ValueError, match="3 labels for 12 embeddings"):
        plots.plot_tsne(clustered_embeddings()[0], [0, 1, 2], str(tmp_path / "x.png"))
    path = tmp_path / "noemb.npz"
    np.savez(path, labels=np.zeros(4))
    with pytest.raises(ValueError, match="noemb.npz: no 'embeddings'"):
        plots.load_embeddings(str(path))
    np.savez(path, embeddings=np.zeros((4, 3)), labels=np.zeros(4, np.int64))
    with pytest.raises(ValueError, match="noemb.npz: cannot colour by 'age'"):
        plots.load_embeddings(str(path), color_by="age")
