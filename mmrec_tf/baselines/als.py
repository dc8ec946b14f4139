"""Weighted alternating least squares: WMF and its multi-behavior variant.

The classic implicit-feedback baseline (Hu, Koren and Volinsky 2008): every
(user, item) cell is fitted, observed ones to preference 1 with confidence
c = 1 + alpha * r and the rest to 0 with confidence 1, by exact alternating
least-squares solves, not by sampling. With `supportive_weight` = 0, r is the
target indicator alone (WMF on the target behavior); with a positive weight
the supportive behaviors add `supportive_weight` to r (the multi-behavior
confidence matrix).

`FactorScorer` exposes the fitted factors through the scorer interface of
`mmrec_tf.evaluate`, so both protocols rank them exactly as they rank the
neural models.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import splits as splits_lib

SOLVERS = ("implicit", "numpy", "implicit_cg")

# Bounds the [pairs, factors, factors] outer products of one solve chunk.
_CHUNK_FLOATS = 1 << 25


@dataclasses.dataclass(frozen=True)
class ALSConfig:
    """Weighted ALS.

    Attributes:
      factors: latent dimension.
      l2: ridge penalty on each factor vector.
      alpha: confidence slope, c = 1 + alpha * r.
      supportive_weight: what one supportive behavior adds to r (0: the
        target behavior alone, i.e. WMF).
      iterations: alternating sweeps (users, then items).
      init_stddev: standard deviation of the initial factors.
      seed: initialisation seed.
      solver: `implicit` (the `implicit` library's exact Cholesky solves,
        multithreaded native code: about 10x faster) or `numpy` (this
        module's batched solves, the reference the tests check it against).
        Both minimize the same objective with the same initial factors.
        `implicit_cg` is `implicit`'s conjugate-gradient solver (three steps
        per row, warm-started from the previous sweep): the same objective,
        solved approximately at a cost linear in the factors rather than
        cubic. The tuned recipes use the exact solver; the 100M-record
        benchmark uses this one (benchmarks/scale.py).
    """

    factors: int = 32
    l2: float = 0.1
    alpha: float = 10.0
    supportive_weight: float = 0.0
    iterations: int = 15
    init_stddev: float = 0.01
    seed: int = 0
    solver: str = "implicit"

    def __post_init__(self):
        config_lib._check(self.factors >= 1, "factors", self.factors, ">= 1")
        config_lib._check(self.l2 >= 0, "l2", self.l2, ">= 0")
        config_lib._check(self.alpha >= 0, "alpha", self.alpha, ">= 0")
        config_lib._check(
            self.supportive_weight >= 0, "supportive_weight", self.supportive_weight, ">= 0"
        )
        config_lib._check(self.iterations >= 1, "iterations", self.iterations, ">= 1")
        config_lib._check(self.solver in SOLVERS, "solver", self.solver, f"one of {SOLVERS}")


def confidence_matrix(split: splits_lib.Split, supportive_weight: float):
    """Training pairs and their strength r: target 1, each supportive behavior w.

    Returns:
      (users, items, r) over the distinct (user, item) pairs with r > 0,
      sorted by user then item.
    """
    target = split.train_branches == 0
    weight = np.where(target, 1.0, supportive_weight).astype(np.float64)
    keep = weight > 0
    keys = splits_lib.pair_keys(split.train_users[keep], split.train_items[keep], split.num_items)
    # One contribution per (pair, behavior), however often it repeats.
    branch_keys = keys * 64 + split.train_branches[keep].astype(np.int64)
    unique_bk, first = np.unique(branch_keys, return_index=True)
    pair_keys, inverse = np.unique(unique_bk // 64, return_inverse=True)
    r = np.bincount(inverse, weights=weight[keep][first], minlength=len(pair_keys))
    users = (pair_keys // split.num_items).astype(np.int64)
    items = (pair_keys % split.num_items).astype(np.int64)
    return users, items, r


def _solve(indptr, cols, conf, other, l2):
    """Exact least-squares factors of every row given the other side's factors.

    Row u solves (YtY + l2 I + Y_u^T (C_u - I) Y_u) x_u = Y_u^T c_u. Rows are
    taken in order of their number of pairs and padded to the longest of each
    chunk, so Y_u^T (C_u - I) Y_u is one batched matrix product per chunk.
    """
    rows = len(indptr) - 1
    f = other.shape[1]
    gram = other.T @ other + l2 * np.eye(f)
    out = np.zeros((rows, f))
    counts = np.diff(indptr)
    order = np.argsort(counts, kind="stable")
    position = 0
    while position < rows:
        # The most rows (at least one) whose padded [rows, longest, f] block
        # and [rows, f, f] systems fit: the cost grows with the chunk's end.
        ends = np.arange(position + 1, rows + 1)
        cost = (ends - position) * (counts[order[ends - 1]] * f + f * f)
        end = max(position + 1, position + int(np.searchsorted(cost, _CHUNK_FLOATS, side="right")))
        chunk = order[position:end]
        longest = int(counts[chunk].max())
        lhs = np.broadcast_to(gram, (len(chunk), f, f)).copy()
        rhs = np.zeros((len(chunk), f))
        if longest:
            offset = np.arange(longest)
            valid = offset[None, :] < counts[chunk][:, None]
            where = np.where(valid, indptr[chunk][:, None] + offset[None, :], 0)
            y = other[cols[where]] * valid[..., None]  # [rows, longest, f]
            c = np.where(valid, conf[where], 0.0)
            lhs += np.matmul(y.transpose(0, 2, 1) * (c - valid)[:, None, :], y)
            rhs = np.einsum("rl,rlf->rf", c, y)
        out[chunk] = np.linalg.solve(lhs, rhs[..., None])[..., 0]
        position = end
    return out


def _csr(rows, cols, values, num_rows):
    order = np.lexsort((cols, rows))
    indptr = np.zeros(num_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
    return indptr, cols[order], values[order]


def fit(split: splits_lib.Split, config: ALSConfig, *, verbose: bool = True):
    """Fits user and item factors on the training split.

    Returns:
      (user_factors [num_users, f], item_factors [num_items, f], seconds).
    """
    started = time.perf_counter()
    users, items, r = confidence_matrix(split, config.supportive_weight)
    conf = 1.0 + config.alpha * r
    rng = np.random.default_rng(config.seed)
    # `implicit` solves in float32: its factors start there, drawn in chunks
    # (the same numbers as one float64 draw, without its 8 bytes per entry).
    dtype = np.float32 if config.solver.startswith("implicit") else np.float64
    x = _initial(rng, split.num_users, config, dtype)
    y = _initial(rng, split.num_items, config, dtype)
    if config.solver.startswith("implicit"):
        x, y = _fit_implicit(users, items, conf, x, y, split, config)
        return x, y, time.perf_counter() - started
    by_user = _csr(users, items, conf, split.num_users)
    by_item = _csr(items, users, conf, split.num_items)
    for sweep in range(config.iterations):
        x = _solve(*by_user, y, config.l2)
        y = _solve(*by_item, x, config.l2)
        if verbose:
            print(f"als sweep {sweep + 1}/{config.iterations}", flush=True)
    return x.astype(np.float32), y.astype(np.float32), time.perf_counter() - started


def _initial(rng: np.random.Generator, rows: int, config: ALSConfig, dtype) -> np.ndarray:
    """[rows, factors] N(0, init_stddev) factors in `dtype`, drawn 2^18 rows at a time."""
    out = np.empty((rows, config.factors), dtype)
    for start in range(0, rows, 1 << 18):
        stop = min(rows, start + (1 << 18))
        out[start:stop] = rng.normal(0, config.init_stddev, (stop - start, config.factors))
    return out


def _fit_implicit(users, items, conf, x, y, split, config: ALSConfig):
    """The same sweeps through `implicit`'s exact (Cholesky) or conjugate-gradient solver.

    `implicit` takes the observed cells' confidence as given (alpha = 1) and
    weighs every other cell by 1, as `_solve` does; the factors start from
    `x` and `y`, so both solvers follow the same path.
    """
    import implicit.cpu.als
    import scipy.sparse
    import threadpoolctl

    matrix = scipy.sparse.csr_matrix(
        (conf.astype(np.float32), (users, items)), shape=(split.num_users, split.num_items)
    )
    # implicit runs its own threads; a threaded BLAS under them oversubscribes
    # (implicit checks for it when the model is built).
    with threadpoolctl.threadpool_limits(1, "blas"):
        model = implicit.cpu.als.AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.l2,
            alpha=1.0,
            use_cg=config.solver == "implicit_cg",
            iterations=config.iterations,
            random_state=config.seed,
        )
        # implicit solves users, then items, each sweep, from factors it finds set.
        model.user_factors = x
        model.item_factors = y
        model.fit(matrix, show_progress=False)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


class FactorScorer:
    """Dot products of fitted factors, with the interface of `evaluate.Scorer`."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray):
        self.user_factors = user_factors
        self.item_factors = item_factors
        # Every score lies in (-bound, bound) (Cauchy-Schwarz, with a margin).
        norms = [np.linalg.norm(f, axis=1).max(initial=0.0) for f in (user_factors, item_factors)]
        self.bound = 1.01 * float(norms[0]) * float(norms[1]) + 1e-6

    # Scores in float64 whatever the factors' type (the reported figures were).

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[n] scores of the pairs (users[k], items[k])."""
        u = self.user_factors[users].astype(np.float64)
        return np.einsum("nf,nf->n", u, self.item_factors[items].astype(np.float64))

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] scores of every pair."""
        u = self.user_factors[users].astype(np.float64)
        return u @ self.item_factors[items].astype(np.float64).T
