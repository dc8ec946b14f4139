"""Serving with behavior features, beside the same model without them.

Both models are seed-0 runs of the features suite on one dataset
(`python -m benchmarks.experiments --suite=features --dataset=<name> --seeds=1`):
"MMF, 16 factors (flagfile)" and "MMF + behavior features, 16 factors" (or the
arm given by --features_arm). Each is exported (`--mode=export`), and its
SavedModel is timed in a separate process that imports only TensorFlow (the
timer of serving_latency.py: `serving_default` for 1 user x 100 items and
`recommend` for 1 user, p50 / p99 after warm-up). With features the export
holds the training pairs' behavior bits, and `recommend` re-ranks the user's
touched items besides the retrieval candidates, so both its cost and its size
grow; the ratios are measured in the same run.

With --evaluate, each SavedModel is also evaluated alone on the test split
(`--mode=evaluate_export`: `recommend`'s top 10 against the held-out buy,
training buys excluded), beside the in-process full-catalog ranking of the
same run (results.json): what a server returns, not only what the model
scores.

    python benchmarks/serving_features.py --dataset=beibei_ehcf --evaluate

Writes benchmarks/results/<dataset>/serving_features.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os

import experiments  # the lab beside this script (benchmarks/experiments)
import serving_latency

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PLAIN = "MMF, 16 factors (flagfile)"
FEATURES = "MMF + behavior features, 16 factors"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="beibei_ehcf")
    parser.add_argument("--features_arm", default=FEATURES)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data"))
    parser.add_argument("--runs_dir", default=os.path.join(ROOT, "runs", "experiments"))
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "serving_features"))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    runner = experiments.Runner(
        dataset=args.dataset,
        data_dir=args.data_dir,
        runs_dir=args.runs_dir,
        extra_flags=[],
        report_only=True,
    )
    arms = {a.label: a for a in experiments.SUITES["features"](experiments.BEHAVIORS[args.dataset])}
    rows, load = {}, 0.0
    for label in (PLAIN, args.features_arm):
        overrides = arms[label].overrides
        try:
            results = runner.run(overrides, 0)
        except experiments.MissingRun as missing:
            raise SystemExit(
                f"no finished run {missing}: run `python -m benchmarks.experiments --suite=features "
                f"--dataset={args.dataset} --seeds=1` first."
            ) from None
        model_dir = os.path.join(runner.runs_dir, os.path.basename(results["run_dir"]))
        export_dir = os.path.join(args.work_dir, args.dataset, experiments.slug(label))
        flags = [
            f"--flagfile={runner.flagfile}",
            *runner.data_args,
            f"--model_dir={model_dir}",
            f"--dataset_name={args.dataset}",
            "--verbose=0",
            *experiments.flag_args(overrides),
            f"--export_dir={export_dir}",
        ]
        exported = serving_latency._run([*flags, "--mode=export"])
        row = serving_latency._time_export(exported["export"]["path"], model_dir, args.calls)
        load = max(load, os.getloadavg()[0])
        row["test_full_HR@10"] = results["test"]["full"]["HR@10"]
        row["test_full_HR@10_se"] = results["test"]["full"]["HR@10_se"]
        if args.evaluate:
            evaluated = serving_latency._run([*flags, "--mode=evaluate_export"])
            row["recommend"] = evaluated["test"]["recommend"]
        rows[label] = row
        print(label, json.dumps(row), flush=True)

    plain, features = rows[PLAIN], rows[args.features_arm]
    folder = os.path.join(args.out_dir, args.dataset)
    os.makedirs(folder, exist_ok=True)
    command = f"python benchmarks/serving_features.py --dataset={args.dataset}" + (
        " --evaluate" if args.evaluate else ""
    )
    with open(os.path.join(folder, "serving_features.json"), "w") as f:
        json.dump({"command": command, "rows": rows}, f, indent=1)
    lines = [
        f"# Serving with behavior features on {args.dataset}",
        "",
        f"Command: `{command}` (seed-0 runs of the features suite; each loaded SavedModel "
        f"timed in a separate process on 2 CPU cores; the higher 1-minute load average after "
        f"the two timings: {load:.1f}; above 2, other work shared the cores and the latencies are "
        "noisy).",
        "",
        "| model | serving_default 1x100 p50 / p99 ms | recommend 1 user p50 / p99 ms | "
        "export MB | test full HR@10, full catalog in process | test HR@10 through "
        "`recommend` |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        s, c = r["serving_default_1x100"], r["recommend_1_user"]
        served = (
            f"{r['recommend']['HR@10']:.4f} ({r['recommend']['cases']} cases)"
            if "recommend" in r
            else "not measured (--evaluate)"
        )
        lines.append(
            f"| {label} | {s['p50_ms']:.2f} / {s['p99_ms']:.2f} | {c['p50_ms']:.2f} / "
            f"{c['p99_ms']:.2f} | {r['export_bytes'] / 2**20:.1f} | "
            f"{r['test_full_HR@10']:.4f} ± {r['test_full_HR@10_se']:.4f} | {served} |"
        )

    def ratio(key, name):
        return features[key][name] / plain[key][name]

    lines += [
        "",
        f"With features over without: serving_default p50 "
        f"{ratio('serving_default_1x100', 'p50_ms'):.2f}x, recommend p50 "
        f"{ratio('recommend_1_user', 'p50_ms'):.2f}x, p99 "
        f"{ratio('recommend_1_user', 'p99_ms'):.2f}x, export size "
        f"{features['export_bytes'] / plain['export_bytes']:.2f}x.",
    ]
    with open(os.path.join(folder, "serving_features.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote", folder)


if __name__ == "__main__":
    main()
