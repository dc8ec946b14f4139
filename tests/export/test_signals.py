"""The graph signals inside the SavedModel: the evaluation's numbers, and a new user's."""

import numpy as np
import tensorflow as tf

from mmrec_tf.export import signals as signals_lib
from mmrec_tf.pipelines import graph_signals
from tests.pipelines import test_graph_signals
from tests.pipelines import test_samplers


def _none():
    return (tf.zeros([0], tf.int32),) * 3


def test_a_known_user_without_events_gets_the_evaluations_signals():
    split = test_samplers._split(num_users=20, num_items=25, seed=3)
    signals = graph_signals.GraphSignals(split)
    tables = signals_lib.SignalTables(signals)
    users = np.array([0, 7, 19, 3], np.int32)
    candidates = np.tile(np.arange(25, dtype=np.int32), (4, 1))
    got = tables.grid(tf.constant(users), tf.constant(candidates), *_none()).numpy()
    want = signals.grid(users, np.arange(25))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert want[..., 2:].max() > 0 and want[..., :2].max() > 0
    # Per-row candidates, padding included.
    rows = np.array([[3, 1, -1], [24, 0, 5], [2, 2, 2], [-1, -1, 9]], np.int32)
    got = tables.grid(tf.constant(users), tf.constant(rows), *_none()).numpy()
    for r in range(len(users)):
        for w, i in enumerate(rows[r]):
            if i < 0:
                assert not got[r, w].any()
            else:
                np.testing.assert_allclose(got[r, w], want[r, i], rtol=2e-5, atol=1e-6)


def test_a_new_users_signals_come_from_the_requests_events():
    split = test_samplers._split(num_users=20, num_items=25, seed=4)
    signals = graph_signals.GraphSignals(split)
    tables = signals_lib.SignalTables(signals)
    # Row 0: a new user who carted 3, 8 and 11 (8 twice) and bought 8; row 1: nothing.
    rows = tf.constant([0, 0, 0, 0, 0], tf.int32)
    items = tf.constant([3, 8, 11, 8, 8], tf.int32)
    branches = tf.constant([1, 1, 1, 1, 0], tf.int32)
    candidates = np.tile(np.arange(25, dtype=np.int32), (2, 1))
    got = tables.grid(tf.constant([-1, -1]), tf.constant(candidates), rows, items, branches)
    got = got.numpy()
    np.testing.assert_allclose(got[0, [3, 8, 11], 0], np.log1p([1, 2, 1]), rtol=1e-6)
    assert not got[0, :, 1].any()  # no fav events
    assert not got[1].any()  # no events, no node: nothing
    for i in range(25):
        for branch, history in ((0, [8]), (1, [3, 8, 11])):
            want = (
                test_graph_signals.reference_reach(split, branch, history, i)
                * signals.reach_scale[branch]
            )
            np.testing.assert_allclose(got[0, i, 2 + branch], want, rtol=2e-5, atol=1e-6)
        want = test_graph_signals.reference_cross(split, 1, [3, 8, 11], i) * signals.reach_scale[3]
        np.testing.assert_allclose(got[0, i, 5], want, rtol=2e-5, atol=1e-6)
    assert got[0, :, 5].max() > 0
    # A known user's events join their training history.
    keep = (split.train_users == 5) & (split.train_branches == 1)
    carts = list(split.train_items[keep])
    got = tables.grid(
        tf.constant([5]),
        tf.constant(candidates[:1]),
        rows[:1],
        tf.constant([0], tf.int32),
        tf.constant([1], tf.int32),
    ).numpy()
    for i in range(25):
        want = (
            test_graph_signals.reference_reach(split, 1, carts + [0], i, user=5)
            * signals.reach_scale[1]
        )
        np.testing.assert_allclose(got[0, i, 3], want, rtol=2e-5, atol=1e-6)


def test_the_walk_in_small_chunks_gives_the_same_signals(monkeypatch):
    # Each step of the walk gathers at most CHUNK_EDGES edges at a time (a
    # node with more is a chunk alone); the signals must not depend on it.
    split = test_samplers._split(num_users=20, num_items=25, seed=5)
    signals = graph_signals.GraphSignals(split)
    tables = signals_lib.SignalTables(signals)
    users = tf.constant([0, 4, 11, -1], tf.int32)
    candidates = tf.constant(np.tile(np.arange(25, dtype=np.int32), (4, 1)))
    events = (
        tf.constant([3, 3, 0], tf.int32),
        tf.constant([2, 9, 9], tf.int32),
        tf.constant([1, 0, 1], tf.int32),
    )
    whole = tables.grid(users, candidates, *events).numpy()
    monkeypatch.setattr(signals_lib, "CHUNK_EDGES", 2)
    chunked = tables.grid(users, candidates, *events).numpy()
    np.testing.assert_allclose(chunked, whole, rtol=1e-6, atol=1e-7)
    assert whole[3, :, 2:].max() > 0  # the new user's events reach items


def test_every_items_reach_equals_the_reach_at_candidates():
    # `recommend` ranks the whole catalog by reach (candidates=None: the
    # histories scattered, no search per item); a grid reads candidates.
    split = test_samplers._split(num_users=20, num_items=25, seed=6)
    tables = signals_lib.SignalTables(graph_signals.GraphSignals(split))
    users = tf.constant([1, 9, -1], tf.int32)
    events = (tf.constant([2, 2], tf.int32), tf.constant([4, 7], tf.int32), tf.constant([1, 1]))
    histories = tables.histories(users, *events)
    every = tf.constant(np.tile(np.arange(25, dtype=np.int32), (3, 1)))
    for b, (k, _) in enumerate(histories):
        whole = tables.reach(b, users, k).numpy()
        np.testing.assert_allclose(whole, tables.reach(b, users, k, every).numpy(), rtol=1e-6)
        assert whole.max() > 0
        if b > 0:
            whole = tables.cross(b, users, k).numpy()
            np.testing.assert_allclose(whole, tables.cross(b, users, k, every).numpy(), rtol=1e-6)
