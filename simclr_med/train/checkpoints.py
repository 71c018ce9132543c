"""Checkpoints: resume a run exactly, and initialise an encoder from another run.

A run's state is `tf.train.Checkpoint(model=..., optimizer=...)`, saved by a
`tf.train.CheckpointManager` as `model_dir/ckpt-<step>`. TensorFlow writes the data and index
files before it atomically rewrites the `checkpoint` state file, so a run killed mid-write
still points at its last complete checkpoint; on resume, the pieces of an unfinished save are
removed and a finished but unlisted checkpoint is listed.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_med import io
from simclr_med.errors import CheckpointError, RunDirInUseError
from simclr_med.train import simclr_tf1

log = logging.getLogger(__name__)
KERAS_FILES = (".keras", ".h5")  # a Keras model or weights file (`.weights.h5` included), not a checkpoint


def global_step(optimizer) -> int:
    """The run's step, `optimizer.iterations` (a MirroredVariable under MirroredStrategy has no int())."""
    return int(optimizer.iterations.numpy())


def make_manager(model: keras.Model, model_dir: str, max_to_keep: int) -> tf.train.CheckpointManager:
    """The run's checkpoint manager, after `_settle_unlisted` (the manager reads the state file once)."""
    _settle_unlisted(model_dir)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(ckpt, model_dir, max_to_keep=max_to_keep, checkpoint_name="ckpt")


def write_state(model_dir: str, names: list[str]) -> None:
    """Rewrites the `checkpoint` state file to list `names` (relative, the last one the newest).

    With timestamps: a CheckpointManager only manages (and resumes from) the listed checkpoints
    whose timestamps are later than the state's `last_preserved_timestamp`. `model_dir` is made
    absolute first: TensorFlow records bare names relative to a relative folder (`../../ckpt-60`).
    """
    model_dir = io.run_path(model_dir)
    state = tf.train.get_checkpoint_state(model_dir)
    now = time.time()
    last_preserved = state.last_preserved_timestamp if state else now - 1.0
    stamps = dict(zip(map(os.path.basename, state.all_model_checkpoint_paths),
                      state.all_model_checkpoint_timestamps)) if state else {}
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # the compat.v1 function announces its deprecation
    try:
        tf.compat.v1.train.update_checkpoint_state(
            model_dir, names[-1], all_model_checkpoint_paths=names,
            all_model_checkpoint_timestamps=[max(stamps.get(n, now), last_preserved + 1e-3) for n in names],
            last_preserved_timestamp=last_preserved)
    finally:
        logger.setLevel(level)


def newest_listed(model_dir: str) -> str | None:
    """The name of the newest checkpoint the state file lists, as it is on the store now; None if none."""
    state = tf.train.get_checkpoint_state(model_dir)
    return os.path.basename(state.model_checkpoint_path) if state and state.model_checkpoint_path else None


def check_sole_writer(model_dir: str, expected: str | None) -> None:
    """Before a save: the newest listed checkpoint must be `expected`, the one this process last saved or
    found there. Otherwise another process writes the folder, and the two would overwrite each other's
    checkpoints. A local run folder is locked (`io.run_lock`); on a URL, where no lock exists, this is how a
    second writer shows, at the first save after it wrote."""
    if (found := newest_listed(model_dir)) != expected:
        raise RunDirInUseError(
            f"{model_dir}: another process writes this run folder (its newest checkpoint is {found}, not "
            f"{expected or 'none'} as this run left it); stopped without saving: one run per --model_dir")


