"""The whole-catalog objectives: softmax over shared negatives, graded positives,
the whole-data term, and the discovery protocol, against NumPy references."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import models
from mmrec_tf import ranking
from mmrec_tf import tasks
from mmrec_tf.pipelines import datasets
from mmrec_tf.pipelines import negatives
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index
from tests.mmrec_tf.test_evaluate import _TableScorer
from tests.mmrec_tf.test_main import _flags
from tests.mmrec_tf.test_main import tiny_quickstart
from tests.pipelines import test_samplers

BEHAVIORS = schema.BehaviorSchema("buy", ("cart", "fav"))


class _SmallEval(config_lib.EvalConfig):
    """The protocol with 2 sampled negatives and HR@1, for catalogs of a few items."""

    sampled_negatives = 2
    ks = (1, 10)


def _random_weights(scorer, seed=0, positive=False):
    rng = np.random.default_rng(seed)
    draw = (
        (lambda shape: np.abs(rng.normal(0, 0.5, shape)))
        if positive
        else (lambda shape: rng.normal(0, 0.5, shape))
    )
    scorer.set_weights(
        [w if w.dtype == np.int32 else draw(w.shape).astype(w.dtype) for w in scorer.get_weights()]
    )


def _scorer(model="mmf", num_users=6, num_items=9, positive=False, **kwargs):
    scorer = models.build_model(
        config_lib.ModelConfig(model=model, mf_dim=3, mlp_dim=2, **kwargs),
        num_users=num_users,
        num_items=num_items,
        behaviors=BEHAVIORS,
    )
    scorer(
        {
            schema.USER: tf.constant([0]),
            schema.ITEM: tf.constant([0]),
            schema.GATE: tf.ones([1, 3]),
        }
    )
    # Positive weights keep every ReLU active, so every part has a gradient.
    _random_weights(scorer, positive=positive)
    return scorer


def _softmax_batch(users, candidates, bits, log_q=None, **extra):
    """A softmax training batch: row b's positive is candidates[b]."""
    users = np.asarray(users, np.int32)
    candidates = np.asarray(candidates, np.int32)
    log_q = np.zeros(len(candidates), np.float32) if log_q is None else log_q
    return {
        schema.USER: tf.constant(users),
        schema.POS_ITEM: tf.constant(candidates[: len(users)]),
        schema.POS_GATE: tf.ones([len(users), 3]),
        schema.CANDIDATES: tf.constant(candidates),
        schema.CANDIDATE_LOG_Q: tf.constant(log_q, tf.float32),
        schema.CANDIDATE_BITS: tf.constant(bits, tf.int32),
        **extra,
    }


def _numpy_softmax_loss(logits, log_q, candidates, bits, positive_bits, temperature):
    """Reference: row b's positive is column b; corrected, hits removed, own
    positives masked."""
    batch, width = logits.shape
    losses = np.empty(batch)
    for b in range(batch):
        keep = []
        for c in range(width):
            if c == b:
                keep.append(c)
            elif candidates[c] == candidates[b]:
                continue  # an accidental hit: the row's own positive item again
            elif bits[b, c] & positive_bits:
                continue  # another training positive of this user
            else:
                keep.append(c)
        x = logits[b, keep] / temperature - log_q[keep]
        x = x - x.max()
        losses[b] = -(x[keep.index(b)] - np.log(np.exp(x).sum()))
    return losses


