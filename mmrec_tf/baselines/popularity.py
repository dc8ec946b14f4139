"""Baselines without learning: popularity, and the user's touched items first.

`--model=popular` ranks items by their training target count. With
`--behavior_features`, `TouchedFirst` puts every item the user touched through
supportive feedback in training (carted, viewed, ...) above every item they did
not, those with more supportive behaviors first, the base scorer breaking ties
(`--model=als --behavior_features` uses it with the ALS scores). It learns
nothing, so it shows how much of a model's accuracy the supportive flags alone
explain.
"""

from __future__ import annotations

import numpy as np

from mmrec_tf.pipelines import training_index


class PopularityScorer:
    """Training buy counts, as a share in [0, 1), with the interface of `evaluate.Scorer`."""

    bound = 1.0  # every score lies in [0, bound)

    def __init__(self, index: training_index.TrainingIndex):
        counts = np.bincount(index.pos_items, minlength=index.num_items).astype(np.float64)
        self.share = counts / (counts.max(initial=0.0) + 1.0)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[n] scores of the pairs (users[k], items[k])."""
        return self.share[items].astype(np.float32)

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] scores of every pair."""
        return np.broadcast_to(self.share[items], (len(users), len(items))).astype(np.float32)


class TouchedFirst:
    """A base scorer's ranking below the count of supportive behaviors of each pair.

    Args:
      base: a scorer (pairs and grids) whose scores all lie in
        (-base.bound, base.bound); each supportive behavior adds twice that
        bound, so any touched item outranks any untouched one.
      index: the training index the behaviors are looked up in.
    """

    def __init__(self, base, index: training_index.TrainingIndex):
        self.base = base
        self.index = index
        self.step = 2.0 * float(base.bound)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        touched = self.index.gates(users, items)[:, 1:].sum(axis=-1)
        return (self.base(users, items) + self.step * touched).astype(np.float32)

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        touched = self.index.gate_grid(users, items)[..., 1:].sum(axis=-1)
        return (self.base.grid(users, items) + self.step * touched).astype(np.float32)
