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

Both sums walk only the edges they need: the row's history items' users,
then those users' items, gathered from each behavior's two CSR layouts
(user by user, item by item) in chunks of at most `CHUNK_EDGES` edges and
added into the [B, users] and [B, items] blocks. A request's work is the
edges within two steps of its histories, not every edge of the graph (a
sparse-dense product over the whole graph cost the same for every request:
1.6 s per `recommend` at 3.7M items); its memory is those two dense blocks
per row and one chunk, so the module caps its rows as before. Over the
whole catalog only a row's history items (and, for the cross reach, its
training buys) need the corrections above; every other item's signal is
max(z / d_u, 0), one dense pass, and the exact values are written over it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mmrec_tf.pipelines import graph_signals as graph_signals_lib

# Most edges one step of the walk gathers at once (each about 24 bytes
# while in flight: 24 MiB a chunk).
CHUNK_EDGES = 1 << 20


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
        # Item by item: the users of each item (the same edges as `counts`).
        by_item = graph.binary.T.tocsr()
        by_item.sort_indices()
        self.item_users = _variable(by_item.indices.astype(np.int32), tf.int32, "item_users")
        self.item_splits = _variable(by_item.indptr.astype(np.int64), tf.int64, "item_splits")
        self.user_degree = _variable(
            graph.user_degree.astype(np.float32), tf.float32, "user_degree"
        )
        self.item_degree = _variable(
            graph.item_degree.astype(np.float32), tf.float32, "item_degree"
        )
        self.item_self = _variable(graph.item_self.astype(np.float32), tf.float32, "item_self")
        # 1 / d_v and 1 / sqrt(d_i) (0 at degree 0), read by every walk.
        self.inverse_user_degree = _variable(
            graph_signals_lib.safe_power(graph.user_degree, -1.0).astype(np.float32),
            tf.float32,
            "inverse_user_degree",
        )
        self.inverse_sqrt_item_degree = _variable(
            graph_signals_lib.safe_power(graph.item_degree, -0.5).astype(np.float32),
            tf.float32,
            "inverse_sqrt_item_degree",
        )


def listed_positions(splits: tf.Variable, nodes: tf.Tensor):
    """(owner, position): every position listed under each node of a CSR's
    `splits` (nodes < 0 list nothing), owner the node's index in `nodes`; the
    work is the listed entries, never the whole table."""
    nodes = tf.cast(nodes, tf.int64)
    starts = tf.gather(splits, tf.maximum(nodes, 0))
    limits = tf.where(nodes >= 0, tf.gather(splits, tf.maximum(nodes, 0) + 1), starts)
    ranges = tf.ragged.range(starts, limits)
    return tf.cast(ranges.value_rowids(), tf.int32), ranges.flat_values


