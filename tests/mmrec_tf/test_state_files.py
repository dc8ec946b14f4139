"""Every state file a run writes, damaged three ways: the error names it and the fix.

The table of these files is docs/STATE_FILES.md; each of its rows is a case here
(or, where noted there, in the test named beside it).
"""

import os

import numpy as np
import pytest

from mmrec_tf import run_record
from mmrec_tf import train as train_lib
from tests.mmrec_tf.test_run_record import _run

DAMAGES = {
    "truncate": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: b"\x00garbage{" * 7,
}

# (file in the model_dir, the command that reads it, a word of the fix)
STATE_FILES = [
    ("config.json", ["--mode=evaluate"], "new --model_dir"),
    ("data_fingerprint.json", ["--mode=evaluate"], "new --model_dir"),
    ("history.json", ["--epochs=2"], "resume without"),
    (os.path.join("best", "weights.index"), ["--mode=evaluate"], "kept epoch's weights"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("state") / "run"
    _run(model_dir)
    return model_dir


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("name, command, fix", STATE_FILES, ids=[f[0] for f in STATE_FILES])
def test_a_damaged_state_file_is_named_with_the_fix(trained, tmp_path, name, command, fix, damage):
    import shutil

    model_dir = tmp_path / "run"
    shutil.copytree(trained, model_dir)
    path = model_dir / name
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises((run_record.DamagedFileError, run_record.RunRecordError)) as error:
        _run(model_dir, *command)
    message = str(error.value)
    assert str(path) in message or str(path).replace(".index", ".*") in message, message
    assert fix in message


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_hits_file_is_named_with_the_fix(tmp_path, damage):
    path = tmp_path / "validation_hits.npy"
    np.save(path, np.ones(10, bool))
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises(run_record.DamagedFileError, match=r"validation_hits\.npy is damaged"):
        run_record.read_array(str(path), "restore it")


def test_load_best_names_missing_weights(tmp_path):
    from tests.mmrec_tf.test_models import _scorer

    with pytest.raises(run_record.DamagedFileError, match="kept epoch's weights"):
        train_lib.load_best(_scorer(), str(tmp_path / "best" / "weights"))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_study_database_is_named_with_the_fix(tmp_path, damage):
    from mmrec_tf import config as config_lib
    from mmrec_tf import tune

    base = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(synthetic_users=200, synthetic_items=300),
        model=config_lib.ModelConfig(model="cascade"),
        model_dir=str(tmp_path / "m"),
    )
    tune.run_study(base, family="cascade", protocol="full", trials=1, study_dir=str(tmp_path))
    path = tmp_path / "cascade.db"
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    if damage == "empty":
        # An empty file is a new SQLite database: the study starts again, nothing is lost
        # that the file still held.
        tune.run_study(base, family="cascade", protocol="full", trials=1, study_dir=str(tmp_path))
        return
    with pytest.raises(run_record.DamagedFileError, match=r"cascade\.db is damaged.*study_dir"):
        tune.run_study(base, family="cascade", protocol="full", trials=2, study_dir=str(tmp_path))


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_export_is_named_with_the_fix(trained, tmp_path, damage):
    import shutil

    model_dir = tmp_path / "run"
    shutil.copytree(trained, model_dir)
    serving = tmp_path / "serving"
    _run(model_dir, "--mode=export", f"--export_dir={serving}")
    path = serving / "1" / "saved_model.pb"
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    with pytest.raises(run_record.DamagedFileError, match=r"serving/1 is damaged.*export the run"):
        _run(tmp_path / "evaluation", "--mode=evaluate_export", f"--export_dir={serving}")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_lock_file_of_no_live_holder_is_taken(tmp_path, damage):
    from mmrec_tf import locks

    with locks.exclusive(str(tmp_path)):
        pass
    path = tmp_path / ".lock"
    path.write_bytes(DAMAGES[damage](path.read_bytes()))
    # Its content only names a holder; with none alive, the lock is taken.
    with locks.exclusive(str(tmp_path)):
        assert path.exists()
