"""A user's graph signals over the whole catalog, where no item-item matrix fits.

Full ranking asks each test user's signals for every item. Where a behavior
links too many item pairs for its item-item matrix (`ITEM_ITEM_BUDGET`, the
100M-record log), the reach goes through the users: a [1, U] row of the
users sharing the user's items, times the [U, I] graph. This times that
product per user, in the same run, two ways:

- `before`: `middle @ right[:, items]`, as it was computed: the column
  selection copies the graph, and the product converts it to CSR;
- `now`: `graph_signals._through_users`, the transpose of `right.T @
  middle.T`, which reads the graph as stored.

    python benchmarks/signals_full_ranking.py [--datasets=taobao_cml --users=5]

Writes benchmarks/results/signals_full_ranking.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import signals_cost  # beside this script: the dataset's split as a run makes it

from mmrec_tf.pipelines import graph_signals

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(dataset: str, data_dir: str, num_users: int) -> dict:
    _, split = signals_cost.load_split(dataset, data_dir)
    # Budget 0: every behavior through the users, as at 100M records.
    signals = graph_signals.GraphSignals(split, item_item_budget=0)
    catalog = np.arange(split.num_items)
    users = np.random.default_rng(0).choice(split.test_users, num_users, replace=False)
    rows = []
    for b, graph in enumerate(signals.graphs):
        before, now, diff = [], [], 0.0
        for u in users:
            middle = (graph.binary[[u]] @ graph.left).tocsr()
            started = time.perf_counter()
            old = np.asarray((middle @ graph.right[:, catalog]).todense())
            before.append(time.perf_counter() - started)
            started = time.perf_counter()
            new = graph_signals._through_users(middle, graph.right, catalog, split.num_items)
            now.append(time.perf_counter() - started)
            diff = max(diff, float(np.abs(old - new).max()))
        rows.append(
            {
                "behavior": split.behaviors.behaviors[b],
                "edges": int(graph.binary.nnz),
                "before_s": round(float(np.mean(before)), 4),
                "now_s": round(float(np.mean(now)), 4),
                "speedup": round(float(np.mean(before) / np.mean(now)), 1),
                "max_abs_difference": diff,
            }
        )
        print(dataset, rows[-1], flush=True)
    return {
        "dataset": dataset,
        "users": split.num_users,
        "items": split.num_items,
        "timed_users": num_users,
        "behaviors": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="taobao_cml")
    parser.add_argument("--users", type=int, default=5)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "signals_full_ranking"))
    args = parser.parse_args()
    results = [measure(d, args.data_dir, args.users) for d in args.datasets.split(",")]
    with open(args.out + ".json", "w") as f:
        json.dump({"cpus": os.cpu_count(), "datasets": results}, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(
            "# A user's reach over the whole catalog, through the users\n\n"
            f"Command: `python benchmarks/signals_full_ranking.py --datasets={args.datasets} "
            f"--users={args.users}`\n\n"
            "Seconds per user of the product `middle @ right` ([1, U] by [U, I]), the mean "
            "over the timed users, both ways in the same run; the largest absolute "
            "difference between the two.\n\n"
            "| dataset | items | behavior | edges | before s | now s | speedup | max abs diff |\n"
            "|---|---|---|---|---|---|---|---|\n"
        )
        for r in results:
            for b in r["behaviors"]:
                f.write(
                    f"| {r['dataset']} | {r['items']} | {b['behavior']} | {b['edges']} | "
                    f"{b['before_s']} | {b['now_s']} | {b['speedup']}x | "
                    f"{b['max_abs_difference']:.1e} |\n"
                )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
