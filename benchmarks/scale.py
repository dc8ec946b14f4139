"""Scale: a full-Taobao-size synthetic log through preprocessing and one epoch.

Stages, each timed, with the process's peak resident memory after it:

1. generate: the project's generator writes the UserBehavior CSV in chunks;
2. read: the tf.data readers parse and validate every line;
3. encode: vocabularies and branch codes;
4. split: leave-latest-out test cases and carved validation cases;
5. index: the sampler's per-pair behavior masks and supportive-only lists;
6. pipeline: examples per second of the input pipeline alone (batch 4096);
7. train: one epoch of the multi-feedback model (paper defaults) at batch 4096.

    python benchmarks/scale.py [--users=1000000 --items=4000000 --records_per_user=100]

Writes benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import optimizers
from mmrec_tf import ranking
from mmrec_tf.pipelines import datasets
from mmrec_tf.pipelines import interactions
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import splits
from mmrec_tf.pipelines import synthetic
from mmrec_tf.pipelines import training_index

HERE = os.path.dirname(os.path.abspath(__file__))


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=4_000_000)
    parser.add_argument("--records_per_user", type=float, default=100.0)
    parser.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "scale"))
    args = parser.parse_args()

    stages = []

    def stage(name, seconds, count=None, **extra):
        row = {"stage": name, "seconds": round(seconds, 1), "peak_rss_gib": round(_peak_gib(), 2)}
        if count:
            row["records_per_second"] = round(count / seconds)
        row.update(extra)
        stages.append(row)
        print(row, flush=True)

    path = os.path.join(
        args.cache_dir, f"scale_u{args.users}_i{args.items}_r{args.records_per_user:g}.csv"
    )
    start = time.perf_counter()
    if os.path.exists(path):
        stats = {"records": None, "reused": True}
    else:
        stats = synthetic.write_userbehavior(
            path,
            synthetic.SyntheticSpec(
                num_users=args.users,
                num_items=args.items,
                records_per_user=args.records_per_user,
                chunk_users=100_000,
            ),
        )
    stage(
        "generate", time.perf_counter() - start, stats.get("records"), bytes=os.path.getsize(path)
    )

    config = config_lib.DataConfig(data_path=path, data_format="userbehavior")
    start = time.perf_counter()
    raw = readers.read_interactions(config)
    stage("read", time.perf_counter() - start, len(raw), records=len(raw))
    start = time.perf_counter()
    data = interactions.encode(raw, config)
    del raw
    stage(
        "encode",
        time.perf_counter() - start,
        len(data.users),
        users=data.num_users,
        items=data.num_items,
    )
    start = time.perf_counter()
    split = splits.make_split(data, validation=True, seed=0)
    n = len(data.users)
    del data
    stage(
        "split",
        time.perf_counter() - start,
        n,
        test_cases=split.info["test_cases"],
        valid_cases=split.info["valid_cases"],
    )
    start = time.perf_counter()
    index = training_index.TrainingIndex.from_split(split)
    stage(
        "index", time.perf_counter() - start, len(split.train_users), positives=len(index.pos_users)
    )

    train = config_lib.TrainConfig(batch_size=args.batch_size, epochs=1, verbose=2)
    start = time.perf_counter()
    count = 0
    for batch in datasets.training_dataset(index, train):
        count += int(batch["user"].shape[0])
    stage("pipeline", time.perf_counter() - start, count, examples=count)

    tf_keras.utils.set_random_seed(0)
    ranker = ranking.build_ranker(
        config_lib.ExperimentConfig(train=train),
        num_users=split.num_users,
        num_items=split.num_items,
        behaviors=split.behaviors,
    )
    ranker.compile(optimizer=optimizers.build_optimizer(train))
    start = time.perf_counter()
    ranker.fit(
        datasets.training_dataset(index, train),
        epochs=1,
        steps_per_epoch=datasets.steps_per_epoch(index, train),
        verbose=2,
    )
    stage(
        "train",
        time.perf_counter() - start,
        len(index.pos_users),
        examples=len(index.pos_users),
        parameters=int(sum(np.prod(w.shape) for w in ranker.scorer.weights)),
    )

    result = {
        "users": args.users,
        "items": args.items,
        "records_per_user": args.records_per_user,
        "tensorflow": tf.__version__,
        "cpus": os.cpu_count(),
        "stages": stages,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(
            "# Scale: full-Taobao-size synthetic log, one machine (2 cores, 24 GiB)\n\n"
            f"Command: `python benchmarks/scale.py --users={args.users} "
            f"--items={args.items} --records_per_user={args.records_per_user:g}`\n\n"
            "| stage | seconds | records or examples / s | peak RSS GiB | notes |\n"
            "|---|---|---|---|---|\n"
        )
        for row in stages:
            notes = ", ".join(
                f"{k} {v}"
                for k, v in row.items()
                if k not in ("stage", "seconds", "records_per_second", "peak_rss_gib")
            )
            f.write(
                f"| {row['stage']} | {row['seconds']} | {row.get('records_per_second', '')} "
                f"| {row['peak_rss_gib']} | {notes} |\n"
            )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
