"""The command line end to end on the quickstart flagfile, in a few dozen steps."""

import json
import os

import pytest
from absl import flags

from mmrec_tf import cli
from mmrec_tf import run as run_lib
from mmrec_tf import tune

QUICKSTART = os.path.join(os.path.dirname(cli.__file__), "configs", "quickstart.flags")


def _flags(argv):
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["mmrec_tf"] + argv)
    return fv


def tiny_quickstart(model_dir, *, steps: int) -> list[str]:
    """The quickstart flagfile on a small synthetic log: 2 epochs of `steps` steps."""
    return [
        f"--flagfile={QUICKSTART}",
        f"--model_dir={model_dir}",
        "--synthetic_users=300",
        "--synthetic_items=400",
        "--epochs=2",
        f"--steps_per_epoch={steps}",
        "--verbose=0",
    ]


def test_main_end_to_end_on_the_quickstart_flagfile(tmp_path):
    fv = _flags(tiny_quickstart(tmp_path, steps=15))
    config = cli.config_from_flags(fv)
    assert config.model.model == "mmf" and config.train.epochs == 2
    results = run_lib.run(config)
    written = json.load(open(tmp_path / "results.json"))
    assert written["dataset"] == "synthetic" and written["model"] == "mmf"
    assert written["seed"] == 0
    for protocol in ("sampled", "full"):
        metrics = written["test"][protocol]
        assert 0.0 <= metrics["HR@10"] <= 1.0 and metrics["cases"] > 0
        assert "NDCG@10" in metrics
    assert written["train"]["epochs_completed"] == 2
    assert "top_10_categorical_accuracy" in written["test"]["retrieval"]
    assert results["test"]["sampled"] == written["test"]["sampled"]
    resolved = json.load(open(tmp_path / "config.json"))
    assert resolved["model_dir"] == str(tmp_path)
    assert os.path.exists(tmp_path / "vocab" / "items.txt")
    assert os.path.exists(tmp_path / "checkpoints" / "checkpoint")
    assert os.listdir(tmp_path / "logs")

    # --mode=evaluate on the same model_dir restores the trained weights.
    evaluated = run_lib.run(
        cli.config_from_flags(
            _flags(
                [
                    f"--flagfile={QUICKSTART}",
                    f"--model_dir={tmp_path}",
                    "--synthetic_users=300",
                    "--synthetic_items=400",
                    "--mode=evaluate",
                ]
            )
        )
    )
    assert evaluated["test"]["sampled"]["HR@10"] == pytest.approx(
        results["test"]["sampled"]["HR@10"]
    )


def test_missing_model_dir_is_a_clear_error():
    with pytest.raises(ValueError, match="--model_dir is required"):
        cli.config_from_flags(_flags([]))


def test_bad_flag_value_names_the_field():
    with pytest.raises(ValueError, match="num_negatives=0 is invalid"):
        cli.config_from_flags(_flags(["--model_dir=x", "--num_negatives=0"]))


def test_a_user_error_is_one_line_and_a_non_zero_exit(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "mmrec_tf.main", f"--flagfile={QUICKSTART}"]
    bad = [f"--model_dir={tmp_path}", "--data_format=csv", f"--data_path={tmp_path}/none.csv"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(command + bad, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    shown = subprocess.run(
        command + bad + ["--show_traceback"], capture_output=True, text=True, env=env
    )
    assert shown.returncode != 0 and "Traceback" in shown.stderr


FLAGFILES = sorted(
    f[: -len(".flags")] for f in os.listdir(os.path.dirname(QUICKSTART)) if f.endswith(".flags")
)


def _finished_als_trials(dataset: str) -> list[dict]:
    """The ALS settings of every finished trial of the dataset's full-ranking ALS study."""
    import optuna

    path = os.path.join("benchmarks", "results", "tune", dataset, "als.db")
    study = optuna.load_study(study_name="als-full", storage=f"sqlite:///{path}")
    return [
        {k: t.params[k] for k in tune.ALS_SETTINGS}
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]


@pytest.mark.parametrize("name", FLAGFILES)
def test_every_flagfile_parses_into_a_valid_config(name, monkeypatch):
    # Nested flagfiles name their parent relative to the repository root.
    monkeypatch.chdir(os.path.join(os.path.dirname(QUICKSTART), "..", ".."))
    path = os.path.join(os.path.dirname(QUICKSTART), f"{name}.flags")
    if name == "paper":
        path = f"{os.path.join(os.path.dirname(QUICKSTART), 'taobao_cml.flags')} --flagfile={path}"
    argv = [f"--flagfile={p}" for p in path.split(" --flagfile=")]
    # The shared base of the real datasets' flagfiles names no data file itself.
    if name == "real_data":
        argv.append("--data_path=log.tsv")
    config = cli.config_from_flags(_flags(argv + ["--model_dir=x"]))
    assert config.train.num_negatives >= 1
    if name.endswith("_als"):
        assert config.model.model == "als" and config.model.mf_dim >= 64
    if name.endswith("_mmf"):
        # Our model on the dataset's tuned ALS: the residual recipe on its
        # factors, or on another finished trial of the same ALS study where
        # our model validated higher on it (the flagfile sets it and says why).
        als = cli.config_from_flags(
            _flags([f"--flagfile={path[: -len('_mmf.flags')]}_als.flags", "--model_dir=x"])
        )
        assert config.model.model == "mmf" and config.model.mf_init == "als_fixed"
        assert config.train.loss == "softmax" and config.model.behavior_features
        # The start is kept unless an epoch beats it beyond the validation noise.
        assert config.train.early_stopping_margin == 2
        start = {k: getattr(config.model, k) for k in tune.ALS_SETTINGS}
        if start != {k: getattr(als.model, k) for k in tune.ALS_SETTINGS}:
            assert start in _finished_als_trials(name[: -len("_mmf")]), start
    if name == "paper":
        assert config.model.mf_dim == 4 and config.train.supportive_negative_ratio == 1


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_early_stopping_follows_the_validation_protocol_it_is_given(tmp_path, protocol):
    config = cli.config_from_flags(
        _flags(
            [
                f"--model_dir={tmp_path}",
                "--synthetic_users=150",
                "--synthetic_items=200",
                "--mf_dim=4",
                "--mlp_dim=4",
                "--epochs=3",
                "--early_stopping_patience=0",
                f"--early_stopping_protocol={protocol}",
                "--verbose=0",
            ]
        )
    )
    results = run_lib.run(config)
    with open(tmp_path / "history.json") as f:
        history = json.load(f)
    # Each epoch's validation is the protocol's, and the kept epoch is the
    # best of them; the final validation (of the kept weights) agrees.
    best = max(history, key=lambda h: h["val_HR@10"])
    assert results["train"]["best_epoch"] == best["epoch"]
    assert best["val_HR@10"] == pytest.approx(results["validation"][protocol]["HR@10"])
    other = {"sampled": "full", "full": "sampled"}[protocol]
    assert results["validation"][other]["HR@10"] != pytest.approx(best["val_HR@10"])
