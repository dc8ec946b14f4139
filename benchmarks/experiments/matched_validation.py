"""Experiment: validation cases carved to match the test items' popularity.

    python -m benchmarks.experiments.matched_validation --dataset=beibei_ehcf \\
        --data_dir=../shared/data --seeds=0,1,2

Where the data ships its test split without timestamps (beibei_ehcf), the
protocol carves each validation case at random from the user's training buys
and matches the test cases on supportive overlap only; the test buys are
about half as popular (split_shift.md: median 98 training buys against 189),
and our model, chosen on that validation, loses on test to rankers it beats
on validation. This experiment carves instead with weights per popularity
decile (of the test items' training buys) fitted so that the carved items'
deciles follow the test items', and asks whether validation then predicts
test:

- the rankers that learn nothing or little (popular and the tuned ALS,
  each with the touched items first, and the ALS alone): validation and
  test full-ranking HR@10 under both carves, seed 0;
- the shipped `<dataset>_mmf.flags` per seed and carve (`--carves`): the
  kept epoch's validation HR@10 and the test HR@10.

A third carve, `matched_order`, matches the popularity decile and the decile
of the item's rank by raw id among the user's training buys together. Where
a log numbers its items in order of appearance and its test split holds each
user's latest buy (beibei_ehcf: split_shift.md), the test items sit high in
that rank (0.86 against 0.5 at random), the one trace of time the log keeps;
this carve asks whether a validation that follows it predicts the test. The
rank only shapes which buys are carved: no model sees the ids.

It changes the validation cases only; the test cases are the data's. The
carve is a research variant: the library's split does not offer it.
Writes benchmarks/results/matched_validation_<dataset>.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from unittest import mock

import numpy as np

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from benchmarks.experiments import running
from mmrec_tf import baselines
from mmrec_tf import evaluate
from mmrec_tf.baselines import als
from mmrec_tf.baselines import popularity
from mmrec_tf.pipelines import interactions
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits
from mmrec_tf.pipelines import training_index

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
DECILES = 10

_PROTOCOL_MAKE_SPLIT = splits.make_split


def _draw_matched(
    keys,
    num_items,
    rng,
    *,
    min_pairs,
    popularity_of,
    test_popularity,
    raw_of=None,
    test_rank=None,
):
    """One pair per user (users with >= min_pairs pairs), drawn with a weight
    per popularity decile fitted so the drawn items' deciles follow the test
    items'. With `raw_of` (raw id of each item) and `test_rank` (each test
    item's `id_rank`), the cells are popularity decile x id-rank decile (the
    item's raw id among the user's training buys), so the drawn pairs follow
    the test pairs' joint distribution of the two."""
    items = keys % num_items
    # The carved pair leaves training: its item has one training buy fewer.
    pop = popularity_of[items] - 1.0
    edges = np.quantile(test_popularity, np.linspace(0, 1, DECILES + 1)[1:-1])
    cells = np.searchsorted(edges, pop, "right")
    test_cells = np.searchsorted(edges, test_popularity, side="right")
    num_cells = DECILES
    if raw_of is not None:
        rank_edges = np.linspace(0, 1, DECILES + 1)[1:-1]
        rank = id_rank(keys, raw_of, keys // num_items, items, num_items, exclude_self=True)
        cells = cells * DECILES + np.searchsorted(rank_edges, rank, "right")
        test_cells = test_cells * DECILES + np.searchsorted(rank_edges, test_rank, "right")
        num_cells = DECILES * DECILES
    return _draw_by_cells(
        keys,
        num_items,
        rng,
        min_pairs=min_pairs,
        cells=cells,
        test_cells=test_cells,
        num_cells=num_cells,
    )


def _draw_by_cells(keys, num_items, rng, *, min_pairs, cells, test_cells, num_cells):
    """One pair per user (users with >= min_pairs pairs), drawn with a weight
    per cell (`cells[k]` of pair k) fitted so the drawn pairs' cells follow
    `test_cells` (iterative proportional fitting of the expected shares)."""
    users = keys // num_items
    target = np.bincount(test_cells, minlength=num_cells) / len(test_cells)
    order = np.argsort(users, kind="stable")
    users, keys, decile = users[order], keys[order], cells[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    counts = np.diff(np.r_[starts, len(users)])
    enough = counts >= min_pairs
    segment = np.repeat(np.arange(len(starts)), counts)
    weight = np.ones(num_cells)
    for _ in range(50):
        w = weight[decile]
        chance = w / np.bincount(segment, w)[segment] * enough[segment]
        expected = np.bincount(decile, chance, minlength=num_cells) / enough.sum()
        weight *= np.where(expected > 0, target / np.maximum(expected, 1e-12), 1.0)
    w = weight[decile]
    cumulative = np.cumsum(w / np.bincount(segment, w)[segment])
    before = np.r_[0.0, cumulative[starts[1:] - 1]]
    picked = np.searchsorted(cumulative, before + rng.random(len(starts)), side="right")
    picked = np.minimum(picked, starts + counts - 1)
    return keys[picked[enough]]


def id_rank(user_keys, raw_of, users, items, num_items, *, exclude_self: bool) -> np.ndarray:
    """Share of each (user, item)'s user's pairs in `user_keys` whose item has a lower raw id.

    `exclude_self`: the pair is one of `user_keys` and does not count itself.
    """
    width = int(raw_of.max()) + 1
    owners = (user_keys // num_items).astype(np.int64)
    ordered = np.sort(owners * width + raw_of[user_keys % num_items])
    queries = users.astype(np.int64) * width
    first = np.searchsorted(ordered, queries)
    total = np.searchsorted(ordered, queries + width) - first
    below = np.searchsorted(ordered, queries + raw_of[items]) - first
    return below / np.maximum(total - (1 if exclude_self else 0), 1)


def matched_make_split(data, *, validation: bool, seed: int, order: bool = False):
    """`splits.make_split` with the validation draw matched on popularity
    (and, with `order`, on the item's raw-id rank among the user's buys)."""
    make = _PROTOCOL_MAKE_SPLIT
    base = make(data, validation=False, seed=seed)
    buys = base.train_branches == 0
    pop = np.bincount(base.train_items[buys], minlength=base.num_items).astype(np.float64)
    given = bool((data.splits != schema.SPLIT_NONE).any())
    protocol_draw = splits._latest_per_user
    calls = []

    matched = {"popularity_of": pop, "test_popularity": pop[base.test_items]}
    if order:
        matched["raw_of"] = data.item_vocab.tokens.astype(np.int64)
        matched["test_rank"] = id_rank(
            splits.train_target_keys(base),
            matched["raw_of"],
            base.test_users,
            base.test_items,
            base.num_items,
            exclude_self=False,
        )

    def draw(keys, stamps, num_items, rng, *, min_pairs):
        calls.append(1)
        if len(calls) == 1 and not given:  # the test hold-out: the protocol's
            return protocol_draw(keys, stamps, num_items, rng, min_pairs=min_pairs)
        return _draw_matched(keys, num_items, rng, min_pairs=min_pairs, **matched)

    with mock.patch.object(splits, "_latest_per_user", draw):
        split = make(data, validation=validation, seed=seed)
    split.info["validation"] = "carved, matched to the test items' popularity deciles" + (
        " and id-rank deciles" if order else ""
    )
    return split


def order_matched_make_split(data, *, validation: bool, seed: int):
    """`matched_make_split` matched on popularity and id rank together."""
    return matched_make_split(data, validation=validation, seed=seed, order=True)


CARVES = {
    "protocol": _PROTOCOL_MAKE_SPLIT,
    "matched": matched_make_split,
    "matched_order": order_matched_make_split,
}


def _hr(score, split, users, items, *, valid_excluded=False) -> tuple[float, float]:
    """Full-ranking HR@10 ± its standard error; `valid_excluded`: the
    validation buys are left out of the ranking too (they are the user's
    buys, which the carve took out of the training ones)."""
    exclude = splits.train_target_keys(split)
    if valid_excluded:
        exclude = np.union1d(
            exclude, splits.pair_keys(split.valid_users, split.valid_items, split.num_items)
        )
    ranks = evaluate.full_ranks(score, users, items, exclude, split.num_items)
    hits = (ranks < 10).astype(np.float64)
    return float(hits.mean()), float(hits.std() / np.sqrt(len(hits)))


def rankers(dataset: str, data_dir: str, carves) -> list[dict]:
    """Validation and test full HR@10 of the training-free rankers and the
    tuned ALS under each carve (seed 0)."""
    config = running.dataset_config(dataset, data_dir, f"{dataset}_als.flags", 0)
    data = interactions.encode(readers.read_interactions(config.data), config.data)
    rows = []
    raw_of = data.item_vocab.tokens.astype(np.int64)
    for carve in carves:
        split = CARVES[carve](data, validation=True, seed=0)
        buy_keys = splits.train_target_keys(split)
        index = training_index.TrainingIndex.from_split(split)
        buys = np.bincount(index.pos_items, minlength=split.num_items)
        factors = baselines.fit_factors(
            split, baselines.als_config(config.model, 0), cache_dir=baselines.cache_folder()
        )
        fitted = als.FactorScorer(factors[0], factors[1])
        arms = {
            "popular, touched items first": popularity.TouchedFirst(
                popularity.PopularityScorer(index), index
            ),
            "ALS multi-behavior (tuned)": fitted,
            "ALS multi-behavior, touched items first": popularity.TouchedFirst(fitted, index),
        }
        for arm, score in arms.items():
            valid = _hr(score, split, split.valid_users, split.valid_items)
            test = _hr(score, split, split.test_users, split.test_items)
            test_without_valid = _hr(
                score, split, split.test_users, split.test_items, valid_excluded=True
            )
            rows.append(
                {
                    "carve": carve,
                    "arm": arm,
                    "valid_median_buys": float(np.median(buys[split.valid_items])),
                    "test_median_buys": float(np.median(buys[split.test_items])),
                    "valid_id_rank": float(
                        id_rank(
                            buy_keys,
                            raw_of,
                            split.valid_users,
                            split.valid_items,
                            split.num_items,
                            exclude_self=False,
                        ).mean()
                    ),
                    "test_id_rank": float(
                        id_rank(
                            buy_keys,
                            raw_of,
                            split.test_users,
                            split.test_items,
                            split.num_items,
                            exclude_self=False,
                        ).mean()
                    ),
                    "valid_HR@10": valid,
                    "test_HR@10": test,
                    "test_HR@10_valid_excluded": test_without_valid,
                }
            )
            print(rows[-1], flush=True)
    return rows


def shipped(dataset: str, data_dir: str, seed: int, carve: str, runs_dir: str) -> dict:
    """The shipped flagfile's run with a carve: kept validation and test HR@10."""
    from mmrec_tf import run as run_lib

    model_dir = os.path.join(runs_dir, f"{dataset}_{carve}_s{seed}")
    config = running.fresh_shipped_config(dataset, data_dir, seed, model_dir)
    patch = (
        mock.patch.object(splits, "make_split", CARVES[carve])
        if carve != "protocol"
        else contextlib.nullcontext()
    )
    with patch:
        run_lib.run(config, name=dataset)
    with open(os.path.join(model_dir, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(model_dir, "history.json")) as f:
        history = json.load(f)
    return {
        "carve": carve,
        "seed": seed,
        "start_valid_HR@10": history[0]["val_HR@10"],
        "kept_epoch": results["train"]["best_epoch"],
        "kept_valid_HR@10": results["train"]["best_validation"]["HR@10"],
        "blend_weight": results.get("cascade_blend", {}).get("weight"),
        "test_HR@10": results["test"]["full"]["HR@10"],
        "test_HR@10_se": results["test"]["full"]["HR@10_se"],
    }


def _cell(figure) -> str:
    return "" if figure is None else f"{figure[0]:.4f} ± {figure[1]:.4f}"


def report(out: dict) -> str:
    """The experiment's tables, as Markdown."""
    lines = [
        f"# Validation carved to match the test items: {out['dataset']}",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in out["commands"]),
        "",
        "Full-ranking HR@10 on every validation and test case (seed 0), ± the standard "
        "error over cases. `protocol`: each validation case drawn at random from the "
        "user's training buys (PROTOCOL.md); `matched`: drawn with weights per decile of "
        "the item's training buys, fitted so the carved items' deciles follow the test "
        "items'; `matched_order`: drawn with weights per cell of popularity decile x decile "
        "of the item's rank by raw id among the user's training buys, fitted the same way. "
        "Median buys: the held-out items' training buys. Id rank: the mean share of the "
        "user's training buys with a lower raw item id (0.5 for a buy drawn at random). "
        "Validation buys left out: the test ranking also leaves out the user's carved "
        "validation buy (the protocol leaves out training buys only, and the carve took it "
        "out of them).",
        "",
        "| carve | ranker | validation HR@10 | test HR@10 | median buys: validation / test "
        "| id rank: validation / test | test HR@10, validation buys left out |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in out["rankers"]:
        v, t = row["valid_HR@10"], row["test_HR@10"]
        lines.append(
            f"| {row['carve']} | {row['arm']} | {v[0]:.4f} ± {v[1]:.4f} | {t[0]:.4f} ± {t[1]:.4f} "
            f"| {row['valid_median_buys']:.0f} / {row['test_median_buys']:.0f} "
            f"| {row.get('valid_id_rank', float('nan')):.3f} / "
            f"{row.get('test_id_rank', float('nan')):.3f} "
            f"| {_cell(row.get('test_HR@10_valid_excluded'))} |"
        )
    if out["shipped"]:
        lines += [
            "",
            f"The shipped `{out['dataset']}_mmf.flags` (validation on its seeded 5,000 cases):",
            "",
            "| carve | seed | start: validation HR@10 | kept epoch | kept: validation HR@10 "
            "| blend weight | test HR@10 |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in out["shipped"]:
            lines.append(
                f"| {row['carve']} | {row['seed']} | {row['start_valid_HR@10']:.4f} "
                f"| {row['kept_epoch']} | {row['kept_valid_HR@10']:.4f} | {row['blend_weight']} "
                f"| {row['test_HR@10']:.4f} ± {row['test_HR@10_se']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="beibei_ehcf")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument(
        "--carves",
        default="matched",
        help="comma-separated carves for the shipped flagfile's runs: " + ", ".join(CARVES),
    )
    parser.add_argument("--skip_rankers", action="store_true")
    args = parser.parse_args()
    path = os.path.normpath(
        os.path.join(HERE, "..", "results", f"matched_validation_{args.dataset}")
    )
    out = {"dataset": args.dataset, "rankers": [], "shipped": []}
    if os.path.exists(path + ".json"):
        # Runs of other seeds and carves stay; a run of the same one replaces it.
        with open(path + ".json") as f:
            out = json.load(f)
    if not args.skip_rankers:
        out["rankers"] = rankers(args.dataset, args.data_dir, list(CARVES))
    runs_dir = tempfile.mkdtemp(prefix="matched_validation_")
    carves = [c for c in args.carves.split(",") if c]
    unknown = sorted(set(carves) - set(CARVES))
    if unknown:
        parser.error(f"unknown --carves {unknown}: choose from {', '.join(CARVES)}")
    for seed in [int(s) for s in args.seeds.split(",") if s]:
        for carve in carves:
            row = shipped(args.dataset, args.data_dir, seed, carve, runs_dir)
            out["shipped"] = [
                r for r in out["shipped"] if (r["carve"], r["seed"]) != (carve, seed)
            ] + [row]
            print(row, flush=True)
    out["shipped"].sort(key=lambda r: (list(CARVES).index(r["carve"]), r["seed"]))
    with open(path + ".json", "w") as f:
        json.dump(out, f, indent=2)
    command = "python -m benchmarks.experiments.matched_validation " + " ".join(sys.argv[1:])
    out["commands"] = [c for c in out.get("commands", []) if c != command.strip()]
    out["commands"].append(command.strip())
    with open(path + ".md", "w") as f:
        f.write(report(out))
    shutil.rmtree(runs_dir, ignore_errors=True)
    print(f"wrote {path}.md")


if __name__ == "__main__":
    main()
