"""Runs: one `python -m mmrec_tf.main` process per (arm, seed), found again by
the hash of its resolved config; suites with validation-tuned grids."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time

from absl import flags

import mmrec_tf
from mmrec_tf import cli
from mmrec_tf import config as config_lib

from . import suites

CONFIGS = os.path.join(os.path.dirname(mmrec_tf.__file__), "configs")


def dataset_config(
    dataset: str, data_dir: str, flagfile: str, seed: int, extra=()
) -> config_lib.ExperimentConfig:
    """The config of a shipped flagfile (`mmrec_tf/configs/<flagfile>`) on
    `<data_dir>/<dataset>/interactions.tsv.gz` at `seed`, with `extra` flags."""
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(
        [
            "mmrec_tf",
            f"--flagfile={os.path.join(CONFIGS, flagfile)}",
            f"--data_path={os.path.join(data_dir, dataset, 'interactions.tsv.gz')}",
            f"--seed={seed}",
            *extra,
        ]
    )
    return cli.config_from_flags(fv)


def fresh_shipped_config(
    dataset: str, data_dir: str, seed: int, model_dir: str, extra=()
) -> config_lib.ExperimentConfig:
    """`<dataset>_mmf.flags` at `seed` (`dataset_config`), run into `model_dir`
    without an export, `extra` flags last; an earlier run in `model_dir` is
    removed first (an experiment's arm starts from nothing)."""
    if os.path.exists(model_dir):
        shutil.rmtree(model_dir)
    return dataset_config(
        dataset,
        data_dir,
        f"{dataset}_mmf.flags",
        seed,
        (f"--model_dir={model_dir}", "--export_dir=", *extra),
    )


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")


# Retired fields (config.RETIRED) that were added after runs were first
# keyed: at their default they never keyed anything.
_NEVER_KEYED = (
    "model.als_holdout",
    "train.row_negatives",
    "train.supportive_rows",
    # Where fitted ALS factors are cached changes no result (a hit is the fit).
    "model.als_cache_dir",
)
# (section, field, default) of config fields added since runs were first keyed.
ADDED_AT_DEFAULT = (
    ("model", "cascade_alpha", 0.7),
    ("model", "cascade_beta", 0.2),
    ("model", "graph_signals", False),
    ("model", "cascade_blend", False),
    ("train", "early_stopping_margin", 0.0),
)


def config_key(args: list[str]) -> str:
    """A short hash of the config that `python -m mmrec_tf.main <args>` resolves to.

    The flags are parsed as the binary parses them (flagfiles read, nested
    ones included), so two argument lists that resolve to the same config
    share a key and any difference in a value gives another. The model
    folder and the ALS cache folder are not part of it.
    """
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["mmrec_tf", *args, "--model_dir=_"])
    resolved = cli.config_from_flags(fv).to_dict()
    resolved.pop("model_dir")
    # Fields added after runs were recorded stay out of the key at their
    # default, so those runs keep their keys.
    for section, field, default in ADDED_AT_DEFAULT:
        if resolved[section][field] == default:
            resolved[section].pop(field)
    # Fields retired since, put back at the value every possible run had, so
    # recorded runs keep their keys; those that were in ADDED_AT_DEFAULT
    # never keyed anything and stay out.
    for name, value in config_lib.RETIRED.items():
        section, field = name.split(".")
        if name not in _NEVER_KEYED:
            resolved[section][field] = value
    # Fields moved since, put back at their new place's value (one flag
    # set both before), so recorded runs keep their keys.
    for old, new in config_lib.MOVED.items():
        section, field = old.split(".")
        to_section, to_field = new.split(".")
        resolved[section][field] = resolved[to_section][to_field]
    text = json.dumps(resolved, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def flag_args(overrides: dict) -> list[str]:
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
            *flag_args(overrides),
            *self.extra_flags,
        ]
        # A readable prefix (the hash names the run; long override lists are cut).
        name = slug("_".join(f"{k}-{v}" for k, v in sorted(overrides.items())))[:80]
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
            "validation cases (a user with two or more training buys, or a valid split)."
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
    arms = suites.SUITES[suite](behaviors or suites.BEHAVIORS.get(runner.dataset, ("buy",)))
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


def select_arms(arms: list[suites.Arm], only) -> list[suites.Arm]:
    """The arms whose label contains one of `only` (case-insensitive); all when empty."""
    if not only:
        return arms
    unknown = [o for o in only if not any(o.lower() in a.label.lower() for a in arms)]
    if unknown:
        labels = "; ".join(a.label for a in arms)
        raise ValueError(f"--arms {unknown} match no arm of this suite; its arms: {labels}.")
    return [a for a in arms if any(o.lower() in a.label.lower() for o in only)]


def _run_arm(arm: suites.Arm, runner: Runner, *, seeds: int, tune: bool) -> dict:
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
    entry["paper"] = suites.PAPER.get(arm.label) if runner.dataset == "taobao_cml" else None
    return entry
