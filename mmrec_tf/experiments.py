"""Experiment runner: the paper's tables, figure and ablations as named suites.

    python -m mmrec_tf.experiments --suite=table4 --dataset=taobao_cml \\
        --data_dir=../shared/data --seeds=3

A suite is a list of arms (a method or a setting, as overrides of the
dataset's flagfile) run for several seeds. Each run is `python -m
mmrec_tf.main` in its own process and folder under `--runs_dir`; a run whose
results.json exists is not run again, so an interrupted suite resumes where it
stopped. Arms with a tuning grid (table4) first run every grid point with
seed 0 and pick, on the validation cases only, the best point for each
protocol (validation sampled HR@10 for the sampled table, validation full
HR@10 for the full-ranking one); the other seeds then run the chosen points.
Every method gets a grid of the same size. Test metrics are reported as the
mean over seeds with the standard error across seeds and the cases per run,
in `<out_dir>/<dataset>/<suite>.md` and `.json`, with PNG plots when
matplotlib is installed (the `bench` extra).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from mmrec_tf import cli

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(HERE, "configs")

# The paper's Table 4 (Taobao, sampled protocol): HR@10, NDCG@10.
PAPER = {
    "BPR": (0.2296, 0.1505),
    "WMF": (0.2315, 0.1485),
    "MFPR": (0.2426, 0.1568),
    "NCF": (0.2500, 0.1670),
    "MMF, paper training": (0.2795, 0.1673),
}

# Published full-ranking figures on the shared datasets (their PROVENANCE.md):
# HR@10, NDCG@10, and how their protocol differs from ours.
PUBLISHED = {
    "beibei_ehcf": ("EHCF", 0.1551, 0.0831, "full ranking"),
    "jd_vcgae": (
        "VCGAE",
        0.1947,
        0.1095,
        "full ranking with all training items excluded (ours excludes training buys only)",
    ),
}

# The multi-behavior ALS bar recorded with the shared datasets
# (../shared/data/README.md: the implicit library, validation-tuned per
# protocol over a wider grid than the runner's): test HR@10 of the setting
# tuned for the sampled protocol, and of the one tuned for full ranking.
ALS_BAR = {
    "taobao_cml": (0.440, 0.040),
    "beibei_ehcf": (0.798, 0.272),
    "taobao_ehcf": (0.492, 0.162),
    "tmall_mbcgcn": (0.905, 0.123),
    "jd_vcgae": (0.594, 0.149),
}

# The neural baselines see the target behavior's pairs only: no supportive
# positives, uniform negatives, no histories.
_TARGET_ONLY = {
    "supportive_negative_ratio": 0,
    "supportive_positive_weight": 0,
    "history_length": 0,
}
_NEURAL_GRID = [{"mf_dim": d, "mlp_dim": d} for d in (8, 16, 32)]
_ALS_GRID = [
    {"mf_dim": 32, "als_l2": 1.0, "als_alpha": 10.0},
    {"mf_dim": 64, "als_l2": 1.0, "als_alpha": 10.0},
    {"mf_dim": 64, "als_l2": 10.0, "als_alpha": 40.0},
]
# The paper's best setting: 4 factors, 3 negatives, 2 layers, its sampler.
_PAPER_MMF = {
    "model": "mmf",
    "mf_dim": 4,
    "mlp_dim": 4,
    "mlp_layers": 2,
    "num_negatives": 3,
    "supportive_negative_ratio": 1,
    "supportive_positive_weight": 0,
    "history_length": 0,
}


@dataclasses.dataclass(frozen=True)
class Arm:
    """One row of a suite: fixed overrides, and an optional tuning grid."""

    label: str
    overrides: dict
    grid: tuple = ()


def _suite_table4(behaviors: tuple[str, ...]) -> list[Arm]:
    del behaviors
    mmf_grid = [
        {"mf_dim": d, "mlp_dim": d, "supportive_positive_weight": w}
        for d, w in ((16, 0.5), (32, 0.5), (16, 1.0))
    ]
    return [
        Arm("WMF", {"model": "als", "als_supportive_weight": 0}, tuple(_ALS_GRID)),
        Arm(
            "ALS multi-behavior",
            {"model": "als"},
            tuple({**g, "als_supportive_weight": w} for g, w in zip(_ALS_GRID, (0.5, 0.5, 0.25))),
        ),
        Arm("BPR", {"model": "gmf", "loss": "bpr", **_TARGET_ONLY}, tuple(_NEURAL_GRID)),
        Arm(
            "MFPR",
            {
                "model": "gmf",
                "supportive_negative_ratio": 0.5,
                "supportive_positive_weight": 0.5,
                "history_length": 0,
            },
            tuple(_NEURAL_GRID),
        ),
        Arm("NCF", {"model": "ncf", **_TARGET_ONLY}, tuple(_NEURAL_GRID)),
        Arm("MMF, paper training", dict(_PAPER_MMF), tuple(_NEURAL_GRID)),
        Arm("MMF, tuned (flagfile)", {"model": "mmf"}, tuple(mmf_grid)),
    ]


def _suite_table2(behaviors):
    del behaviors
    return [
        Arm(f"factors {d}", {**_PAPER_MMF, "mf_dim": d, "mlp_dim": d}) for d in (2, 4, 8, 16, 32)
    ]


def _suite_table3(behaviors):
    del behaviors
    return [
        Arm(f"ng-{n}, factors {d}", {**_PAPER_MMF, "mf_dim": d, "mlp_dim": d, "num_negatives": n})
        for d in (4, 8, 16)
        for n in (1, 2, 3, 4)
    ]


def _suite_figure3(behaviors):
    del behaviors
    # Early stopping off: every run trains its whole epoch budget.
    return [
        Arm(f"{k} hidden layers", {**_PAPER_MMF, "mlp_layers": k, "early_stopping_patience": 0})
        for k in (0, 1, 2, 3)
    ]


def _suite_ablations(behaviors):
    support = behaviors[1:]
    arms = [
        Arm(f"gating {g}", {"model": "mmf", "gating": g})
        for g in ("none", "gradient", "gradient_aux")
    ]
    arms += [
        Arm(f"supportive negative ratio {r}", {"model": "mmf", "supportive_negative_ratio": r})
        for r in (0, 0.5, 1)
    ]
    for keep in support:
        drop = [b for b in support if b != keep]
        arms.append(
            Arm(
                f"supportive: {keep} only",
                {"model": "mmf", "supportive_behaviors": keep, "ignore_behaviors": ",".join(drop)},
            )
        )
    arms.append(Arm("supportive: " + ", ".join(support), {"model": "mmf"}))
    arms.append(
        Arm(
            "one shared embedding pair (not per feedback)",
            {"model": "mmf", "shared_embeddings": True},
        )
    )
    # One branch instead of one per behavior, fed the same supportive
    # positives and target histories; then without the supportive positives.
    arms.append(Arm("one branch (NCF), same supportive positives", {"model": "ncf"}))
    arms.append(
        Arm(
            "no supportive (NCF + target histories)",
            {"model": "ncf", "supportive_positive_weight": 0},
        )
    )
    return arms


def _suite_features(behaviors):
    """Behavior features: the user's own supportive pairs as a scoring signal."""
    table4 = {a.label: a for a in _suite_table4(behaviors)}
    mmf = {"model": "mmf", "mf_dim": 16, "mlp_dim": 16, "supportive_positive_weight": 0.5}
    return [
        Arm("popular (training buys)", {"model": "popular"}),
        Arm("popular, touched items first", {"model": "popular", "behavior_features": True}),
        table4["ALS multi-behavior"],
        # The same flags on top of the ALS ranking, tuned over the same grid.
        Arm(
            "ALS multi-behavior, touched items first",
            {**table4["ALS multi-behavior"].overrides, "behavior_features": True},
            table4["ALS multi-behavior"].grid,
        ),
        Arm("MMF, 16 factors (flagfile)", mmf),
        Arm("MMF + behavior features, 16 factors", {**mmf, "behavior_features": True}),
        # With the flags separating touched from untouched items, negatives
        # drawn from the touched-but-not-bought items (the paper's sampler)
        # teach the order among the touched ones.
        Arm(
            "MMF + behavior features, half the negatives supportive-only",
            {**mmf, "behavior_features": True, "supportive_negative_ratio": 0.5},
        ),
        # The offsets start from the data's lift: "touched items first".
        Arm(
            "MMF + behavior features from their lift",
            {**mmf, "behavior_features": True, "behavior_init": "lift"},
        ),
        # The offsets fitted on top of the model without features, so the
        # flags cannot explain away what the embeddings would learn.
        Arm(
            "MMF + behavior features fitted apart",
            {**mmf, "behavior_features": True, "behavior_fit": "apart"},
        ),
        Arm(
            "MMF + behavior features fitted apart, half the negatives supportive-only",
            {
                **mmf,
                "behavior_features": True,
                "behavior_fit": "apart",
                "supportive_negative_ratio": 0.5,
            },
        ),
        # Early stopping and the kept epoch on the full-ranking validation
        # HR@10, which the flags move far more than the sampled one.
        Arm(
            "MMF + behavior features, early stopping on full ranking",
            {**mmf, "behavior_features": True, "early_stopping_protocol": "full"},
        ),
    ]


