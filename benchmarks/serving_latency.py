"""Serving latency of exported SavedModels, measured in a separate process.

For each model: export it, then load the SavedModel in a fresh Python process
that imports only TensorFlow and time, after warm-up,

- `serving_default` for 1 user x 100 items,
- `recommend` for 1 user (top 10 of the retrieval candidates),

reporting p50 and p99 over many calls, and the export's size on disk.

Models: a trained taobao_cml run (`--taobao_model_dir`, a `--model_dir` of
`python -m mmrec_tf.main --flagfile=mmrec_tf/configs/taobao_cml.flags`), and a
model of the same architecture on a synthetic 627k-item catalog (trained for
a few steps: latency does not depend on the weights).

With `--tradeoff`, also exports the taobao_cml model at several numbers of
retrieval candidates and records two-stage HR@10 (full-ranking protocol,
through the SavedModel) and `recommend` latency for each, beside the full
model ranking the whole catalog.

    python benchmarks/serving_latency.py --taobao_model_dir=runs/taobao_cml --tradeoff

Writes benchmarks/results/serving_latency.{json,md} (and serving_tradeoff.*).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

from absl import flags

from mmrec_tf import cli
from mmrec_tf import run as run_lib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TIMER = textwrap.dedent(
    """
    import json, re, sys, time
    import numpy as np
    import tensorflow as tf
    path, users, items, calls = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
    start = time.perf_counter()
    model = tf.saved_model.load(path)
    load_seconds = time.perf_counter() - start
    score, recommend = model.signatures["serving_default"], model.signatures["recommend"]
    # One user against up to 100 items: fewer where the export caps a
    # request's pairs (graph signals over a large catalog), as its error says.
    pairs = len(items[:100])
    try:
        score(user_id=tf.constant([users[0]] * pairs), item_id=tf.constant(items[:pairs]))
    except tf.errors.InvalidArgumentError as error:
        cap = re.search(r"at most (\\d+) per request", str(error))
        if not cap:
            raise
        pairs = min(pairs, int(cap.group(1)))
    def timed(fn):
        for k in range(20):
            fn(k)
        out = []
        for k in range(calls):
            start = time.perf_counter()
            fn(k)
            out.append((time.perf_counter() - start) * 1000)
        return {"p50_ms": float(np.percentile(out, 50)), "p99_ms": float(np.percentile(out, 99)),
                "mean_ms": float(np.mean(out)), "calls": calls}
    result = {
        "load_seconds": load_seconds,
        "serving_default_1x100": dict(pairs=pairs, **timed(lambda k: score(
            user_id=tf.constant([users[k % len(users)]] * pairs), item_id=tf.constant(items[:pairs])))),
        "recommend_1_user": timed(lambda k: recommend(user_id=tf.constant([users[k % len(users)]]))),
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it
        # would hold the parent's size at the fork.
        "peak_rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024,
    }
    print(json.dumps(result))
    """
)


# The markdown table of `time_export` results: its head, and one row per export.
TABLE_HEAD = (
    "| model | items | serving_default 1x100 p50 / p99 ms | recommend top 10 "
    "p50 / p99 ms | export size MB | load s |\n|---|---|---|---|---|---|\n"
)


def table_row(name: str, r: dict) -> str:
    s, c = r["serving_default_1x100"], r["recommend_1_user"]
    return (
        f"| {name} | {r['num_items']} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} | "
        f"{c['p50_ms']:.2f} / {c['p99_ms']:.2f} | {r['export_bytes'] / 2**20:.1f} | "
        f"{r.get('load_seconds', float('nan')):.1f} |\n"
    )


def process_gib(field: str) -> float:
    """A memory line of /proc/self/status in GiB: `VmRSS` (resident now), `VmHWM` (its peak)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def disk_bytes(path: str) -> int:
    """Bytes of every file below `path`."""
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _run(argv: list[str]) -> dict:
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["serving_latency", *argv])
    return run_lib.run(cli.config_from_flags(fv))


def _time_export(path: str, model_dir: str, calls: int) -> dict:
    users = [u for u in open(os.path.join(model_dir, "vocab", "users.txt")).read().split()][:200]
    items = [i for i in open(os.path.join(model_dir, "vocab", "items.txt")).read().split()][:100]
    return time_export(path, users, items, calls)


