"""Samplers: negatives are untouched or supportive-only, gates, reproducibility."""

import numpy as np
import pytest

from mmrec_tf.pipelines import eval_candidates
from mmrec_tf.pipelines import negatives
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits
from mmrec_tf.pipelines import training_index


def _split(num_users=30, num_items=40, seed=0):
    rng = np.random.default_rng(seed)
    users, items, branches = [], [], []
    for u in range(num_users):
        touched = rng.choice(num_items, 12, replace=False)
        for k, i in enumerate(touched):
            # items 0-3 of the draw are bought, 2-7 carted, 6-9 faved
            for b, (lo, hi) in enumerate(((0, 4), (2, 8), (6, 10))):
                if lo <= k < hi:
                    users.append(u), items.append(i), branches.append(b)
    return training_split(
        users,
        items,
        branches,
        num_users=num_users,
        num_items=num_items,
        behaviors=schema.BehaviorSchema("buy", ("cart", "fav")),
    )


def training_split(users, items, branches, *, num_users, num_items, behaviors):
    """A Split of these training records alone (no validation or test case)."""
    users = np.asarray(users, np.int32)
    items = np.asarray(items, np.int32)
    empty = np.zeros(0, np.int32)
    return splits.Split(
        train_users=users,
        train_items=items,
        train_branches=np.asarray(branches, np.int8),
        valid_users=empty,
        valid_items=empty,
        test_users=empty,
        test_items=empty,
        all_pair_keys=np.unique(splits.pair_keys(users, items, num_items)),
        num_users=num_users,
        num_items=num_items,
        behaviors=behaviors,
        info={"records": len(users)},
    )


def _sets(split):
    keys = splits.pair_keys(split.train_users, split.train_items, split.num_items)
    touched = set(keys.tolist())
    bought = set(keys[split.train_branches == 0].tolist())
    return touched, bought


def test_uniform_negatives_are_never_touched_items():
    split = _split()
    index = training_index.TrainingIndex.from_split(split)
    examples = negatives.sample_epoch(index, num_negatives=4, supportive_ratio=0.0, seed=1, epoch=0)
    touched, _ = _sets(split)
    keys = examples[schema.USER][:, None].astype(np.int64) * 40 + examples[schema.NEG_ITEM]
    assert not set(keys.ravel().tolist()) & touched
    assert not examples[schema.NEG_GATE].any()


def test_supportive_negatives_are_supportive_only_items():
    split = _split()
    index = training_index.TrainingIndex.from_split(split)
    examples = negatives.sample_epoch(index, num_negatives=4, supportive_ratio=1.0, seed=1, epoch=0)
    touched, bought = _sets(split)
    keys = examples[schema.USER][:, None].astype(np.int64) * 40 + examples[schema.NEG_ITEM]
    keys = set(keys.ravel().tolist())
    assert keys <= touched - bought  # touched, never bought
    gates = examples[schema.NEG_GATE]
    assert not gates[..., 0].any() and gates[..., 1:].max(axis=-1).all()


def test_mixed_ratio_draws_both_kinds():
    split = _split()
    index = training_index.TrainingIndex.from_split(split)
    examples = negatives.sample_epoch(
        index, num_negatives=20, supportive_ratio=0.5, seed=1, epoch=0
    )
    supportive = examples[schema.NEG_GATE][..., 1:].max(axis=-1).mean()
    assert 0.4 < supportive < 0.6


def test_users_without_supportive_only_items_fall_back_to_uniform():
    split = _split()
    only_buys = split.train_branches == 0
    split.train_users, split.train_items, split.train_branches = (
        split.train_users[only_buys],
        split.train_items[only_buys],
        split.train_branches[only_buys],
    )
    index = training_index.TrainingIndex.from_split(split)
    examples = negatives.sample_epoch(index, num_negatives=3, supportive_ratio=1.0, seed=0, epoch=0)
    touched, _ = _sets(split)
    keys = examples[schema.USER][:, None].astype(np.int64) * 40 + examples[schema.NEG_ITEM]
    assert not set(keys.ravel().tolist()) & touched


