"""The parameter-server workers' input: the sampler's draws in TensorFlow ops."""

import itertools
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import negatives
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index
from mmrec_tf.pipelines import worker_input
from tests.pipelines import test_samplers


def _batches(index, config, count, salt=(3, 4)):
    dataset = worker_input.dataset_fn(index, config, salt=salt)()
    return [{k: v.numpy() for k, v in b.items()} for b in itertools.islice(dataset, count)]


def _index():
    return training_index.TrainingIndex.from_split(test_samplers._split())


def test_pairwise_batches_pass_over_every_positive_with_untouched_or_supportive_negatives():
    index = _index()
    config = config_lib.TrainConfig(
        batch_size=16, num_negatives=3, supportive_negative_ratio=0.5, seed=0
    )
    positives = len(index.pos_users)  # 120: 8 batches a pass, the last filled from the start
    per_pass = -(-positives // 16)
    batches = _batches(index, config, 2 * per_pass)
    for b in batches:
        assert b[schema.USER].shape == (16,) and b[schema.NEG_ITEM].shape == (16, 3)
        assert b[schema.NEG_GATE].shape == (16, 3, 3)
    for number in range(2):
        one_pass = batches[number * per_pass : (number + 1) * per_pass]
        keys = np.concatenate(
            [
                b[schema.USER].astype(np.int64) * index.num_items + b[schema.POS_ITEM]
                for b in one_pass
            ]
        )
        expected = np.sort(index.pos_users.astype(np.int64) * index.num_items + index.pos_items)
        # Every positive once, then the pass's first ones again to fill the batch.
        np.testing.assert_array_equal(np.sort(keys[:positives]), expected)
        np.testing.assert_array_equal(keys[positives:], keys[: per_pass * 16 - positives])
    # Each pass in a fresh order.
    first, second = (
        np.concatenate([b[schema.USER] for b in batches[k * per_pass : (k + 1) * per_pass]])
        for k in range(2)
    )
    assert not np.array_equal(first, second)

    users = np.concatenate([b[schema.USER] for b in batches])
    items = np.concatenate([b[schema.POS_ITEM] for b in batches])
    np.testing.assert_array_equal(
        np.concatenate([b[schema.POS_GATE] for b in batches]), index.gates(users, items)
    )
    assert (np.concatenate([b[schema.POS_WEIGHT] for b in batches]) == 1).all()
    neg = np.concatenate([b[schema.NEG_ITEM] for b in batches])
    neg_gate = np.concatenate([b[schema.NEG_GATE] for b in batches])
    grid = np.broadcast_to(users[:, None], neg.shape)
    np.testing.assert_array_equal(neg_gate, index.gates(grid, neg))
    touched = training_index.contains(index.keys, grid.astype(np.int64) * index.num_items + neg)
    # A touched negative is one of the user's supportive-only items: never bought.
    assert (neg_gate[touched][:, 0] == 0).all() and (neg_gate[touched][:, 1:].sum(-1) > 0).all()
    # Every user here has supportive-only items, so about half the draws are.
    assert 0.4 < touched.mean() < 0.6, touched.mean()


def test_softmax_batches_carry_the_shared_candidates_their_log_q_and_bits():
    index = _index()
    config = config_lib.TrainConfig(batch_size=16, loss="softmax", shared_negatives=24, seed=0)
    shared = negatives.SharedNegatives(
        index.pos_items, index.num_items, batch_size=16, num_shared=24
    )
    for b in _batches(index, config, 10):
        candidates = b[schema.CANDIDATES]
        assert candidates.shape == (40,) and b[schema.NEG_ITEM].shape == (16, 0)
        np.testing.assert_array_equal(candidates[:16], b[schema.POS_ITEM])
        np.testing.assert_allclose(b[schema.CANDIDATE_LOG_Q], shared.log_expected[candidates])
        np.testing.assert_array_equal(
            b[schema.CANDIDATE_BITS], training_index.pair_bits(index, b[schema.USER], candidates)
        )


_FIRST_BATCH = """
import numpy as np, tensorflow as tf
from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import schema, training_index, worker_input
from tests.pipelines import test_samplers
index = training_index.TrainingIndex.from_split(test_samplers._split())
config = config_lib.TrainConfig(batch_size=16, num_negatives=2, seed=0)
tf.random.set_seed(0)  # fixed, as every worker of a run fixes it
for salt in (None, (1, 2)):
    batch = next(iter(worker_input.dataset_fn(index, config, salt=salt)()))
    print(np.stack([batch[schema.USER].numpy(), batch[schema.NEG_ITEM].numpy()[:, 0]]).tolist())
"""


def _first_batches_in_a_new_process():
    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", _FIRST_BATCH],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    return out[-2], out[-1]


def test_each_worker_process_draws_its_own_stream_unless_salted():
    # Workers are separate processes with the same global seed: only the salt
    # drawn from the operating system may tell their streams apart.
    unsalted_a, salted_a = _first_batches_in_a_new_process()
    unsalted_b, salted_b = _first_batches_in_a_new_process()
    assert unsalted_a != unsalted_b
    assert salted_a == salted_b


def test_a_user_who_touched_every_item_is_named_with_the_fix():
    split = test_samplers.training_split(
        [0, 0, 0, 1],
        [0, 1, 2, 0],
        [0, 1, 0, 0],
        num_users=2,
        num_items=3,
        behaviors=schema.BehaviorSchema("buy", ("cart",)),
    )
    index = training_index.TrainingIndex.from_split(split)
    config = config_lib.TrainConfig(batch_size=4, num_negatives=1, supportive_negative_ratio=0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="touched .* every one of the 3"):
        _batches(index, config, 1)


def test_graph_signals_and_oversized_indexes_keep_the_chiefs_sampler(monkeypatch):
    index = _index()
    config = config_lib.TrainConfig(batch_size=16, num_negatives=2)
    make, reason = worker_input.plan(index, config)
    assert reason is None and callable(make)
    make, reason = worker_input.plan(index, config, signals=object())
    assert make is None and "graph signals" in reason
    monkeypatch.setattr(worker_input, "MAX_INDEX_BYTES", 100)
    make, reason = worker_input.plan(index, config)
    assert make is None and "GiB" in reason
