"""The contrastive model trains, checkpoints, resumes exactly, and distributes correctly."""
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.config import Config
from simclr_med.errors import CheckpointError, NonFiniteLossError, RunDirInUseError
from simclr_med.train import checkpoints, factory, loop


def tiny_config(**kw):
    base = dict(resnet_depth=18, image_size=32, train_batch_size=8, train_steps=6, optimizer="lars",
                learning_rate=0.5, warmup_epochs=0, checkpoint_steps=3, log_steps=1, verbose=0,
                model_dir="unused", proj_out_dim=16, num_proj_layers=2)
    base.update(kw)
    return Config(**base).validate()


def views_dataset(batch=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(64, size, size, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices({"view1": x, "view2": np.flip(x, 2).copy()})
    return ds.repeat().batch(batch, drop_remainder=True)


def test_trains_checkpoints_and_resumes(tmp_path):
    cfg = tiny_config(model_dir=str(tmp_path))
    model = factory.contrastive_model(cfg, num_train_examples=64)
    out = loop.train(model, views_dataset(), model_dir=str(tmp_path), total_steps=6,
                         checkpoint_steps=3, log_steps=1, verbose=0)
    assert out["start_step"] == 0 and out["final_step"] == 6
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-6")
    assert glob.glob(str(tmp_path / "train" / "events.out.tfevents.*"))
    assert {"contrast_loss", "contrast_acc", "contrast_entropy"} <= set(out["history"][-1])
    weights = [w.numpy() for w in model.encoder.weights]

    # A new process-equivalent: a fresh model resumes at step 6 with identical weights.
    again = factory.contrastive_model(cfg, num_train_examples=64)
    out2 = loop.train(again, views_dataset(), model_dir=str(tmp_path), total_steps=9,
                          checkpoint_steps=3, log_steps=1, verbose=0)
    assert out2["start_step"] == 6 and out2["final_step"] == 9
    restored = factory.contrastive_model(cfg, num_train_examples=64)
    mgr = checkpoints.make_manager(restored, str(tmp_path), 5)
    mgr.checkpoint.restore(str(tmp_path / "ckpt-6")).assert_existing_objects_matched()
    for a, b in zip(weights, restored.encoder.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_contrastive_loss_goes_down(tmp_path):
    cfg = tiny_config(model_dir=str(tmp_path), train_steps=30, optimizer="adam", learning_rate=1e-3,
                      learning_rate_scaling="none")
    model = factory.contrastive_model(cfg, num_train_examples=64)
    hist = loop.train(model, views_dataset(), model_dir=str(tmp_path), total_steps=30,
                          checkpoint_steps=30, log_steps=1, verbose=0)["history"]
    first, last = hist[0]["contrast_loss"], np.mean([h["contrast_loss"] for h in hist[-5:]])
    assert last < first - 0.2


def test_nan_loss_stops_without_touching_checkpoint(tmp_path):
    cfg = tiny_config(model_dir=str(tmp_path))
    model = factory.contrastive_model(cfg, num_train_examples=64)
    loop.train(model, views_dataset(), model_dir=str(tmp_path), total_steps=3,
                   checkpoint_steps=3, verbose=0)
    saved = sorted(os.listdir(tmp_path))
    bad = views_dataset().map(lambda d: {"view1": d["view1"] * np.nan, "view2": d["view2"]})
    model = factory.contrastive_model(cfg, num_train_examples=64)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(NonFiniteLossError, match="step 4"):
        loop.train(model, bad, model_dir=str(tmp_path), total_steps=6, checkpoint_steps=1, verbose=0)
    assert sorted(os.listdir(tmp_path)) == saved
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-3")
    assert signal.getsignal(signal.SIGTERM) is handler  # a caller that catches the error still gets SIGTERM


def test_the_input_is_made_for_the_step_training_resumes_from(tmp_path):
    cfg = tiny_config(model_dir=str(tmp_path))
    starts = []

    def make(start_step):
        starts.append(start_step)
        return views_dataset()

    for total in (3, 5):
        loop.train(factory.contrastive_model(cfg, num_train_examples=64), make, model_dir=str(tmp_path),
                       total_steps=total, checkpoint_steps=3, verbose=0)
    assert starts == [0, 3]


def test_skip_nonfinite_steps(tmp_path):
    cfg = tiny_config(model_dir=str(tmp_path), skip_nonfinite_steps=2)
    model = factory.contrastive_model(cfg, num_train_examples=64)
    good = views_dataset()
    # One poisoned batch among good ones: skipped, the run still reaches its step count.
    ds = good.enumerate().map(lambda i, d: {"view1": tf.where(i == 1, np.nan, d["view1"]),
                                            "view2": d["view2"]})
    out = loop.train(model, ds, model_dir=str(tmp_path), total_steps=4, checkpoint_steps=4, verbose=0,
                         skip_nonfinite_steps=2)
    assert out["final_step"] == 4
    assert all(np.isfinite(w.numpy()).all() for w in model.encoder.weights)


def test_checkpoint_of_other_architecture_is_a_clear_error(tmp_path):
    cfg = tiny_config(model_dir=str(tmp_path))
    model = factory.contrastive_model(cfg, num_train_examples=64)
    loop.train(model, views_dataset(), model_dir=str(tmp_path), total_steps=1, checkpoint_steps=1, verbose=0)
    other = factory.contrastive_model(tiny_config(resnet_depth=34), num_train_examples=64)
    with pytest.raises(CheckpointError, match="resnet_depth"):
        checkpoints.load_encoder(other.encoder, str(tmp_path))
    with pytest.raises(CheckpointError, match="different model"):
        loop.train(other, views_dataset(), model_dir=str(tmp_path), total_steps=2, checkpoint_steps=1,
                   verbose=0)


def test_encoder_moves_between_runs(tmp_path):
    cfg = tiny_config(model_dir=str(tmp_path))
    model = factory.contrastive_model(cfg, num_train_examples=64)
    loop.train(model, views_dataset(), model_dir=str(tmp_path), total_steps=2, checkpoint_steps=2, verbose=0)
    clf = factory.classifier(tiny_config(train_mode="finetune", optimizer="sgd"), num_classes=3,
                           multi_label=False, num_train_examples=64)
    checkpoints.load_encoder(clf.encoder, str(tmp_path))
    for a, b in zip(model.encoder.weights, clf.encoder.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


_MIRRORED_STEP = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    from simclr_med.train import factory
    from simclr_med.config import Config
    from simclr_med.train.strategy import make_strategy
    replicas, out = int(sys.argv[1]), sys.argv[2]
    strategy = make_strategy("mirrored" if replicas > 1 else "default", num_logical_devices=replicas)
    cfg = Config(resnet_depth=18, image_size=32, train_batch_size=8, optimizer="sgd", momentum=0.0,
                 learning_rate=0.1, learning_rate_scaling="none", warmup_epochs=0, train_steps=1,
                 model_dir="x", proj_out_dim=16, num_proj_layers=2, zero_init_residual=False)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(8, 32, 32, 3)).astype(np.float32)
    ds = tf.data.Dataset.from_tensor_slices({"view1": x, "view2": x[:, ::-1].copy()}).batch(8)
    tf.keras.utils.set_random_seed(1)
    with strategy.scope():
        model = factory.contrastive_model(cfg, num_train_examples=8, num_replicas=replicas)
    before = [v.numpy() for v in model.trainable_weights]
    logs = model.fit(ds, epochs=1, verbose=0).history
    np.save(out, np.concatenate([(v.numpy() - b).ravel() for v, b in zip(model.trainable_weights, before)]))
    print(json.dumps({"loss": logs["contrast_loss"][0]}))
""")


def _step(replicas, out):
    result = subprocess.run([sys.executable, "-c", _MIRRORED_STEP, str(replicas), str(out)],
                            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])["loss"], np.load(out)


def test_mirrored_train_step_equals_single_device(tmp_path):
    """Sync-BN, cross-replica negatives and gradient summation together give the same step.

    Compared as whole update vectors: float32 round-off differs between the paths (synchronized BN
    takes Keras' path, unsynchronized BN the fused kernel, and the convolutions see 8 or 16 views)
    and can flip a ReLU whose input is ~0, which moves every update below it by ~0.2%. Unsynchronized
    BN changes the loss by 4%; summing per-replica means instead of shares doubles the update.
    """
    loss_one, update_one = _step(1, tmp_path / "one.npy")
    loss_two, update_two = _step(2, tmp_path / "two.npy")
    assert loss_two == pytest.approx(loss_one, rel=5e-5)
    assert np.linalg.norm(update_two - update_one) < 1e-2 * np.linalg.norm(update_one)


@pytest.mark.parametrize("multi_label", [False, True])
def test_classifier_trains_and_lineareval_freezes_encoder(tmp_path, multi_label):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 32, 32, 3)).astype(np.float32)
    if multi_label:
        targets = {"labels": rng.integers(0, 2, (16, 3)).astype(np.float32),
                   "label_mask": np.tile([1.0, 1.0, 0.0], (16, 1)).astype(np.float32)}
    else:
        targets = {"label": rng.integers(0, 3, 16)}
    ds = tf.data.Dataset.from_tensor_slices({"image": x, **targets}).repeat().batch(8, drop_remainder=True)
    for mode in ("finetune", "lineareval"):
        cfg = tiny_config(train_mode=mode, optimizer="sgd", model_dir=str(tmp_path / mode))
        clf = factory.classifier(cfg, num_classes=3, multi_label=multi_label, num_train_examples=16)
        before = [w.numpy().copy() for w in clf.encoder.weights]
        out = loop.train(clf, ds, model_dir=str(tmp_path / mode), total_steps=2, checkpoint_steps=2,
                             log_steps=1, verbose=0)
        assert out["final_step"] == 2 and np.isfinite(out["history"][-1]["loss"])
        changed = any(not np.array_equal(a, b.numpy()) for a, b in zip(before, clf.encoder.weights))
        assert changed == (mode == "finetune")


@pytest.mark.parametrize("where", ["local", "ram"])
def test_a_second_writer_stops_the_run_before_its_next_save(tmp_path, where):
    """On a URL no lock keeps a second process out: the checkpoint state shows it, at this run's next save."""
    model_dir = str(tmp_path) if where == "local" else f"ram://test_loop/{tmp_path.name}"
    cfg = tiny_config(model_dir=model_dir)
    model = factory.contrastive_model(cfg, num_train_examples=64)

    def other_process_saves(trained, step):  # another run on this folder saves, after this one's first
        other = factory.contrastive_model(cfg, num_train_examples=64)
        other.optimizer.iterations.assign(7)
        checkpoints.make_manager(other, model_dir, 5).save(checkpoint_number=7)

    with pytest.raises(RunDirInUseError, match="another process writes this run folder .*ckpt-7, not ckpt-3"):
        loop.train(model, views_dataset(), model_dir=model_dir, total_steps=6, checkpoint_steps=3, verbose=0,
                   on_checkpoint=other_process_saves)
    state = tf.train.get_checkpoint_state(model_dir)
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["ckpt-3", "ckpt-7"]
    assert not tf.io.gfile.glob(model_dir + "/ckpt-6*")
    if where == "ram":
        tf.io.gfile.rmtree(model_dir)


def test_a_refused_resume_leaves_no_tensorflow_warnings(tmp_path):
    """TensorFlow logs each checkpoint value a failed restore left unused when it collects the restore;
    the refusal is one line, so nothing may follow it."""
    import gc
    import logging

    cfg = tiny_config(model_dir=str(tmp_path))
    loop.train(factory.contrastive_model(cfg, num_train_examples=64), views_dataset(),
               model_dir=str(tmp_path), total_steps=1, checkpoint_steps=1, verbose=0)
    gc.collect()  # restores of earlier tests, collected now, may log their own unused values
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(handler)
    try:
        for other in ({"resnet_depth": 34}, {"num_proj_layers": 3}):  # tensors of other shapes; other objects
            model = factory.contrastive_model(tiny_config(**other), num_train_examples=64)
            with pytest.raises(CheckpointError, match="different model") as refused:
                loop.train(model, views_dataset(), model_dir=str(tmp_path), total_steps=2, checkpoint_steps=1,
                           verbose=0)
            del model, refused
            gc.collect()
    finally:
        tf_logger.removeHandler(handler)
    assert not [r.getMessage() for r in records], [r.getMessage()[:200] for r in records][:3]
