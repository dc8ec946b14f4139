"""Parameter-server training on a local cluster: a chief, 2 workers and 2 parameter servers.

The cluster runs on the loopback inside a child process (`cluster.local_cluster`),
so that its remote context never touches the test process; the single-process
runs it is compared with run through the same command line.
"""

import json
import os
import subprocess
import sys

import pytest

from mmrec_tf import cli
from mmrec_tf import cluster

QUICKSTART = os.path.join(os.path.dirname(cli.__file__), "configs", "quickstart.flags")
RESIDUAL = os.path.join(os.path.dirname(cli.__file__), "configs", "residual.flags")

# The child: starts the local cluster and runs the command's config under it.
CHILD = """
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
from absl import flags
from mmrec_tf import cli, cluster
from mmrec_tf import run as run_lib
fv = flags.FlagValues()
cli.define_flags(fv)
fv(["mmrec_tf", *sys.argv[1:]])
run_lib.run(cli.config_from_flags(fv), strategy=cluster.local_cluster(2, 2, min_shard_bytes=1024))
"""


def _flags(model_dir, *extra):
    return [
        f"--flagfile={QUICKSTART}",
        f"--model_dir={model_dir}",
        "--synthetic_users=300",
        "--synthetic_items=400",
        "--steps_per_epoch=8",
        "--batch_size=64",
        "--verbose=0",
        *extra,
    ]


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _run(*command):
    done = subprocess.run(
        [sys.executable, *command], env=_env(), capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _main(*args):
    return _run("-m", "mmrec_tf.main", *args)


def _on_cluster(*args):
    return _run("-c", CHILD, *args)


def _results(model_dir):
    return json.load(open(os.path.join(model_dir, "results.json")))


def _same_losses(history, single, input_pipeline):
    """Each of the last two epochs' loss is the single process's, within its noise.

    The chief's sampler draws the single process's batches (seeded by seed
    and epoch), so only the workers' order of updates moves the loss: 5%.
    Batches the workers draw are their own, and a worker's epoch is a few
    steps: at 4 or 5 a worker, the 10 epoch losses of 5 pairwise cluster
    runs spread 0.236 to 0.251 against the single process's 0.251, and one
    softmax epoch of about 7 runs fell 6.8% from the single process's, so
    10% (the pairwise test now runs 16 a worker, which averages more).
    """
    rel = 0.05 if input_pipeline == "chief" else 0.10
    for epoch, want in zip(history[-2:], single[-2:]):
        assert epoch["loss"] == pytest.approx(want["loss"], rel=rel), (epoch, want)


@pytest.mark.parametrize(
    "recipe, input_pipeline",
    [
        # Each worker draws its own batches (the sampler in TensorFlow ops).
        # 32 steps an epoch: at 8, the model of 16 steps is still near chance
        # (sampled HR@10 0.08 to 0.16 over seeds 0 to 2), so its figures
        # move with the draw of batches more than the cases' standard error
        # says; at 32 they are 0.29 to 0.34 against chance's 0.10.
        pytest.param(["--steps_per_epoch=32"], "per_worker", id="pairwise"),
        # The shipped recipe: the ALS start with the touched-first offsets, the
        # softmax, the graph signals.
        pytest.param(
            [
                f"--flagfile={RESIDUAL}",
                "--batch_size=64",
                "--shared_negatives=64",
                "--valid_full_ranking_cases=0",
                "--early_stopping_patience=0",
                "--graph_signals",
                "--behavior_init=touched_first",
            ],
            # The graph signals are scipy.sparse: the chief draws.
            "chief",
            id="shipped_recipe",
        ),
    ],
)
def test_parameter_server_training_shards_resumes_exports_and_learns_as_one_process(
    tmp_path, recipe, input_pipeline
):
    single = tmp_path / "single"
    _main(*_flags(single, *recipe, "--epochs=2"))
    reference = _results(single)

    run = tmp_path / "cluster"
    export = tmp_path / "serving"
    common = [*_flags(run, *recipe), "--distribution_strategy=parameter_server"]
    # One epoch, then the same command asked for two: the run resumes.
    _on_cluster(*common, "--epochs=1")
    assert _results(run)["train"]["epochs_completed"] == 1
    output = _on_cluster(*common, "--epochs=2", f"--export_dir={export}")
    results = _results(run)
    assert results["train"]["resumed_from_epoch"] == 1
    assert results["train"]["epochs_completed"] == 2
    assert results["train"]["input_pipeline"] == input_pipeline

    # Every embedding table is split over both parameter servers.
    shards = results["cluster"]["sharded_tables"]
    assert {"mf/user_embedding/embeddings", "mf/item_embedding/embeddings"} <= set(shards), output
    for table, devices in shards.items():
        assert sorted(d.split("/device")[0] for d in devices) == [
            "/job:ps/replica:0/task:0",
            "/job:ps/replica:0/task:1",
        ], table

    # Asynchronous updates from two workers are not one process's sequence,
    # but the model learns as much on this log: the same loss within a few
    # percent each epoch, and test figures within three standard errors of
    # their difference (153 cases: the figures themselves are noisy, and the
    # workers' order of updates moves them).
    history = json.load(open(run / "history.json"))
    _same_losses(history, json.load(open(single / "history.json")), input_pipeline)
    for protocol in ("sampled", "full"):
        got, want = results["test"][protocol], reference["test"][protocol]
        se = (got["HR@10_se"] ** 2 + want["HR@10_se"] ** 2) ** 0.5
        assert abs(got["HR@10"] - want["HR@10"]) <= 3 * se, (protocol, got, want)
    # Both learned: sampled HR@10 above chance (10 of 100 candidates) by two
    # standard errors (3 runs of each: 0.23 to 0.33 on the cluster).
    for learned in (results, reference):
        sampled = learned["test"]["sampled"]
        assert sampled["HR@10"] > 0.10 + 2 * sampled["HR@10_se"], sampled

    # The export gathered the shards: a plain process serving the SavedModel
    # scores exactly as the chief's gathered model did.
    _main(
        *common,
        "--epochs=2",
        "--distribution_strategy=default",
        "--mode=evaluate_export",
        f"--export_dir={export}",
    )
    exported = json.load(open(run / "export_evaluation.json"))["test"]
    in_memory = results["test"]["two_stage_in_memory"]
    assert exported["recommend"] == pytest.approx(in_memory["recommend"], abs=1e-6)


def test_parameter_server_without_tf_config_names_what_it_needs(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        cluster.resolver_from_environment()
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps(
            {"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 0}}
        ),
    )
    with pytest.raises(ValueError, match="no chief and no ps"):
        cluster.resolver_from_environment()


def test_parameter_server_cluster_of_processes_from_tf_config(tmp_path):
    """The command as BUILD.md runs it: five processes, each told its task by TF_CONFIG."""
    ports = cluster.free_ports(5)
    spec = {
        "chief": [f"127.0.0.1:{ports[0]}"],
        "worker": [f"127.0.0.1:{p}" for p in ports[1:3]],
        "ps": [f"127.0.0.1:{p}" for p in ports[3:]],
    }
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "mmrec_tf.main",
        *_flags(run, "--epochs=1"),
        "--distribution_strategy=parameter_server",
    ]

    def start(kind, index):
        env = _env()
        env["TF_CONFIG"] = json.dumps({"cluster": spec, "task": {"type": kind, "index": index}})
        return subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    servers = [start("worker", 0), start("worker", 1), start("ps", 0), start("ps", 1)]
    try:
        chief = start("chief", 0)
        output = chief.communicate(timeout=900)[0]
        assert chief.returncode == 0, output[-3000:]
        # The servers serve until they are stopped; none has exited.
        assert all(s.poll() is None for s in servers)
    finally:
        for s in servers:
            s.kill()
            s.wait()
    results = _results(run)
    assert results["train"]["epochs_completed"] == 1
    # The workers drew the batches from the graph the chief sent them.
    assert results["train"]["input_pipeline"] == "per_worker"
    assert results["cluster"]["parameter_servers"] == [
        "/job:ps/replica:0/task:0",
        "/job:ps/replica:0/task:1",
    ]
    assert results["test"]["sampled"]["cases"] > 0
    # Only the chief wrote: the servers never read the data or the folder.
    assert not (run / "workers").exists()


def test_parameter_server_softmax_workers_draw_their_own_candidate_sets(tmp_path):
    """The softmax recipe without graph signals: each worker draws its shared candidates."""
    recipe = [
        f"--flagfile={RESIDUAL}",
        # 4 whole batches of this log's 272 training buys: the workers' batches
        # are always whole, and a short batch (fewer in-batch candidates)
        # has a lower softmax loss, so the single process must have none.
        "--batch_size=68",
        "--shared_negatives=64",
        "--valid_full_ranking_cases=0",
        "--early_stopping_patience=0",
        "--epochs=2",
    ]
    _main(*_flags(tmp_path / "single", *recipe))
    _on_cluster(*_flags(tmp_path / "cluster", *recipe), "--distribution_strategy=parameter_server")
    results = _results(tmp_path / "cluster")
    assert results["train"]["input_pipeline"] == "per_worker"
    history = json.load(open(tmp_path / "cluster" / "history.json"))
    _same_losses(history, json.load(open(tmp_path / "single" / "history.json")), "per_worker")
