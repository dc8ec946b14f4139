"""CascadingRank as a SavedModel: the behavior graphs as variables, propagated per request.

`CascadeModule` serves `--model=cascade` with the signatures of
`serving.ServingModule` and one more:

- `serving_default(user_id [B], item_id [B])` -> `score`, `logit` (the same
  cascade score), `probability` (its sigmoid, kept for the common output
  keys; not calibrated);
- `retrieve(user_id [B])` -> the top C items by cascade score;
- `recommend(user_id [B])` -> the top K, the user's training purchases
  masked to -inf before the top-k (so a long purchase history never pushes
  wanted items out);
- `recommend_from_history(user_id [B], history_item_id [N],
  history_behavior [N], history_row [N])` -> the top K for users described
  by events: event n (an item and a behavior name) belongs to request row
  `history_row[n]`. A known user's training events are merged with the
  request's; an unknown (or empty) user id is a new user whose ranking comes
  from those events alone. Purchases among the events are excluded like the
  training purchases. `unknown_events` [B] counts each row's events whose
  item the catalog does not hold (they cannot propagate; nothing else is
  skipped).

Each request row is propagated as one user node whose edges are its
events (a known user's node is replaced by it), with the training degrees
of the items, exactly as `baselines.cascade.CascadeScorer` iterates: a known
user with no extra events gets the scores that the evaluation ranked.
Unknown users without events fall back to the popularity share, as in
`serving`. Every request's memory is [users + items, rows] floats a few
times over, so `max_request_users` is capped by a budget.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mmrec_tf.baselines import cascade
from mmrec_tf.export import serving
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits as splits_lib

_IDS = tf.TensorSpec(None, tf.string, name=schema.USER_ID)
_ITEM_IDS = tf.TensorSpec(None, tf.string, name=schema.ITEM_ID)


class _Graph(tf.Module):
    """One stage's graph: the users' item lists and the normalized matrix, as variables."""

    def __init__(self, stage: cascade.Stage, num_items: int):
        super().__init__()
        pattern = stage.query
        rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
        user_degree = np.diff(pattern.indptr).astype(np.float64)
        values = 1.0 / np.sqrt(user_degree[rows] * stage.item_degree[pattern.indices])
        self.indices = serving._table(
            np.stack([rows, pattern.indices], axis=1).astype(np.int64), tf.int64, "indices"
        )
        self.values = serving._table(values.astype(np.float32), tf.float32, "values")
        self.row_splits = serving._table(pattern.indptr.astype(np.int64), tf.int64, "row_splits")
        self.items = serving._table(pattern.indices.astype(np.int32), tf.int32, "items")
        self.item_degree = serving._table(
            np.maximum(stage.item_degree, 1.0).astype(np.float32), tf.float32, "item_degree"
        )
        self.shape = (int(pattern.shape[0]), num_items)

    def matrix(self) -> tf.sparse.SparseTensor:
        return tf.sparse.SparseTensor(self.indices, self.values, self.shape)


class Propagation(tf.Module):
    """CascadingRank's propagation per request: the stages' graphs and settings, as variables.

    `scores(users, events)` gives each request row's last-stage item scores,
    exactly as `baselines.cascade.CascadeScorer` iterates them for a known
    user without events (a row with events is one user node whose edges are
    the user's training edges and the events).
    """

    def __init__(self, scorer: cascade.CascadeScorer):
        super().__init__()
        s = scorer.settings
        self.num_users, self.num_items = scorer.num_users, scorer.num_items
        self.alpha, self.beta = float(s.alpha), float(s.beta)
        self.tolerance, self.max_iterations = float(s.tolerance), int(s.max_iterations)
        self.order = tuple(int(b) for b in scorer.order)
        self.graphs = [_Graph(stage, scorer.num_items) for stage in scorer.stages]

    @staticmethod
    def row_bytes(num_users: int, num_items: int) -> int:
        """A request row's dense blocks: five [users + items] float32 arrays."""
        return (num_users + num_items) * 4 * 5

    def _edges(self, graph: _Graph, users, event_rows, event_items):
        """Each row's distinct items of one behavior: the user's training ones and the events.

        Returns:
          (rows [E] int32, items [E] int32) with no repeated pair.
        """
        train_rows, train_items = serving.listed(graph.items, graph.row_splits, users)
        rows = tf.concat([train_rows, event_rows], axis=0)
        items = tf.concat([train_items, event_items], axis=0)
        keys, _ = tf.unique(tf.cast(rows, tf.int64) * self.num_items + tf.cast(items, tf.int64))
        return tf.cast(keys // self.num_items, tf.int32), tf.cast(keys % self.num_items, tf.int32)

    def _stage(self, graph: _Graph, users, rows, items, previous):
        """One stage for a block of request rows; `previous` = (c_u, c_v, c_i) or None."""
        batch = tf.shape(users)[0]
        gamma = 1.0 - self.alpha - self.beta
        degree = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.float32), rows, batch)
        positions = tf.stack([items, rows], axis=1)
        item_shape = tf.stack([self.num_items, batch])
        query_i = tf.scatter_nd(positions, 1.0 / tf.gather(degree, rows), item_shape)
        # The row's own edges, D^-1/2 normalized with the training item degrees.
        edge = tf.math.rsqrt(tf.gather(degree, rows) * tf.gather(graph.item_degree, items))
        # A known user's training node is replaced by the request's node.
        known = tf.where(users >= 0)[:, 0]
        drop = tf.stack([tf.gather(users, known), tf.cast(known, tf.int32)], axis=1)
        user_mask = tf.tensor_scatter_nd_update(
            tf.ones(tf.stack([self.num_users, batch])), drop, tf.zeros(tf.shape(known))
        )
        if previous is None:
            c_u = tf.zeros(tf.stack([self.num_users, batch]))
            c_v = tf.ones([batch])
            c_i = query_i
        else:
            c_u, c_v, c_i = previous
        matrix = graph.matrix()
        pull_u = self.beta * c_u
        pull_v = self.alpha + self.beta * c_v
        pull_i = self.alpha * query_i + self.beta * c_i

        def sweep(step, r_u, r_v, r_i, change):
            del change
            new_u = (gamma * tf.sparse.sparse_dense_matmul(matrix, r_i) + pull_u) * user_mask
            own = tf.math.unsorted_segment_sum(edge * tf.gather_nd(r_i, positions), rows, batch)
            new_v = gamma * own + pull_v
            spread = tf.scatter_nd(positions, edge * tf.gather(new_v, rows), item_shape)
            new_i = (
                gamma * (tf.sparse.sparse_dense_matmul(matrix, new_u, adjoint_a=True) + spread)
                + pull_i
            )
            change = (
                tf.reduce_sum(tf.abs(new_u - r_u), axis=0)
                + tf.abs(new_v - r_v)
                + tf.reduce_sum(tf.abs(new_i - r_i), axis=0)
            )
            return step + 1, new_u, new_v, new_i, tf.reduce_max(change)

        def running(step, r_u, r_v, r_i, change):
            del r_u, r_v, r_i
            return tf.logical_and(step < self.max_iterations, change >= self.tolerance)

        _, r_u, r_v, r_i, _ = tf.while_loop(
            running, sweep, (tf.constant(0), c_u, c_v, c_i, tf.constant(np.inf, tf.float32))
        )
        return r_u, r_v, r_i

    def scores(self, users, event_rows, event_items, event_branches) -> tf.Tensor:
        """[rows, items] the cascade's item scores of each request row."""
        previous = None
        for branch, graph in zip(self.order, self.graphs):
            mine = event_branches == branch
            rows, items = self._edges(
                graph,
                users,
                tf.boolean_mask(event_rows, mine),
                tf.boolean_mask(event_items, mine),
            )
            previous = self._stage(graph, users, rows, items, previous)
        return tf.transpose(previous[2])


