"""The behavior graphs at a 627k-item catalog: CascadingRank and the pair signals.

The synthetic log of the serving benchmark (200,000 users, 900,000 item ids
of which about 627k occur, 40 records per user: about 8M records), read and
split as a run does; then, each a stage with its seconds and peak resident
memory (the peak is reset before each stage):

- `graphs`: the per-behavior normalized matrices (`CascadeScorer`);
- `score`: the cascade for `--score_users` users, batch by batch (the batch
  size the memory budget picks), as evaluation scores them;
- `export`: the SavedModel (`export.cascade.CascadeModule`);
- `signals: build` and `signals: a training batch` (`pipelines.graph_signals`):
  the per-behavior graphs of the pair signals, then the signals of one
  softmax batch's grid (`--batch_users` users x their positives plus
  `--shared` shared candidates);

- `export: our model with graph signals`: the shipped model's layout
  (untrained: the cost does not depend on the weights) exported with the
  graphs its signals need;

and, in a fresh process that imports only TensorFlow, p50 / p99 latency of
both exports' `recommend` (1 known user), `recommend_from_history` for a new
user with 3 events, and for a known user with 1 more event.

    python benchmarks/cascade_scale.py [--users=200000 --items=900000]

Writes benchmarks/results/cascade_scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import serving_latency  # beside this script

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf.baselines import cascade
from mmrec_tf.export import cascade as cascade_export
from mmrec_tf.export import exporter
from mmrec_tf.export import serving
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import loading

HERE = os.path.dirname(os.path.abspath(__file__))

TIMER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import tensorflow as tf
    path, args = sys.argv[1], json.loads(sys.argv[2])
    model = tf.saved_model.load(path)
    recommend = model.signatures["recommend"]
    history = model.signatures["recommend_from_history"]
    def timed(fn, calls):
        fn(0)
        fn(1)
        out = []
        for k in range(calls):
            start = time.perf_counter()
            fn(k)
            out.append((time.perf_counter() - start) * 1000)
        return {"p50_ms": round(float(np.percentile(out, 50)), 1),
                "p99_ms": round(float(np.percentile(out, 99)), 1), "calls": calls}
    users, items, calls = args["users"], args["items"], args["calls"]
    def events(k, n):
        return [items[(k * 7 + j) % len(items)] for j in range(n)]
    out = {
        "recommend, 1 known user": timed(
            lambda k: recommend(user_id=tf.constant([users[k % len(users)]])), calls),
        "recommend_from_history, a new user with 3 events": timed(
            lambda k: history(
                user_id=tf.constant([""]),
                history_item_id=tf.constant(events(k, 3)),
                history_behavior=tf.constant(["cart", "pv", "pv"]),
                history_row=tf.constant([0, 0, 0], tf.int32)), calls),
        "recommend_from_history, a known user with 1 more event": timed(
            lambda k: history(
                user_id=tf.constant([users[k % len(users)]]),
                history_item_id=tf.constant(events(k, 1)),
                history_behavior=tf.constant(["cart"]),
                history_row=tf.constant([0], tf.int32)), calls),
    }
    print(json.dumps(out))
    """
)


