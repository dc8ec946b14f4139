"""The training input in TensorFlow ops: the dataset function each parameter-server worker runs.

Under `--distribution_strategy=parameter_server` the coordinator traces
`dataset_fn` once and every worker builds its own dataset from that graph
(`ClusterCoordinator.create_per_worker_dataset`), so batches are drawn where
they are trained on instead of on the chief. The draw is `negatives`'
sampler written in TensorFlow ops:

- positives: the list `negatives.epoch_positives` gives, each pass over it
  in a fresh order and in full batches (a pass's last batch is filled from
  its first positives);
- pairwise negatives: uniform over the items the user never touched
  (redrawn until untouched), and for a target positive, with probability
  `supportive_negative_ratio`, one of the user's supportive-only items
  instead; every example carries its gates;
- softmax: the batch's positives plus `shared_negatives` uniform items, their
  log expected counts and the grid's behavior bits
  (`negatives.SharedNegatives`).

The training index travels inside the dataset's graph (its arrays are
constants of the function), so a worker needs neither the data nor the model
folder. A graph holds at most 2 GiB, hence `MAX_INDEX_BYTES`; a larger index,
or a recipe whose batches carry graph signals (computed with `scipy.sparse`),
keeps the chief's sampler (`plan` says why).

Every worker runs the same graph. What differs is a salt each worker's
dataset draws from the operating system when it is made, so two workers
never train on the same sequence. The draws are not repeatable: a resumed
run draws new batches, as parameter-server training's asynchronous updates
are not repeatable either. The single-process pipeline (`datasets`), seeded
by (seed, epoch, chunk), is the repeatable one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import negatives
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

# The index arrays a worker's graph may carry (a graph is at most 2 GiB).
MAX_INDEX_BYTES = 1 << 30


def graph_arrays(index: training_index.TrainingIndex, config: config_lib.TrainConfig) -> dict:
    """The NumPy arrays a worker's dataset graph holds as constants."""
    positives = negatives.epoch_positives(
        index,
        seed=config.seed,
        epoch=0,
        shuffle=False,
        supportive_positive_weight=config.supportive_positive_weight,
    )
    arrays = {
        "keys": index.keys.astype(np.int64),
        "offsets": index.offsets.astype(np.int64),
        "bits": index.bits.astype(np.int32),
        "users": positives.users,
        "items": positives.items,
        "weights": positives.weights,
        "is_target": positives.is_target,
    }
    if config.loss == "softmax":
        shared = negatives.SharedNegatives(
            positives.items,
            index.num_items,
            batch_size=config.batch_size,
            num_shared=config.shared_negatives,
        )
        arrays["log_expected"] = shared.log_expected
    elif config.supportive_negative_ratio > 0 and len(index.supportive_items):
        arrays["supportive_indptr"] = index.supportive_indptr.astype(np.int64)
        arrays["supportive_items"] = index.supportive_items.astype(np.int32)
    return arrays


def index_bytes(arrays: dict) -> int:
    """Bytes of the index arrays (`graph_arrays`) a worker's dataset graph carries."""
    return sum(a.nbytes for a in arrays.values())


def plan(
    index: training_index.TrainingIndex, config: config_lib.TrainConfig, signals=None
) -> tuple[Callable[[], tf.data.Dataset] | None, str | None]:
    """(the workers' dataset function, None), or (None, why the chief must draw).

    The index arrays are built once, for both the size check and the graph.
    """
    if signals is not None:
        return None, (
            "the batches carry graph signals, which are computed with scipy.sparse, "
            "outside TensorFlow's ops"
        )
    arrays = graph_arrays(index, config)
    size = index_bytes(arrays)
    if size > MAX_INDEX_BYTES:
        return None, (
            f"the training index takes {size / 2**30:.2f} GiB, more than the "
            f"{MAX_INDEX_BYTES / 2**30:.0f} GiB a worker's dataset graph may carry"
        )
    return dataset_fn(index, config, arrays=arrays), None


def _fold(seed: tf.Tensor, value) -> tf.Tensor:
    return tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))


