"""One run as a library call: load, build, train, evaluate, export.

    from mmrec_tf import config, run
    results = run.run(config.ExperimentConfig(model_dir="runs/demo"))

`run(config)` loads and splits the log, builds the model named by
`config.model`, trains it (or fits ALS / popularity), evaluates it under the
sampled, full-ranking and discovery protocols, exports it when
`config.export.export_dir` is set, and writes `results.json` (dataset,
model, seed, validation and test metrics, TFRS retrieval metrics, training
summary) into `config.model_dir`. The command line (`mmrec_tf.main`) and the
tuner call it; so do the tests. Its steps are functions of their own:
`load`, `build`, `train`, `test` (and the export); the baselines that learn
nothing are fitted by `baselines.fit`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from mmrec_tf import baselines
from mmrec_tf import blend
from mmrec_tf import cluster
from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import locks
from mmrec_tf import models
from mmrec_tf import ranking
from mmrec_tf import run_record
from mmrec_tf import train as train_lib
from mmrec_tf.export import cascade as cascade_export
from mmrec_tf.export import evaluation as export_evaluation
from mmrec_tf.export import exporter
from mmrec_tf.export import fitted as fitted_export
from mmrec_tf.export import serving
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import histories
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits as splits_lib
from mmrec_tf.pipelines import training_index
from mmrec_tf.pipelines import vocabularies


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


def run(
    config: config_lib.ExperimentConfig,
    *,
    name: str = "",
    on_validation: Callable[[int, dict], None] | None = None,
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Loads data, trains and/or evaluates, and writes results.json.

    Args:
      config: the experiment.
      name: the dataset name for results.json (derived when empty).
      on_validation: called with (epoch, validation metrics of the early
        stopping protocol) after each epoch (a tuner reports and prunes
        through it; an exception it raises ends the run).
      strategy: the strategy to train under, instead of the one
        `config.train.distribution_strategy` names (e.g. a
        `cluster.local_cluster()`).

    Returns:
      The results dict that was written to `<model_dir>/results.json` (empty
      for a parameter-server cluster's worker or ps task, which serves until
      it is stopped).
    """
    if strategy is None and config.train.distribution_strategy == "parameter_server":
        resolver = cluster.resolver_from_environment()
        if cluster.is_server(resolver):
            cluster.serve(resolver)
            return {}
        strategy = cluster.strategy(resolver)
    # Multi-worker collectives must be configured before any other TensorFlow op.
    strategy = strategy or make_strategy(config.train.distribution_strategy)
    tf_keras.mixed_precision.set_global_policy(config.train.mixed_precision)
    model_dir = config.model_dir
    if not train_lib.is_chief(strategy):
        # Only the chief writes into model_dir (checkpoints, exports, results);
        # another worker keeps its own records in a subfolder.
        resolver = strategy.cluster_resolver
        model_dir = os.path.join(model_dir, "workers", f"{resolver.task_type}_{resolver.task_id}")
    os.makedirs(model_dir, exist_ok=True)
    with contextlib.ExitStack() as held:
        # Both folders are locked before the slow work (reading, training), so
        # a second command on either fails at once, not after an hour.
        held.enter_context(locks.exclusive(model_dir, what="--model_dir"))
        if _will_export(config, strategy):
            os.makedirs(config.export.export_dir, exist_ok=True)
            held.enter_context(locks.exclusive(config.export.export_dir, what="--export_dir"))
        return _run_locked(config, strategy, model_dir, name, on_validation)


def _will_export(config: config_lib.ExperimentConfig, strategy) -> bool:
    exporting = config.mode in ("train", "train_and_evaluate", "export")
    return bool(config.export.export_dir) and exporting and train_lib.is_chief(strategy)


def _trained(model_dir: str) -> bool:
    """Whether a run has trained (or fitted) anything in `model_dir`."""
    return bool(
        tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        or os.path.exists(os.path.join(model_dir, "results.json"))
    )