def step_of(prefix: str) -> int:
    """The step in a checkpoint's name (`ckpt-<step>`); -1 for a name without one."""
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def _settle_unlisted(model_dir: str) -> None:
    """Tidies what a killed save left behind, before anything reads the state file.

    A save writes the checkpoint's files, then lists it in the state file. Killed in between, the
    newest checkpoint is complete but unlisted: it is listed now, so no finished step is lost
    (one that proves unreadable is skipped by `restore_latest`). Everything else unlisted, and
    the temporary files of a save killed earlier, is removed.
    """
    state = tf.train.get_checkpoint_state(model_dir) if io.isdir(model_dir) else None
    listed = [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else []
    files = {}
    for path in io.glob(os.path.join(model_dir, "ckpt-*")):
        name = os.path.basename(path)
        if "_temp" in name:
            io.rmtree(path) if io.isdir(path) else io.remove(path)
        else:
            files.setdefault(name.split(".index")[0].split(".data-")[0], []).append(path)
    for path in io.glob(os.path.join(model_dir, "checkpoint.tmp*")):  # state file never renamed
        io.remove(path)
    unlisted = sorted((p for p in files if p not in listed), key=step_of)
    newest_listed = max(map(step_of, listed), default=-1)
    if (unlisted and step_of(unlisted[-1]) > newest_listed
            and _complete(os.path.join(model_dir, unlisted[-1]))):
        adopted = unlisted.pop()
        log.warning("listing checkpoint %s, written but not listed when the run was killed", adopted)
        write_state(model_dir, listed + [adopted])
    for prefix in unlisted:
        for path in files[prefix]:
            log.warning("removing incomplete checkpoint file %s", path)
            io.remove(path)


def _complete(prefix: str) -> bool:
    """Whether a checkpoint's index and data files are there and its index reads."""
    if not io.exists(prefix + ".index") or not io.glob(prefix + ".data-*"):
        return False
    try:
        tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
        return True
    except (tf.errors.OpError, ValueError):
        return False


# A checkpoint whose files are missing or cut short (TF reports the latter as IndexError).
_UNREADABLE = (tf.errors.OpError, IndexError)


def restore_latest(manager: tf.train.CheckpointManager) -> int:
    """Restores the newest loadable checkpoint; returns its step (0 when starting fresh).

    A listed checkpoint that cannot be read (a kill during the manager's deletion of old
    checkpoints, a damaged disk) is skipped for the one before it; one written by another model
    is an error, and so is a run none of whose listed checkpoints can be read — never a silent
    restart from step 0.
    """
    unreadable = []
    for path in reversed(manager.checkpoints):
        status = None
        try:
            status = manager.checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except _UNREADABLE as e:
            _quiet_failed_restore(status, e)
            log.warning("skipping unreadable checkpoint %s (%s)", path, _first_line(e))
            unreadable.append(path)
            continue
        except (ValueError, AssertionError) as e:
            _quiet_failed_restore(status, e)
            raise CheckpointError(
                f"{path}: cannot resume from this checkpoint ({_first_line(e)}); it was written by a "
                "different model (depth/width/head/dataset) — use a new --model_dir") from None
        step = global_step(manager.checkpoint.optimizer)
        log.info("resumed from %s (step %d)", path, step)
        return step
    if unreadable:
        raise CheckpointError(f"{manager.directory}: no listed checkpoint can be read "
                              f"({', '.join(unreadable)}); "
                              "delete them to start from step 0, or use a new --model_dir")
    return 0


def _quiet_failed_restore(status, error: Exception) -> None:
    """Keeps a failed restore to its one-line error: TensorFlow's restore coordinator, when garbage
    collected, logs every checkpoint value it did not restore (a ResNet's worth of lines, at exit). Marking
    the restore partial, as `status.expect_partial()` does, silences it; when `restore` itself raised
    (tensors of other shapes) there is no status, and the coordinator is a local of the failing frames
    (found by class name: tests/train/test_loop.py fails if a TensorFlow upgrade renames it)."""
    if status is not None:
        status.expect_partial()
    frame = error.__traceback__
    while frame is not None:
        for value in frame.tb_frame.f_locals.values():
            if type(value).__name__ == "_CheckpointRestoreCoordinator":
                value.expect_partial = True
        frame = frame.tb_next


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def resolve_checkpoint(path: str) -> str:
    """A run directory → its latest checkpoint; a checkpoint prefix or weights file → itself."""
    if io.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:  # no `checkpoint` state file (a downloaded folder): its only checkpoint
            prefixes = sorted(p[:-len(".index")] for p in io.glob(os.path.join(path, "*.index")))
            if len(prefixes) != 1:
                if not prefixes:
                    raise CheckpointError(f"--checkpoint={path}: directory holds no checkpoint")
                raise CheckpointError(f"--checkpoint={path}: directory holds {len(prefixes)} checkpoints "
                                      f"and no `checkpoint` file naming the latest; "
                                      f"name one: {', '.join(prefixes)}")
            latest = prefixes[0]
        return latest
    if path.endswith(KERAS_FILES) or io.exists(path + ".index"):
        if not (io.exists(path) or io.exists(path + ".index")):
            raise CheckpointError(f"--checkpoint={path}: no such file")
        return path
    raise CheckpointError(f"--checkpoint={path}: not a run directory, checkpoint prefix "
                          "or Keras weights file")


def restore_weights(model: keras.Model, path: str) -> None:
    """Restores a run checkpoint's layer weights into `model`, not its optimizer.

    Evaluation and export need no optimizer state, whose structure depends on flags that leave
    the weights alone (--precision=mixed_float16 and --skip_nonfinite_steps add a loss-scale
    wrapper). Every weight of `model` must be found.
    """
    layers = {name: v for name, v in vars(model).items() if isinstance(v, keras.layers.Layer) and v.weights}
    tf.train.Checkpoint(model=tf.train.Checkpoint(**layers)).restore(
        path).expect_partial().assert_existing_objects_matched()


def load_encoder(encoder: keras.Model, path: str) -> str:
    """Initialises `encoder` from a run's checkpoint, a Keras file or a google-research/simclr TF1
    checkpoint (`simclr_tf1`); returns the resolved path.

    Every encoder variable must be found with the right shape, so a checkpoint of another
    architecture fails here with a clear message instead of training from a half-loaded model.
    """
    path = resolve_checkpoint(path)
    with _reading(path, "does not fit this encoder (--resnet_depth/--width_multiplier must match the run "
                        "that wrote it)"):
        if path.endswith(".keras"):
            source = keras.saving.load_model(path, compile=False)
            source = getattr(source, "encoder", source)
            encoder.set_weights(source.get_weights())
        elif path.endswith(".h5"):
            encoder.load_weights(path)
        else:
            reader = tf.train.load_checkpoint(path)
            if prefix := simclr_tf1.base_prefix(reader):
                simclr_tf1.load(encoder, path, reader, prefix)
            else:
                tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=encoder)).restore(
                    path).expect_partial().assert_existing_objects_matched()
    log.info("initialised encoder from %s", path)
    return path


