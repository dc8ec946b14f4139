"""The Optuna study: validation only, resumable after a kill, equal budgets."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

optuna = pytest.importorskip("optuna")

from mmrec_tf import config as config_lib  # noqa: E402
from mmrec_tf import tune  # noqa: E402

_TINY = [
    "--data_format=synthetic",
    "--synthetic_users=300",
    "--synthetic_items=400",
    "--epochs=2",
    "--steps_per_epoch=3",
    "--batch_size=64",
    "--verbose=0",
    "--full_ranking_cases=50",
]


def _study(study_dir, family):
    return optuna.load_study(
        study_name=f"{family}-sampled",
        storage=f"sqlite:///{os.path.abspath(os.path.join(study_dir, f'{family}.db'))}",
    )


def _command(study_dir, trials, family="als"):
    return [
        sys.executable,
        "-m",
        "mmrec_tf.tune",
        *_TINY,
        f"--family={family}",
        "--protocol=sampled",
        f"--trials={trials}",
        f"--study_dir={study_dir}",
    ]


def test_search_spaces_map_to_config_fields():
    for family in tune.FAMILIES:
        trial = optuna.create_study().ask()
        overrides = tune.search_space(trial, family)
        config = tune.apply(config_lib.ExperimentConfig(), overrides)
        assert config.model.model == overrides["model"]
    # The ALS space reaches 128+ factors and supportive weights of 3+.
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    als = [tune.search_space(study.ask(), "als") for _ in range(40)]
    assert max(o["mf_dim"] for o in als) >= 128
    assert max(o["als_supportive_weight"] for o in als) >= 3


def test_a_killed_study_resumes_without_rerunning_finished_trials(tmp_path):
    # First: a study of 2 trials, finished.
    subprocess.run(_command(tmp_path, 2), check=True, capture_output=True, timeout=600)
    first = _study(tmp_path, "als")
    done = [(t.number, t.value, t.params) for t in first.trials]
    # Two trials ran; the other reference points wait for a resumed study.
    states = [t.state for t in first.trials]
    assert states[:2] == [optuna.trial.TrialState.COMPLETE] * 2
    assert set(states[2:]) <= {optuna.trial.TrialState.WAITING}
    # Trials ran in mode=train: validation only, no test figures.
    results = (tmp_path / "als_sampled_trial_0000" / "results.json").read_text()
    assert '"validation"' in results and '"test"' not in results
    # The first trials are the implicit library's reference points.
    assert [t.params for t in first.trials[:2]] == list(tune.STARTS["als"][:2])

    # Then: asked for 4, killed while a neural trial runs (the mmf study in
    # the same folder), then asked again: the finished ALS trials are kept.
    proc = subprocess.Popen(
        _command(tmp_path, 4, family="bpr"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            running = _study(tmp_path, "bpr").get_trials(states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:
            running = []
        if running:
            break
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = _study(tmp_path, "bpr")
    assert any(t.state == optuna.trial.TrialState.RUNNING for t in killed.trials)
    finished_before = [
        t.number for t in killed.trials if t.state == optuna.trial.TrialState.COMPLETE
    ]

    subprocess.run(
        _command(tmp_path, 4, family="bpr"), check=True, capture_output=True, timeout=900
    )
    resumed = _study(tmp_path, "bpr")
    states = [t.state for t in resumed.trials]
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert sum(s in finished for s in states) == 4
    # The trial the kill interrupted is failed, not counted and not resumed.
    assert optuna.trial.TrialState.FAIL in states
    for number in finished_before:
        assert resumed.trials[number].state == optuna.trial.TrialState.COMPLETE
    # The ALS study beside it is untouched.
    assert [(t.number, t.value, t.params) for t in _study(tmp_path, "als").trials] == done
    best = tmp_path / "best_bpr_sampled.json"
    assert best.exists()
    # The best trial as a flagfile that the binary takes as it is.
    from mmrec_tf import cli
    from tests.mmrec_tf.test_main import _flags

    overrides = json.loads(best.read_text())["best_overrides"]
    config = cli.config_from_flags(
        _flags([*_TINY, "--model_dir=x", f"--flagfile={tmp_path / 'best_bpr_sampled.flags'}"])
    )
    assert config == tune.apply(config, overrides)
    assert config.train.loss == "bpr" and config.model.mf_dim == overrides["mf_dim"]
    # Resumed, a seeded study draws new configurations, not its first ones again.
    subprocess.run(_command(tmp_path, 4), check=True, capture_output=True, timeout=600)
    params = [t.params for t in _study(tmp_path, "als").trials]
    assert len(params) == 4 and params[2] not in params[:2] and params[3] not in params[:2]


def test_the_sampler_seed_depends_on_dataset_family_and_protocol():
    seeds = {
        tune.sampler_seed(0, d, f, p)
        for d in ("jd_vcgae", "taobao_cml")
        for f in ("als", "cascade")
        for p in ("full", "sampled")
    }
    assert len(seeds) == 8
    assert tune.sampler_seed(0, "a", "als", "full") == tune.sampler_seed(0, "a", "als", "full")
    assert tune.sampler_seed(1, "a", "als", "full") != tune.sampler_seed(0, "a", "als", "full")


def test_the_report_renders_every_trial_of_every_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'als.db'}"
    study = optuna.create_study(study_name="als-full", storage=storage, direction="maximize")

    def objective(trial):
        factors = trial.suggest_categorical("mf_dim", [32, 64])
        weight = trial.suggest_float("als_supportive_weight", 0.0, 4.0)
        if trial.number == 1:
            trial.report(0.05, 0)
            trial.report(0.0612345, 1)
            raise optuna.TrialPruned()
        if trial.number == 2:
            raise RuntimeError("a broken trial")
        return factors / 1000 + weight / 100

    study.enqueue_trial({"mf_dim": 64, "als_supportive_weight": 1.23456})
    study.optimize(objective, n_trials=3, catch=(RuntimeError,))
    optuna.create_study(study_name="als-sampled", storage=storage).enqueue_trial({"mf_dim": 32})
    text = tune.study_tables(str(tmp_path))
    full, sampled = text.split("\n\n## ")
    assert full.startswith("## als-full: 2 finished trials of 3")
    assert "| 0 | complete | 0.0763 | mf_dim=64, als_supportive_weight=1.235 |" in full
    assert "| 1 | pruned at epoch 1 | 0.0612 | " in full
    assert "| 2 | fail |  | " in full
    assert sampled.startswith("als-sampled: 0 finished trials of 1")
    assert "| 0 | waiting |  |  |" in sampled
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no study database"):
        tune.study_tables(str(empty))


def test_a_known_good_point_whose_trial_failed_is_queued_again():
    study = optuna.create_study()
    assert tune._starts_to_queue(study, "cascade") == list(tune.STARTS["cascade"])
    for start in tune.STARTS["cascade"]:
        study.enqueue_trial(start)
    # Queued: nothing more to queue.
    assert tune._starts_to_queue(study, "cascade") == []
    # The first start's trial dies with its process; the second finishes.
    failed = study.ask()
    tune.search_space(failed, "cascade")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    done = study.ask()
    tune.search_space(done, "cascade")
    study.tell(done, 0.5)
    assert tune._starts_to_queue(study, "cascade") == [tune.STARTS["cascade"][0]]


def test_a_study_resumed_with_other_flags_or_data_is_refused(tmp_path):
    import dataclasses

    log = tmp_path / "log.tsv"

    def write(offset):
        rows = [
            f"{u}\t{(u * 7 + k + offset) % 300}\t{b}\t\t{'test' if k == 0 else 'train'}"
            for u in range(80)
            for k, b in enumerate(["buy", "buy", "cart", "buy", "buy"])
        ]
        log.write_text("user\titem\tbehavior\ttimestamp\tsplit\n" + "\n".join(rows) + "\n")

    write(0)
    base = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(data_path=str(log), data_format="tsv"),
        model=config_lib.ModelConfig(model="cascade"),
        model_dir=str(tmp_path / "m"),
    )
    study = str(tmp_path / "study")
    tune.run_study(base, family="cascade", protocol="full", trials=1, study_dir=study)
    # The same settings resume (where the runs go changes nothing), and so
    # does the same data at another path; the record holds no path.
    elsewhere = dataclasses.replace(base, model_dir=str(tmp_path / "elsewhere"))
    tune.run_study(elsewhere, family="cascade", protocol="full", trials=1, study_dir=study)
    moved = tmp_path / "moved.tsv"
    moved.write_text(log.read_text())
    tune.run_study(
        dataclasses.replace(base, data=dataclasses.replace(base.data, data_path=str(moved))),
        family="cascade",
        protocol="full",
        trials=1,
        study_dir=study,
    )
    stored = optuna.load_study(
        study_name="cascade-full", storage=f"sqlite:///{os.path.join(study, 'cascade.db')}"
    )
    assert "data.data_path" not in stored.user_attrs["record"]["config"]
    other = dataclasses.replace(base, eval=config_lib.EvalConfig(valid_full_ranking_cases=30))
    with pytest.raises(ValueError, match=r"eval\.valid_full_ranking_cases: the study has 0"):
        tune.run_study(other, family="cascade", protocol="full", trials=2, study_dir=study)
    # A study started before a field was retired or added resumes when it held
    # the retired constant and the command holds the new field's default.
    record = optuna.load_study(
        study_name="cascade-full", storage=f"sqlite:///{os.path.join(study, 'cascade.db')}"
    )
    older = json.loads(json.dumps(record.user_attrs["record"]))
    older["config"]["model.als_iterations"] = 15
    older["config"]["train.behavior_weights"] = []  # a retired tuple, as JSON holds it
    del older["config"]["model.cascade_blend"]
    record.set_user_attr("record", older)
    tune.run_study(base, family="cascade", protocol="full", trials=1, study_dir=study)
    older["config"]["model.als_iterations"] = 30
    record.set_user_attr("record", older)
    with pytest.raises(ValueError, match=r"model\.als_iterations: the study has 30"):
        tune.run_study(base, family="cascade", protocol="full", trials=1, study_dir=study)
    older["config"]["model.als_iterations"] = 15
    record.set_user_attr("record", older)
    # Other records of the same size: the data's content differs.
    write(1)
    with pytest.raises(ValueError, match=r"data content.*new --study_dir"):
        tune.run_study(base, family="cascade", protocol="full", trials=2, study_dir=study)


def _als_trial(study, value, l2):
    dists = {
        "mf_dim": optuna.distributions.CategoricalDistribution([8, 16]),
        "als_l2": optuna.distributions.FloatDistribution(0.1, 100.0, log=True),
        "als_alpha": optuna.distributions.FloatDistribution(1.0, 200.0, log=True),
        "als_supportive_weight": optuna.distributions.FloatDistribution(0.0, 4.0),
    }
    params = {"mf_dim": 8, "als_l2": l2, "als_alpha": 10.0, "als_supportive_weight": 1.0}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))


def test_the_als_starts_are_the_best_als_trial_of_each_ridge_band():
    study = optuna.create_study(direction="maximize")
    for value, l2 in [(0.30, 0.2), (0.31, 0.5), (0.25, 2.0), (0.28, 30.0), (0.20, 50.0)]:
        _als_trial(study, value, l2)
    choices = tune.als_starts(study)
    assert [c["trial"] for c in choices] == [1, 3, 2]
    assert choices[1]["params"]["als_l2"] == 30.0 and choices[1]["value"] == 0.28
    assert tune.als_starts(None) == []


def test_the_mmf_study_draws_its_als_start_and_keeps_the_choices_on_resume(tmp_path):
    log = tmp_path / "log.tsv"
    rows = [
        f"{u}\t{(u * 7 + k) % 300}\t{b}\t\t{'test' if k == 0 else 'train'}"
        for u in range(80)
        for k, b in enumerate(["buy", "buy", "cart", "buy", "buy", "cart"])
    ]
    log.write_text("user\titem\tbehavior\ttimestamp\tsplit\n" + "\n".join(rows) + "\n")
    base = config_lib.ExperimentConfig(
        data=config_lib.DataConfig(data_path=str(log), data_format="tsv"),
        # The base blends with CascadingRank, as the shipped `_mmf.flags` do.
        model=config_lib.ModelConfig(mf_dim=8, cascade_blend=True),
        train=config_lib.TrainConfig(
            epochs=1, steps_per_epoch=2, batch_size=32, verbose=0, early_stopping_margin=0.0
        ),
        model_dir=str(tmp_path / "m"),
    )
    study_dir = str(tmp_path / "study")
    os.makedirs(study_dir)
    als = optuna.create_study(
        study_name="als-full",
        storage=f"sqlite:///{os.path.join(study_dir, 'als.db')}",
        direction="maximize",
    )
    for value, l2 in [(0.30, 0.5), (0.20, 2.0), (0.25, 30.0)]:
        _als_trial(als, value, l2)
    study = tune.run_study(base, family="mmf", protocol="full", trials=2, study_dir=study_dir)
    assert [c["trial"] for c in study.user_attrs["als_choices"]] == [0, 2, 1]
    trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    # The shipped recipe is tried first on each ALS choice, best first; every
    # trial takes the settings of the ALS it drew, and its run fits that ALS.
    assert [t.params["als_trial"] for t in trials] == [0, 2]
    assert trials[0].params["graph_signals"] and trials[1].params["graph_signals"]
    blended = []
    for t in trials:
        drawn = als.trials[t.params["als_trial"]].params
        overrides = json.loads(t.user_attrs["overrides"])
        assert {k: overrides[k] for k in drawn} == drawn
        run_dir = os.path.join(study_dir, f"mmf_full_trial_{t.number:04d}")
        run = json.load(open(os.path.join(run_dir, "config.json")))
        assert run["model"]["als_l2"] == drawn["als_l2"]
        # The trial's value is what its run would ship: the blend at the
        # weight the run kept, on the validation cases.
        results = json.load(open(os.path.join(run_dir, "results.json")))
        record = results["cascade_blend"]
        assert t.value == record["HR@10"][str(record["weight"])]
        blended.append(t.value - results["train"]["best_validation"]["HR@10"])
    # On this log the blend moves the figure: a value of the model alone would differ.
    assert any(gain > 0 for gain in blended), blended
    # The ALS study grows a better trial: the resumed study keeps its choices.
    _als_trial(als, 0.40, 5.0)
    resumed = tune.run_study(base, family="mmf", protocol="full", trials=3, study_dir=study_dir)
    assert [c["trial"] for c in resumed.user_attrs["als_choices"]] == [0, 2, 1]
    ran = resumed.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert [t.params["als_trial"] for t in ran] == [0, 2, 1]
