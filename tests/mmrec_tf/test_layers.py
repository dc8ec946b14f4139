"""Layers: serialization round trips and the gradient gate."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmrec_tf import layers

LAYERS = [
    ("mf", lambda: layers.MatrixFactorization(7, 9, 4, init_stddev=0.1, l2=0.01)),
    ("tower", lambda: layers.FeedbackTower(7, 9, 4, num_layers=3, init_stddev=0.1)),
    ("tower_no_layers", lambda: layers.FeedbackTower(7, 9, 4, num_layers=0)),
]


@pytest.mark.parametrize("name,make", LAYERS, ids=[n for n, _ in LAYERS])
def test_embedding_layers_round_trip_through_config(name, make):
    layer = make()
    user, item = tf.constant([0, 6]), tf.constant([8, 1])
    out = layer((user, item))
    clone = type(layer).from_config(layer.get_config())
    clone((user, item))
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone((user, item)).numpy(), out.numpy())
    assert clone.get_config() == layer.get_config()


def test_tower_units_halve_to_the_embedding_size():
    assert layers.tower_units(4, 3) == [16, 8, 4]
    assert layers.FeedbackTower(3, 3, 4, num_layers=0).output_dim == 8


@pytest.mark.parametrize(
    "cls,kwargs",
    [
        (layers.Fusion, {"units": 3}),
        (layers.ScoreHead, {}),
        (layers.BranchScores, {"num_branches": 2}),
        (layers.GradientGate, {}),
    ],
)
def test_head_layers_are_registered_and_configurable(cls, kwargs):
    layer = cls(**kwargs)
    restored = tf_keras.layers.deserialize(tf_keras.layers.serialize(layer))
    assert type(restored) is cls and restored.get_config() == layer.get_config()


def test_gradient_gate_is_identity_forward_and_masks_gradient():
    x = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    mask = tf.constant([1.0, 0.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layers.GradientGate()((x, mask))
        loss = tf.reduce_sum(y * tf.constant([[5.0, 6.0], [7.0, 8.0]]))
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    # d loss / d x = weights * mask: row 0 passes, row 1 is stopped.
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [[5.0, 6.0], [0.0, 0.0]])


def test_a_tower_with_signals_scores_the_grid_as_its_pairs():
    tf_keras.utils.set_random_seed(0)
    tower = layers.FeedbackTower(5, 6, 3, num_layers=2, signal_columns=(1, 3), init_stddev=0.5)
    users, items = np.array([0, 2, 4], np.int32), np.array([1, 3, 5, 0], np.int32)
    signals = np.random.default_rng(0).random((3, 4, 4)).astype(np.float32)
    u = np.repeat(users, 4)
    i = np.tile(items, 3)
    pairs = tower((tf.constant(u), tf.constant(i), tf.constant(signals.reshape(12, 4)))).numpy()
    grid = tower.grid(tf.constant(users), tf.constant(items), tf.constant(signals)).numpy()
    np.testing.assert_allclose(grid.reshape(12, -1), pairs, rtol=1e-5, atol=1e-6)
    # Only its columns count: the others change nothing.
    other = signals.copy()
    other[..., [0, 2]] += 5.0
    again = tower.grid(tf.constant(users), tf.constant(items), tf.constant(other)).numpy()
    np.testing.assert_allclose(again, grid, rtol=1e-6)
    assert tower.get_config()["signal_columns"] == [1, 3]
    with pytest.raises(ValueError, match="takes graph signals"):
        tower.grid(tf.constant(users), tf.constant(items))
