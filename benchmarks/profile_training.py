"""Where training time goes on a 630k-item catalog, and what each fix buys.

Three views of one training configuration (the multi-feedback model, batch
4096, 3 negatives, lazy Adam) on the synthetic catalog of the paper's size:

1. The TensorFlow profiler: a trace of timed steps of `Ranker.fit`, read back
   from its XSpace file and summed per TensorFlow op and per host thread.
2. Stages timed apart: the input pipeline alone (negative sampling and gate
   lookups included), the training step alone on one in-memory batch, and
   the two together.
3. Variants against the baseline in the same run: XLA (`jit_compile`),
   several steps per `tf.function` call, and their combination.

    python benchmarks/profile_training.py [--variants=...] [--steps=40]

Writes benchmarks/results/profile_training.{json,md}.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import glob
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from train_throughput import EpochTimer

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from mmrec_tf import config as config_lib
from mmrec_tf import optimizers
from mmrec_tf import ranking
from mmrec_tf.pipelines import datasets
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import negatives
from mmrec_tf.pipelines import training_index

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 4096
# name -> Keras compile options (XLA and steps per execution were options
# of the library until this table showed no gain: benchmarks/README.md).
VARIANTS = {
    "baseline": {},
    "xla": {"jit_compile": True},
    "steps_per_execution_8": {"steps_per_execution": 8},
    "xla_steps_per_execution_8": {"jit_compile": True, "steps_per_execution": 8},
}


def synthetic_catalog() -> config_lib.DataConfig:
    # 200k users over a declared 900k-item catalog: about 627k items occur.
    return config_lib.DataConfig(
        synthetic_users=200_000,
        synthetic_items=900_000,
        synthetic_records_per_user=40,
    )


def _config(steps: int, **compile_options) -> config_lib.ExperimentConfig:
    del compile_options  # the variants differ in how the step is compiled only
    return config_lib.ExperimentConfig(
        model=config_lib.ModelConfig(mf_dim=8, mlp_dim=8, mlp_layers=2),
        train=config_lib.TrainConfig(
            batch_size=BATCH,
            epochs=2,
            num_negatives=3,
            supportive_negative_ratio=1.0,
            steps_per_epoch=steps,
            verbose=0,
        ),
    )


def _ranker(split, config, compile_options: dict):
    tf_keras.utils.set_random_seed(0)
    ranker = ranking.build_ranker(
        config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
    )
    ranker.compile(optimizer=optimizers.build_optimizer(config.train), **compile_options)
    return ranker


def _subset(index: training_index.TrainingIndex, examples: int) -> training_index.TrainingIndex:
    """The index with `examples` random positives, so one epoch is the timed work."""
    take = np.random.default_rng(0).choice(len(index.pos_users), examples, replace=False)
    return dataclasses.replace(
        index, pos_users=index.pos_users[take], pos_items=index.pos_items[take]
    )


def fit_throughput(split, index, steps: int, overrides: dict, trace_dir: str | None = None):
    """Examples/s of the second (timed) epoch of fit, pipeline included."""
    config = _config(steps, **overrides)
    ranker = _ranker(split, config, overrides)
    sub = _subset(index, steps * BATCH)
    timer = EpochTimer()
    callbacks = [timer]
    if trace_dir:
        callbacks.append(_Tracer(trace_dir))
    ranker.fit(
        datasets.training_dataset(sub, config.train),
        epochs=2,
        steps_per_epoch=steps,
        callbacks=callbacks,
        verbose=0,
    )
    return steps * BATCH / timer.seconds[1]


class _Tracer(tf_keras.callbacks.Callback):
    """Traces the whole second epoch with the TensorFlow profiler."""

    def __init__(self, logdir):
        super().__init__()
        self.logdir = logdir

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            tf.profiler.experimental.start(self.logdir)

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            tf.profiler.experimental.stop()


def pipeline_throughput(index, overrides: dict, steps: int) -> float:
    config = _config(steps, **overrides)
    sub = _subset(index, steps * BATCH)
    dataset = datasets.training_dataset(sub, config.train)
    it = iter(dataset)
    for _ in range(steps):  # epoch 0: warm-up
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * BATCH / (time.perf_counter() - start)


def step_throughput(split, index, steps: int, overrides: dict) -> float:
    """Examples/s of the training step alone, fed one in-memory batch."""
    config = _config(steps, **overrides)
    ranker = _ranker(split, config, overrides)
    sub = _subset(index, BATCH)
    batch = next(iter(datasets.training_dataset(sub, config.train)))
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    timer = EpochTimer()
    ranker.fit(dataset, epochs=2, steps_per_epoch=steps, callbacks=[timer], verbose=0)
    return steps * BATCH / timer.seconds[1]


def summarize_trace(logdir: str, top: int = 15) -> dict:
    """Per-op and per-thread time from the profiler's XSpace file."""
    paths = glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb"))
    if not paths:
        raise FileNotFoundError(f"no *.xplane.pb under {logdir}: the trace was not written")
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        space.ParseFromString(f.read())
    per_op = collections.Counter()
    per_thread = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            # Events on a line nest in time; an op's self time is its
            # duration less that of the events directly inside it.
            stack = []  # [end_ps, op, child_ps, duration_ps]
            for event in sorted(line.events, key=lambda e: (e.offset_ps, -e.duration_ps)):
                while stack and stack[-1][0] <= event.offset_ps:
                    _, op, child, duration = stack.pop()
                    per_op[op] += duration - child
                if stack:
                    stack[-1][2] += event.duration_ps
                else:
                    per_thread[line.name] += event.duration_ps
                name = names.get(event.metadata_id, "?")
                # Executor op events are "name:Type"; keep the type.
                op = name.split(":")[-1] if ":" in name else name
                if op in ("ParallelFor", "Run") and stack:
                    op = f"{op} in {stack[-1][1]}"
                stack.append([event.offset_ps + event.duration_ps, op, 0, event.duration_ps])
            for _, op, child, duration in stack:
                per_op[op] += duration - child
    ms = 1e-9
    return {
        "ops_ms": [(k, round(v * ms, 1)) for k, v in per_op.most_common(top)],
        "threads_ms": [(k, round(v * ms, 1)) for k, v in per_thread.most_common(8)],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--label", default="", help="A name for this run in the output.")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "profile_training"))
    parser.add_argument(
        "--compare",
        default="",
        help="A results .json of an earlier code version, for a before/after table.",
    )
    args = parser.parse_args()

    _, split = loading.load(synthetic_catalog(), work_dir=args.cache_dir)
    index = training_index.TrainingIndex.from_split(split)
    print(f"{split.num_users} users, {split.num_items} items, {len(index.pos_users)} positives")
    results = {
        "label": args.label,
        "command": " ".join(["python benchmarks/profile_training.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "tensorflow": tf.__version__,
        },
        "num_items": int(split.num_items),
        "batch_size": BATCH,
        "steps": args.steps,
        "model": "mmf, mf_dim 8, mlp_dim 8, 2 layers, 3 negatives, lazy Adam",
        "variants": {},
    }
    start = time.perf_counter()
    sampler_seconds = []
    for epoch in range(3):
        t0 = time.perf_counter()
        negatives.sample_epoch(
            _subset(index, args.steps * BATCH),
            num_negatives=3,
            supportive_ratio=1.0,
            seed=0,
            epoch=epoch,
        )
        sampler_seconds.append(time.perf_counter() - t0)
    results["sampler_alone_examples_per_second"] = round(
        args.steps * BATCH / min(sampler_seconds), 1
    )
    print(f"sampler alone: {results['sampler_alone_examples_per_second']:.0f} ex/s")

    trace_dir = tempfile.mkdtemp(prefix="profile_training_")
    for name in args.variants.split(","):
        overrides = VARIANTS[name]
        row = {
            "overrides": overrides,
            "pipeline_alone": round(pipeline_throughput(index, overrides, args.steps), 1),
            "step_alone": round(step_throughput(split, index, args.steps, overrides), 1),
        }
        if name == "baseline":
            row["fit"] = round(fit_throughput(split, index, args.steps, overrides, trace_dir), 1)
            row["trace"] = summarize_trace(trace_dir)
        else:
            row["fit"] = round(fit_throughput(split, index, args.steps, overrides), 1)
        results["variants"][name] = row
        print(
            f"{name:28s} fit {row['fit']:>9.0f} ex/s   step alone {row['step_alone']:>9.0f}"
            f"   pipeline alone {row['pipeline_alone']:>9.0f}",
            flush=True,
        )
    shutil.rmtree(trace_dir, ignore_errors=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    before = None
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
    write(results, args.out, before)


def write(results: dict, out: str, before: dict | None = None) -> None:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    base = results["variants"].get("baseline", {}).get("fit")
    lines = [
        "# Training profile on the 630k-item catalog",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {results['machine']}. Model: {results['model']}, batch "
        f"{results['batch_size']}, {results['num_items']} items. Examples/s; an example is one "
        "positive with its 3 negatives.",
        "",
        f"Sampler alone (numpy, one epoch's draw): "
        f"{results['sampler_alone_examples_per_second']:.0f} examples/s.",
        "",
        "| variant | fit (pipeline included) | vs baseline | training step alone | "
        "input pipeline alone |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["variants"].items():
        ratio = f"{row['fit'] / base:.2f}x" if base else ""
        lines.append(
            f"| {name} | {row['fit']:.0f} | {ratio} | {row['step_alone']:.0f} | "
            f"{row['pipeline_alone']:.0f} |"
        )
    if before:
        lines += [
            "",
            f"Before/after: `{before['label']}` against `{results['label']}`, same command "
            "and machine, run one after the other (examples/s).",
            "",
            "| variant | measure | before | after | after/before |",
            "|---|---|---|---|---|",
        ]
        for name, row in results["variants"].items():
            old = before["variants"].get(name)
            if not old:
                continue
            for key, label in (
                ("fit", "fit, pipeline included"),
                ("step_alone", "training step alone"),
                ("pipeline_alone", "input pipeline alone"),
            ):
                lines.append(
                    f"| {name} | {label} | {old[key]:.0f} | {row[key]:.0f} | "
                    f"{row[key] / old[key]:.2f}x |"
                )
        old_s = before["sampler_alone_examples_per_second"]
        new_s = results["sampler_alone_examples_per_second"]
        lines.append(f"| - | sampler alone | {old_s:.0f} | {new_s:.0f} | {new_s / old_s:.2f}x |")
    for label, res in (("before", before), ("after", results)):
        trace = res and res["variants"].get("baseline", {}).get("trace")
        if not trace:
            continue
        lines += [
            "",
            f"TensorFlow profiler, {label} ({res['label']}), baseline, one timed epoch: self "
            "time per op type (summed over host threads, ms; `Run` is a thread waiting on a "
            "function's ops)",
            "",
            "| op | ms |",
            "|---|---|",
        ]
        lines += [f"| {op} | {ms} |" for op, ms in trace["ops_ms"]]
        lines += ["", "Busy time per host thread (ms)", "", "| thread | ms |", "|---|---|"]
        lines += [f"| {t} | {ms} |" for t, ms in trace["threads_ms"]]
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {out}.json and .md")


if __name__ == "__main__":
    main()
