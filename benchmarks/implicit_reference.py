"""External reference: the `implicit` library on the project's splits and evaluation.

BPR on the target behavior, ALS on the target behavior (WMF) and ALS on a
confidence matrix of all behaviors (each supportive behavior adding a weight
to the target's 1), each tuned on the validation cases for each protocol over
the same 4-point grid, then run with 3 seeds. Data, split, candidates and
metrics are the project's own (`mmrec_tf.pipelines.loading`,
`mmrec_tf.evaluate`), so the figures sit beside the experiment runner's
Table 4. Needs the `bench` extra (`pip install -e .[bench]`).

    python benchmarks/implicit_reference.py --dataset=taobao_cml [--data_dir=../shared/data]

Writes benchmarks/results/<dataset>/implicit_reference.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import experiments  # the lab beside this script (benchmarks/experiments)
import numpy as np

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import tune
from mmrec_tf.baselines import als
from mmrec_tf.pipelines import loading

HERE = os.path.dirname(os.path.abspath(__file__))
GRIDS = {
    "BPR on buy (implicit)": [
        {"factors": f, "learning_rate": lr, "regularization": reg, "iterations": it}
        for f, lr, reg, it in (
            (64, 0.01, 0.01, 100),
            (64, 0.05, 0.01, 200),
            (128, 0.05, 0.001, 200),
            (64, 0.1, 0.01, 300),
        )
    ],
    "ALS on buy (implicit)": [
        {"factors": f, "regularization": reg, "alpha": a}
        for f, reg, a in ((32, 1.0, 10.0), (64, 1.0, 10.0), (64, 10.0, 40.0), (128, 10.0, 40.0))
    ],
    # The same points start every ALS study of mmrec_tf.tune (tune.STARTS).
    "ALS multi-behavior (implicit)": [
        {
            "factors": p["mf_dim"],
            "regularization": p["als_l2"],
            "alpha": p["als_alpha"],
            "supportive_weight": p["als_supportive_weight"],
        }
        for p in tune.STARTS["als"]
    ],
}


def fit(method: str, point: dict, split, seed: int) -> als.FactorScorer:
    import implicit
    import scipy.sparse

    point = dict(point)
    weight = point.pop("supportive_weight", 0.0)
    users, items, r = als.confidence_matrix(split, weight)
    matrix = scipy.sparse.csr_matrix(
        (r.astype(np.float32), (users, items)), shape=(split.num_users, split.num_items)
    )
    if method.startswith("BPR"):
        model = implicit.cpu.bpr.BayesianPersonalizedRanking(random_state=seed, **point)
    else:
        model = implicit.cpu.als.AlternatingLeastSquares(random_state=seed, **point)
    model.fit(matrix, show_progress=False)
    return als.FactorScorer(np.asarray(model.user_factors), np.asarray(model.item_factors))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="taobao_cml")
    parser.add_argument("--data_dir", default=os.path.join(HERE, "..", "..", "shared", "data"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    path = os.path.join(args.data_dir, args.dataset, "interactions.tsv.gz")
    _, split = loading.load(
        config_lib.DataConfig(data_path=path, data_format="tsv"),
        work_dir=os.path.join(HERE, ".cache", args.dataset),
    )
    eval_config = config_lib.EvalConfig()
    valid = evaluate.EvalCases.build(split, "valid", eval_config)
    test = evaluate.EvalCases.build(split, "test", eval_config)
    report = {"dataset": args.dataset, "seeds": args.seeds, "methods": []}
    for method, grid in GRIDS.items():
        tuning = []
        for point in grid:
            started = time.perf_counter()
            v = evaluate.evaluate(fit(method, point, split, 0), valid, config=eval_config)
            tuning.append(
                {
                    "point": point,
                    "validation_sampled_hr10": v["sampled"]["HR@10"],
                    "validation_full_hr10": v["full"]["HR@10"],
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
            print(method, point, tuning[-1], flush=True)
        entry = {"method": method, "tuning": tuning}
        for protocol in ("sampled", "full"):
            best = max(tuning, key=lambda t: t[f"validation_{protocol}_hr10"])["point"]
            runs = [
                {
                    "seed": s,
                    "test": evaluate.evaluate(
                        fit(method, best, split, s), test, config=eval_config
                    ),
                }
                for s in range(args.seeds)
            ]
            entry[protocol] = {"chosen": best, **experiments.summarize(runs, protocol)}
        report["methods"].append(entry)
    folder = os.path.join(args.out_dir, args.dataset)
    os.makedirs(folder, exist_ok=True)
    command = f"python benchmarks/implicit_reference.py --dataset={args.dataset}"
    with open(os.path.join(folder, "implicit_reference.json"), "w") as f:
        json.dump({**report, "command": command}, f, indent=1)
    lines = [
        f"# The implicit library on {args.dataset} (external reference)",
        "",
        f"Command: `{command}`",
        "",
        f"Test metrics, mean of {args.seeds} seeds ± standard error across seeds, on the "
        "project's split and evaluation; each protocol's column uses the point chosen on "
        "validation for that protocol.",
        "",
        "| method | sampled HR@10 | sampled NDCG@10 | full HR@10 | full NDCG@10 | cases | "
        "chosen (sampled / full) |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in report["methods"]:
        s, f = e["sampled"], e["full"]
        lines.append(
            f"| {e['method']} | {experiments.format_metric(s, 'HR@10')} | "
            f"{experiments.format_metric(s, 'NDCG@10')} | {experiments.format_metric(f, 'HR@10')} | "
            f"{experiments.format_metric(f, 'NDCG@10')} | {s['cases']} | "
            f"{s['chosen']} / {f['chosen']} |"
        )
    with open(os.path.join(folder, "implicit_reference.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
