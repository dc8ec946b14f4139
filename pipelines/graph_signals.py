"""What each behavior's training graph says about a (user, item) pair.

For behavior b (its binary user-item matrix A_b over distinct pairs, user
degrees d_u, item degrees d_i), a pair (u, i) gets:

- `touched_b`: log(1 + the number of u's b-records on i), for the supportive
  behaviors (the target's would be the training label itself);
- `reach_b`: how strongly i is reached from u's other b-items through other
  users' b-edges, two steps on the symmetric-normalized graph,

      reach_b(u, i) = 1/d_u * sum_{j in N(u), j != i} sum_{v != u}
                      A[v, j] A[v, i] / (sqrt(d_j) d_v sqrt(d_i)),

  with the degrees of the graph *without the pair's own edge* (d_u and d_i
  one less where u had b with i). So a pair's own edge never contributes:
  a training buy gets exactly the signal it would get were it held out, as
  a test buy is (PROTOCOL.md, "Features from the interaction graph").

- `cross_b` (supportive b): how strongly the target graph reaches i from
  u's b-items: users who had b with those items bought i,

      cross_b(u, i) = 1/d_u^b * sum_{j in N_b(u)} sum_{v != u}
                      A_b[v, j] A_t[v, i] / (sqrt(d_j^b) d_v^b sqrt(d_i^t)),

  d_i^t without the pair's own buy (the path through the item itself, j =
  i, stays: how often those who viewed i bought it). This is the step a
  cascade takes from a supportive behavior to the target.

Each reach and cross column is divided by its mean over a seeded sample of the
training buys (a constant of the training graph), so that the signals enter
a branch's first layer at the scale of its embeddings: raw reach values are
around 1e-4 on the real logs, where a layer initialized at 0.01 would hardly
move them.

`GraphSignals(split)` builds the graphs from the training records;
`pairs(users, items)` and `grid(users, items)` compute the signals in
batches of users with `scipy.sparse` products. Where a behavior's users link
few enough item pairs, its two steps are one precomputed item-item matrix
(the rows of a batch's histories times its candidate columns); otherwise
they go through the users, with memory by the batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse

from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits as splits_lib

# Most linked item pairs (sum over users of their degree squared) for which a
# behavior's item-item matrix is built: about 12 bytes each. Beyond it the
# reach is computed through the users (slower, memory by the batch).
ITEM_ITEM_BUDGET = 100_000_000


@dataclasses.dataclass
class _Graph:
    """One behavior's training graph, with the products the signals need."""

    counts: sparse.csr_matrix  # [users, items] records per pair
    binary: sparse.csr_matrix  # [users, items] 1 per distinct pair
    user_degree: np.ndarray  # [users]
    item_degree: np.ndarray  # [items]
    left: sparse.csr_matrix  # [items, users] A^T with entry (j, v) / (sqrt(d_j) d_v)
    right: sparse.csc_matrix  # [users, items] A with entry (v, i) / sqrt(d_i)
    item_self: np.ndarray  # [items] sum_{v in N(i)} 1 / d_v
    # [items, items] CSC (j, i) = sum_v A[v,j] A[v,i] / (sqrt(d_j) d_v sqrt(d_i)), or None
    item_item: sparse.csc_matrix | None = None


# Below this a reach or cross value is the float residue of subtracting the
# pair's own path from the sum that holds it (about 1e-16 of the path), not a
# path: the smallest real term, 1 / (sqrt(d_j) d_v sqrt(d_i)), is above 1e-10
# for degrees up to 1e5 and 1e-11 beyond a million.
RESIDUE = 1e-13


def safe_power(x: np.ndarray, power: float) -> np.ndarray:
    """x ** power where x > 0, else 0 (a degree of 0 contributes nothing)."""
    out = np.zeros(np.shape(x), np.float64)
    positive = np.asarray(x) > 0
    out[positive] = np.asarray(x)[positive] ** power
    return out


def _inverse(x: np.ndarray, power: float) -> np.ndarray:
    return safe_power(x, -power)


def behavior_counts(split: splits_lib.Split, branch: int) -> sparse.csr_matrix:
    """[users, items] CSR: each pair's number of training records of `branch`."""
    keep = split.train_branches == branch
    counts = sparse.csr_matrix(
        (np.ones(int(keep.sum())), (split.train_users[keep], split.train_items[keep])),
        shape=(split.num_users, split.num_items),
    )
    counts.sum_duplicates()
    return counts


