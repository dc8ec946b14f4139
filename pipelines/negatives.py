"""Training examples: each epoch's positives and their negatives.

Training negatives are drawn fresh each epoch: the positives' order comes
from a generator seeded by (seed, epoch) and each chunk of them draws its
negatives from one seeded by (seed, epoch, shard, chunk), so a resumed run
draws what an uninterrupted one would. A fraction `supportive_ratio` of the
negatives comes from the items the user touched only through supportive
feedback (the paper's sampler; users with none fall back to uniform), the
rest uniformly from items the user never touched. Every example carries its
gate mask: which behaviors the training data holds for its (user, item).
The softmax loss instead shares one candidate set per batch
(`SharedNegatives`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

# Redraws of a touched negative before the sampler gives up on its user.
MAX_REDRAWS = 200


def uniform_untouched(
    users: np.ndarray,
    exclude_keys: np.ndarray,
    num_items: int,
    rng: np.random.Generator,
    *,
    distinct_rows: bool = False,
    exclude_offsets: np.ndarray | None = None,
) -> np.ndarray:
    """Items drawn uniformly among those each user never touched.

    Args:
      users: [n] or [n, k] users, one draw per entry.
      exclude_keys: sorted unique pair keys that must not be drawn.
      num_items: catalog size.
      rng: the generator.
      distinct_rows: for 2-D `users`, also make each row's items distinct.
      exclude_offsets: `row_offsets` of `exclude_keys`, for a faster lookup.

    Returns:
      Items with the shape of `users`.

    Raises:
      ValueError: if some user has touched (nearly) every item.
    """
    users = users.astype(np.int64)
    items = rng.integers(0, num_items, size=users.shape, dtype=np.int64)
    for _ in range(MAX_REDRAWS):
        query = users * num_items + items
        if exclude_offsets is None:
            bad = training_index.contains(exclude_keys, query)
        else:
            bad = training_index.find_in_rows(exclude_keys, exclude_offsets, users, query)[1]
        if distinct_rows and items.ndim == 2:
            order = np.argsort(items, axis=1, kind="stable")
            sorted_items = np.take_along_axis(items, order, axis=1)
            repeat = np.zeros_like(bad)
            repeat_sorted = np.zeros(items.shape, bool)
            repeat_sorted[:, 1:] = sorted_items[:, 1:] == sorted_items[:, :-1]
            np.put_along_axis(repeat, order, repeat_sorted, axis=1)
            bad |= repeat
        if not bad.any():
            return items.astype(np.int32)
        items[bad] = rng.integers(0, num_items, size=int(bad.sum()))
    stuck = np.unique(users[bad])[:10]
    raise ValueError(
        f"users {stuck.tolist()} have touched (nearly) every one of the "
        f"{num_items} items, so no untouched item can be drawn for them. Remove "
        "such users, or lower the number of negatives."
    )


# Positives per independently drawn chunk of an epoch (rounded to whole
# batches by the input pipeline): small enough that drawing the next chunk
# overlaps training on the current one, large enough to keep numpy efficient.
CHUNK_EXAMPLES = 65536


@dataclasses.dataclass
class EpochPositives:
    """One epoch's positives in training order.

    Attributes:
      users: [p] int32 users.
      items: [p] int32 positive items.
      weights: [p] float32 loss weights.
      is_target: [p] bool, True for target-behavior positives.
    """

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    is_target: np.ndarray

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, key) -> EpochPositives:
        return EpochPositives(
            self.users[key], self.items[key], self.weights[key], self.is_target[key]
        )


def epoch_positives(
    index: training_index.TrainingIndex,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    supportive_positive_weight: float = 0.0,
    behavior_weights: np.ndarray | None = None,
) -> EpochPositives:
    """Every positive of an epoch, in an order drawn from (seed, epoch).

    Args:
      index: the training index.
      seed: the run's seed.
      epoch: the epoch number.
      shuffle: shuffle the positives.
      supportive_positive_weight: when > 0, the pairs a user touched only
        through supportive feedback are positives too, with this loss
        weight and uniform negatives (an extension; 0 is the paper).
      behavior_weights: graded positives: [num_behaviors] weights; every
        pair of positive `pair_weights` is a positive with that weight
        (replaces `supportive_positive_weight`).
    """
    rng = np.random.default_rng([seed, epoch])
    users, items = index.pos_users, index.pos_items
    weights = np.ones(len(users), np.float32)
    is_target = np.ones(len(users), bool)
    if behavior_weights is not None:
        all_weights = training_index.pair_weights(index, behavior_weights)
        keep = all_weights > 0
        users = (index.keys[keep] // index.num_items).astype(np.int32)
        items = (index.keys[keep] % index.num_items).astype(np.int32)
        weights = all_weights[keep]
        is_target = (index.bits[keep] & 1) == 1
    elif supportive_positive_weight > 0:
        counts = np.diff(index.supportive_indptr)
        users = np.concatenate([users, np.repeat(np.arange(index.num_users), counts)])
        items = np.concatenate([items, index.supportive_items])
        extra = np.full(int(counts.sum()), supportive_positive_weight, np.float32)
        weights = np.concatenate([weights, extra])
        is_target = np.concatenate([is_target, np.zeros(len(extra), bool)])
    order = rng.permutation(len(users)) if shuffle else np.arange(len(users))
    return EpochPositives(
        users[order].astype(np.int32),
        items[order].astype(np.int32),
        weights[order],
        is_target[order],
    )


def draw_examples(
    index: training_index.TrainingIndex,
    positives: EpochPositives,
    *,
    num_negatives: int,
    supportive_ratio: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Training examples of `positives`: fresh negatives and gate masks.

    Args:
      index: the training index.
      positives: the positives of a chunk.
      num_negatives: negatives per positive.
      supportive_ratio: probability that a target positive's negative is
        drawn from the user's supportive-only items (when the user has any).
      rng: the chunk's generator.

    Returns:
      A dict with schema.USER [p], POS_ITEM [p], POS_GATE [p, T],
      POS_WEIGHT [p], NEG_ITEM [p, N] and NEG_GATE [p, N, T].
    """
    users = positives.users
    shape = (len(users), num_negatives)
    user_grid = np.broadcast_to(users[:, None], shape)
    negatives = uniform_untouched(
        user_grid, index.keys, index.num_items, rng, exclude_offsets=index.offsets
    )
    # Uniform negatives are untouched, so their gates are all off: only the
    # supportive-only draws need a lookup.
    neg_gates = np.zeros(shape + (index.num_behaviors,), np.float32)
    if supportive_ratio > 0 and len(index.supportive_items):
        start = index.supportive_indptr[user_grid]
        count = index.supportive_indptr[user_grid + 1] - start
        use = (rng.random(shape) < supportive_ratio) & (count > 0) & positives.is_target[:, None]
        offset = np.floor(rng.random(shape) * count).astype(np.int64)
        picked = index.supportive_items[np.minimum(start + offset, len(index.supportive_items) - 1)]
        negatives = np.where(use, picked, negatives).astype(np.int32)
        neg_gates[use] = index.gates(user_grid[use], negatives[use])
    return {
        schema.USER: users,
        schema.POS_ITEM: positives.items,
        schema.POS_GATE: index.gates(users, positives.items),
        schema.POS_WEIGHT: positives.weights,
        schema.NEG_ITEM: negatives,
        schema.NEG_GATE: neg_gates,
    }


