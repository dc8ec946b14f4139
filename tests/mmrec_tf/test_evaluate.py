"""Metrics against hand-worked values; both protocols on a tiny model."""

import math

import numpy as np
import pytest

from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import models
from mmrec_tf.pipelines import schema


class _TenNegatives(config_lib.EvalConfig):
    sampled_negatives = 10


def test_metrics_from_ranks_by_hand():
    # ranks 0, 3, 10: hits 1, 1, 0; gains 1/log2(2)=1, 1/log2(5)=0.4307, 0
    result = evaluate.metrics_from_ranks(np.array([0, 3, 10]), ks=(10,))
    assert result["cases"] == 3
    assert result["HR@10"] == pytest.approx(2 / 3)
    assert result["NDCG@10"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert result["HR@10_se"] == pytest.approx(np.std([1, 1, 0], ddof=1) / math.sqrt(3))


class _TableScorer(evaluate.Scorer):
    """Scores from a [users, items] table, to test the rank arithmetic."""

    def __init__(self, table):
        self.table = np.asarray(table, np.float32)
        self.batch_size = 7

    def __call__(self, users, items):
        return self.table[users, items]

    def grid(self, users, items):
        return self.table[users][:, items]


def test_constant_scores_give_zero_hit_rate():
    score = _TableScorer(np.zeros((2, 200)))
    candidates = np.tile(np.arange(100), (2, 1))
    ranks = evaluate.sampled_ranks(score, np.array([0, 1]), candidates)
    assert ranks.tolist() == [99, 99]
    assert evaluate.metrics_from_ranks(ranks)["HR@10"] == 0.0


def test_sampled_rank_counts_ties_against_the_held_out_item():
    table = [[5, 1, 5, 9, 0]]
    # held-out item 0 scores 5; candidates 1..4 score 1, 5, 9, 0: two are >= 5
    ranks = evaluate.sampled_ranks(_TableScorer(table), np.array([0]), np.array([[0, 1, 2, 3, 4]]))
    assert ranks.tolist() == [2]


def test_full_rank_leaves_out_excluded_items():
    table = [[0.5, 0.9, 0.8, 0.1, 0.7]]
    exclude = np.array([0 * 5 + 1])  # item 1 is a training buy
    ranks = evaluate.full_ranks(_TableScorer(table), np.array([0]), np.array([4]), exclude, 5)
    assert ranks.tolist() == [1]  # only item 2 (0.8) beats 0.7 once item 1 is excluded


def test_evaluate_runs_both_protocols_on_a_keras_scorer():
    # A one-factor GMF whose logit is -item / 100: the lower item id wins.
    scorer = models.build_model(
        config_lib.ModelConfig(model="gmf", mf_dim=1),
        num_users=2,
        num_items=200,
        behaviors=schema.BehaviorSchema("buy", ()),
    )
    mf, head = scorer.get_layer("mf"), scorer.get_layer("head")
    mf.user_embedding.set_weights([np.ones((2, 1), np.float32)])
    mf.item_embedding.set_weights([-np.arange(200, dtype=np.float32)[:, None] / 100])
    head.set_weights([np.ones((1, 1), np.float32), np.zeros(1, np.float32)])
    cases = evaluate.EvalCases(
        users=np.array([0, 1], np.int32),
        items=np.array([0, 30]),
        candidates=np.array([[0] + list(range(40, 139)), [30] + list(range(1, 100))]),
        exclude_keys=np.array([1 * 200 + 5]),
        num_items=200,
    )
    result = evaluate.evaluate(
        evaluate.Scorer(scorer, 1, batch_size=64), cases, config=config_lib.EvalConfig()
    )
    # case 0 ranks first; case 1: items 1..29 beat item 30 -> rank 29 sampled,
    # 30 - 1 (item 0 counts, item 5 is excluded) = 29 in full ranking.
    assert result["sampled"]["HR@10"] == 0.5
    assert result["full"]["HR@10"] == 0.5 and result["full"]["HR@50"] == 1.0


def test_full_ranking_case_cap_ranks_a_fixed_sample_and_says_so():
    # Item i scores -i for every user: a case's full rank is its item's id
    # (no exclusions), so the sample's ranks show which cases were ranked.
    num_items, num_cases = 50, 40
    table = np.tile(-np.arange(num_items, dtype=np.float64), (num_cases, 1))
    items = np.arange(num_cases)
    cases = evaluate.EvalCases(
        users=np.arange(num_cases),
        items=items,
        candidates=np.tile(np.arange(num_items)[None, :11], (num_cases, 1)),
        exclude_keys=np.array([], np.int64),
        num_items=num_items,
    )
    config = _TenNegatives(full_ranking_cases=10)
    first = evaluate.evaluate(_TableScorer(table), cases, config=config)
    again = evaluate.evaluate(_TableScorer(table), cases, config=config)
    assert first["sampled"]["cases"] == num_cases  # the sampled protocol keeps every case
    assert first["full"]["cases"] == 10
    assert "sample of 10 of 40 cases" in first["full"]["protocol"]
    assert first["full"] == {**again["full"], "seconds": first["full"]["seconds"]}
    ranked = evaluate.full_ranking_subset(num_cases, 10, config.seed)
    assert len(set(ranked.tolist())) == 10 and ranked.tolist() == sorted(ranked.tolist())
    assert first["full"]["HR@10"] == np.mean(items[ranked] < 10)
    # Per-case hits, in the sample's case order, for paired comparisons.
    hits = evaluate.evaluate(_TableScorer(table), cases, config=config, case_hits=True)
    np.testing.assert_array_equal(hits["full"][evaluate.CASE_HITS], items[ranked] < 10)
    # (The sampled candidates put item 0 first: every case ranks its item first.)
    assert hits["sampled"][evaluate.CASE_HITS].tolist() == [True] * num_cases
    assert evaluate.CASE_HITS not in first["full"]
    # No cap (or a cap at least the case count) ranks every case.
    assert evaluate.full_ranking_subset(num_cases, 0, 1).tolist() == list(range(num_cases))
    assert evaluate.full_ranking_subset(num_cases, 40, 1).tolist() == list(range(num_cases))
    with pytest.raises(ValueError, match="full_ranking_cases"):
        config_lib.EvalConfig(full_ranking_cases=-1)


def test_the_sampled_ranks_read_from_the_full_grid_are_the_pairs_ranks():
    rng = np.random.default_rng(3)
    table = rng.normal(size=(6, 30)).astype(np.float32)
    cases = evaluate.EvalCases(
        users=np.arange(6),
        items=np.arange(6) * 2,
        candidates=np.stack([np.r_[2 * u, rng.choice(30, 9, replace=False)] for u in range(6)]),
        exclude_keys=np.array([], np.int64),
        num_items=30,
    )
    plain = evaluate.evaluate(_TableScorer(table), cases, config=_TenNegatives())
    grid_scorer = _TableScorer(table)
    grid_scorer.signals = object()  # a scorer with graph signals reads them from the grid
    shared = evaluate.evaluate(grid_scorer, cases, config=_TenNegatives())
    for name in ("HR@10", "NDCG@10", "cases"):
        assert shared["sampled"][name] == plain["sampled"][name]
    assert shared["full"]["HR@10"] == plain["full"]["HR@10"]
