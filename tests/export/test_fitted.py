"""Fitted baselines export as Keras scorers that compute exactly their scores."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mmrec_tf import models
from mmrec_tf.baselines import als
from mmrec_tf.baselines import popularity
from mmrec_tf.export import fitted
from mmrec_tf.pipelines import training_index
from tests.mmrec_tf.test_main import QUICKSTART
from tests.mmrec_tf.test_main import _flags
from tests.pipelines import test_samplers


def _grid(scorer, index, users, items):
    gates = index.gate_grid(users, items)
    return models.score_grid(scorer, tf.constant(users), tf.constant(items), gates).numpy()


@pytest.mark.parametrize("kind", ["als", "popular"])
@pytest.mark.parametrize("touched_first", [False, True])
def test_exported_scorer_scores_as_the_fitted_model(kind, touched_first):
    split = test_samplers._split()
    index = training_index.TrainingIndex.from_split(split)
    if kind == "als":
        config = als.ALSConfig(factors=4, supportive_weight=0.5, iterations=3)
        score = als.FactorScorer(*als.fit(split, config, verbose=False)[:2])
    else:
        score = popularity.PopularityScorer(index)
    if touched_first:
        score = popularity.TouchedFirst(score, index)
    scorer = fitted.as_scorer(
        score, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
    )
    users = np.arange(split.num_users, dtype=np.int32)
    items = np.arange(split.num_items, dtype=np.int32)
    np.testing.assert_allclose(
        _grid(scorer, index, users, items), score.grid(users, items), rtol=1e-5, atol=1e-5
    )


def test_main_exports_the_als_with_the_neural_signatures(tmp_path):
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib

    common = [
        f"--flagfile={QUICKSTART}",
        f"--model_dir={tmp_path}",
        "--synthetic_users=300",
        "--synthetic_items=400",
        "--model=als",
        "--mf_dim=8",
        "--als_supportive_weight=0.5",
        "--behavior_features",
        "--verbose=0",
        f"--export_dir={tmp_path / 'serving'}",
        "--retrieval_candidates=50",
    ]
    trained = run_lib.run(cli.config_from_flags(_flags(common)))
    assert os.path.isdir(trained["export"]["path"])
    loaded = tf.saved_model.load(trained["export"]["path"])
    assert {"serving_default", "recommend", "retrieve"} <= set(loaded.signatures)
    evaluate_export = _flags(common + ["--mode=evaluate_export"])
    exported = run_lib.run(cli.config_from_flags(evaluate_export))["test"]
    in_memory = trained["test"]["two_stage_in_memory"]
    # Both sides whole on a mismatch (pytest shortens the comparison).
    assert exported["recommend"] == pytest.approx(in_memory["recommend"], abs=1e-6), (
        f"export: {exported}\nin memory: {in_memory}\nfull ranking: {trained['test']['full']}"
    )
    assert exported["recommend"]["cases"] == trained["test"]["sampled"]["cases"]
    assert json.load(open(tmp_path / "export_evaluation.json"))["export"]
