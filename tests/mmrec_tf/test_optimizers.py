"""LazyAdam: touched rows only, and Adam's arithmetic on them."""

import numpy as np
import tensorflow as tf
import tf_keras

from mmrec_tf import optimizers


def _step(optimizer, table, rows, grads):
    gradient = tf.IndexedSlices(
        tf.constant(grads, tf.float32), tf.constant(rows), tf.constant(table.shape)
    )
    optimizer.apply_gradients([(gradient, table)])


def test_lazy_adam_updates_only_touched_rows():
    table = tf.Variable(np.ones((5, 2), np.float32))
    optimizer = optimizers.LazyAdam(learning_rate=0.1)
    _step(optimizer, table, [1, 3], [[1.0, -1.0], [2.0, 2.0]])
    _step(optimizer, table, [1], [[1.0, 1.0]])
    values = table.numpy()
    np.testing.assert_array_equal(values[[0, 2, 4]], 1.0)
    assert (values[[1, 3]] != 1.0).all()
    # row 3 was not touched by step 2: its moments did not decay either.
    m = optimizer._momentums[0].numpy()
    np.testing.assert_allclose(m[3], 0.1 * np.array([2.0, 2.0]), rtol=1e-6)


def test_first_step_matches_keras_adam_and_sums_repeated_rows():
    start = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    lazy, dense = tf.Variable(start), tf.Variable(start)
    rows, grads = [2, 0, 2], np.array([[1, 2, 3], [4, 5, 6], [1, 1, 1]], np.float32)
    _step(optimizers.LazyAdam(learning_rate=0.01), lazy, rows, grads)
    _step(tf_keras.optimizers.Adam(learning_rate=0.01), dense, rows, grads)
    np.testing.assert_allclose(lazy.numpy(), dense.numpy(), rtol=1e-5, atol=1e-6)


def test_dense_gradients_follow_keras_adam():
    start = np.arange(6, dtype=np.float32).reshape(2, 3)
    lazy, dense = tf.Variable(start), tf.Variable(start)
    a, b = optimizers.LazyAdam(learning_rate=0.05), tf_keras.optimizers.Adam(learning_rate=0.05)
    for _ in range(3):
        grad = tf.constant(np.ones((2, 3), np.float32))
        a.apply_gradients([(grad, lazy)])
        b.apply_gradients([(grad, dense)])
    np.testing.assert_allclose(lazy.numpy(), dense.numpy(), rtol=1e-6)
