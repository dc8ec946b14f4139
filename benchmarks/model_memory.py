"""Memory of building the shipped model and starting it from ALS factors, at Taobao scale.

Each variant runs in a fresh process, one after the other in the same run,
and reports its resident memory (now and peak) after each step: random
factors of the catalog's shape (the ALS fit's output), the model built,
the factors assigned, the factors freed.

- `als`: `--mf_init` as the flagfile ships it (the MF tables built as
  zeros, the factors assigned by row blocks);
- `random`: the same model with `--mf_init=random` (the MF tables drawn
  from N(0, 0.01)), then the same factors assigned: what an ALS start cost
  before its tables were built as zeros.

    python benchmarks/model_memory.py --users=1000000 --items=3676546

Writes benchmarks/results/model_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

VARIANTS = ("als", "random")


def measure(flagfile: str, users: int, items: int, variant: str) -> list[dict]:
    """The steps' memory of one variant, in this process."""
    import numpy as np
    from absl import flags
    from serving_latency import process_gib

    from mmrec_tf import cli
    from mmrec_tf import ranking
    from mmrec_tf.pipelines import schema

    steps = []

    def step(name):
        steps.append(
            {
                "step": name,
                "rss_gib": round(process_gib("VmRSS"), 2),
                "peak_gib": round(process_gib("VmHWM"), 2),
            }
        )

    fv = flags.FlagValues()
    cli.define_flags(fv)
    extra = ["--mf_init=random", "--behavior_init=zero"] if variant == "random" else []
    fv(["model_memory", f"--flagfile={flagfile}", "--graph_signals", "--model_dir=_", *extra])
    config = cli.config_from_flags(fv)
    behaviors = schema.BehaviorSchema("buy", ("cart", "fav", "pv"))
    step("start")
    dim = config.model.mf_dim
    x = np.random.default_rng(0).standard_normal((users, dim), dtype=np.float32)
    y = np.random.default_rng(1).standard_normal((items, dim), dtype=np.float32)
    step("factors")
    ranker = ranking.build_ranker(config, num_users=users, num_items=items, behaviors=behaviors)
    step("built")
    ranker.scorer.start_from_factors(x, y, trainable=False)
    step("factors assigned")
    del x, y
    step("factors freed")
    return steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=3_676_546)
    parser.add_argument(
        "--flagfile",
        default=os.path.join(ROOT, "mmrec_tf", "configs", "taobao_cml_mmf.flags"),
    )
    parser.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    parser.add_argument("--variant", choices=VARIANTS, help="(one variant, in this process)")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.flagfile, args.users, args.items, args.variant)))
        return
    results = {"users": args.users, "items": args.items, "variants": {}}
    for variant in VARIANTS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                f"--variant={variant}",
                f"--users={args.users}",
                f"--items={args.items}",
                f"--flagfile={args.flagfile}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results["variants"][variant] = json.loads(out.strip().splitlines()[-1])
        print(variant, results["variants"][variant], flush=True)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "model_memory.json"), "w") as f:
        json.dump(results, f, indent=2)
    als, random = (results["variants"][v] for v in VARIANTS)
    with open(os.path.join(args.out_dir, "model_memory.md"), "w") as f:
        f.write(
            "# Building the shipped model and starting it from ALS factors\n\n"
            f"Command: `python benchmarks/model_memory.py --users={args.users} "
            f"--items={args.items}` ({os.path.basename(args.flagfile)} with graph signals; "
            "each variant a fresh process, one after the other). Resident memory in GiB, "
            "now / the process's peak so far.\n\n"
            "| step | ALS start (tables built as zeros) | random tables, then the factors |\n"
            "|---|---|---|\n"
        )
        for a, r in zip(als, random):
            f.write(
                f"| {a['step']} | {a['rss_gib']} / {a['peak_gib']} | "
                f"{r['rss_gib']} / {r['peak_gib']} |\n"
            )
        ratio = als[-1]["peak_gib"] / random[-1]["peak_gib"]
        f.write(f"\nPeak, ALS start / random tables: {ratio:.2f}x.\n")
    print("wrote", args.out_dir)


if __name__ == "__main__":
    main()
