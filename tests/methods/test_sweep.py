"""The fine-tuning grid: every point trained once, best chosen on validation, scored on test."""
import dataclasses
import json
import os

import pytest

from simclr_med.config import Config
from simclr_med.errors import ConfigError, DataError
from simclr_med.methods import sweep


def test_sweep_runs_grid_chooses_on_validation_and_resumes(tmp_path, monkeypatch):
    cfg = Config(mode="sweep", train_mode="finetune", dataset="demo", data_dir=str(tmp_path / "data"),
                 model_dir=str(tmp_path / "sweep"), resnet_depth=18, image_size=32, train_batch_size=8,
                 train_steps=3, optimizer="sgd", learning_rate_scaling="none", warmup_epochs=0,
                 augmentation="crop_only", checkpoint_steps=3, eval_batch_size=64, verbose=0).validate()
    summary = sweep.sweep(cfg, learning_rates=[0.01, 0.1], weight_decays=[0.0])
    assert len(summary["points"]) == 2 and summary["metric"] == "top1_accuracy"
    best = max(summary["points"], key=lambda p: p["top1_accuracy"])
    assert summary["best"] == best
    assert summary["test_result"]["split"] == "test"
    assert json.load(open(tmp_path / "sweep" / "sweep.json"))["best"]["model_dir"] == best["model_dir"]
    for p in summary["points"]:
        with open(os.path.join(p["model_dir"], sweep.VALIDATION_RESULT)) as f:
            assert json.load(f)["split"] == "validation"  # chosen on validation, never on test

    # A rerun trains nothing: finished points are read back, only the final test evaluation runs.
    calls = []
    real_run = sweep.experiment.run
    monkeypatch.setattr(sweep.experiment, "run", lambda c: calls.append(c.mode) or real_run(c))
    again = sweep.sweep(cfg, learning_rates=[0.01, 0.1], weight_decays=[0.0])
    assert calls == ["eval"] and again["best"] == summary["best"]

    # A rerun with other settings does not reuse the old points' scores.
    with pytest.raises(ConfigError,
                       match=r"lr1.00e-02_wd0.00e\+00 was run with other settings \(train_steps: 3 -> 5\)"):
        sweep.sweep(dataclasses.replace(cfg, train_steps=5), learning_rates=[0.01, 0.1], weight_decays=[0.0])


def test_points_with_an_undefined_score_are_never_chosen(tmp_path, monkeypatch):
    """A small multi-label validation split can leave mean AUC undefined (no task with both outcomes)."""
    scores = {0.01: None, 0.1: 0.7, 1.0: 0.6}

    def fake_run(point):
        if point.mode == "eval":
            return {"result": {"split": point.eval_split, "model_dir": point.model_dir}}
        os.makedirs(point.model_dir, exist_ok=True)
        with open(os.path.join(point.model_dir, "result.json"), "w") as f:
            json.dump({"mean_auc": scores[point.learning_rate], "auc_Edema": None}, f)
        return {"train": {"preempted": False}}

    monkeypatch.setattr(sweep.experiment, "run", fake_run)
    cfg = Config(mode="sweep", train_mode="finetune", model_dir=str(tmp_path / "a"))
    summary = sweep.sweep(cfg, learning_rates=list(scores), weight_decays=[0.0])
    assert summary["metric"] == "mean_auc" and summary["best"]["learning_rate"] == 0.1
    assert summary["test_result"]["model_dir"] == summary["best"]["model_dir"]
    scores.update({0.1: None, 1.0: float("nan")})
    with pytest.raises(DataError, match="mean_auc on demo/validation is undefined at every point"):
        sweep.sweep(dataclasses.replace(cfg, model_dir=str(tmp_path / "b")), learning_rates=list(scores),
                    weight_decays=[0.0])


def test_a_preempted_point_stops_the_sweep_and_close_grid_points_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.experiment, "run", lambda point: {"train": {"preempted": True}})
    cfg = Config(mode="sweep", train_mode="finetune", model_dir=str(tmp_path / "a"))
    assert sweep.sweep(cfg, learning_rates=[0.1], weight_decays=[0.0]) == {
        "preempted": sweep.point_dir(cfg.model_dir, 0.1, 0.0)}  # run.py exits 143; a rerun resumes
    with pytest.raises(ConfigError, match="share a directory"):
        sweep.sweep(cfg, learning_rates=[0.1], weight_decays=[1e-4, 1.00001e-4])
