"""Command line: train, evaluate, or both.

    python -m mmrec_tf.main --flagfile=mmrec_tf/configs/quickstart.flags

This is the only module that defines absl flags. It maps them to an
`ExperimentConfig`, writes the resolved config as `config.json` into
`--model_dir`, and writes `results.json` (dataset, model, seed, validation and
test metrics of both protocols, TFRS retrieval metrics, training summary).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras
from absl import app
from absl import flags
from absl import logging

from mmrec_tf import als
from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import locks
from mmrec_tf import models
from mmrec_tf import popularity
from mmrec_tf import run_record
from mmrec_tf import train as train_lib
from mmrec_tf.export import evaluation as export_evaluation
from mmrec_tf.export import exporter
from mmrec_tf.export import fitted as fitted_export
from mmrec_tf.export import serving
from mmrec_tf.pipelines import histories
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import samplers
from mmrec_tf.pipelines import splits as splits_lib
from mmrec_tf.pipelines import vocabularies


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Defines every flag of the command line in `fv`."""
    d_data, d_model = config_lib.DataConfig(), config_lib.ModelConfig()
    d_train, d_eval = config_lib.TrainConfig(), config_lib.EvalConfig()
    f = dict(flag_values=fv)
    flags.DEFINE_enum("mode", "train_and_evaluate", config_lib.MODES, "What to run.", **f)
    flags.DEFINE_string(
        "model_dir",
        None,
        "Checkpoints, logs, vocabularies, config.json and "
        "results.json go here; a run with the same model_dir resumes.",
        **f,
    )
    flags.DEFINE_string(
        "dataset_name",
        "",
        "Name recorded in results.json (default: the data folder's name, or 'synthetic').",
        **f,
    )
    flags.DEFINE_integer("seed", 0, "Seed of splits, initialisation, sampling.", **f)
    # Data.
    flags.DEFINE_string(
        "data_path",
        d_data.data_path,
        "A file or glob of shards (plain or .gz); empty with --data_format=synthetic.",
        **f,
    )
    flags.DEFINE_enum(
        "data_format", d_data.data_format, config_lib.DATA_FORMATS, "Layout of the files.", **f
    )
    flags.DEFINE_list(
        "columns",
        [],
        "For csv: field=column pairs, e.g. user=uid,item=iid,behavior=action,timestamp=ts.",
        **f,
    )
    flags.DEFINE_string(
        "delimiter", d_data.delimiter, "For csv: the field separator (\\t for tab).", **f
    )
    flags.DEFINE_boolean(
        "has_header", d_data.has_header, "For csv: files start with a header.", **f
    )
    flags.DEFINE_string(
        "target_behavior", d_data.target_behavior, "The behavior to recommend.", **f
    )
    flags.DEFINE_list(
        "supportive_behaviors",
        [],
        "Supportive behaviors in branch order; empty: every other behavior found.",
        **f,
    )
    flags.DEFINE_list("ignore_behaviors", [], "Behaviors excluded on purpose (counted).", **f)
    flags.DEFINE_enum(
        "on_bad_record",
        d_data.on_bad_record,
        config_lib.BAD_RECORD_POLICIES,
        "Stop at the first bad record, or skip and count them.",
        **f,
    )
    flags.DEFINE_boolean(
        "validation",
        d_data.validation,
        "Carve validation cases from training data when the data has none.",
        **f,
    )
    flags.DEFINE_integer("synthetic_users", d_data.synthetic_users, "Synthetic users.", **f)
    flags.DEFINE_integer("synthetic_items", d_data.synthetic_items, "Synthetic items.", **f)
    flags.DEFINE_float(
        "synthetic_records_per_user",
        d_data.synthetic_records_per_user,
        "Mean records per synthetic user.",
        **f,
    )
    # Model.
    flags.DEFINE_enum("model", d_model.model, config_lib.MODELS, "Model to train.", **f)
    flags.DEFINE_integer("mf_dim", d_model.mf_dim, "MF factors.", **f)
    flags.DEFINE_integer("mlp_dim", d_model.mlp_dim, "Per-branch embedding size.", **f)
    flags.DEFINE_integer("mlp_layers", d_model.mlp_layers, "ReLU layers per branch.", **f)
    flags.DEFINE_integer("fusion_dim", d_model.fusion_dim, "Fusion units (0: mlp_dim).", **f)
    flags.DEFINE_enum(
        "gating", d_model.gating, config_lib.GATINGS, "Supportive-branch gating.", **f
    )
    flags.DEFINE_float(
        "branch_loss_weight",
        d_model.branch_loss_weight,
        "Weight of each auxiliary branch loss (gradient_aux).",
        **f,
    )
    flags.DEFINE_integer(
        "history_length",
        d_model.history_length,
        "Items of each user's training history whose mean embedding joins the user vector "
        "of each part (0: the paper's model).",
        **f,
    )
    flags.DEFINE_boolean(
        "shared_embeddings",
        d_model.shared_embeddings,
        "One shared pair of embedding tables for every feedback branch (ablation).",
        **f,
    )
    flags.DEFINE_boolean(
        "behavior_features",
        d_model.behavior_features,
        "The score adds a learned weight per supportive behavior the user had with the item "
        "in training (e.g. carted it); evaluation and serving look these up.",
        **f,
    )
    flags.DEFINE_enum(
        "behavior_init",
        d_model.behavior_init,
        config_lib.BEHAVIOR_INITS,
        "Start of the behavior feature weights: zero, or lift (the training log-odds of a "
        "buy with each behavior over without any).",
        **f,
    )
    flags.DEFINE_enum(
        "behavior_fit",
        d_model.behavior_fit,
        config_lib.BEHAVIOR_FITS,
        "How the behavior feature weights learn: joint (one loss on the summed logit) or "
        "apart (the rest of the model learns as without features; the weights learn on "
        "top of its logit, held fixed).",
        **f,
    )
    flags.DEFINE_float("init_stddev", d_model.init_stddev, "Stddev of N(0, s) init.", **f)
    flags.DEFINE_float("l2", d_model.l2, "L2 on looked-up embedding rows.", **f)
    flags.DEFINE_float("als_alpha", d_model.als_alpha, "ALS confidence slope (--model=als).", **f)
    flags.DEFINE_float("als_l2", d_model.als_l2, "ALS ridge penalty (--model=als).", **f)
    flags.DEFINE_float(
        "als_supportive_weight",
        d_model.als_supportive_weight,
        "What each supportive behavior adds to the ALS confidence (0: WMF on the target).",
        **f,
    )
    flags.DEFINE_integer("als_iterations", d_model.als_iterations, "ALS sweeps.", **f)
    flags.DEFINE_enum(
        "mf_init",
        d_model.mf_init,
        config_lib.MF_INITS,
        "Where the MF part starts: random; als (the multi-behavior ALS fitted with the "
        "--als_* flags and --mf_dim factors; the first logit is the ALS score, the branches "
        "learn what it misses, and the start is validated as epoch 0); or als_fixed (the same, "
        "with the MF tables held at the ALS factors).",
        **f,
    )
    flags.DEFINE_enum(
        "als_solver",
        d_model.als_solver,
        config_lib.ALS_SOLVERS,
        "ALS solver: the implicit library's exact solves (fast) or the numpy reference.",
        **f,
    )
    # Training.
    flags.DEFINE_integer("epochs", d_train.epochs, "Maximum epochs.", **f)
    flags.DEFINE_integer("batch_size", d_train.batch_size, "Global batch size.", **f)
    flags.DEFINE_float("learning_rate", d_train.learning_rate, "Adam learning rate.", **f)
    flags.DEFINE_enum("loss", d_train.loss, config_lib.LOSSES, "Training loss.", **f)
    flags.DEFINE_integer("num_negatives", d_train.num_negatives, "Negatives per positive.", **f)
    flags.DEFINE_integer(
        "shared_negatives",
        d_train.shared_negatives,
        "With --loss=softmax: items drawn once per batch as negatives of every row.",
        **f,
    )
    flags.DEFINE_enum(
        "negative_distribution",
        d_train.negative_distribution,
        config_lib.NEGATIVE_DISTRIBUTIONS,
        "With --loss=softmax: the shared negatives' distribution (popularity: positive "
        "pairs per item plus one, to the power --negative_exponent).",
        **f,
    )
    flags.DEFINE_float(
        "negative_exponent", d_train.negative_exponent, "Exponent of the popularity draw.", **f
    )
    flags.DEFINE_float(
        "temperature", d_train.temperature, "With --loss=softmax: logits are divided by it.", **f
    )
    flags.DEFINE_integer(
        "hard_negatives",
        d_train.hard_negatives,
        "With --loss=softmax: 0 scores the whole candidate grid with the full model; K > 0 "
        "trains in two stages (the grid softmax on the MF part, the full model on each "
        "positive against the K candidates the MF part scores highest).",
        **f,
    )
    flags.DEFINE_list(
        "behavior_weights",
        [],
        "Graded positives, behavior:weight pairs (e.g. buy:1,cart:0.5): every training pair "
        "with a weighted behavior is a positive weighing the sum of its behaviors' weights.",
        **f,
    )
    flags.DEFINE_float(
        "whole_data_weight",
        d_train.whole_data_weight,
        "Weight of the whole-data term: each user's sum over the catalog of the squared MF "
        "part of the logit (exact, through the item Gramian).",
        **f,
    )
    flags.DEFINE_float(
        "supportive_negative_ratio",
        d_train.supportive_negative_ratio,
        "Fraction of negatives from supportive-only items.",
        **f,
    )
    flags.DEFINE_float(
        "supportive_positive_weight",
        d_train.supportive_positive_weight,
        "Loss weight of supportive-only pairs as extra positives (0: the paper's training, "
        "target positives only).",
        **f,
    )
    flags.DEFINE_enum("optimizer", d_train.optimizer, config_lib.OPTIMIZERS, "Optimizer.", **f)
    flags.DEFINE_integer(
        "early_stopping_patience",
        d_train.early_stopping_patience,
        "Epochs without validation gain before stopping (0: off).",
        **f,
    )
    flags.DEFINE_enum(
        "early_stopping_protocol",
        d_train.early_stopping_protocol,
        config_lib.VALIDATION_PROTOCOLS,
        "Protocol of the validation HR@10 that stops training and picks the kept epoch: "
        "sampled (1 + 99), full (whole catalog; slower) or discovery (whole catalog without "
        "the user's touched items).",
        **f,
    )
    flags.DEFINE_integer(
        "steps_per_epoch", d_train.steps_per_epoch, "Cap on steps per epoch (0: a full pass).", **f
    )
    flags.DEFINE_integer(
        "steps_per_execution", d_train.steps_per_execution, "Steps per tf.function call.", **f
    )
    flags.DEFINE_enum(
        "distribution_strategy",
        d_train.distribution_strategy,
        config_lib.STRATEGIES,
        "tf.distribute strategy.",
        **f,
    )
    flags.DEFINE_enum(
        "mixed_precision",
        d_train.mixed_precision,
        config_lib.PRECISIONS,
        "Keras precision policy (mixed_float16 on GPUs).",
        **f,
    )
    flags.DEFINE_boolean(
        "jit_compile", d_train.jit_compile, "Compile the training step with XLA.", **f
    )
    flags.DEFINE_integer("verbose", d_train.verbose, "Keras verbosity (0, 1, 2).", **f)
    # Export.
    d_export = config_lib.ExportConfig()
    flags.DEFINE_string(
        "export_dir",
        d_export.export_dir,
        "Export a SavedModel for TensorFlow Serving to <export_dir>/<version>/ after "
        "training (and with --mode=export).",
        **f,
    )
    flags.DEFINE_integer("export_top_k", d_export.top_k, "K of the recommend signature.", **f)
    flags.DEFINE_integer(
        "retrieval_candidates",
        d_export.retrieval_candidates,
        "Items the MF retrieval stage passes to the full model in recommend.",
        **f,
    )
    flags.DEFINE_boolean(
        "exclude_seen", d_export.exclude_seen, "recommend leaves out training purchases.", **f
    )
    flags.DEFINE_integer(
        "export_version", d_export.version, "Version to write (0: the next one).", **f
    )
    flags.DEFINE_integer(
        "max_request_users",
        d_export.max_request_users,
        "Most users per recommend / retrieve request (memory grows with it).",
        **f,
    )
    flags.DEFINE_integer(
        "max_request_pairs",
        d_export.max_request_pairs,
        "Most pairs per serving_default request.",
        **f,
    )
    # Evaluation.
    flags.DEFINE_integer(
        "sampled_negatives",
        d_eval.sampled_negatives,
        "Negatives per case in the sampled protocol.",
        **f,
    )
    flags.DEFINE_list("eval_ks", [str(k) for k in d_eval.ks], "Full-ranking cut-offs.", **f)
    flags.DEFINE_integer("eval_batch_size", d_eval.batch_size, "Pairs scored per call.", **f)
    flags.DEFINE_boolean("full_ranking", d_eval.full_ranking, "Also run full ranking.", **f)
    flags.DEFINE_integer(
        "full_ranking_cases",
        d_eval.full_ranking_cases,
        "Rank at most this many held-out cases (a fixed seeded sample) against the whole "
        "catalog; 0 ranks every case. The sampled protocol always uses every case.",
        **f,
    )
    flags.DEFINE_integer(
        "valid_full_ranking_cases",
        d_eval.valid_full_ranking_cases,
        "The same limit for the validation cases (ranked every epoch when early stopping "
        "follows full ranking or discovery); 0 ranks every case.",
        **f,
    )
    flags.DEFINE_integer("eval_seed", d_eval.seed, "Seed of the sampled protocol.", **f)


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


