"""Parameter-server training: the cluster, its strategy, and the coordinator's steps.

`--distribution_strategy=parameter_server` trains on a cluster that
`TF_CONFIG` describes, as TensorFlow expects: one `chief` (the coordinator),
`worker` tasks and `ps` tasks. Every task runs the same command. A worker or
a parameter server starts a `tf.distribute.Server` and serves until it is
stopped (`serve`); the chief builds the model under a
`tf.distribute.ParameterServerStrategy` whose variable partitioner shards
each embedding table over the parameter servers (`strategy`), and a
`tf.distribute.coordinator.ClusterCoordinator` schedules every training step
on whichever worker is free (`fit`).

Each worker draws its own batches with the sampler in TensorFlow ops
(`worker_input`: a dataset function the coordinator traces once and every
worker runs). Where the batches carry graph signals (`scipy.sparse`, which a
worker running TensorFlow graphs cannot execute) or the training index is
too large for a graph, the chief's own sampler draws each step's batch and
the step's function carries it to the worker. Updates
are asynchronous, as parameter-server training is: each worker reads the
current tables, computes its gradient and applies it on the parameter
servers. Checkpoints, validation, evaluation and the export run on the
chief; the last three score an unsharded copy of the model, the sharded
checkpoint restored into a model built outside the strategy (`gathered`):
scoring functions compiled with XLA cannot read a remote variable.

`local_cluster` starts the workers and parameter servers inside the calling
process on the loopback, to try the path on one machine (the tests do).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time

import tensorflow as tf
import tf_keras

# A table is split into shards of at least this many bytes, at most one per
# parameter server: small layers stay whole, embedding tables spread out.
MIN_SHARD_BYTES = 256 << 10

SERVER_JOBS = ("worker", "ps")

# The servers `local_cluster` started: they serve as long as the process runs.
_LOCAL_SERVERS: list = []


def resolver_from_environment() -> tf.distribute.cluster_resolver.ClusterResolver:
    """The cluster of `TF_CONFIG`, or a ValueError that shows what it must hold."""
    if not os.environ.get("TF_CONFIG"):
        raise ValueError(
            "--distribution_strategy=parameter_server needs the cluster in TF_CONFIG, e.g. "
            '{"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"], '
            '"ps": ["host3:2222", "host4:2222"]}, "task": {"type": "chief", "index": 0}}, '
            "set for every task (BUILD.md, parameter servers)."
        )
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    jobs = resolver.cluster_spec().as_dict()
    missing = [job for job in ("chief", "worker", "ps") if not jobs.get(job)]
    if missing:
        raise ValueError(
            f"TF_CONFIG's cluster has no {' and no '.join(missing)} task: parameter-server "
            "training needs one chief, at least one worker and at least one ps."
        )
    if resolver.task_type not in ("chief", *SERVER_JOBS):
        raise ValueError(
            f"TF_CONFIG's task type is {resolver.task_type!r}: use chief, worker or ps."
        )
    return resolver


def is_server(resolver) -> bool:
    """Whether this task only serves (a worker or a parameter server)."""
    return resolver.task_type in SERVER_JOBS


def serve(resolver) -> None:
    """Runs this worker's or parameter server's `tf.distribute.Server` until the process ends."""
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=resolver.task_type,
        task_index=resolver.task_id,
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    print(
        f"{resolver.task_type} {resolver.task_id} serving at {server.target}; the chief "
        "coordinates training",
        flush=True,
    )
    server.join()


def strategy(
    resolver, *, min_shard_bytes: int = MIN_SHARD_BYTES
) -> tf.distribute.ParameterServerStrategy:
    """The strategy over `resolver`'s cluster, each table sharded over the parameter servers.

    Args:
      resolver: the cluster (its `ps` tasks hold the shards).
      min_shard_bytes: the partitioner's smallest shard; tiny tables need a
        smaller one than MIN_SHARD_BYTES to be sharded at all.
    """
    num_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=max(num_ps, 1)
    )
    return tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)


def is_parameter_server(strategy_: tf.distribute.Strategy) -> bool:
    return isinstance(strategy_, tf.distribute.ParameterServerStrategy)


def describe(scorer: tf_keras.Model) -> dict:
    """Where each sharded table's shards live, and the parameter servers used, for results.json."""
    tables, servers = {}, set()
    for variable in scorer.variables:
        servers.add(variable.device.split("/device")[0])
        # A shard is named <table>/part_<k>.
        table, _, _ = variable.name.rpartition("/part_")
        if table:
            tables.setdefault(table, []).append(variable.device)
    return {
        "strategy": "parameter_server",
        "parameter_servers": sorted(servers),
        "sharded_tables": tables,
    }