@pytest.mark.parametrize("positive_bits", [1, 0b111])
def test_softmax_loss_matches_a_numpy_reference(positive_bits):
    scorer = _scorer("gmf")
    task = tasks.SoftmaxTask(temperature=0.5, positive_bits=positive_bits)
    users = np.array([0, 1, 2, 1], np.int32)
    # Column 3 repeats row 0's item (an accidental hit for row 0); column 5 is
    # item 4 again, row 3's positive.
    candidates = np.array([4, 5, 6, 4, 7, 4, 8], np.int32)
    bits = np.zeros((4, 7), np.int32)
    bits[1, 2] = 0b010  # user 1 carted item 6: a positive only when carts are
    bits[2, 4] = 0b001  # user 2 bought item 7: never a negative of user 2
    for b in range(4):
        bits[b, b] |= 0b001
    log_q = np.log(np.array([0.3, 0.1, 0.2, 0.3, 0.05, 0.3, 0.01], np.float32))
    batch = _softmax_batch(users, candidates, bits, log_q)
    per_example, _, _ = task(scorer, batch, training=True)
    grid = models.score_grid(scorer, users, candidates).numpy()
    expected = _numpy_softmax_loss(grid, log_q, candidates, bits, positive_bits, 0.5)
    np.testing.assert_allclose(per_example.numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("carted", [False, True])
def test_softmax_grid_gates_the_supportive_branch_gradients(carted):
    scorer = _scorer("mmf", positive=True)
    task = tasks.SoftmaxTask()
    bits = [[1, 0, 0], [0, 1, 0]] if not carted else [[3, 0, 0], [0, 1, 0]]
    # Target bits, and with `carted` user 0 also carted item 2.
    batch = _softmax_batch([0, 1], [2, 3, 5], bits)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(task(scorer, batch, training=True)[0])
    towers = scorer.towers
    grads = tape.gradient(loss, [towers[0].user_embedding.embeddings] + towers[1].trainable_weights)
    assert np.abs(tf.convert_to_tensor(grads[0]).numpy()).sum() > 0
    # The cart branch learns only from a carted pair: none, no gradient.
    total = sum(
        0.0 if g is None else np.abs(tf.convert_to_tensor(g).numpy()).sum() for g in grads[1:]
    )
    assert (total > 0) == carted


def test_graded_positives_weigh_the_sum_of_their_behaviors():
    split = test_samplers._split()
    index = training_index.TrainingIndex.from_split(split)
    vector = training_index.behavior_weight_vector(index.behaviors, (("buy", 1.0), ("cart", 0.5)))
    assert vector.tolist() == [1.0, 0.5, 0.0]
    positives = negatives.epoch_positives(
        index, seed=0, epoch=0, shuffle=False, behavior_weights=vector
    )
    gates = index.gates(positives.users, positives.items)
    np.testing.assert_allclose(positives.weights, gates[:, 0] + 0.5 * gates[:, 1])
    # Favorite-only pairs weigh 0, so they are not positives.
    assert (positives.weights > 0).all()
    assert len(positives) == training_index.num_positives(index, 0.0, vector)
    assert positives.is_target.tolist() == (gates[:, 0] == 1).tolist()
    with pytest.raises(ValueError, match="'view'"):
        training_index.behavior_weight_vector(index.behaviors, (("view", 1.0),))


def test_pair_bits_match_the_training_index():
    split = test_samplers._split()
    index = training_index.TrainingIndex.from_split(split)
    rng = np.random.default_rng(0)
    users = rng.integers(0, split.num_users, 25)
    items = rng.integers(0, split.num_items, 60)  # repeats included
    bits = training_index.pair_bits(index, users, items)
    expected = index.gate_grid(users, items) @ (1 << np.arange(3))
    np.testing.assert_array_equal(bits, expected)


def test_shared_negatives_log_q_is_the_expected_count_in_the_set():
    positives = np.array([0, 0, 0, 1, 2, 2])
    shared = negatives.SharedNegatives(positives, 4, batch_size=3, num_shared=5)
    # B f_i + N q_i with f the positives' shares and q uniform over 4 items.
    f = np.array([3, 1, 2, 0]) / 6
    q = np.full(4, 0.25)
    np.testing.assert_allclose(np.exp(shared.log_expected), 3 * f + 5 * q, rtol=1e-6)
    draws = shared.draw(np.random.default_rng(0))
    assert draws.shape == (5,) and ((draws >= 0) & (draws < 4)).all()


def test_softmax_batches_hold_their_candidate_sets():
    split = test_samplers._split()
    index = training_index.TrainingIndex.from_split(split)
    config = config_lib.TrainConfig(
        batch_size=8, epochs=1, loss="softmax", shared_negatives=5, steps_per_epoch=3
    )
    first = list(datasets.training_dataset(index, config))
    again = list(datasets.training_dataset(index, config))
    assert len(first) == 3
    for batch, same in zip(first, again):
        candidates = batch[schema.CANDIDATES].numpy()
        assert candidates.shape == (13,)
        np.testing.assert_array_equal(candidates[:8], batch[schema.POS_ITEM].numpy())
        np.testing.assert_array_equal(candidates, same[schema.CANDIDATES].numpy())
        users = batch[schema.USER].numpy()
        np.testing.assert_array_equal(
            batch[schema.CANDIDATE_BITS].numpy(), training_index.pair_bits(index, users, candidates)
        )


def test_discovery_excludes_exactly_the_touched_items():
    # One user, 6 items scoring 6..1 (item 0 highest). Training: bought item 0,
    # carted item 1. Held out: item 4 (untouched) and item 1 (carted).
    table = [[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]
    cases = evaluate.EvalCases(
        users=np.array([0, 0]),
        items=np.array([4, 1]),
        candidates=np.array([[4, 2, 3], [1, 2, 3]]),
        exclude_keys=np.array([0]),
        num_items=6,
        touched_keys=np.array([0, 1]),
    )
    result = evaluate.evaluate(_TableScorer(table), cases, config=_SmallEval())
    # Full: item 4 is beaten by items 1, 2, 3 (0 excluded) -> rank 3; item 1 -> rank 0.
    assert result["full"]["cases"] == 2 and result["full"]["HR@1"] == 0.5
    # Discovery: the carted case is dropped; item 4 is beaten by 2 and 3 only.
    assert result["discovery"]["cases"] == 1
    assert result["discovery"]["HR@1"] == 0.0 and result["discovery"]["HR@10"] == 1.0
    assert result["discovery"]["NDCG@10"] == pytest.approx(1 / np.log2(4))
    assert "1 of 2 cases" in result["discovery"]["protocol"]
    only = evaluate.evaluate(
        _TableScorer(table),
        cases,
        config=_SmallEval(),
        protocols=("discovery",),
    )
    assert set(only) == {"discovery"}


@pytest.mark.parametrize(
    "candidates",
    [
        [],
        # Each supportive branch also ranks its own behavior (auxiliary heads).
        ["--gating=gradient_aux"],
        # Each branch takes its behavior's graph signals beside the ids.
        ["--graph_signals"],
    ],
)
def test_main_trains_the_softmax_objective_and_stops_on_discovery(tmp_path, candidates):
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib

    fv = _flags(
        [
            *tiny_quickstart(tmp_path, steps=10),
            "--loss=softmax",
            "--shared_negatives=64",
            *candidates,
            "--supportive_positive_weight=0",
            # Without views, some held-out buys were never touched: discovery has cases.
            "--ignore_behaviors=pv",
            "--early_stopping_protocol=discovery",
            "--valid_full_ranking_cases=50",
        ]
    )
    results = run_lib.run(cli.config_from_flags(fv))
    assert set(results["test"]) >= {"sampled", "full", "discovery"}
    assert 0 < results["test"]["discovery"]["cases"] < results["test"]["full"]["cases"]
    history = json.load(open(tmp_path / "history.json"))
    assert len(history) == 2 and all("val_HR@10" in h for h in history)
    assert all(np.isfinite(h["loss"]) for h in history)
    # Each epoch's validation is discovery on (the untouched cases of) a
    # 50-case sample; the kept epoch is its best. The test ranks every case.
    assert all(0 < h["val_cases"] <= 50 for h in history)
    best = max(history, key=lambda h: h["val_HR@10"])
    assert results["train"]["best_epoch"] == best["epoch"]
    assert results["test"]["full"]["cases"] == results["test"]["sampled"]["cases"]


def test_discovery_through_recommend_takes_touched_items_out_of_the_list():
    from mmrec_tf.export import evaluation

    lists = {b"u0": [b"i1", b"i4", b"i2"], b"u1": [b"i3", b"i0", b"i5"]}

    def recommend(user_id):
        ids = tf.constant([lists[u] for u in user_id.numpy()])
        return {"item_ids": ids, "scores": tf.zeros(ids.shape)}

    # u0 carted i1; u1 bought i0 (keys user * 6 + item).
    result = evaluation.evaluate_signatures(
        {"retrieve": recommend, "recommend": recommend},
        users=np.array([0, 1, 1]),
        items=np.array([4, 0, 5]),
        user_tokens=np.array(["u0", "u1"]),
        item_tokens=np.array([f"i{k}" for k in range(6)]),
        retrieval_ks=(3,),
        touched_keys=np.array([1, 6]),
    )
    # Full: i4 at position 1 for u0, i0 at 1 and i5 at 2 for u1.
    assert result["recommend"]["HR@1"] == 0.0
    discovery = result["recommend_discovery"]
    # (u1, i0) was touched: dropped. u0's list without i1 is [i4, i2]: i4 first;
    # u1's list without i0 is [i3, i5]: i5 second.
    assert discovery["cases"] == 2 and discovery["HR@1"] == 0.5
    assert discovery["cases_with_touched_items_returned"] == 2


def test_softmax_l2_penalizes_the_grid_rows():
    scorer = _scorer("gmf", l2=0.5)
    ranker = ranking.Ranker(scorer, task=tasks.SoftmaxTask())
    batch = _softmax_batch(
        [0, 1], [2, 3, 5], [[1, 0, 0], [0, 1, 0]], **{schema.POS_WEIGHT: tf.ones([2])}
    )
    loss, per_example, _ = ranker._compute_losses(batch, training=True)
    mf = scorer.mf
    p = mf.user_embedding.embeddings.numpy()[[0, 1]]
    q = mf.item_embedding.embeddings.numpy()[[2, 3, 5]]
    penalty = 0.5 * ((p**2).sum() + (q**2).sum()) / 2
    np.testing.assert_allclose(loss.numpy(), per_example.numpy().mean() + penalty, rtol=1e-5)


def test_behavior_branch_losses_rank_each_behavior_over_the_candidates():
    scorer = _scorer("mmf", gating="gradient_aux")
    with_aux = tasks.SoftmaxTask(branch_loss_weight=0.5)
    without = tasks.SoftmaxTask()
    users = np.array([0, 1, 2], np.int32)
    candidates = np.array([3, 4, 5, 6, 7], np.int32)
    bits = np.zeros((3, 5), np.int32)
    bits[0, 0] = 0b011  # row 0's positive was bought and carted
    bits[1, 1] = 0b100  # row 1's positive was only faved
    bits[2, 2] = 0b001
    bits[0, 3] = 0b010  # user 0 also carted item 6: not a cart negative of row 0
    log_q = np.log(np.array([0.2, 0.2, 0.1, 0.3, 0.2], np.float32))
    batch = _softmax_batch(users, candidates, bits, log_q)
    extra = (
        with_aux(scorer, batch, training=False)[0] - without(scorer, batch, training=False)[0]
    ).numpy()
    _, branches = models.score_grid(scorer, users, candidates, return_branches=True)
    scores = scorer.get_layer("branch_scores")(branches[1:]).numpy()  # [3, 5, 2]
    expected = np.zeros(3)
    for s, t in ((0, 1), (1, 2)):  # cart, fav
        for b in range(3):
            if not bits[b, b] >> t & 1:
                continue  # only rows whose positive has the behavior
            keep = [c for c in range(5) if c == b or not bits[b, c] >> t & 1]
            x = scores[b, keep, s] - log_q[keep]
            expected[b] += np.log(np.exp(x - x.max()).sum()) + x.max() - x[keep.index(b)]
    np.testing.assert_allclose(extra, 0.5 * expected, rtol=1e-4, atol=1e-5)
    assert extra[0] > 0 and extra[1] > 0 and extra[2] == 0


def test_mf_part_starts_at_the_als_factors():
    from mmrec_tf import baselines
    from mmrec_tf import run as run_lib
    from mmrec_tf.baselines import als

    split = test_samplers._split()
    config = config_lib.ExperimentConfig(
        model=config_lib.ModelConfig(
            model="mmf", mf_dim=4, mlp_dim=2, mf_init="als", als_supportive_weight=0.5
        ),
        train=config_lib.TrainConfig(verbose=0),
    )
    scorer = models.build_model(
        config.model, num_users=split.num_users, num_items=split.num_items, behaviors=BEHAVIORS
    )
    run_lib.start_from_als(scorer, config, split)
    x, y, _ = als.fit(split, baselines.als_config(config.model, config.train.seed), verbose=False)
    users = np.arange(split.num_users, dtype=np.int32)
    items = np.arange(split.num_items, dtype=np.int32)
    np.testing.assert_allclose(
        models.factorized_grid(scorer, users, items).numpy(), x @ y.T, rtol=1e-4, atol=1e-5
    )
    # The branches start as a zero residual: the whole model's first logit
    # is the ALS score plus the head's bias.
    grid = models.score_grid(scorer, users, items, training=False).numpy()
    bias = scorer.get_layer("head").get_weights()[1]
    np.testing.assert_allclose(grid, x @ y.T + bias, rtol=1e-4, atol=1e-5)
    trainable = {id(v) for v in scorer.trainable_variables}
    assert id(scorer.get_layer("mf").user_embedding.embeddings) in trainable
    fixed = dataclasses.replace(
        config, model=dataclasses.replace(config.model, mf_init="als_fixed")
    )
    run_lib.start_from_als(scorer, fixed, split)
    trainable = {id(v) for v in scorer.trainable_variables}
    mf = scorer.get_layer("mf")
    assert id(mf.user_embedding.embeddings) not in trainable
    assert id(mf.item_embedding.embeddings) not in trainable
    assert id(scorer.get_layer("head").dense.kernel) in trainable
    with pytest.raises(ValueError, match="history"):
        run_lib.start_from_als(
            models.build_model(
                config_lib.ModelConfig(model="gmf", mf_dim=4, history_length=3),
                num_users=split.num_users,
                num_items=split.num_items,
                behaviors=BEHAVIORS,
            ),
            config,
            split,
        )
    # The config refuses the combination before any fit.
    with pytest.raises(ValueError, match="mf_init='als' is invalid"):
        config_lib.ModelConfig(model="gmf", mf_init="als", history_length=3)
    with pytest.raises(ValueError, match="mf_init='als_fixed' is invalid"):
        config_lib.ModelConfig(model="mlp", mf_init="als_fixed")


def _als_start_args(tmp_path) -> list[str]:
    """A tiny quickstart run with the softmax objective and no histories, as an ALS start needs."""
    return [
        *tiny_quickstart(tmp_path, steps=5),
        "--loss=softmax",
        "--shared_negatives=32",
        "--supportive_positive_weight=0",
        "--history_length=0",
    ]


@pytest.mark.parametrize("mf_init", ["als", "als_fixed"])
def test_an_als_start_is_validated_as_epoch_zero(tmp_path, mf_init):
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib

    fv = _flags(
        [
            *_als_start_args(tmp_path),
            f"--mf_init={mf_init}",
            "--early_stopping_protocol=full",
            "--valid_full_ranking_cases=50",
            # A rate that wrecks the start: the kept weights must be epoch 0's.
            "--learning_rate=5",
        ]
    )
    config = cli.config_from_flags(fv)
    results = run_lib.run(config)
    history = json.load(open(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [0, 1, 2]
    best = max(history, key=lambda h: h["val_HR@10"])
    assert results["train"]["best_epoch"] == best["epoch"]
    assert results["train"]["best_validation"]["HR@10"] == best["val_HR@10"]


def test_a_start_keeping_margin_compares_per_case_validation_hits(tmp_path):
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib

    def run(name, *extra):
        args = [
            *_als_start_args(tmp_path / name),
            "--early_stopping_protocol=full",
            "--valid_full_ranking_cases=50",
            "--learning_rate=0.05",
            "--steps_per_epoch=60",
            "--early_stopping_margin=2",
            *extra,
        ]
        results = run_lib.run(cli.config_from_flags(_flags(args)))
        return results, json.load(open(tmp_path / name / "history.json"))

    # Trainable ALS tables: epoch 1 gains a case or so of the 50 (0.06 -> 0.08),
    # which keeping any gain would take and the margin does not.
    results, history = run("noise", "--mf_init=als")
    assert history[1]["val_HR@10"] > history[0]["val_HR@10"]
    assert results["train"]["best_epoch"] == 0
    # The kept epoch's per-case hits sit beside its weights: the validation
    # sample's cases, their mean the kept validation HR@10.
    hits = np.load(tmp_path / "noise" / "best" / "validation_hits.npy")
    assert len(hits) == history[0]["val_cases"] == 50
    assert hits.mean() == pytest.approx(results["train"]["best_validation"]["HR@10"])
    # With the behavior offsets each epoch gains far beyond the margin: both are taken.
    results, history = run("signal", "--mf_init=als_fixed", "--behavior_features")
    assert history[2]["val_HR@10"] > history[1]["val_HR@10"] > history[0]["val_HR@10"]
    assert results["train"]["best_epoch"] == 2


def test_eval_cases_take_the_training_index_keys_as_the_touched_pairs():
    split = test_samplers._split()
    index = training_index.TrainingIndex.from_split(split)
    config = _SmallEval()
    built = evaluate.EvalCases.build(split, "test", config)
    reused = evaluate.EvalCases.build(split, "test", config, touched_keys=index.keys)
    np.testing.assert_array_equal(built.touched_keys, index.keys)
    assert reused.touched_keys is index.keys
    np.testing.assert_array_equal(built.candidates, reused.candidates)


def test_a_touched_first_start_is_the_touched_first_als(tmp_path):
    from mmrec_tf import baselines
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib
    from mmrec_tf.baselines import als
    from mmrec_tf.baselines import popularity

    args = [
        *_als_start_args(tmp_path),
        "--mf_init=als_fixed",
        "--behavior_features",
        "--behavior_init=touched_first",
        "--early_stopping_protocol=full",
        "--valid_full_ranking_cases=50",
        # A rate that wrecks the start: the kept weights are epoch 0's.
        "--learning_rate=5",
        "--mode=train",
    ]
    config = cli.config_from_flags(_flags(args))
    data, split, results = run_lib.load(config, str(tmp_path))
    ranker, index = run_lib.build(config, split, tf.distribute.get_strategy())
    score = evaluate.Scorer(
        ranker.scorer, split.behaviors.num_behaviors, config.eval.batch_size, index=index
    )
    valid = evaluate.EvalCases.build(split, "valid", config.eval, touched_keys=index.keys)
    x, y, _ = als.fit(split, baselines.als_config(config.model, config.train.seed), verbose=False)
    touched_first = popularity.TouchedFirst(als.FactorScorer(x, y), index)
    expected = evaluate.evaluate(
        touched_first, valid, config=config.eval, protocols=("full",), case_limit=50
    )["full"]["HR@10"]
    run_lib.train(config, ranker, index, split, str(tmp_path), results, score, valid)
    assert results["behavior_init"]["kept"] == "touched_first"
    # The start (epoch 0, kept) ranks every touched item above every untouched one.
    history = json.load(open(tmp_path / "history.json"))
    assert results["train"]["best_epoch"] == 0
    assert history[0]["val_HR@10"] == pytest.approx(expected, abs=1e-9)
    users = np.arange(split.num_users, dtype=np.int32)
    items = np.arange(split.num_items, dtype=np.int32)
    offsets = np.array(list(ranker.scorer.behavior_offsets().values()))
    grid = models.score_grid(ranker.scorer, users[:20], items, index.gate_grid(users[:20], items))
    touched = index.gate_grid(users[:20], items)[..., 1:].sum(-1) > 0
    for row, mask in zip(grid.numpy(), touched):
        if mask.any() and (~mask).any():
            assert row[mask].min() > row[~mask].max()
    assert (offsets > 0).all()
    with pytest.raises(ValueError, match="behavior_init"):
        config_lib.ModelConfig(behavior_features=True, behavior_init="touched_first")
