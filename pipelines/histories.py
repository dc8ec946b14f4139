"""Per-behavior user histories: the items each user touched in training.

A model with `history_length > 0` adds to each user vector the mean embedding
of the user's history items of that part's behavior. Histories come from the
training split only, so no held-out interaction leaks into them.
"""

from __future__ import annotations

import numpy as np

from mmrec_tf.pipelines import splits as splits_lib


def build(split: splits_lib.Split, *, length: int, seed: int) -> dict[str, np.ndarray]:
    """Up to `length` distinct training items per user and behavior.

    Users with more items keep a random subset drawn with `seed`.

    Args:
      split: the split (training records are used).
      length: items kept per user and behavior.
      seed: seed of the subset draw.

    Returns:
      behavior name -> [num_users, length] int32 item indices, -1 padded.
    """
    rng = np.random.default_rng(seed)
    result = {}
    for branch, name in enumerate(split.behaviors.behaviors):
        mask = split.train_branches == branch
        keys = np.unique(
            splits_lib.pair_keys(split.train_users[mask], split.train_items[mask], split.num_items)
        )
        users = keys // split.num_items
        order = np.lexsort((rng.random(len(keys)), users))
        users, items = users[order], (keys % split.num_items)[order]
        starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
        rank = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
        keep = rank < length
        table = np.full((split.num_users, length), -1, np.int32)
        table[users[keep], rank[keep]] = items[keep]
        result[name] = table
    return result