def _pairs(values: list[str]) -> tuple[tuple[str, str], ...]:
    result = []
    for value in values:
        if "=" not in value:
            raise ValueError(f"--columns entry {value!r} is not field=column, e.g. user=uid.")
        field, column = value.split("=", 1)
        result.append((field.strip(), column.strip()))
    return tuple(result)


def _weights(values: list[str]) -> tuple[tuple[str, float], ...]:
    result = []
    for value in values:
        name, sep, weight = value.partition(":")
        try:
            result.append((name.strip(), float(weight)))
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(
                f"--behavior_weights entry {value!r} is not behavior:weight, e.g. buy:1,cart:0.5."
            ) from None
    return tuple(result)


def config_from_flags(fv: flags.FlagValues = flags.FLAGS) -> config_lib.ExperimentConfig:
    """Maps parsed flags to an ExperimentConfig (validated by its dataclasses)."""
    if not fv.model_dir:
        raise ValueError("--model_dir is required: checkpoints and results.json go there.")
    delimiter = "\t" if fv.delimiter in ("\\t", "tab") else fv.delimiter
    data = config_lib.DataConfig(
        data_path=fv.data_path,
        data_format=fv.data_format,
        columns=_pairs(fv.columns),
        delimiter=delimiter,
        has_header=fv.has_header,
        target_behavior=fv.target_behavior,
        supportive_behaviors=tuple(fv.supportive_behaviors),
        ignore_behaviors=tuple(fv.ignore_behaviors),
        on_bad_record=fv.on_bad_record,
        validation=fv.validation,
        seed=fv.seed,
        synthetic_users=fv.synthetic_users,
        synthetic_items=fv.synthetic_items,
        synthetic_records_per_user=fv.synthetic_records_per_user,
    )
    model = config_lib.ModelConfig(
        model=fv.model,
        mf_dim=fv.mf_dim,
        mlp_dim=fv.mlp_dim,
        mlp_layers=fv.mlp_layers,
        fusion_dim=fv.fusion_dim,
        gating=fv.gating,
        branch_loss_weight=fv.branch_loss_weight,
        init_stddev=fv.init_stddev,
        history_length=fv.history_length,
        shared_embeddings=fv.shared_embeddings,
        behavior_features=fv.behavior_features,
        behavior_init=fv.behavior_init,
        behavior_fit=fv.behavior_fit,
        l2=fv.l2,
        als_alpha=fv.als_alpha,
        als_l2=fv.als_l2,
        als_supportive_weight=fv.als_supportive_weight,
        als_iterations=fv.als_iterations,
        als_solver=fv.als_solver,
        mf_init=fv.mf_init,
    )
    train = config_lib.TrainConfig(
        epochs=fv.epochs,
        batch_size=fv.batch_size,
        learning_rate=fv.learning_rate,
        loss=fv.loss,
        num_negatives=fv.num_negatives,
        shared_negatives=fv.shared_negatives,
        negative_distribution=fv.negative_distribution,
        negative_exponent=fv.negative_exponent,
        temperature=fv.temperature,
        hard_negatives=fv.hard_negatives,
        behavior_weights=_weights(fv.behavior_weights),
        whole_data_weight=fv.whole_data_weight,
        supportive_negative_ratio=fv.supportive_negative_ratio,
        supportive_positive_weight=fv.supportive_positive_weight,
        optimizer=fv.optimizer,
        early_stopping_patience=fv.early_stopping_patience,
        early_stopping_protocol=fv.early_stopping_protocol,
        steps_per_epoch=fv.steps_per_epoch,
        steps_per_execution=fv.steps_per_execution,
        distribution_strategy=fv.distribution_strategy,
        mixed_precision=fv.mixed_precision,
        jit_compile=fv.jit_compile,
        seed=fv.seed,
        verbose=fv.verbose,
    )
    evaluation = config_lib.EvalConfig(
        sampled_negatives=fv.sampled_negatives,
        ks=tuple(int(k) for k in fv.eval_ks),
        batch_size=fv.eval_batch_size,
        full_ranking=fv.full_ranking,
        full_ranking_cases=fv.full_ranking_cases,
        valid_full_ranking_cases=fv.valid_full_ranking_cases,
        seed=fv.eval_seed,
    )
    export = config_lib.ExportConfig(
        export_dir=fv.export_dir,
        top_k=fv.export_top_k,
        retrieval_candidates=fv.retrieval_candidates,
        exclude_seen=fv.exclude_seen,
        version=fv.export_version,
        max_request_users=fv.max_request_users,
        max_request_pairs=fv.max_request_pairs,
    )
    return config_lib.ExperimentConfig(
        data=data,
        model=model,
        train=train,
        eval=evaluation,
        export=export,
        model_dir=fv.model_dir,
        mode=fv.mode,
    )


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy called `name`.

    `mirrored` uses every GPU, or, on a machine without one, every logical
    CPU device when there are several (this is how it is tested).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        # Before anything lists devices: that would initialize the runtime.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        cpus = tf.config.list_logical_devices("CPU")
        if not gpus and len(cpus) > 1:
            return tf.distribute.MirroredStrategy([d.name for d in cpus])
        return tf.distribute.MirroredStrategy()
    raise ValueError(
        f"distribution_strategy={name!r} is unknown: use one of {config_lib.STRATEGIES}."
    )


