"""Serving under load: threads calling `recommend` on an exported SavedModel.

    python benchmarks/serving_load.py --model_dir=runs/quickstart \
        --export=runs/serving/quickstart/1 [--threads=4] [--seconds=30] [--malformed=0.01]

Loads the SavedModel with TensorFlow alone (as TensorFlow Serving would) and
runs `--threads` threads for `--seconds`, each calling `recommend` for 1-32
known users per request; a share `--malformed` of the requests is malformed
(a scalar `user_id`, a matrix, or `serving_default` with unequal lengths).
When the export has `recommend_from_history`, a share `--history` of the
calls go to it instead: 1-8 rows, known or new users, 1-5 events each on
known items; its malformed requests name an unknown behavior or a row out of
range.
Reports calls per second, p50 / p99 latency of the well-formed calls, the
errors of each kind (a malformed request must fail alone, a well-formed one
never), and the process's peak resident memory. Appends a row to
benchmarks/results/serving_load.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model_dir", required=True, help="the run (its vocab/users.txt)")
    parser.add_argument("--export", required=True, help="a version folder of the export")
    parser.add_argument("--name", default="", help="the row's name (default: the run folder)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--malformed", type=float, default=0.01)
    parser.add_argument("--history", type=float, default=0.25)
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    model = tf.saved_model.load(args.export)
    recommend = model.signatures["recommend"]
    score = model.signatures["serving_default"]
    with open(os.path.join(args.model_dir, "vocab", "users.txt"), encoding="utf-8") as f:
        users = [line.rstrip("\n") for line in f][:100_000]
    with open(os.path.join(args.model_dir, "vocab", "items.txt"), encoding="utf-8") as f:
        items = [line.rstrip("\n") for line in f][:100_000]
    with open(os.path.join(args.model_dir, "vocab", "behaviors.txt"), encoding="utf-8") as f:
        behaviors = [line.rstrip("\n") for line in f]
    history = model.signatures.get("recommend_from_history")
    share = args.history if history is not None else 0.0
    recommend(user_id=tf.constant(users[:4]))  # warm up

    def history_call(rng, malformed: bool = False):
        rows = int(rng.integers(1, 9))
        ids = [users[i] if rng.random() < 0.5 else "" for i in rng.integers(0, len(users), rows)]
        per_row = rng.integers(1, 6, rows)
        row_of = np.repeat(np.arange(rows), per_row).astype(np.int32)
        what = [behaviors[i] for i in rng.integers(0, len(behaviors), len(row_of))]
        if malformed:
            if rng.random() < 0.5:
                what[0] = "no-such-behavior"
            else:
                row_of[0] = rows + 3
        return history(
            user_id=tf.constant(ids),
            history_item_id=tf.constant(
                [items[i] for i in rng.integers(0, len(items), len(row_of))]
            ),
            history_behavior=tf.constant(what),
            history_row=tf.constant(row_of),
        )

    if history is not None:
        history_call(np.random.default_rng(0))  # warm up

    latencies, lock = [], threading.Lock()
    counts = {"ok": 0, "malformed_rejected": 0, "malformed_accepted": 0, "unexpected_errors": 0}
    stop = time.perf_counter() + args.seconds

    def worker(seed):
        rng = np.random.default_rng(seed)
        local, tally = [], dict.fromkeys(counts, 0)
        while time.perf_counter() < stop:
            batch = [users[i] for i in rng.integers(0, len(users), int(rng.integers(1, 33)))]
            to_history = rng.random() < share
            if rng.random() < args.malformed:
                kind = int(rng.integers(3))
                try:
                    if to_history:
                        history_call(rng, malformed=True)
                    elif kind == 0:
                        recommend(user_id=tf.constant(batch[0]))
                    elif kind == 1:
                        recommend(user_id=tf.constant([batch]))
                    else:
                        score(user_id=tf.constant(batch + batch[:1]), item_id=tf.constant(["x"]))
                    tally["malformed_accepted"] += 1
                except tf.errors.InvalidArgumentError:
                    tally["malformed_rejected"] += 1
                continue
            started = time.perf_counter()
            try:
                if to_history:
                    history_call(rng)
                else:
                    recommend(user_id=tf.constant(batch))
                local.append(time.perf_counter() - started)
                tally["ok"] += 1
            except Exception:  # noqa: BLE001  (counted: a well-formed call must never fail)
                tally["unexpected_errors"] += 1
        with lock:
            latencies.extend(local)
            for k, v in tally.items():
                counts[k] += v

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000
    row = {
        "name": args.name or os.path.basename(os.path.normpath(args.model_dir)),
        "threads": args.threads,
        "history_share": share,
        "seconds": round(elapsed, 1),
        "calls_per_second": round((counts["ok"] + counts["malformed_rejected"]) / elapsed, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        **counts,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(row))
    out = os.path.join(HERE, "results", "serving_load")
    rows = json.load(open(out + ".json")) if os.path.exists(out + ".json") else []
    rows = [r for r in rows if r["name"] != row["name"]] + [row]
    with open(out + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(
            "# Serving under load\n\n"
            "Command: `python benchmarks/serving_load.py --model_dir=<run> --export=<version>`\n\n"
            "Threads call `recommend` (1-32 users a request) for the given seconds in one "
            "TensorFlow-only process, and a share of the calls `recommend_from_history` "
            "(1-8 rows of known or new users, 1-5 events each) where the export has it; 1% "
            "of the requests are malformed (scalar or matrix `user_id`, unequal "
            "`serving_default` lengths, an unknown behavior or a row out of range) and must "
            "fail alone.\n\n"
            "| export | threads | history share | calls/s | p50 ms | p99 ms | ok | "
            "malformed rejected | malformed accepted | unexpected errors | peak RSS MB | "
            "load avg |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
        )
        for r in rows:
            f.write(
                f"| {r['name']} | {r['threads']} | {r.get('history_share', 0)} | "
                f"{r['calls_per_second']} | {r['p50_ms']} | "
                f"{r['p99_ms']} | {r['ok']} | {r['malformed_rejected']} | "
                f"{r['malformed_accepted']} | {r['unexpected_errors']} | {r['peak_rss_mb']} | "
                f"{r['load_average']:.1f} |\n"
            )


if __name__ == "__main__":
    main()