def binary(counts: sparse.csr_matrix) -> sparse.csr_matrix:
    """The same pattern with every entry 1: a pair counts once, however many records."""
    out = counts.copy()
    out.data[:] = 1.0
    return out


def _whole(items: np.ndarray, num_items: int) -> bool:
    """Whether `items` are enough of the catalog that slicing its columns costs
    more than computing them all (a full-ranking grid)."""
    return len(items) * 4 >= num_items


def _product(left: sparse.csr_matrix, right: sparse.csc_matrix, items, num_items):
    """[B, len(items)] dense `left @ right[:, items]` ([B, K] by [K, I]).

    For a full-ranking grid, the transpose of `right.T @ left.T`: a CSC
    matrix's transpose is CSR as stored, so `right` is neither copied nor
    converted (`left @ right` converts the whole of `right` to CSR, and
    `right[:, items]` copies it: per call, each the size of the matrix). For
    a few items (a training grid), their columns are selected first.
    """
    if not _whole(items, num_items):
        return (left @ right[:, items]).toarray()
    return (right.T @ left.T.tocsr()).toarray().T[:, items]


def _item_steps(rows: sparse.csr_matrix, item_item: sparse.csc_matrix, items, num_items):
    """[B, len(items)] dense `rows @ item_item[:, items]` for the symmetric
    item-item matrix: for a full-ranking grid its transpose, CSR as stored,
    is the matrix itself, and the product reads only the rows' items' rows."""
    if not _whole(items, num_items):
        return (rows @ item_item[:, items]).toarray()
    return (rows @ item_item.T).toarray()[:, items]


