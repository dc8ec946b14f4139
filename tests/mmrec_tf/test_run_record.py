"""The run record and the folder locks: nothing silently resumed, restored or overwritten."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mmrec_tf import cli
from mmrec_tf import locks
from mmrec_tf import run as run_lib
from mmrec_tf import run_record
from tests.mmrec_tf.test_main import _flags

# A tiny model and a short run, on any data.
TINY_RUN = [
    "--mf_dim=4",
    "--mlp_dim=4",
    "--epochs=1",
    "--steps_per_epoch=5",
    "--verbose=0",
    "--full_ranking_cases=50",
]
TINY = ["--synthetic_users=150", "--synthetic_items=200", *TINY_RUN]


def exporter_versions(folder) -> list:
    from mmrec_tf.export import exporter

    return exporter.versions(str(folder))


def _run(model_dir, *extra):
    fv = _flags([f"--model_dir={model_dir}", *TINY, *extra])
    return run_lib.run(cli.config_from_flags(fv))


def test_a_rerun_with_other_training_flags_is_an_error_naming_the_field(tmp_path):
    _run(tmp_path, "--learning_rate=0.001")
    with pytest.raises(run_record.RunRecordError) as error:
        _run(tmp_path, "--learning_rate=0.01", "--epochs=2")
    message = str(error.value)
    assert "train.learning_rate: the run has 0.001, this command 0.01" in message
    assert "new --model_dir" in message
    # More epochs with the same settings is a resume, not a contradiction.
    resumed = _run(tmp_path, "--learning_rate=0.001", "--epochs=2")
    assert resumed["train"]["resumed_from_epoch"] == 1


def test_a_run_recorded_before_a_field_retired_resumes_unless_it_used_it(tmp_path):
    _run(tmp_path)
    path = tmp_path / run_record.CONFIG
    recorded = json.loads(path.read_text())
    # As written before the retirement: the retired fields at their values.
    recorded["model"]["fusion_dim"] = 0
    recorded["train"]["optimizer"] = "lazy_adam"
    path.write_text(json.dumps(recorded))
    assert _run(tmp_path, "--epochs=2")["train"]["resumed_from_epoch"] == 1
    # A run that used a retired option cannot be resumed as if it had not.
    recorded["train"]["row_negatives"] = 3
    path.write_text(json.dumps(recorded))
    with pytest.raises(
        run_record.RunRecordError, match=r"train.row_negatives: the run has 3.*retired"
    ):
        _run(tmp_path, "--epochs=3")


def test_a_run_recorded_before_a_field_existed_resumes_at_its_default_only(tmp_path):
    _run(tmp_path)
    path = tmp_path / run_record.CONFIG
    recorded = json.loads(path.read_text())
    # As written before --history_length existed.
    del recorded["model"]["history_length"]
    path.write_text(json.dumps(recorded))
    assert _run(tmp_path, "--epochs=2")["train"]["resumed_from_epoch"] == 1
    # Asking for the new option is not what that run did.
    with pytest.raises(
        run_record.RunRecordError,
        match=r"model.history_length: the run has '\(absent\)', this command 2",
    ):
        _run(tmp_path, "--epochs=3", "--history_length=2")


def test_export_without_the_runs_model_flags_is_an_error(tmp_path):
    _run(tmp_path, "--behavior_features")
    with pytest.raises(run_record.RunRecordError, match="model.behavior_features"):
        _run(tmp_path, "--mode=export", f"--export_dir={tmp_path / 'serving'}")
    # No version was written (the folder's lock file may be there).
    assert not exporter_versions(tmp_path / "serving")


def test_other_data_of_the_same_size_is_an_error(tmp_path):
    log = tmp_path / "log.tsv"
    rows = [
        f"{u}\t{(u * 7 + k) % 250}\t{b}\t\t{'test' if k == 0 else 'train'}"
        for u in range(200)
        for k, b in enumerate(["buy", "buy", "cart", "buy"])
    ]
    log.write_text("user\titem\tbehavior\ttimestamp\tsplit\n" + "\n".join(rows) + "\n")
    data = [f"--data_path={log}", "--data_format=tsv"]
    _run(tmp_path / "run", *data)
    # The same number of records and ids, other item ids.
    log.write_text(log.read_text().replace("\t5\t", "\t299\t"))
    with pytest.raises(run_record.RunRecordError, match="data.items_sha256"):
        _run(tmp_path / "run", *data, "--mode=evaluate")


def test_permuted_data_of_the_same_ids_is_refused_by_evaluate_resume_and_export(tmp_path):
    log = tmp_path / "log.tsv"
    rows = [
        (u, (u * 7 + k) % 250, b, "test" if k == 0 else "train")
        for u in range(200)
        for k, b in enumerate(["buy", "buy", "cart", "buy"])
    ]

    def write(records):
        text = "\n".join(f"{u}\t{i}\t{b}\t\t{s}" for u, i, b, s in records)
        log.write_text("user\titem\tbehavior\ttimestamp\tsplit\n" + text + "\n")

    write(rows)
    data = [f"--data_path={log}", "--data_format=tsv"]
    _run(tmp_path / "run", *data)
    # The item column shuffled: the same users, items and record count.
    items = [i for _, i, _, _ in rows]
    order = list(reversed(range(len(items))))
    write([(u, items[k], b, s) for (u, _, b, s), k in zip(rows, order)])
    for extra in (
        ["--mode=evaluate"],
        ["--epochs=2"],
        ["--mode=export", f"--export_dir={tmp_path / 'serving'}"],
    ):
        with pytest.raises(run_record.RunRecordError) as error:
            _run(tmp_path / "run", *data, *extra)
        message = str(error.value)
        assert "data.content_sha256" in message and str(log) in message
        assert "new --model_dir" in message
    # No version was written (the folder's lock file may be there).
    assert not exporter_versions(tmp_path / "serving")


def test_checkpoints_without_the_runs_config_are_refused(tmp_path):
    _run(tmp_path / "run")
    os.remove(tmp_path / "run" / run_record.CONFIG)
    for extra in ([], ["--mode=evaluate"], ["--epochs=2"]):
        with pytest.raises(run_record.RunRecordError, match="trained run but no config.json"):
            _run(tmp_path / "run", *extra)


def test_evaluate_writes_beside_the_runs_files_not_over_them(tmp_path):
    trained = _run(tmp_path)
    before = {
        name: (tmp_path / name).read_bytes()
        for name in ("config.json", "results.json", "data_report.json", "vocab/items.txt")
    }
    evaluated = _run(tmp_path, "--mode=evaluate")
    for name, content in before.items():
        assert (tmp_path / name).read_bytes() == content, name
    assert json.load(open(tmp_path / "results.json"))["train"] == trained["train"]
    assert json.load(open(tmp_path / "evaluation.json"))["test"] == evaluated["test"]


def test_a_model_dir_in_use_is_an_error_naming_the_holder(tmp_path):
    with locks.exclusive(str(tmp_path), what="--model_dir"):
        with pytest.raises(locks.LockError, match=rf"pid {os.getpid()} on host"):
            _run(tmp_path)


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from mmrec_tf import locks\n"
            "with locks.exclusive(sys.argv[1]):\n"
            "    print('held', flush=True); time.sleep(600)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(locks.LockError, match=f"pid {holder.pid}"):
        with locks.exclusive(str(tmp_path)):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 10
    while True:
        try:
            with locks.exclusive(str(tmp_path)):
                content = json.loads((tmp_path / locks.LOCK_FILE).read_text())
            break
        except locks.LockError:
            assert time.time() < deadline
            time.sleep(0.1)
    assert content["pid"] == os.getpid()


def test_an_export_folder_in_use_is_an_error(tmp_path):
    from mmrec_tf.export import exporter

    with locks.exclusive(str(tmp_path / "serving")):
        with pytest.raises(locks.LockError, match="--export_dir"):
            exporter.export(None, str(tmp_path / "serving"), warmup_user_ids=[], warmup_item_ids=[])


def test_a_run_whose_export_folder_is_in_use_fails_before_reading_the_data(tmp_path):
    serving = tmp_path / "serving"
    with locks.exclusive(str(serving)):
        with pytest.raises(locks.LockError, match="--export_dir"):
            _run(
                tmp_path / "run",
                f"--export_dir={serving}",
                "--data_format=tsv",
                "--data_path=/no/such/file.tsv",
            )
    # Nothing of the run was written: it stopped before the data.
    assert not (tmp_path / "run" / run_record.CONFIG).exists()
