"""Graph signals: a NumPy reference, and a pair's own edge never seen."""

import dataclasses

import numpy as np
import pytest

from mmrec_tf.pipelines import graph_signals
from tests.pipelines import test_samplers


def _matrix(split, branch):
    """[users, items] 1 where the user had `branch` with the item in training."""
    a = np.zeros((split.num_users, split.num_items))
    keep = split.train_branches == branch
    a[split.train_users[keep], split.train_items[keep]] = 1.0
    return a


def _history(split, branch, u):
    """The items u had `branch` with in training."""
    return list(np.flatnonzero(_matrix(split, branch)[u]))


def reference_reach(split, branch, history, i, user=None):
    """reach_b to item i, by its definition, of a row whose b-history is
    `history`: on the training graph, `user`'s own node (if any) and the
    pair's own edge left out, the path through i itself left out."""
    a = _matrix(split, branch)
    if user is not None:
        a[user, i] = 0.0  # the pair's own edge
    du, di = a.sum(1), a.sum(0)
    mine = [j for j in sorted(set(history)) if j != i]
    if not mine or di[i] == 0:
        return 0.0
    total = 0.0
    for j in mine:
        for v in np.flatnonzero(a[:, j] * a[:, i]):
            if v != user:
                total += 1.0 / (np.sqrt(di[j]) * du[v] * np.sqrt(di[i]))
    return total / len(mine)


def reference_cross(split, branch, history, i, user=None):
    """cross_b to item i, by its definition, of a row whose b-history is
    `history`: other users' b-edges, then their buys; `user`'s own node (if
    any) and the pair's own buy left out."""
    a, t = _matrix(split, branch), _matrix(split, 0)
    if user is not None:
        t[user, i] = 0.0  # the pair's own buy
    du, dj, dt = a.sum(1), a.sum(0), t.sum(0)
    mine = sorted(set(history))
    if not mine or dt[i] == 0:
        return 0.0
    total = 0.0
    for j in mine:
        for v in np.flatnonzero(a[:, j] * t[:, i]):
            if v != user:
                total += 1.0 / (np.sqrt(dj[j]) * du[v] * np.sqrt(dt[i]))
    return total / len(mine)


def _doubled(split):
    """The same log with every record twice (touched counts 2, reach unchanged)."""
    return dataclasses.replace(
        split,
        train_users=np.concatenate([split.train_users, split.train_users]),
        train_items=np.concatenate([split.train_items, split.train_items]),
        train_branches=np.concatenate([split.train_branches, split.train_branches]),
    )


@pytest.mark.parametrize("budget", [graph_signals.ITEM_ITEM_BUDGET, 0], ids=["items", "users"])
def test_reach_matches_its_definition_for_every_pair(budget):
    split = test_samplers._split(num_users=12, num_items=15)
    signals = graph_signals.GraphSignals(split, item_item_budget=budget)
    assert all((g.item_item is None) == (budget == 0) for g in signals.graphs)
    users, items = np.arange(12), np.arange(15)
    grid = signals.grid(users, items)
    assert signals.names == (
        "touched_cart",
        "touched_fav",
        "reach_buy",
        "reach_cart",
        "reach_fav",
        "cross_cart",
        "cross_fav",
    )
    for branch in range(3):
        want = np.array(
            [
                [reference_reach(split, branch, _history(split, branch, u), i, u) for i in items]
                for u in users
            ]
        )
        # Each reach column comes scaled by a constant of the graph.
        raw = grid[..., 2 + branch] / signals.reach_scale[branch]
        np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-7)
    for branch in (1, 2):
        want = np.array(
            [
                [reference_cross(split, branch, _history(split, branch, u), i, u) for i in items]
                for u in users
            ]
        )
        raw = grid[..., 4 + branch] / signals.reach_scale[2 + branch]
        np.testing.assert_allclose(raw, want, rtol=1e-5, atol=1e-7)
    assert grid[..., 2:].max() > 0 and grid[..., 5:].max() > 0
    # Items in any order, all of them or a few: the same numbers.
    order = np.random.default_rng(0).permutation(15)
    np.testing.assert_allclose(signals.grid(users, order), grid[:, order], rtol=1e-6)
    np.testing.assert_allclose(signals.grid(users, order[:3]), grid[:, order[:3]], rtol=1e-6)


def test_touched_counts_the_records_of_the_supportive_behaviors():
    split = test_samplers._split(num_users=10, num_items=20)
    once = graph_signals.GraphSignals(split).grid(np.arange(10), np.arange(20))
    twice = graph_signals.GraphSignals(_doubled(split)).grid(np.arange(10), np.arange(20))
    carted = np.zeros((10, 20), bool)
    keep = split.train_branches == 1
    carted[split.train_users[keep], split.train_items[keep]] = True
    np.testing.assert_allclose(once[..., 0], np.where(carted, np.log(2.0), 0.0), rtol=1e-6)
    np.testing.assert_allclose(twice[..., 0], np.where(carted, np.log(3.0), 0.0), rtol=1e-6)
    # Repeated records change no reach: the graph's edges are distinct pairs.
    np.testing.assert_allclose(once[..., 2:], twice[..., 2:], rtol=1e-6)


