"""Segmentation transfer: the `seg_masks` data through a U-Net with a (pretrained) ResNet encoder.

`train_segmentation` fine-tunes end to end with Dice + cross-entropy and reports test Dice, the
figure the transfer benchmarks compare; the input is `simclr_med.data.segmentation`.
"""
from __future__ import annotations

import json
import os
import sys

import keras
import tensorflow as tf

from simclr_med import io
from simclr_med.data.segmentation import check_mask_classes, load_segmentation, num_examples
from simclr_med.errors import ConfigError
from simclr_med.models.unet import DEFAULT_DECODER_FILTERS, Dice, DiceLoss, UNet, load_encoder_weights
from simclr_med.train import checkpoints


def load_pretrained_encoder(unet: UNet, source) -> None:
    """Initialise the U-Net's encoder from a keras encoder (or a model with an `encoder`), or from
    a path `checkpoints.load_encoder` accepts (run dir, checkpoint prefix, Keras weights file)."""
    if isinstance(source, keras.Model):
        load_encoder_weights(unet, source)
    else:
        checkpoints.load_encoder(unet.encoder, os.fspath(source))


def train_segmentation(
    *, data_dir: str, manual_dir: str | None = None, depth: int = 50, width_multiplier: int = 1,
    image_size: int = 224, batch_size: int = 8, steps: int = 1000, learning_rate: float = 1e-3,
    encoder_checkpoint=None, model_dir: str | None = None, num_classes: int = 1,
    decoder_filters=DEFAULT_DECODER_FILTERS, crossentropy_weight: float = 1.0, seed: int = 0,
    verbose: int = 0,
) -> dict:
    """Train a U-Net for `steps` steps (Adam) and return {"dice", "loss", ...} on the test split.

    `encoder_checkpoint`: None (random init), a keras encoder from `build_resnet`, a
    `.weights.h5` file, or a checkpoint (prefix or run dir) with the model's `encoder`. With
    `model_dir`, the final weights go to `model_dir/ckpt-<steps>` and the result to
    `model_dir/result.json`.
    """
    if image_size % 32:
        raise ConfigError(f"image_size={image_size} must be divisible by 32 for the U-Net")
    keras.utils.set_random_seed(seed)
    check_mask_classes(data_dir, num_classes, manual_dir)
    train_ds = load_segmentation("train", data_dir, manual_dir, image_size, batch_size, training=True,
                                 num_classes=num_classes, seed=seed)
    test_ds = load_segmentation("test", data_dir, None, image_size, batch_size, training=False,
                                num_classes=num_classes)
    unet = UNet(depth, width_multiplier, num_classes, decoder_filters=decoder_filters)
    if encoder_checkpoint is not None:
        load_pretrained_encoder(unet, encoder_checkpoint)
    # Variables created inside the first trace of the train step force a second trace, which
    # costs as much as the first; building the model and optimizer up front avoids it.
    unet(tf.zeros((1, image_size, image_size, 3)))
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build(unet.trainable_variables)
    unet.compile(optimizer=optimizer, loss=DiceLoss(crossentropy_weight), metrics=[Dice()])
    history = unet.fit(train_ds, steps_per_epoch=steps, epochs=1, verbose=verbose, shuffle=False)
    scores = unet.evaluate(test_ds, return_dict=True, verbose=verbose)
    result = {
        "dice": float(scores["dice"]),
        "loss": float(scores["loss"]),
        "train_loss": float(history.history["loss"][-1]),
        "steps": steps,
        "num_test_examples": num_examples("test", data_dir),
        "depth": depth,
        "width_multiplier": width_multiplier,
        "image_size": image_size,
        "pretrained_encoder": encoder_checkpoint is not None,
    }
    if model_dir:
        model_dir = io.run_path(model_dir)
        io.makedirs(model_dir)
        manager = tf.train.CheckpointManager(
            tf.train.Checkpoint(model=unet, optimizer=optimizer), model_dir, max_to_keep=1)
        manager.save(checkpoint_number=steps)
        io.write_json(os.path.join(model_dir, "result.json"), result)
    return result


def main(argv=None) -> int:
    """Command line: `python -m simclr_med.methods.segmentation --manual_dir M --data_dir D
    --model_dir R [--encoder_checkpoint RUN]`."""
    import argparse

    from simclr_med.errors import SimclrMedError, storage_errors

    p = argparse.ArgumentParser(
        description="U-Net with a ResNet encoder, Dice loss, on a seg_masks manual dir.")
    p.add_argument("--manual_dir", required=True, help="images/<name>.png|jpg and masks/<name>.png")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--model_dir", required=True)
    p.add_argument("--encoder_checkpoint", default=None,
                   help="pretraining run dir, checkpoint or Keras weights file")
    p.add_argument("--resnet_depth", type=int, default=50)
    p.add_argument("--width_multiplier", type=int, default=1)
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--train_steps", type=int, default=1000)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--num_classes", type=int, default=1,
                   help="1: binary (foreground vs background); else class indices")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        with storage_errors(args.model_dir):
            result = train_segmentation(
                data_dir=args.data_dir, manual_dir=args.manual_dir, depth=args.resnet_depth,
                width_multiplier=args.width_multiplier, image_size=args.image_size,
                batch_size=args.batch_size, steps=args.train_steps, learning_rate=args.learning_rate,
                encoder_checkpoint=args.encoder_checkpoint, model_dir=args.model_dir,
                num_classes=args.num_classes, seed=args.seed, verbose=1)
    except SimclrMedError as e:
        print(f"simclr-med: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
