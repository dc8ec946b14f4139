"""Scale: a full-Taobao-size synthetic log through preprocessing and one epoch.

Stages, each timed, with the process's peak resident memory so far and its
resident memory after the stage:

1. generate: the project's generator writes the UserBehavior CSV in chunks;
2. read: the tf.data readers parse and validate every line;
3. encode: vocabularies and branch codes;
4. split: leave-latest-out test cases and carved validation cases;
5. index: the sampler's per-pair behavior masks and supportive-only lists;
6. pipeline: examples per second of the input pipeline alone (batch 4096);
7. train: one epoch of the multi-feedback model (paper defaults) at batch 4096
   (`--recipe=paper --out=benchmarks/results/scale_paper`).

By default (`--recipe=shipped`) stages 6 and 7 are the shipped recipe instead
(`--flagfile`, by default taobao_cml_mmf.flags, with `--graph_signals`): the
multi-behavior ALS fit, the graph signals' build, the model started from the
ALS, `--train_steps` steps of the softmax (the epoch's seconds projected from
them), the three protocols on `--eval_cases` test cases, the export, and the
export's load time and latency in a clean process (`serve`). For `serve` the
run replaces itself (`os.execv`) with one that only times the export: the
training process's allocators keep what it freed, and at 100M records the
serving process beside it ran the machine out of memory. `--serve_only`
runs that stage alone on the export an earlier run left in `--cache_dir`.

    python benchmarks/scale.py [--users=1000000 --items=4000000 --records_per_user=100]

Writes benchmarks/results/scale.{json,md} (`--out`).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import resource
import sys
import time

import numpy as np
import serving_latency
import tensorflow as tf
import tf_keras
from absl import flags

from mmrec_tf import baselines
from mmrec_tf import cli
from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import optimizers
from mmrec_tf import ranking
from mmrec_tf.export import exporter
from mmrec_tf.export import serving
from mmrec_tf.pipelines import datasets
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import interactions
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import splits
from mmrec_tf.pipelines import synthetic
from mmrec_tf.pipelines import training_index

HERE = os.path.dirname(os.path.abspath(__file__))


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=4_000_000)
    parser.add_argument("--records_per_user", type=float, default=100.0)
    parser.add_argument("--cache_dir", default=os.path.join(HERE, ".cache"))
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "scale"))
    parser.add_argument("--recipe", choices=("paper", "shipped"), default="shipped")
    parser.add_argument(
        "--flagfile",
        default=os.path.join(HERE, "..", "mmrec_tf", "configs", "taobao_cml_mmf.flags"),
    )
    parser.add_argument("--train_steps", type=int, default=300)
    parser.add_argument("--eval_cases", type=int, default=1000)
    parser.add_argument(
        "--serve_calls", type=int, default=100, help="timed requests per signature of the export"
    )
    parser.add_argument(
        "--serve_only",
        action="store_true",
        help="only the serve stage, on the export in --cache_dir, appended to --out's stages",
    )
    parser.add_argument(
        "--als_solver",
        default="implicit_cg",
        help="the ALS solver of the shipped recipe's start (baselines.als.SOLVERS): the exact "
        "solver costs (users + items) x factors^3 per sweep, days at 100M records and 192 "
        "factors on two cores; the conjugate-gradient one minimizes the same loss",
    )
    args = parser.parse_args()

    stages = _earlier_stages(args) if args.serve_only else []

    def stage(name, seconds, count=None, **extra):
        row = {
            "stage": name,
            "seconds": round(seconds, 1),
            "peak_rss_gib": round(_peak_gib(), 2),
            "rss_gib": round(serving_latency.process_gib("VmRSS"), 2),
        }
        if count:
            row["records_per_second"] = round(count / seconds)
        row.update(extra)
        stages.append(row)
        print(row, flush=True)
        # Written after every stage: a run stopped part way keeps what it measured.
        write(args, stages, complete=False)

    if args.serve_only:
        serve(args, stage)
        write(args, stages, complete=True)
        return

    path = os.path.join(
        args.cache_dir, f"scale_u{args.users}_i{args.items}_r{args.records_per_user:g}.csv"
    )
    start = time.perf_counter()
    if os.path.exists(path):
        stats = {"records": None, "reused": True}
    else:
        stats = synthetic.write_userbehavior(
            path,
            synthetic.SyntheticSpec(
                num_users=args.users,
                num_items=args.items,
                records_per_user=args.records_per_user,
                chunk_users=100_000,
            ),
        )
    stage(
        "generate", time.perf_counter() - start, stats.get("records"), bytes=os.path.getsize(path)
    )

    config = config_lib.DataConfig(data_path=path, data_format="userbehavior")
    start = time.perf_counter()
    raw = readers.read_interactions(config)
    stage("read", time.perf_counter() - start, len(raw), records=len(raw))
    start = time.perf_counter()
    data = interactions.encode(raw, config)
    del raw
    stage(
        "encode",
        time.perf_counter() - start,
        len(data.users),
        users=data.num_users,
        items=data.num_items,
    )
    start = time.perf_counter()
    split = splits.make_split(data, validation=True, seed=0)
    n = len(data.users)
    tokens = (data.user_vocab.tokens, data.item_vocab.tokens)
    del data
    stage(
        "split",
        time.perf_counter() - start,
        n,
        test_cases=split.info["test_cases"],
        valid_cases=split.info["valid_cases"],
    )
    start = time.perf_counter()
    index = training_index.TrainingIndex.from_split(split)
    stage(
        "index", time.perf_counter() - start, len(split.train_users), positives=len(index.pos_users)
    )

    if args.recipe == "shipped":
        shipped(args, split, index, tokens, stage)
        # A fresh process image for the serve stage (see the module's doc);
        # the stages so far are in --out's JSON, which it reads.
        sys.stdout.flush()
        os.execv(
            sys.executable,
            [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--serve_only"],
        )
    paper(args, split, index, stage)
    write(args, stages, complete=True)


def _export_dir(args) -> str:
    return os.path.join(args.cache_dir, "scale_export")


def _earlier_stages(args) -> list[dict]:
    """The stages of the run whose export --serve_only times, from --out's JSON."""
    path = args.out + ".json"
    if not os.path.exists(path):
        raise SystemExit(f"--serve_only: {path} does not exist; run the shipped recipe first")
    with open(path) as f:
        earlier = json.load(f)
    stages = [row for row in earlier["stages"] if row["stage"] != "serve"]
    if not stages or stages[-1]["stage"] != "export":
        raise SystemExit(
            f"--serve_only: the last stage in {path} is not 'export'; run the shipped recipe first"
        )
    for key in ("users", "items", "records_per_user"):
        if earlier[key] != getattr(args, key):
            raise SystemExit(
                f"--serve_only: {path} was measured with --{key}={earlier[key]}, not "
                f"{getattr(args, key)}; give the same --{key}"
            )
    return stages


