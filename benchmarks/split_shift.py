"""Do the carved validation cases look like the test cases?

    python benchmarks/split_shift.py --datasets=beibei_ehcf,taobao_ehcf

For each dataset (its flagfile's split, seed 0): how popular the held-out
items of the validation and of the test cases are (training buys of the
item), and how many of them the user touched in training through a
supportive behavior. Validation cases are carved from training buys and
matched to the test split on supportive overlap only; where the test split
is given by the data (no timestamps), its held-out buys can differ in
popularity, and a gain on validation then need not carry to the test.

Where the raw item ids are integers, also: the share of the user's training
buys whose raw id is below the held-out item's (mean over cases). A random
held-out buy gives 0.5; far above it, the held-out items are the user's
newest ids, which is how a log that numbers items in order of appearance
shows a test split of each user's latest buy (a time order no random carve
can follow). The same trace as a ranking: the share of cases whose held-out
item is among the first 10 of the user's touched, never-bought items ranked
by raw id, newest first, beside the same items ranked by training buys (the
"popular, touched items first" ranking's head). No model of this project
reads raw ids; this measures what they would leak.
Writes benchmarks/results/split_shift.md.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from experiments import matched_validation  # the lab beside this script

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import cli
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import training_index

HERE = os.path.dirname(os.path.abspath(__file__))


def id_order(index, split, raw_ids, users, items) -> float:
    """Mean share of each case's user's training buys with a raw item id below the case's item."""
    buys = index.pos_users.astype(np.int64) * split.num_items + index.pos_items
    return float(
        matched_validation.id_rank(
            buys, raw_ids, users, items, split.num_items, exclude_self=False
        ).mean()
    )


def touched_top10(index, split, value_of, users, items) -> float:
    """Share of cases whose item is a touched, never-bought item of its user
    and among the first 10 of those ranked by `value_of` (descending; ties
    count against the held-out item)."""
    never_bought = (index.bits & 1) == 0
    owners = (index.keys[never_bought] // split.num_items).astype(np.int64)
    values = value_of[index.keys[never_bought] % split.num_items].astype(np.float64)
    # Per user, values sorted ascending: the count at or above v is a search.
    order = np.lexsort((values, owners))
    owners, values = owners[order], values[order]
    first = np.searchsorted(owners, users)
    last = np.searchsorted(owners, users, side="right")
    hits = np.zeros(len(users), bool)
    touched = index.gates(users, items)[:, 1:].sum(-1) > 0
    for k in np.flatnonzero(touched):
        row = values[first[k] : last[k]]
        above = len(row) - np.searchsorted(row, value_of[items[k]], side="left") - 1
        hits[k] = above < 10
    return float(hits.mean())


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
    data, split = loading.load(config.data, work_dir="", seed=config.train.seed)
    tokens = data.item_vocab.tokens.astype(str)
    numeric = bool(np.char.isdigit(tokens).all())
    raw_ids = tokens.astype(np.int64) if numeric else None
    index = training_index.TrainingIndex.from_split(split)
    buys = np.bincount(index.pos_items, minlength=split.num_items)
    rows = []
    for name, users, items in (
        ("validation", split.valid_users, split.valid_items),
        ("test", split.test_users, split.test_items),
    ):
        touched = index.gates(users, items)[:, 1:].sum(-1) > 0
        pop = buys[items]
        order = f"{id_order(index, split, raw_ids, users, items):.3f}" if numeric else "n/a"
        by_id = f"{touched_top10(index, split, raw_ids, users, items):.3f}" if numeric else "n/a"
        by_buys = f"{touched_top10(index, split, buys, users, items):.3f}"
        rows.append(
            f"| {dataset} | {name} ({split.info.get('validation') if name == 'validation' else split.info['method']}) "
            f"| {len(items)} | {np.median(pop):.0f} | {pop.mean():.1f} | {touched.mean():.3f} | {order} | {by_id} | {by_buys} |"
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
        "item the user touched in training through a supportive behavior; id order: the "
        "share of the user's training buys whose raw item id is below the held-out item's "
        "(0.5 for a random held-out buy); touched top 10: the share of cases whose item is "
        "among the first 10 of the user's touched, never-bought items ranked by raw id "
        "(newest first) or by training buys; seed 0's split.",
        "",
        "| dataset | cases | count | median buys | mean buys | touched | id order "
        "| touched top 10 by id | touched top 10 by buys |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in args.datasets.split(","):
        lines += shift(dataset, args.data_dir)
    text = "\n".join(lines) + "\n"
    with open(os.path.join(HERE, "results", "split_shift.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