def load_projection_head(head: keras.Model, path: str) -> bool:
    """Initialises a projection head from the one saved at `path` (resolved), as SimCLR's code does
    when it continues pretraining; False when there is none (a fine-tuning run, a Keras encoder
    file), and the head starts fresh. A head of another shape is an error, not a partial load."""
    has_head = False
    if not path.endswith(KERAS_FILES):
        with _reading(path, "its projection head does not fit this one "
                            "(--num_proj_layers/--proj_out_dim must "
                            "match the run that wrote it, or --nocheckpoint_head)"):
            reader = tf.train.load_checkpoint(path)
            if prefix := simclr_tf1.base_prefix(reader):
                has_head = simclr_tf1.load_head(head, path, reader, prefix)
            elif "projection_head" in _children(reader, "model"):
                tf.train.Checkpoint(model=tf.train.Checkpoint(projection_head=head)).restore(
                    path).expect_partial().assert_existing_objects_matched()
                has_head = True
    if has_head:
        log.info("initialised projection head from %s", path)
    else:
        log.info("projection head starts fresh: %s has none", path)
    return has_head


def _children(reader, name: str) -> set[str]:
    """Names of the objects under the checkpoint root's `name` (a run's variables are keyed by the
    first path to them, often through the optimizer, so only the object graph says what a model had)."""
    serialized = reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(serialized)
    node = next((c.node_id for c in graph.nodes[0].children if c.local_name == name), None)
    return set() if node is None else {c.local_name for c in graph.nodes[node].children}


@contextlib.contextmanager
def _reading(path: str, mismatch: str):
    """Turns TensorFlow's and h5py's errors on reading `path` into one-line CheckpointErrors."""
    try:
        yield
    except CheckpointError:
        raise
    except (*_UNREADABLE, OSError) as e:  # OSError: h5py on a damaged .h5
        raise CheckpointError(f"--checkpoint={path}: cannot be read ({_first_line(e)})") from None
    except (ValueError, AssertionError) as e:
        raise CheckpointError(f"--checkpoint={path}: {mismatch}: {_first_line(e)}") from None
