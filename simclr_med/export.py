"""SavedModel export with a `serving_default` signature for TF Serving.

The signature takes a batch of uint8 RGB images of any size, applies the same
evaluation preprocessing as training-time evaluation, and returns class probabilities and the
encoder embedding. It is a plain TF2 SavedModel, so the TF1-style loader of TF Serving and
`saved_model_cli run` execute it.
"""
from __future__ import annotations

import os
import shutil

import tensorflow as tf

from simclr_med import augment


class _Serving(tf.Module):
    def __init__(self, model, image_size: int, with_head: bool):
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.with_head = with_head

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        x = tf.map_fn(lambda im: augment.augment_views(im, "none", self.image_size, [0, 0])[0], images,
                      fn_output_signature=tf.float32)
        if self.with_head:
            embedding = tf.cast(self.model.embed(x, training=False), tf.float32)
            logits = self.model.head(embedding)
            return {"probabilities": self.model.probabilities(logits), "embedding": embedding}
        return {"embedding": tf.cast(self.model.encoder(x, training=False), tf.float32)}


def export_saved_model(model, export_root: str, *, step: int, image_size: int) -> str:
    """Writes `export_root/<step>/` atomically (temporary directory, then rename)."""
    final = os.path.join(export_root, str(step))
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    module = _Serving(model, image_size, with_head=hasattr(model, "head"))
    tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final
