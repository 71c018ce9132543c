"""experiment.run on a run folder that holds a run already: it resumes only under the settings it
trained with, and only one process trains or exports in a folder at a time."""
import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tensorflow as tf

from simclr_med import experiment, io
from simclr_med.config import Config
from simclr_med.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = dict(mode="train", dataset="demo", resnet_depth=18, image_size=32, train_batch_size=4,
            num_proj_layers=1, proj_out_dim=8, warmup_epochs=0.0, train_steps=4, checkpoint_steps=2,
            verbose=0)


def tiny(model_dir, data_dir, **changes) -> Config:
    return Config(**{**TINY, "model_dir": str(model_dir), "data_dir": str(data_dir), **changes})


def refusal(cfg: Config) -> str:
    with pytest.raises(ConfigError) as refused:
        experiment.run(cfg)
    assert "\n" not in str(refused.value), refused.value
    return str(refused.value)


def test_a_resumed_run_keeps_its_training_settings(tmp_path, demo_data_dir):
    """A resume under another batch size, schedule or model would train one run of two recipes; paths,
    logging and hardware flags may change."""
    run = tmp_path / "run"
    stop_at_first_checkpoint = lambda model, step: True  # noqa: E731
    assert experiment.run(tiny(run, demo_data_dir), on_checkpoint=stop_at_first_checkpoint)["train"][
        "final_step"] == 2
    assert (f"{run} was run with other settings (train_batch_size: 4 -> 8); resume it with those, "
            "or use a new --model_dir") == refusal(tiny(run, demo_data_dir, train_batch_size=8))
    assert "(learning_rate: 0.3 -> 0.1, optimizer: 'lars' -> 'sgd')" in refusal(
        tiny(run, demo_data_dir, optimizer="sgd", learning_rate=0.1))
    message = refusal(tiny(run, demo_data_dir, train_steps=6))
    assert message.startswith(f"{run} was run with other settings (train_steps: 4 -> 6); its learning-rate "
                              "schedule spans its steps"), message
    assert message.endswith(f"start a new --model_dir with --checkpoint={run}"), message
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-2")  # the refused runs trained nothing

    resumed = experiment.run(tiny(run, demo_data_dir, mode="train_then_eval", log_steps=1, checkpoint_steps=1,
                                  keep_checkpoint_max=2, eval_split="validation", eval_batch_size=8))
    assert (resumed["train"]["start_step"], resumed["train"]["final_step"]) == (2, 4)

    # A run recorded before settings.json existed: the flags of its training invocations stand in.
    io.remove(os.path.join(run, experiment.SETTINGS_FILE))
    os.remove(run / "flags_train.json")
    assert "(train_batch_size: 4 -> 8)" in refusal(tiny(run, demo_data_dir, train_batch_size=8))


def test_a_run_that_never_saved_starts_anew_under_any_settings(tmp_path, demo_data_dir):
    run = tmp_path / "run"
    (run).mkdir()
    other = tiny(run, demo_data_dir, train_batch_size=8)  # a first attempt that failed before its first save
    io.write_json(run / experiment.SETTINGS_FILE, other.training_settings())
    assert experiment.run(tiny(run, demo_data_dir, train_steps=2))["train"]["final_step"] == 2
    assert io.read_json(run / experiment.SETTINGS_FILE)["train_batch_size"] == 4


def test_harness_and_resume_share_one_list_of_free_fields(tmp_path):
    """A sweep point's record holds what it was scored on, which a plain resume of the point ignores."""
    point = Config(**{**TINY, "model_dir": str(tmp_path), "eval_split": "validation"})
    experiment.check_settings(point, early_stopping=None)
    assert {"eval_split", "early_stopping"} <= io.read_json(tmp_path / experiment.SETTINGS_FILE).keys()
    experiment.check_settings(dataclasses.replace(point, log_steps=7, data_dir="x"), early_stopping=None)
    with pytest.raises(ConfigError, match=r"\(eval_split: 'validation' -> 'test'\)"):
        experiment.check_settings(dataclasses.replace(point, eval_split="test"), early_stopping=None)
    assert "log_steps" not in point.training_settings() and "train_batch_size" in point.training_settings()


# --- through run.py: what the user sees ----------------------------------------------------------------

def run_py(model_dir, data_dir, *flags):
    args = [f"--{k}={v}" for k, v in TINY.items()] + [f"--model_dir={model_dir}", f"--data_dir={data_dir}"]
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args, *flags], cwd=model_dir.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_a_resume_with_another_depth_says_so_in_one_line(tmp_path, demo_data_dir):
    """Refused before TensorFlow restores, so none of its warnings about unrestored values follow."""
    run = tmp_path / "run"
    experiment.run(tiny(run, demo_data_dir, train_steps=2))
    proc = run_py(run, demo_data_dir, "--train_steps=2", "--resnet_depth=34")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert [line for line in err.splitlines() if "simclr-med" in line or "tensorflow" in line] == [
        f"simclr-med: error: {run} was run with other settings (resnet_depth: 18 -> 34); resume it with "
        "those, or use a new --model_dir"], err[-3000:]
    assert "Value in checkpoint" not in err and err.strip().endswith("--model_dir"), err[-3000:]


def test_two_runs_on_one_folder_one_trains_the_other_stops_naming_it(tmp_path, demo_data_dir):
    run = tmp_path / "run"
    procs = [run_py(run, demo_data_dir) for _ in range(2)]
    outcomes = [(proc, proc.returncode, err) for proc in procs
                for _, err in [proc.communicate(timeout=600)]]
    [(winner, _, _)] = [o for o in outcomes if o[1] == 0]
    [(_, code, err)] = [o for o in outcomes if o[1] != 0]
    lines = [line for line in err.splitlines() if line.startswith("simclr-med: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"simclr-med: error: {run} is in use by another run (pid {winner.pid} on "
                               f"{socket.gethostname()} since "), lines[0]
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-4")
