"""MultiWorkerMirroredStrategy across two worker processes on 127.0.0.1."""

import json
import os
import subprocess
import sys

from mmrec_tf import cli
from mmrec_tf import cluster as cluster_lib

QUICKSTART = os.path.join(os.path.dirname(cli.__file__), "configs", "quickstart.flags")


def test_two_workers_train_identical_weights_and_only_the_chief_writes(tmp_path):
    ports = cluster_lib.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "run"
    export_dir = tmp_path / "serving"
    processes = []
    for index in range(2):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mmrec_tf.main",
                    f"--flagfile={QUICKSTART}",
                    "--synthetic_users=300",
                    "--synthetic_items=400",
                    "--epochs=2",
                    "--steps_per_epoch=6",
                    "--batch_size=64",
                    "--verbose=0",
                    "--distribution_strategy=multi_worker",
                    f"--model_dir={model_dir}",
                    f"--export_dir={export_dir}",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    chief = json.load(open(model_dir / "results.json"))
    other_dir = model_dir / "workers" / "worker_1"
    other = json.load(open(other_dir / "results.json"))
    assert chief["train"]["epochs_completed"] == other["train"]["epochs_completed"] == 2
    assert chief["train"]["weights_sum_abs"] == other["train"]["weights_sum_abs"]
    chief["test"]["sampled"].pop("seconds")
    other["test"]["sampled"].pop("seconds")
    assert chief["test"]["sampled"] == other["test"]["sampled"]
    # The chief alone writes into model_dir and exports.
    assert (model_dir / "checkpoints" / "checkpoint").exists()
    assert sorted(n for n in os.listdir(export_dir) if not n.startswith(".")) == ["1"]
    assert "export" in chief and "export" not in other
    assert not (other_dir / "results.json").samefile(model_dir / "results.json")
