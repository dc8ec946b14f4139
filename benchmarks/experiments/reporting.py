"""Reports of a suite: markdown tables, JSON and PNG plots."""

from __future__ import annotations

import json
import math
import os

from . import running
from . import suites


def format_metric(summary: dict, metric: str) -> str:
    se = summary[f"{metric}_se"]
    return f"{summary[metric]:.4f} ± {se:.4f}" if not math.isnan(se) else f"{summary[metric]:.4f}"


NO_PLOT = "(No plot: matplotlib is not installed; `pip install -e .[bench]`.)"


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(report: dict, out_dir: str, command: str) -> list[str]:
    """Markdown, JSON and (with matplotlib) PNG files; returns the paths written."""
    folder = os.path.join(out_dir, report["dataset"])
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, report["suite"])
    with open(base + ".json", "w") as f:
        json.dump({**report, "command": command}, f, indent=1)
    lines = [
        f"# {report['suite']} on {report['dataset']}",
        "",
        f"Command: `{command}`",
        "",
        (
            f"Test metrics, mean over {report['seeds']} seeds ± standard error across seeds; "
            if report["seeds"] > 1
            else "Test metrics of one seed ± standard error over the test cases (this leaves "
            "out the spread between seeds, often the larger one: compare close settings "
            "with care); "
        )
        + "cases per run. Sampled: 1 held-out + 99 sampled negatives; full: whole catalog, "
        "training target items excluded (PROTOCOL.md). Each protocol's column uses the "
        "setting chosen on validation for that protocol.",
        "",
        "| method | sampled HR@10 | sampled NDCG@10 | full HR@10 | full NDCG@10 | cases "
        "(sampled / full) | paper HR@10 / NDCG@10 | chosen (sampled / full) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in report["arms"]:
        s, f = arm["sampled"], arm["full"]
        paper = f"{arm['paper'][0]:.4f} / {arm['paper'][1]:.4f}" if arm.get("paper") else ""
        chosen = " / ".join(" ".join(running.flag_args(x["chosen"])) or "-" for x in (s, f))
        lines.append(
            f"| {arm['label']} | {format_metric(s, 'HR@10')} | {format_metric(s, 'NDCG@10')} | "
            f"{format_metric(f, 'HR@10')} | {format_metric(f, 'NDCG@10')} | {s['cases']} / {f['cases']} | "
            f"{paper} | {chosen} |"
        )
    if report.get("incomplete_from"):
        lines += [
            "",
            f"Incomplete: the arms from '{report['incomplete_from']}' on have not finished; "
            "the command above resumes them.",
        ]
    if report["suite"] == "ablations":
        lines += [
            "",
            "The 'only' arms drop the other supportive behaviors from the data "
            "(`--ignore_behaviors`), so their catalog and sampled candidates can differ "
            "slightly from the other arms'.",
        ]
    by_label = {a["label"]: a for a in report["arms"]}
    ours, bar = by_label.get("MMF, tuned (flagfile)"), by_label.get("ALS multi-behavior")
    if ours and bar:
        lines += ["", "The multi-feedback model (tuned) against the multi-behavior ALS:", ""]
        for protocol in ("sampled", "full"):
            a, b = ours[protocol]["HR@10"], bar[protocol]["HR@10"]
            lines.append(
                f"- {protocol}: HR@10 {a:.4f} vs {b:.4f}, {a - b:+.4f} ({a / b:.2f}x)"
                if b
                else f"- {protocol}: HR@10 {a:.4f} vs {b:.4f}"
            )
    if ours and report["dataset"] in suites.ALS_BAR:
        bar_sampled, bar_full = suites.ALS_BAR[report["dataset"]]
        lines += [
            "",
            "The multi-behavior ALS bar recorded with the data (the implicit library, tuned "
            "per protocol over a wider grid than this runner's equal-budget one): "
            f"sampled HR@10 {bar_sampled:.3f}, full HR@10 {bar_full:.3f}; the tuned "
            f"multi-feedback model is at {ours['sampled']['HR@10'] / bar_sampled:.2f}x and "
            f"{ours['full']['HR@10'] / bar_full:.2f}x of it.",
        ]
    if report["dataset"] in suites.PUBLISHED:
        name, hr, ndcg, protocol = suites.PUBLISHED[report["dataset"]]
        lines += ["", f"Published: {name} HR@10 {hr:.4f}, NDCG@10 {ndcg:.4f} ({protocol})."]
    tuned = [a for a in report["arms"] if a.get("tuning")]
    if tuned:
        lines += [
            "",
            "Tuning (seed 0, validation cases only): validation HR@10 per grid point.",
            "",
            "| method | point | validation sampled HR@10 | validation full HR@10 |",
            "|---|---|---|---|",
        ]
        for arm in tuned:
            for t in arm["tuning"]:
                lines.append(
                    f"| {arm['label']} | {' '.join(running.flag_args(t['point']))} | "
                    f"{t['validation_sampled_hr10']:.4f} | {t['validation_full_hr10']:.4f} |"
                )
    written = [base + ".md", base + ".json"]
    plt = pyplot()
    if plt is None:
        lines += ["", NO_PLOT]
    else:
        png = base + ".png"
        if report["suite"] == "figure3":
            fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
            for arm in report["arms"]:
                history = (arm.get("history") or [None])[0] or []
                history = [h for h in history if "val_HR@10" in h]
                for ax, metric in zip(axes, ("HR@10", "NDCG@10")):
                    ax.plot(
                        [h["epoch"] for h in history],
                        [h[f"val_{metric}"] for h in history],
                        marker="o",
                        label=arm["label"],
                    )
                    ax.set_xlabel("epoch")
                    ax.set_ylabel(f"validation {metric} (sampled)")
            axes[0].legend(fontsize=8)
        else:
            width = max(7, 1.2 * len(report["arms"]))
            fig, axes = plt.subplots(1, 2, figsize=(width, 4))
            labels = [a["label"] for a in report["arms"]]
            for ax, protocol in zip(axes, ("sampled", "full")):
                values = [a[protocol]["HR@10"] for a in report["arms"]]
                errors = [
                    0 if math.isnan(a[protocol]["HR@10_se"]) else a[protocol]["HR@10_se"]
                    for a in report["arms"]
                ]
                ax.bar(
                    range(len(labels)),
                    values,
                    0.7,
                    yerr=errors,
                    color="C0" if protocol == "sampled" else "C1",
                )
                ax.set_xticks(range(len(labels)))
                ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
                ax.set_title(f"{protocol} protocol", fontsize=9)
                ax.set_ylabel("test HR@10")
        seeds = report["seeds"]
        ax_title = (
            f"{report['suite']} on {report['dataset']} ({seeds} seed{'s' if seeds != 1 else ''})"
        )
        fig.suptitle(ax_title, fontsize=10)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
        lines += ["", f"![{ax_title}]({os.path.basename(png)})"]
        written.append(png)
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return written
