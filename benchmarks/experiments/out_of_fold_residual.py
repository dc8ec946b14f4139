"""Experiment: the residual learned on buys its ALS start did not see.

    python -m benchmarks.experiments.out_of_fold_residual --dataset=taobao_cml \\
        --data_dir=../shared/data --seeds=0

The shipped recipe holds the MF part at the ALS factors and trains the
branches, fusion, head and offsets on the training buys. The ALS was fitted
on those same buys, so on every training positive its score is what the fit
memorized, higher than on a held-out buy; the residual learns corrections
for scores it will never see at serving time (the leak the graph signals
avoid by masking a pair's own edge). On logs where no learned epoch beats
the start (taobao_cml, taobao_ehcf), this is one candidate cause.

Out of fold: a share of the training buys (`--held_share`) is held out of a
second ALS fit; the residual trains on the held-out buys only, with the MF
part at that fit's factors, so each positive is scored as a held-out buy
would be. Every validation (the start as epoch 0, each epoch) and the test
swap in the ALS fitted on every training buy, the one that serves. The
in-fold arm is the shipped recipe in the same harness (every buy, the full
ALS throughout). A third arm serves what it trained on: the residual and
the fold's ALS together, validated and tested so (its start is the fold's
ALS, fitted on fewer buys). Every arm runs every epoch (patience = epochs) so the validation
curve is whole; the kept epoch is chosen as the library does (the start
unless an epoch beats it by --early_stopping_margin standard errors).

A research variant: the library does not offer it. Writes
benchmarks/results/out_of_fold_residual_<dataset>.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile

import numpy as np

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from benchmarks.experiments import running
from mmrec_tf import baselines
from mmrec_tf import evaluate
from mmrec_tf import train as train_lib
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import splits

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
ARMS = ("in_fold", "out_of_fold", "out_of_fold_served_as_trained")


def held_out_buys(split: splits.Split, share: float, seed: int) -> np.ndarray:
    """Sorted keys of a seeded `share` of the training buys (distinct pairs)."""
    keys = splits.train_target_keys(split)
    rng = np.random.default_rng([seed, 1729])
    return np.sort(rng.choice(keys, size=max(1, int(round(share * len(keys)))), replace=False))


def without_buys(split: splits.Split, held: np.ndarray) -> splits.Split:
    """`split` without the target records of the `held` pairs (their supportive
    records stay: only the buy is what the residual is trained to predict)."""
    keys = splits.pair_keys(split.train_users, split.train_items, split.num_items)
    target = split.train_branches == 0
    drop = target & np.isin(keys, held)
    keep = ~drop
    return dataclasses.replace(
        split,
        train_users=split.train_users[keep],
        train_items=split.train_items[keep],
        train_branches=split.train_branches[keep],
    )


def _config(dataset: str, data_dir: str, seed: int, model_dir: str):
    config = running.fresh_shipped_config(dataset, data_dir, seed, model_dir)
    # The whole validation curve: every epoch runs.
    train = dataclasses.replace(config.train, early_stopping_patience=config.train.epochs)
    return dataclasses.replace(config, train=train)


def _set_mf(scorer, factors) -> None:
    users, items = factors
    scorer.mf.user_embedding.embeddings.assign(np.asarray(users, np.float32))
    scorer.mf.item_embedding.embeddings.assign(np.asarray(items, np.float32))


def run_arm(dataset: str, data_dir: str, seed: int, arm: str, share: float, runs_dir: str) -> dict:
    """One arm, one seed: the validation curve, the kept epoch and its test figures."""
    import tensorflow as tf
    import tf_keras

    from mmrec_tf import run as run_lib

    model_dir = os.path.join(runs_dir, f"{dataset}_{arm}_s{seed}")
    config = _config(dataset, data_dir, seed, model_dir)
    if config.model.mf_init != "als_fixed":
        raise ValueError(f"{dataset}_mmf.flags does not hold the MF part at the ALS factors")
    tf_keras.utils.set_random_seed(seed)
    _, split = loading.load(config.data, work_dir=model_dir, seed=seed)
    ranker, index = run_lib.build(config, split, tf.distribute.get_strategy())
    scorer = ranker.scorer
    # The shipped start: the ALS of every training buy, the offsets as
    # --behavior_init says; its tables are what serves.
    run_lib.start_from_als(scorer, config, split)
    serving = tuple(
        t.embeddings.numpy() for t in (scorer.mf.user_embedding, scorer.mf.item_embedding)
    )
    training, train_index = serving, index
    if arm.startswith("out_of_fold"):
        held = held_out_buys(split, share, seed)
        training = baselines.fit_factors(
            without_buys(split, held),
            baselines.als_config(config.model, seed),
            cache_dir=baselines.cache_folder(),
        )[:2]
        train_index = dataclasses.replace(
            index,
            pos_users=(held // split.num_items).astype(np.int32),
            pos_items=(held % split.num_items).astype(np.int32),
        )
        if arm == "out_of_fold_served_as_trained":
            # Validated and tested with the fold's ALS too: no shift between
            # the scores the residual learned on and those it corrects.
            serving = training
    _set_mf(scorer, training)
    signals = graph_signals.GraphSignals(split) if config.model.graph_signals else None
    score = evaluate.Scorer(
        scorer, split.behaviors.num_behaviors, config.eval.batch_size, index=index, signals=signals
    )
    valid_cases = evaluate.EvalCases.build(split, "valid", config.eval, touched_keys=index.keys)

    def validation():
        # Validated as it serves: with the ALS of every training buy.
        _set_mf(scorer, serving)
        try:
            return run_lib.validation_metrics(config, score, valid_cases)
        finally:
            _set_mf(scorer, training)

    result = train_lib.train(
        ranker=ranker,
        index=train_index,
        config=config.train,
        model_dir=model_dir,
        validation=validation,
        validate_start=True,
        signals=signals,
    )
    _set_mf(scorer, serving)
    test_cases = evaluate.EvalCases.build(split, "test", config.eval, touched_keys=index.keys)
    test = evaluate.evaluate(score, test_cases, config=config.eval, protocols=("full", "discovery"))
    return {
        "arm": arm,
        "seed": seed,
        "positives": int(len(train_index.pos_users)),
        "valid_HR@10_by_epoch": [round(h["val_HR@10"], 4) for h in result.history],
        "kept_epoch": result.best_epoch,
        "test_full_HR@10": test["full"]["HR@10"],
        "test_discovery_HR@10": test["discovery"]["HR@10"],
    }


def report(out: dict) -> str:
    lines = [
        f"# The residual learned out of fold on {out['dataset']}",
        "",
        "Commands: " + ", ".join(f"`{c}`" for c in out["commands"]),
        "",
        "Validation full-ranking HR@10 (the seeded sample of validation cases) at the "
        "start (epoch 0, the ALS) and after each epoch, scored with the ALS fitted on every "
        "training buy (the arm served as trained: with the fold's ALS); the kept epoch as the "
        "library chooses it "
        f"(--early_stopping_margin); test HR@10 of the kept weights. Out of fold: the residual "
        f"trains on {out['held_share']:.0%} of the training buys with the MF part at an ALS "
        "fitted without them.",
        "",
        "| arm | seed | positives | validation by epoch | kept epoch | test full | test discovery |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in out["runs"]:
        curve = " / ".join(f"{v:.4f}" for v in r["valid_HR@10_by_epoch"])
        lines.append(
            f"| {r['arm']} | {r['seed']} | {r['positives']} | {curve} | {r['kept_epoch']} | "
            f"{r['test_full_HR@10']:.4f} | {r['test_discovery_HR@10']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="taobao_cml")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--held_share", type=float, default=0.5)
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--runs_dir", default="")
    args = parser.parse_args()
    command = (
        f"python -m benchmarks.experiments.out_of_fold_residual --dataset={args.dataset} "
        f"--seeds={args.seeds} --held_share={args.held_share} --arms={args.arms}"
    )
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="out_of_fold_")
    path = os.path.join(HERE, "..", "results", f"out_of_fold_residual_{args.dataset}")
    out = {"dataset": args.dataset, "held_share": args.held_share, "commands": [], "runs": []}
    if os.path.exists(path + ".json"):
        # Runs of other arms and seeds stay; a run of the same arm and seed
        # with the same held-out share is replaced.
        with open(path + ".json") as f:
            out = json.load(f)
        if out["held_share"] != args.held_share:
            raise ValueError(
                f"{path}.json holds runs with --held_share={out['held_share']}: give that "
                "share, or move the file away to start a report with another."
            )
    out["commands"].append(command)
    for seed in (int(s) for s in args.seeds.split(",")):
        for arm in args.arms.split(","):
            run = run_arm(args.dataset, args.data_dir, seed, arm, args.held_share, runs_dir)
            out["runs"] = [r for r in out["runs"] if (r["arm"], r["seed"]) != (arm, seed)] + [run]
            print(json.dumps(run), flush=True)
    out["runs"].sort(key=lambda r: (r["seed"], ARMS.index(r["arm"])))
    with open(path + ".json", "w") as f:
        json.dump(out, f, indent=1)
    with open(path + ".md", "w") as f:
        f.write(report(out))
    print(report(out))


if __name__ == "__main__":
    main()