def dataset_name(config: config_lib.ExperimentConfig, given: str = "") -> str:
    if given:
        return given
    if config.data.data_format == "synthetic":
        return "synthetic"
    first = config.data.data_path.split(",")[0]
    return os.path.basename(os.path.dirname(os.path.abspath(first))) or first


def run_experiment(
    config: config_lib.ExperimentConfig,
    *,
    name: str = "",
    on_validation: Callable[[int, dict], None] | None = None,
) -> dict:
    """Loads data, trains and/or evaluates, and writes results.json.

    Args:
      config: the experiment.
      name: the dataset name for results.json (derived when empty).
      on_validation: called with (epoch, validation metrics of the early
        stopping protocol) after each epoch (a tuner reports and prunes
        through it; an exception it raises ends the run).

    Returns:
      The results dict that was written to `<model_dir>/results.json`.
    """
    # Multi-worker collectives must be configured before any other TensorFlow op.
    strategy = make_strategy(config.train.distribution_strategy)
    tf_keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    model_dir = config.model_dir
    if not train_lib.is_chief(strategy):
        # Only the chief writes into model_dir (checkpoints, exports, results);
        # another worker keeps its own records in a subfolder.
        resolver = strategy.cluster_resolver
        model_dir = os.path.join(model_dir, "workers", f"{resolver.task_type}_{resolver.task_id}")
    os.makedirs(model_dir, exist_ok=True)
    with locks.exclusive(model_dir, what="--model_dir"):
        return _run_locked(config, strategy, model_dir, name, on_validation)


