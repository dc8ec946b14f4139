"""Losses against NumPy references."""

import numpy as np
import tensorflow as tf

from mmrec_tf import losses

POS = np.array([2.0, -1.0, 0.5], np.float32)
NEG = np.array([[1.0, 3.0], [-2.0, 0.0], [0.5, 0.5]], np.float32)


def _softplus(x):
    return np.log1p(np.exp(x))


def test_bpr_is_mean_negative_log_sigmoid_of_differences():
    # row 0: -log sigmoid(2-1) and -log sigmoid(2-3) -> (0.3133 + 1.3133) / 2
    expected = np.mean(-np.log(1 / (1 + np.exp(-(POS[:, None] - NEG)))), axis=1)
    np.testing.assert_allclose(
        losses.bpr(tf.constant(POS), tf.constant(NEG)).numpy(), expected, rtol=1e-6
    )
    assert abs(expected[0] - (0.31326 + 1.31326) / 2) < 1e-4


def test_log_loss_averages_positive_and_negatives():
    expected = (_softplus(-POS) + _softplus(NEG).sum(axis=1)) / 3
    np.testing.assert_allclose(
        losses.log_loss(tf.constant(POS), tf.constant(NEG)).numpy(), expected, rtol=1e-6
    )


def test_masked_branch_loss_ignores_gated_off_instances():
    logits = np.array([[[1.0, -1.0], [2.0, 0.0]]], np.float32)  # [1, 2 instances, 2 branches]
    labels = np.array([[1.0, 0.0]], np.float32)
    gates = np.array([[[1.0, 0.0], [1.0, 1.0]]], np.float32)
    # branch 0: mean(softplus(-1), softplus(2)); branch 1: mean(0, softplus(0))
    expected = np.mean([_softplus(-1.0), _softplus(2.0)]) + np.mean([0.0, _softplus(0.0)])
    got = losses.masked_branch_loss(tf.constant(logits), tf.constant(labels), tf.constant(gates))
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-6)
