"""Checkpoints: resume a run exactly, and initialise an encoder from another run.

A run's state is `tf.train.Checkpoint(model=..., optimizer=...)`, saved by a
`tf.train.CheckpointManager` as `model_dir/ckpt-<step>`. TensorFlow writes the data and index
files before it atomically rewrites the `checkpoint` state file, so a run killed mid-write
still points at its last complete checkpoint; the orphaned pieces are removed on resume.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil

import keras
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from simclr_med import simclr_tf1
from simclr_med.errors import CheckpointError

log = logging.getLogger(__name__)
KERAS_FILES = (".keras", ".h5")  # a Keras model or weights file (`.weights.h5` included), not a checkpoint


def global_step(optimizer) -> int:
    """The run's step, `optimizer.iterations` (a MirroredVariable under MirroredStrategy has no int())."""
    return int(optimizer.iterations.numpy())


def make_manager(model: keras.Model, model_dir: str, max_to_keep: int) -> tf.train.CheckpointManager:
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    return tf.train.CheckpointManager(ckpt, model_dir, max_to_keep=max_to_keep, checkpoint_name="ckpt")


def _remove_orphans(manager: tf.train.CheckpointManager) -> None:
    """Deletes files of checkpoints that a killed save left behind and the state file never listed."""
    listed = {os.path.basename(p) for p in manager.checkpoints}
    for path in glob.glob(os.path.join(manager.directory, "ckpt-*")):
        prefix = os.path.basename(path).split(".index")[0].split(".data-")[0]
        if prefix.endswith("_temp") or "_temp" in os.path.basename(path):
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
        elif prefix not in listed:
            log.warning("removing incomplete checkpoint file %s", path)
            os.remove(path)
    for path in glob.glob(os.path.join(manager.directory, "checkpoint.tmp*")):  # state file never renamed
        os.remove(path)


# A checkpoint whose files are missing or cut short (TF reports the latter as IndexError).
_UNREADABLE = (tf.errors.OpError, IndexError)


def restore_latest(manager: tf.train.CheckpointManager) -> int:
    """Restores the newest loadable checkpoint; returns its step (0 when starting fresh).

    A listed checkpoint that cannot be read (a kill during the manager's deletion of old
    checkpoints, a damaged disk) is skipped for the one before it; one written by another model
    is an error, and so is a run none of whose listed checkpoints can be read — never a silent
    restart from step 0.
    """
    _remove_orphans(manager)
    unreadable = []
    for path in reversed(manager.checkpoints):
        try:
            manager.checkpoint.restore(path).assert_existing_objects_matched()
        except _UNREADABLE as e:
            log.warning("skipping unreadable checkpoint %s (%s)", path, _first_line(e))
            unreadable.append(path)
            continue
        except (ValueError, AssertionError) as e:
            raise CheckpointError(
                f"{path}: cannot resume from this checkpoint ({_first_line(e)}); it was written by a "
                "different model (depth/width/head/dataset) — use a new --model_dir") from None
        step = global_step(manager.checkpoint.optimizer)
        log.info("resumed from %s (step %d)", path, step)
        return step
    if unreadable:
        raise CheckpointError(f"{manager.directory}: no listed checkpoint can be read ({', '.join(unreadable)}); "
                              "delete them to start from step 0, or use a new --model_dir")
    return 0


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


def resolve_checkpoint(path: str) -> str:
    """A run directory → its latest checkpoint; a checkpoint prefix or weights file → itself."""
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:  # no `checkpoint` state file (a downloaded folder): its only checkpoint
            prefixes = sorted(p[:-len(".index")] for p in glob.glob(os.path.join(path, "*.index")))
            if len(prefixes) != 1:
                raise CheckpointError(f"--checkpoint={path}: directory holds no checkpoint" if not prefixes else
                                      f"--checkpoint={path}: directory holds {len(prefixes)} checkpoints and no "
                                      f"`checkpoint` file naming the latest; name one: {', '.join(prefixes)}")
            latest = prefixes[0]
        return latest
    if path.endswith(KERAS_FILES) or os.path.exists(path + ".index"):
        if not (os.path.exists(path) or os.path.exists(path + ".index")):
            raise CheckpointError(f"--checkpoint={path}: no such file")
        return path
    raise CheckpointError(f"--checkpoint={path}: not a run directory, checkpoint prefix or Keras weights file")


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
        with _reading(path, "its projection head does not fit this one (--num_proj_layers/--proj_out_dim must "
                            "match the run that wrote it, or --nocheckpoint_head)"):
            reader = tf.train.load_checkpoint(path)
            if prefix := simclr_tf1.base_prefix(reader):
                has_head = simclr_tf1.load_head(head, path, reader, prefix)
            elif "projection_head" in _children(reader, "model"):
                tf.train.Checkpoint(model=tf.train.Checkpoint(projection_head=head)).restore(
                    path).expect_partial().assert_existing_objects_matched()
                has_head = True
    log.info("initialised projection head from %s" if has_head else "projection head starts fresh: %s has none",
             path)
    return has_head


def _children(reader, name: str) -> set[str]:
    """Names of the objects under the checkpoint root's `name` (a run's variables are keyed by the
    first path to them, often through the optimizer, so only the object graph says what a model had)."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
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