def _run_locked(config, strategy, model_dir: str, name: str, on_validation) -> dict:
    tf_keras.utils.set_random_seed(config.train.seed)
    data, split, results = load(config, model_dir, name)
    if config.mode == "evaluate_export":
        return _evaluate_export(config, data, split, name)
    if config.model.model in ("als", "popular", "cascade"):
        return _run_fitted(config, data, split, model_dir, results)
    ranker, index = build(config, split, strategy)
    if cluster.is_parameter_server(strategy):
        results["cluster"] = cluster.describe(ranker.scorer)
    valid_cases = (
        evaluate.EvalCases.build(split, "valid", config.eval, touched_keys=index.keys)
        if len(split.valid_users)
        else None
    )
    signals = None
    if config.model.graph_signals:
        started = time.perf_counter()
        signals = graph_signals.GraphSignals(split)
        results["seconds"]["graph_signals"] = round(time.perf_counter() - started, 2)
    score = _scoring(config, split, index, signals, ranker.scorer)
    if config.mode in ("train", "train_and_evaluate"):
        train(
            config,
            ranker,
            index,
            split,
            model_dir,
            results,
            score,
            valid_cases,
            on_validation,
            signals=signals,
        )
    else:
        _restore_for_evaluation(ranker, model_dir)
    if cluster.is_parameter_server(strategy):
        # The test evaluation and the export read one whole copy of the tables.
        ranker = ranking.Ranker(_gathered(config, split, ranker, model_dir), task=ranker.task)
        score = _scoring(config, split, index, signals, ranker.scorer)
    if config.model.cascade_blend:
        score = _blended(config, split, score, valid_cases, model_dir, results)
    if config.mode in ("evaluate", "train_and_evaluate"):
        test(config, ranker, index, split, results, score, valid_cases)
    if _will_export(config, strategy):
        _export(
            config,
            ranker.scorer,
            data,
            split,
            results,
            signals=signals,
            blended=score if config.model.cascade_blend else None,
        )
    # An evaluation or an export leaves the training run's results.json as it was.
    name = {"export": "export.json", "evaluate": "evaluation.json"}.get(config.mode, "results.json")
    run_record.write_json(os.path.join(model_dir, name), results)
    return results


def load(config: config_lib.ExperimentConfig, model_dir: str, name: str = ""):
    """Step 1: reads and splits the log; writes a new run's record or checks a resumed one.

    Returns:
      (data, split, the results dict that every run records: dataset, data
       report, split, load time).
    """
    started = time.perf_counter()
    data, split = loading.load(config.data, work_dir=model_dir, seed=config.train.seed)
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
        recorded = run_record.check(model_dir, config, data_fingerprint, training=training)
        if not recorded and _trained(model_dir):
            raise run_record.RunRecordError(
                f"{model_dir} holds a trained run but no {run_record.CONFIG} saying how it was "
                "trained, so this command cannot be checked against it. Restore the file from "
                "a copy of the run, or give a new --model_dir for a new run."
            )
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
    return data, split, results


def build(config: config_lib.ExperimentConfig, split, strategy: tf.distribute.Strategy):
    """Step 2: the Ranker under `strategy`, its histories, and the training index.

    Returns:
      (ranker, training index).
    """
    with strategy.scope():
        ranker = ranking.build_ranker(
            config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
        )
    if config.model.history_length:
        models.set_histories(
            ranker.scorer,
            histories.build(split, length=config.model.history_length, seed=config.train.seed),
            target=split.behaviors.target,
        )
    index = training_index.TrainingIndex.from_split(split)
    return ranker, index


def _scoring(config: config_lib.ExperimentConfig, split, index, signals, scorer):
    """The `evaluate.Scorer` of `scorer` on this run's data (behaviors, pairs, graphs)."""
    return evaluate.Scorer(
        scorer,
        split.behaviors.num_behaviors,
        config.eval.batch_size,
        index=index,
        signals=signals,
    )