def local_cluster(num_workers: int = 2, num_ps: int = 2, *, min_shard_bytes: int = MIN_SHARD_BYTES):
    """A cluster in this process on the loopback: its workers and parameter servers started.

    Args:
      num_workers: worker tasks.
      num_ps: parameter-server tasks.
      min_shard_bytes: the partitioner's smallest shard (see `strategy`).

    Returns:
      A ParameterServerStrategy whose coordinator is this process.
    """
    ports = free_ports(num_workers + num_ps)
    spec = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]],
            "ps": [f"127.0.0.1:{p}" for p in ports[num_workers:]],
        }
    )
    config = tf.compat.v1.ConfigProto()
    # In-process workers share the machine's threads with the coordinator.
    config.inter_op_parallelism_threads = num_workers + 1
    _LOCAL_SERVERS.extend(
        tf.distribute.Server(spec, job_name="worker", task_index=i, config=config, protocol="grpc")
        for i in range(num_workers)
    )
    _LOCAL_SERVERS.extend(
        tf.distribute.Server(spec, job_name="ps", task_index=i, protocol="grpc")
        for i in range(num_ps)
    )
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")
    return strategy(resolver, min_shard_bytes=min_shard_bytes)


def free_ports(n: int) -> list[int]:
    """`n` ports free on the loopback now (for a local cluster's tasks)."""
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def fit(
    ranker: tf_keras.Model,
    dataset: tf.data.Dataset | None = None,
    *,
    dataset_fn=None,
    epochs: int,
    initial_epoch: int,
    steps_per_epoch: int,
    callbacks: list,
) -> None:
    """`Model.fit` for a ranker built under a ParameterServerStrategy.

    Each step is scheduled with the ranker's `train_step` on a free worker;
    the epoch ends when every scheduled step has run
    (`ClusterCoordinator.join`). The callbacks get Keras's epoch hooks with
    the epoch's mean loss and pair accuracy over all of its steps, read from
    the ranker's metrics once the epoch has joined.

    Args:
      ranker: the ranker, built under the strategy.
      dataset: batches drawn here, on the coordinator: each is sent with its step.
      dataset_fn: instead, a function making a dataset of TensorFlow ops
        (`worker_input.dataset_fn`): every worker makes its own and a step
        takes the next batch of the worker it runs on.
      epochs, initial_epoch, steps_per_epoch, callbacks: as `Model.fit`'s.
    """
    if (dataset is None) == (dataset_fn is None):
        raise ValueError("cluster.fit takes either a dataset or a dataset_fn.")
    strategy_ = ranker.distribute_strategy
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy_)

    @tf.function
    def step(batch):
        return strategy_.run(ranker.train_step, args=(batch,))

    @tf.function
    def worker_step(iterator):
        return strategy_.run(ranker.train_step, args=(next(iterator),))

    if dataset_fn is not None:
        per_worker = iter(coordinator.create_per_worker_dataset(dataset_fn))

        def schedule():
            coordinator.schedule(worker_step, args=(per_worker,))
    else:
        batches = iter(dataset)

        def schedule():
            coordinator.schedule(step, args=(next(batches),))

    callback_list = tf_keras.callbacks.CallbackList(callbacks, model=ranker)
    ranker.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        ranker.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for _ in range(steps_per_epoch):
            schedule()
        coordinator.join()
        # Read after every step has run: a step's own return is the running
        # mean when it finished, and the last one scheduled need not finish
        # last, so it can miss the steps still running beside it.
        logs = {metric.name: float(metric.result()) for metric in ranker.metrics}
        callback_list.on_epoch_end(epoch, logs)
        if ranker.stop_training:
            break
    callback_list.on_train_end()


def gathered(scorer: tf_keras.Model, build, work_dir: str) -> tf_keras.Model:
    """An unsharded copy of a scorer trained under a ParameterServerStrategy.

    Args:
      scorer: the scorer whose tables are sharded over the parameter servers.
      build: makes a new scorer of the same architecture (called outside any
        strategy scope, so its variables are whole, on this process).
      work_dir: where the copy's checkpoint is written and read.

    Returns:
      The copy: every table gathered from its shards, the same logits.
    """
    started = time.perf_counter()
    local = build()
    with tempfile.TemporaryDirectory(dir=work_dir) as folder:
        path = tf.train.Checkpoint(scorer=scorer).write(os.path.join(folder, "scorer"))
        tf.train.Checkpoint(scorer=local).read(path).assert_existing_objects_matched()
    print(f"gathered the sharded tables in {time.perf_counter() - started:.1f}s", flush=True)
    return local
