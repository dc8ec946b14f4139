"""The trained model's export: graph signals per request, and recommendations from events."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmrec_tf import blend
from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import ranking
from mmrec_tf import train as train_lib
from mmrec_tf.baselines import cascade
from mmrec_tf.export import cascade as cascade_export
from mmrec_tf.export import exporter
from mmrec_tf.export import serving
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index
from tests.export import test_cascade_export
from tests.export import test_export

K, C = 5, 8
USERS, ITEMS = test_cascade_export.USERS, test_cascade_export.ITEMS


def _train(tmp_path, signals: bool, blend_weight: float = 0.0):
    split = test_cascade_export._communities()
    config = config_lib.ExperimentConfig(
        model=config_lib.ModelConfig(mf_dim=4, mlp_dim=4, mlp_layers=1, graph_signals=signals),
        train=config_lib.TrainConfig(
            loss="softmax",
            shared_negatives=16,
            batch_size=32,
            epochs=40,
            learning_rate=0.05,
            verbose=0,
            supportive_negative_ratio=0,
        ),
    )
    tf_keras.utils.set_random_seed(0)
    # N(0, 0.1) instead of the paper's N(0, 0.01): this tiny log's few
    # steps then move the model well away from its start.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config_lib.ModelConfig, "init_stddev", 0.1)
        ranker = ranking.build_ranker(
            config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
        )
    graph = graph_signals.GraphSignals(split) if signals else None
    index = training_index.TrainingIndex.from_split(split)
    train_lib.train(
        ranker=ranker, index=index, config=config.train, model_dir=str(tmp_path), signals=graph
    )
    score = evaluate.Scorer(
        ranker.scorer, split.behaviors.num_behaviors, index=index, signals=graph
    )
    extra = {}
    if blend_weight:
        ranker_c = cascade.CascadeScorer(split, cascade.CascadeConfig(alpha=0.5, beta=0.3))
        score = blend.Blended(score, ranker_c, blend_weight)
        extra = {
            "cascade": cascade_export.Propagation(ranker_c),
            "cascade_weight": blend_weight,
        }
    module = serving.from_training(
        ranker.scorer,
        split,
        user_tokens=USERS,
        item_tokens=ITEMS,
        top_k=K,
        retrieval_candidates=C,
        exclude_seen=True,
        signals=graph,
        fold_in=(10.0, 0.1, 1.0),
        **extra,
    )
    return {
        "split": split,
        "module": module,
        "score": score,
        "scorer": ranker.scorer,
        "graph": graph,
        "extra": extra,
    }


@pytest.fixture(
    scope="module",
    params=[(True, 0.0), (False, 0.0), (False, 0.5)],
    ids=["signals", "ids_only", "cascade_blend"],
)
def trained(request, tmp_path_factory):
    return _train(tmp_path_factory.mktemp("history"), *request.param)


def _history(module, user_ids, events):
    return test_cascade_export._history(module, user_ids, events)


def test_recommend_ranks_with_the_evaluated_logits(trained):
    module, score = trained["module"], trained["score"]
    rec = module.recommend(tf.constant(USERS[:6]))
    for u, (ids, scores) in enumerate(zip(rec["item_ids"].numpy(), rec["scores"].numpy())):
        items = np.array([int(i.decode()[1:]) for i in ids])
        want = score(np.full(K, u), items)
        np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)
    # serving_default scores the pairs as the evaluation does.
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 30), rng.integers(0, 40, 30)
    out = module.score(tf.constant(USERS[users]), tf.constant(ITEMS[items]))
    np.testing.assert_allclose(out[schema.SCORE].numpy(), score(users, items), rtol=1e-4, atol=1e-4)


def test_serving_default_rows_are_distinct_users(trained):
    # With graph signals or the blend a request's memory is per distinct
    # user: many pairs of one user pass a user limit of 2, a third user is
    # an error of that request. Without either there is no such limit.
    module = serving.from_training(
        trained["scorer"],
        trained["split"],
        user_tokens=USERS,
        item_tokens=ITEMS,
        top_k=K,
        retrieval_candidates=C,
        exclude_seen=True,
        signals=trained["graph"],
        fold_in=(10.0, 0.1, 1.0),
        max_request_users=2,
        **trained["extra"],
    )
    score = trained["score"]
    users, items = np.array([3] * 12 + [9] * 4), np.arange(16)
    out = module.score(tf.constant(USERS[users]), tf.constant(ITEMS[items]))
    np.testing.assert_allclose(out[schema.SCORE].numpy(), score(users, items), rtol=1e-4, atol=1e-4)
    users = np.array([3, 9, 11])
    request = (tf.constant(USERS[users]), tf.constant(ITEMS[:3]))
    if module.signals is None and module.cascade is None:
        out = module.score(*request)
        np.testing.assert_allclose(
            out[schema.SCORE].numpy(), score(users, np.arange(3)), rtol=1e-4, atol=1e-4
        )
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match="at most 2 distinct users"):
            module.score(*request)


def test_a_known_user_without_events_gets_its_recommend(trained):
    test_cascade_export.assert_known_users_without_events_get_recommend(
        trained["module"], atol=1e-5
    )


def test_a_new_user_with_three_carts_gets_items_near_them(trained):
    picked, _ = test_cascade_export.new_user_with_three_carts(trained["module"])
    assert len(set(picked)) == K
    # Mostly the carts' community (the model ranks; the graph and the folded
    # factor both point there).
    assert sum(20 <= i < 40 for i in picked) >= K - 1, picked


def test_one_more_event_changes_the_ranking(trained):
    test_cascade_export.assert_one_more_event_changes_the_ranking(trained["module"])


def test_bought_events_are_excluded(trained):
    module = trained["module"]
    first = _history(module, ["new", "u2"], [(0, "i21", "cart"), (1, "i22", "cart")])
    tops = [row[0].decode() for row in first["item_ids"].numpy()]
    out = _history(
        module,
        ["new", "u2"],
        [(0, "i21", "cart"), (1, "i22", "cart"), (0, tops[0], "buy"), (1, tops[1], "buy")],
    )
    for row, top in zip(out["item_ids"].numpy(), tops):
        assert top.encode() not in row.tolist()


def test_the_saved_model_serves_histories_in_a_clean_process(trained, tmp_path):
    path = exporter.export(
        trained["module"], str(tmp_path / "export"), warmup_user_ids=["u1"], warmup_item_ids=["i1"]
    )
    args = {
        "users": ["u2", "nobody"],
        "items": ["i22", "i23", "i5"],
        "behaviors": ["cart", "view", "cart"],
        "rows": [1, 1, 0],
    }
    out = test_export._in_clean_process(test_cascade_export.CLEAN_PROCESS, path, args, tmp_path)
    assert not out["project_imported"]
    events = list(zip(args["rows"], args["items"], args["behaviors"]))
    want = _history(trained["module"], args["users"], events)
    assert out["hist_items"] == [[i.decode() for i in r] for r in want["item_ids"].numpy()]
    np.testing.assert_allclose(out["hist_scores"], want["scores"].numpy(), rtol=1e-4, atol=1e-4)
