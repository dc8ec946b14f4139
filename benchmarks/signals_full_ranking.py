"""A user's graph signals over the whole catalog: each sparse product, then and now.

Full ranking asks each test user's signals for every item. Each signal is a
sparse product of the user's row with a stored matrix: the item-item two-step
matrix, the cross matrix (supportive -> target), or, where those would link
too many item pairs (`ITEM_ITEM_BUDGET`, as on the 100M-record log), the
graph itself through the users. This times each product per user, in the
same run, two ways:

- `before`: `row @ matrix` (after `matrix[:, items]` on the user path), as
  they were computed: the matrices are stored CSC, so each call converted
  the whole matrix to CSR (and the column selection copied it);
- `now`: `graph_signals._item_steps` (the symmetric item-item matrix's CSR
  transpose) and `graph_signals._product` (the transpose of `matrix.T @
  row.T`), which read the matrices as stored.

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


def _timed(fn, operand):
    started = time.perf_counter()
    out = fn(operand)
    return time.perf_counter() - started, out


def measure(dataset: str, data_dir: str, num_users: int) -> dict:
    _, split = signals_cost.load_split(dataset, data_dir)
    n = split.num_items
    catalog = np.arange(n)
    users = np.random.default_rng(0).choice(split.test_users, num_users, replace=False)
    # Budget 0 builds the graphs without the item-item and cross matrices:
    # every behavior through the users, as at 100M records.
    through_users = graph_signals.GraphSignals(split, item_item_budget=0)
    stored = graph_signals.GraphSignals(split)
    products = []  # (name, edges of the matrix read, before, now)
    for b, graph in enumerate(through_users.graphs):
        products.append(
            (
                f"reach_{split.behaviors.behaviors[b]} through the users",
                graph.binary.nnz,
                lambda m, g=graph: np.asarray((m @ g.right[:, catalog]).todense()),
                lambda m, g=graph: graph_signals._product(m, g.right, catalog, n),
                lambda u, g=graph: (g.binary[[u]] @ g.left).tocsr(),
            )
        )
    for b, graph in enumerate(stored.graphs):
        if graph.item_item is not None:
            products.append(
                (
                    f"reach_{split.behaviors.behaviors[b]}, item-item matrix",
                    graph.item_item.nnz,
                    lambda r, g=graph: np.asarray((r @ g.item_item).todense()),
                    lambda r, g=graph: graph_signals._item_steps(r, g.item_item, catalog, n),
                    lambda u, g=graph: g.binary[[u]],
                )
            )
    for b, cross in enumerate(stored.cross, start=1):
        if cross is not None:
            products.append(
                (
                    f"cross_{split.behaviors.behaviors[b]}, cross matrix",
                    cross.nnz,
                    lambda r, c=cross: np.asarray((r @ c).todense()),
                    lambda r, c=cross: graph_signals._product(r, c, catalog, n),
                    lambda u, g=stored.graphs[b]: g.binary[[u]],
                )
            )
    rows = []
    for name, entries, before, now, left in products:
        seconds = {"before": [], "now": []}
        diff = 0.0
        for u in users:
            operand = left(u)
            t_before, old = _timed(before, operand)
            t_now, new = _timed(now, operand)
            seconds["before"].append(t_before)
            seconds["now"].append(t_now)
            diff = max(diff, float(np.abs(old - new).max()))
        mean = {k: float(np.mean(v)) for k, v in seconds.items()}
        rows.append(
            {
                "product": name,
                "matrix_entries": int(entries),
                "before_s": round(mean["before"], 4),
                "now_s": round(mean["now"], 4),
                "speedup": round(mean["before"] / mean["now"], 1),
                "max_abs_difference": diff,
            }
        )
        print(dataset, rows[-1], flush=True)
    return {
        "dataset": dataset,
        "users": split.num_users,
        "items": split.num_items,
        "timed_users": num_users,
        "products": rows,
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
            "# A user's graph signals over the whole catalog: each sparse product, then and now\n\n"
            f"Command: `python benchmarks/signals_full_ranking.py --datasets={args.datasets} "
            f"--users={args.users}`\n\n"
            "Seconds per user of each product over the whole catalog, the mean over the "
            "timed users, both ways in the same run; the largest absolute difference "
            "between the two.\n\n"
            "| dataset | items | product | matrix entries | before s | now s | speedup "
            "| max abs diff |\n"
            "|---|---|---|---|---|---|---|---|\n"
        )
        for r in results:
            for b in r["products"]:
                f.write(
                    f"| {r['dataset']} | {r['items']} | {b['product']} | {b['matrix_entries']} | "
                    f"{b['before_s']} | {b['now_s']} | {b['speedup']}x | "
                    f"{b['max_abs_difference']:.1e} |\n"
                )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
