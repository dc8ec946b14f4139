"""Table 4 across the datasets: the tuned multi-feedback model against the bars.

Reads the runner's `benchmarks/results/<dataset>/table4.json` reports (run
`python -m benchmarks.experiments --suite=table4 --dataset=<name> --seeds=3`
first) and writes `benchmarks/results/table4_overview.{md,json,png}`: per
dataset and protocol, the tuned multi-feedback model, the multi-behavior ALS
and the best of the other baselines (each tuned on validation for that
protocol, mean over seeds), the multi-behavior ALS bar recorded with the data
and, where there is one, the published full-ranking figure. Datasets whose
Table 4 has not finished are listed with the arms they have.

    python benchmarks/table4_overview.py
"""

from __future__ import annotations

import argparse
import json
import os

import experiments  # the lab beside this script (benchmarks/experiments)

OURS = "MMF, tuned (flagfile)"
ALS = "ALS multi-behavior"
DATASETS = ("taobao_cml", "beibei_ehcf", "taobao_ehcf", "tmall_mbcgcn", "jd_vcgae")


def overview(results_dir: str) -> dict:
    """Per dataset: the figures the overview shows, from each table4.json."""
    rows = {}
    for dataset in DATASETS:
        path = os.path.join(results_dir, dataset, "table4.json")
        if not os.path.exists(path):
            rows[dataset] = {"missing": True}
            continue
        with open(path) as f:
            report = json.load(f)
        arms = {a["label"]: a for a in report["arms"]}
        row = {"seeds": report["seeds"], "incomplete_from": report.get("incomplete_from")}
        for protocol in ("sampled", "full"):
            entry = {"cases": next(iter(arms.values()))[protocol]["cases"] if arms else None}
            for key, label in (("ours", OURS), ("als", ALS)):
                if label in arms:
                    entry[key] = arms[label][protocol]
            others = [a for label, a in arms.items() if label not in (OURS, ALS)]
            if others:
                best = max(others, key=lambda a: a[protocol]["HR@10"])
                entry["best_other"] = {"label": best["label"], **best[protocol]}
            row[protocol] = entry
        if dataset in experiments.ALS_BAR:
            row["als_bar"] = dict(zip(("sampled", "full"), experiments.ALS_BAR[dataset]))
        if dataset in experiments.PUBLISHED:
            name, hr, ndcg, protocol = experiments.PUBLISHED[dataset]
            row["published"] = {"name": name, "HR@10": hr, "NDCG@10": ndcg, "protocol": protocol}
        rows[dataset] = row
    return rows


def _cell(summary: dict | None) -> str:
    return experiments.format_metric(summary, "HR@10") if summary else "not finished"


def write(rows: dict, results_dir: str) -> list[str]:
    base = os.path.join(results_dir, "table4_overview")
    with open(base + ".json", "w") as f:
        json.dump(rows, f, indent=1)
    lines = [
        "# Table 4 across the datasets",
        "",
        "Command: `python benchmarks/table4_overview.py` (from the reports of "
        "`python -m benchmarks.experiments --suite=table4 --dataset=<name> --seeds=3`).",
        "",
        "Test HR@10, mean over seeds ± standard error across seeds, each method tuned "
        "on validation for the protocol of its column (PROTOCOL.md). 'ALS bar' is the "
        "multi-behavior ALS recorded with the data (the implicit library, a wider "
        "tuning grid than the runner's equal budget); 'ratio' is ours over our "
        "multi-behavior ALS.",
        "",
        "| dataset | protocol | cases | MMF, tuned | ALS multi-behavior | ratio "
        "| best other baseline | ALS bar | published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, row in rows.items():
        if row.get("missing"):
            lines.append(f"| {dataset} | | | not run yet | | | | | |")
            continue
        for protocol in ("sampled", "full"):
            entry = row[protocol]
            ours, als = entry.get("ours"), entry.get("als")
            ratio = f"{ours['HR@10'] / als['HR@10']:.2f}x" if ours and als else ""
            other = entry.get("best_other")
            other_cell = f"{other['label']} {_cell(other)}" if other else ""
            bar = f"{row['als_bar'][protocol]:.3f}" if "als_bar" in row else ""
            published = ""
            if protocol == "full" and "published" in row:
                p = row["published"]
                published = f"{p['name']} {p['HR@10']:.4f}"
            lines.append(
                f"| {dataset} | {protocol} | {entry['cases']} | {_cell(ours)} | {_cell(als)} | "
                f"{ratio} | {other_cell} | {bar} | {published} |"
            )
    lines.append("")
    unfinished = {d: r["incomplete_from"] for d, r in rows.items() if r.get("incomplete_from")}
    lines += [
        f"- {d}: unfinished from the arm '{arm}' (its command resumes it)."
        for d, arm in unfinished.items()
    ]
    for dataset, row in rows.items():
        if "published" in row:
            p = row["published"]
            lines.append(
                f"- {dataset}: published {p['name']} HR@10 {p['HR@10']:.4f}, "
                f"NDCG@10 {p['NDCG@10']:.4f} ({p['protocol']})."
            )
    written = [base + ".md", base + ".json"]
    plt = experiments.pyplot()
    if plt is None:
        lines += ["", experiments.NO_PLOT]
    else:
        done = [d for d, r in rows.items() if not r.get("missing")]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        series = (
            ("best other baseline", "best_other"),
            ("ALS multi-behavior", "als"),
            ("MMF, tuned", "ours"),
        )
        for ax, protocol in zip(axes, ("sampled", "full")):
            for k, (label, key) in enumerate(series):
                values = [rows[d][protocol].get(key, {}).get("HR@10", 0.0) for d in done]
                ax.bar([i + (k - 1) * 0.27 for i in range(len(done))], values, 0.27, label=label)
            bars = [rows[d].get("als_bar", {}).get(protocol) for d in done]
            ax.scatter(
                [i for i, b in enumerate(bars) if b is not None],
                [b for b in bars if b is not None],
                marker="_",
                s=300,
                color="black",
                label="ALS bar (data README)",
            )
            ax.set_xticks(range(len(done)))
            ax.set_xticklabels(done, rotation=20, ha="right", fontsize=8)
            ax.set_title(f"{protocol} protocol", fontsize=9)
            ax.set_ylabel("test HR@10")
        axes[0].legend(fontsize=7)
        fig.suptitle("Table 4 across the datasets (mean of 3 seeds)", fontsize=10)
        fig.tight_layout()
        fig.savefig(base + ".png", dpi=110)
        plt.close(fig)
        lines += ["", "![Table 4 across the datasets](table4_overview.png)"]
        written.append(base + ".png")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results_dir", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args()
    for path in write(overview(args.results_dir), args.results_dir):
        print("wrote", path)


if __name__ == "__main__":
    main()