def _suite_smoke(behaviors):
    """Two tiny arms, one tuned: for the runner's own tests."""
    del behaviors
    return [
        Arm(
            "NCF",
            {"model": "ncf", **_TARGET_ONLY},
            ({"mf_dim": 4, "mlp_dim": 4}, {"mf_dim": 8, "mlp_dim": 8}),
        ),
        Arm(
            "ALS multi-behavior",
            {"model": "als", "als_supportive_weight": 0.5, "als_iterations": 3},
        ),
    ]


SUITES = {
    "table4": _suite_table4,
    "features": _suite_features,
    "table2": _suite_table2,
    "table3": _suite_table3,
    "figure3": _suite_figure3,
    "ablations": _suite_ablations,
    "smoke": _suite_smoke,
}
# Behaviors of the shared datasets, target first (../shared/data/README.md).
BEHAVIORS = {
    "taobao_cml": ("buy", "cart", "fav"),
    "beibei_ehcf": ("buy", "cart"),
    "taobao_ehcf": ("buy", "cart"),
    "tmall_mbcgcn": ("buy", "view", "cart"),
    "jd_vcgae": ("buy", "pv", "fav"),
    "quickstart": ("buy", "pv", "cart", "fav"),
}


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


def config_key(args: list[str]) -> str:
    """A short hash of the config that `python -m mmrec_tf.main <args>` resolves to.

    The flags are parsed as the binary parses them (flagfiles read, nested
    ones included), so two argument lists that resolve to the same config
    share a key and any difference in a value gives another. The model
    folder is not part of it.
    """
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["mmrec_tf", *args, "--model_dir=_"])
    resolved = cli.config_from_flags(fv).to_dict()
    resolved.pop("model_dir")
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _flag_args(overrides: dict) -> list[str]:
    return [f"--{k}={v}" for k, v in sorted(overrides.items())]