def _trained(model_dir: str) -> bool:
    """Whether a run has trained (or fitted) anything in `model_dir`."""
    return bool(
        tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        or os.path.exists(os.path.join(model_dir, "results.json"))
    )


def _run_locked(config, strategy, model_dir: str, name: str, on_validation) -> dict:
    tf_keras.utils.set_random_seed(config.train.seed)
    started = time.perf_counter()
    data, split = loading.load(config.data, work_dir=model_dir)
    load_seconds = time.perf_counter() - started
    report = data.report.to_dict()
    print(f"data: {data.report.summary()}")
    if data.report.skipped or data.report.empty_files:
        for example in data.report.examples[:5]:
            print(f"  skipped {example[0]}:{example[1]}: {example[2]}: {example[3]!r}")
    print(f"split: {split.info}")
    data_fingerprint = run_record.fingerprint(data, split)
    training = config.mode in ("train", "train_and_evaluate")
    if training and not _trained(model_dir):
        # A new run: its record, data report and vocabularies, written once.
        run_record.write(model_dir, config, data_fingerprint)
        run_record.write_json(
            os.path.join(model_dir, "data_report.json"), {"report": report, "split": split.info}
        )
        data.user_vocab.save(os.path.join(model_dir, "vocab", "users.txt"))
        data.item_vocab.save(os.path.join(model_dir, "vocab", "items.txt"))
        vocabularies.Vocabulary(np.array(split.behaviors.behaviors, dtype=object)).save(
            os.path.join(model_dir, "vocab", "behaviors.txt")
        )
    else:
        # A resume, an evaluation or an export reads the record and writes
        # nothing over the run's files.
        run_record.check(model_dir, config, data_fingerprint, training=training)

    if config.mode == "evaluate_export":
        return _evaluate_export(config, data, split, name)
    results = {
        "dataset": name or dataset_name(config),
        "model": config.model.model,
        "seed": config.train.seed,
        "behaviors": list(split.behaviors.behaviors),
        "num_users": split.num_users,
        "num_items": split.num_items,
        "data_report": {
            k: report[k]
            for k in ("lines", "records", "skipped", "bad_records", "excluded_behaviors")
        },
        "split": split.info,
        "seconds": {"load": round(load_seconds, 2)},
    }
    if config.model.model in ("als", "popular"):
        return _run_fitted(config, data, split, model_dir, results)
    with strategy.scope():
        ranker = models.build_ranker(
            config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
        )
    if config.model.history_length:
        models.set_histories(
            ranker.scorer,
            histories.build(split, length=config.model.history_length, seed=config.data.seed),
            target=split.behaviors.target,
        )
    num_behaviors = split.behaviors.num_behaviors
    valid_cases = (
        evaluate.EvalCases.build(split, "valid", config.eval) if len(split.valid_users) else None
    )

    index = samplers.TrainingIndex.from_split(split)
    bias = models.behavior_bias(ranker.scorer)
    if bias is not None and config.model.behavior_init == "lift":
        lift = models.behavior_lift(index)
        bias.kernel.assign(lift)
        start = {b: round(float(w), 3) for b, w in zip(split.behaviors.behaviors[1:], lift)}
        print(f"behavior feature weights start at {start}")
    if config.model.mf_init != "random" and config.mode in ("train", "train_and_evaluate"):
        seconds = _start_from_als(ranker.scorer, config, split)
        results["seconds"]["mf_init"] = round(seconds, 2)
    score = evaluate.Scorer(ranker.scorer, num_behaviors, config.eval.batch_size, index=index)

    protocol = config.train.early_stopping_protocol

    epochs_validated = [0]

    def validation():
        metrics = evaluate.evaluate(
            score,
            valid_cases,
            config=config.eval,
            protocols=(protocol,),
            case_limit=config.eval.valid_full_ranking_cases,
        )[protocol]
        epochs_validated[0] += 1
        if on_validation is not None:
            on_validation(epochs_validated[0], metrics)
        return metrics

    if config.mode in ("train", "train_and_evaluate"):
        started = time.perf_counter()
        result = train_lib.train(
            ranker=ranker,
            index=index,
            config=config.train,
            model_dir=model_dir,
            validation=validation if valid_cases is not None else None,
            validate_start=config.model.mf_init != "random",
        )
        results["seconds"]["train"] = round(time.perf_counter() - started, 2)
        results["train"] = {k: v for k, v in result.to_dict().items() if k != "history"}
        # A fingerprint of the trained weights: replicas of one run must agree.
        results["train"]["weights_sum_abs"] = float(
            sum(np.abs(w).sum(dtype=np.float64) for w in ranker.scorer.get_weights())
        )
        if bias is not None:
            # The kept epoch's offsets, in logits, per supportive behavior.
            results["train"]["behavior_weights"] = {
                b: round(float(w), 4)
                for b, w in zip(split.behaviors.behaviors[1:], bias.kernel.numpy())
            }
    else:
        _restore_for_evaluation(ranker, model_dir)
    if config.mode in ("evaluate", "train_and_evaluate"):
        started = time.perf_counter()
        test_cases = evaluate.EvalCases.build(split, "test", config.eval)
        results["test"] = evaluate.evaluate(score, test_cases, config=config.eval)
        if valid_cases is not None:
            results["validation"] = evaluate.evaluate(
                score,
                valid_cases,
                config=config.eval,
                case_limit=config.eval.valid_full_ranking_cases,
            )
        retrieval = evaluate.retrieval_metrics(ranker.scorer, test_cases, config=config.eval)
        if retrieval is not None:
            results["test"]["retrieval"] = retrieval
        results["seconds"]["evaluate"] = round(time.perf_counter() - started, 2)
        _print_metrics(results)
    exporting = config.mode in ("train", "train_and_evaluate", "export")
    if config.export.export_dir and exporting and train_lib.is_chief(strategy):
        _export(config, ranker.scorer, data, split, results)
    # An evaluation or an export leaves the training run's results.json as it was.
    name = {"export": "export.json", "evaluate": "evaluation.json"}.get(config.mode, "results.json")
    run_record.write_json(os.path.join(model_dir, name), results)
    return results


