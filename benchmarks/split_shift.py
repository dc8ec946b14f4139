"""Do the carved validation cases look like the test cases?

    python benchmarks/split_shift.py --datasets=beibei_ehcf,taobao_ehcf

For each dataset (its flagfile's split, seed 0): how popular the held-out
items of the validation and of the test cases are (training buys of the
item), and how many of them the user touched in training through a
supportive behavior. Validation cases are carved from training buys and
matched to the test split on supportive overlap only; where the test split
is given by the data (no timestamps), its held-out buys can differ in
popularity, and a gain on validation then need not carry to the test.
Writes benchmarks/results/split_shift.md.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import cli
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import training_index

HERE = os.path.dirname(os.path.abspath(__file__))


def shift(dataset: str, data_dir: str) -> list[str]:
    from absl import flags

    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(
        [
            "split_shift",
            f"--flagfile={os.path.join(HERE, '..', 'mmrec_tf', 'configs', dataset + '.flags')}",
            f"--data_path={os.path.join(data_dir, dataset, 'interactions.tsv.gz')}",
            "--seed=0",
        ]
    )
    config = cli.config_from_flags(fv)
    _, split = loading.load(config.data, work_dir="", seed=config.train.seed)
    index = training_index.TrainingIndex.from_split(split)
    buys = np.bincount(index.pos_items, minlength=split.num_items)
    rows = []
    for name, users, items in (
        ("validation", split.valid_users, split.valid_items),
        ("test", split.test_users, split.test_items),
    ):
        touched = index.gates(users, items)[:, 1:].sum(-1) > 0
        pop = buys[items]
        rows.append(
            f"| {dataset} | {name} ({split.info.get('validation') if name == 'validation' else split.info['method']}) "
            f"| {len(items)} | {np.median(pop):.0f} | {pop.mean():.1f} | {touched.mean():.3f} |"
        )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="beibei_ehcf")
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data"))
    args = parser.parse_args()
    lines = [
        "# Validation against test: the held-out items",
        "",
        f"Command: `python benchmarks/split_shift.py --datasets={args.datasets}`",
        "",
        "Training buys of each held-out item (median, mean) and the share of cases whose "
        "item the user touched in training through a supportive behavior; seed 0's split.",
        "",
        "| dataset | cases | count | median buys | mean buys | touched |",
        "|---|---|---|---|---|---|",
    ]
    for dataset in args.datasets.split(","):
        lines += shift(dataset, args.data_dir)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(HERE, "results", "split_shift.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
