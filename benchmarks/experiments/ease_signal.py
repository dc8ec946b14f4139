"""Experiment: EASE's item-to-item score as the target branch's graph signal.

    python -m benchmarks.experiments.ease_signal --datasets=jd_vcgae,tmall_mbcgcn,beibei_ehcf \\
        --data_dir=../shared/data --seeds=0

The shipped `<dataset>_mmf.flags` runs give the target branch one graph
signal, `reach_<target>`: two steps on the buy graph from the user's other
buys. A multi-behavior EASE (`ease.py`) ranks untouched items better than
our model on three logs (ease.md), and blending its rank into the trained
model was kept nowhere (ease_blend.md). This asks whether the model does
better when it learns how to weigh EASE's score per pair: the `ease` arm
puts EASE's score of the pair in the `reach_<target>` column, scaled as the
column is (by its mean over a seeded sample of training buys), and runs the
shipped flagfile otherwise unchanged (its early stopping, its CascadingRank
blend chosen on validation, its test read once). The `shipped` arm is the
flagfile as it ships, in the same harness and seed; where it takes no graph
signals (tmall_mbcgcn, beibei_ehcf), the `signals` arm turns the library's
on (`--graph_signals`) and the `ease` arm is that with the EASE column.

No leak, cross-fitted by user: the users are dealt into `--folds` folds, and
fold k's users are scored with B_k, the EASE fitted without their training
buys (their supportive records stay, as they are features at test time too).
So no buy of a user, the pair's own included, is in the weights that score
that user's pairs; the pair's own record in the user's input row meets
B's zero diagonal. Every user is scored with its fold's weights in training,
validation and test alike (served as trained), so the signal of a training
buy and of a held-out buy come from the same kind of fit.

EASE's setting (w, lambda) per dataset is the plain EASE row's choice on the
first seed's validation (ease.json). A research variant: the library does
not offer it. Writes benchmarks/results/ease_signal.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from unittest import mock

import numpy as np

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from benchmarks.experiments import ease
from benchmarks.experiments import out_of_fold_residual
from benchmarks.experiments import running
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import splits

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
OUT = os.path.join(ROOT, "benchmarks", "results")
ARMS = ("shipped", "signals", "ease")
FOLDS = 5


def user_folds(num_users: int, folds: int, seed: int) -> np.ndarray:
    """[users] each user's fold in 0..folds-1, a seeded deal of equal shares."""
    order = np.random.default_rng([seed, 4242]).permutation(num_users)
    fold = np.empty(num_users, np.int64)
    fold[order] = np.arange(num_users) % folds
    return fold


