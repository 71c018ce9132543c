"""The fine-tuning grid: every point trained once, best chosen on validation, scored on test."""
import json
import os

from simclr_med import sweep
from simclr_med.config import Config


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
        assert os.path.exists(os.path.join(p["model_dir"], sweep.VALIDATION_RESULT))

    # A rerun trains nothing: finished points are read back, only the final test evaluation runs.
    calls = []
    real_run = sweep.experiment.run
    monkeypatch.setattr(sweep.experiment, "run", lambda c: calls.append(c.mode) or real_run(c))
    again = sweep.sweep(cfg, learning_rates=[0.01, 0.1], weight_decays=[0.0])
    assert calls == ["eval"] and again["best"] == summary["best"]
