"""Models: structure per model name, the gate during training, retrieval towers."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf import optimizers
from mmrec_tf import ranking
from mmrec_tf import tasks
from mmrec_tf.pipelines import schema

BEHAVIORS = schema.BehaviorSchema("buy", ("cart", "fav"))


def _scorer(**kwargs):
    config = config_lib.ModelConfig(mf_dim=4, mlp_dim=4, **kwargs)
    return models.build_model(config, num_users=6, num_items=8, behaviors=BEHAVIORS)


def _batch(cart_gate: float):
    # 4 users, one positive and two negatives each; "fav" gate always off.
    pos_gate = np.zeros((4, 3), np.float32)
    pos_gate[:, 0] = 1.0
    pos_gate[:, 1] = cart_gate
    neg_gate = np.zeros((4, 2, 3), np.float32)
    neg_gate[:, :, 1] = cart_gate
    return {
        schema.USER: tf.constant([0, 1, 2, 3]),
        schema.POS_ITEM: tf.constant([0, 1, 2, 3]),
        schema.POS_GATE: tf.constant(pos_gate),
        schema.NEG_ITEM: tf.constant([[4, 5], [5, 6], [6, 7], [7, 4]]),
        schema.NEG_GATE: tf.constant(neg_gate),
    }


def _tower_change_after_step(gating, cart_gate, tower):
    tf_keras.utils.set_random_seed(0)
    ranker = ranking.Ranker(_scorer(gating=gating), task=tasks.PairwiseTask("bpr"))
    ranker.compile(optimizer=optimizers.LazyAdam(learning_rate=0.01))
    before = [w.numpy().copy() for w in ranker.scorer.get_layer(tower).weights]
    ranker.fit(tf.data.Dataset.from_tensors(_batch(cart_gate)), epochs=1, verbose=0)
    after = [w.numpy() for w in ranker.scorer.get_layer(tower).weights]
    return max(float(np.abs(a - b).max()) for a, b in zip(after, before))


def test_gated_off_supportive_branch_does_not_change():
    assert _tower_change_after_step("gradient", 0.0, "tower_cart") == 0.0
    assert _tower_change_after_step("gradient", 0.0, "tower_fav") == 0.0
    assert _tower_change_after_step("gradient", 0.0, "tower_buy") > 0.0


def test_gated_on_supportive_branch_changes():
    assert _tower_change_after_step("gradient", 1.0, "tower_cart") > 0.0
    assert _tower_change_after_step("gradient", 1.0, "tower_fav") == 0.0


def test_without_gating_every_branch_learns():
    assert _tower_change_after_step("none", 0.0, "tower_cart") > 0.0


def test_gate_leaves_the_forward_pass_unchanged():
    scorer = _scorer()
    inputs = {schema.USER: tf.constant([0, 5]), schema.ITEM: tf.constant([1, 7])}
    on = scorer({**inputs, schema.GATE: tf.ones([2, 3])})[schema.LOGIT]
    off = scorer({**inputs, schema.GATE: tf.zeros([2, 3])})[schema.LOGIT]
    np.testing.assert_array_equal(on.numpy(), off.numpy())


def test_aux_heads_add_a_gated_branch_loss():
    tf_keras.utils.set_random_seed(0)
    scorer = _scorer(gating="gradient_aux")
    assert scorer.output[schema.BRANCH_LOGITS].shape[-1] == 2
    with_aux = ranking.Ranker(scorer, task=tasks.PairwiseTask("bpr", branch_loss_weight=1.0))
    without = ranking.Ranker(scorer, task=tasks.PairwiseTask("bpr"))
    loss_aux = with_aux._compute_losses(_batch(1.0), training=False)[0]
    loss = without._compute_losses(_batch(1.0), training=False)[0]
    assert float(loss_aux) > float(loss)
    # with every supportive gate off the auxiliary loss is zero
    np.testing.assert_allclose(
        with_aux._compute_losses(_batch(0.0), training=False)[0],
        without._compute_losses(_batch(0.0), training=False)[0],
    )


@pytest.mark.parametrize(
    "name,towers,has_mf", [("mmf", 3, True), ("ncf", 1, True), ("gmf", 0, True), ("mlp", 1, False)]
)
def test_model_names_select_their_parts(name, towers, has_mf):
    scorer = _scorer(model=name)
    names = [layer.name for layer in scorer.layers]
    assert sum(n.startswith("tower_") for n in names) == towers
    assert ("mf" in names) == has_mf
    assert ("fusion" in names) == (towers > 1)


def test_unknown_model_raises_value_error():
    config = config_lib.ModelConfig()
    object.__setattr__(config, "model", "bogus")
    with pytest.raises(ValueError, match="model='bogus' is unknown"):
        models.build_model(config, num_users=2, num_items=2, behaviors=BEHAVIORS)


@pytest.mark.parametrize("history_length", [0, 3])
def test_retrieval_towers_factorize_the_mf_logit(history_length):
    scorer = _scorer(model="gmf", history_length=history_length)
    if history_length:
        history = np.tile(np.array([[1, 4, -1]], np.int32), (6, 1))
        models.set_histories(scorer, {b: history for b in BEHAVIORS.behaviors}, target="buy")
    query, candidate = models.retrieval_towers(scorer)
    users, items = tf.constant([0, 3, 5]), tf.constant([7, 2, 2])
    logits = scorer({schema.USER: users, schema.ITEM: items, schema.GATE: tf.ones([3, 3])})[
        schema.LOGIT
    ]
    bias = scorer.get_layer("head").dense.bias[0]
    dots = tf.reduce_sum(query(users) * candidate(items), axis=-1) + bias
    np.testing.assert_allclose(dots.numpy(), logits.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="no MF part"):
        models.retrieval_towers(_scorer(model="mlp"))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"model": "ncf"},
        {"model": "gmf"},
        {"model": "mlp"},
        {"shared_embeddings": True},
        {"gating": "none"},
        {"gating": "gradient_aux"},
        {"behavior_features": True},
        {"history_length": 3},
        {"mlp_layers": 1},
    ],
)
def test_scorer_round_trips_through_its_config(options):
    scorer = _scorer(**options)
    for clone in (
        models.Scorer.from_config(scorer.get_config()),
        tf_keras.utils.deserialize_keras_object(tf_keras.utils.serialize_keras_object(scorer)),
    ):
        assert type(clone) is models.Scorer
        # The same parts and tables (shared ones counted once).
        assert clone.count_params() == scorer.count_params()
        assert [w.shape for w in clone.weights] == [w.shape for w in scorer.weights]
        clone.set_weights(scorer.get_weights())
        inputs = {
            schema.USER: tf.constant([1, 4]),
            schema.ITEM: tf.constant([2, 0]),
            schema.GATE: tf.ones([2, 3]),
        }
        if options.get("history_length"):
            histories = {b: np.full([6, 3], -1, np.int32) for b in BEHAVIORS.behaviors}
            models.set_histories(scorer, histories, target="buy")
            models.set_histories(clone, histories, target="buy")
        np.testing.assert_allclose(clone(inputs)[schema.LOGIT], scorer(inputs)[schema.LOGIT])
        if options.get("shared_embeddings"):
            assert all(t.user_embedding is clone.towers[0].user_embedding for t in clone.towers)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"model": "ncf"},
        {"model": "gmf"},
        {"model": "mlp"},
        {"mlp_layers": 0},
        {"mlp_layers": 3, "history_length": 4},
        {"shared_embeddings": True},
    ],
)
def test_score_grid_equals_pairwise_scores(kwargs):
    scorer = _scorer(**kwargs)
    if kwargs.get("history_length"):
        rng = np.random.default_rng(0)
        histories = {
            b: rng.integers(-1, 8, size=(6, 4)).astype(np.int32) for b in BEHAVIORS.behaviors
        }
        models.set_histories(scorer, histories, target="buy")
    users, items = np.arange(6), np.arange(8)
    grid = models.score_grid(scorer, tf.constant(users), tf.constant(items)).numpy()
    u, i = np.repeat(users, 8), np.tile(items, 6)
    pairs = scorer(
        {schema.USER: tf.constant(u), schema.ITEM: tf.constant(i), schema.GATE: tf.ones([48, 3])}
    )[schema.LOGIT].numpy()
    # With histories, pairwise scoring leaves the scored item out of its
    # user's target-history mean and the grid does not: compare the other pairs
    # (full ranking never ranks a user's training target items anyway).
    keep = np.ones(48, bool)
    if kwargs.get("history_length"):
        keep = ~(histories["buy"][u] == i[:, None]).any(axis=1)
        assert keep.sum() > 24
    np.testing.assert_allclose(grid.ravel()[keep], pairs[keep], rtol=1e-5, atol=1e-7)


def test_history_mean_leaves_out_the_scored_item_for_the_target_only():
    scorer = _scorer(history_length=2)
    history = np.array([[3, 5]] + [[-1, -1]] * 5, np.int32)
    models.set_histories(scorer, {b: history for b in BEHAVIORS.behaviors}, target="buy")
    buy, cart = scorer.get_layer("tower_buy"), scorer.get_layer("tower_cart")
    user, item = tf.constant([0]), tf.constant([3])
    q = buy.item_embedding.embeddings.numpy()
    p = buy.user_embedding.embeddings.numpy()
    # target: item 3 is left out, so the mean is item 5's embedding alone
    np.testing.assert_allclose(buy.user_vector(user, item).numpy()[0], p[0] + q[5], rtol=1e-6)
    q_cart = cart.item_embedding.embeddings.numpy()
    p_cart = cart.user_embedding.embeddings.numpy()
    np.testing.assert_allclose(
        cart.user_vector(user, item).numpy()[0], p_cart[0] + (q_cart[3] + q_cart[5]) / 2, rtol=1e-6
    )


def test_shared_embeddings_give_every_branch_one_pair_of_tables():
    shared = _scorer(shared_embeddings=True)
    towers = [shared.get_layer(f"tower_{b}") for b in BEHAVIORS.behaviors]
    assert all(t.user_embedding is towers[0].user_embedding for t in towers)
    assert all(t.item_embedding is towers[0].item_embedding for t in towers)
    own = _scorer()
    # Two tables fewer per supportive branch, each counted once.
    per_pair = (6 + 8) * 4
    assert own.count_params() - shared.count_params() == 2 * per_pair
    # The gate still holds a supportive branch's MLP still when its gate is off.
    tf_keras.utils.set_random_seed(0)
    ranker = ranking.Ranker(shared, task=tasks.PairwiseTask("bpr"))
    ranker.compile(optimizer=optimizers.LazyAdam(learning_rate=0.01))
    layer = shared.get_layer("tower_cart")
    before = [w.numpy().copy() for w in layer.trainable_weights if "embedding" not in w.name]
    ranker.fit(tf.data.Dataset.from_tensors(_batch(0.0)), epochs=1, verbose=0)
    after = [w.numpy() for w in layer.trainable_weights if "embedding" not in w.name]
    assert before and all(np.array_equal(a, b) for a, b in zip(after, before))


def test_scorer_methods_are_the_grid_towers_and_histories():
    scorer = _scorer(history_length=2)
    histories = {b: np.array([[1, -1]] * 6, np.int32) for b in BEHAVIORS.behaviors}
    scorer.set_histories(histories)
    users, items = tf.constant([0, 3]), tf.constant([1, 2, 5])
    np.testing.assert_allclose(
        scorer.score_grid(users, items), models.score_grid(scorer, users, items)
    )
    np.testing.assert_allclose(
        scorer.factorized_grid(users, items), models.factorized_grid(scorer, users, items)
    )
    query, candidate = scorer.retrieval_towers()
    assert query(users).shape == (2, 4) and candidate(items).shape == (3, 4)


@pytest.mark.parametrize(
    "name,columns",
    # Signals: touched_cart, touched_fav, reach_buy, reach_cart, reach_fav,
    # cross_cart, cross_fav.
    [
        ("mmf", {"buy": (2,), "cart": (0, 3, 5), "fav": (1, 4, 6)}),
        ("ncf", {"buy": (0, 1, 2, 3, 4, 5, 6)}),
    ],
)
def test_each_branch_takes_its_behaviors_signals_and_one_branch_takes_all(name, columns):
    scorer = _scorer(model=name, graph_signals=True)
    assert scorer.num_signals == 7
    got = {n: t.signal_columns for n, t in zip(scorer.branch_names, scorer.towers)}
    assert got == columns
    clone = models.Scorer.from_config(scorer.get_config())
    assert clone.num_signals == 7 and clone.count_params() == scorer.count_params()
    assert _scorer().num_signals == 0


@pytest.mark.parametrize(
    "model, train, export, message",
    [
        ({"model": "gmf", "graph_signals": True}, {"loss": "softmax"}, {}, "graph_signals"),
        ({"graph_signals": True}, {}, {}, "loss=softmax"),
    ],
)
def test_graph_signals_refuse_what_cannot_use_them(model, train, export, message):
    with pytest.raises(ValueError, match=message):
        config_lib.ExperimentConfig(
            model=config_lib.ModelConfig(**model),
            train=config_lib.TrainConfig(**train),
            export=config_lib.ExportConfig(**export),
        )


def test_an_als_start_builds_zero_mf_tables_and_every_other_weight_as_before(monkeypatch):
    def weights(mf_init):
        tf_keras.utils.set_random_seed(5)
        scorer = _scorer(model="mmf", mf_init=mf_init)
        return scorer, [(w.name, w.numpy()) for w in scorer.weights]

    _, drawn = weights("random")
    scorer, started = weights("als")
    for (name, a), (_, b) in zip(drawn, started):
        if name.startswith("mf/"):
            # The factors replace these: no random table is drawn for them.
            assert not b.any() and a.any()
        else:
            # The same draws from the global seed: the run starts as it did.
            np.testing.assert_array_equal(a, b, err_msg=name)
    # The factors go in by row blocks; every row lands.
    monkeypatch.setattr(models, "FACTOR_ROWS", 4)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((8, 4))
    scorer.start_from_factors(x, y, trainable=False)
    np.testing.assert_allclose(scorer.mf.user_embedding.embeddings.numpy(), x, rtol=1e-6)
    np.testing.assert_allclose(scorer.mf.item_embedding.embeddings.numpy(), y, rtol=1e-6)
