"""CascadingRank (`--model=cascade`): the propagation against a dense NumPy solve."""

import dataclasses

import numpy as np
import pytest

from mmrec_tf import config as config_lib
from mmrec_tf.baselines import cascade
from mmrec_tf.pipelines import schema
from tests.pipelines import test_samplers


def _reference(split, order, alpha, beta, user):
    """The cascade's fixed point for one user, stage by stage, by a dense linear solve.

    Each stage's iteration converges to x = g M x + alpha q + beta c, with
    x = [r_u; r_i], M = [[0, Ã], [Ãᵀ, 0]] and g = 1 - alpha - beta, so
    x = (I - g M)^-1 (alpha q + beta c).
    """
    n_u, n_i = split.num_users, split.num_items
    g = 1.0 - alpha - beta
    c = None
    for branch in order:
        a = np.zeros((n_u, n_i))
        keep = split.train_branches == branch
        a[split.train_users[keep], split.train_items[keep]] = 1.0
        du, di = a.sum(1), a.sum(0)
        su = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1)), 0)
        si = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1)), 0)
        norm = su[:, None] * a * si[None, :]
        q = np.zeros(n_u + n_i)
        q[user] = 1.0
        if du[user]:
            q[n_u:] = a[user] / du[user]
        c = q if c is None else c
        m = np.block([[np.zeros((n_u, n_u)), norm], [norm.T, np.zeros((n_i, n_i))]])
        c = np.linalg.solve(np.eye(n_u + n_i) - g * m, alpha * q + beta * c)
    return c[n_u:]


@pytest.mark.parametrize("alpha, beta", [(0.7, 0.2), (0.0, 0.9), (0.3, 0.3)])
def test_scores_are_the_fixed_point_of_each_stage(alpha, beta):
    split = test_samplers._split(num_users=12, num_items=15)
    scorer = cascade.CascadeScorer(
        split, cascade.CascadeConfig(alpha=alpha, beta=beta, tolerance=1e-9)
    )
    users = np.arange(split.num_users)
    got = scorer.grid(users, np.arange(split.num_items))
    want = np.stack([_reference(split, scorer.order, alpha, beta, u) for u in users])
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.all(got >= 0) and np.all(got < scorer.bound)


def test_pairs_grids_and_batches_agree():
    split = test_samplers._split(num_users=30, num_items=40)
    settings = cascade.CascadeConfig(alpha=0.5, beta=0.3, tolerance=1e-8)
    whole = cascade.CascadeScorer(split, settings)
    small = cascade.CascadeScorer(split, dataclasses.replace(settings, batch_users=7))
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 200)
    items = rng.integers(0, 40, 200)
    grid = whole.grid(np.arange(30), np.arange(40))
    np.testing.assert_allclose(small(users, items), grid[users, items], atol=1e-6)
    np.testing.assert_allclose(whole(users, items), grid[users, items], atol=1e-6)
    np.testing.assert_allclose(small.grid(users[:9], items[:5]), grid[users[:9]][:, items[:5]])


def test_computed_users_are_read_from_the_cache_within_its_budget():
    split = test_samplers._split(num_users=30, num_items=40)
    settings = cascade.CascadeConfig(alpha=0.5, beta=0.3, tolerance=1e-8, batch_users=7)
    uncached = cascade.CascadeScorer(split, settings, cache_bytes=0)
    want = uncached.grid(np.arange(30), np.arange(40))
    # Room for two batches of 7 users' rows (40 items of 4 bytes each).
    scorer = cascade.CascadeScorer(split, settings, cache_bytes=14 * 40 * 4)
    users = np.array([3, 3, 11, 0, 29, 3, 17, 5, 8, 21, 2, 14, 6, 9, 25, 27])
    np.testing.assert_allclose(scorer.item_scores(users), want[users], atol=1e-6)
    assert sum(len(b) for b in scorer._blocks) == 14
    cached = np.flatnonzero(scorer._block_of >= 0)
    assert set(cached) <= set(users) and len(cached) == 14
    # A cached user is not propagated again: its row is the one kept.
    scorer._blocks[scorer._block_of[cached[0]]][scorer._row_of[cached[0]]] = -1.0
    assert np.all(scorer.item_scores(cached[:1]) == -1.0)
    assert np.all(scorer.grid(cached[:1], np.arange(5)) == -1.0)
    # Pairs and grids of cached and new users still agree with the uncached scores.
    rng = np.random.default_rng(1)
    pairs_u, pairs_i = rng.integers(0, 30, 100), rng.integers(0, 40, 100)
    fresh = cascade.CascadeScorer(split, settings, cache_bytes=14 * 40 * 4)
    fresh.item_scores(users)
    np.testing.assert_allclose(fresh(pairs_u, pairs_i), want[pairs_u, pairs_i], atol=1e-6)
    # Nothing is kept without a budget.
    uncached.item_scores(users)
    assert not uncached._blocks and np.all(uncached._block_of < 0)


def test_the_cascade_runs_from_the_most_frequent_behavior_to_the_target():
    split = test_samplers._split()
    # 4 buys, 6 carts and 4 favs per user: carts first, then favs, then buys.
    assert cascade.cascade_order(split) == (1, 2, 0)


def test_a_pair_repeated_in_the_log_counts_once():
    split = test_samplers._split(num_users=10, num_items=20)
    doubled = dataclasses.replace(
        split,
        train_users=np.concatenate([split.train_users, split.train_users]),
        train_items=np.concatenate([split.train_items, split.train_items]),
        train_branches=np.concatenate([split.train_branches, split.train_branches]),
    )
    settings = cascade.CascadeConfig()
    users, items = np.arange(10), np.arange(20)
    np.testing.assert_allclose(
        cascade.CascadeScorer(doubled, settings).grid(users, items),
        cascade.CascadeScorer(split, settings).grid(users, items),
        atol=1e-7,
    )


def test_a_user_reaches_the_items_of_users_who_share_a_behavior():
    # user 0 carted item 0; user 1 carted item 0 and bought item 1; item 2 is
    # bought by user 2 alone: user 0 should score item 1 above item 2.
    users = np.array([0, 1, 1, 2, 2], np.int32)
    items = np.array([0, 0, 1, 2, 3], np.int32)
    branches = np.array([1, 1, 0, 0, 1], np.int8)
    split = test_samplers.training_split(
        users,
        items,
        branches,
        num_users=3,
        num_items=4,
        behaviors=schema.BehaviorSchema("buy", ("cart",)),
    )
    scores = cascade.CascadeScorer(split, cascade.CascadeConfig(alpha=0.3, beta=0.5)).grid(
        np.array([0]), np.arange(4)
    )[0]
    # Item 1 is reached through user 1 (the cart stage's score carried into
    # the buy stage); items 2 and 3 lie in another component.
    assert scores[1] > 0 and scores[2] == 0 and scores[3] == 0


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"cascade_alpha": 0.0, "cascade_beta": 0.0}, "never converges"),
        ({"cascade_alpha": 0.8, "cascade_beta": 0.5}, "cascade_beta=0.5"),
        ({"cascade_alpha": -0.1}, "cascade_alpha=-0.1"),
        ({"model": "cascade", "behavior_features": True}, "behavior_features=True"),
    ],
)
def test_bad_settings_name_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        config_lib.ModelConfig(**fields)


def test_an_order_that_misses_a_branch_is_refused():
    split = test_samplers._split()
    with pytest.raises(ValueError, match="every branch"):
        cascade.CascadeScorer(split, cascade.CascadeConfig(order=(1, 0)))
