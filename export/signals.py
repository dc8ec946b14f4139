"""The graph signals inside a SavedModel: `pipelines.graph_signals` per request.

A scorer built with `--graph_signals` scores a (user, item) pair with what
each behavior's training graph says about it. `SignalTables` holds those
graphs as variables and computes, for a block of request rows and their
candidate items, exactly the signals `GraphSignals.grid` computed in
training and evaluation: a known user without request events gets the same
numbers (tested), so a served ranking is the evaluated one.

A request row may carry events (an item and a behavior each, from
`recommend_from_history`). They join the row's training items of that
behavior (the user's b-history N(u) is the union) and count as records of
`touched_<b>`; the graphs themselves (the other users' edges and the item
degrees) stay the training graphs. For a known user the user's own node is
left out of the two-step reach (v != u), as in training; an unknown user
has no node to leave out.

Per behavior b and row u with b-history N(u) (d_u = |N(u)|), candidate i:

    middle[v] = 1/d_v sum_{j in N(u)} A[v, j] / sqrt(d_j)    (v != u)
    z[i]      = 1/sqrt(d_i) sum_v A[v, i] middle[v]
              - [i in N(u)] (self_i - [u has b with i in training] / d_u^train) / d_i
    reach     = max(z / (d_u - [i in N(u)]) * sqrt(d_i / (d_i - [(u, i) a training edge])), 0)

two sparse-dense products over the behavior's edges per request: memory is
[users + 2 items] floats per request row, so the module caps its rows.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mmrec_tf.pipelines import graph_signals as graph_signals_lib


def _variable(values, dtype, name: str) -> tf.Variable:
    return tf.Variable(np.asarray(values), dtype=dtype, trainable=False, name=name)


def _inverse(x: tf.Tensor) -> tf.Tensor:
    """1 / x where x > 0, else 0 (as `graph_signals.safe_power(x, -1)`)."""
    return tf.where(x > 0, 1.0 / tf.where(x > 0, x, 1.0), 0.0)


class _BehaviorGraph(tf.Module):
    """One behavior's training graph as variables."""

    def __init__(self, graph, name: str):
        super().__init__(name=name)
        counts = graph.counts.tocsr()
        counts.sort_indices()
        self.count_items = _variable(counts.indices.astype(np.int32), tf.int32, "count_items")
        self.count_values = _variable(counts.data.astype(np.float32), tf.float32, "count_values")
        self.count_splits = _variable(counts.indptr.astype(np.int64), tf.int64, "count_splits")
        # [items, users]: entry (i, v) = A[v, i] / sqrt(d_i).
        edges = graph.binary.T.tocoo()
        order = np.lexsort((edges.col, edges.row))
        rows, cols = edges.row[order], edges.col[order]
        values = graph_signals_lib.safe_power(graph.item_degree[rows], -0.5)
        self.indices = _variable(
            np.stack([rows, cols], axis=1).astype(np.int64), tf.int64, "indices"
        )
        self.values = _variable(values.astype(np.float32), tf.float32, "values")
        self.shape = (int(graph.binary.shape[1]), int(graph.binary.shape[0]))
        self.user_degree = _variable(
            graph.user_degree.astype(np.float32), tf.float32, "user_degree"
        )
        self.item_degree = _variable(
            graph.item_degree.astype(np.float32), tf.float32, "item_degree"
        )
        self.item_self = _variable(graph.item_self.astype(np.float32), tf.float32, "item_self")

    def matrix(self) -> tf.sparse.SparseTensor:
        return tf.sparse.SparseTensor(self.indices, self.values, self.shape)


def _rows(values: tf.Variable, splits: tf.Variable, users: tf.Tensor):
    """(row, position in `values`) of every listed entry of the known users, flat."""
    lists = tf.RaggedTensor.from_row_splits(tf.range(tf.size(values)), splits)
    lists = tf.ragged.boolean_mask(tf.gather(lists, tf.maximum(users, 0)), users >= 0)
    return tf.cast(lists.value_rowids(), tf.int32), lists.flat_values