class GraphSignals:
    """Per-behavior signals of (user, item) pairs from a split's training graph.

    Args:
      split: the training data (only its training records are read).
      item_item_budget: build a behavior's item-item two-step matrix (about
        10x faster batches) when its users link at most this many item
        pairs; otherwise go through the users.

    Attributes:
      names: the signals' names, in column order: `touched_<b>` for each
        supportive behavior, `reach_<b>` for every behavior (target first),
        then `cross_<b>` for each supportive behavior.
    """

    def __init__(self, split: splits_lib.Split, *, item_item_budget: int = ITEM_ITEM_BUDGET):
        self.num_users, self.num_items = split.num_users, split.num_items
        behaviors = split.behaviors.behaviors
        self.graphs = []
        for branch in range(len(behaviors)):
            counts = behavior_counts(split, branch)
            edges = binary(counts)
            du = np.asarray(edges.sum(axis=1)).ravel()
            di = np.asarray(edges.sum(axis=0)).ravel()
            left = sparse.diags(_inverse(di, 0.5)) @ edges.T @ sparse.diags(_inverse(du, 1.0))
            right = edges @ sparse.diags(_inverse(di, 0.5))
            item_self = np.asarray(edges.T @ _inverse(du, 1.0)).ravel()
            item_item = None
            # The two steps once for every item pair, where at most
            # `item_item_budget` pairs can be linked (sum_v d_v^2 bounds them).
            if float(np.square(du).sum()) <= item_item_budget:
                item_item = (left.tocsr() @ right.tocsr()).tocsc()
            self.graphs.append(
                _Graph(counts, edges, du, di, left.tocsr(), right.tocsc(), item_self, item_item)
            )
        # Cross steps, supportive b -> target: (j, i) = sum_v A_b[v,j] A_t[v,i]
        # / (sqrt(d_j^b) d_v^b sqrt(d_i^t)), where the pairs fit the budget.
        target = self.graphs[0]
        self.cross = []
        for graph in self.graphs[1:]:
            linked = float((graph.user_degree * target.user_degree).sum())
            self.cross.append(
                (graph.left @ target.right.tocsr()).tocsc() if linked <= item_item_budget else None
            )
        self.names = schema.signal_names(behaviors)
        # The scale is measured on unscaled signals (`grid` applies it).
        num_scaled = len(self.names) - (len(behaviors) - 1)
        self.reach_scale = np.ones(num_scaled, np.float64)
        self.reach_scale = self._reach_scale(split)

    @property
    def num_signals(self) -> int:
        return len(self.names)

    def _reach_scale(self, split: splits_lib.Split, sample: int = 2048) -> np.ndarray:
        """1 / the mean reach of each behavior over a seeded sample of training buys."""
        buys = np.flatnonzero(split.train_branches == 0)
        if not len(buys):
            return np.ones(len(self.names) - (len(self.graphs) - 1), np.float64)
        picked = np.random.default_rng(0).choice(buys, min(sample, len(buys)), replace=False)
        values = self.pairs(split.train_users[picked], split.train_items[picked])
        means = values[:, len(self.graphs) - 1 :].astype(np.float64).mean(axis=0)
        return np.where(means > 0, 1.0 / np.maximum(means, 1e-30), 1.0)

    def _cross(self, b: int, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] how strongly the target reaches each item
        from the users' b-histories (supportive b), the user's own node and
        the pair's own target edge left out."""
        graph, target = self.graphs[b], self.graphs[0]
        rows = graph.binary[users]  # [B, I]
        bought = np.asarray(target.binary[users][:, items].todense())  # [B, C]
        du = graph.user_degree[users][:, None]
        di = target.item_degree[items][None, :]
        cross = self.cross[b - 1]
        if cross is not None:
            z = _product(rows, cross, items, self.num_items)
            # v != u: the user's own path j -> u -> i exists where u bought i.
            own_path = np.asarray(rows @ _inverse(graph.item_degree, 0.5)).ravel()[:, None]
            z -= bought * own_path * _inverse(du, 1.0) * _inverse(di, 0.5)
        else:
            middle = (rows @ graph.left).tocsr()  # [B, U]
            batch = np.arange(len(users))
            own_path = np.asarray(middle[batch, users]).ravel()
            middle = middle - sparse.csr_matrix((own_path, (batch, users)), shape=middle.shape)
            z = _product(middle, target.right, items, self.num_items)
        z[z < RESIDUE] = 0.0
        # The target degree of i without the pair's own buy.
        scale = _inverse(du, 1.0) * np.sqrt(di * _inverse(di - bought, 1.0))
        return (z * scale).astype(np.float32)

    def _reach(self, graph: _Graph, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] reach of every pair, the pair's own edge left out."""
        rows = graph.binary[users]  # [B, I]
        own = np.asarray(rows[:, items].todense())  # [B, C] 1 where (u, i) is an edge
        du = graph.user_degree[users][:, None]
        di = graph.item_degree[items][None, :]
        if graph.item_item is not None:
            z = _item_steps(rows, graph.item_item, items, self.num_items)
            # v != u: the user's own path j -> u -> i, where (u, i) is an edge.
            own_path = np.asarray(rows @ _inverse(graph.item_degree, 0.5)).ravel()[:, None]
            z -= own * own_path * _inverse(du, 1.0) * _inverse(di, 0.5)
        else:
            middle = (rows @ graph.left).tocsr()  # [B, U]: (u, v) = sum_j A[u,j] A[v,j] / ...
            # v != u: the user's own entry taken out of its row.
            batch = np.arange(len(users))
            own_path = np.asarray(middle[batch, users]).ravel()
            middle = middle - sparse.csr_matrix((own_path, (batch, users)), shape=middle.shape)
            z = _product(middle, graph.right, items, self.num_items)  # [B, C]
        # The j = i term (only where (u, i) is an edge): sum_{v != u} 1 / (d_v d_i).
        z -= own * (graph.item_self[items][None, :] - _inverse(du, 1.0)) * _inverse(di, 1.0)
        z[z < RESIDUE] = 0.0
        # The degrees without the pair's own edge.
        du_without = du - own
        di_without = di - own
        scale = _inverse(du_without, 1.0) * np.sqrt(di * _inverse(di_without, 1.0))
        return (z * scale).astype(np.float32)

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items), num_signals] float32 signals of every pair."""
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        out = np.empty((len(users), len(items), self.num_signals), np.float32)
        column = 0
        for graph in self.graphs[1:]:
            out[..., column] = np.log1p(np.asarray(graph.counts[users][:, items].todense()))
            column += 1
        for b, graph in enumerate(self.graphs):
            out[..., column] = self._reach(graph, users, items) * self.reach_scale[b]
            column += 1
        for b in range(1, len(self.graphs)):
            scale = self.reach_scale[len(self.graphs) + b - 1]
            out[..., column] = self._cross(b, users, items) * scale
            column += 1
        return out

    def pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[n, num_signals] float32 signals of the pairs (users[k], items[k])."""
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        out = np.empty((len(users), self.num_signals), np.float32)
        unique_users, row = np.unique(users, return_inverse=True)
        unique_items, col = np.unique(items, return_inverse=True)
        # A batch of distinct users at a time against the pairs' distinct items.
        step = max(1, (1 << 22) // max(len(unique_items), 1))
        for start in range(0, len(unique_users), step):
            chosen = (row >= start) & (row < start + step)
            block = self.grid(unique_users[start : start + step], unique_items)
            out[chosen] = block[row[chosen] - start, col[chosen]]
        return out
