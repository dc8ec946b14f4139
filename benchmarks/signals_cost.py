"""What the graph signals cost on each dataset: build time, memory, one batch.

Per dataset (its `<dataset>_mmf.flags`), each a stage with its seconds and
peak resident memory (the peak is reset before each stage):

- `load`: read and split, as a run does;
- `build`: `GraphSignals(split)`, the per-behavior graphs, the item-item
  two-step matrices where they fit and the columns' scales;
- `a training batch`: the signals of one softmax batch's grid (the
  flagfile's batch of training buys x their items plus its shared
  candidates), the mean of 3 batches.

    python benchmarks/signals_cost.py [--datasets=jd_vcgae,...]

Writes benchmarks/results/signals_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import cascade_scale  # beside this script: the stage memory of its benchmark
import numpy as np
from absl import flags

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import cli
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import loading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATASETS = ("tmall_mbcgcn", "jd_vcgae", "beibei_ehcf", "taobao_ehcf", "taobao_cml")


def load_split(dataset: str, data_dir: str):
    """(config, split) of the dataset's `<dataset>_mmf.flags` run."""
    fv = flags.FlagValues()
    cli.define_flags(fv)
    flagfile = os.path.join(ROOT, "mmrec_tf", "configs", f"{dataset}_mmf.flags")
    path = os.path.join(data_dir, dataset, "interactions.tsv.gz")
    fv(["signals_cost", f"--flagfile={flagfile}", f"--data_path={path}"])
    config = cli.config_from_flags(fv)
    _, split = loading.load(
        config.data, work_dir=os.path.join(ROOT, "runs", "signals_cost"), seed=config.train.seed
    )
    return config, split


def measure(dataset: str, data_dir: str) -> dict:
    row = {"dataset": dataset}
    cascade_scale.reset_peak()
    started = time.perf_counter()
    config, split = load_split(dataset, data_dir)
    row["load"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_gib": round(cascade_scale.peak_gib(), 2),
    }
    row.update(users=split.num_users, items=split.num_items, records=int(len(split.train_users)))
    cascade_scale.reset_peak()
    started = time.perf_counter()
    signals = graph_signals.GraphSignals(split)
    row["build"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_gib": round(cascade_scale.peak_gib(), 2),
    }
    row["item_item_pairs"] = [
        int(g.item_item.nnz) if g.item_item is not None else None for g in signals.graphs
    ]
    row["cross_pairs"] = [int(c.nnz) if c is not None else None for c in signals.cross]
    rng = np.random.default_rng(0)
    buys = np.flatnonzero(split.train_branches == 0)
    batch, shared = config.train.batch_size, config.train.shared_negatives
    cascade_scale.reset_peak()
    seconds = []
    for _ in range(3):
        pick = rng.choice(buys, min(batch, len(buys)), replace=False)
        items = np.concatenate([split.train_items[pick], rng.integers(0, split.num_items, shared)])
        started = time.perf_counter()
        signals.grid(split.train_users[pick], items)
        seconds.append(time.perf_counter() - started)
    row["batch"] = {
        "seconds": round(float(np.mean(seconds)), 3),
        "peak_gib": round(cascade_scale.peak_gib(), 2),
        "grid": [int(len(pick)), int(len(items)), signals.num_signals],
    }
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "signals_cost"))
    args = parser.parse_args()
    rows = []
    for dataset in args.datasets.split(","):
        rows.append(measure(dataset, args.data_dir))
        print(rows[-1], flush=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"cpus": os.cpu_count(), "datasets": rows}, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(
            f"# The graph signals' cost per dataset ({os.cpu_count()} CPU cores)\n\n"
            f"Command: `python benchmarks/signals_cost.py --datasets={args.datasets}`\n\n"
            "Seconds and peak resident memory (GiB) of each stage; a batch is the "
            "flagfile's softmax grid (its training buys x their items plus the shared "
            "candidates), the mean of 3.\n\n"
            "| dataset | users | items | training records | load s | build s | build peak GiB "
            "| batch grid | batch s | batch peak GiB |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n"
        )
        for r in rows:
            f.write(
                f"| {r['dataset']} | {r['users']} | {r['items']} | {r['records']} | "
                f"{r['load']['seconds']} | {r['build']['seconds']} | {r['build']['peak_gib']} | "
                f"{' x '.join(map(str, r['batch']['grid']))} | {r['batch']['seconds']} | "
                f"{r['batch']['peak_gib']} |\n"
            )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
