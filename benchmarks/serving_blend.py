"""What the CascadingRank blend costs at serving time, against the same model alone.

For a run trained with `--cascade_blend` (a `--model_dir` of
`python -m mmrec_tf.main --flagfile=mmrec_tf/configs/<dataset>_mmf.flags`),
exports it twice and times both exports in a clean process
(`serving_latency.time_export`), one after the other in the same run:

- blended: as trained, each request propagating the cascade;
- alone: a copy of the run whose `blend.json` holds weight 0, the export a
  run makes when validation keeps the model alone (no cascade in it).

    python benchmarks/serving_blend.py \
      --flagfile=mmrec_tf/configs/tmall_mbcgcn_mmf.flags --model_dir=runs/tmall_mbcgcn_mmf

Writes benchmarks/results/serving_blend.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import serving_latency

from mmrec_tf import blend

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def render(report: dict) -> str:
    """The markdown page of a report (`serving_blend.json`)."""
    rows = report["rows"]
    ratio = (
        rows["blended"]["recommend_1_user"]["p50_ms"] / rows["alone"]["recommend_1_user"]["p50_ms"]
    )
    return (
        "# Serving with the CascadingRank blend, against the same model alone\n\n"
        f"Command: `{report['command']}` (blend weight {report['weight']}). Both exports timed "
        'in a clean process, one after the other; "alone" is the export of a copy of the run '
        "whose blend weight is 0.\n\n"
        + serving_latency.TABLE_HEAD
        + "".join(serving_latency.table_row(name, r) for name, r in rows.items())
        + f"\nrecommend p50, blended / alone: {ratio:.1f}x.\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flagfile", required=True, help="the run's flagfile")
    parser.add_argument("--model_dir", required=True, help="a run trained with --cascade_blend")
    parser.add_argument("--extra_flags", default="", help="space-separated flags of the run")
    parser.add_argument("--work_dir", default=os.path.join(ROOT, "runs", "serving_blend"))
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    record = blend.load(args.model_dir)
    if not record["weight"]:
        raise SystemExit(
            f"{os.path.join(args.model_dir, blend.RECORD)}: validation kept the model alone "
            "(weight 0), so the export has no blend to time; pass a run whose weight is above 0."
        )
    alone_dir = os.path.join(args.work_dir, "alone_run")
    if os.path.exists(alone_dir):
        raise SystemExit(f"{alone_dir} exists: remove it or pass another --work_dir.")
    shutil.copytree(args.model_dir, alone_dir, ignore=shutil.ignore_patterns("export*"))
    blend.save(alone_dir, {**record, "weight": 0.0})

    common = [
        f"--flagfile={args.flagfile}",
        "--verbose=0",
        "--mode=export",
        *args.extra_flags.split(),
    ]
    rows = {}
    for name, model_dir in (("blended", args.model_dir), ("alone", alone_dir)):
        export_dir = os.path.join(args.work_dir, f"{name}_export")
        result = serving_latency._run(
            common + [f"--model_dir={model_dir}", f"--export_dir={export_dir}"]
        )
        rows[name] = serving_latency._time_export(result["export"]["path"], model_dir, args.calls)
        rows[name]["num_items"] = result["num_items"]
        print(name, rows[name], flush=True)

    command = (
        f"python benchmarks/serving_blend.py --flagfile={os.path.relpath(args.flagfile, ROOT)} "
        f"--model_dir=<its run>"
    )
    report = {"command": command, "weight": record["weight"], "rows": rows}
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "serving_blend.json"), "w") as f:
        json.dump(report, f, indent=2)
    with open(os.path.join(args.out_dir, "serving_blend.md"), "w") as f:
        f.write(render(report))
    print("wrote", args.out_dir)


if __name__ == "__main__":
    main()
