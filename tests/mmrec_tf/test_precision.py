"""XLA and mixed precision, checked for correctness on CPU."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf import ranking
from mmrec_tf import train as train_lib
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

DATA = config_lib.DataConfig(synthetic_users=200, synthetic_items=300)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    return loading.load(DATA, work_dir=str(tmp_path_factory.mktemp("data")), seed=1)[1]


def _train(split, model_dir, compile_options=None, history_length=3, **train_kwargs):
    train = dict(
        batch_size=64,
        epochs=1,
        steps_per_epoch=4,
        verbose=0,
        loss="logloss",
        supportive_negative_ratio=0.5,
    )
    config = config_lib.ExperimentConfig(
        model=config_lib.ModelConfig(mf_dim=4, mlp_dim=4, history_length=history_length),
        train=config_lib.TrainConfig(**{**train, **train_kwargs}),
    )
    tf_keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    try:
        tf_keras.utils.set_random_seed(0)
        # N(0, 0.1) instead of the paper's N(0, 0.01): four steps then move
        # the logits well beyond float noise.
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(config_lib.ModelConfig, "init_stddev", 0.1)
            ranker = ranking.build_ranker(
                config,
                num_users=split.num_users,
                num_items=split.num_items,
                behaviors=split.behaviors,
            )
        result = train_lib.train(
            ranker=ranker,
            index=training_index.TrainingIndex.from_split(split),
            config=config.train,
            model_dir=str(model_dir),
            compile_options=compile_options,
        )
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    return ranker, result


def _logits(ranker, split):
    users = tf.constant(split.test_users[:50])
    items = tf.constant(split.test_items[:50])
    out = ranker.scorer(
        {
            schema.USER: users,
            schema.ITEM: items,
            schema.GATE: tf.ones([50, split.behaviors.num_behaviors]),
        }
    )
    return out[schema.LOGIT]


def test_xla_training_matches_the_plain_step(split, tmp_path):
    plain, plain_result = _train(split, tmp_path / "plain")
    xla, xla_result = _train(split, tmp_path / "xla", compile_options={"jit_compile": True})
    # XLA reorders float arithmetic, and Adam's first steps turn that noise in
    # near-zero gradients into +-lr moves of single weights; the models agree.
    assert xla_result.history[-1]["loss"] == pytest.approx(
        plain_result.history[-1]["loss"], abs=1e-3
    )
    a, b = _logits(xla, split).numpy(), _logits(plain, split).numpy()
    assert np.corrcoef(a, b)[0, 1] > 0.999
    np.testing.assert_allclose(a, b, atol=0.02 * np.ptp(b))


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_trains_in_low_precision_and_scores_in_float32(split, tmp_path, policy):
    plain, _ = _train(split, tmp_path / "plain")
    mixed, result = _train(split, tmp_path / policy, mixed_precision=policy)
    assert np.isfinite(result.history[-1]["loss"])
    assert all(v.dtype == tf.float32 for v in mixed.scorer.trainable_variables)
    tower = mixed.scorer.get_layer("tower_buy")
    assert tower.compute_dtype == policy.split("_")[1]
    if policy == "mixed_float16":
        assert isinstance(mixed.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)
    low, high = _logits(mixed, split), _logits(plain, split)
    assert low.dtype == tf.float32
    # Low-precision arithmetic moves the logits a little, not their order.
    correlation = np.corrcoef(low.numpy(), high.numpy())[0, 1]
    assert correlation > 0.95


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_the_softmax_objective_trains_under_mixed_precision(split, tmp_path, policy):
    # Its loss, the accidental-hit mask included, is computed in float32.
    plain, _ = _train(split, tmp_path / "plain", history_length=0, loss="softmax")
    mixed, result = _train(
        split, tmp_path / policy, history_length=0, loss="softmax", mixed_precision=policy
    )
    assert np.isfinite(result.history[-1]["loss"])
    correlation = np.corrcoef(_logits(mixed, split).numpy(), _logits(plain, split).numpy())[0, 1]
    assert correlation > 0.95
    # The grid (full ranking's scoring) runs in the policy's dtype too, and
    # ranks as the plain model's grid does.
    users, items = tf.constant(split.test_users[:5]), tf.range(split.num_items)
    low = models.score_grid(mixed.scorer, users, items)
    high = models.score_grid(plain.scorer, users, items)
    assert low.dtype == tf.float32 and np.all(np.isfinite(low.numpy()))
    assert np.corrcoef(low.numpy().ravel(), high.numpy().ravel())[0, 1] > 0.95
