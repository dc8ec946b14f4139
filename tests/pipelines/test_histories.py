"""User histories: per behavior, training items only, capped, padded."""

import numpy as np

from mmrec_tf.pipelines import histories
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits


def _split():
    # user 0: buys 1, 2, 3, 4 and carts 5; user 1: carts 2; user 2: nothing.
    users = np.array([0, 0, 0, 0, 0, 1], np.int32)
    items = np.array([1, 2, 3, 4, 5, 2], np.int32)
    branches = np.array([0, 0, 0, 0, 1, 1], np.int8)
    empty = np.zeros(0, np.int32)
    return splits.Split(
        train_users=users,
        train_items=items,
        train_branches=branches,
        valid_users=empty,
        valid_items=empty,
        test_users=np.array([0], np.int32),
        test_items=np.array([7], np.int32),
        all_pair_keys=np.zeros(0, np.int64),
        num_users=3,
        num_items=8,
        behaviors=schema.BehaviorSchema("buy", ("cart",)),
        info={},
    )


def test_histories_hold_each_behaviors_training_items_padded_with_minus_one():
    result = histories.build(_split(), length=5, seed=0)
    assert sorted(result) == ["buy", "cart"]
    assert sorted(result["buy"][0][result["buy"][0] >= 0].tolist()) == [1, 2, 3, 4]
    assert (result["buy"][1:] == -1).all()
    assert result["cart"][0].tolist() == [5, -1, -1, -1, -1]
    assert result["cart"][1].tolist() == [2, -1, -1, -1, -1]
    assert 7 not in result["buy"]  # the held-out item never enters a history


def test_long_histories_keep_a_seeded_subset():
    a = histories.build(_split(), length=2, seed=3)["buy"][0]
    b = histories.build(_split(), length=2, seed=3)["buy"][0]
    assert a.tolist() == b.tolist() and set(a.tolist()) <= {1, 2, 3, 4} and len(set(a)) == 2
