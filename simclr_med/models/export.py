"""SavedModel export with a `serving_default` signature for TF Serving.

The signature takes a batch of uint8 RGB images of any size, applies the same evaluation
preprocessing as training-time evaluation, and returns class probabilities and the encoder
embedding (the embedding alone for a pretraining run). `keras.export.ExportArchive` tracks every
Keras 3 variable explicitly, which the TF1-style loader of TF Serving (and `saved_model_cli
run`) needs to find them. Images are uint8, what clients send: 16-bit sources lose their low
bits, which evaluation (full-precision decoding) keeps.
"""
from __future__ import annotations

import os

import keras
import tensorflow as tf

from simclr_med import io
from simclr_med.data import augment


def _serving_fn(model, image_size: int):
    def preprocess(images):
        return tf.map_fn(lambda im: augment.augment_views(im, "none", image_size, [0, 0])[0], images,
                         fn_output_signature=tf.float32)

    if hasattr(model, "head"):
        def serve(images):
            embedding = tf.cast(model.embed(preprocess(images), training=False), tf.float32)
            return {"probabilities": model.probabilities(model.head(embedding)), "embedding": embedding}
    else:
        def serve(images):
            return {"embedding": tf.cast(model.encoder(preprocess(images), training=False), tf.float32)}
    return serve


def export_saved_model(model, export_root: str, *, step: int, image_size: int) -> str:
    """Writes `export_root/<step>/`, which TF Serving never sees half-written (`io.publish_dir`:
    locally a temporary folder renamed into place; in a bucket saved_model.pb marks it complete).
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", _serving_fn(model, image_size),
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    return io.publish_dir(os.path.join(export_root, str(step)),
                          lambda folder: archive.write_out(folder, verbose=False))