def lookup(keys: tf.Tensor, values: tf.Tensor, query: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(found, value) of each query key in sorted `keys`; value 0 where not found."""
    if_empty = tf.size(keys) == 0
    last = tf.maximum(tf.size(keys, out_type=tf.int64) - 1, 0)
    flat = tf.reshape(query, [-1])
    position = tf.minimum(tf.searchsorted(keys, flat, out_type=tf.int64), last)
    safe_keys = tf.cond(if_empty, lambda: tf.constant([-1], tf.int64), lambda: keys)
    safe_values = tf.cond(if_empty, lambda: tf.zeros([1], values.dtype), lambda: values)
    found = tf.gather(safe_keys, position) == flat
    value = tf.where(found, tf.gather(safe_values, position), tf.zeros_like(flat, values.dtype))
    return tf.reshape(found, tf.shape(query)), tf.reshape(value, tf.shape(query))


def found(keys: tf.Tensor, query: tf.Tensor) -> tf.Tensor:
    """Whether each query key is in sorted `keys`."""
    return lookup(keys, tf.zeros(tf.shape(keys), tf.float32), query)[0]


class SignalTables(tf.Module):
    """The training graphs of every behavior, and the signals of candidate pairs.

    Args:
      signals: the `GraphSignals` the scorer was trained with.
    """

    def __init__(self, signals: graph_signals_lib.GraphSignals):
        super().__init__(name="graph_signals")
        self.num_users, self.num_items = signals.num_users, signals.num_items
        self.num_signals = signals.num_signals
        self.names = tuple(signals.names)
        self.graphs = [_BehaviorGraph(g, f"behavior_{b}") for b, g in enumerate(signals.graphs)]
        self.reach_scale = _variable(signals.reach_scale.astype(np.float32), tf.float32, "scale")

    @property
    def bytes_per_row(self) -> int:
        """The dense floats one request row takes, in bytes: [items], [users] and
        [items] float32 blocks, a few times over (the serving module caps its
        rows by it)."""
        return (self.num_users + 2 * self.num_items) * 4 * 2

    def _history(self, graph: _BehaviorGraph, users, event_rows, event_items):
        """Each row's b-history: sorted distinct keys row * items + item, and their
        record counts (training records plus the row's events)."""
        train_rows, position = _rows(graph.count_items, graph.count_splits, users)
        rows = tf.concat([train_rows, event_rows], axis=0)
        items = tf.concat([tf.gather(graph.count_items, position), event_items], axis=0)
        counts = tf.concat(
            [tf.gather(graph.count_values, position), tf.ones(tf.shape(event_rows), tf.float32)],
            axis=0,
        )
        keys = tf.cast(rows, tf.int64) * self.num_items + tf.cast(items, tf.int64)
        distinct, index = tf.unique(keys)
        totals = tf.math.unsorted_segment_sum(counts, index, tf.size(distinct))
        order = tf.argsort(distinct)
        return tf.gather(distinct, order), tf.gather(totals, order)

    def _training_keys(self, graph: _BehaviorGraph, users):
        """Sorted keys row * items + item of the known users' training b-edges."""
        rows, position = _rows(graph.count_items, graph.count_splits, users)
        items = tf.gather(graph.count_items, position)
        # The CSR lists are sorted by item, rows come in order: the keys are sorted.
        return tf.cast(rows, tf.int64) * self.num_items + tf.cast(items, tf.int64)

    def _two_steps(self, source: _BehaviorGraph, destination: _BehaviorGraph, users, keys):
        """[B, items]: sum over the row's `source` history j and other users v of
        A_s[v, j] / (sqrt(d_j) d_v) * A_d[v, i] / sqrt(d_i); and the rows' degrees."""
        batch = tf.shape(users)[0]
        rows = tf.cast(keys // self.num_items, tf.int32)
        items = tf.cast(keys % self.num_items, tf.int32)
        degree = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.float32), rows, batch)
        x = tf.scatter_nd(
            tf.stack([items, rows], axis=1), tf.ones(tf.shape(rows)), [self.num_items, batch]
        )
        # [users, B]: sum_j A[v, j] / sqrt(d_j) over the row's history (the
        # matrix holds the 1 / sqrt(d_j)), then / d_v.
        middle = tf.sparse.sparse_dense_matmul(source.matrix(), x, adjoint_a=True)
        middle *= _inverse(source.user_degree)[:, None]
        known = tf.where(users >= 0)[:, 0]
        own = tf.stack([tf.gather(users, known), tf.cast(known, tf.int32)], axis=1)
        middle = tf.tensor_scatter_nd_update(middle, own, tf.zeros(tf.shape(known)[:1]))
        z = tf.transpose(tf.sparse.sparse_dense_matmul(destination.matrix(), middle))
        return z, degree

    def _query(self, users, candidates):
        batch = tf.shape(users)[0]
        if candidates is None:
            candidates = tf.tile(tf.range(self.num_items)[None, :], [batch, 1])
        row_ids = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(candidates))
        query = tf.cast(row_ids, tf.int64) * self.num_items + tf.cast(candidates, tf.int64)
        return candidates, query

    def reach(self, branch: int, users, keys, candidates=None) -> tf.Tensor:
        """[B, items] (or [B, W] at `candidates`) the scaled reach of behavior `branch`.

        Args:
          branch: the behavior.
          users: [B] user indices, -1 for a new user.
          keys: the rows' sorted b-history keys (`_history`).
          candidates: [B, W] item indices (>= 0), or None for every item.
        """
        graph = self.graphs[branch]
        z, degree = self._two_steps(graph, graph, users, keys)
        candidates, query = self._query(users, candidates)
        z = tf.gather(z, candidates, batch_dims=1)
        in_history = tf.cast(found(keys, query), tf.float32)
        in_training = tf.cast(found(self._training_keys(graph, users), query), tf.float32)
        train_degree = tf.where(users >= 0, tf.gather(graph.user_degree, tf.maximum(users, 0)), 0.0)
        di = tf.gather(graph.item_degree, candidates)
        z -= (
            in_history
            * (
                tf.gather(graph.item_self, candidates)
                - in_training * _inverse(train_degree)[:, None]
            )
            * _inverse(di)
        )
        scale = _inverse(degree[:, None] - in_history) * tf.sqrt(di * _inverse(di - in_training))
        return tf.maximum(z * scale, 0.0) * self.reach_scale[branch]

    def cross(self, branch: int, users, keys, candidates=None) -> tf.Tensor:
        """[B, items] (or [B, W]) the scaled cross reach of supportive `branch`:
        the target graph from the rows' b-histories (`graph_signals`, `cross_b`)."""
        graph, target = self.graphs[branch], self.graphs[0]
        z, degree = self._two_steps(graph, target, users, keys)
        candidates, query = self._query(users, candidates)
        z = tf.gather(z, candidates, batch_dims=1)
        bought = tf.cast(found(self._training_keys(target, users), query), tf.float32)
        di = tf.gather(target.item_degree, candidates)
        scale = _inverse(degree)[:, None] * tf.sqrt(di * _inverse(di - bought))
        column = len(self.graphs) + branch - 1
        return tf.maximum(z * scale, 0.0) * self.reach_scale[column]

    def grid(self, users, candidates, event_rows, event_items, event_branches) -> tf.Tensor:
        """[B, W, num_signals] the signals of each row's candidates.

        Args:
          users: [B] user indices, -1 for a new user.
          candidates: [B, W] item indices (-1 pads: their signals are 0).
          event_rows: [N] the row of each request event.
          event_items: [N] its item index.
          event_branches: [N] its behavior.
        """
        valid = tf.cast(candidates >= 0, tf.float32)
        candidates = tf.maximum(candidates, 0)
        batch = tf.shape(users)[0]
        row_ids = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(candidates))
        query = tf.cast(row_ids, tf.int64) * self.num_items + tf.cast(candidates, tf.int64)
        touched, reach, cross = [], [], []
        for branch, graph in enumerate(self.graphs):
            mine = event_branches == branch
            keys, counts = self._history(
                graph, users, tf.boolean_mask(event_rows, mine), tf.boolean_mask(event_items, mine)
            )
            if branch > 0:
                _, count = lookup(keys, counts, query)
                touched.append(tf.math.log1p(count))
                cross.append(self.cross(branch, users, keys, candidates))
            reach.append(self.reach(branch, users, keys, candidates))
        return tf.stack(touched + reach + cross, axis=-1) * valid[..., None]

    def history_keys(self, users, event_rows, event_items, event_branches) -> list:
        """Per behavior, each row's sorted b-history keys (for `reach` over every item)."""
        out = []
        for branch, graph in enumerate(self.graphs):
            mine = event_branches == branch
            keys, _ = self._history(
                graph, users, tf.boolean_mask(event_rows, mine), tf.boolean_mask(event_items, mine)
            )
            out.append(keys)
        return out
