"""`run.py` end to end: pretrain, fine-tune from it, evaluate, export, serve, resume.

One tiny pretraining run, a fine-tuning run initialised from it (train, evaluate and export in
one command), the exported SavedModel checked against the evaluated model and run by
`saved_model_cli`, and the pretraining command rerun with more steps, which is refused (its
schedule spans its steps; test_preemption covers resuming after kills).
"""
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.fixtures import layouts

REPO = Path(__file__).resolve().parents[1]
SAVED_MODEL_CLI = Path(sys.executable).parent / "saved_model_cli"
TINY = ["--resnet_depth=18", "--image_size=32", "--train_batch_size=4", "--num_proj_layers=1",
        "--proj_out_dim=8", "--warmup_epochs=0", "--checkpoint_steps=2", "--verbose=0"]
MULTICLASS_METRICS = ("top1_accuracy", "top3_accuracy", "top1_sensitivity", "top3_sensitivity", "auc")


def start(args, cwd):
    return subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    assert "Traceback" not in out, out[-4000:]
    return out


def run_py(*flags):
    return [sys.executable, str(REPO / "run.py"), *flags]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The pretraining run and the fine-tuning run started from it (each through run.py)."""
    root = tmp_path_factory.mktemp("cli")
    manual = layouts.write_generic_cases(root / "manual", num_cases=12)
    data = ["--dataset=derm_cases/generic", f"--manual_dir={manual}", f"--data_dir={root / 'data'}"]
    pretrain = run_py("--mode=train_then_eval", "--train_mode=pretrain", f"--model_dir={root / 'pretrain'}",
                      *data, *TINY)
    logs = {"pretrain": finish(start(pretrain + ["--train_steps=2"], root))}
    logs["finetune"] = finish(start(run_py(
        "--mode=train_then_eval", "--train_mode=finetune", f"--checkpoint={root / 'pretrain'}",
        f"--model_dir={root / 'finetune'}", "--train_steps=2", "--optimizer=sgd", "--learning_rate=0.1",
        *data, *TINY), root))
    return root, manual, pretrain, logs


def test_pretrain_then_finetune_writes_results_predictions_and_export(runs):
    root, _, _, logs = runs
    pretrain, finetune = root / "pretrain", root / "finetune"
    assert tf.train.latest_checkpoint(str(pretrain)).endswith("ckpt-2")
    assert json.loads((pretrain / "result.json").read_text())["global_step"] == 2
    assert f"initialised encoder from {pretrain / 'ckpt-2'}" in logs["finetune"]

    result = json.loads((finetune / "result.json").read_text())
    assert result["global_step"] == 2 and result["init_checkpoint"] == str(pretrain)
    for key in MULTICLASS_METRICS:
        assert isinstance(result[key], float) and 0.0 <= result[key] <= 1.0, (key, result[key])
    assert f"simclr-med: result: {{'top1_accuracy': {round(result['top1_accuracy'], 4)}" in logs["finetune"]
    pred = np.load(finetune / "predictions.npz")
    assert pred["probs"].shape == (result["num_examples"], 3) and not pred["multi_label"]
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, atol=1e-5)
    assert list(pred["class_names"]) == ["eczema", "melanoma", "nevus"]
    assert f"simclr-med: exported SavedModel: {finetune / 'saved_model' / '2'}" in logs["finetune"]


def test_eval_needs_only_the_weights_not_the_optimizer_flags(runs):
    """--skip_nonfinite_steps (like --precision=mixed_float16) wraps the optimizer in a loss scaler;
    evaluating a run trained without it must still restore its weights and give its result."""
    root, manual, _, _ = runs
    finetune = root / "finetune"
    trained = json.loads((finetune / "result.json").read_text())
    finish(start(run_py("--mode=eval", "--train_mode=finetune", f"--model_dir={finetune}",
                        "--skip_nonfinite_steps=2", "--dataset=derm_cases/generic",
                        f"--manual_dir={manual}", f"--data_dir={root / 'data'}", *TINY), root))
    again = json.loads((finetune / "result.json").read_text())
    assert again["global_step"] == 2
    assert again["top1_accuracy"] == pytest.approx(trained["top1_accuracy"])
    assert again["auc"] == pytest.approx(trained["auc"], abs=1e-6)


def test_mirrored_strategy_pretrains_finetunes_evaluates_and_exports(runs):
    """Two replicas (logical CPUs) through run.py: the step counter is then a MirroredVariable."""
    root, manual, _, _ = runs
    data = ["--dataset=derm_cases/generic", f"--manual_dir={manual}", f"--data_dir={root / 'data'}"]
    mirrored = ["--strategy=mirrored", "--num_logical_devices=2", "--train_steps=2", *data, *TINY]
    pretrain, finetune = root / "mirrored_pretrain", root / "mirrored_finetune"
    finish(start(run_py("--mode=train_then_eval", "--train_mode=pretrain", f"--model_dir={pretrain}",
                        *mirrored), root))
    log = finish(start(run_py("--mode=train_then_eval", "--train_mode=finetune", f"--checkpoint={pretrain}",
                              f"--model_dir={finetune}", "--optimizer=sgd", *mirrored), root))
    assert json.loads((pretrain / "result.json").read_text())["global_step"] == 2
    assert json.loads((finetune / "result.json").read_text())["global_step"] == 2
    assert f"simclr-med: exported SavedModel: {finetune / 'saved_model' / '2'}" in log
    # Keras 3 cannot run several steps per call on several replicas: refused up front.
    proc = start(run_py("--mode=train", "--train_mode=pretrain", f"--model_dir={root / 'mirrored_spe'}",
                        "--steps_per_execution=2", *mirrored), root)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "Traceback" not in out, out[-3000:]
    assert "--steps_per_execution=2 with --strategy=mirrored on 2 replicas" in out


def _case_images(manual) -> dict:
    with open(manual / "cases.csv", newline="") as f:
        images = {}
        for r in csv.DictReader(f):
            images.setdefault(r["case_id"], []).append(manual / r["image_path"])
    return images


def test_saved_model_serves_the_evaluated_probabilities(runs):
    root, manual, _, _ = runs
    export = root / "finetune" / "saved_model" / "2"
    serve = tf.saved_model.load(str(export)).signatures["serving_default"]
    pred = np.load(root / "finetune" / "predictions.npz")
    images = _case_images(manual)
    for case, expected in zip(pred["case_ids"], pred["probs"]):
        probs = [serve(images=tf.io.decode_image(tf.io.read_file(str(path)), channels=3)[None])[
                     "probabilities"]
                 for path in images[str(case)]]  # one image per call: their sizes differ
        np.testing.assert_allclose(np.mean(probs, axis=0)[0], expected, atol=1e-4, err_msg=str(case))


def test_saved_model_cli_runs_the_export(runs):
    root = runs[0]
    # TF 2.21's saved_model_cli evaluates --input_exprs as literals only (no np.zeros), so the
    # batch goes in as a .npy file.
    np.save(root / "zeros.npy", np.zeros((1, 40, 48, 3), np.uint8))
    out = finish(start([str(SAVED_MODEL_CLI), "run", "--dir", str(root / "finetune" / "saved_model" / "2"),
                        "--tag_set", "serve", "--signature_def", "serving_default",
                        "--inputs", f"images={root / 'zeros.npy'}"], root))
    match = re.search(r"Result for output key probabilities:\s*\[\[([^\]]*)\]\]", out)
    assert match, out[-3000:]
    probs = np.array(match.group(1).split(), float)
    assert probs.shape == (3,) and abs(probs.sum() - 1) < 1e-4
    assert "Result for output key embedding:" in out


def test_pretraining_command_rerun_with_more_steps_is_refused_saying_how_to_train_on(runs):
    """The learning-rate schedule spans --train_steps: a run is not extended, but continued from anew."""
    root, _, pretrain, _ = runs
    proc = start(pretrain + ["--train_steps=4"], root)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in out, out[-3000:]
    assert (f"simclr-med: error: {root / 'pretrain'} was run with other settings (train_steps: 2 -> 4); "
            f"its learning-rate schedule spans its steps, so a run is not extended: to train on, start a new "
            f"--model_dir with --checkpoint={root / 'pretrain'}\n") in out, out[-3000:]
    assert tf.train.latest_checkpoint(str(root / "pretrain")).endswith("ckpt-2")
    assert json.loads((root / "pretrain" / "result.json").read_text())["global_step"] == 2