class CascadeModule(serving.CatalogModule):
    """The exported CascadingRank: graphs, vocabularies, purchases, fallbacks."""

    def __init__(
        self,
        scorer: cascade.CascadeScorer,
        *,
        user_tokens: np.ndarray,
        item_tokens: np.ndarray,
        behaviors: tuple[str, ...],
        popularity: np.ndarray,
        seen_row_splits: np.ndarray,
        seen_items: np.ndarray,
        top_k: int = 10,
        retrieval_candidates: int = 500,
        exclude_seen: bool = True,
        max_request_users: int = serving.MAX_REQUEST_USERS,
        max_request_pairs: int = serving.MAX_REQUEST_PAIRS,
        max_history_events: int = serving.MAX_HISTORY_EVENTS,
    ):
        """Builds the module.

        Args:
          scorer: the fitted CascadeScorer (its stages and settings).
          user_tokens: [num_users] raw user ids by index.
          item_tokens: [num_items] raw item ids by index.
          behaviors: behavior names by branch (the target first).
          popularity: [num_items] training target counts (unknown users).
          seen_row_splits: [num_users + 1] row splits of `seen_items`.
          seen_items: the users' training target items, user by user.
          top_k: K of `recommend`.
          retrieval_candidates: C of `retrieve`.
          exclude_seen: leave purchases out of `recommend` and
            `recommend_from_history`.
          max_request_users: most rows per request; capped so that a
            request's dense blocks fit `serving.REQUEST_BUDGET_BYTES`.
          max_request_pairs: most pairs per `serving_default` request.
          max_history_events: most events per `recommend_from_history` request.

        Raises:
          ValueError: if K exceeds C or C the catalog.
        """
        num_users, num_items = len(user_tokens), len(item_tokens)
        super().__init__(
            user_tokens=user_tokens,
            item_tokens=item_tokens,
            popularity=popularity,
            seen_row_splits=seen_row_splits,
            seen_items=seen_items,
            top_k=top_k,
            retrieval_candidates=retrieval_candidates,
            exclude_seen=exclude_seen,
            max_request_users=max_request_users,
            max_request_pairs=max_request_pairs,
            behaviors=behaviors,
            max_history_events=max_history_events,
            request_row_bytes=Propagation.row_bytes(num_users, num_items),
        )
        self.propagation = Propagation(scorer)

    def _no_events(self):
        return (tf.zeros([0], tf.int32),) * 3

    # -- the signatures ---------------------------------------------------

    def _top(self, users, scores, extra_seen_rows, extra_seen_items, personal, k):
        """The top k of `scores` [B, items], purchases masked first; popular rows where not personal."""
        batch = tf.shape(users)[0]
        if self.exclude_seen:
            seen_rows, seen_items = self._rows(self.seen_items, self.seen_row_splits, users)
            rows = tf.concat([seen_rows, extra_seen_rows], axis=0)
            items = tf.concat([seen_items, extra_seen_items], axis=0)
            scores = tf.tensor_scatter_nd_update(
                scores,
                tf.stack([rows, items], axis=1),
                tf.fill(tf.shape(rows), float("-inf")),
            )
        top, position = tf.math.top_k(scores, k=k)
        popular, popular_scores = self._popular(batch, k)
        items = tf.where(personal[:, None], position, popular)
        top = tf.where(personal[:, None], top, popular_scores)
        empty = top == float("-inf")
        ids = tf.where(empty, serving.EMPTY_ITEM_ID, tf.gather(self.item_ids, items))
        return {"item_ids": ids, "scores": top}

    @tf.function(input_signature=[_IDS, _ITEM_IDS])
    def score(self, user_id, item_id):
        users, items = self._pairs(user_id, item_id)
        distinct, row = tf.unique(users)
        few = tf.debugging.assert_less_equal(
            tf.size(distinct),
            self.max_request_users,
            message=f"at most {self.max_request_users} distinct users per request; split it",
        )
        with tf.control_dependencies([few]):
            scores = self.propagation.scores(distinct, *self._no_events())
        logits = tf.gather_nd(scores, tf.stack([row, tf.maximum(items, 0)], axis=1))
        return self._pair_outputs(logits, users, items)

    @tf.function(input_signature=[_IDS])
    def retrieve(self, user_id):
        user_id = serving._vector(user_id, schema.USER_ID, self.max_request_users)
        users = self._users(user_id)
        scores = self.propagation.scores(users, *self._no_events())
        top, items = tf.math.top_k(scores, k=self.retrieval_candidates)
        popular, popular_scores = self._popular(tf.shape(users)[0], self.retrieval_candidates)
        items = tf.where(users[:, None] >= 0, items, popular)
        top = tf.where(users[:, None] >= 0, top, popular_scores)
        return {"item_ids": tf.gather(self.item_ids, items), "scores": top}

    @tf.function(input_signature=[_IDS])
    def recommend(self, user_id):
        user_id = serving._vector(user_id, schema.USER_ID, self.max_request_users)
        users = self._users(user_id)
        scores = self.propagation.scores(users, *self._no_events())
        none = tf.zeros([0], tf.int32)
        return self._top(users, scores, none, none, users >= 0, self.top_k)

    @tf.function(input_signature=list(serving.HISTORY_SPEC))
    def recommend_from_history(self, user_id, history_item_id, history_behavior, history_row):
        users, (event_rows, event_items, event_branches), unknown = self._events(
            user_id, history_item_id, history_behavior, history_row
        )
        batch = tf.shape(users)[0]
        scores = self.propagation.scores(users, event_rows, event_items, event_branches)
        bought = event_branches == 0
        has_events = tf.math.unsorted_segment_sum(tf.ones_like(event_rows), event_rows, batch) > 0
        result = self._top(
            users,
            scores,
            tf.boolean_mask(event_rows, bought),
            tf.boolean_mask(event_items, bought),
            (users >= 0) | has_events,
            self.top_k,
        )
        return {**result, "unknown_events": unknown}

    def signatures(self) -> dict:
        """The SavedModel signatures by name."""
        return {
            schema.SERVING_DEFAULT: self.score.get_concrete_function(),
            schema.RECOMMEND: self.recommend.get_concrete_function(),
            schema.RETRIEVE: self.retrieve.get_concrete_function(),
            schema.RECOMMEND_FROM_HISTORY: self.recommend_from_history.get_concrete_function(),
        }


def from_training(
    scorer: cascade.CascadeScorer,
    split: splits_lib.Split,
    *,
    user_tokens: np.ndarray,
    item_tokens: np.ndarray,
    top_k: int,
    retrieval_candidates: int,
    exclude_seen: bool,
    max_request_users: int = serving.MAX_REQUEST_USERS,
    max_request_pairs: int = serving.MAX_REQUEST_PAIRS,
) -> CascadeModule:
    """A CascadeModule whose purchases and popularity come from the training split."""
    return CascadeModule(
        scorer,
        user_tokens=user_tokens,
        item_tokens=item_tokens,
        **serving.catalog_tables(split),
        top_k=top_k,
        retrieval_candidates=min(retrieval_candidates, split.num_items),
        exclude_seen=exclude_seen,
        max_request_users=max_request_users,
        max_request_pairs=max_request_pairs,
    )
