"""Popularity baselines: the most bought items, optionally the user's touched items first.

`--model=popular` ranks items by their training target count. With
`--behavior_features`, every item the user touched through supportive feedback
in training (carted, viewed, ...) ranks above every item they did not, those
with more supportive behaviors first, popularity breaking ties. It learns
nothing, so it shows how much of a model's accuracy the supportive flags alone
explain.
"""

from __future__ import annotations

import numpy as np

from mmrec_tf.pipelines import samplers


class PopularityScorer:
    """Scores with the interface of `evaluate.Scorer` (pairs and grids)."""

    def __init__(self, index: samplers.TrainingIndex, *, behavior_features: bool):
        counts = np.bincount(index.pos_items, minlength=index.num_items).astype(np.float64)
        # A share in [0, 1): one supportive behavior outweighs any popularity.
        self.share = counts / (counts.max(initial=0.0) + 1.0)
        self.index = index
        self.behavior_features = behavior_features

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[n] scores of the pairs (users[k], items[k])."""
        scores = self.share[items]
        if self.behavior_features:
            scores = scores + self.index.gates(users, items)[:, 1:].sum(axis=-1)
        return scores.astype(np.float32)

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] scores of every pair."""
        scores = np.broadcast_to(self.share[items], (len(users), len(items)))
        if self.behavior_features:
            scores = scores + self.index.gate_grid(users, items)[..., 1:].sum(axis=-1)
        return scores.astype(np.float32)
