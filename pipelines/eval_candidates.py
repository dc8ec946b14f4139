"""Candidates of the sampled evaluation protocol (the held-out item + 99 negatives)."""

from __future__ import annotations

import numpy as np

from mmrec_tf.pipelines import negatives


def sampled_candidates(
    users: np.ndarray,
    items: np.ndarray,
    all_pair_keys: np.ndarray,
    num_items: int,
    *,
    num_negatives: int,
    seed: int,
) -> np.ndarray:
    """Candidates of the sampled protocol: the test item then distinct negatives.

    Args:
      users: [c] users of the test cases.
      items: [c] held-out items.
      all_pair_keys: sorted keys of every interaction (any split, behavior).
      num_items: catalog size.
      num_negatives: negatives per case (99 in the protocol).
      seed: the protocol's fixed seed.

    Returns:
      [c, 1 + num_negatives] int32 items; column 0 is the held-out item.
    """
    rng = np.random.default_rng(seed)
    grid = np.broadcast_to(users[:, None], (len(users), num_negatives))
    drawn = negatives.uniform_untouched(grid, all_pair_keys, num_items, rng, distinct_rows=True)
    return np.concatenate([items[:, None].astype(np.int32), drawn], axis=1)
