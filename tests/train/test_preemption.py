"""Training survives being killed at any moment: it resumes where it was, never from scratch.

The slow test kills a real `run.py` pretraining process with SIGKILL while a checkpoint is being
written, right after one is written, and at a random moment, then stops it with SIGTERM (which
must save the current step and exit 143), restarting it each time. After every stop, every
checkpoint the `checkpoint` state file lists must load, and the restart must log that it trains
"from step N" with N the newest of them; the TensorBoard steps of each process must continue
from there. The fast test does the same to hand-made remains of killed saves.
"""
import glob
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.config import Config
from simclr_med.errors import CheckpointError
from simclr_med.train import checkpoints, factory, loop
from tests.fixtures import layouts

REPO = Path(__file__).resolve().parents[2]
ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


def ckpt_step(prefix) -> int:
    """The training step stored in a checkpoint (its optimizer's iteration count)."""
    return int(tf.train.load_checkpoint(str(prefix)).get_tensor(ITERATIONS))


def listed(model_dir) -> list[str]:
    state = tf.train.get_checkpoint_state(str(model_dir))
    return list(state.all_model_checkpoint_paths) if state else []


def check_listed(model_dir, *, sweeping_allowed: bool) -> int:
    """Every listed checkpoint loads and holds the step of its name; returns the newest step.

    `sweeping_allowed`: a process killed while its CheckpointManager deleted the oldest
    checkpoint (after listing the new one) may leave that oldest one listed without its files.
    """
    paths = listed(model_dir)
    for i, path in enumerate(paths):
        if sweeping_allowed and i == 0 and len(paths) > 1 and not os.path.exists(path + ".index"):
            continue
        assert ckpt_step(path) == int(path.rsplit("-", 1)[1]), path
    return ckpt_step(paths[-1]) if paths else 0


# --- fast: the remains of killed saves, made by hand -----------------------------------------------

def tiny_model(model_dir):
    cfg = Config(resnet_depth=18, image_size=32, train_batch_size=4, num_proj_layers=1, proj_out_dim=8,
                 train_steps=8, warmup_epochs=0, model_dir=str(model_dir)).validate()
    return factory.contrastive_model(cfg, num_train_examples=16)


def encoder_weights(model):
    return [w.numpy() for w in model.encoder.weights]