class SharedNegatives:
    """The softmax loss's candidate set: a batch's positives plus shared negatives.

    A batch of B positives is scored against C = B + N candidates: its own
    positive items (in-batch negatives for every other row) and N items drawn
    once for the batch, uniformly over the catalog. Each candidate's logit is
    corrected by log(B f_i + N / I), the expected number of times item i is
    in the set (f: the item's share of the epoch's positives, I: the catalog
    size): the mixed-negative logQ correction of Yang et al. 2020, so the
    softmax estimates one over the whole catalog.
    """

    def __init__(
        self,
        positive_items: np.ndarray,
        num_items: int,
        *,
        batch_size: int,
        num_shared: int,
    ):
        counts = np.bincount(positive_items, minlength=num_items).astype(np.float64)
        self.num_items = num_items
        self.num_shared = num_shared
        f = counts / max(counts.sum(), 1.0)
        self.log_expected = np.log(batch_size * f + num_shared / num_items).astype(np.float32)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """[num_shared] int32 items drawn uniformly with replacement."""
        return rng.integers(0, self.num_items, self.num_shared).astype(np.int32)

    def candidates(
        self,
        index: training_index.TrainingIndex,
        users: np.ndarray,
        items: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A batch's candidates, their log-expected counts and the pairs' bits.

        Args:
          index: the training index.
          users: [B] the batch's users.
          items: [B] their positive items.
          rng: the batch's generator.

        Returns:
          (candidates [B + N] int32: the positives then the shared draws,
           log_q [B + N] float32, bits [B, B + N] int32 behavior bitmasks).
        """
        candidates = np.concatenate([items, self.draw(rng)]).astype(np.int32)
        bits = training_index.pair_bits(index, users, candidates).astype(np.int32)
        return candidates, self.log_expected[candidates], bits


def chunk_rng(seed: int, epoch: int, shard: int, chunk: int) -> np.random.Generator:
    """The generator of one chunk of one input shard's epoch."""
    return np.random.default_rng([seed, epoch, shard, chunk])


def sample_epoch(
    index: training_index.TrainingIndex,
    *,
    num_negatives: int,
    supportive_ratio: float,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    supportive_positive_weight: float = 0.0,
    chunk_size: int = CHUNK_EXAMPLES,
) -> dict[str, np.ndarray]:
    """One epoch of training examples: every positive with fresh negatives.

    The positives are ordered by `epoch_positives`; each run of `chunk_size`
    of them gets its negatives from its own generator (`chunk_rng`), so the
    input pipeline can draw chunk by chunk while training runs. This is what
    a single input pipeline with the same chunk size yields.

    Args:
      index: the training index.
      num_negatives: negatives per positive.
      supportive_ratio: see `draw_examples`.
      seed: the run's seed.
      epoch: the epoch number.
      shuffle: shuffle the positives.
      supportive_positive_weight: see `epoch_positives`.
      chunk_size: positives per chunk.

    Returns:
      The fields of `draw_examples` for the whole epoch.
    """
    positives = epoch_positives(
        index,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        supportive_positive_weight=supportive_positive_weight,
    )
    chunks = [
        draw_examples(
            index,
            positives[start : start + chunk_size],
            num_negatives=num_negatives,
            supportive_ratio=supportive_ratio,
            rng=chunk_rng(seed, epoch, 0, c),
        )
        for c, start in enumerate(range(0, max(len(positives), 1), chunk_size))
    ]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