def paper(args, split, index, stage) -> None:
    """Stages 6 and 7: the input pipeline and one epoch of the paper's model."""
    train = config_lib.TrainConfig(batch_size=args.batch_size, epochs=1, verbose=2)
    start = time.perf_counter()
    count = 0
    for batch in datasets.training_dataset(index, train):
        count += int(batch["user"].shape[0])
    stage("pipeline", time.perf_counter() - start, count, examples=count)

    tf_keras.utils.set_random_seed(0)
    ranker = ranking.build_ranker(
        config_lib.ExperimentConfig(train=train),
        num_users=split.num_users,
        num_items=split.num_items,
        behaviors=split.behaviors,
    )
    ranker.compile(optimizer=optimizers.build_optimizer(train))
    start = time.perf_counter()
    ranker.fit(
        datasets.training_dataset(index, train),
        epochs=1,
        steps_per_epoch=datasets.steps_per_epoch(index, train),
        verbose=2,
    )
    stage(
        "train",
        time.perf_counter() - start,
        len(index.pos_users),
        examples=len(index.pos_users),
        parameters=int(sum(np.prod(w.shape) for w in ranker.scorer.weights)),
    )


def shipped(args, split, index, tokens, stage) -> None:
    """The shipped recipe's stages: ALS, signals, start, training, evaluation, export."""
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["scale", f"--flagfile={args.flagfile}", "--graph_signals", "--model_dir=_"])
    config = cli.config_from_flags(fv)

    start = time.perf_counter()
    settings = dataclasses.replace(
        baselines.als_config(config.model, config.train.seed), solver=args.als_solver
    )
    # Cached beside the CSV: a later run of the same log reads the factors
    # (and says so) instead of fitting them again.
    als_cache = os.path.join(args.cache_dir, "als")
    cached = set(os.listdir(als_cache)) if os.path.isdir(als_cache) else set()
    x, y, _, path = baselines.fit_factors(split, settings, cache_dir=als_cache, verbose=True)
    stage(
        "als",
        time.perf_counter() - start,
        factors=int(x.shape[1]),
        sweeps=settings.iterations,
        solver=settings.solver,
        read_from_cache=os.path.basename(path) in cached,
    )

    start = time.perf_counter()
    signals = graph_signals.GraphSignals(split)
    stage("signals", time.perf_counter() - start, columns=len(signals.names))

    start = time.perf_counter()
    tf_keras.utils.set_random_seed(0)
    ranker = ranking.build_ranker(
        config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
    )
    ranker.scorer.start_from_factors(x, y, trainable=config.model.mf_init == "als")
    del x, y
    if config.model.behavior_init == "touched_first":
        offset = ranker.scorer.touched_first_offset()
        ranker.scorer.set_behavior_offsets([offset] * len(split.behaviors.supportive))
    ranker.compile(optimizer=optimizers.build_optimizer(config.train))
    stage(
        "model",
        time.perf_counter() - start,
        parameters=int(sum(np.prod(w.shape) for w in ranker.scorer.weights)),
    )

    steps = datasets.steps_per_epoch(index, config.train)
    timed = min(args.train_steps, steps)
    start = time.perf_counter()
    ranker.fit(
        datasets.training_dataset(index, config.train, signals=signals),
        epochs=1,
        steps_per_epoch=timed,
        verbose=2,
    )
    seconds = time.perf_counter() - start
    examples = timed * config.train.batch_size
    stage(
        "train",
        seconds,
        examples,
        examples=examples,
        steps=timed,
        epoch_steps=steps,
        epoch_seconds_projected=round(seconds * steps / timed),
        batch_size=config.train.batch_size,
        shared_negatives=config.train.shared_negatives,
    )

    start = time.perf_counter()
    picked = np.random.default_rng(0).choice(
        len(split.test_users), min(args.eval_cases, len(split.test_users)), replace=False
    )
    subset = dataclasses.replace(
        split, test_users=split.test_users[picked], test_items=split.test_items[picked]
    )
    cases = evaluate.EvalCases.build(subset, "test", config.eval, touched_keys=index.keys)
    score = evaluate.Scorer(
        ranker.scorer,
        split.behaviors.num_behaviors,
        config.eval.batch_size,
        index=index,
        signals=signals,
    )
    metrics = evaluate.evaluate(score, cases, config=config.eval)
    seconds = time.perf_counter() - start
    stage(
        "evaluate",
        seconds,
        cases=len(picked),
        seconds_per_case=round(seconds / len(picked), 2),
        **{f"{p}_HR@10": round(metrics[p]["HR@10"], 4) for p in ("sampled", "full", "discovery")},
    )

    # The optimizer's slots and the training step are not exported.
    scorer = ranker.scorer
    del ranker, score
    gc.collect()
    start = time.perf_counter()
    module = serving.from_training(
        scorer,
        split,
        user_tokens=tokens[0],
        item_tokens=tokens[1],
        top_k=config.export.top_k,
        retrieval_candidates=config.export.retrieval_candidates,
        exclude_seen=True,
        signals=signals,
        fold_in=(config.model.als_alpha, config.model.als_l2, config.model.als_supportive_weight),
    )
    export_dir = _export_dir(args)
    path = exporter.export(
        module,
        export_dir,
        warmup_user_ids=list(tokens[0][split.test_users[:4]]),
        warmup_item_ids=list(tokens[1][split.test_items[:4]]),
    )
    stage("export", time.perf_counter() - start, bytes=serving_latency.disk_bytes(path))


