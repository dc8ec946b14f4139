"""Recall of the candidate set that `recommend` re-ranks, at its size.

The export's `recommend` re-ranks, per user, the MF stage's top C, the top C
items the behavior graphs reach from the user's histories (with graph
signals), and the items the user touched through supportive feedback. This
measures, on a seeded sample of test cases of a trained run, how often the
held-out item is among them, by part and together, beside the set's mean
size and the final top-10's hit rate (the two-stage HR@10).

    python benchmarks/candidate_recall.py --flagfile=mmrec_tf/configs/jd_vcgae_mmf.flags \\
        --model_dir=runs/jd_vcgae_mmf [--cases=5000]

Writes benchmarks/results/candidate_recall_<dataset>.{json,md}.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import blend
from mmrec_tf import cli
from mmrec_tf import models
from mmrec_tf import run as run_lib
from mmrec_tf import train as train_lib
from mmrec_tf.baselines import cascade as cascade_lib
from mmrec_tf.export import cascade as cascade_export
from mmrec_tf.export import serving
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import loading

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(config, *, cases: int = 5000, batch: int = 256) -> dict:
    """Recall of each candidate source and the two-stage HR@10 of a trained run.

    Args:
      config: the run's configuration (its `model_dir` holds the trained run).
      cases: test cases sampled (seeded).
      batch: users per call.

    Returns:
      {"recall": {source: share of cases whose held-out item it holds, beyond
       the sources before it; "any": the whole set}, "two_stage_HR@10", ...}.
    """
    name = run_lib.dataset_name(config)
    data, split = loading.load(config.data, work_dir=config.model_dir, seed=config.train.seed)
    scorer = models.build_model(
        config.model,
        num_users=split.num_users,
        num_items=split.num_items,
        behaviors=split.behaviors,
    )
    train_lib.load_best(scorer, os.path.join(config.model_dir, "best", "weights"), partial=True)
    signals = graph_signals.GraphSignals(split) if config.model.graph_signals else None
    # The module as the run exports it: with a --cascade_blend run's
    # CascadingRank and the weight its training kept.
    weight, propagation = 0.0, None
    if config.model.cascade_blend:
        weight = blend.load(config.model_dir)["weight"]
        propagation = cascade_export.Propagation(
            cascade_lib.CascadeScorer(split, blend.cascade_settings(config.model))
        )
    module = serving.from_training(
        scorer,
        split,
        user_tokens=data.user_vocab.tokens,
        item_tokens=data.item_vocab.tokens,
        top_k=config.export.top_k,
        retrieval_candidates=config.export.retrieval_candidates,
        exclude_seen=True,
        signals=signals,
        fold_in=(config.model.als_alpha, config.model.als_l2, config.model.als_supportive_weight),
        cascade=propagation,
        cascade_weight=weight,
    )
    rng = np.random.default_rng(0)
    picked = rng.choice(len(split.test_users), min(cases, len(split.test_users)), replace=False)
    users, items = split.test_users[picked], split.test_items[picked]
    c = module.retrieval_candidates
    parts = {"mf": 0, "graph": 0, "cascade": 0, "touched": 0, "any": 0, "top10": 0}
    # The candidates' columns: the MF stage's top C, then the graph's top C
    # (with graph signals), the cascade's top C (with a kept blend weight),
    # then the touched items.
    sources = ["mf"] + ["graph"] * (signals is not None) + ["cascade"] * bool(weight)
    size = 0
    started = time.perf_counter()
    for start in range(0, len(users), batch):
        u, i = users[start : start + batch], items[start : start + batch]
        candidates = module.candidate_items(u).numpy()
        hit = candidates == i[:, None]
        for k, source in enumerate(sources):
            parts[source] += int(hit[:, k * c : (k + 1) * c].any(axis=1).sum())
        parts["touched"] += int(hit[:, len(sources) * c :].any(axis=1).sum())
        parts["any"] += int(hit.any(axis=1).sum())
        size += int((candidates >= 0).sum())
        top = module.recommend(data.user_vocab.tokens[u])["item_ids"].numpy()
        parts["top10"] += int(
            (top == data.item_vocab.tokens[i][:, None].astype(bytes)).any(1).sum()
        )
    n = len(users)
    return {
        "dataset": name,
        "model_dir": config.model_dir,
        "cases": n,
        "retrieval_candidates": c,
        "cascade_blend_weight": weight,
        "mean_candidates": round(size / n, 1),
        "recall": {k: round(v / n, 4) for k, v in parts.items() if k != "top10"},
        "two_stage_HR@10": round(parts["top10"] / n, 4),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv):
    del argv
    fv = flags.FLAGS
    result = measure(cli.config_from_flags(fv), cases=fv.cases, batch=fv.batch)
    result["command"] = "python benchmarks/candidate_recall.py " + " ".join(sys.argv[1:])
    name, n, c, weight = (
        result["dataset"],
        result["cases"],
        result["retrieval_candidates"],
        result["cascade_blend_weight"],
    )
    print(json.dumps(result, indent=1))
    out = os.path.join(HERE, "results", f"candidate_recall_{name}")
    with open(out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    r = result["recall"]
    with open(out + ".md", "w") as f:
        f.write(
            f"# Candidate recall: {name}\n\nCommand: `{result['command']}`\n\n"
            f"{n} seeded test cases; C = {c}; the set `recommend` re-ranks holds "
            f"{result['mean_candidates']} items per user on average.\n\n"
            "| part | recall (held-out item in it) |\n|---|---|\n"
            f"| MF top C | {r['mf']} |\n| graph top C (beyond the MF's) | {r['graph']} |\n"
            f"| CascadingRank top C (beyond those; blend weight {weight:g}) | {r['cascade']} |\n"
            f"| touched items | {r['touched']} |\n| the whole set | {r['any']} |\n"
            f"| the final top 10 (two-stage HR@10) | {result['two_stage_HR@10']} |\n"
        )


if __name__ == "__main__":
    flags.DEFINE_integer("cases", 5000, "Test cases sampled (seeded).")
    flags.DEFINE_integer("batch", 256, "Users per call.")
    cli.define_flags(flags.FLAGS)
    app.run(main)
