"""Export: a clean process serves every signature; versions; atomicity; saved_model_cli."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import evaluate
from mmrec_tf import models
from mmrec_tf import train as train_lib
from mmrec_tf.export import exporter
from mmrec_tf.export import serving
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import samplers

DATA = config_lib.DataConfig(synthetic_users=300, synthetic_items=400, seed=0)
K, C = 5, 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    data, split = loading.load(DATA, work_dir=str(work))
    config = config_lib.ExperimentConfig(
        data=DATA,
        model=config_lib.ModelConfig(mf_dim=4, mlp_dim=4, init_stddev=0.1),
        train=config_lib.TrainConfig(
            batch_size=64, epochs=1, steps_per_epoch=20, verbose=0, supportive_negative_ratio=0
        ),
    )
    tf_keras.utils.set_random_seed(0)
    ranker = models.build_ranker(
        config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
    )
    train_lib.train(
        ranker=ranker,
        index=samplers.TrainingIndex.from_split(split),
        config=config.train,
        model_dir=str(work / "model"),
    )
    module = serving.from_training(
        ranker.scorer,
        split,
        user_tokens=data.user_vocab.tokens,
        item_tokens=data.item_vocab.tokens,
        top_k=K,
        retrieval_candidates=C,
        exclude_seen=True,
    )
    export_dir = str(work / "serving")
    path = exporter.export(
        module,
        export_dir,
        warmup_user_ids=list(data.user_vocab.tokens[:2]),
        warmup_item_ids=list(data.item_vocab.tokens[:2]),
    )
    return {
        "data": data,
        "split": split,
        "ranker": ranker,
        "module": module,
        "export_dir": export_dir,
        "path": path,
    }


CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    args = json.loads(sys.argv[2])
    out = {"signatures": sorted(model.signatures)}
    score = model.signatures["serving_default"](
        user_id=tf.constant(args["users"]), item_id=tf.constant(args["items"]))
    out["score"] = score["score"].numpy().tolist()
    out["logit"] = score["logit"].numpy().tolist()
    rec = model.signatures["recommend"](user_id=tf.constant(args["rec_users"]))
    out["rec_items"] = [[i.decode() for i in row] for row in rec["item_ids"].numpy()]
    out["rec_scores"] = rec["scores"].numpy().tolist()
    ret = model.signatures["retrieve"](user_id=tf.constant(args["rec_users"]))
    out["ret_shape"] = list(ret["item_ids"].shape)
    empty = model.signatures["recommend"](user_id=tf.constant([], tf.string))
    out["empty_shape"] = list(empty["item_ids"].shape)
    empty = model.signatures["serving_default"](
        user_id=tf.constant([], tf.string), item_id=tf.constant([], tf.string))
    out["empty_score_shape"] = list(empty["score"].shape)
    out["project_imported"] = any(m.startswith("mmrec_tf") for m in sys.modules)
    out["legacy_keras"] = __import__("os").environ.get("TF_USE_LEGACY_KERAS")
    print(json.dumps(out))
    """
)


