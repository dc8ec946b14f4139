"""The training input: batches are the epoch's draw, chunk by chunk, epoch after epoch."""

import numpy as np
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import datasets
from mmrec_tf.pipelines import negatives
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index
from tests.pipelines import test_samplers


def _batches(index, config, **kwargs):
    return [
        {k: v.numpy() for k, v in batch.items()}
        for batch in datasets.training_dataset(index, config, **kwargs)
    ]


def test_batches_concatenate_to_each_epochs_draw_with_a_short_last_batch(monkeypatch):
    # Chunks of 2 batches of 7, drawn one after another.
    monkeypatch.setattr(negatives, "CHUNK_EXAMPLES", 16)
    index = training_index.TrainingIndex.from_split(test_samplers._split())
    config = config_lib.TrainConfig(batch_size=7, epochs=3, num_negatives=2, seed=5)
    steps = datasets.steps_per_epoch(index, config)
    assert len(index.pos_users) % 7  # the last batch of an epoch is short
    batches = _batches(index, config, start_epoch=1)
    assert len(batches) == 2 * steps
    for epoch in (1, 2):
        drawn = negatives.sample_epoch(
            index, num_negatives=2, supportive_ratio=1.0, seed=5, epoch=epoch, chunk_size=14
        )
        got = batches[(epoch - 1) * steps : epoch * steps]
        assert [len(b[schema.USER]) for b in got[:-1]] == [7] * (steps - 1)
        for field, expected in drawn.items():
            np.testing.assert_array_equal(np.concatenate([b[field] for b in got]), expected)


def test_a_shard_with_fewer_batches_starts_over_to_fill_the_epoch():
    index = training_index.TrainingIndex.from_split(test_samplers._split())
    config = config_lib.TrainConfig(batch_size=8, epochs=1, num_negatives=1, seed=0)
    steps = datasets.steps_per_epoch(index, config)
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1)
    batches = _batches(index, config, input_context=context)
    assert len(batches) == steps  # every worker runs the same number of steps
    drawn = negatives.sample_epoch(index, num_negatives=1, supportive_ratio=1.0, seed=0, epoch=0)
    shard = drawn[schema.USER][1::2]
    per_shard = -(-len(shard) // 8)
    assert per_shard < steps
    np.testing.assert_array_equal(
        np.concatenate([b[schema.USER] for b in batches[:per_shard]]), shard
    )
    np.testing.assert_array_equal(batches[per_shard][schema.USER], shard[:8])


def test_replicas_of_one_worker_consume_exactly_each_epochs_examples():
    # Mirrored on the two logical CPUs: one input pipeline, two replicas, each
    # step takes a per-replica batch for each; an epoch's steps take the
    # epoch's draw, no more (the next epoch's) and no less.
    from mmrec_tf import run as run_lib

    strategy = run_lib.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    index = training_index.TrainingIndex.from_split(test_samplers._split())
    config = config_lib.TrainConfig(batch_size=8, epochs=2, num_negatives=1, seed=3)
    steps = datasets.steps_per_epoch(index, config)
    distributed = strategy.distribute_datasets_from_function(
        lambda context: datasets.training_dataset(index, config, input_context=context)
    )
    iterator = iter(distributed)
    for epoch in range(config.epochs):
        users = []
        for _ in range(steps):
            batch = next(iterator)
            for part in strategy.experimental_local_results(batch[schema.USER]):
                users.append(part.numpy())
        drawn = negatives.sample_epoch(
            index, num_negatives=1, supportive_ratio=1.0, seed=3, epoch=epoch
        )[schema.USER]
        got = np.concatenate(users)
        # The epoch's examples in order, the last step filled from the start.
        np.testing.assert_array_equal(got[: len(drawn)], drawn)
        assert len(got) == steps * config.batch_size
        np.testing.assert_array_equal(got[len(drawn) :], drawn[: len(got) - len(drawn)])
