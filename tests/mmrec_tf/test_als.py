"""Weighted ALS: exact solves, the confidence matrix, a decreasing objective."""

import os

import numpy as np
import pytest

from mmrec_tf.baselines import als
from mmrec_tf.pipelines import schema
from tests.pipelines import test_samplers


def _split(num_users=9, num_items=11, seed=0):
    rng = np.random.default_rng(seed)
    n = 60
    users = rng.integers(0, num_users, n).astype(np.int32)
    items = rng.integers(0, num_items, n).astype(np.int32)
    branches = rng.integers(0, 3, n).astype(np.int8)
    users[0] = 0  # user 0 has a target pair
    branches[0] = 0
    return test_samplers.training_split(
        users,
        items,
        branches,
        num_users=num_users,
        num_items=num_items,
        behaviors=schema.BehaviorSchema("buy", ("cart", "fav")),
    )


def _dense_strength(split, weight):
    r = np.zeros((split.num_users, split.num_items))
    seen = set()
    for u, i, b in zip(split.train_users, split.train_items, split.train_branches):
        if (u, i, b) not in seen:
            seen.add((u, i, b))
            r[u, i] += 1.0 if b == 0 else weight
    return r


def test_confidence_matrix_counts_each_behavior_of_a_pair_once():
    split = _split()
    users, items, r = als.confidence_matrix(split, 0.25)
    dense = np.zeros((split.num_users, split.num_items))
    dense[users, items] = r
    np.testing.assert_allclose(dense, _dense_strength(split, 0.25))
    users, items, r = als.confidence_matrix(split, 0.0)
    assert set(zip(users.tolist(), items.tolist())) == {
        (u, i)
        for u, i, b in zip(split.train_users, split.train_items, split.train_branches)
        if b == 0
    }


@pytest.mark.parametrize("chunk_floats", [1 << 25, 40])
def test_each_row_is_the_exact_weighted_least_squares_solution(monkeypatch, chunk_floats):
    monkeypatch.setattr(als, "_CHUNK_FLOATS", chunk_floats)  # 40: many small chunks
    split = _split()
    users, items, r = als.confidence_matrix(split, 0.5)
    conf_values = 1 + 3.0 * r
    y = np.random.default_rng(1).normal(size=(split.num_items, 4))
    solved = als._solve(*als._csr(users, items, conf_values, split.num_users), y, 0.7)
    conf = np.ones((split.num_users, split.num_items))
    conf[users, items] = conf_values
    pref = np.zeros_like(conf)
    pref[users, items] = 1
    for u in range(split.num_users):
        lhs = y.T @ (conf[u][:, None] * y) + 0.7 * np.eye(4)
        expected = np.linalg.solve(lhs, y.T @ (conf[u] * pref[u]))
        np.testing.assert_allclose(solved[u], expected, rtol=1e-8, atol=1e-10)


def test_sweeps_never_increase_the_objective_and_observed_pairs_score_higher():
    split = _split()
    users, items, r = als.confidence_matrix(split, 0.5)
    conf = np.ones((split.num_users, split.num_items))
    conf[users, items] = 1 + 5.0 * r
    pref = np.zeros_like(conf)
    pref[users, items] = 1

    def objective(x, y):
        return (conf * (pref - x @ y.T) ** 2).sum() + 0.1 * ((x**2).sum() + (y**2).sum())

    losses = []
    for iterations in (1, 2, 4):
        config = als.ALSConfig(factors=3, l2=0.1, alpha=5.0, supportive_weight=0.5)
        config = als.ALSConfig(**{**config.__dict__, "iterations": iterations})
        x, y, _ = als.fit(split, config, verbose=False)
        losses.append(objective(x.astype(np.float64), y.astype(np.float64)))
    assert losses[0] >= losses[1] - 1e-6 >= losses[2] - 2e-6
    scorer = als.FactorScorer(x, y)
    grid = scorer.grid(np.arange(split.num_users), np.arange(split.num_items))
    np.testing.assert_allclose(scorer(users, items), grid[users, items], rtol=1e-5)
    assert grid[pref == 1].mean() > grid[pref == 0].mean()


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="alpha"):
        als.ALSConfig(alpha=-1)


