"""Initialising an encoder from a google-research/simclr TF1 checkpoint, written here in the released
layout."""
import re

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.errors import CheckpointError
from simclr_med.models import heads, resnet
from simclr_med.train import checkpoints

BLOCKS_R50 = (3, 4, 6, 3)


def released_order(blocks=BLOCKS_R50, width=1):
    """[(our conv layer, its TF1 index, kernel shape)] as SimCLR's TF1 code creates them: a running
    index over the stem, then per block the projection (first block of each group) and conv 1-3."""
    rows = [("stem_conv", 0, (7, 7, 3, 64 * width))]
    index, c_in = 1, 64 * width
    for stage, n in enumerate(blocks, start=1):
        f = 64 * width * 2 ** (stage - 1)
        for block in range(1, n + 1):
            name = f"stage{stage}_block{block}"
            if block == 1:
                rows.append((f"{name}_proj_conv", index, (1, 1, c_in, 4 * f)))
                index += 1
            for conv, shape in ((1, (1, 1, c_in, f)), (2, (3, 3, f, f)), (3, (1, 1, f, 4 * f))):
                rows.append((f"{name}_conv{conv}", index, shape))
                index += 1
            c_in = 4 * f
    return rows


def write_released_checkpoint(prefix, scope="base_model/", seed=0, head_layers=3):
    """A TF1 name-based checkpoint as Chen et al. released them: conv2d[_k]/kernel,
    batch_normalization[_k]/{gamma,beta,moving_mean,moving_variance}; the projection head
    head_contrastive/nl_<j> (v1: 2 layers, v2: 3; no beta on the last); a supervised head, an optimizer
    slot and global_step, which the import must ignore. Returns {key: value}."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for _, k, shape in released_order():
        suffix = f"_{k}" if k else ""
        he_normal = rng.normal(scale=(2 / np.prod(shape[:3])) ** 0.5, size=shape)
        tensors[f"{scope}conv2d{suffix}/kernel"] = he_normal.astype(np.float32)
        for w in ("gamma", "beta", "moving_mean", "moving_variance"):
            tensors[f"{scope}batch_normalization{suffix}/{w}"] = rng.uniform(
                0.5, 1.5, shape[-1]).astype(np.float32)
    tensors[f"{scope}conv2d/kernel/Momentum"] = np.zeros((7, 7, 3, 64), np.float32)
    head_scope = scope.replace("base_model/", "head_contrastive/")
    for j in range(head_layers):
        out = 128 if j == head_layers - 1 else 2048
        tensors[f"{head_scope}nl_{j}/dense/kernel"] = rng.normal(
            scale=0.02, size=(2048, out)).astype(np.float32)
        for w in ("gamma", "moving_mean", "moving_variance") + (("beta",) if out == 2048 else ()):
            tensors[f"{head_scope}nl_{j}/batch_normalization/{w}"] = rng.uniform(
                0.5, 1.5, out).astype(np.float32)
    tensors["head_supervised/linear_layer/dense/kernel"] = rng.normal(size=(2048, 1000)).astype(np.float32)
    tensors["global_step"] = np.array(250228, np.int64)
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tensors[n] for n in names])
    return tensors


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("simclr_tf1") / "model.ckpt-250228")
    return prefix, write_released_checkpoint(prefix)


def test_every_encoder_weight_comes_from_its_released_variable(released):
    prefix, tensors = released
    encoder = resnet.build_resnet(50, input_shape=(32, 32, 3))
    assert checkpoints.load_encoder(encoder, prefix) == prefix
    rows = released_order()
    assert len(rows) == 53 and rows[11][:2] == ("stage2_block1_proj_conv", 11)
    assert rows[-1][:2] == ("stage4_block3_conv3", 52)
    for conv_name, k, _ in rows:
        suffix = f"_{k}" if k else ""
        np.testing.assert_array_equal(encoder.get_layer(conv_name).kernel.numpy(),
                                      tensors[f"base_model/conv2d{suffix}/kernel"])
        bn = encoder.get_layer(conv_name.replace("conv", "bn"))
        for w in ("gamma", "beta", "moving_mean", "moving_variance"):
            np.testing.assert_array_equal(getattr(bn, w).numpy(),
                                          tensors[f"base_model/batch_normalization{suffix}/{w}"])
    assert len(encoder.weights) == 53 * 5  # nothing left at its initial value
    images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    assert np.isfinite(encoder(images)).all()


def simclr_reference(images, tensors, scope="base_model/"):
    """SimCLR's TF1 ResNet-50 at inference, written from its code: conv2d_fixed_padding (explicit
    (k-1)//2 padding and VALID when strided), batch norm, ReLU, SAME max pool, bottleneck blocks with
    the stride on the 3x3 convolution; variables numbered in creation order."""
    index = iter(range(10 ** 6))

    def conv_bn(x, stride, relu=True):
        k = next(index)
        suffix = f"_{k}" if k else ""
        kernel = tensors[f"{scope}conv2d{suffix}/kernel"]
        if stride > 1:
            before = (kernel.shape[0] - 1) // 2
            pad = [before, kernel.shape[0] - 1 - before]
            x = tf.pad(x, [[0, 0], pad, pad, [0, 0]])
        x = tf.nn.conv2d(x, kernel, stride, "VALID" if stride > 1 else "SAME")
        bn = {w: tensors[f"{scope}batch_normalization{suffix}/{w}"]
              for w in ("gamma", "beta", "moving_mean", "moving_variance")}
        x = tf.nn.batch_normalization(x, bn["moving_mean"], bn["moving_variance"], bn["beta"], bn["gamma"],
                                      1e-5)
        return tf.nn.relu(x) if relu else x

    x = tf.nn.max_pool2d(conv_bn(images, 2), 3, 2, "SAME")
    for stage, n in enumerate(BLOCKS_R50):
        for block in range(n):
            stride = 2 if block == 0 and stage > 0 else 1
            shortcut = conv_bn(x, stride, relu=False) if block == 0 else x
            y = conv_bn(conv_bn(conv_bn(x, 1), stride), 1, relu=False)
            x = tf.nn.relu(y + shortcut)
    return tf.reduce_mean(x, [1, 2])


def test_imported_encoder_computes_what_simclr_computed(released):
    """Even image sizes, where SAME padding would put the strided convolutions' grid a pixel off."""
    prefix, tensors = released
    encoder = resnet.build_resnet(50, input_shape=(64, 64, 3))
    checkpoints.load_encoder(encoder, prefix)
    images = np.random.default_rng(2).uniform(size=(2, 64, 64, 3)).astype(np.float32)
    expected = simclr_reference(images, tensors).numpy()
    np.testing.assert_allclose(encoder(images, training=False).numpy(), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_moving_average_copy_is_used_when_it_is_the_only_one(tmp_path):
    prefix = str(tmp_path / "model.ckpt-1")
    tensors = write_released_checkpoint(prefix, scope="ema_model/base_model/", seed=1)
    encoder = resnet.build_resnet(50, input_shape=(32, 32, 3))
    checkpoints.load_encoder(encoder, str(tmp_path))  # a run directory holding the checkpoint works too
    np.testing.assert_array_equal(encoder.get_layer("stage3_block6_bn2").moving_variance.numpy(),
                                  tensors["ema_model/base_model/batch_normalization_41/moving_variance"])


@pytest.mark.parametrize("depth, width, message", [
    (50, 2, "base_model/conv2d/kernel has shape [7, 7, 3, 64], but stem_conv/kernel of this model is "
            "(7, 7, 3, 128)"),
    (101, 1, "SimCLR checkpoint with 53 convolutions under 'base_model/'; this encoder has 104"),
    (18, 1, "this encoder has 20 (--resnet_depth/--width_multiplier must match"),
])
def test_other_architecture_is_a_clear_error(released, depth, width, message):
    encoder = resnet.build_resnet(depth, width, input_shape=(32, 32, 3))
    with pytest.raises(CheckpointError, match=re.escape(message)) as e:
        checkpoints.load_encoder(encoder, released[0])
    assert str(e.value).startswith(f"--checkpoint={released[0]}: ")


def test_directory_without_state_file_needs_a_single_checkpoint(tmp_path):
    for step in (1, 2):
        tf.raw_ops.SaveV2(prefix=str(tmp_path / f"model.ckpt-{step}"), tensor_names=["global_step"],
                          shape_and_slices=[""], tensors=[np.array(step, np.int64)])
    with pytest.raises(CheckpointError,
                       match="holds 2 checkpoints and no `checkpoint` file naming the latest; "
                             "name one: .*model.ckpt-1, .*model.ckpt-2$"):
        checkpoints.resolve_checkpoint(str(tmp_path))


def test_released_projection_head_is_imported_layer_by_layer(released):
    prefix, tensors = released
    head = heads.build_projection_head(2048, num_layers=3, out_dim=128)
    assert checkpoints.load_projection_head(head, prefix)
    for j in range(3):
        np.testing.assert_array_equal(head.get_layer(f"dense{j}").kernel.numpy(),
                                      tensors[f"head_contrastive/nl_{j}/dense/kernel"])
        for w in head.get_layer(f"bn{j}").weights:
            np.testing.assert_array_equal(
                w.numpy(), tensors[f"head_contrastive/nl_{j}/batch_normalization/{w.name}"])
    assert len(head.weights) == 3 + 4 + 4 + 3  # nothing left at its initial value


def test_head_of_another_shape_is_refused_whole(tmp_path):
    prefix = str(tmp_path / "model.ckpt-1")
    write_released_checkpoint(prefix, head_layers=2)  # a SimCLR v1 model
    head = heads.build_projection_head(2048, num_layers=3, out_dim=128)
    with pytest.raises(CheckpointError, match=re.escape("its projection head has 2 layers, this one 3 "
                                                        "(--num_proj_layers=2, or --nocheckpoint_head")):
        checkpoints.load_projection_head(head, prefix)
    head = heads.build_projection_head(2048, num_layers=2, out_dim=64)
    before = [w.numpy() for w in head.weights]
    with pytest.raises(CheckpointError, match=re.escape(
            "head_contrastive/nl_1/dense/kernel has shape [2048, 128], but dense1/kernel of this model is "
            "(2048, 64) (--proj_out_dim must match")):
        checkpoints.load_projection_head(head, prefix)
    for b, w in zip(before, head.weights):  # not even the first layer, which fits
        np.testing.assert_array_equal(b, w.numpy())


def test_checkpoint_without_head_leaves_it_fresh(tmp_path):
    prefix = str(tmp_path / "model.ckpt-1")
    write_released_checkpoint(prefix, head_layers=0)
    head = heads.build_projection_head(2048, num_layers=3, out_dim=128)
    before = [w.numpy() for w in head.weights]
    assert not checkpoints.load_projection_head(head, prefix)
    for b, w in zip(before, head.weights):
        np.testing.assert_array_equal(b, w.numpy())