def _spread(splits, targets, rows, nodes, weights, shape) -> tf.Tensor:
    """[B, W] dense: out[rows[k], t] += weights[k] for every t listed under
    nodes[k] in the CSR (`splits`, `targets`), a chunk of at most
    CHUNK_EDGES listed entries at a time (a node with more is a chunk alone)."""
    nodes = tf.cast(nodes, tf.int64)
    lengths = tf.gather(splits, nodes + 1) - tf.gather(splits, nodes)
    ends = tf.cumsum(lengths)
    count = tf.size(nodes)

    def chunk(start, out):
        before = tf.where(start > 0, tf.gather(ends, tf.maximum(start - 1, 0)), 0)
        stop = tf.searchsorted(ends, [before + CHUNK_EDGES], side="right", out_type=tf.int32)[0]
        stop = tf.minimum(tf.maximum(stop, start + 1), count)
        owner, position = listed_positions(splits, nodes[start:stop])
        index = tf.stack([tf.gather(rows[start:stop], owner), tf.gather(targets, position)], axis=1)
        added = tf.gather(weights[start:stop], owner)
        return stop, tf.tensor_scatter_nd_add(out, index, added)

    _, out = tf.while_loop(
        lambda start, out: start < count,
        chunk,
        (tf.constant(0, tf.int32), tf.zeros(shape, tf.float32)),
    )
    return out


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
        """The dense float32 blocks one request row holds at once, in bytes (the
        serving module caps its rows by it): the walk's [users] block, and
        [items] blocks for every behavior's reach and every supportive
        behavior's cross reach (`whole`), their sum, and three in flight (the
        walk's, and the dense pass's temporaries)."""
        walks = 2 * len(self.graphs) - 1
        return (self.num_users + (walks + 4) * self.num_items) * 4

    def _history(self, graph: _BehaviorGraph, users, event_rows, event_items):
        """Each row's b-history: sorted distinct keys row * items + item, and their
        record counts (training records plus the row's events)."""
        train_rows, position = listed_positions(graph.count_splits, users)
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
        rows, position = listed_positions(graph.count_splits, users)
        items = tf.gather(graph.count_items, position)
        # The CSR lists are sorted by item, rows come in order: the keys are sorted.
        return tf.cast(rows, tf.int64) * self.num_items + tf.cast(items, tf.int64)

    def _two_steps(self, source: _BehaviorGraph, destination: _BehaviorGraph, users, keys):
        """[B, items]: sum over the row's `source` history j and other users v of
        A_s[v, j] / (sqrt(d_j) d_v) * A_d[v, i] (times 1 / sqrt(d_i) of the
        destination, `_pairs_of`, gives the two steps); and the rows' degrees.
        Only the edges within two steps of the histories are read."""
        batch = tf.shape(users)[0]
        rows = tf.cast(keys // self.num_items, tf.int32)
        items = tf.cast(keys % self.num_items, tf.int32)
        degree = tf.math.unsorted_segment_sum(tf.ones_like(rows, tf.float32), rows, batch)
        # [B, users]: sum_j A[v, j] / sqrt(d_j) over the row's history.
        weights = tf.gather(source.inverse_sqrt_item_degree, items)
        middle = _spread(
            source.item_splits, source.item_users, rows, items, weights, [batch, self.num_users]
        )
        known = tf.where(users >= 0)[:, 0]
        own = tf.stack([tf.cast(known, tf.int32), tf.gather(users, known)], axis=1)
        middle = tf.tensor_scatter_nd_update(middle, own, tf.zeros(tf.shape(known)[:1]))
        # [B, items]: the reached users' items in the destination graph, each
        # user's sum / d_v.
        reached = tf.cast(tf.where(middle != 0), tf.int32)
        values = tf.gather_nd(middle, reached) * tf.gather(
            source.inverse_user_degree, reached[:, 1]
        )
        z = _spread(
            destination.count_splits,
            destination.count_items,
            reached[:, 0],
            reached[:, 1],
            values,
            [batch, self.num_items],
        )
        return z, degree

    def _reach_pairs(self, branch: int, users, keys, degree, rows, items, z) -> tf.Tensor:
        """[n] the scaled reach of the pairs (rows[k], items[k]) from their two-step
        sums z[k]: the pair's own edge and the row's own path left out."""
        graph = self.graphs[branch]
        query = tf.cast(rows, tf.int64) * self.num_items + tf.cast(items, tf.int64)
        in_history = tf.cast(found(keys, query), tf.float32)
        in_training = tf.cast(found(self._training_keys(graph, users), query), tf.float32)
        train_degree = tf.where(users >= 0, tf.gather(graph.user_degree, tf.maximum(users, 0)), 0.0)
        di = tf.gather(graph.item_degree, items)
        item_self = tf.gather(graph.item_self, items)
        own = in_training * tf.gather(_inverse(train_degree), rows)
        z -= in_history * (item_self - own) * _inverse(di)
        scale = _inverse(tf.gather(degree, rows) - in_history) * tf.sqrt(
            di * _inverse(di - in_training)
        )
        return tf.maximum(z * scale, 0.0) * self.reach_scale[branch]

    def _cross_pairs(self, branch: int, users, degree, rows, items, z) -> tf.Tensor:
        """[n] the scaled cross reach of the pairs from their two-step sums z."""
        target = self.graphs[0]
        query = tf.cast(rows, tf.int64) * self.num_items + tf.cast(items, tf.int64)
        bought = tf.cast(found(self._training_keys(target, users), query), tf.float32)
        di = tf.gather(target.item_degree, items)
        scale = tf.gather(_inverse(degree), rows) * tf.sqrt(di * _inverse(di - bought))
        return tf.maximum(z * scale, 0.0) * self.reach_scale[len(self.graphs) + branch - 1]

    def _pairs_of(self, graph, z, degree, scale, candidates, pairs_fn, exceptions):
        """The signal of `_two_steps`'s z [B, items] into `graph` at every item
        or at the candidates. At candidates [B, W]: `pairs_fn` of every (row,
        candidate, two-step sum). For every item: off the `exceptions` (sorted
        keys: the only pairs with an edge or a path of their own to leave
        out) it is max(z / (sqrt(d_i) d_u), 0) * scale, a few dense passes;
        on them, `pairs_fn`'s exact values are written over it."""
        batch = tf.shape(z)[0]
        if candidates is not None:
            rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(candidates))
            at = tf.gather(z, candidates, batch_dims=1) * tf.gather(
                graph.inverse_sqrt_item_degree, candidates
            )
            flat = pairs_fn(
                tf.reshape(rows, [-1]), tf.reshape(candidates, [-1]), tf.reshape(at, [-1])
            )
            return tf.reshape(flat, tf.shape(candidates))
        rows = tf.cast(exceptions // self.num_items, tf.int32)
        items = tf.cast(exceptions % self.num_items, tf.int32)
        index = tf.stack([rows, items], axis=1)
        at = tf.gather_nd(z, index) * tf.gather(graph.inverse_sqrt_item_degree, items)
        exact = pairs_fn(rows, items, at)
        plain = z * graph.inverse_sqrt_item_degree[None, :] * _inverse(degree)[:, None]
        return tf.tensor_scatter_nd_update(tf.maximum(plain, 0.0) * scale, index, exact)

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
        return self._pairs_of(
            graph,
            z,
            degree,
            self.reach_scale[branch],
            candidates,
            lambda rows, items, at: self._reach_pairs(branch, users, keys, degree, rows, items, at),
            keys,
        )

    def cross(self, branch: int, users, keys, candidates=None) -> tf.Tensor:
        """[B, items] (or [B, W]) the scaled cross reach of supportive `branch`:
        the target graph from the rows' b-histories (`graph_signals`, `cross_b`)."""
        graph, target = self.graphs[branch], self.graphs[0]
        z, degree = self._two_steps(graph, target, users, keys)
        return self._pairs_of(
            target,
            z,
            degree,
            self.reach_scale[len(self.graphs) + branch - 1],
            candidates,
            lambda rows, items, at: self._cross_pairs(branch, users, degree, rows, items, at),
            self._training_keys(target, users),
        )

    def whole(self, users, event_rows, event_items, event_branches) -> dict:
        """Every item's scaled reach and cross reach for the rows, each walked once:
        {"reach": [B, items] per behavior, "cross": [B, items] per supportive
        behavior, "histories": `histories(...)`}. `recommend` ranks the catalog
        by the reach and cross sums and reads its candidates' columns, and the
        histories' touched counts, from the same result (`grid(..., whole=...)`)."""
        histories = self.histories(users, event_rows, event_items, event_branches)
        return {
            "reach": [self.reach(b, users, k) for b, (k, _) in enumerate(histories)],
            "cross": [self.cross(b, users, k) for b, (k, _) in enumerate(histories) if b > 0],
            "histories": histories,
        }

    def grid(
        self, users, candidates, event_rows, event_items, event_branches, whole=None
    ) -> tf.Tensor:
        """[B, W, num_signals] the signals of each row's candidates.

        Args:
          users: [B] user indices, -1 for a new user.
          candidates: [B, W] item indices (-1 pads: their signals are 0).
          event_rows: [N] the row of each request event.
          event_items: [N] its item index.
          event_branches: [N] its behavior.
          whole: `whole(...)` of the same rows and events, read at the
            candidates instead of walking the graphs again; None walks.
        """
        valid = tf.cast(candidates >= 0, tf.float32)
        candidates = tf.maximum(candidates, 0)
        batch = tf.shape(users)[0]
        row_ids = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(candidates))
        query = tf.cast(row_ids, tf.int64) * self.num_items + tf.cast(candidates, tf.int64)
        touched, reach, cross = [], [], []
        histories = (
            self.histories(users, event_rows, event_items, event_branches)
            if whole is None
            else whole["histories"]
        )
        for branch, (keys, counts) in enumerate(histories):
            if branch > 0:
                _, count = lookup(keys, counts, query)
                touched.append(tf.math.log1p(count))
                if whole is None:
                    cross.append(self.cross(branch, users, keys, candidates))
                else:
                    cross.append(tf.gather(whole["cross"][branch - 1], candidates, batch_dims=1))
            if whole is None:
                reach.append(self.reach(branch, users, keys, candidates))
            else:
                reach.append(tf.gather(whole["reach"][branch], candidates, batch_dims=1))
        return tf.stack(touched + reach + cross, axis=-1) * valid[..., None]

    def histories(self, users, event_rows, event_items, event_branches) -> list:
        """Per behavior, each row's (sorted b-history keys, their counts): the
        user's training edges merged with the request's events."""
        out = []
        for branch, graph in enumerate(self.graphs):
            mine = event_branches == branch
            out.append(
                self._history(
                    graph,
                    users,
                    tf.boolean_mask(event_rows, mine),
                    tf.boolean_mask(event_items, mine),
                )
            )
        return out
