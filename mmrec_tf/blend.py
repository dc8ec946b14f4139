"""A trained model's ranking blended with CascadingRank's (`--cascade_blend`).

The blended score of a pair is

    logit(u, i) + w * log(num_items * c(u, i) + FLOOR)

with c the CascadingRank score of `baselines.cascade` on the training graph
(a user's item scores sum to about 1, so num_items * c is 1 for an item
that gets a uniform share, and FLOOR bounds what an unreached item loses).
The trained model learns from the pairs' ids (and graph signals);
CascadingRank propagates each user's own events through every behavior's
graph, which finds the items the user has not touched far better
(benchmarks/results/README.md). Neither sees a held-out pair: the cascade
runs on the training graph, as at serving time.

w is a setting like `cascade_alpha`, chosen on the validation cases after
training (`choose`): every weight of `WEIGHTS` is ranked on the same cases,
and the best one is kept only when it beats w = 0 (the model alone) by more
than `early_stopping_margin` standard errors of the paired per-case
difference, the rule an epoch must pass to replace the kept one. The choice
is written to `<model_dir>/blend.json`, which evaluation and export read.
"""

from __future__ import annotations

import math
import os

import numpy as np

from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import run_record
from mmrec_tf.baselines import cascade
from mmrec_tf.pipelines import splits as splits_lib
from mmrec_tf.pipelines import training_index

# The weights tried on validation besides 0.
WEIGHTS = (0.25, 0.5, 1.0, 2.0)
# Added to num_items * c before the log.
FLOOR = 0.01
RECORD = "blend.json"


def cascade_settings(model: config_lib.ModelConfig) -> cascade.CascadeConfig:
    return cascade.CascadeConfig(alpha=model.cascade_alpha, beta=model.cascade_beta)


def log_scores(scores: np.ndarray, num_items: int) -> np.ndarray:
    """log(num_items * c + FLOOR), float32."""
    return np.log(num_items * np.maximum(scores, 0.0) + FLOOR).astype(np.float32)


class Blended:
    """The fitted-scorer protocol (`__call__` of pairs, `grid`) of the blend."""

    def __init__(self, model, ranker: cascade.CascadeScorer, weight: float):
        """Args: model, an `evaluate.Scorer` (or any scorer); ranker, the cascade; weight, w."""
        self.model = model
        self.cascade = ranker
        self.weight = float(weight)
        self.num_items = ranker.num_items

    # A pair costs its user's whole cascade: evaluate.evaluate reads the
    # sampled candidates from the full-ranking grid.
    pairs_from_grid = True

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = self.model(users, items)
        if self.weight:
            out = out + self.weight * log_scores(self.cascade(users, items), self.num_items)
        return out

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = self.model.grid(users, items)
        if self.weight:
            out = out + self.weight * log_scores(self.cascade.grid(users, items), self.num_items)
        return out


class _Fixed:
    """A scorer whose grid is given (one batch's blend, for `evaluate.full_ranks`)."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits

    def grid(self, users, items):
        assert self.logits.shape == (len(users), len(items))
        return self.logits


def cascade_term(ranker: cascade.CascadeScorer):
    """The blend's term at weight 1: (users, items) -> log(num_items * c + FLOOR) grid."""
    return lambda users, items: log_scores(ranker.grid(users, items), ranker.num_items)


def weight_hits(
    model, term, cases: evaluate.EvalCases, protocol: str, ranked, weights=WEIGHTS
) -> dict[float, np.ndarray]:
    """Each weight's per-case hits at 10 under `protocol` on the cases `ranked`.

    Args:
      model: a scorer (its `grid`).
      term: (users, items) -> the grid added at weight 1 (`cascade_term`).
      weights: tried besides 0 (the model alone).

    The model's and the term's grids are computed once per batch of users
    and blended for every weight.
    """
    weights = (0.0, *weights)
    users, items = cases.users[ranked], cases.items[ranked]
    hits = {w: [] for w in weights}
    rows = max(1, evaluate.Scorer.GRID_PAIRS // cases.num_items)
    catalog = np.arange(cases.num_items, dtype=np.int32)
    keep = np.ones(len(users), bool)
    if protocol == "discovery":
        keys = splits_lib.pair_keys(users, items, cases.num_items)
        keep = ~training_index.contains(cases.touched_keys, keys)
    for start in range(0, len(users), rows):
        u, i = users[start : start + rows], items[start : start + rows]
        logits = model.grid(u, catalog)
        extra = term(u, catalog)
        for w in weights:
            ranks = evaluate.full_ranks(
                _Fixed(logits + w * extra if w else logits),
                u,
                i,
                cases.exclude_keys,
                cases.num_items,
                discovery_keys=cases.touched_keys if protocol == "discovery" else None,
                sampled=cases.candidates[ranked][start : start + rows]
                if protocol == "sampled"
                else None,
            )
            if protocol == "discovery":
                ranks = ranks[1][keep[start : start + rows]]
            elif protocol == "sampled":
                ranks = ranks[1]
            hits[w].append(ranks < 10)
    return {w: np.concatenate(h).astype(np.float64) for w, h in hits.items()}


def choose(
    model,
    ranker: cascade.CascadeScorer,
    valid_cases: evaluate.EvalCases,
    config: config_lib.ExperimentConfig,
) -> dict:
    """The blend's weight, chosen on validation (see the module docstring).

    Returns:
      {"weight": the kept w, "protocol", "cases", "HR@10" by weight,
       "margin"}.
    """
    protocol = config.train.early_stopping_protocol
    ranked = evaluate.full_ranking_subset(
        len(valid_cases.users), config.eval.valid_full_ranking_cases, config.eval.seed
    )
    hits = weight_hits(model, cascade_term(ranker), valid_cases, protocol, ranked)
    margin = config.train.early_stopping_margin
    kept, gain, se = keep(hits, margin)
    return {
        "weight": kept,
        "protocol": protocol,
        "cases": len(hits[0.0]),
        "HR@10": {str(w): round(float(h.mean()), 4) for w, h in hits.items()},
        "best_minus_model": round(gain, 4),
        "best_minus_model_se": round(se, 4),
        "margin": margin,
    }


def keep(hits: dict[float, np.ndarray], margin: float) -> tuple[float, float, float]:
    """The rule of `choose` on per-case hits by weight (w = 0 included).

    Returns:
      (the kept weight: the best of the weights tried (`WEIGHTS` in `choose`)
       when it beats w = 0 by more than `margin` standard errors of the
       paired per-case difference, else 0; the best weight's mean gain over
       w = 0; that gain's standard error).
    """
    best = max((w for w in hits if w), key=lambda w: (hits[w].mean(), -w))
    diff = hits[best] - hits[0.0]
    se = diff.std(ddof=1) / math.sqrt(len(diff)) if len(diff) > 1 else 0.0
    kept = best if diff.mean() > 0 and diff.mean() > margin * se else 0.0
    return kept, float(diff.mean()), float(se)


def save(model_dir: str, record: dict) -> None:
    run_record.write_json(os.path.join(model_dir, RECORD), record)


def load(model_dir: str) -> dict:
    path = os.path.join(model_dir, RECORD)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} is missing: a run with --cascade_blend records the blend's weight there "
            "when it trains. Train the run to its end first (--mode=train_and_evaluate), or "
            "evaluate it without --cascade_blend."
        )
    return run_record.read_json(
        path, "It records the blend's weight chosen on validation: restore it, or train again."
    )