def _als_config(config: config_lib.ExperimentConfig) -> als.ALSConfig:
    m = config.model
    return als.ALSConfig(
        factors=m.mf_dim,
        l2=m.als_l2,
        alpha=m.als_alpha,
        supportive_weight=m.als_supportive_weight,
        iterations=m.als_iterations,
        seed=config.train.seed,
        solver=m.als_solver,
    )


def _start_from_als(scorer, config: config_lib.ExperimentConfig, split) -> float:
    """--mf_init=als|als_fixed: the MF part starts at the ALS factors (`--als_*` flags).

    The head's MF weights start at 1 and its weights on the branches' fusion
    at 0, so the first logit is the ALS score (plus the behavior offsets,
    when there are any) and the branches start as a zero residual: training
    can only move away from the ALS ranking where the loss says so, and the
    start is validated as epoch 0. `als_fixed` keeps the MF tables at the
    ALS factors. Only a fresh run starts so: a resumed run restores its
    checkpoint over these values (the tables stay fixed either way).
    """
    mf, _, _, head = models.parts(scorer)
    if mf is None or mf.history_length:
        raise ValueError(
            "mf_init='als' needs an MF part without user histories (the ALS user factor is "
            "the whole user vector): use --model=mmf|ncf|gmf with --history_length=0."
        )
    x, y, seconds = als.fit(split, _als_config(config), verbose=config.train.verbose > 0)
    mf.user_embedding.set_weights([x.astype(np.float32)])
    mf.item_embedding.set_weights([y.astype(np.float32)])
    kernel, bias = head.get_weights()
    kernel[: mf.embedding_dim] = 1.0
    kernel[mf.embedding_dim :] = 0.0
    head.set_weights([kernel, bias])
    if config.model.mf_init == "als_fixed":
        mf.user_embedding.trainable = False
        mf.item_embedding.trainable = False
    print(f"MF part starts at the ALS factors ({seconds:.1f} s)")
    return seconds