@pytest.mark.parametrize("iterations", [1, 3])
def test_the_implicit_solver_gives_the_reference_factors(iterations):
    split = _split()
    fitted = {}
    for solver in ("implicit", "numpy"):
        config = als.ALSConfig(
            factors=3,
            l2=0.1,
            alpha=5.0,
            supportive_weight=0.5,
            iterations=iterations,
            solver=solver,
        )
        fitted[solver] = als.fit(split, config, verbose=False)[:2]
    for ours, theirs in zip(fitted["numpy"], fitted["implicit"]):
        np.testing.assert_allclose(theirs, ours, atol=1e-5)


def _objective(split, config, x, y) -> float:
    """The weighted ALS loss: every cell, confidence 1 + alpha r where observed."""
    users, items, r = als.confidence_matrix(split, config.supportive_weight)
    confidence = np.ones((split.num_users, split.num_items))
    preference = np.zeros_like(confidence)
    confidence[users, items] += config.alpha * r
    preference[users, items] = 1.0
    error = confidence * (preference - x @ y.T) ** 2
    return float(error.sum() + config.l2 * ((x**2).sum() + (y**2).sum()))


def test_the_conjugate_gradient_solver_reaches_the_exact_solvers_loss():
    split = _split()
    settings = dict(factors=4, l2=0.1, alpha=5.0, supportive_weight=0.5, iterations=15)
    losses = {}
    for solver in ("implicit", "implicit_cg"):
        config = als.ALSConfig(**settings, solver=solver)
        x, y, _ = als.fit(split, config, verbose=False)
        losses[solver] = _objective(split, config, x, y)
    start = als.ALSConfig(**{**settings, "iterations": 1})
    x, y, _ = als.fit(split, start, verbose=False)
    # Far below the loss after one sweep, and within 2% of the exact fit's.
    assert losses["implicit_cg"] < 0.9 * _objective(split, start, x, y)
    assert losses["implicit_cg"] == pytest.approx(losses["implicit"], rel=0.02)


def test_cached_factors_are_the_fit_and_keyed_by_data_and_settings(tmp_path):
    from mmrec_tf import baselines

    split = _split()
    settings = als.ALSConfig(factors=4, l2=0.5, alpha=5.0, supportive_weight=0.5, seed=3)
    x, y, _ = als.fit(split, settings, verbose=False)
    first = baselines.fit_factors(split, settings, cache_dir=str(tmp_path))
    again = baselines.fit_factors(split, settings, cache_dir=str(tmp_path))
    assert first[3] == again[3] and len(list(tmp_path.iterdir())) == 1
    for got in (first, again):
        np.testing.assert_allclose(got[0], x)
        np.testing.assert_allclose(got[1], y)
    # Another seed, another setting or other data: another entry.
    other_seed = baselines.fit_factors(
        split, als.ALSConfig(**{**settings.__dict__, "seed": 4}), cache_dir=str(tmp_path)
    )
    other_data = baselines.fit_factors(_split(seed=1), settings, cache_dir=str(tmp_path))
    assert len({first[3], other_seed[3], other_data[3]}) == 3
    assert not baselines.fit_factors(split, settings)[3]  # no cache: fitted, nothing kept


@pytest.mark.parametrize("damage", ["truncate", "empty", "garbage"])
def test_a_damaged_cache_file_is_named_with_the_fix(tmp_path, damage):
    from mmrec_tf import baselines

    split = _split()
    settings = als.ALSConfig(factors=4, seed=3)
    path = baselines.fit_factors(split, settings, cache_dir=str(tmp_path))[3]
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write({"truncate": data[: len(data) // 2], "empty": b"", "garbage": b"x" * 99}[damage])
    with pytest.raises(ValueError, match=f"ALS cache file {path} is damaged.*delete it"):
        baselines.fit_factors(split, settings, cache_dir=str(tmp_path))


def test_the_default_cache_is_the_cache_folder_of_the_environment(monkeypatch, tmp_path):
    from mmrec_tf import baselines
    from mmrec_tf import config as config_lib

    assert not hasattr(config_lib.ModelConfig(), "als_cache_dir")
    monkeypatch.setenv("MMREC_CACHE_DIR", str(tmp_path))
    assert baselines.cache_folder() == str(tmp_path / "als")
    monkeypatch.setenv("MMREC_CACHE_DIR", "off")
    assert baselines.cache_folder() == ""
    monkeypatch.delenv("MMREC_CACHE_DIR")
    assert baselines.cache_folder().endswith(os.path.join(".cache", "mmrec_tf", "als"))
    path = baselines.fit_factors(_split(), als.ALSConfig(factors=2), cache_dir=str(tmp_path))[3]
    assert os.path.dirname(path) == str(tmp_path)