class MissingRun(Exception):
    """A run has no results.json and the runner only reports."""


class Runner:
    """Runs (or finds) the runs of a suite on one dataset.

    With `report_only`, a missing run raises `MissingRun` instead of running.
    """

    def __init__(
        self,
        *,
        dataset: str,
        data_dir: str,
        runs_dir: str,
        extra_flags: list[str],
        report_only: bool = False,
    ):
        self.dataset = dataset
        self.flagfile = os.path.join(CONFIGS, f"{dataset}.flags")
        if not os.path.exists(self.flagfile):
            known = sorted(f[:-6] for f in os.listdir(CONFIGS) if f.endswith(".flags"))
            raise ValueError(f"--dataset={dataset}: no {self.flagfile}; use one of {known}.")
        self.data_args = []
        if dataset != "quickstart":
            path = os.path.join(data_dir, dataset, "interactions.tsv.gz")
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"{path} does not exist: pass --data_dir=<folder holding {dataset}/>."
                )
            self.data_args = [f"--data_path={path}"]
        self.runs_dir = os.path.join(runs_dir, dataset)
        self.extra_flags = list(extra_flags)
        self.report_only = report_only
        self.launched = 0

    def run(self, overrides: dict, seed: int) -> dict:
        """results.json of one run, running it first when it is missing.

        A run is found by its resolved config (flagfile contents, overrides,
        extra flags and seed): its folder ends with that config's hash, so a
        run with other flags (e.g. `--extra_flags=--epochs=5`) is never
        reused for this one.
        """
        args = [
            f"--flagfile={self.flagfile}",
            *self.data_args,
            f"--seed={seed}",
            "--verbose=0",
            *_flag_args(overrides),
            *self.extra_flags,
        ]
        # A readable prefix (the hash names the run; long override lists are cut).
        name = _slug("_".join(f"{k}-{v}" for k, v in sorted(overrides.items())))[:80]
        name = name.strip("_") or "defaults"
        run_dir = os.path.join(self.runs_dir, f"{name}__seed{seed}__{config_key(args)}")
        results_path = os.path.join(run_dir, "results.json")
        if not os.path.exists(results_path) and self.report_only:
            raise MissingRun(run_dir)
        if not os.path.exists(results_path):
            os.makedirs(run_dir, exist_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "mmrec_tf.main",
                *args,
                f"--model_dir={run_dir}",
                f"--dataset_name={self.dataset}",
            ]
            started = time.perf_counter()
            print(f"run {os.path.basename(run_dir)} ...", flush=True)
            with open(os.path.join(run_dir, "log.txt"), "w") as log:
                log.write(" ".join(cmd) + "\n")
                log.flush()
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
            self.launched += 1
            if code != 0 or not os.path.exists(results_path):
                raise RuntimeError(
                    f"run failed (exit {code}); see {os.path.join(run_dir, 'log.txt')}. Fix "
                    "it and start the suite again: finished runs are kept."
                )
            print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
        with open(results_path) as f:
            results = json.load(f)
        history = os.path.join(run_dir, "history.json")
        if os.path.exists(history):
            with open(history) as f:
                results["history"] = json.load(f)
        # Reports name runs relative to the runs folder, not by machine path.
        results["run_dir"] = os.path.relpath(run_dir, os.path.dirname(self.runs_dir))
        return results


