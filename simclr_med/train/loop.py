"""Step-based training with `model.fit`: checkpoints, exact resume, SIGTERM, NaN guard, TensorBoard.

The run's clock is `optimizer.iterations`, saved in every checkpoint, so a restarted run
continues at the step it reached. Keras "epochs" are just display chunks of `checkpoint_steps`.
"""
from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable

import keras
import tensorflow as tf

from simclr_med.errors import NonFiniteLossError
from simclr_med.train import checkpoints

log = logging.getLogger(__name__)


def _step(model) -> int:
    return checkpoints.global_step(model.optimizer)


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops at the first non-finite loss or gradient (or after `allowed` skipped steps), before any save."""

    def __init__(self, allowed: int = 0):
        super().__init__()
        self.allowed = allowed
        self._before_epoch = 0.0
        self._seen = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._before_epoch = self._seen

    def on_train_batch_end(self, batch, logs=None):
        self._seen = self._before_epoch + float(logs.get("nonfinite_steps", 0.0))
        if self._seen > self.allowed:
            what = (f"{int(self._seen)} non-finite steps (allowed {self.allowed})" if self.allowed
                    else "the loss or its gradients became NaN/Inf")
            raise NonFiniteLossError(
                f"step {_step(self.model)}: {what}; stopped without saving, the last good "
                "checkpoint is untouched (lower --learning_rate, check the input data, or set "
                "--skip_nonfinite_steps)")


class StepCheckpoint(keras.callbacks.Callback):
    """Saves every `every` steps, at the end, and when SIGTERM (TPU-VM preemption) arrives.

    `on_checkpoint(model, step)`, if given, runs after each save but a preemption's (the grace period
    is for saving), and stops training by returning True: online early stopping on the saved state.
    Before each save, `checkpoints.check_sole_writer` stops the run if another process saved meanwhile.
    """

    def __init__(self, manager: tf.train.CheckpointManager, every: int, total_steps: int,
                 on_checkpoint: Callable[[keras.Model, int], bool] | None = None):
        super().__init__()
        self.manager = manager
        self.every = every
        self.total_steps = total_steps
        self.on_checkpoint = on_checkpoint
        self.last_saved = None
        self.newest = checkpoints.newest_listed(manager.directory)  # what check_sole_writer expects
        self.preempted = False
        self._previous_handler = None
        self._handling = False

    def _on_sigterm(self, signum, frame):
        self.preempted = True

    def on_train_begin(self, logs=None):
        self.last_saved = _step(self.model)
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._handling = True

    def restore_signal_handler(self):
        if self._handling:
            signal.signal(signal.SIGTERM, self._previous_handler or signal.SIG_DFL)
            self._handling = False

    def save(self):
        step = _step(self.model)
        if step != self.last_saved:
            checkpoints.check_sole_writer(self.manager.directory, self.newest)
            self.newest = os.path.basename(self.manager.save(checkpoint_number=step))
            self.last_saved = step
            if self.on_checkpoint is not None and not self.preempted and self.on_checkpoint(self.model, step):
                self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if self.preempted or step >= self.total_steps:
            self.model.stop_training = True
        if self.preempted or step >= self.total_steps or step - self.last_saved >= self.every:
            self.save()

    def on_train_end(self, logs=None):
        self.save()
        self.restore_signal_handler()


class ScalarLogger(keras.callbacks.Callback):
    """TensorBoard scalars (every metric + learning rate) against the global step."""

    def __init__(self, log_dir: str, every: int):
        super().__init__()
        self.writer = tf.summary.create_file_writer(log_dir)
        self.every = every

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step % self.every and step > 0:
            return
        with self.writer.as_default(step=step):
            for name, value in (logs or {}).items():
                tf.summary.scalar(name, float(value))
            learning_rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            tf.summary.scalar("learning_rate", float(learning_rate))
        self.writer.flush()


class History(keras.callbacks.Callback):
    """Keeps (step, logs) at every log point so callers can report the curve."""

    def __init__(self, every: int):
        super().__init__()
        self.every = every
        self.records: list[dict] = []

    def on_train_batch_end(self, batch, logs=None):
        step = _step(self.model)
        if step % self.every == 0:
            self.records.append({"step": step, **{k: float(v) for k, v in (logs or {}).items()}})


def train(
    model: keras.Model,
    dataset,
    *,
    model_dir: str,
    total_steps: int,
    checkpoint_steps: int,
    keep_checkpoint_max: int = 5,
    log_steps: int = 50,
    skip_nonfinite_steps: int = 0,
    verbose: int = 1,
    on_checkpoint: Callable[[keras.Model, int], bool] | None = None,
) -> dict:
    """Trains a compiled model from its latest checkpoint in `model_dir` up to `total_steps`.

    `dataset`: the input, or a function of the step training starts from that makes it (so that
    a resumed run can draw a new stream instead of replaying the one it started with).
    `on_checkpoint(model, step)` runs after every checkpoint; returning True stops training there.

    Returns {"start_step", "final_step", "preempted", "history"}.
    """
    manager = checkpoints.make_manager(model, model_dir, keep_checkpoint_max)
    start = checkpoints.restore_latest(manager)
    if start >= total_steps:
        log.info("%s is already at step %d >= %d: nothing to train", model_dir, start, total_steps)
        return {"start_step": start, "final_step": start, "preempted": False, "history": []}

    chunk = min(checkpoint_steps, total_steps)
    initial_epoch = start // chunk
    # Skipped (non-finite) steps do not advance the step count: leave room for them.
    epochs = initial_epoch + math.ceil((total_steps - start + skip_nonfinite_steps) / chunk)
    saver = StepCheckpoint(manager, checkpoint_steps, total_steps, on_checkpoint)
    history = History(log_steps)
    callbacks = [
        NonFiniteGuard(skip_nonfinite_steps),  # first: a bad step must stop before any save
        saver,
        ScalarLogger(os.path.join(model_dir, "train"), log_steps),
        history,
    ]
    if callable(dataset):
        dataset = dataset(start)
    log.info("training %s from step %d to %d", model_dir, start, total_steps)
    try:
        model.fit(dataset, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=chunk,
                  callbacks=callbacks, verbose=verbose)
    finally:  # Keras skips on_train_end when a callback raises (a non-finite loss)
        saver.restore_signal_handler()
    final = _step(model)
    if saver.preempted:
        log.warning("SIGTERM: saved checkpoint at step %d; rerun the same command to resume", final)
    return {"start_step": start, "final_step": final, "preempted": saver.preempted,
            "history": history.records}
