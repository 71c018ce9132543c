"""--train_epochs and --warmup_epochs count what the training pipeline steps through."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import tensorflow as tf

from simclr_med import experiment
from simclr_med.config import Config
from simclr_med.data import datasets
from simclr_med.train import factory, loop, schedules


class _Stop(Exception):
    pass


@pytest.mark.parametrize("train_mode, method, unit", [
    ("pretrain", "simclr", "images"),  # SimCLR: every image is an example
    ("pretrain", "micle", "cases"),  # MICLe: a case gives one positive pair
    ("finetune", "simclr", "images"),  # a case's images are separate labelled examples
])
def test_an_epoch_is_a_pass_over_the_pipelines_examples(tmp_path, monkeypatch, train_mode, method, unit):
    data_dir = str(tmp_path / "tfds")
    ds, _ = datasets.load("demo", "train", data_dir=data_dir)
    sizes = [int(tf.size(case["images"])) for case in ds]
    count = {"images": sum(sizes), "cases": len(sizes)}[unit]
    assert sum(sizes) > len(sizes)  # the demo has cases of several images, so the two differ

    seen = {}

    class Schedule(schedules.WarmupCosine):
        def __init__(self, base_learning_rate, warmup_steps, total_steps, **kwargs):
            seen.update(warmup=warmup_steps, schedule_total=total_steps)
            super().__init__(base_learning_rate, warmup_steps, total_steps, **kwargs)

    def fake_train(model, dataset, *, total_steps, **kwargs):
        seen.update(total=total_steps)
        raise _Stop

    monkeypatch.setattr(factory, "WarmupCosine", Schedule)
    monkeypatch.setattr(loop, "train", fake_train)
    cfg = Config(mode="train", train_mode=train_mode, method=method, dataset="demo", data_dir=data_dir,
                 model_dir=str(tmp_path / "run"), resnet_depth=18, image_size=32, augmentation="crop_only",
                 train_batch_size=16, train_epochs=3, warmup_epochs=1, optimizer="sgd", verbose=0)
    with pytest.raises(_Stop):
        experiment.run(cfg)
    assert seen == {"total": 3 * count // 16, "schedule_total": 3 * count // 16, "warmup": round(count / 16)}