def cross_fitted(
    split: splits.Split, supportive_weight: float, l2: float, fold: np.ndarray
) -> list[np.ndarray]:
    """[folds] EASE weights, B_k fitted without the training buys of fold k's users."""
    keys = splits.train_target_keys(split)
    weights = []
    for k in range(int(fold.max()) + 1):
        held = keys[fold[keys // split.num_items] == k]
        x = ease.input_matrix(out_of_fold_residual.without_buys(split, held), supportive_weight)
        weights.append(ease.fit(x, l2))
    return weights


class EaseSignals(graph_signals.GraphSignals):
    """The library's signals with `reach_<target>` replaced by the pair's
    cross-fitted EASE score: X_u B_{fold(u)}, X the whole training input."""

    def __init__(
        self, split: splits.Split, *, supportive_weight: float, l2: float, folds: int, seed: int
    ):
        self.x = ease.input_matrix(split, supportive_weight)
        self.fold = user_folds(split.num_users, folds, seed)
        self.weights = cross_fitted(split, supportive_weight, l2, self.fold)
        # The base measures every column's scale on training buys, this one's too.
        super().__init__(split)

    def ease(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[len(users), len(items)] X_u B_{fold(u)}[:, items]."""
        out = np.empty((len(users), len(items)), np.float32)
        folds = self.fold[users]
        whole = graph_signals._whole(items, self.num_items)
        for k in np.unique(folds):
            rows = np.flatnonzero(folds == k)
            x, b = self.x[users[rows]], self.weights[k]
            out[rows] = (x @ b)[:, items] if whole else x @ b[:, items]
        return out

    def _reach(self, graph, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        # The target's reach is EASE's score (the base scales it as the column);
        # the two steps are not computed for it.
        if graph is self.graphs[0]:
            return self.ease(users, items)
        return super()._reach(graph, users, items)


def chosen_setting(dataset: str) -> tuple[float, float]:
    """(w, lambda) the plain EASE row chose on the first seed's validation (ease.json)."""
    with open(os.path.join(OUT, "ease.json")) as f:
        rows = json.load(f)["datasets"][dataset]
    chosen = rows[0]["arms"]["EASE"]["chosen"]
    return float(chosen["supportive_weight"]), float(chosen["l2"])


def run_arm(dataset: str, data_dir: str, seed: int, arm: str, runs_dir: str, folds: int) -> dict:
    """One arm, one seed: the shipped flagfile's run, with the EASE column or not."""
    from mmrec_tf import run as run_lib

    model_dir = os.path.join(runs_dir, f"{dataset}_{arm}_s{seed}")
    extra = () if arm == "shipped" else ("--graph_signals",)
    config = running.fresh_shipped_config(dataset, data_dir, seed, model_dir, extra)
    setting = {}
    curve = []

    def on_validation(epoch, metrics):
        curve.append(round(float(metrics["HR@10"]), 4))

    if arm == "ease":
        w, l2 = chosen_setting(dataset)
        setting = {"supportive_weight": w, "l2": l2, "folds": folds}

        def build(split, **kwargs):
            return EaseSignals(split, supportive_weight=w, l2=l2, folds=folds, seed=seed)

        with mock.patch.object(graph_signals, "GraphSignals", build):
            results = run_lib.run(config, on_validation=on_validation)
    else:
        results = run_lib.run(config, on_validation=on_validation)
    blended = results.get("cascade_blend", {})
    return {
        "arm": arm,
        "seed": seed,
        "setting": setting,
        # Epoch 0 is the start (the ALS); the model alone, before the blend.
        "valid_HR@10_by_epoch": curve,
        "kept_epoch": results["train"].get("best_epoch"),
        "blend_weight": blended.get("weight"),
        "valid_full_HR@10": results["validation"]["full"]["HR@10"],
        "seconds": results["seconds"],
        "test": {
            p: {
                k: results["test"][p][k]
                for k in ("HR@10", "HR@10_se", "NDCG@10", "NDCG@10_se", "cases")
            }
            for p in ("full", "discovery", "sampled")
        },
    }


def summary(runs: list[dict]) -> dict:
    """Per arm: the test figures' mean ± SE over seeds (over cases for one seed)."""
    out = {}
    for arm in ARMS:
        chosen = [r for r in runs if r["arm"] == arm]
        if not chosen:
            continue
        out[arm] = {p: running.summarize(chosen, p) for p in ("full", "discovery", "sampled")}
        out[arm]["valid_full_HR@10"] = float(np.mean([r["valid_full_HR@10"] for r in chosen]))
    return out


def report(results: dict, commands: dict) -> str:
    lines = [
        "# EASE's score as the target branch's graph signal",
        "",
        "`python -m benchmarks.experiments.ease_signal` (benchmarks/experiments/ease_signal.py): "
        "the shipped `<dataset>_mmf.flags` run as it ships (`shipped`), and with the target "
        "branch's `reach_<target>` column replaced by the pair's multi-behavior EASE score, "
        f"cross-fitted over {FOLDS} folds of users so that no user's buys are in the weights "
        "that score its pairs (`ease`; EASE's (w, lambda) as the plain EASE row chose on the "
        "first seed's validation, ease.json). Test HR@10 (NDCG@10 for full), mean over seeds "
        "± the SE across seeds (one seed: over cases); validation: full-ranking HR@10 of the "
        "blended model on the seeded validation cases, which decide.",
        "",
        "| dataset | arm | full HR@10 | full NDCG@10 | discovery HR@10 | sampled HR@10 "
        "| validation: full HR@10 | validation by epoch (epoch 0: the start), kept, blend "
        "weight, per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, runs in results.items():
        for arm, row in summary(runs).items():
            per_seed = "; ".join(
                f"s{r['seed']}: {r['valid_HR@10_by_epoch']}, {r['kept_epoch']}, {r['blend_weight']}"
                for r in runs
                if r["arm"] == arm
            )
            lines.append(
                f"| {dataset} | {arm} | {ease.metric_cells(row)} "
                f"| {row['valid_full_HR@10']:.4f} | {per_seed} |"
            )
    lines += ["", "Commands:", ""]
    lines += [f"- {dataset}: `{commands[dataset]}`" for dataset in results]
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="jd_vcgae,tmall_mbcgcn,beibei_ehcf")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--folds", type=int, default=FOLDS)
    parser.add_argument("--runs_dir", default="")
    parser.add_argument("--out", default=os.path.join(OUT, "ease_signal"))
    args = parser.parse_args(argv)
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="ease_signal_")
    path = args.out + ".json"
    results, commands = {}, {}
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        results, commands = stored["datasets"], stored["commands"]
    command = "python -m benchmarks.experiments.ease_signal " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]) if "runs_dir" not in a
    )
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                if arm not in ARMS:
                    raise ValueError(f"--arms: {arm!r} is not one of {ARMS}")
                runs = [r for r in results.get(dataset, []) if (r["arm"], r["seed"]) != (arm, seed)]
                runs.append(run_arm(dataset, args.data_dir, seed, arm, runs_dir, args.folds))
                results[dataset] = sorted(runs, key=lambda r: (ARMS.index(r["arm"]), r["seed"]))
                commands[dataset] = command
                with open(path, "w") as f:
                    json.dump({"commands": commands, "datasets": results}, f, indent=1)
                with open(args.out + ".md", "w") as f:
                    f.write(report(results, commands))


if __name__ == "__main__":
    main()
