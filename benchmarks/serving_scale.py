"""Export size, load time and latency as the catalog grows to 10M items.

    python benchmarks/serving_scale.py [--items=626822,10000000] [--users=100000]

For each catalog size: a multi-feedback scorer with small dims (MF 4, one
4-wide layer per branch, buy + cart) over synthetic raw ids, exported with
`exporter.export` (vocabularies as assets, tables as variables). Then, in a
clean process that imports only TensorFlow: the SavedModel's load time, and
p50 / p99 of `recommend` for 1 user (top 10 of 500 MF candidates) and of
`serving_default` for 1 user x 100 items (serving_latency.py's timer). The weights are untrained: size
and latency do not depend on their values.

Writes benchmarks/results/serving_scale.{json,md}; serving_latency.md links it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np
import serving_latency  # beside this script

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf.export import exporter
from mmrec_tf.export import serving
from mmrec_tf.pipelines import schema

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def measure(num_items: int, num_users: int, work_dir: str, calls: int) -> dict:
    """Builds, exports and times one catalog size."""
    rng = np.random.default_rng(0)
    behaviors = schema.BehaviorSchema(target="buy", supportive=("cart",))
    started = time.perf_counter()
    scorer = models.build_model(
        config_lib.ModelConfig(model="mmf", mf_dim=4, mlp_dim=4, mlp_layers=1),
        num_users=num_users,
        num_items=num_items,
        behaviors=behaviors,
    )
    seen = rng.integers(0, num_items, size=num_users * 2).astype(np.int32)
    module = serving.ServingModule(
        scorer,
        user_tokens=np.array([f"u{k}" for k in range(num_users)], dtype=object),
        item_tokens=np.array([f"i{k}" for k in range(num_items)], dtype=object),
        behaviors=behaviors.behaviors,
        popularity=rng.zipf(1.5, size=num_items).clip(max=10**6),
        seen_row_splits=np.arange(0, 2 * num_users + 1, 2, dtype=np.int64),
        seen_items=seen,
        top_k=10,
        retrieval_candidates=500,
    )
    built = time.perf_counter() - started
    started = time.perf_counter()
    export_dir = os.path.join(work_dir, f"items_{num_items}")
    path = exporter.export(
        module, export_dir, warmup_user_ids=["u0", "u1"], warmup_item_ids=["i0", "i1"]
    )
    exported = time.perf_counter() - started
    users = [f"u{k}" for k in range(50)]
    result = serving_latency.time_export(path, users, [f"i{k}" for k in range(100)], calls)
    result.update(
        num_items=num_items,
        num_users=num_users,
        build_seconds=round(built, 1),
        export_seconds=round(exported, 1),
        export_bytes=serving_latency.disk_bytes(path),
        saved_model_pb_bytes=os.path.getsize(os.path.join(path, "saved_model.pb")),
        variables_bytes=serving_latency.disk_bytes(os.path.join(path, "variables")),
        assets_bytes=serving_latency.disk_bytes(os.path.join(path, "assets")),
        exporter_peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", default="626822,10000000")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "serving_scale"))
    parser.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    command = "python benchmarks/serving_scale.py " + " ".join(
        f"--{k}={v}" for k, v in (("items", args.items), ("users", args.users))
    )
    rows = []
    for num_items in [int(n) for n in args.items.split(",")]:
        row = measure(num_items, args.users, args.work_dir, args.calls)
        print(json.dumps(row), flush=True)
        rows.append(row)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "serving_scale.json"), "w") as f:
        json.dump({"command": command, "rows": rows}, f, indent=1)
    lines = [
        "# Export size and latency up to a 10M-item catalog",
        "",
        f"Command: `{command}` (2 CPU cores; untrained weights, MF 4 + one 4-wide layer per "
        "branch, buy + cart; vocabularies as assets, tables as variables). Load and latency "
        "in a clean process that imports only TensorFlow; latency p50 / p99 over "
        f"{args.calls} calls after warm-up.",
        "",
        "| items | users | export MB | saved_model.pb KB | variables MB | assets MB | export s "
        "| load s | recommend 1 user p50 / p99 ms | serving_default 1x100 p50 / p99 ms "
        "| serving peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rec, sd = r["recommend_1_user"], r["serving_default_1x100"]
        lines.append(
            f"| {r['num_items']:,} | {r['num_users']:,} | {r['export_bytes'] / 2**20:.0f} | "
            f"{r['saved_model_pb_bytes'] / 2**10:.0f} | {r['variables_bytes'] / 2**20:.0f} | "
            f"{r['assets_bytes'] / 2**20:.0f} | {r['export_seconds']:.0f} | "
            f"{r['load_seconds']:.1f} | {rec['p50_ms']:.1f} / {rec['p99_ms']:.1f} | "
            f"{sd['p50_ms']:.2f} / {sd['p99_ms']:.2f} | {r['peak_rss_mb']:.0f} |"
        )
    lines.append("")
    with open(os.path.join(args.out_dir, "serving_scale.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
