"""The training pairs as a sorted index: keys, behavior bits, per-user rows.

`TrainingIndex` holds every training (user, item) pair once, keyed by
`user * num_items + item`, with the bitmask of the behaviors the training
data holds for it (bit t: branch t). Samplers, the softmax candidate sets,
the evaluators and the export look pairs up in it; the helpers below work on
any sorted key array.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmrec_tf.pipelines import splits as splits_lib


def contains(sorted_keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Elementwise membership of `query` in a sorted unique key array."""
    if len(sorted_keys) == 0:
        return np.zeros(np.shape(query), bool)
    pos = np.searchsorted(sorted_keys, query)
    np.minimum(pos, len(sorted_keys) - 1, out=pos)
    return sorted_keys[pos] == query


def row_offsets(sorted_keys: np.ndarray, num_users: int, num_items: int) -> np.ndarray:
    """[num_users + 1] offsets of each user's run in sorted pair keys."""
    counts = np.bincount(sorted_keys // num_items, minlength=num_users)
    offsets = np.zeros(num_users + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def find_in_rows(
    sorted_keys: np.ndarray, offsets: np.ndarray, users: np.ndarray, query: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and membership of pair keys, searching only each user's run.

    A vectorized binary search bounded by the user's own keys: a few cache
    lines per query instead of a search over every key, several times faster
    than `np.searchsorted` on millions of keys.

    Args:
      sorted_keys: sorted unique pair keys.
      offsets: `row_offsets` of `sorted_keys`.
      users: users of the queries (any shape).
      query: pair keys of the queries (the shape of `users`).

    Returns:
      (position, found): where each key is (valid where found) and whether it is.
    """
    lo = offsets[users]
    hi = offsets[users + 1]
    if len(sorted_keys) == 0:
        return lo, np.zeros(np.shape(query), bool)
    last = len(sorted_keys) - 1
    span = int((hi - lo).max()) if lo.size else 0
    for _ in range(span.bit_length()):  # lower bound within [lo, hi)
        active = lo < hi
        mid = (lo + hi) >> 1
        less = sorted_keys[np.minimum(mid, last)] < query
        lo = np.where(active & less, mid + 1, lo)
        hi = np.where(active & ~less, mid, hi)
    found = (lo < offsets[users + 1]) & (sorted_keys[np.minimum(lo, last)] == query)
    return lo, found


def run_positions(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, position) of every position in the runs [lo[r], hi[r]), run after run."""
    counts = hi - lo
    rows = np.repeat(np.arange(len(lo)), counts)
    positions = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, positions + np.repeat(lo, counts)


@dataclasses.dataclass
class TrainingIndex:
    """Per-pair behavior masks and per-user item sets of the training data.

    Attributes:
      keys: sorted unique pair keys of training interactions.
      offsets: [num_users + 1] `row_offsets` of `keys`.
      bits: [len(keys)] uint32 bitmask of the branches each pair has.
      pos_users: [p] int32 users of the target (positive) pairs.
      pos_items: [p] int32 items of the target pairs.
      supportive_indptr: [num_users + 1] CSR offsets into `supportive_items`.
      supportive_items: items each user touched only through supportive
        feedback.
      num_users: users.
      num_items: items.
      num_behaviors: branches.
      behaviors: the behavior names in branch order (target first).
    """

    keys: np.ndarray
    offsets: np.ndarray
    bits: np.ndarray
    pos_users: np.ndarray
    pos_items: np.ndarray
    supportive_indptr: np.ndarray
    supportive_items: np.ndarray
    num_users: int
    num_items: int
    num_behaviors: int
    behaviors: tuple[str, ...] = ()

    @classmethod
    def from_split(cls, split: splits_lib.Split) -> TrainingIndex:
        keys = splits_lib.pair_keys(split.train_users, split.train_items, split.num_items)
        unique, inverse = np.unique(keys, return_inverse=True)
        bits = np.zeros(len(unique), np.uint32)
        np.bitwise_or.at(bits, inverse, (np.uint32(1) << split.train_branches.astype(np.uint32)))
        is_pos = (bits & 1) == 1
        pos = unique[is_pos]
        support_only = unique[~is_pos]  # sorted, so grouped by user
        return cls(
            keys=unique,
            offsets=row_offsets(unique, split.num_users, split.num_items),
            bits=bits,
            pos_users=(pos // split.num_items).astype(np.int32),
            pos_items=(pos % split.num_items).astype(np.int32),
            supportive_indptr=row_offsets(support_only, split.num_users, split.num_items),
            supportive_items=(support_only % split.num_items).astype(np.int32),
            num_users=split.num_users,
            num_items=split.num_items,
            num_behaviors=split.behaviors.num_behaviors,
            behaviors=split.behaviors.behaviors,
        )

    def gates(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[..., num_behaviors] float32 gate masks of (user, item) pairs."""
        query = splits_lib.pair_keys(users, items, self.num_items)
        pos, found = find_in_rows(self.keys, self.offsets, users, query)
        bits = np.where(found, self.bits[np.minimum(pos, len(self.keys) - 1)], 0)
        return self._unpack(bits)

    def gate_grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items), num_behaviors] float32 gate masks of every pair."""
        rows, positions = run_positions(self.offsets[users], self.offsets[users + 1])
        dense = np.zeros((len(users), self.num_items), np.uint32)
        dense[rows, self.keys[positions] % self.num_items] = self.bits[positions]
        return self._unpack(dense[:, items])

    def _unpack(self, bits: np.ndarray) -> np.ndarray:
        """[..., num_behaviors] float32 0/1 flags of behavior bitmasks."""
        shifts = np.arange(self.num_behaviors, dtype=np.uint32)
        return ((bits[..., None] >> shifts) & 1).astype(np.float32)


def pair_weights(index: TrainingIndex, behavior_weights: np.ndarray) -> np.ndarray:
    """[len(index.keys)] float32 loss weight of each training pair.

    Args:
      index: the training index.
      behavior_weights: [num_behaviors] weight of each branch's behavior.

    Returns:
      The sum of the weights of the behaviors each pair has (graded
      positives: a pair bought and carted weighs buy + cart).
    """
    return index._unpack(index.bits) @ np.asarray(behavior_weights, np.float32)


def behavior_weight_vector(
    behaviors: tuple[str, ...], behavior_weights: tuple[tuple[str, float], ...]
) -> np.ndarray | None:
    """[len(behaviors)] weights in branch order from (behavior, weight) pairs; None if empty.

    Args:
      behaviors: the behavior names in branch order (target first).
      behavior_weights: (behavior, weight) pairs; behaviors left out weigh 0.

    Raises:
      ValueError: naming a behavior the data does not have.
    """
    if not behavior_weights:
        return None
    vector = np.zeros(len(behaviors), np.float32)
    for name, weight in behavior_weights:
        if name not in behaviors:
            raise ValueError(
                f"behavior_weights names {name!r}, which the training data does not have: "
                f"use some of {list(behaviors)} (e.g. --behavior_weights="
                f"{behaviors[0]}:1{''.join(f',{b}:0.5' for b in behaviors[1:])})."
            )
        vector[behaviors.index(name)] = weight
    if not (vector > 0).any():
        raise ValueError(f"behavior_weights={behavior_weights!r} gives no behavior a weight > 0.")
    return vector


def num_positives(
    index: TrainingIndex,
    supportive_positive_weight: float,
    behavior_weights: np.ndarray | None = None,
) -> int:
    """Positives per epoch: target pairs, plus supportive-only pairs when weighted.

    With `behavior_weights`, every pair of positive weight (`pair_weights`).
    """
    if behavior_weights is not None:
        return int((pair_weights(index, behavior_weights) > 0).sum())
    extra = len(index.supportive_items) if supportive_positive_weight > 0 else 0
    return len(index.pos_users) + extra


def pair_bits(index: TrainingIndex, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[len(users), len(items)] uint32 behavior bitmasks of every (user, item) pair.

    Walks each user's training pairs and finds their items among `items`
    (sorted once), so it costs the users' pair counts plus len(items), not
    len(users) x num_items: cheap for a batch against a shared candidate set.
    Repeated entries of `items` get the same bits.
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    grid = np.zeros((len(users), len(items)), np.uint32)
    rows, positions = run_positions(index.offsets[users], index.offsets[users + 1])
    if not len(positions):
        return grid
    touched = index.keys[positions] % index.num_items
    order = np.argsort(items, kind="stable")
    ordered = items[order]
    lo = np.searchsorted(ordered, touched, side="left")
    hi = np.searchsorted(ordered, touched, side="right")
    pair, column = run_positions(lo, hi)
    grid[rows[pair], order[column]] = index.bits[positions[pair]]
    return grid