def test_gates_mark_each_behavior_of_the_pair():
    split = _split()
    index = training_index.TrainingIndex.from_split(split)
    keys = splits.pair_keys(split.train_users, split.train_items, split.num_items)
    for user, item in [(split.train_users[k], split.train_items[k]) for k in range(0, 60, 7)]:
        expected = [
            float(((keys == user * 40 + item) & (split.train_branches == b)).any())
            for b in range(3)
        ]
        np.testing.assert_array_equal(index.gates(np.array([user]), np.array([item]))[0], expected)


def test_epochs_are_fresh_and_reproducible():
    index = training_index.TrainingIndex.from_split(_split())

    def draw(epoch):
        return negatives.sample_epoch(
            index,
            num_negatives=3,
            supportive_ratio=0.5,
            seed=7,
            epoch=epoch,
        )

    a, b, c = draw(0), draw(0), draw(1)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a[schema.NEG_ITEM], c[schema.NEG_ITEM])


def test_sampled_candidates_are_distinct_and_never_interacted():
    split = _split()
    users = np.arange(30, dtype=np.int32)
    held_out = np.full(30, 39, np.int32)
    candidates = eval_candidates.sampled_candidates(
        users, held_out, split.all_pair_keys, 40, num_negatives=20, seed=0
    )
    assert candidates.shape == (30, 21) and (candidates[:, 0] == 39).all()
    for row, user in zip(candidates, users):
        assert len(set(row[1:].tolist())) == 20
        assert not np.isin(user * 40 + row[1:], split.all_pair_keys).any()


def test_too_few_untouched_items_raises_naming_the_users():
    split = _split()
    with pytest.raises(ValueError, match="touched \\(nearly\\) every one"):
        eval_candidates.sampled_candidates(
            np.arange(3, dtype=np.int32),
            np.zeros(3, np.int32),
            split.all_pair_keys,
            40,
            num_negatives=35,
            seed=0,
        )


def test_supportive_positives_are_weighted_and_take_uniform_negatives():
    split = _split()
    index = training_index.TrainingIndex.from_split(split)
    plain = negatives.sample_epoch(index, num_negatives=2, supportive_ratio=1.0, seed=0, epoch=0)
    mixed = negatives.sample_epoch(
        index,
        num_negatives=2,
        supportive_ratio=1.0,
        seed=0,
        epoch=0,
        supportive_positive_weight=0.25,
    )
    touched, bought = _sets(split)
    assert (plain[schema.POS_WEIGHT] == 1.0).all()
    extra = mixed[schema.POS_WEIGHT] == 0.25
    assert (
        extra.sum()
        == len(touched - bought)
        == training_index.num_positives(index, 0.25) - len(plain[schema.USER])
    )
    keys = mixed[schema.USER].astype(np.int64) * 40 + mixed[schema.POS_ITEM]
    assert set(keys[extra].tolist()) == touched - bought
    assert not mixed[schema.POS_GATE][extra, 0].any()
    # negatives of supportive positives are uniform (never touched)
    neg_keys = mixed[schema.USER][extra, None].astype(np.int64) * 40 + mixed[schema.NEG_ITEM][extra]
    assert not set(neg_keys.ravel().tolist()) & touched


def test_find_in_rows_agrees_with_a_search_over_every_key():
    rng = np.random.default_rng(3)
    for _ in range(200):
        num_users, num_items = int(rng.integers(1, 12)), int(rng.integers(1, 25))
        keys = np.unique(rng.integers(0, num_users * num_items, rng.integers(0, 80)))
        offsets = training_index.row_offsets(keys, num_users, num_items)
        users = rng.integers(0, num_users, (6, 4))
        query = users * num_items + rng.integers(0, num_items, (6, 4))
        position, found = training_index.find_in_rows(keys, offsets, users, query)
        np.testing.assert_array_equal(found, training_index.contains(keys, query))
        np.testing.assert_array_equal(keys[position[found]], query[found])
