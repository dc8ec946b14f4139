"""CascadingRank: personalized ranking cascaded over each behavior's user-item graph.

A training-free ranker (Personalized Ranking on Cascading Behavior Graphs,
arXiv 2502.11335), written here from the paper's description on
`scipy.sparse`. For each behavior b in cascade order (the supportive
behaviors from the most frequent to the least, views before carts, then the
target), with A_b the binary user-item matrix of b and
Ã_b = D_u^-1/2 A_b D_i^-1/2 its symmetric normalization, the scores of a
batch of users are iterated as

    r_u <- (1 - alpha - beta) * Ã_b   r_i + alpha * q_u + beta * c_u
    r_i <- (1 - alpha - beta) * Ã_bᵀ r_u + alpha * q_i + beta * c_i

until the L1 change of every user's column is below a tolerance. The query
q_u is the user's one-hot over the users, q_i the user's b-items divided by
the user's b-degree (the batch's columns of A_bᵀ D_u^-1), and c the previous
stage's result (the query itself at the first stage). The last stage's item
scores rank.

Memory is bounded by the batch: a batch holds a few dense
[users + items, batch] blocks, and `batch_users` is chosen from a budget
(`MEMORY_BUDGET_BYTES`) when not given. The item scores of the users
computed so far are kept up to another budget (`CACHE_BUDGET_BYTES`), so a
run that ranks its users for validation and then for test propagates each
of them once.

`CascadeScorer` exposes it through the fitted-scorer protocol of
`mmrec_tf.baselines` (`__call__`, `grid`, `bound`), so every protocol ranks it
as it ranks the other models.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np
from scipy import sparse

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import splits as splits_lib

# What one batch's dense blocks may take: five [users + items, batch] float32
# arrays (query, previous stage, iterate, its update, their difference).
MEMORY_BUDGET_BYTES = 1 << 30
_BLOCKS = 5
# What the users' item scores kept for later calls may take (float32 rows):
# a run ranks the same users for validation, then for test, and a blend
# scores them again; each user's cascade runs once while this lasts.
CACHE_BUDGET_BYTES = 2 << 30
# scipy's sparse-dense product runs on one core: row blocks go to threads.
_THREADS = max(1, min(4, os.cpu_count() or 1))
_pool: concurrent.futures.ThreadPoolExecutor | None = None


class RowBlocks:
    """A CSR matrix cut into row blocks whose products with a dense block run in threads."""

    def __init__(self, matrix: sparse.csr_matrix, parts: int = _THREADS):
        self.shape = matrix.shape
        cuts = np.searchsorted(matrix.indptr, np.linspace(0, matrix.nnz, parts + 1)[1:-1])
        bounds = [0, *sorted(set(int(c) for c in cuts)), matrix.shape[0]]
        self.blocks = [(lo, hi, matrix[lo:hi]) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]

    def __matmul__(self, dense: np.ndarray) -> np.ndarray:
        global _pool
        out = np.empty((self.shape[0], dense.shape[1]), np.float32)
        if len(self.blocks) == 1:
            out[:] = self.blocks[0][2] @ dense
            return out
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(_THREADS)

        def product(block):
            lo, hi, rows = block
            out[lo:hi] = rows @ dense

        list(_pool.map(product, self.blocks))
        return out


@dataclasses.dataclass(frozen=True)
class CascadeConfig:
    """CascadingRank's settings.

    Attributes:
      alpha: the pull toward the query (the user and the user's b-items).
      beta: the pull toward the previous stage's scores; alpha + beta in
        (0, 1] (the propagation keeps 1 - alpha - beta).
      order: the branches in cascade order (0 is the target); empty means
        the supportive branches by descending pair count, then the target.
      tolerance: stop a stage once every user's L1 change is below this.
      max_iterations: stop a stage after this many sweeps in any case.
      batch_users: users propagated together; 0 picks the most that fit
        `MEMORY_BUDGET_BYTES`.
    """

    alpha: float = 0.7
    beta: float = 0.2
    order: tuple[int, ...] = ()
    tolerance: float = 1e-6
    max_iterations: int = 100
    batch_users: int = 0

    def __post_init__(self):
        config_lib._check(0 <= self.alpha <= 1, "cascade_alpha", self.alpha, "in [0, 1]")
        config_lib._check(0 <= self.beta <= 1, "cascade_beta", self.beta, "in [0, 1]")
        config_lib._check(
            0 < self.alpha + self.beta <= 1,
            "cascade_alpha + cascade_beta",
            self.alpha + self.beta,
            "in (0, 1] (at 0 the propagation never converges)",
        )
        config_lib._check(self.tolerance > 0, "tolerance", self.tolerance, "> 0")
        config_lib._check(self.max_iterations >= 1, "max_iterations", self.max_iterations, ">= 1")
        config_lib._check(self.batch_users >= 0, "batch_users", self.batch_users, ">= 0")


@dataclasses.dataclass
class Stage:
    """One behavior's graph.

    Attributes:
      branch: the behavior's branch (0 is the target).
      normalized: [users, items] D_u^-1/2 A D_i^-1/2 (CSR in row blocks).
      normalized_t: its transpose, in row blocks.
      query: [users, items] CSR float32, A with each row divided by the
        user's degree (a row is the item-side query of its user).
      item_degree: [items] float64 distinct users per item.
    """

    branch: int
    normalized: RowBlocks
    normalized_t: RowBlocks
    query: sparse.csr_matrix
    item_degree: np.ndarray


def cascade_order(split: splits_lib.Split) -> tuple[int, ...]:
    """The supportive branches by descending distinct-pair count, then the target (0)."""
    keys = splits_lib.pair_keys(split.train_users, split.train_items, split.num_items)
    counts = [
        len(np.unique(keys[split.train_branches == b]))
        for b in range(1, split.behaviors.num_behaviors)
    ]
    supportive = sorted(range(1, split.behaviors.num_behaviors), key=lambda b: -counts[b - 1])
    return tuple(supportive) + (0,)


def build_stages(split: splits_lib.Split, order: tuple[int, ...]) -> list[Stage]:
    """Each behavior's normalized graph, in cascade `order`, from the training records."""
    stages = []
    for branch in order:
        adjacency = graph_signals.binary(graph_signals.behavior_counts(split, branch))
        user_degree = np.asarray(adjacency.sum(axis=1)).ravel()
        item_degree = np.asarray(adjacency.sum(axis=0)).ravel()
        inv_sqrt_u = graph_signals.safe_power(user_degree, -0.5)
        inv_sqrt_i = graph_signals.safe_power(item_degree, -0.5)
        normalized = (sparse.diags(inv_sqrt_u) @ adjacency @ sparse.diags(inv_sqrt_i)).astype(
            np.float32
        )
        query = (sparse.diags(graph_signals.safe_power(user_degree, -1.0)) @ adjacency).astype(
            np.float32
        )
        stages.append(
            Stage(
                branch=branch,
                normalized=RowBlocks(normalized.tocsr()),
                normalized_t=RowBlocks(normalized.T.tocsr()),
                query=query.tocsr(),
                item_degree=item_degree,
            )
        )
    return stages


def pair_scores(rows_of, users: np.ndarray, items: np.ndarray, batch: int) -> np.ndarray:
    """[n] scores of the pairs (users[k], items[k]) read from whole-catalog rows.

    `rows_of(distinct users)` -> [len(users), catalog] scores; each distinct
    user's row is computed once, `batch` distinct users at a time.
    """
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    unique, row = np.unique(users, return_inverse=True)
    out = np.empty(len(users), np.float32)
    order = np.argsort(row, kind="stable")
    bounds = np.searchsorted(row[order], np.arange(0, len(unique) + 1, batch))
    bounds = np.append(bounds, len(users))
    for b, start in enumerate(range(0, len(unique), batch)):
        scores = rows_of(unique[start : start + batch])
        pairs = order[bounds[b] : bounds[b + 1]]
        out[pairs] = scores[row[pairs] - start, items[pairs]]
    return out


class CascadeScorer:
    """CascadingRank's item scores, through the fitted-scorer protocol.

    Args:
      split: the training data (only its training records are read).
      settings: alpha, beta, order and the stopping rule.
    """

    # Every score lies in [0, bound): the fixed point x = g M x + a q + b c,
    # with M = [[0, Ã], [Ãᵀ, 0]] of spectral norm 1 and g = 1 - a - b, has
    # ||x||_2 <= (a ||q|| + b ||c||) / (a + b); ||q||_2 <= sqrt(2) and, by
    # induction over the stages, ||c||_2 <= sqrt(2) too, so each entry is
    # below sqrt(2) (+ the tolerance).
    bound = 2.0

    def __init__(
        self,
        split: splits_lib.Split,
        settings: CascadeConfig,
        *,
        cache_bytes: int = CACHE_BUDGET_BYTES,
    ):
        """Args: split, the training data; settings, the cascade's; cache_bytes,
        most bytes of computed users' item scores kept for later calls (0: none)."""
        self.settings = settings
        self.order = settings.order or cascade_order(split)
        if sorted(self.order) != list(range(split.behaviors.num_behaviors)):
            raise ValueError(
                f"cascade order {self.order} must list every branch 0.."
                f"{split.behaviors.num_behaviors - 1} once (0, the target, usually last)."
            )
        self.num_users = split.num_users
        self.num_items = split.num_items
        self.stages = build_stages(split, self.order)
        rows = (self.num_users + self.num_items) * 4 * _BLOCKS
        self.batch_users = settings.batch_users or max(1, MEMORY_BUDGET_BYTES // rows)
        self.iterations: list[int] = []  # sweeps per stage of the last batch
        # Computed users' scores: blocks of rows, and each user's block and row.
        self._cache_rows = cache_bytes // (4 * max(self.num_items, 1))
        self._blocks: list[np.ndarray] = []
        self._block_of = np.full(self.num_users, -1, np.int32)
        self._row_of = np.zeros(self.num_users, np.int32)

    def item_scores(self, users: np.ndarray) -> np.ndarray:
        """[len(users), items] float32 last-stage item scores.

        A user whose scores an earlier call computed reads them from the
        cache; the others are propagated once each, `batch_users` distinct
        users at a time.
        """
        users = np.asarray(users, np.int64)
        out = np.empty((len(users), self.num_items), np.float32)
        block = self._block_of[users]
        for b in np.unique(block[block >= 0]):
            rows = np.flatnonzero(block == b)
            out[rows] = self._blocks[b][self._row_of[users[rows]]]
        missing = np.flatnonzero(block < 0)
        todo, inverse = np.unique(users[missing], return_inverse=True)
        for start in range(0, len(todo), self.batch_users):
            batch = todo[start : start + self.batch_users]
            scores = np.ascontiguousarray(self._propagate(batch).T)
            mine = (inverse >= start) & (inverse < start + len(batch))
            out[missing[mine]] = scores[inverse[mine] - start]
            self._keep(batch, scores)
        return out

    def _keep(self, users: np.ndarray, scores: np.ndarray) -> None:
        """Caches a batch's [len(users), items] scores while the budget lasts."""
        held = sum(len(b) for b in self._blocks)
        if held + len(users) > self._cache_rows:
            return
        self._block_of[users] = len(self._blocks)
        self._row_of[users] = np.arange(len(users))
        self._blocks.append(scores)

    def _propagate(self, users: np.ndarray) -> np.ndarray:
        """[items, len(users)] the cascade's item scores for one batch."""
        s = self.settings
        keep = 1.0 - s.alpha - s.beta
        columns = np.arange(len(users))
        previous_u = previous_i = None
        self.iterations = []
        for stage in self.stages:
            # The user-side query (one-hot) is added in place, never stored dense.
            query_i = np.ascontiguousarray(stage.query[users].T.toarray(), np.float32)
            if previous_u is None:
                previous_u = np.zeros((self.num_users, len(users)), np.float32)
                previous_u[users, columns] = 1.0
                previous_i = query_i
            # The constant parts of the two updates, once per stage.
            pull_u = s.beta * previous_u
            pull_u[users, columns] += s.alpha
            pull_i = s.alpha * query_i + s.beta * previous_i
            r_u, r_i = previous_u, previous_i
            sweeps = 0
            while sweeps < s.max_iterations:
                sweeps += 1
                new_u = stage.normalized @ r_i
                new_u *= keep
                new_u += pull_u
                new_i = stage.normalized_t @ new_u
                new_i *= keep
                new_i += pull_i
                change = np.abs(new_u - r_u).sum(axis=0) + np.abs(new_i - r_i).sum(axis=0)
                r_u, r_i = new_u, new_i
                if change.max() < s.tolerance:
                    break
            self.iterations.append(sweeps)
            previous_u, previous_i = r_u, r_i
        return previous_i

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[n] scores of the pairs (users[k], items[k]), a batch of distinct users at a time."""
        return pair_scores(self.item_scores, users, items, self.batch_users)

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] scores of every pair."""
        return self.item_scores(users)[:, np.asarray(items)]
