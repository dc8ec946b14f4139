"""Behavior features: the score's per-behavior offset in training, evaluation and serving."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from absl import flags

from mmrec_tf import cli
from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import models
from mmrec_tf import ranking
from mmrec_tf import run as run_lib
from mmrec_tf import train as train_lib
from mmrec_tf.baselines import als
from mmrec_tf.baselines import popularity
from mmrec_tf.export import exporter
from mmrec_tf.export import serving
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

DATA = config_lib.DataConfig(synthetic_users=120, synthetic_items=90)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    loaded, split = loading.load(DATA, work_dir=str(tmp_path_factory.mktemp("features")))
    return loaded, split, training_index.TrainingIndex.from_split(split)


def _scorer(split, model="mmf", **kwargs):
    kwargs = {"behavior_features": True, **kwargs}
    config = config_lib.ModelConfig(model=model, mf_dim=4, mlp_dim=4, **kwargs)
    return models.build_model(
        config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
    )


def _served(scorer, loaded, split, path):
    """The scorer exported (top 3 of 3 MF candidates, buys excluded) and loaded back."""
    module = serving.from_training(
        scorer,
        split,
        user_tokens=loaded.user_vocab.tokens,
        item_tokens=loaded.item_vocab.tokens,
        top_k=3,
        retrieval_candidates=3,
        exclude_seen=True,
    )
    path = exporter.export(
        module,
        path,
        warmup_user_ids=list(loaded.user_vocab.tokens[:2]),
        warmup_item_ids=list(loaded.item_vocab.tokens[:2]),
    )
    return tf.saved_model.load(path)


def _set_bias(scorer, values):
    scorer.set_behavior_offsets(values)


def test_each_supportive_flag_adds_its_weight_and_the_target_flag_adds_nothing(data):
    _, split, _ = data
    scorer = _scorer(split)
    weights = np.arange(1, split.behaviors.num_behaviors, dtype=np.float32) * 2.0
    _set_bias(scorer, weights)
    num_behaviors = split.behaviors.num_behaviors
    users, items = tf.constant([3] * (num_behaviors + 1)), tf.constant([5] * (num_behaviors + 1))
    gate = np.zeros((num_behaviors + 1, num_behaviors), np.float32)
    for t in range(num_behaviors):
        gate[t + 1, t] = 1.0
    logits = scorer({schema.USER: users, schema.ITEM: items, schema.GATE: gate})[schema.LOGIT]
    offsets = logits.numpy() - logits.numpy()[0]
    np.testing.assert_allclose(offsets, [0.0, 0.0, *weights], atol=1e-5)


def test_gate_grid_equals_the_pairwise_gates(data):
    _, split, index = data
    users, items = np.arange(0, 40, 3), np.arange(split.num_items)[::-2]
    grid = index.gate_grid(users, items)
    pairwise = index.gates(np.repeat(users, len(items)), np.tile(items, len(users)))
    np.testing.assert_array_equal(grid.reshape(-1, split.behaviors.num_behaviors), pairwise)
    assert grid[..., 1:].sum() > 0  # some supportive pairs are in the grid


@pytest.mark.parametrize("model,kwargs", [("mmf", {}), ("ncf", {}), ("mmf", {"gating": "none"})])
def test_grid_scores_equal_pairwise_scores_with_the_training_flags(data, model, kwargs):
    _, split, index = data
    scorer = _scorer(split, model=model, **kwargs)
    _set_bias(scorer, np.linspace(1.0, 3.0, split.behaviors.num_behaviors - 1))
    score = evaluate.Scorer(scorer, split.behaviors.num_behaviors, index=index)
    users, items = np.arange(0, 30, 2), np.arange(split.num_items)
    grid = score.grid(users, items)
    pairs = score(np.repeat(users, len(items)), np.tile(items, len(users))).reshape(grid.shape)
    np.testing.assert_allclose(grid, pairs, atol=1e-4)
    # The flags move the scores: without them the grid differs where a flag is set.
    flagged = index.gate_grid(users, items)[..., 1:].sum(-1) > 0
    plain = evaluate.Scorer(scorer, split.behaviors.num_behaviors, index=index)
    _set_bias(scorer, np.zeros(split.behaviors.num_behaviors - 1))
    np.testing.assert_allclose(plain.grid(users, items)[~flagged], grid[~flagged], atol=1e-4)
    assert np.all(plain.grid(users, items)[flagged] < grid[flagged])


def test_a_scorer_with_features_needs_the_index_and_the_data_supportive_behaviors(data):
    _, split, _ = data
    with pytest.raises(ValueError, match="index=TrainingIndex"):
        evaluate.Scorer(_scorer(split), split.behaviors.num_behaviors)
    config = config_lib.ModelConfig(model="ncf", behavior_features=True)
    with pytest.raises(ValueError, match="--behavior_features"):
        models.build_model(
            config, num_users=3, num_items=3, behaviors=schema.BehaviorSchema("buy", ())
        )


def test_training_learns_that_supportive_pairs_are_bought(data, tmp_path):
    _, split, index = data
    config = config_lib.ExperimentConfig(
        data=DATA,
        model=config_lib.ModelConfig(mf_dim=4, mlp_dim=4, behavior_features=True),
        train=config_lib.TrainConfig(
            batch_size=64, epochs=2, verbose=0, learning_rate=0.01, supportive_negative_ratio=0
        ),
    )
    tf_keras.utils.set_random_seed(0)
    ranker = ranking.build_ranker(
        config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
    )
    train_lib.train(ranker=ranker, index=index, config=config.train, model_dir=str(tmp_path))
    # The offsets start at 0; supportive pairs are positives (weighted) and
    # uniform negatives never have a flag, so every offset rises.
    assert all(w > 0.0 for w in ranker.scorer.behavior_offsets().values())


def test_serving_scores_with_the_flags_and_recommends_touched_items(data, tmp_path):
    loaded, split, index = data
    scorer = _scorer(split)
    _set_bias(scorer, np.full(split.behaviors.num_behaviors - 1, 50.0))
    served = _served(scorer, loaded, split, str(tmp_path / "serving"))
    users = np.repeat(np.arange(20), split.num_items)
    items = np.tile(np.arange(split.num_items), 20)
    want = evaluate.Scorer(scorer, split.behaviors.num_behaviors, index=index)(users, items)
    got = served.signatures["serving_default"](
        user_id=tf.constant(loaded.user_vocab.tokens[users].astype(str)),
        item_id=tf.constant(loaded.item_vocab.tokens[items].astype(str)),
    )["logit"].numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    # With a large offset the top items are the user's supportive-only items,
    # even though the MF stage passes on only 3 candidates.
    user = next(u for u in range(split.num_users) if np.diff(index.supportive_indptr)[u] >= 3)
    touched = set(
        loaded.item_vocab.tokens[
            index.supportive_items[
                index.supportive_indptr[user] : index.supportive_indptr[user + 1]
            ]
        ].astype(str)
    )
    rec = served.signatures["recommend"](
        user_id=tf.constant([str(loaded.user_vocab.tokens[user])])
    )["item_ids"].numpy()[0]
    assert {i.decode() for i in rec} <= touched


def _als(split):
    config = als.ALSConfig(factors=4, supportive_weight=0.5, iterations=3)
    return als.FactorScorer(*als.fit(split, config, verbose=False)[:2])


@pytest.mark.parametrize("base", ["popular", "als"])
def test_touched_items_rank_first_then_by_the_base_scorer(data, base):
    _, split, index = data
    users, items = np.arange(0, 30, 3), np.arange(split.num_items)
    plain = popularity.PopularityScorer(index) if base == "popular" else _als(split)
    touched = popularity.TouchedFirst(plain, index)
    if base == "popular":
        # The buy counts' order, for every user.
        counts = np.bincount(index.pos_items, minlength=split.num_items)
        order = np.argsort(-plain.grid(users, items)[0], kind="stable")
        assert np.all(order == np.argsort(-counts, kind="stable"))
    grid, base_grid = touched.grid(users, items), plain.grid(users, items)
    assert np.all(np.abs(base_grid) < plain.bound)
    count = index.gate_grid(users, items)[..., 1:].sum(-1)
    for row, base_row, n in zip(grid, base_grid, count):
        # More supportive behaviors first: every level above the next.
        levels = sorted(set(n), reverse=True)
        for high, low in zip(levels, levels[1:]):
            assert row[n == high].min() > row[n == low].max()
        # Within a level, the base scorer's order.
        for level in levels:
            np.testing.assert_array_equal(
                np.argsort(-row[n == level], kind="stable"),
                np.argsort(-base_row[n == level], kind="stable"),
            )
    pairs = touched(np.repeat(users, len(items)), np.tile(items, len(users)))
    np.testing.assert_allclose(pairs.reshape(grid.shape), grid, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["popular", "als"])
def test_main_runs_the_fitted_models_with_features(tmp_path, model):
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(
        [
            "mmrec_tf",
            f"--model={model}",
            "--behavior_features",
            f"--model_dir={tmp_path}",
            "--synthetic_users=300",
            "--synthetic_items=400",
            "--verbose=0",
        ]
    )
    results = run_lib.run(cli.config_from_flags(fv))
    assert results["model"] == model
    if model == "popular":
        assert results["train"]["popular"] == {"behavior_features": True}
    else:
        assert results["train"]["behavior_features"] is True
    assert 0 < results["test"]["sampled"]["HR@10"] <= 1


def test_main_records_the_learned_offsets_of_the_kept_epoch(tmp_path):
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(
        [
            "mmrec_tf",
            "--behavior_features",
            "--mf_dim=4",
            "--mlp_dim=4",
            "--epochs=2",
            "--batch_size=64",
            "--learning_rate=0.01",
            "--supportive_negative_ratio=0",
            f"--model_dir={tmp_path}",
            "--synthetic_users=200",
            "--synthetic_items=150",
            "--verbose=0",
        ]
    )
    results = run_lib.run(cli.config_from_flags(fv))
    weights = results["train"]["behavior_weights"]
    assert list(weights) == list(results["behaviors"][1:])
    # Uniform negatives are rarely touched, so every offset has risen from 0.
    assert all(w > 0 for w in weights.values())
