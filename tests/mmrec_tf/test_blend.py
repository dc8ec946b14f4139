"""--cascade_blend: the blend's scores, its weight chosen on validation, kept for evaluation."""

import json
import os

import numpy as np
import pytest

from mmrec_tf import blend
from mmrec_tf import cli
from mmrec_tf import run as run_lib
from mmrec_tf.baselines import cascade
from tests.mmrec_tf import test_run_record
from tests.mmrec_tf.test_main import _flags
from tests.pipelines import test_samplers

TINY = [*test_run_record.TINY, "--full_ranking_cases=80", "--cascade_blend"]


class _Hashed:
    """A model scorer with fixed pseudo-random logits per pair."""

    def _logits(self, users, items):
        return np.sin(np.asarray(users) * 12.9898 + np.asarray(items) * 78.233).astype(np.float32)

    def __call__(self, users, items):
        return self._logits(users, items)

    def grid(self, users, items):
        return self._logits(np.asarray(users)[:, None], np.asarray(items)[None, :])


def test_the_blend_adds_the_weighted_log_cascade_score_to_the_logits():
    split = test_samplers._split(num_users=20, num_items=25, seed=3)
    ranker = cascade.CascadeScorer(split, cascade.CascadeConfig(alpha=0.5, beta=0.3))
    blended = blend.Blended(_Hashed(), ranker, 0.5)
    users, items = np.array([0, 3, 19]), np.arange(25)
    c = ranker.grid(users, items)
    want = _Hashed().grid(users, items) + 0.5 * np.log(25 * c + blend.FLOOR)
    np.testing.assert_allclose(blended.grid(users, items), want, rtol=1e-5, atol=1e-5)
    pairs_u, pairs_i = np.array([3, 0, 3]), np.array([7, 2, 24])
    np.testing.assert_allclose(
        blended(pairs_u, pairs_i), want[[1, 0, 1], [7, 2, 24]], rtol=1e-5, atol=1e-5
    )
    # Weight 0 is the model alone, cascade not run.
    alone = blend.Blended(_Hashed(), ranker, 0.0)
    np.testing.assert_array_equal(alone.grid(users, items), _Hashed().grid(users, items))


def _run(model_dir, *extra):
    return run_lib.run(cli.config_from_flags(_flags([f"--model_dir={model_dir}", *TINY, *extra])))


def test_the_weight_is_chosen_on_validation_and_kept_for_evaluation(tmp_path):
    results = _run(tmp_path, "--early_stopping_margin=0")
    record = results["cascade_blend"]
    hits = {float(w): h for w, h in record["HR@10"].items()}
    assert set(hits) == {0.0, *blend.WEIGHTS}
    # Without a margin the best weight is kept when it beats the model alone.
    best = max(blend.WEIGHTS, key=lambda w: (hits[w], -w))
    assert record["weight"] == (best if hits[best] > hits[0.0] else 0.0)
    with open(os.path.join(tmp_path, blend.RECORD)) as f:
        assert json.load(f)["weight"] == record["weight"]
    # An evaluation reads the weight and ranks exactly as the run did.
    evaluated = _run(tmp_path, "--early_stopping_margin=0", "--mode=evaluate")
    assert evaluated["cascade_blend"] == record
    for protocol in ("sampled", "full"):
        assert evaluated["test"][protocol]["HR@10"] == results["test"][protocol]["HR@10"]


def test_a_margin_no_weight_can_pass_keeps_the_model_alone(tmp_path):
    record = _run(tmp_path, "--early_stopping_margin=1000")["cascade_blend"]
    assert record["weight"] == 0.0
    assert record["margin"] == 1000


def test_evaluating_without_the_recorded_weight_is_an_error_naming_the_file(tmp_path):
    _run(tmp_path)
    os.remove(os.path.join(tmp_path, blend.RECORD))
    with pytest.raises(FileNotFoundError, match=r"blend\.json is missing.*Train the run"):
        _run(tmp_path, "--mode=evaluate")


def test_a_fitted_baseline_cannot_blend():
    with pytest.raises(ValueError, match="cascade_blend"):
        cli.config_from_flags(_flags(["--model_dir=_", "--model=als", "--cascade_blend"]))
