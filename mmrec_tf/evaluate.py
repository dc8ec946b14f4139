"""Accuracy per the evaluation protocol: sampled and full ranking, and TFRS retrieval.

All scoring is batched through one `tf.function`; there is no Python loop of
model calls per user. Ties count against the held-out item: its rank is the
number of other candidates scoring greater than or equal to it, so a model
that scores everything equal gets HR@10 = 0.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf.pipelines import eval_candidates
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits as splits_lib
from mmrec_tf.pipelines import training_index

# Each case's hit at 10, returned by `evaluate(..., case_hits=True)`.
CASE_HITS = "HR@10_hits"


def metrics_from_ranks(ranks: np.ndarray, ks=(10,), case_hits: bool = False) -> dict:
    """HR@K and NDCG@K from 0-based ranks, with standard errors.

    Args:
      ranks: [cases] 0-based ranks of the held-out items (0 is best).
      ks: cut-offs.
      case_hits: also return each case's hit at 10 (`CASE_HITS`).

    Returns:
      {"HR@K", "HR@K_se", "NDCG@K", "NDCG@K_se" for each K, "cases"}.
    """
    ranks = np.asarray(ranks)
    n = len(ranks)
    result = {"cases": int(n)}
    for k in ks:
        hit = (ranks < k).astype(np.float64)
        gain = np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)
        for name, values in ((f"HR@{k}", hit), (f"NDCG@{k}", gain)):
            result[name] = float(values.mean()) if n else 0.0
            result[f"{name}_se"] = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    if case_hits:
        result[CASE_HITS] = ranks < 10
    return result


class Scorer:
    """Batched logits from a functional scorer: of pairs, or of users x items grids."""

    # Pairs per grid call: bounds the [users, items, units] activations.
    GRID_PAIRS = 1 << 21

    def __init__(
        self,
        scorer: tf_keras.Model,
        num_behaviors: int,
        batch_size: int = 65536,
        *,
        index: training_index.TrainingIndex | None = None,
        signals=None,
    ):
        """Wraps `scorer`.

        Args:
          scorer: a model from `models.build_model`.
          num_behaviors: the gate width of its input.
          batch_size: pairs per call.
          index: the training data's pair index. A scorer with behavior
            features needs it: its pairs' flags come from it. Other scorers
            get all-ones gates (the gate only shapes training gradients).
          signals: the training graph's `graph_signals.GraphSignals`; a
            scorer built with `graph_signals` needs it.

        Raises:
          ValueError: for a scorer with behavior features and no index, or
            one with graph signals and no signals.
        """
        self.batch_size = batch_size
        self.index = index
        self.num_behaviors = num_behaviors
        self.behavior_features = scorer.behavior_bias is not None
        if self.behavior_features and index is None:
            raise ValueError(
                "the scorer has behavior features: pass index=TrainingIndex of its training data."
            )
        self.signals = signals
        num_signals = scorer.num_signals
        if num_signals and signals is None:
            raise ValueError(
                "the scorer takes graph signals: pass signals=GraphSignals of its training data."
            )
        pair = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)]
        gates = tf.TensorSpec([None, None, num_behaviors], tf.float32)
        grid_signals = tf.TensorSpec([None, None, max(num_signals, 1)], tf.float32)

        # XLA fuses each branch's ReLU layers over the [users, items, units]
        # grid instead of materializing every intermediate: 2.3x faster here.
        @tf.function(
            input_signature=pair + [gates, grid_signals], reduce_retracing=True, jit_compile=True
        )
        def grid(users, items, gates, signals):
            return models.score_grid(
                scorer,
                users,
                items,
                gates if self.behavior_features else None,
                signals=signals if num_signals else None,
            )

        self._grid = grid

        @tf.function(
            input_signature=pair
            + [
                tf.TensorSpec([None, num_behaviors], tf.float32),
                tf.TensorSpec([None, max(num_signals, 1)], tf.float32),
            ],
            reduce_retracing=True,
        )
        def logits(users, items, gate, signals):
            inputs = {schema.USER: users, schema.ITEM: items, schema.GATE: gate}
            if num_signals:
                inputs[schema.SIGNALS] = signals
            return scorer(inputs, training=False)[schema.LOGIT]

        self._logits = logits

    @property
    def pairs_from_grid(self) -> bool:
        """Whether pairs cost about as much as their users' whole grid (graph signals)."""
        return self.signals is not None

    def _gates(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if not self.behavior_features:
            return np.ones((len(users), self.num_behaviors), np.float32)
        return self.index.gates(users, items)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[n] float32 logits of the pairs (users[k], items[k])."""
        out = np.empty(len(users), np.float32)
        for start in range(0, len(users), self.batch_size):
            u = users[start : start + self.batch_size].astype(np.int32)
            i = items[start : start + self.batch_size].astype(np.int32)
            out[start : start + len(u)] = self._logits(
                u, i, self._gates(u, i), self._pair_signals(u, i)
            ).numpy()
        return out

    def _pair_signals(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.signals is None:
            return np.zeros((len(users), 1), np.float32)
        return self.signals.pairs(users, items)

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] float32 logits of every pair."""
        users, items = users.astype(np.int32), items.astype(np.int32)
        gates = (
            self.index.gate_grid(users, items)
            if self.behavior_features
            else np.zeros((0, 0, self.num_behaviors), np.float32)
        )
        signals = (
            self.signals.grid(users, items)
            if self.signals is not None
            else np.zeros((0, 0, 1), np.float32)
        )
        return self._grid(users, items, gates, signals).numpy()


def sampled_ranks(score: Scorer, users: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Ranks of column 0 of `candidates` among its row (ties count against it).

    Args:
      score: the batched scorer.
      users: [cases] users.
      candidates: [cases, 1 + negatives] items, the held-out item first.

    Returns:
      [cases] ranks.
    """
    width = candidates.shape[1]
    logits = score(np.repeat(users, width), candidates.reshape(-1)).reshape(-1, width)
    return (logits[:, 1:] >= logits[:, :1]).sum(axis=1)


def _row_mask(users: np.ndarray, sorted_keys: np.ndarray, num_items: int) -> np.ndarray:
    """[len(users), num_items] bool: True where (user, item) is in `sorted_keys`."""
    users = users.astype(np.int64)
    lo = np.searchsorted(sorted_keys, users * num_items)
    hi = np.searchsorted(sorted_keys, (users + 1) * num_items)
    rows, positions = training_index.run_positions(lo, hi)
    mask = np.zeros((len(users), num_items), bool)
    mask[rows, sorted_keys[positions] % num_items] = True
    return mask


def full_ranks(
    score: Scorer,
    users: np.ndarray,
    items: np.ndarray,
    exclude_keys: np.ndarray,
    num_items: int,
    *,
    discovery_keys: np.ndarray | None = None,
    sampled: np.ndarray | None = None,
):
    """Ranks of each held-out item among the whole catalog, excluded items left out.

    Args:
      score: the batched scorer.
      users: [cases] users.
      items: [cases] held-out items.
      exclude_keys: sorted pair keys never ranked (the users' training target
        items).
      num_items: catalog size.
      discovery_keys: when given, sorted pair keys of every training pair (any
        behavior): the same scores are also ranked with these excluded.
      sampled: when given, [cases, 1 + negatives] each case's sampled
        candidates (the held-out item first): their ranks are read from the
        same scores (`sampled_ranks` without scoring the pairs again).

    Returns:
      [cases] ranks among the items that are neither excluded nor the
      held-out item itself; with `discovery_keys`, a pair (full ranks,
      discovery ranks), the second computed for every case (the caller drops
      the cases whose item is itself a training pair); with `sampled`, a
      pair (that, [cases] sampled ranks).
    """
    ranks = np.empty(len(users), np.int64)
    found = np.empty(len(users), np.int64) if discovery_keys is not None else None
    sampled_out = np.empty(len(users), np.int64) if sampled is not None else None
    rows = max(1, Scorer.GRID_PAIRS // num_items)
    catalog = np.arange(num_items, dtype=np.int32)
    for start in range(0, len(users), rows):
        u = users[start : start + rows]
        i = items[start : start + rows]
        logits = score.grid(u, catalog)
        target = logits[np.arange(len(u)), i]
        above = logits >= target[:, None]
        excluded = _row_mask(u, exclude_keys, num_items)
        excluded[np.arange(len(u)), i] = True
        ranks[start : start + len(u)] = (above & ~excluded).sum(axis=1)
        if found is not None:
            excluded |= _row_mask(u, discovery_keys, num_items)
            excluded[np.arange(len(u)), i] = True
            found[start : start + len(u)] = (above & ~excluded).sum(axis=1)
        if sampled is not None:
            picked = logits[np.arange(len(u))[:, None], sampled[start : start + rows]]
            sampled_out[start : start + len(u)] = (picked[:, 1:] >= picked[:, :1]).sum(axis=1)
    out = ranks if found is None else (ranks, found)
    return out if sampled is None else (out, sampled_out)


def full_ranking_subset(num_cases: int, limit: int, seed: int) -> np.ndarray:
    """Indices of the cases ranked against the whole catalog, in case order.

    Every case when `limit` is 0 or not smaller than `num_cases`; otherwise
    `limit` cases drawn without replacement with a generator seeded by `seed`
    alone, so every model evaluated with the same seed ranks the same cases.
    """
    if not limit or limit >= num_cases:
        return np.arange(num_cases)
    rng = np.random.default_rng([seed, num_cases])
    return np.sort(rng.choice(num_cases, size=limit, replace=False))


PROTOCOLS = ("sampled", "full", "discovery")


@dataclasses.dataclass
class EvalCases:
    """Held-out cases with everything the protocols need, drawn once.

    Attributes:
      users: [cases] users.
      items: [cases] held-out items.
      candidates: [cases, 1 + negatives] sampled-protocol candidates.
      exclude_keys: sorted keys of the training target pairs (full ranking).
      num_items: catalog size.
      touched_keys: sorted keys of every training pair, any behavior (the
        discovery protocol excludes them, and drops the cases whose item is
        one of them); None: no discovery protocol.
    """

    users: np.ndarray
    items: np.ndarray
    candidates: np.ndarray
    exclude_keys: np.ndarray
    num_items: int
    touched_keys: np.ndarray | None = None

    @classmethod
    def build(
        cls,
        split: splits_lib.Split,
        which: str,
        config: config_lib.EvalConfig,
        *,
        touched_keys: np.ndarray | None = None,
    ) -> EvalCases:
        """The `which` ("valid" or "test") cases of `split`.

        `touched_keys` (every training pair's sorted key, as
        `TrainingIndex.keys` holds them) saves computing them again.
        """
        users = split.valid_users if which == "valid" else split.test_users
        items = split.valid_items if which == "valid" else split.test_items
        candidates = eval_candidates.sampled_candidates(
            users,
            items,
            split.all_pair_keys,
            split.num_items,
            num_negatives=config.sampled_negatives,
            seed=config.seed + (1 if which == "valid" else 0),
        )
        return cls(
            users,
            items,
            candidates,
            splits_lib.train_target_keys(split),
            split.num_items,
            touched_keys=(
                splits_lib.train_pair_keys(split) if touched_keys is None else touched_keys
            ),
        )


def evaluate(
    score: Scorer,
    cases: EvalCases,
    *,
    config: config_lib.EvalConfig,
    full_ranking: bool | None = None,
    protocols: tuple[str, ...] | None = None,
    case_limit: int | None = None,
    case_hits: bool = False,
) -> dict:
    """The protocols on `cases` (PROTOCOL.md: sampled, full ranking, discovery).

    Full ranking and discovery rank the same scores of the whole catalog:
    full ranking leaves out the user's training target items, discovery every
    item the user touched in training through any behavior, and drops the
    cases whose held-out item the user touched.

    Args:
      score: the batched scorer (build it once: each one traces a function).
      cases: the held-out cases.
      config: negatives, cut-offs, whether to rank the full catalog.
      full_ranking: overrides `config.full_ranking` when not None.
      protocols: the protocols to compute (default: sampled, and full ranking
        and discovery when full ranking is on).
      case_limit: overrides `config.full_ranking_cases` (e.g. a validation
        limit of its own).
      case_hits: also return each case's hit at 10 (`CASE_HITS`, a boolean
        array in case order), for paired comparisons of two models on the
        same cases.

    Returns:
      {"sampled": metrics at K=10, "full" and "discovery": metrics at
      `config.ks`}, each present when computed.
    """
    if protocols is None:
        full = config.full_ranking if full_ranking is None else full_ranking
        protocols = PROTOCOLS if full else ("sampled",)
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"protocols {sorted(unknown)} are unknown: use some of {PROTOCOLS}.")
    result = {}
    discovery = "discovery" in protocols and cases.touched_keys is not None
    ranking = "full" in protocols or discovery
    limit = config.full_ranking_cases if case_limit is None else case_limit
    ranked = full_ranking_subset(len(cases.users), limit, config.seed)
    # A scorer whose pairs cost as much as its grid (graph signals, a
    # cascade) scores its users' whole catalog in full ranking: the sampled
    # candidates' scores are read from the same grid when every case is
    # ranked, not computed again pair by pair.
    from_grid = (
        "sampled" in protocols
        and ranking
        and getattr(score, "pairs_from_grid", False)
        and len(ranked) == len(cases.users)
    )

    def sampled_metrics(ranks, seconds):
        out = metrics_from_ranks(ranks, ks=(10,), case_hits=case_hits)
        out["protocol"] = f"1 held-out + {cases.candidates.shape[1] - 1} sampled"
        out["seconds"] = seconds
        return out

    if "sampled" in protocols and not from_grid:
        started = time.perf_counter()
        ranks = sampled_ranks(score, cases.users, cases.candidates)
        result["sampled"] = sampled_metrics(ranks, round(time.perf_counter() - started, 2))
    if ranking:
        started = time.perf_counter()
        sample = (
            f"; a seeded sample of {len(ranked)} of {len(cases.users)} cases"
            if len(ranked) < len(cases.users)
            else ""
        )
        users, items = cases.users[ranked], cases.items[ranked]
        ranks = full_ranks(
            score,
            users,
            items,
            cases.exclude_keys,
            cases.num_items,
            discovery_keys=cases.touched_keys if discovery else None,
            sampled=cases.candidates if from_grid else None,
        )
        seconds = round(time.perf_counter() - started, 2)
        if from_grid:
            ranks, sampled = ranks
            result["sampled"] = sampled_metrics(sampled, seconds)
        if discovery:
            ranks, found = ranks
            keys = splits_lib.pair_keys(users, items, cases.num_items)
            fresh = ~training_index.contains(cases.touched_keys, keys)
            result["discovery"] = metrics_from_ranks(
                found[fresh], ks=config.ks, case_hits=case_hits
            )
            result["discovery"]["protocol"] = (
                "whole catalog, every item the user touched in training excluded; "
                f"{int(fresh.sum())} of {len(users)} cases whose item the user had not "
                f"touched{sample}"
            )
            result["discovery"]["seconds"] = seconds
        if "full" in protocols:
            result["full"] = metrics_from_ranks(ranks, ks=config.ks, case_hits=case_hits)
            result["full"]["protocol"] = "whole catalog, training target items excluded" + sample
            result["full"]["seconds"] = seconds
    return result


def retrieval_metrics(
    scorer: tf_keras.Model, cases: EvalCases, *, config: config_lib.EvalConfig
) -> dict | None:
    """TFRS FactorizedTopK accuracy of the MF retrieval stage over the whole catalog.

    The query tower is the user's MF factors weighted by the head, the
    candidate tower the item's MF factors (see `models.retrieval_towers`).
    Nothing is excluded: this measures the retrieval stage as served.

    Returns:
      {"top_K_categorical_accuracy": value, ..., "cases": n}, or None for a
      model without an MF part.
    """
    try:
        query, candidate = models.retrieval_towers(scorer)
    except ValueError:
        return None
    items = tf.range(cases.num_items, dtype=tf.int32)
    index = tfrs.layers.factorized_top_k.BruteForce(k=max(config.retrieval_ks))
    index.index(candidate(items), identifiers=items)
    metric = tfrs.metrics.FactorizedTopK(candidates=index, ks=config.retrieval_ks)
    for start in range(0, len(cases.users), 4096):
        u = tf.constant(cases.users[start : start + 4096], tf.int32)
        i = tf.constant(cases.items[start : start + 4096], tf.int32)
        metric.update_state(query(u), candidate(i), true_candidate_ids=i)
    result = {
        f"top_{k}_categorical_accuracy": float(v)
        for k, v in zip(config.retrieval_ks, metric.result())
    }
    result["cases"] = int(len(cases.users))
    return result
