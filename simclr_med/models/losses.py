"""NT-Xent, the SimCLR contrastive loss, with negatives gathered across replicas.

Each replica holds b anchors per view; the global batch is B = b·R. For an anchor z_i the
candidates are the 2B − 1 other projections of the global batch; its positive is the other
view of the same image. Every replica computes the loss of its *local* anchors against the
*global* candidates, divided by the global number of pairs B, so that summing gradients across
replicas (what Keras optimizers do) gives the gradient of the global loss.

The scale is that of SimCLR's code, which adds the mean losses of the two views: twice Eq. (1)'s
mean over 2N anchors. The paper's learning rates and weight decay were tuned at that scale, and
LARS does not forget it (the trust ratio sees g + wd·w; BatchNorm weights get the plain rate).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

_LARGE_NUM = 1e9


@dataclasses.dataclass
class ContrastiveOutput:
    loss: tf.Tensor  # this replica's share of the global loss (summed over replicas: the loss)
    mean_loss: tf.Tensor  # the same over this replica's pairs alone (for logging)
    accuracy: tf.Tensor  # fraction of local anchors whose positive scores highest
    entropy: tf.Tensor  # entropy of the softmax over the other view's candidates


def _gather(x: tf.Tensor, replica_context) -> tf.Tensor:
    """Concatenates `x` across replicas along axis 0 (identity on one replica)."""
    if replica_context is None or replica_context.num_replicas_in_sync == 1:
        return x
    return replica_context.all_gather(x, axis=0)


def nt_xent(
    z1: tf.Tensor,
    z2: tf.Tensor,
    temperature: float,
    *,
    hidden_norm: bool = True,
    replica_context=None,
) -> ContrastiveOutput:
    """NT-Xent over the 2N views, Eq. (1) of SimCLR, summed over both orderings of each pair and
    averaged over the N pairs.

    Args:
      z1, z2: [b, d] projections of the first and second view of the local batch.
      temperature: τ in exp(sim/τ).
      hidden_norm: cosine similarity (L2-normalise) rather than a raw dot product.
      replica_context: `tf.distribute.get_replica_context()` inside a replica, to gather
        negatives from every replica; None on a single device.
    """
    z1 = tf.cast(z1, tf.float32)
    z2 = tf.cast(z2, tf.float32)
    if hidden_norm:
        z1 = tf.math.l2_normalize(z1, axis=-1)
        z2 = tf.math.l2_normalize(z2, axis=-1)
    b = tf.shape(z1)[0]
    z1_all = _gather(z1, replica_context)
    z2_all = _gather(z2, replica_context)
    replica_id = 0 if replica_context is None else replica_context.replica_id_in_sync_group
    positives = tf.range(b) + tf.cast(replica_id, tf.int32) * b  # global index of each positive
    self_mask = tf.one_hot(positives, tf.shape(z1_all)[0])

    logits_aa = tf.matmul(z1, z1_all, transpose_b=True) / temperature - self_mask * _LARGE_NUM
    logits_bb = tf.matmul(z2, z2_all, transpose_b=True) / temperature - self_mask * _LARGE_NUM
    logits_ab = tf.matmul(z1, z2_all, transpose_b=True) / temperature
    logits_ba = tf.matmul(z2, z1_all, transpose_b=True) / temperature

    loss_a = tf.nn.sparse_softmax_cross_entropy_with_logits(positives, tf.concat([logits_ab, logits_aa], 1))
    loss_b = tf.nn.sparse_softmax_cross_entropy_with_logits(positives, tf.concat([logits_ba, logits_bb], 1))
    local_sum = tf.reduce_sum(loss_a) + tf.reduce_sum(loss_b)

    prob_ab = tf.nn.softmax(logits_ab, axis=-1)
    return ContrastiveOutput(
        loss=local_sum / tf.cast(tf.shape(z1_all)[0], tf.float32),
        mean_loss=local_sum / tf.cast(b, tf.float32),
        accuracy=tf.reduce_mean(
            tf.cast(tf.equal(tf.argmax(logits_ab, 1, output_type=tf.int32), positives), tf.float32)),
        entropy=-tf.reduce_mean(tf.reduce_sum(prob_ab * tf.math.log(prob_ab + 1e-8), axis=-1)),
    )