def time_export(path: str, users: list[str], items: list[str], calls: int) -> dict:
    """Load time, latency and peak memory of the SavedModel at `path` in a clean
    process that imports only TensorFlow; plus its size on disk."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    done = subprocess.run(
        [sys.executable, "-c", TIMER, path, json.dumps(users), json.dumps(items), str(calls)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        raise RuntimeError(
            f"timing the export at {path} failed (exit {done.returncode}); the serving "
            f"process's last output:\n{done.stderr[-3000:]}"
        )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["export_bytes"] = disk_bytes(path)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--taobao_model_dir", default=os.path.join(ROOT, "runs", "taobao_cml"))
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "serving_latency"))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--tradeoff", action="store_true")
    parser.add_argument("--candidates", default="50,100,200,500,1000,2000")
    parser.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    flagfile = os.path.join(ROOT, "mmrec_tf", "configs", "taobao_cml.flags")
    cml = os.path.join(args.data_dir, "taobao_cml", "interactions.tsv.gz")
    common = [f"--flagfile={flagfile}", "--verbose=0"]
    cml_run = common + [f"--data_path={cml}", f"--model_dir={args.taobao_model_dir}"]
    rows = {}

    if os.path.exists(os.path.join(args.taobao_model_dir, "results.json")):
        export_dir = os.path.join(args.work_dir, "taobao_cml_export")
        result = _run(
            cml_run
            + [
                "--mode=export",
                f"--export_dir={export_dir}",
            ]
        )
        rows["taobao_cml"] = _time_export(
            result["export"]["path"], args.taobao_model_dir, args.calls
        )
        rows["taobao_cml"]["num_items"] = result["num_items"]
        print("taobao_cml", rows["taobao_cml"], flush=True)
    else:
        print(f"no trained taobao_cml model in {args.taobao_model_dir}: skipped")

    synthetic_dir = os.path.join(args.work_dir, "synthetic_630k")
    result = _run(
        common
        + [
            "--data_format=synthetic",
            "--data_path=",
            "--synthetic_users=200000",
            "--synthetic_items=900000",
            "--synthetic_records_per_user=40",
            f"--model_dir={synthetic_dir}",
            "--mode=train",
            "--epochs=1",
            "--steps_per_epoch=20",
            f"--export_dir={os.path.join(synthetic_dir, 'export')}",
        ]
    )
    rows["synthetic_630k"] = _time_export(result["export"]["path"], synthetic_dir, args.calls)
    rows["synthetic_630k"]["num_items"] = result["num_items"]
    print("synthetic_630k", rows["synthetic_630k"], flush=True)

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "serving_latency.json"), "w") as f:
        json.dump(rows, f, indent=2)
    with open(os.path.join(args.out_dir, "serving_latency.md"), "w") as f:
        f.write(
            "# Serving latency (loaded SavedModel, separate process, 2 CPU cores)\n\n"
            "Command: `python benchmarks/serving_latency.py "
            "--taobao_model_dir=runs/mmf_vs_ncf/taobao_cml/mmf_seed0 --tradeoff` (the model "
            "of the former `benchmarks/mmf_vs_ncf.py`, now `python -m benchmarks.experiments --suite=mmf_vs_ncf`, seed 0)\n\n"
            "Up to a 10M-item catalog (vocabularies as assets, tables as variables): "
            "[serving_scale.md](serving_scale.md) (`python benchmarks/serving_scale.py`).\n\n"
            + TABLE_HEAD
        )
        for name, r in rows.items():
            f.write(table_row(name, r))

    if args.tradeoff and "taobao_cml" in rows:
        base = json.load(open(os.path.join(args.taobao_model_dir, "results.json")))
        full = base["test"]["full"]
        curve = []
        for candidates in [int(c) for c in args.candidates.split(",")]:
            export_dir = os.path.join(args.work_dir, f"taobao_cml_c{candidates}")
            result = _run(
                cml_run
                + [
                    "--mode=export",
                    f"--export_dir={export_dir}",
                    f"--retrieval_candidates={candidates}",
                ]
            )
            path = result["export"]["path"]
            evaluated = _run(
                cml_run
                + [
                    "--mode=evaluate_export",
                    f"--export_dir={export_dir}",
                ]
            )
            latency = _time_export(path, args.taobao_model_dir, args.calls)
            row = {
                "candidates": candidates,
                "two_stage_HR@10": evaluated["test"]["recommend"]["HR@10"],
                "two_stage_NDCG@10": evaluated["test"]["recommend"]["NDCG@10"],
                "recommend_p50_ms": latency["recommend_1_user"]["p50_ms"],
                "recommend_p99_ms": latency["recommend_1_user"]["p99_ms"],
            }
            curve.append(row)
            print(row, flush=True)
        with open(os.path.join(args.out_dir, "serving_tradeoff.json"), "w") as f:
            json.dump({"full_model_full_ranking": full, "curve": curve}, f, indent=2)
        with open(os.path.join(args.out_dir, "serving_tradeoff.md"), "w") as f:
            f.write(
                "# taobao_cml: retrieval candidates vs two-stage HR@10 vs latency\n\n"
                "Command: `python benchmarks/serving_latency.py "
                "--taobao_model_dir=runs/mmf_vs_ncf/taobao_cml/mmf_seed0 --tradeoff` (the model "
                "of the former `benchmarks/mmf_vs_ncf.py`, now `python -m benchmarks.experiments --suite=mmf_vs_ncf`, seed 0)\n\n"
                "Full-ranking protocol on the test split (training purchases excluded). "
                f"The full model ranking the whole catalog: HR@10 {full['HR@10']:.4f} ± "
                f"{full['HR@10_se']:.4f}, NDCG@10 {full['NDCG@10']:.4f} "
                f"({full['cases']} cases).\n\n"
                "| candidates | two-stage HR@10 | / full model | NDCG@10 | recommend p50 ms "
                "| p99 ms |\n|---|---|---|---|---|---|\n"
            )
            for r in curve:
                f.write(
                    f"| {r['candidates']} | {r['two_stage_HR@10']:.4f} | "
                    f"{r['two_stage_HR@10'] / full['HR@10']:.3f} | "
                    f"{r['two_stage_NDCG@10']:.4f} | {r['recommend_p50_ms']:.2f} | "
                    f"{r['recommend_p99_ms']:.2f} |\n"
                )
    print("wrote", args.out_dir)


if __name__ == "__main__":
    main()
