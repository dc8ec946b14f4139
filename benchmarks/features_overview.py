"""Behavior features across the datasets: what the user's own supportive pairs are worth.

Reads the runner's `benchmarks/results/<dataset>/features.json` reports (run
`python -m benchmarks.experiments --suite=features --dataset=<name> --seeds=1`
first) and writes `benchmarks/results/features_overview.md`: for each
protocol, test HR@10 of each arm (rows) on each dataset (columns), with the
share of test buys whose pair the user had touched through supportive
feedback in training (from the runs' split report, under the runner's
--runs_dir) and the published figure where there is one.

    python benchmarks/features_overview.py
"""

from __future__ import annotations

import argparse
import json
import os

import experiments  # the lab beside this script (benchmarks/experiments)

DATASETS = ("taobao_cml", "beibei_ehcf", "taobao_ehcf", "tmall_mbcgcn", "jd_vcgae")


def _overlap(run_dir: str) -> str:
    """The test pairs' overlap with each supportive behavior, from a run's results."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        overlap = json.load(f)["split"].get("test_overlap_with_supportive", {})
    return ", ".join(f"{b} {v:.0%}" for b, v in overlap.items())


FAMILIES = ("MMF", "ALS", "popular")


def _validation(runs_dir: str, arm: dict, protocol: str) -> float:
    with open(os.path.join(runs_dir, arm[f"{protocol}_run_dirs"][0], "results.json")) as f:
        return json.load(f)["validation"][protocol]["HR@10"]


def _chosen(datasets: list, arms: dict, runs_dir: str) -> list[str]:
    """Per family of arms (label prefix), the arm validation picks and its test HR@10."""
    lines = [
        "",
        "## Chosen on validation",
        "",
        "Within each family (the arms whose label starts with it), the arm with the highest "
        "validation HR@10 of the protocol; test HR@10 of that arm (and its label). The MMF "
        "family has more arms to choose from than the others.",
    ]
    for protocol in ("full", "sampled"):
        lines += [
            "",
            f"| {protocol} | " + " | ".join(datasets) + " |",
            "|---|" + "---|" * len(datasets),
        ]
        for family in FAMILIES:
            cells = []
            for d in datasets:
                members = [a for label, a in arms[d].items() if label.startswith(family)]
                if not members:
                    cells.append("")
                    continue
                best = max(members, key=lambda a: _validation(runs_dir, a, protocol))
                cells.append(
                    f"{experiments.format_metric(best[protocol], 'HR@10')} ({best['label']})"
                )
            lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines


def write(results_dir: str, runs_dir: str) -> str:
    reports = {}
    for dataset in DATASETS:
        path = os.path.join(results_dir, dataset, "features.json")
        if os.path.exists(path):
            with open(path) as f:
                reports[dataset] = json.load(f)
    labels = []
    for report in reports.values():
        labels += [a["label"] for a in report["arms"] if a["label"] not in labels]
    lines = [
        "# Behavior features across the datasets",
        "",
        "Command: `python benchmarks/features_overview.py` (from the reports of "
        "`python -m benchmarks.experiments --suite=features --dataset=<name> --seeds=1`).",
        "",
        "Test HR@10 of seed 0 ± standard error over the test cases (PROTOCOL.md). The "
        "multi-behavior ALS arms are tuned on validation for each protocol over Table 4's "
        "grid (the first is Table 4's seed-0 run); the other arms have no grid. 'touched' is "
        "the share of test buys whose item the user had viewed, carted or favorited in the "
        "training data.",
    ]
    datasets = list(reports)
    arms = {d: {a["label"]: a for a in r["arms"]} for d, r in reports.items()}
    touched = [
        _overlap(os.path.join(runs_dir, next(iter(arms[d].values()))["sampled_run_dirs"][0]))
        for d in datasets
    ]
    for protocol, title in (("full", "Full ranking"), ("sampled", "Sampled (1 + 99)")):
        lines += [
            "",
            f"## {title}",
            "",
            "| arm | " + " | ".join(datasets) + " |",
            "|---|" + "---|" * len(datasets),
            "| touched | " + " | ".join(touched) + " |",
        ]
        for label in labels:
            cells = [
                experiments.format_metric(arms[d][label][protocol], "HR@10")
                if label in arms[d]
                else ""
                for d in datasets
            ]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if protocol == "full":
            published = [
                "{} {:.4f}".format(*experiments.PUBLISHED[d][:2])
                if d in experiments.PUBLISHED
                else ""
                for d in datasets
            ]
            lines.append("| published | " + " | ".join(published) + " |")
    lines += _chosen(datasets, arms, runs_dir)
    missing = [d for d in DATASETS if d not in reports]
    if missing:
        lines += ["", "Not run yet: " + ", ".join(missing) + "."]
    unfinished = [d for d, r in reports.items() if r.get("incomplete_from")]
    if unfinished:
        lines += ["", "Unfinished (the arms shown only): " + ", ".join(unfinished) + "."]
    path = os.path.join(results_dir, "features_overview.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--results_dir", default=os.path.join(here, "results"))
    parser.add_argument(
        "--runs_dir",
        default=os.path.join(here, "..", "runs", "experiments"),
        help="The runner's --runs_dir (for the split reports of its runs).",
    )
    args = parser.parse_args()
    print(open(write(args.results_dir, args.runs_dir)).read())


if __name__ == "__main__":
    main()