def test_resume_removes_remains_of_killed_saves_and_skips_unreadable_checkpoints(tmp_path, caplog):
    model = tiny_model(tmp_path)
    manager = checkpoints.make_manager(model, str(tmp_path), max_to_keep=3)
    saved = {}
    for step in (2, 4):
        model.optimizer.iterations.assign(step)
        model.encoder.weights[0].assign(model.encoder.weights[0] + 1.0)  # tell the checkpoints apart
        manager.save(checkpoint_number=step)
        saved[step] = encoder_weights(model)
    data = (tmp_path / "ckpt-4.data-00000-of-00001").read_bytes()
    # Killed while writing ckpt-6 (its temporary folder), after writing ckpt-8's files but before
    # listing it, and while writing the state file.
    (tmp_path / "ckpt-6_temp").mkdir()
    (tmp_path / "ckpt-6_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate1").write_bytes(data[:1000])
    (tmp_path / "ckpt-8.data-00000-of-00001").write_bytes(data)
    (tmp_path / "ckpt-8.index").write_bytes((tmp_path / "ckpt-4.index").read_bytes()[:100])
    (tmp_path / "checkpoint.tmp0123abcd").write_text("model_checkpoint_path: ")

    fresh = tiny_model(tmp_path)
    out = loop.train(fresh, None, model_dir=str(tmp_path), total_steps=4, checkpoint_steps=2, verbose=0)
    assert out["start_step"] == out["final_step"] == 4  # resumed at 4: nothing left to train
    for a, b in zip(saved[4], encoder_weights(fresh)):
        np.testing.assert_array_equal(a, b)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index",
                                            "ckpt-4.data-00000-of-00001", "ckpt-4.index"]
    assert check_listed(tmp_path, sweeping_allowed=False) == 4

    # The newest listed checkpoint damaged: resume from the one before, saying so.
    (tmp_path / "ckpt-4.data-00000-of-00001").write_bytes(data[: len(data) // 2])
    fresh = tiny_model(tmp_path)
    with caplog.at_level(logging.WARNING, logger="simclr_med.train.checkpoints"):
        assert checkpoints.restore_latest(checkpoints.make_manager(fresh, str(tmp_path), 3)) == 2
    assert any("skipping unreadable checkpoint" in r.message and "ckpt-4" in r.message
               for r in caplog.records)
    for a, b in zip(saved[2], encoder_weights(fresh)):
        np.testing.assert_array_equal(a, b)
    # ... or listed without files (killed while the manager deleted it): the same.
    (tmp_path / "ckpt-4.index").unlink()
    assert checkpoints.restore_latest(checkpoints.make_manager(tiny_model(tmp_path), str(tmp_path), 3)) == 2
    # None readable: an error, not a silent restart from step 0.
    (tmp_path / "ckpt-2.index").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no listed checkpoint can be read"):
        checkpoints.restore_latest(checkpoints.make_manager(tiny_model(tmp_path), str(tmp_path), 3))


def test_a_finished_but_unlisted_checkpoint_is_kept(tmp_path, caplog):
    """Killed between writing a checkpoint's files and listing it: that step is not thrown away."""
    model = tiny_model(tmp_path)
    manager = checkpoints.make_manager(model, str(tmp_path), max_to_keep=3)
    for step in (2, 4):
        model.optimizer.iterations.assign(step)
        model.encoder.weights[0].assign(model.encoder.weights[0] + 1.0)
        manager.save(checkpoint_number=step)
    checkpoints.write_state(str(tmp_path), ["ckpt-2"])  # the state file as it was before ckpt-4 was listed

    fresh = tiny_model(tmp_path)
    with caplog.at_level(logging.WARNING, logger="simclr_med.train.checkpoints"):
        assert checkpoints.restore_latest(checkpoints.make_manager(fresh, str(tmp_path), 3)) == 4
    assert any("listing checkpoint ckpt-4" in r.message for r in caplog.records)
    for a, b in zip(encoder_weights(model), encoder_weights(fresh)):
        np.testing.assert_array_equal(a, b)
    assert check_listed(tmp_path, sweeping_allowed=False) == 4


def test_a_run_in_a_relative_folder_resumes_from_its_newest_checkpoint(tmp_path, monkeypatch):
    """The state file rewritten on resume keeps the names right when --model_dir is relative."""
    monkeypatch.chdir(tmp_path)
    model = tiny_model("run")
    manager = checkpoints.make_manager(model, "run", max_to_keep=3)
    for step in (2, 4):
        model.optimizer.iterations.assign(step)
        manager.save(checkpoint_number=step)
    checkpoints.write_state("run", ["ckpt-2"])  # killed before ckpt-4 was listed
    assert checkpoints.restore_latest(checkpoints.make_manager(tiny_model("run"), "run", 3)) == 4
    assert check_listed(tmp_path / "run", sweeping_allowed=False) == 4
    out = loop.train(tiny_model("run"), None, model_dir="run", total_steps=4, checkpoint_steps=2, verbose=0)
    assert out["start_step"] == out["final_step"] == 4


# --- slow: a real run.py killed again and again ---------------------------------------------------

TOTAL_STEPS = 40  # room left for phase 4 after phase 3's random kill (a step is ~0.1 s)
_START = re.compile(r"training (\S+) from step (\d+) to (\d+)")


class Run:
    """One `run.py` pretraining process with its log in a file (no pipe to fill up)."""

    def __init__(self, tmp_path, manual, index):
        self.model_dir = tmp_path / "run"
        self.log = tmp_path / f"log{index}.txt"
        args = [sys.executable, str(REPO / "run.py"), "--mode=train", "--train_mode=pretrain",
                "--dataset=derm_cases/generic", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'data'}",
                f"--model_dir={self.model_dir}", "--resnet_depth=18", "--image_size=32",
                "--train_batch_size=4", "--num_proj_layers=1", "--proj_out_dim=8",
                f"--train_steps={TOTAL_STEPS}", "--checkpoint_steps=2", "--keep_checkpoint_max=3",
                "--log_steps=1", "--warmup_epochs=0", "--verbose=0"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(args, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, condition, what, timeout=300.0, poll=0.002):
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.proc.poll() is None, f"run.py ended (rc {self.proc.returncode}) before {what}:\n" + \
                self.text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(poll)

    def start_step(self) -> int:
        self.wait_for(lambda: _START.search(self.text()), "the start of training", poll=0.1)
        return int(_START.search(self.text()).group(2))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(timeout=60) == -signal.SIGKILL


def _files(model_dir, pattern):
    return set(glob.glob(str(model_dir / pattern)))


def resume_step(model_dir) -> int:
    """Where a restart must resume: the newest listed checkpoint, or a newer one whose save was
    killed after its files were complete but before the state file listed it."""
    newest = check_listed(model_dir, sweeping_allowed=True)
    for index in _files(model_dir, "ckpt-*.index"):
        prefix = index[: -len(".index")]
        try:
            reader = tf.train.load_checkpoint(prefix)
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)
        except (tf.errors.OpError, ValueError, IndexError):
            continue
        newest = max(newest, ckpt_step(prefix))
    return newest


def _event_steps(model_dir, pid) -> list[int]:
    """Steps with scalars in the TensorBoard file of process `pid` (up to a record cut by a kill)."""
    steps = []
    for path in glob.glob(str(model_dir / "train" / f"events.out.tfevents.*.{pid}.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(path):
                if event.summary.value:
                    steps.append(event.step)
        except tf.errors.DataLossError:
            pass
    return sorted(set(steps))


@pytest.mark.slow
def test_killed_and_restarted_run_finishes_at_the_right_step(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "manual", num_cases=12)
    rng = np.random.default_rng(0)
    starts, runs = [], []

    def restart(expected_start):
        run = Run(tmp_path, manual, len(runs))
        runs.append(run)
        start = run.start_step()
        assert start == expected_start, (
            f"resumed from {start}, the newest complete checkpoint is {expected_start}")
        assert not starts or start >= starts[-1]
        starts.append(start)
        return run

    # 1. SIGKILL while a checkpoint is being written (its _temp folder exists), once one is complete.
    run = restart(0)
    model_dir = run.model_dir
    run.wait_for(lambda: _files(model_dir, "ckpt-*_temp") and listed(model_dir), "a checkpoint write")
    run.kill()
    assert check_listed(model_dir, sweeping_allowed=True) >= 2
    newest = resume_step(model_dir)

    # 2. SIGKILL as soon as a new checkpoint's index file appears (listed or not yet: a complete
    #    unlisted one is listed and resumed from).
    run = restart(newest)
    before = _files(model_dir, "ckpt-*.index")
    run.wait_for(lambda: _files(model_dir, "ckpt-*.index") - before, "a new checkpoint", poll=0.0005)
    run.kill()
    newest = resume_step(model_dir)

    # 3. SIGKILL at a random moment of training.
    run = restart(newest)
    run.wait_for(lambda: _event_steps(model_dir, run.proc.pid), "a training step", poll=0.2)
    time.sleep(rng.uniform(0.0, 1.5))
    run.kill()
    newest = resume_step(model_dir)

    # 4. SIGTERM: saves the step it reached and exits 143.
    run = restart(newest)
    run.wait_for(lambda: _event_steps(model_dir, run.proc.pid), "a training step", poll=0.2)
    run.proc.send_signal(signal.SIGTERM)
    assert run.proc.wait(timeout=300) == 143, run.text()[-3000:]
    saved = int(re.search(r"SIGTERM: saved checkpoint at step (\d+)", run.text()).group(1))
    assert newest < saved < TOTAL_STEPS
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(f"ckpt-{saved}")
    newest = check_listed(model_dir, sweeping_allowed=False)
    assert newest == saved

    # 5. The last restart finishes the run.
    run = restart(saved)
    assert run.proc.wait(timeout=600) == 0, run.text()[-3000:]
    assert check_listed(model_dir, sweeping_allowed=False) == TOTAL_STEPS
    assert "Traceback" not in "".join(r.text() for r in runs)
    assert not _files(model_dir, "ckpt-*_temp") and not _files(model_dir, "checkpoint.tmp*")

    # Each process logged TensorBoard steps from its own start on: no silent restart from 0.
    for run, start in zip(runs, starts):
        steps = _event_steps(model_dir, run.proc.pid)
        if steps:
            assert steps[0] == start + 1 and steps == list(range(start + 1, steps[-1] + 1)), (start, steps)
    assert _event_steps(model_dir, runs[-1].proc.pid)[-1] == TOTAL_STEPS
    shutil.rmtree(model_dir)  # ~90 MB per checkpoint