def _lookup(keys: tf.Tensor, query: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(position, found) of pair keys in the sorted key array (any shape)."""
    flat = tf.reshape(query, [-1])
    position = tf.searchsorted(keys, flat, side="left", out_type=tf.int64)
    position = tf.minimum(position, tf.size(keys, out_type=tf.int64) - 1)
    found = tf.gather(keys, position) == flat
    return tf.reshape(position, tf.shape(query)), tf.reshape(found, tf.shape(query))


def dataset_fn(
    index: training_index.TrainingIndex,
    config: config_lib.TrainConfig,
    *,
    salt: tuple[int, int] | None = None,
    arrays: dict | None = None,
) -> Callable[[], tf.data.Dataset]:
    """A function that makes one worker's endless stream of training batches.

    Args:
      index: the training index.
      config: batch size, loss, negatives, sampler ratio, shared negatives.
      salt: a fixed seed for the draws (tests); by default each dataset the
        function makes draws its own from the operating system.
      arrays: `graph_arrays(index, config)`, when already built.

    Returns:
      A function of no arguments returning a dataset of dicts with the fields
      of `datasets.training_dataset`'s batches (without graph signals), each
      batch exactly `config.batch_size` positives.
    """
    arrays = graph_arrays(index, config) if arrays is None else arrays
    num_items = index.num_items
    num_behaviors = index.num_behaviors
    batch_size = config.batch_size
    softmax = config.loss == "softmax"
    n = 0 if softmax else config.num_negatives
    num_positives = len(arrays["users"])
    batches_per_pass = max(1, -(-num_positives // batch_size))
    padded = batches_per_pass * batch_size
    supportive = "supportive_items" in arrays

    def make() -> tf.data.Dataset:
        c = {name: tf.constant(array) for name, array in arrays.items()}
        if salt is None:
            # seed = seed2 = 0: seeded by the operating system, whatever the
            # global seed (which would give every worker the same stream).
            seed = tf.raw_ops.RandomUniformInt(
                shape=[2],
                minval=tf.constant(0, tf.int64),
                maxval=tf.constant(2**62, tf.int64),
                seed=0,
                seed2=0,
            )
        else:
            seed = tf.constant(salt, tf.int64)

        def uniform_items(shape, seed_):
            return tf.random.stateless_uniform(
                shape, seed_, minval=0, maxval=num_items, dtype=tf.int64
            )

        def touched(users, items):
            return _lookup(c["keys"], users * num_items + items)[1]

        def bits_of(users, items):
            position, found = _lookup(c["keys"], users * num_items + items)
            return tf.where(found, tf.gather(c["bits"], position), 0)

        def grid_bits(users, items):
            """[len(users), len(items)] bits of every pair, as `training_index.pair_bits`.

            Walks each user's training pairs and finds their items among the
            sorted `items`: the users' pair counts plus len(items), not a
            search over every key per cell of the grid.
            """
            pairs = tf.ragged.range(
                tf.gather(c["offsets"], users), tf.gather(c["offsets"], users + 1)
            )
            rows = pairs.value_rowids()
            positions = pairs.flat_values
            touched_items = tf.gather(c["keys"], positions) % num_items
            order = tf.argsort(items, stable=True)
            ordered = tf.gather(items, order)
            lo = tf.searchsorted(ordered, touched_items, side="left", out_type=tf.int64)
            hi = tf.searchsorted(ordered, touched_items, side="right", out_type=tf.int64)
            # Every column holding the pair's item (an item can repeat among `items`).
            matches = tf.ragged.range(lo, hi)
            pair = matches.value_rowids()
            columns = tf.gather(order, matches.flat_values)
            cells = tf.stack([tf.gather(rows, pair), tf.cast(columns, tf.int64)], axis=1)
            return tf.scatter_nd(
                cells,
                tf.gather(c["bits"], tf.gather(positions, pair)),
                tf.stack([tf.size(users, out_type=tf.int64), tf.size(items, out_type=tf.int64)]),
            )

        def gates_of(users, items):
            shifts = tf.range(num_behaviors, dtype=tf.int32)
            bits = bits_of(users, items)
            return tf.cast(
                tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits[..., None], shifts), 1),
                tf.float32,
            )

        def untouched(users, seed_):
            """Items drawn uniformly among those each user never touched (`users`' shape)."""
            shape = tf.shape(users)
            items = uniform_items(shape, _fold(seed_, 0))
            bad = touched(users, items)

            def redraw(k, items, bad):
                items = tf.where(bad, uniform_items(shape, _fold(seed_, k)), items)
                return k + 1, items, touched(users, items)

            _, items, bad = tf.while_loop(
                lambda k, items, bad: (k <= negatives.MAX_REDRAWS) & tf.reduce_any(bad),
                redraw,
                (tf.constant(1, tf.int64), items, bad),
            )
            check = tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(bad)),
                [
                    f"Some users have touched (nearly) every one of the {num_items} items, so "
                    "no untouched item can be drawn for them (users, up to 10):",
                    tf.unique(tf.boolean_mask(users, bad))[0][:10],
                    "Remove such users, or lower the number of negatives.",
                ],
            )
            with tf.control_dependencies([check]):
                return tf.identity(items)

        def draw(batch_seed, rows):
            users = tf.cast(tf.gather(c["users"], rows), tf.int64)
            items = tf.cast(tf.gather(c["items"], rows), tf.int64)
            batch = {
                schema.USER: tf.cast(users, tf.int32),
                schema.POS_ITEM: tf.cast(items, tf.int32),
                schema.POS_GATE: gates_of(users, items),
                schema.POS_WEIGHT: tf.gather(c["weights"], rows),
            }
            if softmax:
                shared = uniform_items([config.shared_negatives], _fold(batch_seed, 1))
                candidates = tf.concat([items, shared], 0)
                batch[schema.NEG_ITEM] = tf.zeros([batch_size, 0], tf.int32)
                batch[schema.NEG_GATE] = tf.zeros([batch_size, 0, num_behaviors], tf.float32)
                batch[schema.CANDIDATES] = tf.cast(candidates, tf.int32)
                batch[schema.CANDIDATE_LOG_Q] = tf.gather(c["log_expected"], candidates)
                batch[schema.CANDIDATE_BITS] = tf.ensure_shape(
                    grid_bits(users, candidates), [batch_size, batch_size + config.shared_negatives]
                )
                return batch
            grid = tf.broadcast_to(users[:, None], [batch_size, n])
            chosen = untouched(grid, _fold(batch_seed, 2))
            if supportive:
                is_target = tf.gather(c["is_target"], rows)
                start = tf.gather(c["supportive_indptr"], grid)
                count = tf.gather(c["supportive_indptr"], grid + 1) - start
                coin = tf.random.stateless_uniform([batch_size, n], _fold(batch_seed, 3))
                use = (coin < config.supportive_negative_ratio) & (count > 0) & is_target[:, None]
                share = tf.random.stateless_uniform(
                    [batch_size, n], _fold(batch_seed, 4), dtype=tf.float64
                )
                offset = tf.cast(tf.floor(share * tf.cast(count, tf.float64)), tf.int64)
                last = tf.size(c["supportive_items"], out_type=tf.int64) - 1
                picked = tf.gather(c["supportive_items"], tf.minimum(start + offset, last))
                chosen = tf.where(use, tf.cast(picked, tf.int64), chosen)
            batch[schema.NEG_ITEM] = tf.cast(chosen, tf.int32)
            # Uniform draws are untouched, so their gates are 0 as they should be.
            batch[schema.NEG_GATE] = gates_of(grid, chosen)
            return batch

        def one_pass(number):
            pass_seed = _fold(seed, number)
            order = tf.random.experimental.stateless_shuffle(
                tf.range(num_positives, dtype=tf.int64), _fold(pass_seed, 0)
            )
            # Full batches: the pass's last one is filled from its start.
            repeats = -(-padded // num_positives)
            rows = tf.reshape(tf.tile(order, [repeats])[:padded], [batches_per_pass, batch_size])
            numbers = tf.range(batches_per_pass, dtype=tf.int64)
            return tf.data.Dataset.from_tensor_slices((numbers, rows)).map(
                lambda b, rows_: draw(_fold(pass_seed, b + 1), rows_)
            )

        dataset = tf.data.Dataset.counter().flat_map(one_pass)
        return dataset.prefetch(2)

    return make