def _gathered(config: config_lib.ExperimentConfig, split, ranker, model_dir: str):
    """The ranker's scorer with its sharded tables gathered whole on this process."""
    return cluster.gathered(ranker.scorer, lambda: _scorer(config, split), model_dir)


def _scorer(config: config_lib.ExperimentConfig, split):
    """A new scorer of `config`'s architecture for `split`, with its histories."""
    scorer = models.build_model(
        config.model,
        num_users=split.num_users,
        num_items=split.num_items,
        behaviors=split.behaviors,
    )
    if config.model.history_length:
        models.set_histories(
            scorer,
            histories.build(split, length=config.model.history_length, seed=config.train.seed),
            target=split.behaviors.target,
        )
    return scorer


def train(
    config,
    ranker,
    index,
    split,
    model_dir,
    results,
    score,
    valid_cases,
    on_validation=None,
    *,
    signals=None,
) -> None:
    """Step 3: the ALS start when asked, then training with validation; into `results`.

    `signals` (a `graph_signals.GraphSignals` of the training graph) feed a
    scorer built with `graph_signals`.
    """
    if config.model.mf_init != "random":
        start = start_from_als(ranker.scorer, config, split)
        results["seconds"]["mf_init"] = start.pop("seconds")
        if start:
            results["behavior_init"] = {**start, "kept": "touched_first"}
    epochs_validated = [0]

    def validation():
        current = score
        if cluster.is_parameter_server(ranker.distribute_strategy):
            # Scoring reads one whole copy of the tables, not the shards.
            current = _scoring(
                config, split, index, signals, _gathered(config, split, ranker, model_dir)
            )
        metrics = validation_metrics(config, current, valid_cases)
        epochs_validated[0] += 1
        if on_validation is not None:
            on_validation(epochs_validated[0], metrics)
        return metrics

    started = time.perf_counter()
    result = train_lib.train(
        ranker=ranker,
        index=index,
        config=config.train,
        model_dir=model_dir,
        validation=validation if valid_cases is not None else None,
        validate_start=config.model.mf_init != "random",
        signals=signals,
    )
    results["seconds"]["train"] = round(time.perf_counter() - started, 2)
    results["train"] = {k: v for k, v in result.to_dict().items() if k != "history"}
    # A fingerprint of the trained weights: replicas of one run must agree.
    results["train"]["weights_sum_abs"] = float(
        sum(np.abs(w).sum(dtype=np.float64) for w in ranker.scorer.get_weights())
    )
    offsets = ranker.scorer.behavior_offsets()
    if offsets is not None:
        # The kept epoch's offsets, in logits, per supportive behavior.
        results["train"]["behavior_weights"] = {b: round(w, 4) for b, w in offsets.items()}


def test(config, ranker, index, split, results, score, valid_cases) -> None:
    """Step 4: the three protocols on the test cases (and validation); into `results`."""
    started = time.perf_counter()
    test_cases = evaluate.EvalCases.build(split, "test", config.eval, touched_keys=index.keys)
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


def _blended(config, split, score, valid_cases, model_dir: str, results: dict):
    """--cascade_blend: the blend of `score` and CascadingRank, its weight chosen on validation.

    A training run chooses the weight and records it (`blend.RECORD`); an
    evaluation or an export reads it.
    """
    started = time.perf_counter()
    ranker = baselines.cascade.CascadeScorer(split, blend.cascade_settings(config.model))
    if config.mode in ("train", "train_and_evaluate"):
        if valid_cases is None:
            raise ValueError(
                "--cascade_blend chooses its weight on the validation cases, and this split has "
                "none (no test user has two or more target records): drop --cascade_blend."
            )
        record = blend.choose(score, ranker, valid_cases, config)
        blend.save(model_dir, record)
        print(
            f"blend with CascadingRank: validation {record['protocol']} HR@10 by weight "
            f"{record['HR@10']}; kept weight {record['weight']:g}",
            flush=True,
        )
    else:
        record = blend.load(model_dir)
    results["cascade_blend"] = record
    results["seconds"]["blend"] = round(time.perf_counter() - started, 2)
    return blend.Blended(score, ranker, record["weight"])


