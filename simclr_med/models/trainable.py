"""Keras models whose `train_step`/`test_step` carry the objectives.

`ContrastiveModel` (SimCLR and MICLe: both feed two views per example; MICLe's views simply
come from two different images of a case) and `Classifier` (fine-tuning, linear evaluation,
supervised baselines). Both expose `encoder` so checkpoints can move it between runs.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from simclr_med.models import losses


class _GuardedModel(keras.Model):
    """Shared step mechanics: loss scaling, gradient application, non-finite accounting.

    A step with a non-finite loss or gradient is counted in `nonfinite_steps` (and a non-finite
    loss kept out of the loss metrics), so the NaN guard callback can name the step while the
    logged curves stay readable.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_steps")
        # Set when non-finite steps are skipped: BatchNorm statistics change in the forward
        # pass, so a skipped step must also put them back.
        self.rollback_nonfinite = False

    def _snapshot(self):
        if not self.rollback_nonfinite:
            return None
        return [tf.identity(v) for v in self.non_trainable_variables]

    def _rollback_if_nonfinite(self, snapshot, finite):
        if snapshot is None:
            return
        for v, old in zip(self.non_trainable_variables, snapshot):
            v.assign(tf.where(finite, v, old))

    def _minimize(self, scaled_loss, tape):
        """Applies gradients of `optimizer.scale_loss(loss)` (computed inside the tape); True if all
        finite."""
        grads = tape.gradient(scaled_loss, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads if g is not None])

    def _step_finite(self, loss, grads_finite):
        """A training step is bad when its loss or its gradients are non-finite.

        The gradients matter as well: a NaN can vanish from the loss (oneDNN's fused BatchNorm + ReLU
        maps it to 0) and still reach the weights through BatchNorm's gradient. Under dynamic float16
        loss scaling, overflowing gradients are routine: the optimizer skips them and lowers the scale.
        """
        finite = tf.math.is_finite(loss)
        loss_scaled = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        overflow_expected = loss_scaled and not self.rollback_nonfinite
        return finite if overflow_expected else tf.logical_and(finite, grads_finite)

    def _count(self, finite):
        finite = tf.cast(finite, tf.float32)
        self.nonfinite_tracker.update_state(1.0 - finite)
        return finite


class ContrastiveModel(_GuardedModel):
    def __init__(self, encoder, projection_head, *, temperature=0.1, hidden_norm=True, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.projection_head = projection_head
        self.temperature = temperature
        self.hidden_norm = hidden_norm
        self.loss_tracker = keras.metrics.Mean(name="contrast_loss")
        self.acc_tracker = keras.metrics.Mean(name="contrast_acc")
        self.entropy_tracker = keras.metrics.Mean(name="contrast_entropy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker, self.entropy_tracker, self.nonfinite_tracker]

    def call(self, images, training=False):
        return self.projection_head(self.encoder(images, training=training), training=training)

    def _contrast(self, data, training):
        # Both views go through the network as one batch, so BatchNorm sees all 2N views.
        views = tf.concat([data["view1"], data["view2"]], axis=0)
        z1, z2 = tf.split(self(views, training=training), 2, axis=0)
        ctx = tf.distribute.get_replica_context()
        return losses.nt_xent(z1, z2, self.temperature, hidden_norm=self.hidden_norm, replica_context=ctx)

    def _track(self, out, finite):
        finite = self._count(finite)
        self.loss_tracker.update_state(tf.where(finite > 0, out.mean_loss, 0.0), sample_weight=finite)
        self.acc_tracker.update_state(out.accuracy)
        self.entropy_tracker.update_state(tf.where(finite > 0, out.entropy, 0.0), sample_weight=finite)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        snapshot = self._snapshot()
        with tf.GradientTape() as tape:
            out = self._contrast(data, training=True)
            scaled = self.optimizer.scale_loss(out.loss)
        finite = self._step_finite(out.loss, self._minimize(scaled, tape))
        self._rollback_if_nonfinite(snapshot, finite)
        return self._track(out, finite)

    def test_step(self, data):
        out = self._contrast(data, training=False)
        return self._track(out, tf.math.is_finite(out.loss))


class Classifier(_GuardedModel):
    """Encoder + one linear layer; multi-class (softmax) or multi-label (sigmoid, masked).

    With `freeze_encoder` (linear evaluation) the encoder runs in inference mode and gets no
    gradient, so its BatchNorm statistics stay those of pretraining.
    """

    def __init__(self, encoder, num_classes, *, multi_label=False, freeze_encoder=False, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.multi_label = multi_label
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.trainable = False
        self.head = keras.layers.Dense(num_classes, dtype="float32", name="classifier")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        if multi_label:
            self.quality = keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc")
        else:
            self.quality = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def build(self, input_shape):
        self.head.build((None, self.encoder.output_shape[-1]))
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.quality, self.nonfinite_tracker]

    def embed(self, images, training=False):
        return self.encoder(images, training=training and not self.freeze_encoder)

    def call(self, images, training=False):
        """Logits (float32 even under mixed precision)."""
        return self.head(tf.cast(self.embed(images, training), tf.float32))

    def probabilities(self, logits):
        return tf.sigmoid(logits) if self.multi_label else tf.nn.softmax(logits)

    def _loss(self, data, logits):
        """Mean loss over this replica's examples, divided by the replica count (grads are summed)."""
        if self.multi_label:
            mask = data["label_mask"]
            per_label = tf.nn.sigmoid_cross_entropy_with_logits(labels=data["labels"], logits=logits)
            per_example = tf.reduce_sum(per_label * mask, -1) / tf.maximum(tf.reduce_sum(mask, -1), 1.0)
        else:
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=data["label"], logits=logits)
        mean = tf.reduce_mean(per_example)
        return mean, mean / tf.distribute.get_strategy().num_replicas_in_sync

    def _track(self, data, logits, mean_loss, finite):
        finite = self._count(finite)
        self.loss_tracker.update_state(tf.where(finite > 0, mean_loss, 0.0), sample_weight=finite)
        if self.multi_label:
            self.quality.update_state(data["labels"], tf.sigmoid(logits), sample_weight=data["label_mask"])
        else:
            self.quality.update_state(data["label"], logits)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        snapshot = self._snapshot()
        with tf.GradientTape() as tape:
            logits = self(data["image"], training=True)
            mean_loss, replica_loss = self._loss(data, logits)
            scaled = self.optimizer.scale_loss(replica_loss)
        finite = self._step_finite(mean_loss, self._minimize(scaled, tape))
        self._rollback_if_nonfinite(snapshot, finite)
        return self._track(data, logits, mean_loss, finite)

    def test_step(self, data):
        logits = self(data["image"], training=False)
        mean_loss = self._loss(data, logits)[0]
        return self._track(data, logits, mean_loss, tf.math.is_finite(mean_loss))
