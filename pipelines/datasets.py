"""tf.data training input: sampled examples streamed epoch after epoch.

Each epoch's examples are drawn by `samplers.sample_epoch` inside the
pipeline (through `tf.numpy_function`), seeded by (seed, epoch), so negatives
are fresh every epoch and a run resumed at epoch e draws what an
uninterrupted run would.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import samplers
from mmrec_tf.pipelines import schema

_FIELDS = (
    schema.USER,
    schema.POS_ITEM,
    schema.POS_GATE,
    schema.POS_WEIGHT,
    schema.NEG_ITEM,
    schema.NEG_GATE,
)
_DTYPES = (tf.int32, tf.int32, tf.float32, tf.float32, tf.int32, tf.float32)


def steps_per_epoch(index: samplers.TrainingIndex, config: config_lib.TrainConfig) -> int:
    """Steps in one pass over the positives, capped by `config.steps_per_epoch`."""
    positives = samplers.num_positives(index, config.supportive_positive_weight)
    steps = max(1, math.ceil(positives / config.batch_size))
    return min(steps, config.steps_per_epoch) if config.steps_per_epoch else steps


def training_dataset(
    index: samplers.TrainingIndex,
    config: config_lib.TrainConfig,
    *,
    start_epoch: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batched training examples for epochs `start_epoch` .. `config.epochs - 1`.

    Args:
      index: the training index.
      config: batch size, negatives, sampler ratio, seed, epochs.
      start_epoch: the first epoch to draw (after a resume).
      input_context: when given (multi-worker input), this pipeline takes
        every `num_input_pipelines`-th positive and the per-replica batch.

    Returns:
      A dataset of dicts with the fields of `schema.example_spec`; each epoch
      yields exactly `steps_per_epoch(index, config)` batches.
    """
    batch_size = config.batch_size
    shard, num_shards = 0, 1
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(config.batch_size)
        shard, num_shards = input_context.input_pipeline_id, input_context.num_input_pipelines
    steps = steps_per_epoch(index, config)
    t = index.num_behaviors
    n = config.num_negatives

    def draw(epoch):
        examples = samplers.sample_epoch(
            index,
            num_negatives=n,
            supportive_ratio=config.supportive_negative_ratio,
            seed=config.seed,
            epoch=int(epoch),
            supportive_positive_weight=config.supportive_positive_weight,
        )
        return tuple(np.ascontiguousarray(examples[f][shard::num_shards]) for f in _FIELDS)

    shapes = ([None], [None], [None, t], [None], [None, n], [None, n, t])

    def one_epoch(epoch):
        arrays = tf.numpy_function(draw, [epoch], _DTYPES, stateful=False)
        tensors = {}
        for name, array, shape in zip(_FIELDS, arrays, shapes):
            array.set_shape(shape)
            tensors[name] = array
        epoch_ds = tf.data.Dataset.from_tensor_slices(tensors).batch(batch_size)
        return epoch_ds.repeat().take(steps)

    dataset = tf.data.Dataset.range(start_epoch, config.epochs).flat_map(one_epoch)
    return dataset.prefetch(tf.data.AUTOTUNE)
