"""U-Net, Dice, the seg_masks builder and the segmentation pipeline/training."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from simclr_med.data.segmentation import check_mask_classes, load_segmentation
from simclr_med.errors import CheckpointError, DataError
from simclr_med.methods import segmentation
from simclr_med.methods.segmentation import load_pretrained_encoder, train_segmentation
from simclr_med.models.resnet import build_resnet, stage_output_names
from simclr_med.models.unet import Dice, DiceLoss, UNet, dice_coefficient, load_encoder_weights
from tests.fixtures.segmentation import write_seg_fixture
from tfds_builders.seg_masks import SegMasks, SegMasksError

TINY = (16, 8, 8, 8, 8)  # decoder filters


@pytest.fixture(autouse=True, scope="module")
def _quiet_tfds():
    tfds.disable_progress_bar()


# ----------------------------------------------------------------------------- U-Net
@pytest.mark.parametrize("depth", [18, 50])
def test_output_shape_equals_input_shape(depth):
    unet = UNet(depth, num_classes=1, decoder_filters=TINY)
    out = unet(np.random.rand(2, 64, 64, 3).astype("float32")).numpy()
    assert out.shape == (2, 64, 64, 1)
    assert np.all((out > 0) & (out < 1))


def test_multi_class_softmax_and_size_check():
    unet = UNet(18, num_classes=3, decoder_filters=TINY)
    out = unet(np.random.rand(1, 32, 32, 3).astype("float32")).numpy()
    assert out.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="divisible by 32"):
        unet(np.zeros((1, 48, 48, 3), "float32"))


def test_encoder_weights_copied_exactly():
    source = build_resnet(18)
    rng = np.random.default_rng(0)
    source.set_weights([rng.normal(size=w.shape).astype("float32") for w in source.get_weights()])
    unet = UNet(18, decoder_filters=TINY)
    assert not all(np.array_equal(a, b) for a, b in zip(source.get_weights(), unet.encoder.get_weights()))

    assert load_encoder_weights(unet, source) == sum(1 for layer in source.layers if layer.weights)
    for layer in source.layers:
        for a, b in zip(layer.get_weights(), unet.encoder.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # The tapped feature model shares the copied layers.
    x = np.random.rand(1, 32, 32, 3).astype("float32")
    deepest = keras.Model(source.input, source.get_layer(stage_output_names(18)[-1]).output)
    np.testing.assert_allclose(unet.features(x)[-1], deepest(x), rtol=1e-5, atol=1e-5)


def test_encoder_from_checkpoint_or_weights_file(tmp_path):
    source = build_resnet(18)
    rng = np.random.default_rng(1)
    source.set_weights([rng.normal(size=w.shape).astype("float32") for w in source.get_weights()])
    prefix = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=source)).save(str(tmp_path / "ckpt"))
    source.save_weights(str(tmp_path / "enc.weights.h5"))
    unet = UNet(18, decoder_filters=TINY)
    for path in (prefix, str(tmp_path), str(tmp_path / "enc.weights.h5")):
        unet.encoder.set_weights([np.zeros_like(w) for w in unet.encoder.get_weights()])
        load_pretrained_encoder(unet, path)
        for a, b in zip(source.get_weights(), unet.encoder.get_weights()):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="not a run directory, checkpoint prefix"):
        load_pretrained_encoder(unet, str(tmp_path / "missing-ckpt"))
    gray = build_resnet(18, input_shape=(None, None, 1))
    gray_prefix = tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=gray)).save(str(tmp_path / "gray"))
    with pytest.raises(CheckpointError, match="gray-1: does not fit this encoder"):
        load_pretrained_encoder(unet, gray_prefix)


def test_encoder_mismatch_is_rejected():
    unet = UNet(18, decoder_filters=TINY)
    with pytest.raises(ValueError, match="does not match"):
        load_encoder_weights(unet, build_resnet(34))
    with pytest.raises(ValueError, match=r"'stem_conv': source weights \[\(7, 7, 1, 64\)\]"):
        load_encoder_weights(unet, build_resnet(18, input_shape=(None, None, 1)))


# ----------------------------------------------------------------------------- Dice
def _square(size=16, top=2, left=2, side=6):
    m = np.zeros((1, size, size, 1), "float32")
    m[0, top:top + side, left:left + side] = 1
    return m


def test_dice_values():
    a, b = _square(), _square(top=9, left=9)
    assert float(dice_coefficient(a, a, smooth=1e-6)[0]) == pytest.approx(1.0)
    assert float(dice_coefficient(a, b, smooth=1e-6)[0]) == pytest.approx(0.0, abs=1e-6)
    half = _square(side=4)
    half[0, 2:6, 4:6] = 0  # 8 of a's pixels vs a's 36 → 2·8 / (36 + 8)
    assert float(dice_coefficient(a, half, smooth=0.0)[0]) == pytest.approx(16 / 44)

    metric = Dice()
    metric.update_state(a, a * 0.9)  # thresholded at 0.5
    assert float(metric.result()) == pytest.approx(1.0)
    metric.update_state(a, b)
    assert float(metric.result()) == pytest.approx(0.5)
    metric.reset_state()
    metric.update_state(np.zeros_like(a), np.zeros_like(a))
    assert float(metric.result()) == pytest.approx(1.0)  # nothing to find, nothing found


def test_multi_class_dice_uses_class_indices():
    labels = np.zeros((1, 8, 8, 1), "float32")
    labels[0, :4] = 1
    labels[0, 4:, :4] = 2
    perfect = keras.ops.one_hot(labels[..., 0].astype("int32"), 3).numpy()
    metric = Dice()
    metric.update_state(labels, perfect)
    assert float(metric.result()) == pytest.approx(1.0)
    swapped = perfect[..., [0, 2, 1]]
    metric.reset_state()
    metric.update_state(labels, swapped)
    assert float(metric.result()) == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_has_gradient():
    target = _square()
    logits = tf.Variable(np.random.default_rng(0).normal(size=target.shape).astype("float32"))
    for loss_fn in (DiceLoss(), DiceLoss(crossentropy_weight=1.0)):
        with tf.GradientTape() as tape:
            loss = loss_fn(target, tf.sigmoid(logits))
        grad = tape.gradient(loss, logits).numpy()
        assert np.abs(grad).max() > 0
        # Raising foreground logits lowers the loss: the gradient is negative inside the mask.
        assert grad[target > 0].mean() < 0 < grad[target == 0].mean()
    assert float(DiceLoss()(target, target)) == pytest.approx(0.0, abs=1e-6)


def test_a_few_steps_lower_the_loss():
    rng = np.random.default_rng(0)
    masks = np.concatenate([_square(32, *rng.integers(0, 20, 2), side=12) for _ in range(4)])
    images = np.repeat(masks, 3, axis=-1) * 0.8 + rng.uniform(0, 0.2, size=(4, 32, 32, 3))
    keras.utils.set_random_seed(0)
    unet = UNet(18, decoder_filters=TINY)
    # Eager: four steps cost less than tracing the train step (the compiled path is run end to end below).
    unet.compile(optimizer=keras.optimizers.Adam(1e-3), loss=DiceLoss(crossentropy_weight=1.0),
                 run_eagerly=True)
    history = unet.fit(images.astype("float32"), masks, batch_size=4, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.9 * losses[0], losses


# ----------------------------------------------------------------------------- seg_masks builder
@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    manual = write_seg_fixture(str(root / "manual"), num_images=12, size=48)
    data_dir = str(root / "data")
    builder = SegMasks(data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return manual, data_dir, builder


def test_builder_splits_and_masks(seg_data):
    _, _, builder = seg_data
    splits = builder.info.splits
    assert [splits[s].num_examples for s in ("train", "validation", "test")] == [8, 2, 2]
    names = {s: {ex["name"].numpy() for ex in builder.as_dataset(split=s)} for s in splits}
    assert not (names["train"] & names["test"]) and not (names["train"] & names["validation"])
    for ex in builder.as_dataset(split="train"):
        assert ex["image"].shape[:2] == ex["mask"].shape[:2]
        assert set(np.unique(ex["mask"].numpy())) == {0, 1}  # 0/255 stored as 0/1


def _build(manual, tmp_path):
    SegMasks(data_dir=str(tmp_path / "data")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))


def test_builder_errors_name_the_file(tmp_path):
    manual = tmp_path / "manual"
    write_seg_fixture(str(manual), num_images=4, size=32)
    (manual / "masks" / "case001.png").unlink()
    with pytest.raises(SegMasksError, match=r"case001\.jpg: no mask masks/case001\.png"):
        _build(manual, tmp_path)

    write_seg_fixture(str(manual), num_images=4, size=32)
    Image.new("L", (20, 32)).save(manual / "masks" / "case002.png")
    with pytest.raises(SegMasksError,
                       match=r"case002\.png: mask is 20x32 but its image case002\.png is 48x32"):
        _build(manual, tmp_path)

    write_seg_fixture(str(manual), num_images=4, size=32)
    (manual / "images" / "case003.jpg").write_bytes(b"not an image")
    with pytest.raises(SegMasksError, match=r"case003\.jpg: unreadable image"):
        _build(manual, tmp_path)

    with pytest.raises(DataError, match="nowhere does not exist"):
        _build(tmp_path / "nowhere", tmp_path)

    (manual / "masks").rename(tmp_path / "elsewhere")
    with pytest.raises(SegMasksError, match=r"manual/masks: folder not found"):
        _build(manual, tmp_path)


# ----------------------------------------------------------------------------- pipeline + training
def test_load_segmentation_keeps_image_and_mask_aligned(seg_data):
    _, data_dir, _ = seg_data
    ds = load_segmentation("train", data_dir, None, image_size=32, batch_size=4, training=True)
    for images, masks in ds.take(6):  # 24 draws: both flips happen with near certainty
        assert images.shape == (4, 32, 32, 3) and masks.shape == (4, 32, 32, 1)
        bright = images.numpy().mean(-1, keepdims=True) > 0.45
        agreement = (bright == (masks.numpy() > 0.5)).mean(axis=(1, 2, 3))
        assert agreement.min() > 0.93, agreement
    test = load_segmentation("test", data_dir, None, image_size=32, batch_size=4)
    assert sum(int(m.shape[0]) for _, m in test) == 2


def test_load_segmentation_needs_manual_dir_once(tmp_path):
    with pytest.raises(ValueError, match="pass manual_dir"):
        load_segmentation("train", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="nowhere: manual dir not found"):
        load_segmentation("train", str(tmp_path / "empty"), str(tmp_path / "nowhere"))


def test_train_segmentation_end_to_end(seg_data, tmp_path):
    manual, data_dir, _ = seg_data
    encoder = build_resnet(18)
    model_dir = str(tmp_path / "run")
    result = train_segmentation(data_dir=data_dir, manual_dir=manual, depth=18, image_size=32,
                                batch_size=4, steps=3, learning_rate=1e-3, encoder_checkpoint=encoder,
                                model_dir=model_dir, decoder_filters=TINY)
    assert 0.0 <= result["dice"] <= 1.0 and np.isfinite(result["loss"])
    assert result["pretrained_encoder"] and result["num_test_examples"] == 2
    assert json.load(open(os.path.join(model_dir, "result.json"))) == result

    # The run's checkpoint follows the contract: its encoder moves into a fresh U-Net.
    fresh, reference = UNet(18, decoder_filters=TINY), UNet(18, decoder_filters=TINY)
    load_pretrained_encoder(fresh, model_dir)
    tf.train.Checkpoint(model=reference).restore(tf.train.latest_checkpoint(model_dir)).expect_partial()
    for a, b in zip(fresh.encoder.get_weights(), reference.encoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.encoder.get_weights(), encoder.get_weights()))
    with pytest.raises(CheckpointError, match="directory holds no checkpoint"):
        load_pretrained_encoder(fresh, str(tmp_path))


def test_masks_beyond_num_classes_name_the_file(tmp_path, capsys):
    manual = tmp_path / "manual"
    write_seg_fixture(str(manual), num_images=4, size=32)
    mask = np.zeros((32, 48), np.uint8)
    mask[:8], mask[8:16] = 1, 2  # class indices 0..2, not 0/255
    Image.fromarray(mask).save(manual / "masks" / "case002.png")
    _build(manual, tmp_path)
    data_dir = str(tmp_path / "data")
    for num_classes in (1, 2):  # binary would merge classes 1 and 2; 2 classes would drop class 2
        with pytest.raises(DataError,
                           match=r"masks/case002\.png holds class 2, but num_classes=.*--num_classes=3"):
            check_mask_classes(data_dir, num_classes)
    check_mask_classes(data_dir, 3)
    assert segmentation.main(["--manual_dir", str(manual), "--data_dir", data_dir, "--model_dir",
                              str(tmp_path / "run"), "--image_size", "32", "--resnet_depth", "18"]) == 2
    captured = capsys.readouterr()
    assert "case002.png holds class 2" in captured.err and captured.err.count("\n") == 1