def _export(config, scorer, data, split, results: dict) -> None:
    """Exports `scorer` as a new SavedModel version; records it in `results`."""
    started = time.perf_counter()
    module = serving.from_training(
        scorer,
        split,
        user_tokens=data.user_vocab.tokens,
        item_tokens=data.item_vocab.tokens,
        top_k=config.export.top_k,
        retrieval_candidates=config.export.retrieval_candidates,
        exclude_seen=config.export.exclude_seen,
        max_request_users=config.export.max_request_users,
        max_request_pairs=config.export.max_request_pairs,
    )
    path = exporter.export(
        module,
        config.export.export_dir,
        warmup_user_ids=list(data.user_vocab.tokens[split.test_users[:4]]),
        warmup_item_ids=list(data.item_vocab.tokens[split.test_items[:4]]),
        version=config.export.version or None,
    )
    results["export"] = {"path": path, "seconds": round(time.perf_counter() - started, 2)}
    print(f"exported {path}")
    if config.mode == "train_and_evaluate":
        # The same two-stage figures from the in-memory module, for
        # comparison with --mode=evaluate_export on the SavedModel.
        results["test"]["two_stage_in_memory"] = export_evaluation.evaluate_signatures(
            {"retrieve": module.retrieve, "recommend": module.recommend},
            users=split.test_users,
            items=split.test_items,
            user_tokens=data.user_vocab.tokens,
            item_tokens=data.item_vocab.tokens,
            retrieval_ks=config.eval.retrieval_ks,
            touched_keys=splits_lib.train_pair_keys(split),
        )