def serve(args, stage) -> None:
    """The newest export in --cache_dir loaded and timed in a clean process, as
    the serving benchmark does, started from a process that holds nothing else."""
    versions = exporter.versions(_export_dir(args))
    if not versions:
        raise SystemExit(
            f"--serve_only: no export in {_export_dir(args)}; run the shipped recipe first"
        )
    path = os.path.join(_export_dir(args), str(versions[-1]))

    def first(name, count):
        with open(os.path.join(path, "assets", f"{name}.txt"), encoding="utf-8") as f:
            return [line.rstrip("\n") for _, line in zip(range(count), f)]

    start = time.perf_counter()
    served = serving_latency.time_export(
        path, first("users", 200), first("items", 100), args.serve_calls
    )
    stage(
        "serve",
        time.perf_counter() - start,
        load_seconds=round(served["load_seconds"], 1),
        serving_peak_rss_gib=round(served["peak_rss_mb"] / 1024, 2),
        serving_default_pairs=served["serving_default_1x100"]["pairs"],
        **{
            f"{name}_{q}": round(served[name][q], 2)
            for name in ("recommend_1_user", "serving_default_1x100")
            for q in ("p50_ms", "p99_ms")
        },
    )


def write(args, stages, *, complete: bool) -> None:
    result = {
        "complete": complete,
        "recipe": args.recipe,
        "users": args.users,
        "items": args.items,
        "records_per_user": args.records_per_user,
        "tensorflow": tf.__version__,
        "cpus": os.cpu_count(),
        "stages": stages,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(
            "# Scale: full-Taobao-size synthetic log, one machine (2 cores, 24 GiB)\n\n"
            f"Command: `python benchmarks/scale.py --users={args.users} "
            f"--items={args.items} --records_per_user={args.records_per_user:g}"
            + (
                f" --train_steps={args.train_steps} --eval_cases={args.eval_cases}"
                if args.recipe == "shipped"
                else " --recipe=paper --out=benchmarks/results/scale_paper"
            )
            + "`\n\n"
            + (
                ""
                if complete
                else f"*The run has not finished: the stages after {stages[-1]['stage']!r} "
                "are not measured yet.*\n\n"
            )
            + "| stage | seconds | records or examples / s | peak RSS GiB | RSS after GiB | notes |\n"
            "|---|---|---|---|---|---|\n"
        )
        for row in stages:
            notes = ", ".join(
                f"{k} {v}"
                for k, v in row.items()
                if k not in ("stage", "seconds", "records_per_second", "peak_rss_gib", "rss_gib")
            )
            f.write(
                f"| {row['stage']} | {row['seconds']} | {row.get('records_per_second', '')} "
                f"| {row['peak_rss_gib']} | {row.get('rss_gib', '')} | {notes} |\n"
            )
    print("wrote", args.out)


if __name__ == "__main__":
    main()
