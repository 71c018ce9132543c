"""Zero-shot distribution shift: a CheXpert-trained model scored on NIH ChestX-ray14."""
import csv
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from simclr_med import experiment
from simclr_med.config import Config
from tests.fixtures import layouts
from tfds_builders.cxr_labels import CHEXPERT_TASKS


def test_chexpert_model_on_nih_scores_the_shared_pathologies_with_nihs_labels(tmp_path, recwarn):
    chexpert, nih = layouts.write_chexpert(tmp_path / "chexpert"), layouts.write_nih(tmp_path / "nih")
    common = dict(train_mode="finetune", data_dir=str(tmp_path / "tfds"), model_dir=str(tmp_path / "run"),
                  resnet_depth=18, image_size=32, augmentation="none", train_batch_size=4, train_steps=2,
                  checkpoint_steps=2, optimizer="sgd", learning_rate=0.01, learning_rate_scaling="none",
                  warmup_epochs=0, verbose=0)
    experiment.run(Config(mode="train", dataset="chexpert_v1", manual_dir=str(chexpert), label_fraction=0.5,
                          **common))
    result = experiment.run(Config(mode="eval", dataset="chexpert_v1", eval_dataset="nih_chestxray14",
                                   manual_dir=str(nih), eval_split="test", **common))["result"]

    out = tmp_path / "run" / "eval_nih_chestxray14"
    with open(out / "result.json") as f:
        assert json.load(f) == result
    assert result["dataset"] == "nih_chestxray14" and result["split"] == "test"
    # How the model was trained comes from its run, not from the eval invocation's flags (plots group by it).
    assert (result["label_fraction"], result["train_mode"], result["init_checkpoint"]) == (
        0.5, "finetune", "")
    with np.load(out / "predictions.npz") as pred:
        assert list(pred["class_names"]) == list(CHEXPERT_TASKS)  # the model's order, all five shared
        labels, mask, probs = pred["labels"], pred["label_mask"], pred["probs"]
    # The labels are NIH's own findings of the test list (Effusion for Pleural Effusion), row for row.
    with open(nih / "Data_Entry_2017_v2020.csv") as f:
        findings = {row["Image Index"]: row["Finding Labels"].split("|") for row in csv.DictReader(f)}
    test = (nih / "test_list.txt").read_text().split()
    nih_name = {"Pleural Effusion": "Effusion"}
    expected = np.array([[nih_name.get(t, t) in findings[name] for t in CHEXPERT_TASKS] for name in test])
    assert labels.shape == probs.shape == (len(test), 5) and mask.all()
    np.testing.assert_array_equal(labels.sum(0), expected.sum(0))  # positives per pathology
    assert labels.sum() > 0
    # Per-pathology AUC where NIH's test list has both classes (None otherwise), and their mean.
    defined = []
    for i, task in enumerate(CHEXPERT_TASKS):
        if 0 < expected[:, i].sum() < len(test):
            assert 0.0 <= result[f"auc_{task}"] <= 1.0
            defined.append(result[f"auc_{task}"])
        else:
            assert result[f"auc_{task}"] is None
            assert any(task in str(w.message) for w in recwarn.list if "AUC undefined" in str(w.message))
    assert defined and result["mean_auc"] == np.mean(defined)
