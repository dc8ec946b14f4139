"""Training: resume from checkpoints, early stopping, the mirrored strategy."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import ranking
from mmrec_tf import run as run_lib
from mmrec_tf import train as train_lib
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import training_index

DATA = config_lib.DataConfig(synthetic_users=300, synthetic_items=400, seed=0)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    _, split = loading.load(DATA, work_dir=str(tmp_path_factory.mktemp("data")))
    return split


def _ranker(split, strategy=None, **train_kwargs):
    config = config_lib.ExperimentConfig(
        data=DATA,
        model=config_lib.ModelConfig(mf_dim=4, mlp_dim=4, init_stddev=0.1),
        train=config_lib.TrainConfig(batch_size=64, verbose=0, **train_kwargs),
    )
    tf_keras.utils.set_random_seed(0)
    with (strategy or tf.distribute.get_strategy()).scope():
        ranker = ranking.build_ranker(
            config,
            num_users=split.num_users,
            num_items=split.num_items,
            behaviors=split.behaviors,
        )
    return ranker, config.train


def _train(split, model_dir, epochs, validation=None, **kwargs):
    strategy = run_lib.make_strategy(kwargs.get("distribution_strategy", "default"))
    ranker, config = _ranker(split, strategy, epochs=epochs, early_stopping_patience=0, **kwargs)
    result = train_lib.train(
        ranker=ranker,
        index=training_index.TrainingIndex.from_split(split),
        config=config,
        model_dir=str(model_dir),
        validation=validation,
    )
    return ranker, result


def test_restart_resumes_from_the_last_checkpoint(split, tmp_path):
    straight, result = _train(split, tmp_path / "straight", epochs=3)
    assert result.epochs_completed == 3 and result.resumed_from_epoch == 0
    _train(split, tmp_path / "resumed", epochs=1)
    resumed, result = _train(split, tmp_path / "resumed", epochs=3)
    assert result.resumed_from_epoch == 1 and result.epochs_completed == 3
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for a, b in zip(straight.scorer.get_weights(), resumed.scorer.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # A finished run started again trains no further.
    _, again = _train(split, tmp_path / "resumed", epochs=3)
    assert again.resumed_from_epoch == 3 and len(again.history) == 3


def test_early_stopping_keeps_the_best_epoch(split, tmp_path):
    values = iter([0.3, 0.5, 0.4, 0.2, 0.1, 0.0])
    ranker, config = _ranker(split, epochs=6, early_stopping_patience=2)
    saved = {}

    def validation():
        value = next(values)
        saved[value] = [w.copy() for w in ranker.scorer.get_weights()]
        return {"HR@10": value}

    result = train_lib.train(
        ranker=ranker,
        index=training_index.TrainingIndex.from_split(split),
        config=config,
        model_dir=str(tmp_path),
        validation=validation,
    )
    assert result.stopped_early and result.epochs_completed == 4
    assert result.best_epoch == 2 and result.best_validation == {"HR@10": 0.5}
    for a, b in zip(ranker.scorer.get_weights(), saved[0.5]):
        np.testing.assert_array_equal(a, b)
    history = json.load(open(os.path.join(tmp_path, "history.json")))
    assert [h["val_HR@10"] for h in history] == [0.3, 0.5, 0.4, 0.2]


def test_mirrored_strategy_on_two_logical_cpus_matches_one_device(split, tmp_path):
    strategy = run_lib.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    # Log loss: under BPR the head's bias has an exactly-zero gradient, and
    # Adam turns its rounding noise into +-lr steps that differ by device.
    kwargs = dict(epochs=1, steps_per_epoch=3, supportive_negative_ratio=0.5, loss="logloss")
    mirrored, _ = _train(split, tmp_path / "m", distribution_strategy="mirrored", **kwargs)
    single, _ = _train(split, tmp_path / "s", **kwargs)
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    for a, b in zip(mirrored.scorer.get_weights(), single.scorer.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_checkpoint_is_a_clear_error_not_a_silent_restart(split, tmp_path, damage):
    _train(split, tmp_path, epochs=2)
    data = sorted(str(p) for p in (tmp_path / "checkpoints").glob("ckpt-2.data-*"))
    assert data
    with open(data[0], "r+b") as f:
        if damage == "truncate":
            f.truncate(16)
        else:
            f.seek(0)
            f.write(b"\x00garbage" * 64)
    with pytest.raises(train_lib.CheckpointError) as error:
        _train(split, tmp_path, epochs=3)
    message = str(error.value)
    assert "ckpt-2" in message and "ckpt-1" in message  # the damaged one and the fallback
    assert "start over" in message
