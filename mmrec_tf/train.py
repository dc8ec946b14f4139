"""Keras training with checkpoints, resume, TensorBoard and early stopping.

State that a restarted run needs lives in one `tf.train.Checkpoint` per epoch
under `<model_dir>/checkpoints`: the model, the optimizer (moments included),
the epochs done, and the early-stopping state. A run started again with the
same `model_dir` resumes after the last completed epoch; negatives are drawn
per (seed, epoch), so the resumed run sees the examples an uninterrupted run
would (except where parameter-server workers draw their own batches,
`worker_input`, whose draws are not repeatable). The weights of the best validation epoch are kept under
`<model_dir>/best` and restored when training ends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tf_keras

from mmrec_tf import cluster
from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import optimizers
from mmrec_tf import ranking
from mmrec_tf import run_record
from mmrec_tf.pipelines import datasets
from mmrec_tf.pipelines import training_index
from mmrec_tf.pipelines import worker_input

VALIDATION_METRIC = "HR@10"


@dataclasses.dataclass
class TrainResult:
    """What training did.

    Attributes:
      epochs_completed: epochs trained, across resumes.
      resumed_from_epoch: the epoch this run started at (0 when fresh).
      best_epoch: the epoch whose weights were kept (1-based; 0 if none).
      best_validation: the validation metrics of that epoch.
      stopped_early: whether early stopping ended training.
      history: one dict per epoch: loss, pair_accuracy, validation metrics,
        seconds and examples per second.
      input_pipeline: who drew the batches: `local` (this process's
        pipeline), or on a parameter-server cluster `per_worker` (each
        worker, `worker_input`) or `chief` (the chief's sampler).
    """

    epochs_completed: int
    resumed_from_epoch: int
    best_epoch: int
    best_validation: dict | None
    stopped_early: bool
    history: list
    input_pipeline: str = "local"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _State(tf.Module):
    """Training progress saved with each checkpoint."""

    def __init__(self):
        super().__init__()
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        self.stopped = tf.Variable(False, trainable=False, name="stopped")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this task writes checkpoints and exports (always, off a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (
        task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict()
    )


class _Kept:
    """The kept epoch's weights and per-case validation hits, and the rule that replaces them.

    An epoch replaces the kept one when its validation HR@10 is higher, and,
    with `margin` > 0, higher by more than `margin` standard errors of the
    per-case difference of the two epochs' hits (the same validation cases
    scored by both). The hits are saved beside the weights, so a resumed run
    compares against the same kept epoch.
    """

    def __init__(self, state, scorer, best_path: str, margin: float):
        self.state = state
        self.scorer = scorer
        self.best_path = best_path
        self.hits_path = os.path.join(os.path.dirname(best_path), "validation_hits.npy")
        self.margin = margin

    def beaten_by(self, metrics: dict) -> bool:
        value, best = metrics[VALIDATION_METRIC], float(self.state.best.numpy())
        if not value > best:
            return False
        if not self.margin or best < 0:
            return True
        hits = metrics.get(evaluate.CASE_HITS)
        if hits is None or not os.path.exists(self.hits_path):
            raise ValueError(
                "--early_stopping_margin needs each validation's per-case hits "
                f"({evaluate.CASE_HITS}) and the kept epoch's ({self.hits_path}); "
                "validate with run.train, or set --early_stopping_margin=0."
            )
        kept = run_record.read_array(
            self.hits_path,
            "It holds the kept epoch's per-case validation hits: restore it, or start a new "
            "--model_dir (or resume with --early_stopping_margin=0).",
        )
        if kept.shape != np.shape(hits):
            raise ValueError(
                f"{self.hits_path} holds {kept.shape[0]} validation cases, this validation "
                f"{len(hits)}: the validation cases changed mid-run; start a new --model_dir."
            )
        diff = np.asarray(hits, np.float64) - kept.astype(np.float64)
        se = diff.std(ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        return bool(diff.mean() > self.margin * se)

    def keep(self, metrics: dict, epoch: int) -> None:
        self.state.best.assign(metrics[VALIDATION_METRIC])
        self.state.best_epoch.assign(epoch)
        self.scorer.save_weights(self.best_path)
        hits = metrics.get(evaluate.CASE_HITS)
        if hits is not None:
            tmp = f"{self.hits_path}.tmp-{os.getpid()}.npy"
            np.save(tmp, np.asarray(hits, bool))
            os.replace(tmp, self.hits_path)
        elif os.path.exists(self.hits_path):
            # Never compare a later epoch against hits of an epoch no longer kept.
            os.remove(self.hits_path)


def _validation_fields(metrics: dict) -> dict:
    """The numeric validation metrics as `val_<name>` history fields."""
    return {f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}


class _EpochEnd(tf_keras.callbacks.Callback):
    """Validation, early stopping, history and the per-epoch checkpoint."""

    def __init__(
        self,
        *,
        state,
        manager,
        validation,
        patience,
        kept,
        history,
        history_path,
        examples_per_epoch,
    ):
        super().__init__()
        self.state = state
        self.manager = manager
        self.validation = validation
        self.patience = patience
        self.kept = kept
        self.history = history
        self.history_path = history_path
        self.examples_per_epoch = examples_per_epoch
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        seconds = time.perf_counter() - self._start
        record = {
            "epoch": epoch + 1,
            **{k: float(v) for k, v in logs.items()},
            "seconds": round(seconds, 3),
            "examples_per_second": round(self.examples_per_epoch / max(seconds, 1e-9), 1),
        }
        if self.validation is not None:
            metrics = self.validation()
            fields = _validation_fields(metrics)
            logs.update(fields)
            record.update(fields)
            if self.kept.beaten_by(metrics):
                self.kept.keep(metrics, epoch + 1)
                self.state.wait.assign(0)
            else:
                self.state.wait.assign_add(1)
            if self.patience and int(self.state.wait.numpy()) >= self.patience:
                self.state.stopped.assign(True)
                self.model.stop_training = True
                margin = (
                    f" by more than {self.kept.margin:g} standard errors of the paired "
                    "difference (--early_stopping_margin)"
                    if self.kept.margin
                    else ""
                )
                print(
                    f"early stopping after epoch {epoch + 1}: {self.patience} epoch(s) without "
                    f"beating the kept epoch {int(self.state.best_epoch.numpy())} (validation "
                    f"{VALIDATION_METRIC} {float(self.state.best.numpy()):.4f}){margin}; "
                    f"--early_stopping_patience={self.patience}",
                    flush=True,
                )
        self.state.epoch.assign(epoch + 1)
        self.history.append(record)
        # Every worker saves (saving may synchronize replicas); in a cluster
        # each worker is given its own model_dir (see `train`).
        self.manager.save(checkpoint_number=epoch + 1)
        # Atomically: a kill mid-write must not leave a history that blocks resume.
        tmp = f"{self.history_path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(self.history, f, indent=1)
        os.replace(tmp, self.history_path)


def load_best(scorer, path: str, *, partial: bool = False) -> None:
    """Loads the kept epoch's weights at `path`; damaged files are named with the fix."""
    try:
        status = scorer.load_weights(path)
        if partial:
            status.expect_partial()
        else:
            status.assert_consumed()
    except (tf.errors.OpError, AssertionError, ValueError) as error:
        raise run_record.damaged(
            path + ".*",
            error,
            "They are the kept epoch's weights: restore them from a copy of the run, or "
            "delete the best/ folder and train again in a new --model_dir.",
        ) from None


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: the message names it and the way out."""


def _restore(checkpoint: tf.train.Checkpoint, manager: tf.train.CheckpointManager) -> None:
    """Restores the latest checkpoint, or names the damaged file and the fixes."""
    latest = manager.latest_checkpoint
    try:
        checkpoint.restore(latest).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError, ValueError, IndexError) as error:
        older = [c for c in manager.checkpoints if c != latest]
        fallback = (
            f"fall back to the previous checkpoint {older[-1]} by deleting {latest}.* and "
            f"editing {os.path.dirname(latest)}/checkpoint to name it, or "
            if older
            else ""
        )
        raise CheckpointError(
            f"cannot restore checkpoint {latest} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:300]}). The file is damaged or from another model. "
            f"To resume, {fallback}start over with an empty --model_dir (or delete "
            f"{os.path.dirname(latest)}). Training does not restart from scratch on its own."
        ) from error


def train(
    *,
    ranker: ranking.Ranker,
    index: training_index.TrainingIndex,
    config: config_lib.TrainConfig,
    model_dir: str,
    validation: Callable[[], dict] | None = None,
    validate_start: bool = False,
    signals=None,
    compile_options: dict | None = None,
) -> TrainResult:
    """Trains `ranker` on examples sampled from `index`, resuming from `model_dir`.

    Args:
      ranker: a Ranker built under the strategy that should train it.
      index: the training index (positives, gates, supportive-only items).
      config: epochs, batch size, optimizer, sampler, patience.
      model_dir: checkpoints, TensorBoard logs and history go here. Every
        worker of a multi-worker run writes, so give each its own folder
        (main.py gives non-chief workers a subfolder).
      validation: returns validation metrics including "HR@10"; called
        after each epoch for early stopping and best-epoch selection.
      validate_start: a fresh run also validates the starting weights, as
        epoch 0, and keeps them if no epoch beats them (for a warm start,
        such as the MF part at the ALS factors).
      signals: the training graph's `graph_signals.GraphSignals`, for a
        scorer that takes graph signals.
      compile_options: extra Keras `compile` arguments (`jit_compile`,
        `steps_per_execution`: measured in benchmarks/profile_training.py,
        neither faster here).

    Returns:
      A TrainResult. The ranker holds the best validation epoch's weights
      (or the last epoch's when there is no validation).
    """
    strategy = ranker.distribute_strategy
    os.makedirs(model_dir, exist_ok=True)
    with strategy.scope():
        optimizer = optimizers.build_optimizer(config)
        optimizer.build(ranker.scorer.trainable_variables)
        ranker.compile(optimizer=optimizer, **(compile_options or {}))
        state = _State()
    checkpoint = tf.train.Checkpoint(model=ranker, optimizer=optimizer, state=state)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=3
    )
    history_path = os.path.join(model_dir, "history.json")
    history: list = []
    if manager.latest_checkpoint:
        _restore(checkpoint, manager)
        if os.path.exists(history_path):
            history = run_record.read_json(
                history_path,
                "It lists the epochs run so far: restore it from a copy of the run, or delete "
                "it to resume without the earlier epochs' figures in results.json.",
            )
    start = int(state.epoch.numpy())
    best_path = os.path.join(model_dir, "best", "weights")
    kept = _Kept(state, ranker.scorer, best_path, config.early_stopping_margin)
    steps = datasets.steps_per_epoch(index, config)
    # A fresh run (a resumed one has a checkpoint, so start > 0).
    if validate_start and validation is not None and start == 0:
        started = time.perf_counter()
        metrics = validation()
        record = {"epoch": 0, "seconds": round(time.perf_counter() - started, 3)}
        history.append({**record, **_validation_fields(metrics)})
        kept.keep(metrics, 0)
    input_pipeline, per_worker = "local", None
    if cluster.is_parameter_server(strategy):
        # Each worker draws its own batches where the sampler's ops allow it.
        per_worker, reason = worker_input.plan(index, config, signals)
        if reason is None:
            input_pipeline = "per_worker"
        else:
            input_pipeline = "chief"
            print(f"the chief draws every batch: {reason}", flush=True)
    if start < config.epochs and not bool(state.stopped.numpy()):
        if per_worker is not None:
            dataset = None
        elif config.distribution_strategy == "multi_worker":
            dataset = strategy.distribute_datasets_from_function(
                lambda context: datasets.training_dataset(
                    index, config, start_epoch=start, input_context=context, signals=signals
                )
            )
        else:
            dataset = datasets.training_dataset(index, config, start_epoch=start, signals=signals)
        callbacks = [
            _EpochEnd(
                state=state,
                manager=manager,
                validation=validation,
                patience=config.early_stopping_patience,
                kept=kept,
                history=history,
                history_path=history_path,
                examples_per_epoch=steps * config.batch_size,
            ),
            tf_keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), profile_batch=0),
        ]
        if cluster.is_parameter_server(strategy):
            cluster.fit(
                ranker,
                dataset,
                dataset_fn=per_worker,
                epochs=config.epochs,
                initial_epoch=start,
                steps_per_epoch=steps,
                callbacks=callbacks,
            )
        else:
            ranker.fit(
                dataset,
                epochs=config.epochs,
                initial_epoch=start,
                steps_per_epoch=steps,
                callbacks=callbacks,
                verbose=config.verbose,
            )
    best_epoch = int(state.best_epoch.numpy())
    if validation is not None and float(state.best.numpy()) >= 0:
        print(
            f"kept epoch {best_epoch} (validation {VALIDATION_METRIC} "
            f"{float(state.best.numpy()):.4f}"
            + (", the start" if best_epoch == 0 else "")
            + f"); {int(state.epoch.numpy())} of {config.epochs} epochs run",
            flush=True,
        )
    best_validation = None
    # best >= 0: an epoch was validated (epoch 0 is the start, with validate_start).
    if validation is not None and float(state.best.numpy()) >= 0:
        load_best(ranker.scorer, best_path, partial=True)
        best_validation = next(
            (
                {k[4:]: v for k, v in h.items() if k.startswith("val_")}
                for h in history
                if h["epoch"] == best_epoch
            ),
            None,
        )
    return TrainResult(
        epochs_completed=int(state.epoch.numpy()),
        resumed_from_epoch=start,
        best_epoch=best_epoch,
        best_validation=best_validation,
        stopped_early=bool(state.stopped.numpy()),
        history=history,
        input_pipeline=input_pipeline,
    )
