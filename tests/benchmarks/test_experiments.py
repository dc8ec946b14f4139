"""The experiment runner: validation-only tuning, seeds, resume, reports."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from benchmarks import experiments

TINY = [
    "--synthetic_users=200",
    "--synthetic_items=150",
    "--synthetic_records_per_user=20",
]


class _FakeRunner:
    """Results by (mf_dim, seed): validation favours 8 (sampled) and 16 (full); test the reverse."""

    dataset = "quickstart"

    def __init__(self):
        self.calls = []

    def run(self, overrides, seed):
        self.calls.append((dict(overrides), seed))
        d = overrides.get("mf_dim", 4)
        valid = {
            "sampled": {"HR@10": {4: 0.1, 8: 0.5, 16: 0.3}[d]},
            "full": {"HR@10": {4: 0.1, 8: 0.2, 16: 0.4}[d]},
        }
        test = {
            p: {"HR@10": 1 - valid[p]["HR@10"] + seed / 100, "NDCG@10": 0.1 * seed, "cases": 50}
            for p in valid
        }
        return {"seed": seed, "validation": valid, "test": test, "run_dir": f"r{d}_{seed}"}


def test_each_protocol_takes_the_point_best_on_validation_and_reports_its_test_mean(monkeypatch):
    grid = ({"mf_dim": 4}, {"mf_dim": 8}, {"mf_dim": 16})
    monkeypatch.setitem(
        experiments.SUITES, "fake", lambda behaviors: [experiments.Arm("M", {"model": "ncf"}, grid)]
    )
    runner = _FakeRunner()
    report = experiments.run_suite("fake", runner, seeds=3)
    arm = report["arms"][0]
    assert arm["sampled"]["chosen"] == {"mf_dim": 8}
    assert arm["full"]["chosen"] == {"mf_dim": 16}
    # Tuning used seed 0 only; the chosen points then ran seeds 0-2.
    assert sorted(s for o, s in runner.calls if o["mf_dim"] == 4) == [0]
    assert sorted({s for o, s in runner.calls if o["mf_dim"] == 8}) == [0, 1, 2]
    # Test figures: mean over seeds and the standard error across them.
    assert arm["sampled"]["HR@10"] == pytest.approx(0.5 + 0.01)
    assert arm["sampled"]["HR@10_se"] == pytest.approx(0.01 / math.sqrt(3))
    assert arm["full"]["HR@10"] == pytest.approx(0.6 + 0.01)
    assert arm["sampled"]["cases"] == 50


def test_one_seed_reports_the_standard_error_over_cases():
    run = {
        "seed": 0,
        "test": {
            "full": {
                "HR@10": 0.2,
                "HR@10_se": 0.01,
                "NDCG@10": 0.1,
                "NDCG@10_se": 0.005,
                "cases": 400,
            }
        },
    }
    summary = experiments.summarize([run], "full")
    assert summary["HR@10_se"] == 0.01 and summary["NDCG@10_se"] == 0.005
    assert experiments.format_metric(summary, "HR@10") == "0.2000 ± 0.0100"


def test_a_suite_runs_resumes_without_rerunning_and_writes_its_report(tmp_path):
    runner = experiments.Runner(
        dataset="quickstart", data_dir="", runs_dir=str(tmp_path / "runs"), extra_flags=TINY
    )
    suite = [experiments.Arm("ALS", {"model": "als", "als_supportive_weight": 0.5})]
    experiments.SUITES["_tiny"] = lambda behaviors: suite
    try:
        report = experiments.run_suite("_tiny", runner, seeds=2)
        assert runner.launched == 2
        again = experiments.Runner(
            dataset="quickstart", data_dir="", runs_dir=str(tmp_path / "runs"), extra_flags=TINY
        )
        assert experiments.run_suite("_tiny", again, seeds=2) == report
        assert again.launched == 0
    finally:
        del experiments.SUITES["_tiny"]
    arm = report["arms"][0]
    for protocol in ("sampled", "full"):
        assert 0 <= arm[protocol]["HR@10"] <= 1 and arm[protocol]["cases"] > 0
    written = experiments.write_report(report, str(tmp_path / "out"), "python -m ...")
    md = (tmp_path / "out" / "quickstart" / "_tiny.md").read_text()
    assert f"{arm['sampled']['HR@10']:.4f}" in md
    saved = json.loads((tmp_path / "out" / "quickstart" / "_tiny.json").read_text())
    assert saved["arms"][0]["sampled"]["HR@10"] == arm["sampled"]["HR@10"]
    assert not any(os.path.isabs(d) for d in saved["arms"][0]["sampled_run_dirs"])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in md
    else:
        assert any(p.endswith(".png") for p in written)


def test_runs_are_keyed_by_their_resolved_config(tmp_path):
    base = ["--flagfile=" + os.path.join(experiments.CONFIGS, "quickstart.flags"), "--seed=0"]
    key = experiments.config_key(base)
    assert experiments.config_key(list(base)) == key
    # Another value, even through an extra flag, is another run.
    assert experiments.config_key(base + ["--epochs=5"]) != key
    # A flag set to its flagfile value resolves to the same config.
    assert experiments.config_key(base + ["--model=mmf"]) == key
    # The flagfile's contents, not its name, count.
    copy = tmp_path / "copy.flags"
    copy.write_text(open(os.path.join(experiments.CONFIGS, "quickstart.flags")).read())
    assert experiments.config_key([f"--flagfile={copy}", "--seed=0"]) == key
    copy.write_text(copy.read_text() + "\n--learning_rate=0.5\n")
    assert experiments.config_key([f"--flagfile={copy}", "--seed=0"]) != key
    # The key the recorded runs hold: a config field added later must join
    # ADDED_AT_DEFAULT, and one retired RETIRED_AT, or every recorded run
    # would be missed (editing quickstart.flags changes it too).
    assert key == "c2304abead"
    # A field added later keys nothing at its default, and a value of it does.
    assert experiments.config_key(base + ["--cascade_alpha=0.7"]) == key
    assert experiments.config_key(base + ["--cascade_alpha=0.5"]) != key
    # So a runner with extra flags never reuses another runner's folder.
    kwargs = dict(dataset="quickstart", data_dir="", runs_dir=str(tmp_path / "runs"))
    short = experiments.Runner(**kwargs, extra_flags=["--epochs=5"], report_only=True)
    full = experiments.Runner(**kwargs, extra_flags=[], report_only=True)
    dirs = []
    for runner in (short, full):
        with pytest.raises(experiments.MissingRun) as missing:
            runner.run({"model": "gmf"}, 0)
        dirs.append(str(missing.value))
    assert dirs[0] != dirs[1]


def test_a_failed_run_names_its_log_and_unknown_datasets_are_named(tmp_path):
    runner = experiments.Runner(
        dataset="quickstart",
        data_dir="",
        runs_dir=str(tmp_path),
        extra_flags=[*TINY, "--data_format=tsv", f"--data_path={tmp_path}/missing.tsv"],
    )
    with pytest.raises(RuntimeError, match="log.txt"):
        runner.run({"model": "als"}, 0)
    # A config that does not validate is named before anything runs.
    runner.extra_flags = [*TINY, "--mf_dim=0"]
    with pytest.raises(ValueError, match="mf_dim"):
        runner.run({"model": "als"}, 0)
    with pytest.raises(ValueError, match="no_such_set"):
        experiments.Runner(dataset="no_such_set", data_dir="", runs_dir="", extra_flags=[])
    with pytest.raises(FileNotFoundError, match="--data_dir"):
        experiments.Runner(
            dataset="taobao_cml", data_dir=str(tmp_path), runs_dir="", extra_flags=[]
        )


def test_every_suite_builds_its_arms_for_every_dataset():
    for dataset, behaviors in experiments.BEHAVIORS.items():
        for name, build in experiments.SUITES.items():
            arms = build(behaviors)
            assert arms and len({a.label for a in arms}) == len(arms), (dataset, name)
    sizes = {len(a.grid) for a in experiments.SUITES["table4"](("buy", "cart")) if a.grid}
    assert sizes == {3}  # the same tuning budget for every method


def test_report_only_reports_the_finished_arms_and_runs_nothing(tmp_path, monkeypatch):
    arms = [
        experiments.Arm("done", {"model": "als", "als_supportive_weight": 0.5}),
        experiments.Arm("not yet", {"model": "als", "als_supportive_weight": 0.25}),
    ]
    monkeypatch.setitem(experiments.SUITES, "_two", lambda behaviors: arms)
    kwargs = dict(dataset="quickstart", data_dir="", runs_dir=str(tmp_path), extra_flags=TINY)
    runner = experiments.Runner(**kwargs)
    runner.run(arms[0].overrides, 0)
    report = experiments.run_suite("_two", experiments.Runner(**kwargs, report_only=True), seeds=1)
    assert [a["label"] for a in report["arms"]] == ["done"]
    assert report["incomplete_from"] == "not yet"
    assert not any("0_25" in d for d in os.listdir(tmp_path / "quickstart"))
    experiments.write_report(report, str(tmp_path / "out"), "cmd")
    assert "Incomplete" in (tmp_path / "out" / "quickstart" / "_two.md").read_text()


def test_arms_filter_runs_only_the_matching_arms_and_names_the_labels_when_none_match(
    monkeypatch,
):
    arms = [
        experiments.Arm("MMF, paper training", {"model": "mmf", "mf_dim": 4}),
        experiments.Arm("MMF, tuned", {"model": "mmf", "mf_dim": 8}),
        experiments.Arm("NCF", {"model": "ncf", "mf_dim": 16}),
    ]
    monkeypatch.setitem(experiments.SUITES, "_three", lambda behaviors: arms)
    runner = _FakeRunner()
    report = experiments.run_suite("_three", runner, seeds=1, only=["ncf", "Paper"])
    assert [a["label"] for a in report["arms"]] == ["MMF, paper training", "NCF"]
    assert sorted(o["mf_dim"] for o, _ in runner.calls) == [4, 4, 16, 16]
    with pytest.raises(ValueError, match="BPR.*MMF, paper training; MMF, tuned; NCF"):
        experiments.run_suite("_three", _FakeRunner(), seeds=1, only=["BPR"])


def test_the_package_exports_what_it_lists():
    for name in experiments.__all__:
        assert hasattr(experiments, name), name


def test_our_model_takes_the_start_whose_seed_0_run_validates_higher(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(experiments.__file__)))
    import accuracy

    class Runner:
        def __init__(self, figures):
            self.figures, self.calls = figures, []

        def run(self, overrides, seed):
            self.calls.append((overrides.get("behavior_init", "zero"), seed))
            figure = self.figures[overrides.get("behavior_init", "zero")]
            if figure is None:
                raise accuracy.experiments.MissingRun("not run")
            return {"train": {"best_validation": {"HR@10": figure}}}

    residual = {"mf_init": "als_fixed"}
    at_0, touched = (label for label, _ in accuracy.STARTS)
    runner = Runner({"zero": 0.30, "touched_first": 0.31})
    chosen, figures = accuracy.choose_start(runner, residual)
    assert chosen == {"behavior_init": "touched_first"}
    assert figures == {at_0: 0.30, touched: 0.31}
    assert runner.calls == [("zero", 0), ("touched_first", 0)]
    # A tie keeps the offsets at 0; a start that has not run is not chosen.
    assert accuracy.choose_start(Runner({"zero": 0.3, "touched_first": 0.3}), residual)[0] == {}
    assert accuracy.choose_start(Runner({"zero": None, "touched_first": 0.1}), residual)[0] == {
        "behavior_init": "touched_first"
    }
    assert accuracy.choose_start(Runner({"zero": None, "touched_first": None}), residual) == (
        None,
        {},
    )


def test_the_sampled_protocol_has_its_own_tuned_rows(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(experiments.__file__)))
    import accuracy

    study = tmp_path / "toy"
    study.mkdir()
    for protocol, dim in (("full", 64), ("sampled", 32)):
        (study / f"best_als_{protocol}.json").write_text(
            json.dumps({"trials": 5, "best_overrides": {"model": "als", "mf_dim": dim}})
        )
    arms = dict(accuracy.arms(str(tmp_path), "toy"))
    assert arms[accuracy.SAMPLED_ALS] == {"model": "als", "mf_dim": 32, "trials": 5}
    ours = arms[accuracy.SAMPLED_OURS]
    assert ours["mf_dim"] == 32 and ours["early_stopping_protocol"] == "sampled"
    assert arms[accuracy.OURS]["mf_dim"] == 64
    assert arms[accuracy.OURS]["early_stopping_protocol"] == "full"
    # Without a sampled study the two rows say so (None), the others stand.
    (study / "best_als_sampled.json").unlink()
    arms = dict(accuracy.arms(str(tmp_path), "toy"))
    assert arms[accuracy.SAMPLED_ALS] is None and arms[accuracy.SAMPLED_OURS] is None
    assert arms[accuracy.OURS] is not None


def test_our_model_starts_from_the_als_of_the_shipped_flagfile(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(experiments.__file__)))
    import accuracy

    study = tmp_path / "tune" / "toy"
    study.mkdir(parents=True)
    best = {"model": "als", "mf_dim": 64, "als_l2": 0.5, "als_alpha": 7.0}
    (study / "best_als_full.json").write_text(json.dumps({"trials": 9, "best_overrides": best}))
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "toy.flags").write_text("--synthetic_users=50\n")
    monkeypatch.setattr(accuracy.experiments, "CONFIGS", str(configs))
    # No shipped flagfile: the study's best.
    assert dict(accuracy.arms(str(tmp_path / "tune"), "toy"))[accuracy.OURS]["als_l2"] == 0.5
    # A shipped flagfile that keeps another trial's ALS (validated higher as a start).
    (configs / "toy_mmf.flags").write_text(
        f"--flagfile={configs / 'toy.flags'}\n--mf_dim=32\n--als_l2=20.0\n--als_alpha=100.0\n"
    )
    arms = dict(accuracy.arms(str(tmp_path / "tune"), "toy"))
    for label in (accuracy.OURS, *(label for label, _ in accuracy.STARTS)):
        assert (arms[label]["mf_dim"], arms[label]["als_l2"], arms[label]["als_alpha"]) == (
            32,
            20.0,
            100.0,
        ), label
    # The ALS rows keep the study's best.
    assert arms["ALS multi-behavior (tuned)"] == {**best, "trials": 9}
    assert arms[accuracy.SHIPPED]["als_l2"] == 20.0


def test_a_previous_reports_measured_rows_are_carried(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(experiments.__file__)))
    import accuracy

    measured = {"arm": "a", "flags": ["--x=1"], "full": {"HR@10": 0.1}}
    path = tmp_path / "accuracy.json"
    path.write_text(
        json.dumps({"datasets": {"toy": [measured, {"arm": "b", "missing": "not run yet"}]}})
    )
    assert accuracy.carried_rows(str(path)) == {("toy", "a"): measured}
    assert accuracy.carried_rows(str(tmp_path / "none.json")) == {}
    # It stands for an arm only with the same flags and more seeds than the store holds.
    row = {**measured, "seeds": [0, 1, 2]}
    assert accuracy.carries(row, ["--x=1"], runs=[{"seed": 0}])
    assert not accuracy.carries(row, ["--x=2"], runs=[])
    assert not accuracy.carries(row, ["--x=1"], runs=[{"seed": s} for s in range(3)])
    assert not accuracy.carries(None, ["--x=1"], runs=[])


def test_the_start_of_a_carried_row_is_read_back_from_its_flags(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(experiments.__file__)))
    import accuracy

    recipe = {"mf_init": "als_fixed"}
    touched = {"behavior_init": "touched_first"}
    row = {"flags": experiments.flag_args({**recipe, **touched})}
    assert accuracy.earlier_start(row, recipe) == touched
    assert accuracy.earlier_start({"flags": experiments.flag_args(recipe)}, recipe) == {}
    assert accuracy.earlier_start({"flags": ["--mf_init=random"]}, recipe) is None


def test_a_start_whose_run_was_cleared_keeps_its_earlier_figure(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(experiments.__file__)))
    import accuracy

    recipe = {"mf_init": "als_fixed"}
    zero, touched = (label for label, _ in accuracy.STARTS)
    earlier = {"flags": experiments.flag_args(recipe)}
    earlier["start_validation_HR@10"] = {zero: 0.30, touched: 0.20}
    # Only the touched-first run is in the store: offsets at 0 still win on the earlier figure.
    picked, figures = accuracy.merge_starts(
        {touched: 0.25}, earlier, recipe, {"behavior_init": "touched_first"}
    )
    assert picked == {} and figures == {zero: 0.30, touched: 0.25}
    # A tie keeps offsets at 0, whatever order the figures come in.
    assert accuracy.best_start({touched: 0.25, zero: 0.25}) == {}
    # A row of another recipe lends nothing.
    other = {**earlier, "flags": ["--mf_init=random"]}
    assert accuracy.merge_starts({touched: 0.25}, other, recipe, {"x": 1}) == (
        {"x": 1},
        {touched: 0.25},
    )


@pytest.mark.parametrize(
    "dataset", ["tmall_mbcgcn", "jd_vcgae", "beibei_ehcf", "taobao_ehcf", "taobao_cml"]
)
def test_the_accuracy_reports_shipped_row_runs_the_shipped_flagfile(dataset):
    import sys

    sys.path.insert(0, os.path.dirname(experiments.__file__) + "/..")
    import accuracy

    overrides = accuracy.shipped_overrides(dataset, accuracy.shipped_flags(dataset))
    runner_args = [
        "--flagfile=" + os.path.join(experiments.CONFIGS, f"{dataset}.flags"),
        *experiments.flag_args(overrides),
    ]
    shipped = ["--flagfile=" + os.path.join(experiments.CONFIGS, f"{dataset}_mmf.flags")]
    assert experiments.config_key(runner_args) == experiments.config_key(shipped)
    arms = dict(accuracy.arms("no_tune_dir", dataset))
    assert arms[accuracy.SHIPPED] == overrides
    assert arms[accuracy.ONE_BRANCH]["model"] == "ncf"
    if overrides.get("cascade_blend") or overrides.get("graph_signals"):
        plain = arms[accuracy.WITHOUT_SIGNALS]
        assert not plain["cascade_blend"] and not plain["graph_signals"]


def _assert_one_pair_per_user(drawn, keys, num_items, num_users):
    """A carve draws one of its own pairs for every user with two or more, none for the rest."""
    per_user = np.bincount(drawn // num_items, minlength=num_users)
    owners = np.bincount(keys // num_items, minlength=num_users)
    assert (per_user == (owners >= 2)).all()
    assert np.isin(drawn, keys).all()


def test_the_matched_carve_draws_one_pair_per_user_at_the_test_popularity():
    from benchmarks.experiments import matched_validation

    rng = np.random.default_rng(0)
    num_users, num_items = 3000, 400
    # Popular items are bought far more often in training than on test.
    popularity = np.arange(num_items, dtype=np.float64) + 2.0
    users = np.repeat(np.arange(num_users), 8)
    items = rng.choice(num_items, len(users), p=popularity / popularity.sum())
    keys = np.unique(users.astype(np.int64) * num_items + items)
    test_popularity = popularity[rng.integers(0, num_items, num_users)]
    drawn = matched_validation._draw_matched(
        keys,
        num_items,
        np.random.default_rng(1),
        min_pairs=2,
        popularity_of=popularity,
        test_popularity=test_popularity,
    )
    _assert_one_pair_per_user(drawn, keys, num_items, num_users)
    at_random = popularity[keys % num_items]
    drawn_popularity = popularity[drawn % num_items] - 1
    # The drawn items are as popular as the test items, the pairs are not.
    assert abs(np.median(drawn_popularity) - np.median(test_popularity)) < 25
    assert np.median(at_random) - np.median(test_popularity) > 60


def test_the_out_of_fold_split_drops_only_the_held_out_buys():
    from benchmarks.experiments import out_of_fold_residual
    from mmrec_tf.pipelines import splits
    from tests.pipelines import test_samplers

    split = test_samplers._split(num_users=30, num_items=40, seed=3)
    buys = splits.train_target_keys(split)
    held = out_of_fold_residual.held_out_buys(split, 0.5, seed=0)
    assert len(held) == round(0.5 * len(buys)) and np.isin(held, buys).all()
    assert (held == out_of_fold_residual.held_out_buys(split, 0.5, seed=0)).all()
    assert not (held == out_of_fold_residual.held_out_buys(split, 0.5, seed=1)).all()
    fold = out_of_fold_residual.without_buys(split, held)
    keys = splits.pair_keys(split.train_users, split.train_items, split.num_items)
    kept = splits.pair_keys(fold.train_users, fold.train_items, fold.num_items)
    # The held-out pairs lose their buy and keep their carts and favorites.
    assert set(splits.train_target_keys(fold)) == set(buys) - set(held)
    assert len(kept) == len(keys) - len(held)
    supportive = lambda s, k: set(k[s.train_branches > 0])  # noqa: E731
    assert supportive(fold, kept) == supportive(split, keys)


def test_the_order_matched_carve_follows_the_test_items_rank_by_id():
    from benchmarks.experiments import matched_validation

    rng = np.random.default_rng(0)
    num_users, num_items = 3000, 400
    popularity = np.full(num_items, 10.0)
    users = np.repeat(np.arange(num_users), 8)
    keys = np.unique(users.astype(np.int64) * num_items + rng.integers(0, num_items, len(users)))
    raw_of = np.arange(num_items)[::-1] * 3  # raw ids need not follow the index
    # The test items are the newest ids of their users: rank near 1.
    test_rank = rng.uniform(0.85, 1.0, num_users)
    drawn = matched_validation._draw_matched(
        keys,
        num_items,
        np.random.default_rng(1),
        min_pairs=2,
        popularity_of=popularity,
        test_popularity=np.full(num_users, 9.0),
        raw_of=raw_of,
        test_rank=test_rank,
    )
    _assert_one_pair_per_user(drawn, keys, num_items, num_users)
    rank = matched_validation.id_rank(
        keys, raw_of, drawn // num_items, drawn % num_items, num_items, exclude_self=True
    )
    at_random = matched_validation.id_rank(
        keys, raw_of, keys // num_items, keys % num_items, num_items, exclude_self=True
    )
    assert abs(at_random.mean() - 0.5) < 0.05
    assert rank.mean() > 0.85
    # id_rank counts the lower raw ids: a user's highest raw id ranks 1.
    one = np.array([0 * num_items + 5, 0 * num_items + 9], np.int64)
    assert matched_validation.id_rank(
        one, raw_of, np.array([0]), np.array([5]), num_items, exclude_self=True
    ).tolist() == [1.0]


def test_split_shift_ranks_the_touched_never_bought_items(monkeypatch):
    monkeypatch.syspath_prepend(os.path.dirname(os.path.dirname(experiments.__file__)))
    import split_shift

    from mmrec_tf.pipelines import schema
    from mmrec_tf.pipelines import training_index
    from tests.pipelines import test_samplers

    split = test_samplers._split(num_users=30, num_items=40, seed=3)
    index = training_index.TrainingIndex.from_split(split)
    users = np.arange(30, dtype=np.int32)
    # Each user's held-out item: a carted, never-bought item (draws 4-7 carry no buy).
    never = [
        index.keys[(index.keys // 40 == u) & ((index.bits & 1) == 0) & ((index.bits & 2) > 0)]
        for u in range(30)
    ]
    items = np.array([k[0] % 40 for k in never], np.int32)
    raw = np.arange(40)
    # Ten or fewer touched, never-bought items a user: every case is a hit.
    assert split_shift.touched_top10(index, split, raw, users, items) == 1.0
    # Twenty carted, never-bought items (2 to 21) and two buys: only the ten
    # highest ids are in the first 10; an item the user never touched never is.
    many = test_samplers.training_split(
        [0] * 22,
        list(range(22)),
        [0, 0] + [1] * 20,
        num_users=1,
        num_items=40,
        behaviors=schema.BehaviorSchema("buy", ("cart", "fav")),
    )
    wide = training_index.TrainingIndex.from_split(many)
    one = np.zeros(1, np.int32)
    hit = [
        split_shift.touched_top10(wide, many, raw, one, np.array([i], np.int32))
        for i in (21, 12, 11, 2, 30)
    ]
    assert hit == [1.0, 1.0, 0.0, 0.0, 0.0]
    # The id order of an item against the user's buys is a share in [0, 1].
    order = split_shift.id_order(index, split, raw, users, items)
    assert 0.0 <= order <= 1.0
    # A user's highest raw id among the buys ranks above all of them.
    buys = index.pos_items[index.pos_users == 0]
    top = np.array([buys.max()], np.int32)
    assert split_shift.id_order(index, split, raw, np.array([0], np.int32), top) == (
        (len(buys) - 1) / len(buys)
    )


def test_the_grid_cut_into_user_blocks_has_the_whole_grids_gradients():
    from benchmarks.experiments import grid_rewrites

    grid = grid_rewrites.Grid(batch=8, candidates=12)
    whole = grid.step("materialized")()
    blocked = grid.step("user_blocks_3")()
    assert len(whole) == len(blocked) == len(grid.variables) + 2 * grid_rewrites.BRANCHES
    for a, b in zip(blocked, whole):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    assert any(float(np.abs(g.numpy()).max()) > 0 for g in whole)


def test_the_blend_margin_halvings_tell_a_real_gain_from_noise():
    from benchmarks.experiments import blend_margin

    rng = np.random.default_rng(0)
    base = (rng.random(4000) < 0.2).astype(float)
    # Weight 0.25 finds 3% more cases; the others are the model alone's hits
    # with 5% of the cases drawn again at the same rate (no gain on average).
    real = np.where(rng.random(4000) < 0.03, 1.0, base)
    hits = {0.0: base, 0.25: real}
    for w in (0.5, 1.0, 2.0):
        again = rng.random(4000) < 0.05
        hits[w] = np.where(again, (rng.random(4000) < 0.2).astype(float), base)
    found = blend_margin.held_out(hits, splits=40)
    assert found[0.0]["share_kept"] == 1.0 and found[0.0]["held_out_gain"] > 0.015
    noise = {0.0: base, **{w: hits[w] for w in (0.5, 1.0, 2.0)}, 0.25: hits[0.5]}
    lost = blend_margin.held_out(noise, splits=40)
    assert lost[2.0]["share_kept"] < lost[0.0]["share_kept"]
    assert lost[0.0]["held_out_gain"] < 0.002
    # The rule on a half is blend.choose's: no gain, nothing kept.
    assert blend_margin.choose({w: base for w in (0.0, *hits)}, np.arange(100), 0.0) == 0.0


def test_candidate_recall_counts_each_source_of_a_blended_export(tmp_path):
    from benchmarks import candidate_recall
    from mmrec_tf import blend
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib
    from tests.mmrec_tf import test_run_record
    from tests.mmrec_tf.test_main import _flags

    # Each user buys a run of neighbouring items and carts two more; the
    # even users' test buy is a new item, the odd users' one they carted.
    rows = []
    for u in range(120):
        base = 3 * u
        rows += [f"{u}\t{(base + k) % 200}\tbuy\t\ttrain" for k in range(1, 5)]
        rows += [f"{u}\t{(base + k) % 200}\tcart\t\ttrain" for k in (5, 6)]
        rows.append(f"{u}\t{(base + (7 if u % 2 == 0 else 5)) % 200}\tbuy\t\ttest")
    log = tmp_path / "log.tsv"
    log.write_text("user\titem\tbehavior\ttimestamp\tsplit\n" + "\n".join(rows) + "\n")
    flags = [
        f"--model_dir={tmp_path / 'run'}",
        f"--data_path={log}",
        "--data_format=tsv",
        *test_run_record.TINY_RUN,
        "--cascade_blend",
        "--retrieval_candidates=10",
        # Behavior features: the export re-ranks the user's touched items, as shipped.
        "--behavior_features",
        "--mode=train",
    ]
    config = cli.config_from_flags(_flags(flags))
    run_lib.run(config)
    # The run's recorded weight, set so that the export blends.
    run = str(tmp_path / "run")
    blend.save(run, {**blend.load(run), "weight": 0.5})
    result = candidate_recall.measure(config, cases=120, batch=16)
    r = result["recall"]
    assert result["cascade_blend_weight"] == 0.5 and result["retrieval_candidates"] == 10
    # The sources are disjoint: together they are the whole set.
    assert r["mf"] + r["graph"] + r["cascade"] + r["touched"] == pytest.approx(r["any"])
    # The touched part is the odd users' cases, whose test item they carted.
    assert r["touched"] == pytest.approx(0.5)
    assert r["cascade"] > 0


def test_ease_solves_each_items_ridge_regression_on_the_others_and_scores_pairs_as_grids():
    from scipy import sparse

    from benchmarks.experiments import ease

    rng = np.random.default_rng(0)
    dense = (rng.random((60, 12)) < 0.3) * rng.choice([1.0, 0.3], size=(60, 12))
    x = sparse.csr_matrix(dense.astype(np.float32))
    b = ease.fit(x, 5.0, block=5)  # blocks of 5, 5 and 2 items mirrored
    assert np.all(np.diag(b) == 0.0)
    # Column j is the ridge regression of item j on the other items.
    for j in range(12):
        others = np.delete(np.arange(12), j)
        a = dense[:, others]
        want = np.linalg.solve(a.T @ a + 5.0 * np.eye(11), a.T @ dense[:, j])
        np.testing.assert_allclose(b[others, j], want, rtol=1e-3, atol=1e-5)
    score = ease.EaseScorer(x, b)
    users = np.array([3, 3, 7, 0, 59])
    items = np.array([1, 11, 4, 0, 6])
    grid = score.grid(np.arange(60), np.arange(12))
    np.testing.assert_allclose(score(users, items), grid[users, items], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grid, dense @ b, rtol=1e-4, atol=1e-5)
    assert np.abs(grid).max() < score.bound


def test_the_ease_blend_rebuilds_a_shipped_run_as_it_was_evaluated(tmp_path, monkeypatch):
    from benchmarks.experiments import ease
    from mmrec_tf import blend
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib
    from tests.mmrec_tf import test_run_record
    from tests.mmrec_tf.test_main import _flags

    run = str(tmp_path / "run")
    flags = [f"--model_dir={run}", *test_run_record.TINY, "--cascade_blend", "--export_dir="]
    run_lib.run(cli.config_from_flags(_flags(flags)))
    # A kept CascadingRank weight (whatever this tiny run chose), and the
    # run's test figures evaluated with it.
    record = {**blend.load(run), "weight": 0.5}
    blend.save(run, record)
    run_lib.run(cli.config_from_flags(_flags([*flags, "--mode=evaluate"])))
    # With no EASE weight kept, the blend is the run as it ships: its
    # validation figure at weight 0 is the run's blend at its kept weight, and
    # its test figures are the run's own.
    monkeypatch.setattr(blend, "keep", lambda hits, margin: (0.0, 0.0, 0.0))
    got = ease.blend_run(run, "", {"EASE": (0.0, 10.0)})
    assert got["cascade_weight"] == record["weight"]
    assert got["valid_HR@10"]["0, 10"]["0.0"] == record["HR@10"][str(record["weight"])]
    for protocol in ("full", "discovery", "sampled"):
        assert got["test"][protocol]["blend"] == pytest.approx(got["test"][protocol]["run"])


def test_the_ease_rank_term_can_leave_the_touched_items_first():
    from scipy import sparse

    from benchmarks.experiments import ease

    score = ease.EaseScorer(sparse.csr_matrix(np.ones((1, 1), np.float32)), np.zeros((1, 1)))
    score._rows = lambda users: np.array([[0.9, 0.1, 0.5, 0.7, 0.3]])

    class Touched:  # user 0 touched items 1 and 3
        def gate_grid(self, users, items):
            return np.array([[[0, 0], [0, 1], [0, 0], [1, 0], [0, 0]]])[:, items]

    every = ease.rank_term(score)(np.array([0]), np.arange(5))
    np.testing.assert_allclose(every, -np.log1p([[0, 4, 2, 1, 3]]), rtol=1e-6)
    untouched = ease.rank_term(score, Touched())(np.array([0]), np.arange(5))
    # Touched items all rank 0; the others 1, 2, 3 in EASE's order.
    np.testing.assert_allclose(untouched, -np.log1p([[1, 0, 2, 0, 3]]), rtol=1e-6)


def test_ease_on_the_most_active_items_ranks_the_others_last():
    from scipy import sparse

    from benchmarks.experiments import ease

    rng = np.random.default_rng(1)
    dense = (rng.random((40, 10)) < 0.4).astype(np.float32)
    dense[:, 7] = 0.0  # item 7: no pairs, the least active
    x = sparse.csr_matrix(dense)
    columns = ease.active_items(x, 9)
    assert 7 not in columns and len(columns) == 9
    assert ease.active_items(x, 10) is None
    score = ease.EaseScorer(x, ease.fit(x[:, columns], 5.0), columns)
    grid = score.grid(np.arange(40), np.arange(10))
    np.testing.assert_allclose(
        grid[:, columns], dense[:, columns] @ ease.fit(x[:, columns], 5.0), atol=1e-5
    )
    assert np.all(grid[:, 7] < grid[:, columns].min(axis=1))
    assert np.abs(grid).max() < score.bound


def test_the_ease_signal_of_a_training_buy_does_not_see_the_buy_and_replaces_only_the_reach():
    from benchmarks.experiments import ease
    from benchmarks.experiments import ease_signal
    from benchmarks.experiments import out_of_fold_residual
    from mmrec_tf.pipelines import graph_signals
    from mmrec_tf.pipelines import splits
    from tests.pipelines import test_samplers

    split = test_samplers._split(num_users=30, num_items=40, seed=3)
    settings = dict(supportive_weight=0.3, l2=2.0, folds=3, seed=0)
    signals = ease_signal.EaseSignals(split, **settings)
    fold = signals.fold
    assert sorted(np.bincount(fold)) == [10, 10, 10]
    buys = splits.train_target_keys(split)
    users, items = buys // split.num_items, buys % split.num_items
    base = graph_signals.GraphSignals(split)
    got = signals.pairs(users, items)
    column = signals.names.index("reach_buy")
    # Every other column is the library's.
    others = [c for c in range(signals.num_signals) if c != column]
    np.testing.assert_allclose(got[:, others], base.pairs(users, items)[:, others], rtol=1e-6)
    # The EASE column is X_u B_{fold(u)}, scaled to a mean of 1 on training buys.
    x = ease.input_matrix(split, 0.3)
    for k in range(3):
        held = buys[fold[users] == k]
        b = ease.fit(ease.input_matrix(out_of_fold_residual.without_buys(split, held), 0.3), 2.0)
        mine = fold[users] == k
        want = np.asarray(x[users[mine]] @ b)[np.arange(mine.sum()), items[mine]]
        np.testing.assert_allclose(
            got[mine, column], want * signals.reach_scale[0], rtol=1e-4, atol=1e-6
        )
    # No leak: with one user's buy of an item removed from the log, that
    # pair's signal is unchanged; the whole-log EASE would see it.
    u, i = int(users[5]), int(items[5])
    drop = ~((split.train_users == u) & (split.train_items == i) & (split.train_branches == 0))
    fewer = dataclasses.replace(
        split,
        train_users=split.train_users[drop],
        train_items=split.train_items[drop],
        train_branches=split.train_branches[drop],
    )
    without = ease_signal.EaseSignals(fewer, **settings)
    unscaled = lambda s: s.ease(np.array([u]), np.array([i]))[0, 0]  # noqa: E731
    np.testing.assert_allclose(unscaled(without), unscaled(signals), rtol=1e-4, atol=1e-6)
    whole = ease.EaseScorer(x, ease.fit(x, 2.0))
    fewer_x = ease.input_matrix(fewer, 0.3)
    fewer_whole = ease.EaseScorer(fewer_x, ease.fit(fewer_x, 2.0))
    assert abs(whole.grid([u], [i])[0, 0] - fewer_whole.grid([u], [i])[0, 0]) > 1e-3


def test_the_ease_signal_report_keeps_earlier_runs_and_each_datasets_command(tmp_path, monkeypatch):
    from benchmarks.experiments import ease_signal

    def fake(dataset, data_dir, seed, arm, runs_dir, folds):
        hr = {"shipped": 0.10, "signals": 0.11, "ease": 0.12}[arm] + seed / 100
        test = {
            p: {"HR@10": hr, "HR@10_se": 0.01, "NDCG@10": hr / 2, "NDCG@10_se": 0.005, "cases": 9}
            for p in ("full", "discovery", "sampled")
        }
        return {
            "arm": arm,
            "seed": seed,
            "setting": {},
            "valid_HR@10_by_epoch": [0.1, hr],
            "kept_epoch": 1,
            "blend_weight": 0.0,
            "valid_full_HR@10": hr,
            "seconds": {},
            "test": test,
        }

    monkeypatch.setattr(ease_signal, "run_arm", fake)
    out = str(tmp_path / "ease_signal")
    common = [f"--out={out}", "--data_dir=d", "--runs_dir=r"]
    ease_signal.main(["--datasets=a", "--arms=shipped,ease", "--seeds=0,1", *common])
    ease_signal.main(["--datasets=b", "--arms=ease", *common])
    with open(out + ".json") as f:
        stored = json.load(f)
    assert [r["arm"] for r in stored["datasets"]["a"]] == ["shipped", "shipped", "ease", "ease"]
    assert "--datasets=b" in stored["commands"]["b"] and "--datasets=a" in stored["commands"]["a"]
    assert all("runs_dir" not in c for c in stored["commands"].values())
    with open(out + ".md") as f:
        text = f.read()
    # Two seeds: their mean and the SE across them; one seed: the SE over cases.
    assert "| a | ease | 0.1250 ± 0.0050 |" in text
    assert "| b | ease | 0.1200 ± 0.0100 |" in text


def test_an_experiments_arm_starts_from_the_shipped_flagfile_in_an_emptied_folder(tmp_path):
    from benchmarks.experiments import running

    model_dir = tmp_path / "arm"
    model_dir.mkdir()
    (model_dir / "results.json").write_text("{}")
    config = running.fresh_shipped_config(
        "tmall_mbcgcn", "data", 3, str(model_dir), ("--graph_signals",)
    )
    assert not model_dir.exists()
    assert config.model_dir == str(model_dir) and config.export.export_dir == ""
    assert config.train.seed == 3 and config.model.graph_signals
    assert config.data.data_path == os.path.join("data", "tmall_mbcgcn", "interactions.tsv.gz")
    # The dataset's own flagfile: tmall_mbcgcn's blends with CascadingRank at beta 0.9.
    assert config.model.cascade_blend and config.model.cascade_beta == 0.9
    assert not running.fresh_shipped_config(
        "tmall_mbcgcn", "data", 3, str(model_dir)
    ).model.graph_signals
