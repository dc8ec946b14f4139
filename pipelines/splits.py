"""Train / validation / test splits per the evaluation protocol.

- A given `split` column is honored.
- Otherwise each user's latest target interaction is held out for test (ties,
  and data without timestamps, broken by a fixed seed); users with a single
  target interaction stay in training only.
- A validation case is carved per test user from that user's training target
  interactions (latest, or drawn with the seed), unless the data ships a
  validation split. The held-out pair's supportive records are dropped with
  the probability that makes validation pairs overlap each supportive
  behavior as often as test pairs do, so validation looks like test.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmrec_tf.pipelines import interactions as interactions_lib
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import schema


@dataclasses.dataclass
class Split:
    """Training records and held-out evaluation cases.

    Attributes:
      train_users: [n] int32 user of each training record.
      train_items: [n] int32 item of each training record.
      train_branches: [n] int8 branch of each training record.
      valid_users: [v] int32 validation cases (may be empty).
      valid_items: [v] int32.
      test_users: [t] int32 test cases.
      test_items: [t] int32.
      all_pair_keys: sorted unique `user * num_items + item` over every
        interaction of every split and behavior (the sampled protocol never
        draws these as negatives).
      num_users: users in the vocabulary.
      num_items: items in the vocabulary.
      behaviors: the behavior schema.
      info: how the split was made, with counts.
    """

    train_users: np.ndarray
    train_items: np.ndarray
    train_branches: np.ndarray
    valid_users: np.ndarray
    valid_items: np.ndarray
    test_users: np.ndarray
    test_items: np.ndarray
    all_pair_keys: np.ndarray
    num_users: int
    num_items: int
    behaviors: schema.BehaviorSchema
    info: dict


def pair_keys(users: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    """[n] int64 keys that identify (user, item) pairs."""
    return users.astype(np.int64) * num_items + items.astype(np.int64)


def train_target_keys(split: Split) -> np.ndarray:
    """Sorted unique pair keys of the training target interactions (the users' purchases)."""
    target = split.train_branches == 0
    return np.unique(
        pair_keys(split.train_users[target], split.train_items[target], split.num_items)
    )


def train_pair_keys(split: Split) -> np.ndarray:
    """Sorted unique pair keys of every training interaction, any behavior."""
    return np.unique(pair_keys(split.train_users, split.train_items, split.num_items))


def _latest_per_user(
    keys: np.ndarray, stamps: np.ndarray, num_items: int, rng, *, min_pairs: int
) -> np.ndarray:
    """Picks each user's latest pair (random tie-break) among users with >= min_pairs pairs."""
    if len(keys) == 0:
        return keys
    users = keys // num_items
    tiebreak = rng.random(len(keys))
    order = np.lexsort((tiebreak, stamps, users))
    sorted_users = users[order]
    last = np.flatnonzero(np.r_[sorted_users[1:] != sorted_users[:-1], True])
    first = np.r_[0, last[:-1] + 1]
    enough = (last - first + 1) >= min_pairs
    return keys[order[last[enough]]]


def _target_pairs(keys: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique target pairs with the latest timestamp of each."""
    unique, inverse = np.unique(keys, return_inverse=True)
    latest = np.full(len(unique), -1, np.int64)
    np.maximum.at(latest, inverse, stamps)
    return unique, latest


def _overlap(
    keys: np.ndarray, train_keys: np.ndarray, train_branches: np.ndarray, num_behaviors: int
) -> np.ndarray:
    """Fraction of `keys` with training records of each supportive branch (index 0 unused)."""
    result = np.zeros(num_behaviors)
    if len(keys) == 0:
        return result
    for b in range(1, num_behaviors):
        result[b] = np.isin(keys, train_keys[train_branches == b]).mean()
    return result


def make_split(data: interactions_lib.Interactions, *, validation: bool, seed: int) -> Split:
    """Splits encoded interactions per the protocol.

    Args:
      data: the encoded interactions.
      validation: carve validation cases from training data when the data
        ships none.
      seed: seed for tie-breaks, random hold-outs and supportive drops.

    Returns:
      The Split.

    Raises:
      readers.DataError: if some records carry a split and others do not, or
        no user has a test case.
    """
    rng = np.random.default_rng(seed)
    n_items = data.num_items
    num_behaviors = data.behaviors.num_behaviors
    keys = pair_keys(data.users, data.items, n_items)
    is_target = data.branches == 0
    info: dict = {}
    given = data.splits != schema.SPLIT_NONE
    if given.any():
        if not given.all():
            raise readers.DataError(
                f"{int((~given).sum())} records have no split while others do; give every "
                "record a split (train, valid or test) or none at all."
            )
        info["method"] = "given"
        in_train = data.splits == schema.SPLIT_TRAIN
        test_keys = np.unique(keys[(data.splits == schema.SPLIT_TEST) & is_target])
        valid_keys = np.unique(keys[(data.splits == schema.SPLIT_VALID) & is_target])
        info["held_out_supportive_records_unused"] = int((~in_train & ~is_target).sum())
    else:
        has_time = bool((data.timestamps[is_target] >= 0).all())
        info["method"] = "leave_latest_out" if has_time else "leave_one_random_out"
        target_keys, latest = _target_pairs(keys[is_target], data.timestamps[is_target])
        stamps = latest if has_time else np.zeros_like(latest)
        test_keys = _latest_per_user(target_keys, stamps, n_items, rng, min_pairs=2)
        in_train = ~(is_target & np.isin(keys, test_keys))
        valid_keys = np.zeros(0, np.int64)
    if not (in_train & is_target).any():
        raise readers.DataError(
            f"no training record of the target behavior {data.behaviors.target!r}: every one "
            "is in the test or valid split. Give the split column train for the training "
            "records, or leave it empty everywhere to hold out each user's latest buy."
        )
    if len(test_keys) == 0:
        raise readers.DataError(
            "no test case: no user has two or more distinct target "
            "interactions (or a given test split). Add data, or check "
            "--target_behavior."
        )

    train_keys, train_branches = keys[in_train], data.branches[in_train]
    test_overlap = _overlap(test_keys, train_keys, train_branches, num_behaviors)
    info["test_overlap_with_supportive"] = {
        data.behaviors.behaviors[b]: round(float(test_overlap[b]), 4)
        for b in range(1, num_behaviors)
    }

    if validation and len(valid_keys) == 0:
        test_users = np.unique(test_keys // n_items)
        target_in_train = (train_branches == 0) & np.isin(train_keys // n_items, test_users)
        candidates, latest = _target_pairs(
            train_keys[target_in_train], data.timestamps[in_train][target_in_train]
        )
        stamps = latest if info["method"] == "leave_latest_out" else np.zeros_like(latest)
        valid_keys = _latest_per_user(candidates, stamps, n_items, rng, min_pairs=2)
        valid_overlap = _overlap(valid_keys, train_keys, train_branches, num_behaviors)
        drop = np.ones(len(train_keys), bool)
        drop &= ~((train_branches == 0) & np.isin(train_keys, valid_keys))
        drop_probability = {}
        for b in range(1, num_behaviors):
            p = 0.0 if valid_overlap[b] == 0 else max(0.0, 1 - test_overlap[b] / valid_overlap[b])
            drop_probability[data.behaviors.behaviors[b]] = round(float(p), 4)
            dropped_pairs = valid_keys[rng.random(len(valid_keys)) < p]
            drop &= ~((train_branches == b) & np.isin(train_keys, dropped_pairs))
        info["validation"] = "carved"
        info["validation_supportive_drop_probability"] = drop_probability
        info["validation_supportive_records_dropped"] = int((~drop & (train_branches != 0)).sum())
        train_index = np.flatnonzero(in_train)[drop]
    else:
        info["validation"] = "given" if len(valid_keys) else "none"
        train_index = np.flatnonzero(in_train)

    train_users = data.users[train_index]
    train_items = data.items[train_index]
    train_branches = data.branches[train_index]
    info.update(
        train_records=int(len(train_index)),
        valid_cases=int(len(valid_keys)),
        test_cases=int(len(test_keys)),
    )
    return Split(
        train_users=train_users,
        train_items=train_items,
        train_branches=train_branches,
        valid_users=(valid_keys // n_items).astype(np.int32),
        valid_items=(valid_keys % n_items).astype(np.int32),
        test_users=(test_keys // n_items).astype(np.int32),
        test_items=(test_keys % n_items).astype(np.int32),
        all_pair_keys=np.unique(keys),
        num_users=data.num_users,
        num_items=n_items,
        behaviors=data.behaviors,
        info=info,
    )
