"""Determinism and crash recovery: same seed, same metrics; SIGKILL, restart, same end."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mmrec_tf import cli

QUICKSTART = os.path.join(os.path.dirname(cli.__file__), "configs", "quickstart.flags")
SMALL = [
    f"--flagfile={QUICKSTART}",
    "--synthetic_users=600",
    "--synthetic_items=500",
    "--batch_size=32",
    "--epochs=4",
    "--early_stopping_patience=0",
    "--verbose=0",
    "--seed=3",
]


def _command(model_dir):
    return [sys.executable, "-m", "mmrec_tf.main", *SMALL, f"--model_dir={model_dir}"]


def _metrics(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        test = json.load(f)["test"]
    return {
        p: {k: v for k, v in test[p].items() if k not in ("protocol", "seconds")}
        for p in ("sampled", "full")
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("straight")
    subprocess.run(_command(model_dir), check=True, capture_output=True)
    return model_dir


def test_same_seed_same_flags_give_identical_metrics(uninterrupted, tmp_path):
    subprocess.run(_command(tmp_path), check=True, capture_output=True)
    assert _metrics(tmp_path) == _metrics(uninterrupted)


def test_sigkill_mid_epoch_then_restart_ends_like_an_uninterrupted_run(uninterrupted, tmp_path):
    process = subprocess.Popen(
        _command(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    # The manager names a checkpoint in its state file only once the
    # checkpoint is whole; its .index file appears before that.
    state = tmp_path / "checkpoints" / "checkpoint"

    def saved_second():
        return state.exists() and 'model_checkpoint_path: "ckpt-2"' in state.read_text()

    deadline = time.time() + 300
    while not saved_second() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert saved_second(), "the run ended or stalled before its second checkpoint"
    process.send_signal(signal.SIGKILL)  # during epoch 3
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "results.json").exists()
    subprocess.run(_command(tmp_path), check=True, capture_output=True)
    with open(tmp_path / "results.json") as f:
        train = json.load(f)["train"]
    assert train["resumed_from_epoch"] in (2, 3) and train["epochs_completed"] == 4
    assert _metrics(tmp_path) == _metrics(uninterrupted)