def _run_fitted(config, data, split, model_dir: str, results: dict) -> dict:
    """--model=als (weighted ALS) or popular, in the same split and evaluation.

    `results` holds what every run records (dataset, data report, split,
    load time); the fit and both protocols are added to it.
    """
    m = config.model
    if config.mode not in ("train", "train_and_evaluate"):
        raise ValueError(
            f"--model={m.model} runs with --mode=train_and_evaluate (or train: validation "
            f"only; either exports with --export_dir), not --mode={config.mode}: it fits, "
            "evaluates and exports in one go."
        )
    if m.behavior_features:
        models.require_supportive(split.behaviors)
    index = None
    if m.model == "popular" or m.behavior_features:
        index = samplers.TrainingIndex.from_split(split)
    if m.model == "popular":
        started = time.perf_counter()
        score = popularity.PopularityScorer(index)
        results["seconds"]["train"] = round(time.perf_counter() - started, 2)
        results["train"] = {"popular": {"behavior_features": m.behavior_features}}
    else:
        als_config = _als_config(config)
        user_factors, item_factors, seconds = als.fit(
            split, als_config, verbose=config.train.verbose > 0
        )
        score = als.FactorScorer(user_factors, item_factors)
        results["seconds"]["train"] = round(seconds, 2)
        results["train"] = {
            "als": dataclasses.asdict(als_config),
            "behavior_features": m.behavior_features,
        }
    if m.behavior_features:
        score = popularity.TouchedFirst(score, index)
    started = time.perf_counter()
    if config.mode == "train_and_evaluate":
        results["test"] = evaluate.evaluate(
            score, evaluate.EvalCases.build(split, "test", config.eval), config=config.eval
        )
    if len(split.valid_users):
        valid_cases = evaluate.EvalCases.build(split, "valid", config.eval)
        results["validation"] = evaluate.evaluate(
            score, valid_cases, config=config.eval, case_limit=config.eval.valid_full_ranking_cases
        )
    results["seconds"]["evaluate"] = round(time.perf_counter() - started, 2)
    if "test" in results:
        _print_metrics(results)
    if config.export.export_dir:
        # The same signatures as the neural models: a GMF scorer computing
        # exactly the fitted scores (export.fitted).
        scorer = fitted_export.as_scorer(
            score, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
        )
        _export(config, scorer, data, split, results)
    run_record.write_json(os.path.join(model_dir, "results.json"), results)
    return results