def validation_metrics(config: config_lib.ExperimentConfig, score, valid_cases) -> dict:
    """The early-stopping protocol's metrics on the (seeded sample of the) validation cases."""
    protocol = config.train.early_stopping_protocol
    return evaluate.evaluate(
        score,
        valid_cases,
        config=config.eval,
        protocols=(protocol,),
        case_limit=config.eval.valid_full_ranking_cases,
        # For the paired comparison of --early_stopping_margin.
        case_hits=True,
    )[protocol]


def start_from_als(scorer, config: config_lib.ExperimentConfig, split) -> dict:
    """--mf_init=als|als_fixed: the scorer starts at the ALS (`--als_*` flags) it is fitted here.

    `Scorer.start_from_factors` makes the first logit the ALS score (the
    branches a zero residual), `als_fixed` holding the MF tables there; with
    --behavior_init=touched_first the offsets start at
    `Scorer.touched_first_offset` ("ALS, touched items first"). The start is
    validated as epoch 0. Only a fresh run starts so: a resumed run restores
    its checkpoint over these values (the tables stay fixed either way).

    Returns:
      What was started, for results.json.
    """
    x, y, seconds, cached = baselines.fit_factors(
        split,
        baselines.als_config(config.model, config.train.seed),
        cache_dir=baselines.cache_folder(),
        verbose=config.train.verbose > 0,
    )
    scorer.start_from_factors(x, y, trainable=config.model.mf_init == "als")
    print(f"MF part starts at the ALS factors ({seconds:.1f} s{', ' + cached if cached else ''})")
    record = {"seconds": round(seconds, 2)}
    if config.model.behavior_init == "touched_first":
        offset = scorer.touched_first_offset()
        scorer.set_behavior_offsets([offset] * len(split.behaviors.supportive))
        record["touched_first_offset"] = round(offset, 4)
    return record


def _export(config, scorer, data, split, results: dict, signals=None, blended=None) -> None:
    """Exports `scorer` (a Keras scorer, or a fitted CascadeScorer) as a new SavedModel version.

    `blended`: a `blend.Blended` of `scorer`'s logits (--cascade_blend), whose
    cascade and weight the export computes per request.
    """
    started = time.perf_counter()
    if isinstance(scorer, baselines.cascade.CascadeScorer):
        build = cascade_export.from_training
    else:
        m = config.model
        build = functools.partial(
            serving.from_training,
            signals=signals,
            fold_in=(m.als_alpha, m.als_l2, m.als_supportive_weight),
            cascade=cascade_export.Propagation(blended.cascade) if blended else None,
            cascade_weight=blended.weight if blended else 0.0,
        )
    module = build(
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
        training_data=run_record.fingerprint(data, split),
        locked=True,  # `run` holds the export folder's lock
    )
    results["export"] = {"path": path, "seconds": round(time.perf_counter() - started, 2)}
    print(f"exported {path}")
    if config.mode == "train_and_evaluate":
        # The same two-stage figures from the in-memory module, for
        # comparison with --mode=evaluate_export on the SavedModel.
        results["test"]["two_stage_in_memory"] = _signature_metrics(
            {schema.RETRIEVE: module.retrieve, schema.RECOMMEND: module.recommend},
            config,
            data,
            split,
            limits=exporter.module_request_limits(module),
        )


# Users per call when the two-stage metrics go through the signatures (fewer
# where the export's request limit is lower).
EVAL_SIGNATURE_BATCH = 1024