def reset_peak() -> None:
    # Linux: writing 5 resets the process's peak resident set (VmHWM).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_gib() -> float:
    return serving_latency.process_gib("VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=900_000)
    parser.add_argument("--records_per_user", type=float, default=40.0)
    parser.add_argument("--score_users", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--alpha", type=float, default=0.0)
    parser.add_argument("--beta", type=float, default=0.9)
    parser.add_argument("--batch_users", type=int, default=1024)
    parser.add_argument("--shared", type=int, default=512)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cascade_scale"))
    args = parser.parse_args()
    stages = []

    def stage(name: str, started: float, **extra) -> None:
        row = {
            "stage": name,
            "seconds": round(time.perf_counter() - started, 1),
            "peak_rss_gib": round(peak_gib(), 2),
            **extra,
        }
        stages.append(row)
        print(row, flush=True)

    work = tempfile.mkdtemp(prefix="cascade_scale_")
    data_config = config_lib.DataConfig(
        data_format="synthetic",
        synthetic_users=args.users,
        synthetic_items=args.items,
        synthetic_records_per_user=args.records_per_user,
    )
    reset_peak()
    started = time.perf_counter()
    data, split = loading.load(data_config, work_dir=work)
    stage(
        "load and split",
        started,
        users=split.num_users,
        items=split.num_items,
        train_records=int(len(split.train_users)),
    )

    reset_peak()
    started = time.perf_counter()
    settings = cascade.CascadeConfig(alpha=args.alpha, beta=args.beta)
    # Without the cache of computed users: the memory measured is the batch's.
    scorer = cascade.CascadeScorer(split, settings, cache_bytes=0)
    edges = {split.behaviors.behaviors[s.branch]: int(s.query.nnz) for s in scorer.stages}
    stage(
        "graphs", started, edges=edges, order=[split.behaviors.behaviors[b] for b in scorer.order]
    )

    reset_peak()
    started = time.perf_counter()
    users = np.unique(split.test_users)[: args.score_users]
    scores = scorer.item_scores(users)
    seconds = time.perf_counter() - started
    stage(
        "score",
        started,
        users=int(len(users)),
        batch_users=scorer.batch_users,
        sweeps_last_batch=scorer.iterations,
        seconds_per_1000_users=round(seconds / len(users) * 1000, 1),
    )
    del scores

    reset_peak()
    started = time.perf_counter()
    module = cascade_export.from_training(
        scorer,
        split,
        user_tokens=data.user_vocab.tokens,
        item_tokens=data.item_vocab.tokens,
        top_k=10,
        retrieval_candidates=500,
        exclude_seen=True,
    )

    def export(module, folder: str) -> tuple[str, float]:
        """The module's SavedModel version folder and its size in MB."""
        path = exporter.export(
            module,
            os.path.join(work, folder),
            warmup_user_ids=[str(t) for t in data.user_vocab.tokens[users[:2]]],
            warmup_item_ids=[str(t) for t in data.item_vocab.tokens[split.test_items[:2]]],
        )
        return path, round(serving_latency.disk_bytes(path) / 2**20, 1)

    path, size_mb = export(module, "serving")
    stage(
        "export",
        started,
        size_mb=size_mb,
        max_request_users=module.max_request_users,
    )

    reset_peak()
    started = time.perf_counter()
    signals = graph_signals.GraphSignals(split)
    stage("signals: build", started, signals=list(signals.names))

    reset_peak()
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    batch = rng.choice(len(split.train_users), args.batch_users, replace=False)
    candidates = np.concatenate(
        [split.train_items[batch], rng.integers(0, split.num_items, args.shared)]
    )
    grid = signals.grid(split.train_users[batch], candidates)
    stage("signals: a training batch", started, grid=list(grid.shape))
    del grid

    # Our model as it ships (MF part, a branch per behavior with its graph
    # signals, behavior features), untrained: the serving cost does not
    # depend on the weights.
    reset_peak()
    started = time.perf_counter()
    model_config = config_lib.ModelConfig(
        model="mmf", mf_dim=64, mlp_dim=8, mlp_layers=1, behavior_features=True, graph_signals=True
    )
    scorer = models.build_model(
        model_config,
        num_users=split.num_users,
        num_items=split.num_items,
        behaviors=split.behaviors,
    )
    ours = serving.from_training(
        scorer,
        split,
        user_tokens=data.user_vocab.tokens,
        item_tokens=data.item_vocab.tokens,
        top_k=10,
        retrieval_candidates=500,
        exclude_seen=True,
        signals=signals,
    )
    ours_path, size_mb = export(ours, "serving_ours")
    stage(
        "export: our model with graph signals",
        started,
        size_mb=size_mb,
        max_request_users=ours.max_request_users,
    )
    del signals, ours

    request = {
        "users": [str(t) for t in data.user_vocab.tokens[users[:50]]],
        "items": [str(t) for t in data.item_vocab.tokens[split.test_items[:50]]],
        "calls": args.calls,
    }
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    latency = {}
    for name, saved in (("CascadingRank", path), ("ours, graph signals", ours_path)):
        result = subprocess.run(
            [sys.executable, "-c", TIMER, saved, json.dumps(request)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        for key, row in json.loads(result.stdout.strip().splitlines()[-1]).items():
            latency[f"{name}: {key}"] = row
    print(latency, flush=True)

    record = {
        "users": args.users,
        "items": args.items,
        "records_per_user": args.records_per_user,
        "alpha": args.alpha,
        "beta": args.beta,
        "cpus": os.cpu_count(),
        "stages": stages,
        "latency": latency,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(record, f, indent=2)
    command = (
        f"python benchmarks/cascade_scale.py --users={args.users} --items={args.items} "
        f"--records_per_user={args.records_per_user:g} --score_users={args.score_users} "
        f"--calls={args.calls}"
    )
    with open(args.out + ".md", "w") as f:
        f.write(
            f"# The behavior graphs at {split.num_items:,} items: CascadingRank and the "
            f"pair signals ({os.cpu_count()} CPU cores)\n\n"
            f"Command: `{command}`\n\n"
            "| stage | seconds | peak RSS GiB | notes |\n|---|---|---|---|\n"
        )
        for row in stages:
            notes = ", ".join(
                f"{k} {v}" for k, v in row.items() if k not in ("stage", "seconds", "peak_rss_gib")
            )
            f.write(f"| {row['stage']} | {row['seconds']} | {row['peak_rss_gib']} | {notes} |\n")
        f.write(
            "\n| request (loaded SavedModel, fresh process) | p50 ms | p99 ms |\n|---|---|---|\n"
        )
        for name, row in latency.items():
            f.write(f"| {name} | {row['p50_ms']} | {row['p99_ms']} |\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
