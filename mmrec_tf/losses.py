"""Per-example ranking losses (reduce with `tf.nn.compute_average_loss`)."""

from __future__ import annotations

import tensorflow as tf


def bpr(pos_logits: tf.Tensor, neg_logits: tf.Tensor) -> tf.Tensor:
    """Pairwise BPR: mean over negatives of -log sigmoid(pos - neg).

    Args:
      pos_logits: [batch_size] logits of the positives.
      neg_logits: [batch_size, num_negatives] logits of their negatives.

    Returns:
      [batch_size] losses.
    """
    return tf.reduce_mean(tf.nn.softplus(neg_logits - pos_logits[:, None]), axis=-1)


def log_loss(pos_logits: tf.Tensor, neg_logits: tf.Tensor) -> tf.Tensor:
    """Pointwise log loss over the positive (label 1) and its negatives (label 0).

    Args:
      pos_logits: [batch_size].
      neg_logits: [batch_size, num_negatives].

    Returns:
      [batch_size] losses, averaged over the 1 + num_negatives instances.
    """
    total = tf.nn.softplus(-pos_logits) + tf.reduce_sum(tf.nn.softplus(neg_logits), axis=-1)
    return total / tf.cast(1 + tf.shape(neg_logits)[-1], total.dtype)


def masked_branch_loss(branch_logits: tf.Tensor, labels: tf.Tensor, gates: tf.Tensor) -> tf.Tensor:
    """Log loss of each supportive branch's score on the target label, masked by its gate.

    Args:
      branch_logits: [batch_size, k, S] logits of S supportive branch heads
        for k instances (positive and negatives) per example.
      labels: [batch_size, k] target labels (1 for the positive, 0 else).
      gates: [batch_size, k, S] gate masks of the supportive branches.

    Returns:
      [batch_size] losses: the sum over branches of the mean over instances
      of the gated log loss.
    """
    labels = tf.cast(labels, branch_logits.dtype)[..., None]
    per_instance = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.broadcast_to(labels, tf.shape(branch_logits)), logits=branch_logits
    )
    return tf.reduce_sum(tf.reduce_mean(per_instance * gates, axis=1), axis=-1)