def _signature_metrics(signatures, config, data, split, *, limits: dict) -> dict:
    """Two-stage test metrics through `retrieve` and `recommend` (in memory or loaded).

    `limits`: the export's request limits; the users go in batches its
    signatures accept.
    """
    return export_evaluation.evaluate_signatures(
        signatures,
        users=split.test_users,
        items=split.test_items,
        user_tokens=data.user_vocab.tokens,
        item_tokens=data.item_vocab.tokens,
        retrieval_ks=config.eval.retrieval_ks,
        touched_keys=splits_lib.train_pair_keys(split),
        batch_size=min(EVAL_SIGNATURE_BATCH, limits.get("max_request_users", EVAL_SIGNATURE_BATCH)),
    )


def _run_fitted(config, data, split, model_dir: str, results: dict) -> dict:
    """--model=als (weighted ALS), popular or cascade, in the same split and evaluation.

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
    score, record, seconds = baselines.fit(config, split)
    results["seconds"]["train"] = round(seconds, 2)
    results["train"] = record
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
    if config.export.export_dir and m.model == "cascade":
        # The graphs themselves, propagated per request (export.cascade).
        _export(config, score, data, split, results)
    elif config.export.export_dir:
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
    version = present[-1] if present else None
    path = os.path.join(config.export.export_dir, str(version))
    if version is None or not os.path.isdir(path):
        raise FileNotFoundError(
            f"no export version {version or ''} in {config.export.export_dir}: export first "
            "(--export_dir with training, or --mode=export)."
        )
    _check_export_knows_the_data(path, data, split)
    started = time.perf_counter()
    try:
        loaded = tf.saved_model.load(path)
    except (tf.errors.OpError, OSError, ValueError) as error:
        raise run_record.damaged(
            path,
            error,
            "The export cannot be loaded: export the run again (--mode=export writes the "
            "next version), and serve that one.",
        ) from None
    metrics = _signature_metrics(
        loaded.signatures, config, data, split, limits=exporter.request_limits(path)
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


# Below this share of the test users (or items) in an export's vocabulary,
# the export was trained on other data.
PLAUSIBLE_OVERLAP = 0.5


def _check_export_knows_the_data(path: str, data, split) -> None:
    """Refuses an export whose vocabularies hold too few of the test cases' ids."""
    record_path = os.path.join(path, "assets.extra", exporter.TRAINING_DATA)
    trained_on = "not recorded (an export from before the record was kept)"
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        files = ", ".join(f["path"] for f in record.get("files", [])) or "synthetic data"
        trained_on = (
            f"{files}: {record.get('records')} records, content sha256 "
            f"{str(record.get('content_sha256'))[:16]}"
        )
    print(f"export {path} was trained on {trained_on}")
    shares = {}
    for name, vocab, ids in (
        ("users", data.user_vocab.tokens, split.test_users),
        ("items", data.item_vocab.tokens, split.test_items),
    ):
        with open(os.path.join(path, "assets", f"{name}.txt"), encoding="utf-8") as f:
            known = set(f.read().splitlines())
        tokens = {str(t) for t in vocab[np.unique(ids)]}
        shares[name] = len(tokens & known) / max(len(tokens), 1)
    if min(shares.values()) < PLAUSIBLE_OVERLAP:
        raise ValueError(
            f"the export {path} does not know this data: {shares['users']:.1%} of the test "
            f"users and {shares['items']:.1%} of the test items are in its vocabularies (it "
            f"was trained on {trained_on}). Evaluate it on its own data (--data_path), or "
            "export a model trained on this data."
        )


def _restore_for_evaluation(ranker: ranking.Ranker, model_dir: str) -> None:
    """Loads the best validation weights, else the latest checkpoint."""
    best = os.path.join(model_dir, "best", "weights")
    if os.path.exists(best + ".index"):
        # Every saved weight must find its variable and every variable its
        # value: a checkpoint of another model is an error, not a partial load.
        train_lib.load_best(ranker.scorer, best)
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