@pytest.mark.parametrize("branch", [0, 1, 2])
def test_a_training_pairs_signals_do_not_see_its_own_edge(branch):
    split = test_samplers._split(num_users=15, num_items=25)
    signals = graph_signals.GraphSignals(split)
    keep = np.flatnonzero(split.train_branches == branch)
    rng = np.random.default_rng(branch)
    for record in rng.choice(keep, 6, replace=False):
        u, i = split.train_users[record], split.train_items[record]
        # The same log without that pair's records of this behavior.
        drop = (
            (split.train_users == u) & (split.train_items == i) & (split.train_branches == branch)
        )
        held_out = dataclasses.replace(
            split,
            train_users=split.train_users[~drop],
            train_items=split.train_items[~drop],
            train_branches=split.train_branches[~drop],
        )
        other = graph_signals.GraphSignals(held_out)
        column = signals.names.index(f"reach_{split.behaviors.behaviors[branch]}")
        # Raw reach (each graph's constant scale taken off): the same number.
        with_edge = signals.pairs(np.array([u]), np.array([i]))[0, column]
        without = other.pairs(np.array([u]), np.array([i]))[0, column]
        assert with_edge / signals.reach_scale[branch] == pytest.approx(
            without / other.reach_scale[branch], rel=1e-5, abs=1e-8
        )


def test_reach_is_scaled_to_a_mean_of_one_over_sampled_training_buys():
    split = test_samplers._split(num_users=30, num_items=40)
    signals = graph_signals.GraphSignals(split)
    buys = np.flatnonzero(split.train_branches == 0)  # fewer than the 2048 sampled: all
    values = signals.pairs(split.train_users[buys], split.train_items[buys])[:, 2:]
    np.testing.assert_allclose(values.mean(axis=0), 1.0, rtol=1e-4)


def test_pairs_equal_the_grid():
    split = test_samplers._split(num_users=30, num_items=40)
    signals = graph_signals.GraphSignals(split)
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 100), rng.integers(0, 40, 100)
    grid = signals.grid(np.arange(30), np.arange(40))
    np.testing.assert_allclose(signals.pairs(users, items), grid[users, items], rtol=1e-6)


def test_a_scorer_with_signals_ranks_grids_as_its_pairs():
    import tensorflow as tf  # noqa: F401  (after mmrec_tf's Keras 2 selection)

    from mmrec_tf import config as config_lib
    from mmrec_tf import evaluate
    from mmrec_tf import models

    split = test_samplers._split(num_users=20, num_items=30)
    scorer = models.build_model(
        config_lib.ModelConfig(mf_dim=4, mlp_dim=4, mlp_layers=1, graph_signals=True),
        num_users=20,
        num_items=30,
        behaviors=split.behaviors,
    )
    # Weights of N(0, 0.3) instead of the paper's N(0, 0.01), so that the
    # signals move the scores well beyond the comparison's tolerance.
    scorer.set_weights([w * 30 for w in scorer.get_weights()])
    signals = graph_signals.GraphSignals(split)
    score = evaluate.Scorer(scorer, split.behaviors.num_behaviors, signals=signals)
    users, items = np.arange(0, 20, 3), np.arange(30)
    grid = score.grid(users, items)
    pairs = score(np.repeat(users, 30), np.tile(items, len(users))).reshape(grid.shape)
    np.testing.assert_allclose(grid, pairs, rtol=1e-4, atol=1e-5)
    # Without the signals it would score something else: they are required.
    with pytest.raises(ValueError, match="graph signals"):
        evaluate.Scorer(scorer, split.behaviors.num_behaviors)


def test_a_reach_that_is_zero_by_its_definition_is_zero_not_float_residue(tmp_path):
    # On this synthetic log no training buy is reached from its user's other
    # buys: the buy reach of the scale's sample is 0 by definition. Float
    # residue of subtracting the own path once made it 1e-17 and the scale
    # 1e16, so a single reached pair's signal was 3.8e16.
    from mmrec_tf import config as config_lib
    from mmrec_tf.pipelines import loading

    data = config_lib.DataConfig(synthetic_users=300, synthetic_items=400)
    _, split = loading.load(data, work_dir=str(tmp_path))
    signals = graph_signals.GraphSignals(split)
    assert signals.reach_scale[0] == 1.0
    assert signals.reach_scale.max() < 1e4
    users = np.arange(0, split.num_users, 7)
    grid = signals.grid(users, np.arange(split.num_items))
    assert np.isfinite(grid).all() and grid.max() < 1e4
    # Every nonzero value is a path: no residue-sized value is left.
    assert grid[grid > 0].min() > 1e-9