def _validation_score(results: dict, protocol: str) -> float:
    metrics = results.get("validation", {}).get(protocol)
    if metrics is None:
        raise ValueError(
            f"run {results['run_dir']}: no validation {protocol} metrics to tune on; the data needs "
            "validation cases (--validation)."
        )
    return metrics["HR@10"]


def summarize(runs: list[dict], protocol: str) -> dict:
    """Mean over seeds and standard error across seeds of runs' test metrics."""
    out = {"seeds": [r["seed"] for r in runs], "cases": runs[0]["test"][protocol]["cases"]}
    for metric in ("HR@10", "NDCG@10"):
        values = [r["test"][protocol][metric] for r in runs]
        mean = sum(values) / len(values)
        # One seed has no spread across seeds: its standard error over cases.
        se = (
            math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
            if len(values) > 1
            else runs[0]["test"][protocol].get(f"{metric}_se", float("nan"))
        )
        out[metric] = mean
        out[f"{metric}_se"] = se
    return out


def run_suite(
    suite: str,
    runner: Runner,
    *,
    seeds: int,
    tune: bool = True,
    behaviors=None,
    on_arm=None,
    only=(),
) -> dict:
    """Runs a suite and returns its report (every figure from the runs' results.json).

    `on_arm(report)` is called after each arm, so a long suite's finished
    arms are reported before the rest have run. `only` keeps the arms whose
    label contains one of its strings (see `select_arms`).
    """
    arms = SUITES[suite](behaviors or BEHAVIORS.get(runner.dataset, ("buy",)))
    arms = select_arms(arms, only)
    report = {"suite": suite, "dataset": runner.dataset, "seeds": seeds, "arms": []}
    for arm in arms:
        try:
            entry = _run_arm(arm, runner, seeds=seeds, tune=tune)
        except MissingRun:
            # Report-only: the arms before the first unfinished one.
            report["incomplete_from"] = arm.label
            break
        report["arms"].append(entry)
        if on_arm is not None:
            on_arm(report)
    return report


def select_arms(arms: list[Arm], only) -> list[Arm]:
    """The arms whose label contains one of `only` (case-insensitive); all when empty."""
    if not only:
        return arms
    unknown = [o for o in only if not any(o.lower() in a.label.lower() for a in arms)]
    if unknown:
        labels = "; ".join(a.label for a in arms)
        raise ValueError(f"--arms {unknown} match no arm of this suite; its arms: {labels}.")
    return [a for a in arms if any(o.lower() in a.label.lower() for o in only)]


