"""tf.data training input: sampled examples streamed epoch after epoch.

Each epoch's positives are ordered by `negatives.epoch_positives` and their
negatives drawn chunk by chunk by `negatives.draw_examples` inside the
pipeline (through `tf.numpy_function`), seeded by (seed, epoch, shard,
chunk): negatives are fresh every epoch, the next chunk is drawn while the
model trains on the current one, and a run resumed at epoch e draws what an
uninterrupted run would.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import negatives
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

_FIELDS = (
    schema.USER,
    schema.POS_ITEM,
    schema.POS_GATE,
    schema.POS_WEIGHT,
    schema.NEG_ITEM,
    schema.NEG_GATE,
)
_DTYPES = (tf.int32, tf.int32, tf.float32, tf.float32, tf.int32, tf.float32)


def steps_per_epoch(index: training_index.TrainingIndex, config: config_lib.TrainConfig) -> int:
    """Steps in one pass over the positives, capped by `config.steps_per_epoch`."""
    positives = training_index.num_positives(
        index,
        config.supportive_positive_weight,
    )
    steps = max(1, math.ceil(positives / config.batch_size))
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def training_dataset(
    index: training_index.TrainingIndex,
    config: config_lib.TrainConfig,
    *,
    start_epoch: int = 0,
    input_context: tf.distribute.InputContext | None = None,
    signals=None,
) -> tf.data.Dataset:
    """Batched training examples for epochs `start_epoch` .. `config.epochs - 1`.

    Args:
      index: the training index.
      config: batch size, negatives, sampler ratio, seed, epochs.
      start_epoch: the first epoch to draw (after a resume).
      signals: a `graph_signals.GraphSignals` of the training graph: each
        softmax batch also carries its grid's signals (`schema.SIGNALS`,
        [B, B + N, num_signals]).
      input_context: when given (`distribute_datasets_from_function`), this
        pipeline takes every `num_input_pipelines`-th positive and the
        per-replica batch; with R replicas per pipeline a step takes R of its
        batches, so an epoch yields R times `steps_per_epoch` batches and a
        step consumes the same global batch as without replicas.

    Returns:
      A dataset of dicts with the training fields of `schema` (USER, POS_ITEM, POS_GATE, POS_WEIGHT, NEG_ITEM, NEG_GATE); each epoch
      yields exactly `steps_per_epoch(index, config)` batches. With the
      `softmax` loss there are no per-example negatives; each batch holds
      its candidate set
      (`schema.CANDIDATES`, `CANDIDATE_LOG_Q`, `CANDIDATE_BITS`, see
      `negatives.SharedNegatives`), drawn from a
      generator seeded by (seed, epoch, shard, chunk, batch).
    """
    batch_size = config.batch_size
    shard, num_shards, local_replicas = 0, 1, 1
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(config.batch_size)
        shard, num_shards = input_context.input_pipeline_id, input_context.num_input_pipelines
        local_replicas = max(1, input_context.num_replicas_in_sync // num_shards)
    # Batches of this pipeline per epoch: each step takes one per local replica.
    steps = steps_per_epoch(index, config) * local_replicas
    t = index.num_behaviors
    softmax = config.loss == "softmax"
    n = 0 if softmax else config.num_negatives
    shared = None
    if softmax:
        everything = negatives.epoch_positives(
            index,
            seed=config.seed,
            epoch=0,
            shuffle=False,
            supportive_positive_weight=config.supportive_positive_weight,
        )
        shared = negatives.SharedNegatives(
            everything.items,
            index.num_items,
            batch_size=batch_size,
            num_shared=config.shared_negatives,
        )
    # Whole batches per chunk, so every chunk but an epoch's last is full.
    chunk_batches = max(1, negatives.CHUNK_EXAMPLES // batch_size)
    chunk_size = chunk_batches * batch_size

    def order(epoch):
        positives = negatives.epoch_positives(
            index,
            seed=config.seed,
            epoch=int(epoch),
            supportive_positive_weight=config.supportive_positive_weight,
        )
        positives = positives[shard::num_shards]
        return positives.users, positives.items, positives.weights, positives.is_target

    def draw(epoch, chunk, users, items, weights, is_target):
        examples = negatives.draw_examples(
            index,
            negatives.EpochPositives(users, items, weights, is_target),
            num_negatives=n,
            supportive_ratio=config.supportive_negative_ratio,
            rng=negatives.chunk_rng(config.seed, int(epoch), shard, int(chunk)),
        )
        return tuple(examples[f] for f in _FIELDS)

    def candidates(epoch, chunk, batch, users, items):
        rng = np.random.default_rng([config.seed, int(epoch), shard, int(chunk), int(batch)])
        drawn = shared.candidates(index, users, items, rng)
        if signals is None:
            return drawn
        return (*drawn, signals.grid(users, drawn[0]))

    shapes = ([None], [None], [None, t], [None], [None, n], [None, n, t])

    def one_epoch(epoch):
        positives = tf.numpy_function(
            order, [epoch], (tf.int32, tf.int32, tf.float32, tf.bool), stateful=False
        )
        count = tf.shape(positives[0], out_type=tf.int64)[0]
        chunks = tf.maximum((count + chunk_size - 1) // chunk_size, 1)

        def one_chunk(chunk):
            start = chunk * chunk_size
            window = [p[start : start + chunk_size] for p in positives]
            arrays = tf.numpy_function(draw, [epoch, chunk, *window], _DTYPES, stateful=False)
            tensors = {}
            for name, array, shape in zip(_FIELDS, arrays, shapes):
                array.set_shape(shape)
                tensors[name] = array
            return tensors

        def batches_of(chunk, tensors):
            # Batches are slices of the chunk's arrays: slicing costs a
            # fraction of unbatching into examples and batching again.
            size = tf.shape(tensors[schema.USER], out_type=tf.int64)[0]
            num = (size + batch_size - 1) // batch_size

            def one_batch(b):
                batch = {k: v[b * batch_size : (b + 1) * batch_size] for k, v in tensors.items()}
                if softmax:
                    users, items = batch[schema.USER], batch[schema.POS_ITEM]
                    names = [schema.CANDIDATES, schema.CANDIDATE_LOG_Q, schema.CANDIDATE_BITS]
                    dtypes = [tf.int32, tf.float32, tf.int32]
                    shapes = [[None], [None], [None, None]]
                    if signals is not None:
                        names.append(schema.SIGNALS)
                        dtypes.append(tf.float32)
                        shapes.append([None, None, signals.num_signals])
                    arrays = tf.numpy_function(
                        candidates, [epoch, chunk, b, users, items], dtypes, stateful=False
                    )
                    for name, array, shape in zip(names, arrays, shapes):
                        array.set_shape(shape)
                        batch[name] = array
                return batch

            return tf.data.Dataset.range(num).map(one_batch)

        # The next chunk is drawn while the model trains on this one. A shard
        # with fewer batches than `steps` starts over to fill the epoch.
        chunk_ds = tf.data.Dataset.range(chunks).map(lambda c: (c, one_chunk(c))).prefetch(1)
        batches = chunk_ds.flat_map(batches_of)
        if softmax:
            batches = batches.prefetch(2)
        return batches.repeat().take(steps)

    dataset = tf.data.Dataset.range(start_epoch, config.epochs).flat_map(one_epoch)
    return dataset.prefetch(tf.data.AUTOTUNE)