def _evaluate_export(config: config_lib.ExperimentConfig, data, split, name: str) -> dict:
    """--mode=evaluate_export: the SavedModel alone, on the test split."""
    present = exporter.versions(config.export.export_dir)
    version = config.export.version or (present[-1] if present else None)
    path = os.path.join(config.export.export_dir, str(version))
    if version is None or not os.path.isdir(path):
        raise FileNotFoundError(
            f"no export version {version or ''} in {config.export.export_dir}: export first "
            "(--export_dir with training, or --mode=export)."
        )
    started = time.perf_counter()
    metrics = export_evaluation.evaluate_export(
        path,
        users=split.test_users,
        items=split.test_items,
        user_tokens=data.user_vocab.tokens,
        item_tokens=data.item_vocab.tokens,
        retrieval_ks=config.eval.retrieval_ks,
        touched_keys=splits_lib.train_pair_keys(split),
    )
    results = {
        "dataset": name or dataset_name(config),
        "export": path,
        "test": metrics,
        "seconds": {"evaluate": round(time.perf_counter() - started, 2)},
    }
    print(f"export {path}: retrieval {metrics['retrieval']}")
    print(f"export {path}: recommend {metrics['recommend']}")
    print(f"export {path}: recommend, discovery {metrics['recommend_discovery']}")
    run_record.write_json(os.path.join(config.model_dir, "export_evaluation.json"), results)
    return results


def _restore_for_evaluation(ranker: models.Ranker, model_dir: str) -> None:
    """Loads the best validation weights, else the latest checkpoint."""
    best = os.path.join(model_dir, "best", "weights")
    if os.path.exists(best + ".index"):
        # Every saved weight must find its variable and every variable its
        # value: a checkpoint of another model is an error, not a partial load.
        ranker.scorer.load_weights(best).assert_consumed()
        return
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(
            f"--mode=evaluate found no checkpoint in {model_dir}: train "
            "first (--mode=train) or point --model_dir at a trained run."
        )
    tf.train.Checkpoint(model=ranker).restore(
        latest
    ).expect_partial().assert_existing_objects_matched()


def _print_metrics(results: dict) -> None:
    test = results["test"]
    s = test["sampled"]
    print(
        f"test sampled ({s['protocol']}): HR@10 {s['HR@10']:.4f} ± {s['HR@10_se']:.4f}  "
        f"NDCG@10 {s['NDCG@10']:.4f} ± {s['NDCG@10_se']:.4f}  cases {s['cases']}"
    )
    for name, title in (("full", "full ranking"), ("discovery", "discovery")):
        if name in test and not test[name]["cases"]:
            print(f"test {title}: no case ({test[name]['protocol']})")
        elif name in test:
            f = test[name]
            print(
                f"test {title} ({f['protocol']}): HR@10 {f['HR@10']:.4f} ± "
                f"{f['HR@10_se']:.4f}  NDCG@10 {f['NDCG@10']:.4f} ± {f['NDCG@10_se']:.4f}  "
                f"cases {f['cases']}"
            )
    if "retrieval" in test:
        print(f"test retrieval (TFRS FactorizedTopK, MF stage): {test['retrieval']}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config = config_from_flags(flags.FLAGS)
    run_experiment(config, name=flags.FLAGS.dataset_name)


def run():
    define_flags(flags.FLAGS)
    app.run(main)


if __name__ == "__main__":
    sys.exit(run())