def _clean_env():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def test_clean_process_serves_every_signature(trained, tmp_path):
    data, split = trained["data"], trained["split"]
    users_idx = split.test_users[:6]
    items_idx = split.test_items[:6]
    users = [str(t) for t in data.user_vocab.tokens[users_idx]]
    items = [str(t) for t in data.item_vocab.tokens[items_idx]]
    args = {
        "users": users + ["no-such-user", users[0]],
        "items": items + [items[0], "no-such-item"],
        "rec_users": users[:3] + ["no-such-user"],
    }
    result = subprocess.run(
        [sys.executable, "-c", CLEAN_PROCESS, trained["path"], json.dumps(args)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=str(tmp_path),
        check=True,
    )
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["signatures"] == ["recommend", "retrieve", "serving_default"]
    assert not out["project_imported"] and out["legacy_keras"] is None

    score = evaluate.Scorer(trained["ranker"].scorer, split.behaviors.num_behaviors)
    expected = tf.sigmoid(score(users_idx, items_idx)).numpy()
    np.testing.assert_allclose(out["score"][:6], expected, atol=1e-5)
    # unknown user with a known item: popularity share; unknown item: sorts last
    popularity = trained["module"].popularity.numpy()
    assert out["score"][6] == pytest.approx(popularity[items_idx[0]], abs=1e-5)
    assert out["logit"][7] == serving.UNKNOWN_LOGIT

    known = set(str(t) for t in data.item_vocab.tokens)
    for row, scores in zip(out["rec_items"], out["rec_scores"]):
        assert len(row) == K and len(set(row)) == K and set(row) <= known
        assert scores == sorted(scores, reverse=True)
    # the unknown user gets the most popular items
    popular = [str(t) for t in data.item_vocab.tokens[np.argsort(-popularity, kind="stable")[:K]]]
    assert out["rec_items"][3] == popular
    assert out["ret_shape"] == [4, C]
    assert out["empty_shape"] == [0, K] and out["empty_score_shape"] == [0]


def test_recommend_leaves_out_training_purchases_and_reranks_with_the_full_model(trained):
    split, module = trained["split"], trained["module"]
    data = trained["data"]
    target = split.train_branches == 0
    user = int(split.train_users[target][0])
    seen = set(split.train_items[target][split.train_users[target] == user].tolist())
    result = module.recommend(tf.constant([str(data.user_vocab.tokens[user])]))
    lookup = {str(t): k for k, t in enumerate(data.item_vocab.tokens)}
    items = [lookup[i.decode()] for i in result["item_ids"].numpy()[0]]
    assert not set(items) & seen
    # Re-ranking: the K items are the full model's best among the C retrieved.
    retrieved = module.retrieve(tf.constant([str(data.user_vocab.tokens[user])]))
    candidates = [lookup[i.decode()] for i in retrieved["item_ids"].numpy()[0]]
    unseen = [c for c in candidates if c not in seen]
    score = evaluate.Scorer(trained["ranker"].scorer, split.behaviors.num_behaviors)
    logits = score(np.full(len(unseen), user), np.array(unseen))
    best = [unseen[k] for k in np.argsort(-logits, kind="stable")[:K]]
    assert items == best


def test_saved_model_cli_lists_string_signatures_and_runs_serving_default(trained, tmp_path):
    cli = shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not on PATH")
    shown = subprocess.run(
        [cli, "show", "--dir", trained["path"], "--all"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=True,
    ).stdout
    for name in ("serving_default", "recommend", "retrieve"):
        assert f"signature_def['{name}']" in shown
    assert "dtype: DT_STRING" in shown and "inputs['user_id']" in shown
    user = str(trained["data"].user_vocab.tokens[0])
    item = str(trained["data"].item_vocab.tokens[0])
    run = subprocess.run(
        [
            cli,
            "run",
            "--dir",
            trained["path"],
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--input_exprs",
            f"user_id=['{user}'];item_id=['{item}']",
        ],
        capture_output=True,
        text=True,
        env=_clean_env(),
        check=True,
        cwd=str(tmp_path),
    ).stdout
    assert "score" in run and "logit" in run


def test_versions_are_never_overwritten(trained):
    export_dir = trained["export_dir"]
    second = exporter.export(
        trained["module"], export_dir, warmup_user_ids=["x"], warmup_item_ids=["y"]
    )
    assert os.path.basename(second) == "2" and exporter.versions(export_dir)[-2:] == [1, 2]
    with pytest.raises(FileExistsError, match="never overwrites"):
        exporter.export(
            trained["module"], export_dir, warmup_user_ids=["x"], warmup_item_ids=["y"], version=1
        )


def test_warmup_requests_are_prediction_logs_for_every_signature(trained):
    from tensorflow_serving.apis import prediction_log_pb2

    path = os.path.join(trained["path"], "assets.extra", "tf_serving_warmup_requests")
    names = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        names.append(log.predict_log.request.model_spec.signature_name)
    assert names == ["serving_default", "recommend", "retrieve"]


KILLED_EXPORT = textwrap.dedent(
    """
    import os, signal, sys
    import mmrec_tf
    from mmrec_tf.export import exporter, warmup
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
        def f(self, user_id):
            return {"n": tf.shape(user_id)}
        def signatures(self):
            return {"serving_default": self.f.get_concrete_function()}

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)  # killed after the SavedModel, before the rename

    warmup.write = die
    exporter.export(Tiny(), sys.argv[1], warmup_user_ids=["u"], warmup_item_ids=["i"])
    """
)


def test_killed_export_leaves_no_version_folder(tmp_path):
    export_dir = str(tmp_path / "serving")
    done = subprocess.run([sys.executable, "-c", KILLED_EXPORT, export_dir], env=_clean_env())
    assert done.returncode == -9
    names = os.listdir(export_dir)
    assert not [n for n in names if n.isdigit()]
    assert [n for n in names if n.startswith(exporter.TMP_PREFIX)]  # the half-written one
    exporter._remove_stale_temporaries(export_dir)
    assert os.listdir(export_dir) == []


def test_evaluate_export_agrees_with_the_in_memory_model(tmp_path):
    from absl import flags

    from mmrec_tf import main as main_lib

    def run(*extra):
        fv = flags.FlagValues()
        main_lib.define_flags(fv)
        quickstart = os.path.join(os.path.dirname(main_lib.__file__), "configs", "quickstart.flags")
        fv(
            [
                "x",
                f"--flagfile={quickstart}",
                f"--model_dir={tmp_path}",
                "--synthetic_users=300",
                "--synthetic_items=400",
                "--epochs=1",
                "--steps_per_epoch=20",
                "--verbose=0",
                f"--export_dir={tmp_path / 'serving'}",
                "--retrieval_candidates=50",
                *extra,
            ]
        )
        return main_lib.run_experiment(main_lib.config_from_flags(fv))

    trained = run()
    in_memory = trained["test"]["two_stage_in_memory"]
    exported = run("--mode=evaluate_export")["test"]
    assert exported["recommend"] == pytest.approx(in_memory["recommend"], abs=1e-6)
    assert exported["retrieval"] == pytest.approx(in_memory["retrieval"], abs=1e-6)
    assert exported["retrieval"]["cases"] == trained["test"]["sampled"]["cases"]
    # The retrieval stage agrees with the in-memory TFRS evaluation of the MF towers.
    for k in (10, 50):
        name = f"top_{k}_categorical_accuracy"
        assert exported["retrieval"][name] == pytest.approx(
            trained["test"]["retrieval"][name], abs=1e-6
        )
