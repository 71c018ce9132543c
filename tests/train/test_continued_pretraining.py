"""Continued pretraining (ImageNet→Derm): a new pretraining run starts from another run's encoder
and, unless --nocheckpoint_head, its projection head (test_simclr_tf1 covers released SimCLR models)."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from simclr_med import experiment
from simclr_med.config import Config
from simclr_med.errors import CheckpointError
from simclr_med.models import heads
from simclr_med.train import checkpoints, factory


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A one-step demo pretraining run, and the config that started it."""
    root = tmp_path_factory.mktemp("continued")
    cfg = Config(mode="train", train_mode="pretrain", dataset="demo", data_dir=str(root / "tfds"),
                 model_dir=str(root / "first"), resnet_depth=18, image_size=32, augmentation="crop_only",
                 train_batch_size=8, train_steps=1, num_proj_layers=2, proj_out_dim=16, warmup_epochs=0,
                 checkpoint_steps=1, verbose=0)
    experiment.run(cfg)
    return cfg


def _weights(cfg):
    """The encoder's and the projection head's weights in `cfg.model_dir`'s latest checkpoint."""
    model = factory.contrastive_model(cfg, num_train_examples=8)
    checkpoints.restore_weights(model, tf.train.latest_checkpoint(cfg.model_dir))
    return ([w.numpy() for w in model.encoder.trainable_weights],
            [w.numpy() for w in model.projection_head.weights])


@pytest.mark.parametrize("checkpoint_head", [True, False])
def test_continues_from_the_runs_encoder_and_head(first, tmp_path, checkpoint_head):
    # Learning rate 0: the new run's checkpoint holds the weights it started from (but BN's moving
    # statistics).
    cfg = dataclasses.replace(first, model_dir=str(tmp_path), checkpoint=first.model_dir, learning_rate=0.0,
                              checkpoint_head=checkpoint_head)
    experiment.run(cfg)
    (encoder_before, head_before), (encoder_after, head_after) = _weights(first), _weights(cfg)
    for before, after in zip(encoder_before, encoder_after):
        np.testing.assert_array_equal(after, before)
    kernels = [(b, a) for b, a in zip(head_before, head_after) if b.ndim == 2]
    assert len(kernels) == 2 and all(np.array_equal(a, b) == checkpoint_head for b, a in kernels)


def test_head_of_another_shape_is_an_error_before_training(first, tmp_path):
    cfg = dataclasses.replace(first, model_dir=str(tmp_path), checkpoint=first.model_dir, proj_out_dim=8)
    with pytest.raises(CheckpointError, match="its projection head does not fit this one "
                                              r"\(--num_proj_layers/--proj_out_dim must match"):
        experiment.run(cfg)
    assert tf.train.latest_checkpoint(str(tmp_path)) is None


def test_finetuning_run_has_no_head_to_continue_from(first, tmp_path):
    clf = factory.classifier(dataclasses.replace(first, train_mode="finetune", optimizer="sgd"),
                             num_classes=3, multi_label=False, num_train_examples=8)
    checkpoints.make_manager(clf, str(tmp_path), 1).save()
    head = heads.build_projection_head(512, num_layers=2, out_dim=16)
    assert not checkpoints.load_projection_head(head, checkpoints.resolve_checkpoint(str(tmp_path)))
