"""Tuning on validation with Optuna: one study per dataset, model family and protocol.

    python -m mmrec_tf.tune --flagfile=mmrec_tf/configs/jd_vcgae.flags \
        --family=mmf --protocol=full --trials=20 --study_dir=runs/tune/jd_vcgae

Each trial trains (or fits) one configuration drawn from the family's search
space on top of the flagfile, with `--mode=train`: only the validation cases
are ranked, never the test split. The objective is validation HR@10 under
`--protocol` (for the neural families, of the epoch early stopping keeps,
early stopping following the same protocol, blended with CascadingRank when
the base flags blend: `objective_value`). A median pruner stops a trial
whose per-epoch validation falls below the median of earlier trials at the
same epoch.

The study lives in `<study_dir>/<family>.db` (SQLite): started again after a
kill, it keeps every finished trial, marks the trial that was running as
failed, and runs only the trials still missing. Every family gets the same
`--trials`, so the comparison between them has one budget.

    python -m mmrec_tf.tune --study_dir=runs/tune/jd_vcgae --report

prints every study in the folder as Markdown tables, a row per trial.

Optuna (`pip install -e .[tune]`) is used rather than a hand-written grid: it
stores studies in a database, samples with TPE, and prunes from intermediate
values, which is what equal-budget tuning over a dozen parameters needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import sys

from absl import app
from absl import flags
from absl import logging

from mmrec_tf import cli
from mmrec_tf import config as config_lib
from mmrec_tf import locks
from mmrec_tf import run as run_lib
from mmrec_tf import run_record

FAMILIES = ("mmf", "bpr", "als", "cascade")
# The families that fit without training: their objective is the run's validation figure.
FITTED = ("als", "cascade")

# Known good points each study of a family tries first (Optuna's
# `enqueue_trial`), so no study ends below them on validation: for the ALS,
# the grid of the `implicit` library's multi-behavior reference
# (benchmarks/implicit_reference.py reads it from here); for CascadingRank,
# its published settings, (alpha, beta) = (0.0, 0.9) on its taobao (this
# project's tmall_mbcgcn) and (0.7, 0.2) on its tmall; for our model, the
# shipped recipe.
STARTS = {
    "als": tuple(
        {"mf_dim": f, "als_l2": l2, "als_alpha": a, "als_supportive_weight": w}
        for f, l2, a, w in (
            (64, 10.0, 40.0, 0.25),
            (64, 10.0, 40.0, 1.0),
            (128, 10.0, 40.0, 0.5),
            (128, 30.0, 100.0, 0.5),
        )
    ),
    # The recipe residual.flags ships, with and without graph signals.
    "mmf": tuple(
        {
            "behavior_init": "zero",
            "graph_signals": signals,
            "learning_rate": 0.003,
            "temperature": 0.1,
            "mlp_dim": 8,
            "mlp_layers": 1,
            "shared_negatives": 512,
            "l2": 0.0,
        }
        for signals in (True, False)
    ),
    "cascade": (
        {"cascade_keep": 0.1, "cascade_query_share": 0.0},
        {"cascade_keep": 0.1, "cascade_query_share": 0.7 / 0.9},
    ),
}


# The `mmf` study also chooses the ALS its residual starts from: the best
# finished trial of the ALS study beside it (same protocol) in each band of
# ridge strength (L2 below 1, 1 to 10, 10 and above). The ALS that validates
# best alone is not always the best start: on tmall_mbcgcn our model
# validated 0.027 higher on a strong-ridge trial (L2 21.6) than on the
# study's best (L2 0.135), which the best few trials, all weak-ridge, miss.
ALS_RIDGE_BANDS = (1.0, 10.0)
# The ALS settings a trial of the `als` study draws (and an `mmf` trial takes).
ALS_SETTINGS = ("mf_dim", "als_l2", "als_alpha", "als_supportive_weight")


def als_starts(als_study) -> list[dict]:
    """The ALS trials an `mmf` study chooses among, best first.

    Args:
      als_study: the finished ALS study (an optuna Study), or None.

    Returns:
      [{"trial": number, "value": validation HR@10, "params": {flag: value}}],
      the best complete trial per band of `ALS_RIDGE_BANDS`; [] without one.
    """
    import optuna

    if als_study is None:
        return []
    best = {}
    for t in als_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.value is None or not set(ALS_SETTINGS) <= set(t.params):
            continue
        band = sum(t.params["als_l2"] >= edge for edge in ALS_RIDGE_BANDS)
        if band not in best or t.value > best[band].value:
            best[band] = t
    chosen = sorted(best.values(), key=lambda t: -t.value)
    return [
        {"trial": t.number, "value": t.value, "params": {k: t.params[k] for k in ALS_SETTINGS}}
        for t in chosen
    ]


def search_space(trial, family: str, als_choices: list[dict] = ()) -> dict:
    """The overrides of one trial: flag name -> value.

    Args:
      trial: an optuna Trial.
      family: `mmf` (the shipped recipe: the multi-feedback model learning a
        residual over the ALS of the base flags with the whole-catalog
        objective; nest the dataset's `_als.flags` and `residual.flags`),
        `bpr` (the same model with the pairwise loss, the previous tuned
        recipe) or `als` (the
        multi-behavior weighted ALS; "touched items first" is the tuned ALS
        with --behavior_features, which adds no parameter to tune) or
        `cascade` (CascadingRank's alpha and beta, drawn as the share the
        propagation keeps, 1 - alpha - beta, in [0.02, 0.5], and the query's
        share of the rest, alpha / (alpha + beta); a larger kept share
        converges slowly: 0.78 took 4x a published setting's time on
        tmall_mbcgcn and validated at half its HR@10).
      als_choices: for `mmf`, the ALS trials to start from (`als_starts`):
        the trial draws one (`als_trial`) and takes its settings; empty: the
        base flags' ALS.
    """
    if family == "cascade":
        keep = trial.suggest_float("cascade_keep", 0.02, 0.5, log=True)
        share = trial.suggest_float("cascade_query_share", 0.0, 1.0)
        return {
            "model": "cascade",
            "cascade_alpha": (1.0 - keep) * share,
            "cascade_beta": (1.0 - keep) * (1.0 - share),
        }
    if family == "als":
        return {
            "model": "als",
            "mf_dim": trial.suggest_categorical("mf_dim", [32, 64, 128, 192]),
            "als_l2": trial.suggest_float("als_l2", 0.1, 100.0, log=True),
            "als_alpha": trial.suggest_float("als_alpha", 1.0, 200.0, log=True),
            "als_supportive_weight": trial.suggest_float("als_supportive_weight", 0.0, 4.0),
        }
    if family == "bpr":
        return {
            "model": "mmf",
            "mf_dim": trial.suggest_categorical("mf_dim", [16, 32, 64, 128]),
            "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
            "behavior_features": trial.suggest_categorical("behavior_features", [False, True]),
            "l2": trial.suggest_categorical("l2", [0.0, 1e-5, 1e-4, 1e-3]),
            "mlp_dim": trial.suggest_categorical("mlp_dim", [8, 16, 32]),
            "loss": "bpr",
            "num_negatives": trial.suggest_int("num_negatives", 1, 8),
            "supportive_positive_weight": trial.suggest_float(
                "supportive_positive_weight", 0.0, 1.0
            ),
            "supportive_negative_ratio": 0.0,
        }
    # mmf: the shipped recipe (residual.flags) on the ALS that the base flags
    # set (a <dataset>_als.flags) or that the trial draws from `als_choices`:
    # the MF part held at the ALS factors; the branches (with or without
    # graph signals), fusion, head and behavior offsets learn a residual
    # with the softmax.
    start = {}
    if als_choices:
        number = trial.suggest_categorical("als_trial", [c["trial"] for c in als_choices])
        start = next(c["params"] for c in als_choices if c["trial"] == number)
    return {
        **start,
        "model": "mmf",
        "mf_init": "als_fixed",
        "behavior_features": True,
        "loss": "softmax",
        "history_length": 0,
        "supportive_positive_weight": 0.0,
        "behavior_init": trial.suggest_categorical("behavior_init", ["zero", "touched_first"]),
        "graph_signals": trial.suggest_categorical("graph_signals", [True, False]),
        "learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True),
        "temperature": trial.suggest_float("temperature", 0.05, 1.0, log=True),
        "mlp_dim": trial.suggest_categorical("mlp_dim", [8, 16, 32]),
        "mlp_layers": trial.suggest_int("mlp_layers", 1, 2),
        "shared_negatives": trial.suggest_categorical("shared_negatives", [256, 512, 1024]),
        "l2": trial.suggest_categorical("l2", [0.0, 1e-5, 1e-4]),
    }


def apply(config: config_lib.ExperimentConfig, overrides: dict) -> config_lib.ExperimentConfig:
    """`config` with the overrides (flag name -> value) set, as the flags would set them."""
    sections, top = {}, {}
    for flag, value in overrides.items():
        for section, field in cli.fields_of(flag):
            (sections.setdefault(section, {}) if section else top)[field] = value
    return dataclasses.replace(
        config,
        **{s: dataclasses.replace(getattr(config, s), **f) for s, f in sections.items()},
        **top,
    )


def _database(study_dir: str, family: str) -> str:
    """The SQLite file of a family's studies (one per family, so studies of
    two families can run at once)."""
    return os.path.join(study_dir, f"{family}.db")


def _storage(path: str) -> str:
    """The Optuna storage URL of a study database file."""
    return f"sqlite:///{os.path.abspath(path)}"


def _finished_states() -> tuple:
    """The trial states a study's trial count takes: complete and pruned."""
    import optuna

    return (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def run_study(
    base: config_lib.ExperimentConfig,
    *,
    family: str,
    protocol: str,
    trials: int,
    study_dir: str,
    seed: int = 0,
    dataset: str = "",
    fail_stale_trials: bool = True,
):
    """Runs the trials of a study that are still missing; returns the optuna Study.

    Args:
      base: the configuration every trial starts from (a dataset flagfile's).
      family: one of FAMILIES.
      protocol: the validation protocol of the objective (`sampled`, `full`
        or `discovery`).
      trials: the study's total number of finished (complete or pruned)
        trials.
      study_dir: holds <family>.db and one folder per trial.
      seed: the sampler's seed, mixed with `dataset`, `family` and `protocol`
        (`sampler_seed`), so studies of different datasets do not all draw
        the same first points.
      dataset: the dataset's name (default: derived from the data path).
      fail_stale_trials: fail the trials left running by dead processes
        (those without a live process on this host). Several workers may
        run one study at once (each takes the next trial).
    """
    import optuna

    if family not in FAMILIES:
        raise ValueError(f"family={family!r} is unknown: use one of {FAMILIES}.")
    if protocol not in config_lib.VALIDATION_PROTOCOLS:
        raise ValueError(
            f"protocol={protocol!r} is unknown: use one of {config_lib.VALIDATION_PROTOCOLS}."
        )
    os.makedirs(study_dir, exist_ok=True)
    seed = sampler_seed(seed, dataset or run_lib.dataset_name(base), family, protocol)
    database = _database(study_dir, family)
    try:
        study = optuna.create_study(
            study_name=f"{family}-{protocol}",
            storage=_storage(database),
            load_if_exists=True,
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
        )
    except Exception as error:  # SQLAlchemy's errors for a file that is no database
        if not os.path.exists(database) or "database" not in str(error).lower():
            raise
        raise run_record.damaged(
            database,
            error,
            "It holds the study's trials: restore it from a copy, or give a new --study_dir "
            "to start the study again.",
        ) from None
    # A trial left running by a killed process is failed, not resumed: its
    # configuration is drawn again by a new trial if the sampler wants it. A
    # trial whose process is alive on this host (another worker of the same
    # study) is left alone.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs
        alive = owner.get("host") == socket.gethostname() and locks.process_alive(owner.get("pid"))
        if not alive and fail_stale_trials:
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    _check_study_record(study, base)
    als_choices = _frozen_als_choices(study, study_dir, family, protocol)
    # A resumed study must not replay the sampler's first draws (its random
    # start-up trials would repeat the finished ones): the seed moves on with
    # the trials the study already holds.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
    missing = trials - len(study.get_trials(deepcopy=False, states=_finished_states()))
    if missing <= 0:
        return study
    # The known good points come first; one whose trial failed (a killed
    # process) is queued again, and those beyond the study's trials wait in
    # the database for a resumed study with more.
    for start in _starts_to_queue(study, family, als_choices):
        study.enqueue_trial(start)

    def objective(trial):
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        overrides = search_space(trial, family, als_choices)
        if family not in FITTED:
            overrides["early_stopping_protocol"] = protocol
        # Trial folders per protocol: a full and a sampled study share a database.
        run_dir = os.path.join(study_dir, f"{family}_{protocol}_trial_{trial.number:04d}")
        config = apply(base, overrides)
        # A trial validates only: no test figures, and no export of its own.
        config = dataclasses.replace(
            config,
            model_dir=run_dir,
            mode="train",
            export=dataclasses.replace(config.export, export_dir=""),
        )
        trial.set_user_attr("overrides", json.dumps(overrides, default=str))

        def report(epoch, metrics):
            trial.report(metrics["HR@10"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"validation HR@10 {metrics['HR@10']:.4f} at epoch {epoch}"
                )

        results = run_lib.run(config, on_validation=report)
        if "validation" not in results and "best_validation" not in results.get("train", {}):
            raise ValueError(
                f"trial {trial.number} has no validation figures: the data gave no validation "
                "cases (every test user needs a second training buy to hold out)."
            )
        return objective_value(results, family, protocol)

    study.optimize(objective, n_trials=missing, catch=())
    return study


def objective_value(results: dict, family: str, protocol: str) -> float:
    """A trial's validation HR@10 under `protocol`, of what its run would ship.

    A fitted family's validation figure; for a trained one, the epoch early
    stopping kept, and, when the run blends it with CascadingRank
    (`--cascade_blend` in the base flags, as the shipped `_mmf.flags` do),
    the blend at the weight the run kept on the same validation cases.
    """
    if family in FITTED:
        return results["validation"][protocol]["HR@10"]
    blend = results.get("cascade_blend")
    if blend:
        return blend["HR@10"][str(blend["weight"])]
    best = results["train"]["best_validation"]
    return best["HR@10"] if best else 0.0


# What may differ between the commands of one study: where runs go, how much
# they print, and where the data lies (its content is compared instead).
_STUDY_MAY_DIFFER = ("model_dir", "mode", "train.verbose", "export.", "data.data_path")


def _study_record(base: config_lib.ExperimentConfig) -> dict:
    """What a study tunes from: the base configuration and the data's content."""
    from mmrec_tf.pipelines import readers

    flat = run_record.flatten(base.to_dict())
    config = {
        k: v
        for k, v in flat.items()
        if not any(k == m or (m.endswith(".") and k.startswith(m)) for m in _STUDY_MAY_DIFFER)
    }
    content = None
    if base.data.data_format != "synthetic":  # the synthetic log is its settings
        content = readers.read_interactions(base.data).report.content_sha256
    return {"config": config, "data_content_sha256": content}


def _check_study_record(study, base: config_lib.ExperimentConfig) -> None:
    """Records what a new study tunes from; refuses a resume from anything else.

    Raises:
      ValueError: naming the first differences and the fix.
    """
    current = json.loads(json.dumps(_study_record(base), default=str))
    recorded = study.user_attrs.get("record")
    if recorded is None:
        study.set_user_attr("record", current)
        return
    problems = []
    if recorded["data_content_sha256"] != current["data_content_sha256"]:
        problems.append(
            ("data content", recorded["data_content_sha256"], current["data_content_sha256"])
        )
    # As a run's record is compared: a field retired or added since the
    # study started matches at its constant or default.
    problems += run_record.differences(recorded["config"], current["config"], _STUDY_MAY_DIFFER)
    if problems:
        listed = "; ".join(
            f"{k}: the study has {a!r}, this command {b!r}" for k, a, b in problems[:5]
        )
        raise ValueError(
            f"the study {study.study_name!r} was started from other settings or data: {listed}. "
            "Resume it with its own flagfile and data, or give a new --study_dir for a new study."
        )


def _frozen_als_choices(study, study_dir: str, family: str, protocol: str) -> list[dict]:
    """The ALS trials an `mmf` study chooses among, fixed when the study starts.

    They are read from `<study_dir>/als.db` (the study `als-<protocol>`) once
    and kept in the study, so a resumed study draws from the same choices
    even after the ALS study has grown.
    """
    import optuna

    if family != "mmf":
        return []
    if "als_choices" in study.user_attrs:
        return study.user_attrs["als_choices"]
    path = _database(study_dir, "als")
    als_study = None
    if os.path.exists(path):
        try:
            als_study = optuna.load_study(study_name=f"als-{protocol}", storage=_storage(path))
        except KeyError:  # the database holds no study of this protocol
            pass
    choices = als_starts(als_study)
    if not choices:
        print(f"the ALS start is the base flags': no als-{protocol} study in {path}")
    elif study.get_trials(deepcopy=False):
        # A study begun on the base flags' ALS keeps it: its trials draw no ALS.
        choices = []
        print("the ALS start is the base flags': this study began on them before it chose")
    else:
        shown = ", ".join(f"trial {c['trial']} ({c['value']:.4f})" for c in choices)
        print(f"the ALS start is chosen among the ALS study's {shown}")
    study.set_user_attr("als_choices", choices)
    return choices


def _starts_to_queue(study, family: str, als_choices: list[dict] = ()) -> list[dict]:
    """The family's STARTS that no finished, running or queued trial of the study holds.

    With `als_choices`, the shipped recipe is tried on each choice and the
    other known good points on the best ALS.
    """
    import optuna

    held = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == optuna.trial.TrialState.WAITING:
            held.append(trial.system_attrs.get("fixed_params", {}))
        elif trial.state != optuna.trial.TrialState.FAIL:
            held.append(trial.params)

    def same(a: dict, b: dict) -> bool:
        return set(a) == set(b) and all(
            a[k] == b[k] if isinstance(a[k], str) else abs(float(a[k]) - float(b[k])) < 1e-9
            for k in a
        )

    starts = STARTS.get(family, ())
    if als_choices:
        # The shipped recipe on every ALS choice, then the other points on the best.
        first, *others = starts
        starts = (
            *({**first, "als_trial": choice["trial"]} for choice in als_choices),
            *({**start, "als_trial": als_choices[0]["trial"]} for start in others),
        )
    return [s for s in starts if not any(same(s, h) for h in held)]


def sampler_seed(seed: int, dataset: str, family: str, protocol: str) -> int:
    """The TPE sampler's seed: `seed` mixed with the study's dataset, family and protocol."""
    digest = hashlib.sha256(f"{dataset}/{family}/{protocol}".encode()).digest()
    return (seed + int.from_bytes(digest[:4], "little")) % (2**31)


def best_flags(summary: dict) -> str:
    """The best trial's overrides as a flagfile to nest after the study's own flags."""
    lines = [
        f"# The best of {summary['trials']} trials of the {summary['family']} study on "
        f"{summary['protocol']} validation",
        f"# (trial {summary['best_trial']}, validation HR@10 "
        f"{summary['best_validation_HR@10']:.4f}), written by mmrec_tf.tune.",
    ]
    for name, value in sorted(summary["best_overrides"].items()):
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, list | tuple):
            parts = [f"{p[0]}:{p[1]}" if isinstance(p, list | tuple) else str(p) for p in value]
            lines.append(f"--{name}={','.join(parts)}")
        else:
            lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def study_tables(study_dir: str) -> str:
    """Markdown: one table per study in `study_dir`'s databases, a row per trial.

    Each row gives the trial's number, state, validation HR@10 (a pruned
    trial's last reported epoch, a failed or running trial's none) and the
    parameters the sampler drew, so a study's README is rendered from its
    database, not copied by hand.

    Raises:
      FileNotFoundError: when `study_dir` holds no study database.
    """
    import optuna

    paths = [
        path
        for path in (_database(study_dir, family) for family in sorted(FAMILIES))
        if os.path.exists(path)
    ]
    if not paths:
        raise FileNotFoundError(
            f"{study_dir} holds no study database ({', '.join(f + '.db' for f in FAMILIES)}): "
            "give the --study_dir a study ran in."
        )
    finished = _finished_states()
    sections = []
    for path in paths:
        storage = _storage(path)
        for summary in sorted(optuna.get_all_study_summaries(storage), key=lambda s: s.study_name):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in finished for t in trials)
            lines = [
                f"## {summary.study_name}: {done} finished trials of {len(trials)}",
                "",
                "| trial | state | validation HR@10 | parameters |",
                "|---|---|---|---|",
            ]
            for t in trials:
                state = t.state.name.lower()
                if t.state == optuna.trial.TrialState.RUNNING:
                    # A database copied from a stopped study holds its last trial so.
                    state = "running, or stopped by a kill (failed when the study resumes)"
                value = t.value
                if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
                    epoch = max(t.intermediate_values)
                    value = t.intermediate_values[epoch]
                    state = f"pruned at epoch {epoch}"
                shown = "" if value is None else f"{value:.4f}"
                params = ", ".join(f"{k}={_value(v)}" for k, v in t.params.items())
                lines.append(f"| {t.number} | {state} | {shown} | {params} |")
            sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_flags(fv)
    f = {"flag_values": fv}
    flags.DEFINE_enum("family", "mmf", FAMILIES, "The model family to tune.", **f)
    flags.DEFINE_enum(
        "protocol",
        "full",
        config_lib.VALIDATION_PROTOCOLS,
        "The validation protocol of the objective.",
        **f,
    )
    flags.DEFINE_integer("trials", 20, "Finished trials the study should hold.", **f)
    flags.DEFINE_string(
        "study_dir", None, "Holds <family>.db and the trials' run folders; resumable.", **f
    )
    flags.DEFINE_integer("study_seed", 0, "Seed of the TPE sampler.", **f)
    flags.DEFINE_boolean(
        "report",
        False,
        "Print every study in --study_dir as Markdown tables (a row per trial) and exit; "
        "runs no trial.",
        **f,
    )
    flags.DEFINE_boolean(
        "fail_stale_trials",
        True,
        "Fail the trials left running by dead processes before running more.",
        **f,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    fv = flags.FLAGS
    if not fv.study_dir:
        raise app.UsageError("--study_dir is required: the study and its trials go there.")
    if fv.report:
        print(study_tables(fv.study_dir), end="")
        return
    if not fv.model_dir:
        fv.model_dir = fv.study_dir  # each trial replaces it with its own folder
    base = cli.config_from_flags(fv)
    study = run_study(
        base,
        family=fv.family,
        protocol=fv.protocol,
        trials=fv.trials,
        study_dir=fv.study_dir,
        seed=fv.study_seed,
        fail_stale_trials=fv.fail_stale_trials,
    )
    best = study.best_trial
    summary = {
        "family": fv.family,
        "protocol": fv.protocol,
        "trials": len(study.trials),
        "best_trial": best.number,
        "best_validation_HR@10": best.value,
        "best_overrides": json.loads(best.user_attrs["overrides"]),
    }
    stem = os.path.join(fv.study_dir, f"best_{fv.family}_{fv.protocol}")
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    with open(stem + ".flags", "w") as f:
        f.write(best_flags(summary))
    print(json.dumps(summary, indent=2))
    print(f"best flags: {stem}.flags (add --flagfile={stem}.flags after the study's flags)")


def run():
    define_flags(flags.FLAGS)
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