def _run_arm(arm: Arm, runner: Runner, *, seeds: int, tune: bool) -> dict:
    """One arm: its tuning runs (seed 0), then every seed of each protocol's choice."""
    entry = {"label": arm.label, "overrides": arm.overrides}
    chosen = {"sampled": {}, "full": {}}
    if arm.grid and tune:
        tuning = []
        for point in arm.grid:
            results = runner.run({**arm.overrides, **point}, 0)
            tuning.append(
                {
                    "point": point,
                    "validation_sampled_hr10": _validation_score(results, "sampled"),
                    "validation_full_hr10": _validation_score(results, "full"),
                }
            )
        entry["tuning"] = tuning
        for protocol in chosen:
            best = max(tuning, key=lambda t: t[f"validation_{protocol}_hr10"])
            chosen[protocol] = best["point"]
    elif arm.grid:
        chosen = {"sampled": arm.grid[0], "full": arm.grid[0]}
    for protocol, point in chosen.items():
        runs = [runner.run({**arm.overrides, **point}, s) for s in range(seeds)]
        entry[protocol] = {"chosen": point, **summarize(runs, protocol)}
        entry[f"{protocol}_run_dirs"] = [r["run_dir"] for r in runs]
        if protocol == "sampled" and runs[0].get("history"):
            entry["history"] = [r.get("history") for r in runs]
    # Only taobao_cml comes from the paper's source (Taobao UserBehavior).
    entry["paper"] = PAPER.get(arm.label) if runner.dataset == "taobao_cml" else None
    return entry


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
        chosen = " / ".join(" ".join(_flag_args(x["chosen"])) or "-" for x in (s, f))
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
    if ours and report["dataset"] in ALS_BAR:
        bar_sampled, bar_full = ALS_BAR[report["dataset"]]
        lines += [
            "",
            "The multi-behavior ALS bar recorded with the data (the implicit library, tuned "
            "per protocol over a wider grid than this runner's equal-budget one): "
            f"sampled HR@10 {bar_sampled:.3f}, full HR@10 {bar_full:.3f}; the tuned "
            f"multi-feedback model is at {ours['sampled']['HR@10'] / bar_sampled:.2f}x and "
            f"{ours['full']['HR@10'] / bar_full:.2f}x of it.",
        ]
    if report["dataset"] in PUBLISHED:
        name, hr, ndcg, protocol = PUBLISHED[report["dataset"]]
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
                    f"| {arm['label']} | {' '.join(_flag_args(t['point']))} | "
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    fv = flags.FLAGS
    runner = Runner(
        dataset=fv.dataset,
        data_dir=fv.data_dir,
        runs_dir=fv.runs_dir,
        extra_flags=fv.extra_flags,
        report_only=fv.report_only,
    )
    command = (
        f"python -m mmrec_tf.experiments --suite={','.join(fv.suite)} --dataset={fv.dataset} "
        f"--seeds={fv.seeds}" + ("" if fv.tune else " --notune")
    )
    command += "".join(f" --extra_flags={x}" for x in fv.extra_flags)
    for suite in fv.suite:
        if suite not in SUITES:
            raise app.UsageError(f"--suite={suite} is unknown: use some of {sorted(SUITES)}.")

    def write(report):
        if fv.arms:
            # A subset would overwrite the whole suite's report: leave that to
            # --report_only once every process has finished.
            return
        print("wrote " + ", ".join(write_report(report, fv.out_dir, command)))

    for suite in fv.suite:
        try:
            report = run_suite(
                suite, runner, seeds=fv.seeds, tune=fv.tune, on_arm=write, only=fv.arms
            )
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        write(report)  # once more: an incomplete suite says where it stopped
    if fv.arms:
        print("ran the selected arms; write the reports with --report_only")


def define_runner_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The flags of `python -m mmrec_tf.experiments` (the experiment runner)."""
    f = {"flag_values": fv}
    flags.DEFINE_list(
        "suite",
        ["table4"],
        "Suites to run: table4, table2, table3, figure3, ablations (smoke: the runner's own test).",
        **f,
    )
    flags.DEFINE_string("dataset", "taobao_cml", "A flagfile name under mmrec_tf/configs.", **f)
    flags.DEFINE_string(
        "data_dir", "../shared/data", "Folder holding <dataset>/interactions.tsv.gz.", **f
    )
    flags.DEFINE_string("runs_dir", "runs/experiments", "Where each run's folder goes.", **f)
    flags.DEFINE_string("out_dir", "benchmarks/results", "Where <dataset>/<suite>.md goes.", **f)
    flags.DEFINE_integer("seeds", 3, "Seeds per reported setting.", **f)
    flags.DEFINE_boolean("tune", True, "Tune grids on validation (else take the first point).", **f)
    flags.DEFINE_boolean(
        "report_only", False, "Write the reports of finished arms; run nothing.", **f
    )
    flags.DEFINE_multi_string(
        "extra_flags", [], "A flag added to every run, e.g. --extra_flags=--epochs=5.", **f
    )
    flags.DEFINE_multi_string(
        "arms",
        [],
        "Run only the arms whose label contains this (repeatable, case-insensitive), "
        "e.g. --arms=BPR --arms=NCF: two processes can split a suite; reports are then "
        "written by a later --report_only.",
        **f,
    )


def run():
    define_runner_flags(flags.FLAGS)
    app.run(main)


if __name__ == "__main__":
    run()
