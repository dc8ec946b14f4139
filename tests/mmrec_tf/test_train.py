"""Training: resume from checkpoints, early stopping, the mirrored strategy."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import ranking
from mmrec_tf import run as run_lib
from mmrec_tf import train as train_lib
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import training_index

DATA = config_lib.DataConfig(synthetic_users=300, synthetic_items=400)


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    _, split = loading.load(DATA, work_dir=str(tmp_path_factory.mktemp("data")))
    return split


def _ranker(split, strategy=None, **train_kwargs):
    config = config_lib.ExperimentConfig(
        data=DATA,
        model=config_lib.ModelConfig(mf_dim=4, mlp_dim=4),
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


def test_early_stopping_keeps_the_best_epoch(split, tmp_path, capsys):
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
    # The log says why training stopped before --epochs, and what it kept.
    out = capsys.readouterr().out
    assert (
        "early stopping after epoch 4: 2 epoch(s) without beating the kept epoch 2 "
        "(validation HR@10 0.5000); --early_stopping_patience=2"
    ) in out
    assert "kept epoch 2 (validation HR@10 0.5000); 4 of 6 epochs run" in out


def _hits(gained: int, lost: int, cases: int = 400) -> np.ndarray:
    """Per-case hits: a start with 120 of `cases` hits, then `gained` misses hit and `lost` hits missed."""
    hits = np.zeros(cases, bool)
    hits[:120] = True
    hits[120 : 120 + gained] = True
    hits[:lost] = False
    return hits


def _train_on_hits(split, model_dir, epochs, hits, margin):
    """Trains with a warm-start validation that returns the given per-case hits in turn."""
    ranker, config = _ranker(
        split, epochs=epochs, early_stopping_patience=0, early_stopping_margin=margin
    )
    hits = iter(hits)

    def validation():
        case_hits = next(hits)
        return {"HR@10": float(case_hits.mean()), evaluate.CASE_HITS: case_hits}

    return train_lib.train(
        ranker=ranker,
        index=training_index.TrainingIndex.from_split(split),
        config=config,
        model_dir=str(model_dir),
        validation=validation,
        validate_start=True,
    )


def test_early_stopping_margin_keeps_the_start_through_a_gain_within_the_noise(split, tmp_path):
    # Epoch 1: 20 cases gained, 12 lost of 400: +0.02, 1.4 standard errors of
    # the paired difference; epoch 2: 40 gained, none lost: +0.1, 6.7 of them.
    start, small, large = _hits(0, 0), _hits(20, 12), _hits(40, 0)
    diff = small.astype(float) - start
    assert 1 < diff.mean() / (diff.std(ddof=1) / np.sqrt(len(diff))) < 2
    anygain = _train_on_hits(split, tmp_path / "anygain", 1, [start, small], margin=0)
    assert anygain.best_epoch == 1
    result = _train_on_hits(split, tmp_path / "margin", 1, [start, small], margin=2)
    assert result.best_epoch == 0 and result.best_validation["HR@10"] == 0.3
    # Resumed, the run compares against the kept start's hits, saved beside its weights.
    result = _train_on_hits(split, tmp_path / "margin", 2, [large], margin=2)
    assert result.resumed_from_epoch == 1 and result.best_epoch == 2
    assert result.best_validation["HR@10"] == 0.4
    # Only numbers reach the history: the hits stay out of history.json.
    history = json.load(open(tmp_path / "margin" / "history.json"))
    assert [h["val_HR@10"] for h in history] == [0.3, 0.32, 0.4]
    assert all(evaluate.CASE_HITS not in str(h) for h in history)


def test_early_stopping_margin_needs_per_case_hits(split, tmp_path):
    ranker, config = _ranker(split, epochs=1, early_stopping_patience=0, early_stopping_margin=2)
    values = iter([0.3, 0.4])
    with pytest.raises(ValueError, match="early_stopping_margin"):
        train_lib.train(
            ranker=ranker,
            index=training_index.TrainingIndex.from_split(split),
            config=config,
            model_dir=str(tmp_path),
            validation=lambda: {"HR@10": next(values)},
            validate_start=True,
        )


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
