"""Splits: leave-latest-out, given splits, validation carving."""

import numpy as np
import pytest

from mmrec_tf.pipelines import interactions
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits
from mmrec_tf.pipelines import vocabularies

BEHAVIORS = schema.BehaviorSchema("buy", ("cart",))


def _data(records, split_codes=None):
    """records: (user, item, branch, timestamp) tuples with raw ids = indices."""
    users, items, branches, stamps = (np.array(c) for c in zip(*records))
    n = len(users)
    return interactions.Interactions(
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        branches=branches.astype(np.int8),
        timestamps=stamps.astype(np.int64),
        splits=np.full(n, -1, np.int8) if split_codes is None else np.array(split_codes, np.int8),
        behaviors=BEHAVIORS,
        user_vocab=vocabularies.Vocabulary(np.arange(users.max() + 1).astype(str)),
        item_vocab=vocabularies.Vocabulary(np.arange(10).astype(str)),
        report=readers.DataReport(),
    )


def test_leave_latest_out_holds_out_each_users_latest_buy():
    data = _data(
        [
            (0, 1, 0, 10),
            (0, 2, 0, 30),
            (0, 3, 0, 20),
            (0, 2, 1, 5),
            (1, 4, 0, 10),
            (1, 5, 0, 11),
            (2, 6, 0, 10),
        ]
    )  # user 2 has one buy: training only
    split = splits.make_split(data, validation=False, seed=0)
    assert split.info["method"] == "leave_latest_out"
    assert list(zip(split.test_users, split.test_items)) == [(0, 2), (1, 5)]
    train = set(zip(split.train_users, split.train_items, split.train_branches))
    assert (0, 2, 0) not in train and (1, 5, 0) not in train
    assert (0, 2, 1) in train  # the cart of the held-out pair stays
    assert (2, 6, 0) in train


def test_given_split_is_honored():
    data = _data(
        [(0, 1, 0, -1), (0, 2, 0, -1), (0, 3, 1, -1), (1, 4, 0, -1), (1, 5, 0, -1)],
        split_codes=[0, 2, 0, 0, 1],
    )
    split = splits.make_split(data, validation=True, seed=0)
    assert list(zip(split.test_users, split.test_items)) == [(0, 2)]
    assert list(zip(split.valid_users, split.valid_items)) == [(1, 5)]
    assert split.info["validation"] == "given"
    assert sorted(zip(split.train_users, split.train_items)) == [(0, 1), (0, 3), (1, 4)]


def test_mixed_given_and_missing_split_raises():
    data = _data([(0, 1, 0, 1), (0, 2, 0, 2)], split_codes=[0, -1])
    with pytest.raises(readers.DataError, match="no split while others do"):
        splits.make_split(data, validation=False, seed=0)


def test_no_test_case_raises():
    with pytest.raises(readers.DataError, match="no test case"):
        splits.make_split(_data([(0, 1, 0, 1), (1, 1, 0, 1)]), validation=False, seed=0)


def test_validation_drops_supportive_records_to_match_test_overlap():
    # 40 users, buys at t=1,2,3 on items 1,2,3; every buy was also carted. The
    # test pair (item 3) keeps its cart in half of the users, so validation
    # pairs (item 2, always carted) must drop their cart with probability 0.5.
    records = []
    for u in range(400):
        for item in (1, 2, 3):
            records.append((u, item, 0, item))
            if item != 3 or u % 2 == 0:
                records.append((u, item, 1, 0))
    split = splits.make_split(_data(records), validation=True, seed=0)
    assert split.info["test_overlap_with_supportive"] == {"cart": 0.5}
    assert split.info["validation_supportive_drop_probability"] == {"cart": 0.5}
    assert set(split.valid_items.tolist()) == {2}
    train = splits.pair_keys(
        split.train_users[split.train_branches == 1],
        split.train_items[split.train_branches == 1],
        10,
    )
    valid = splits.pair_keys(split.valid_users, split.valid_items, 10)
    kept = np.isin(valid, train).mean()
    assert 0.4 < kept < 0.6
    # the validation buy itself is gone from training
    buys = splits.pair_keys(
        split.train_users[split.train_branches == 0],
        split.train_items[split.train_branches == 0],
        10,
    )
    assert not np.isin(valid, buys).any()


def test_ties_are_broken_by_the_seed_reproducibly():
    data = _data([(u, i, 0, 5) for u in range(50) for i in range(4)])
    a = splits.make_split(data, validation=False, seed=3)
    b = splits.make_split(data, validation=False, seed=3)
    np.testing.assert_array_equal(a.test_items, b.test_items)
    assert len(set(a.test_items.tolist())) > 1


def test_every_target_record_held_out_is_an_error_that_says_so():
    data = _data([(0, 1, 0, -1), (0, 2, 1, -1), (1, 4, 0, -1)], split_codes=[2, 0, 2])
    with pytest.raises(readers.DataError, match="no training record of the target behavior"):
        splits.make_split(data, validation=False, seed=0)
