"""The paper's fine-tuning grid: learning rate × weight decay, chosen on validation, scored on test.

Each grid point is an ordinary run in `model_dir/lr<…>_wd<…>/`; a point whose validation
result exists is not run again, and a half-trained point resumes from its checkpoint, so a
killed sweep continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from simclr_med import experiment, io
from simclr_med.config import Config
from simclr_med.errors import ConfigError, DataError
from simclr_med.evaluation import metrics

log = logging.getLogger(__name__)

DEFAULT_LEARNING_RATES = tuple(float(x) for x in np.logspace(-3.5, -0.5, 7))
DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 0.0)
VALIDATION_RESULT = "validation_result.json"


def headline(result: dict) -> tuple[str, float | None]:
    """The metric a sweep maximises: mean AUC (multi-label) or top-1 accuracy (multi-class); None
    where it is undefined (no task with both outcomes in a small validation split)."""
    key = "mean_auc" if "mean_auc" in result else "top1_accuracy"
    return key, metrics.finite(result.get(key))


def point_dir(root: str, lr: float, wd: float) -> str:
    return os.path.join(root, f"lr{lr:.2e}_wd{wd:.2e}")


def sweep(cfg: Config, learning_rates=DEFAULT_LEARNING_RATES, weight_decays=DEFAULT_WEIGHT_DECAYS,
          validation_split: str = "validation", test_split: str = "test") -> dict:
    """Runs every (lr, wd) point on `validation_split`, then the best one on `test_split`.

    When SIGTERM stops a point (its checkpoint saved), returns {"preempted": point dir} instead.
    """
    if not cfg.data_dir:  # one dataset build shared by every point
        cfg = dataclasses.replace(cfg, data_dir=os.path.join(cfg.model_dir, "data"))
    cfg = dataclasses.replace(cfg, model_dir=io.run_path(cfg.model_dir), data_dir=io.run_path(cfg.data_dir))
    grid = [(lr, wd) for lr in learning_rates for wd in weight_decays]
    if len({point_dir(cfg.model_dir, lr, wd) for lr, wd in grid}) < len(grid):
        raise ConfigError(f"sweep: two grid points share a directory (equal to 3 significant digits): {grid}")
    points = []
    for lr, wd in grid:
        run_dir = point_dir(cfg.model_dir, lr, wd)
        done = os.path.join(run_dir, VALIDATION_RESULT)
        point = dataclasses.replace(cfg, mode="train_then_eval", model_dir=run_dir, learning_rate=lr,
                                    weight_decay=wd, eval_split=validation_split, eval_dataset="")
        experiment.check_settings(point)  # a rerun with other flags must not reuse this point's score
        if not io.exists(done):
            if experiment.run(point)["train"]["preempted"]:
                return {"preempted": run_dir}
            io.write_bytes(done, io.read_bytes(os.path.join(run_dir, "result.json")))
        metric, value = headline(io.read_json(done))
        log.info("sweep point lr=%.2e wd=%.2e: %s=%s", lr, wd, metric, "undefined" if value is None else
                 f"{value:.4f}")
        points.append({"learning_rate": lr, "weight_decay": wd, "model_dir": run_dir, metric: value})

    scored = [p for p in points if p[metric] is not None]
    if not scored:
        raise DataError(f"sweep: {metric} on {cfg.dataset}/{validation_split} is undefined at every point "
                        f"(no task has both positive and negative labels there); validate on a larger split")
    best = max(scored, key=lambda p: p[metric])
    final = dataclasses.replace(cfg, mode="eval", model_dir=best["model_dir"],
                                learning_rate=best["learning_rate"], weight_decay=best["weight_decay"],
                                eval_split=test_split, checkpoint="")
    test_result = experiment.run(final)["result"]
    summary = {"metric": metric, "points": points, "best": best, "test_result": test_result}
    io.write_json(os.path.join(cfg.model_dir, "sweep.json"), summary, sort_keys=True, default=float)
    return summary
