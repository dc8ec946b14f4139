"""The parameter-server workers' input against the chief's sampler: examples per second.

Under `--distribution_strategy=parameter_server` each worker draws its own
batches with the sampler in TensorFlow ops (`pipelines/worker_input.py`);
before, the chief drew every batch with the NumPy sampler
(`pipelines/datasets.py`) and sent it with the step. This measures both
input pipelines alone (no training), in one process on this machine, in the
same run: the pairwise draw (3 negatives, the supportive sampler) and the
softmax draw (the shared candidate set and its behavior bits). A cluster
multiplies the per-worker figure by its workers; the chief's stays one
process's. Also: the bytes of the index each worker's graph carries and the
seconds to make the dataset (constants and tracing).

    python benchmarks/worker_input.py [--data_dir=../shared/data]

Writes benchmarks/results/worker_input.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import tensorflow as tf
import train_throughput  # beside this script

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import datasets
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import training_index
from mmrec_tf.pipelines import worker_input

HERE = os.path.dirname(os.path.abspath(__file__))

DRAWS = {
    "pairwise, 3 negatives": dict(batch_size=1024, num_negatives=3),
    "softmax, 1024 shared": dict(batch_size=1024, loss="softmax", shared_negatives=1024),
}


def rate(dataset: tf.data.Dataset, seconds: float) -> float:
    """Examples per second drawn from `dataset` over about `seconds` (after one batch)."""
    batches = iter(dataset)
    next(batches)
    start, examples = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        examples += int(next(batches)["user"].shape[0])
    return examples / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "worker_input"))
    args = parser.parse_args()

    rows = []
    for name, data_config in train_throughput.measured_sets(args.data_dir).items():
        _, split = loading.load(data_config, work_dir=args.cache_dir)
        index = training_index.TrainingIndex.from_split(split)
        for draw, fields in DRAWS.items():
            config = config_lib.TrainConfig(epochs=1_000_000, **fields)
            chief = rate(datasets.training_dataset(index, config), args.seconds)
            arrays = worker_input.graph_arrays(index, config)
            started = time.perf_counter()
            dataset = worker_input.dataset_fn(index, config, arrays=arrays)()
            made = time.perf_counter() - started
            worker = rate(dataset, args.seconds)
            size = worker_input.index_bytes(arrays)
            row = {
                "dataset": name,
                "num_items": split.num_items,
                "draw": draw,
                "chief_numpy_examples_per_second": round(chief),
                "worker_tf_examples_per_second": round(worker),
                "ratio": round(worker / chief, 2),
                "graph_index_mib": round(size / 2**20, 1),
                "make_dataset_seconds": round(made, 2),
            }
            rows.append(row)
            print(row, flush=True)
    results = {"machine": {"cpus": os.cpu_count(), "tensorflow": tf.__version__}, "rows": rows}
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(
            "# The parameter-server workers' input against the chief's sampler\n\n"
            "Command: `python benchmarks/worker_input.py`\n\n"
            f"Machine: {results['machine']}. Input pipelines alone, batch 1024, one process "
            f"each, about {args.seconds:.0f} s each, in the same run.\n\n"
            "| dataset | items | draw | chief (NumPy) ex/s | one worker (TF ops) ex/s | "
            "ratio | index in the graph (MiB) | make the dataset (s) |\n"
            "|---|---|---|---|---|---|---|---|\n"
        )
        for r in rows:
            f.write(
                f"| {r['dataset']} | {r['num_items']} | {r['draw']} | "
                f"{r['chief_numpy_examples_per_second']} | {r['worker_tf_examples_per_second']} | "
                f"{r['ratio']}x | {r['graph_index_mib']} | {r['make_dataset_seconds']} |\n"
            )
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
