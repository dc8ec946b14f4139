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
from mmrec_tf import locks
from mmrec_tf import models
from mmrec_tf import ranking
from mmrec_tf import train as train_lib
from mmrec_tf.export import exporter
from mmrec_tf.export import serving
from mmrec_tf.pipelines import loading
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

DATA = config_lib.DataConfig(synthetic_users=300, synthetic_items=400)
K, C = 5, 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("export")
    data, split = loading.load(DATA, work_dir=str(work))
    config = config_lib.ExperimentConfig(
        data=DATA,
        model=config_lib.ModelConfig(mf_dim=4, mlp_dim=4),
        train=config_lib.TrainConfig(
            batch_size=64, epochs=1, steps_per_epoch=20, verbose=0, supportive_negative_ratio=0
        ),
    )
    tf_keras.utils.set_random_seed(0)
    ranker = ranking.build_ranker(
        config, num_users=split.num_users, num_items=split.num_items, behaviors=split.behaviors
    )
    train_lib.train(
        ranker=ranker,
        index=training_index.TrainingIndex.from_split(split),
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
    out["probability"] = score["probability"].numpy().tolist()
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


def _in_clean_process(script: str, path: str, args, cwd) -> dict:
    """Runs `script` on the export at `path` in a TensorFlow-only process; its last JSON line.

    The process must exit normally (an abort in a kernel fails the test).
    """
    result = subprocess.run(
        [sys.executable, "-c", script, path, json.dumps(args)],
        capture_output=True,
        text=True,
        env=_clean_env(),
        cwd=str(cwd),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


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
    out = _in_clean_process(CLEAN_PROCESS, trained["path"], args, tmp_path)
    assert out["signatures"] == [
        "recommend",
        "recommend_from_history",
        "retrieve",
        "serving_default",
    ]
    assert not out["project_imported"] and out["legacy_keras"] is None

    score = evaluate.Scorer(trained["ranker"].scorer, split.behaviors.num_behaviors)
    logits = score(users_idx, items_idx)
    # `score` is the ranking score, the logit; `probability` its sigmoid.
    np.testing.assert_allclose(out["score"][:6], logits, atol=1e-5)
    np.testing.assert_allclose(out["logit"], out["score"])
    np.testing.assert_allclose(out["probability"][:6], tf.sigmoid(logits).numpy(), atol=1e-5)
    # unknown user with a known item: popularity share; unknown item: sorts last
    popularity = trained["module"].popularity.numpy()
    assert out["probability"][6] == pytest.approx(popularity[items_idx[0]], abs=1e-5)
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
    assert names == ["serving_default", "recommend", "retrieve", "recommend_from_history"]


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
    # Only the lock file stays (its flock died with the killed process).
    assert os.listdir(export_dir) == [locks.LOCK_FILE]


def test_evaluate_export_agrees_with_the_in_memory_model(tmp_path, monkeypatch):
    from absl import flags

    from mmrec_tf import cli
    from mmrec_tf import config as config_lib
    from mmrec_tf import run as run_lib

    # Fewer users per request than the test has: both evaluations (in memory
    # and of the loaded export) must send batches the signatures accept.
    monkeypatch.setattr(config_lib.ExportConfig, "max_request_users", 7)

    def run(*extra):
        fv = flags.FlagValues()
        cli.define_flags(fv)
        quickstart = os.path.join(os.path.dirname(cli.__file__), "configs", "quickstart.flags")
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
        return run_lib.run(cli.config_from_flags(fv))

    trained = run()
    in_memory = trained["test"]["two_stage_in_memory"]
    version = os.path.join(tmp_path, "serving", "1")
    assert exporter.request_limits(version)["max_request_users"] == 7
    exported = run("--mode=evaluate_export")["test"]
    assert exported["recommend"]["cases"] > 7
    # The export on another log (ids it never saw) is refused, with the share.
    other = tmp_path / "other.tsv"
    rows = [
        f"{10**6 + u}\t{10**6 + (u * 7 + k) % 250}\tbuy\t\t{'test' if k == 0 else 'train'}"
        for u in range(200)
        for k in range(3)
    ]
    other.write_text("user\titem\tbehavior\ttimestamp\tsplit\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"does not know this data: 0\.0% of the test users"):
        run(
            "--mode=evaluate_export",
            f"--model_dir={tmp_path / 'other_eval'}",
            f"--data_path={other}",
            "--data_format=tsv",
            "--target_behavior=buy",
            "--supportive_behaviors=",
        )
    assert exported["recommend"] == pytest.approx(in_memory["recommend"], abs=1e-6)
    assert exported["retrieval"] == pytest.approx(in_memory["retrieval"], abs=1e-6)
    assert exported["retrieval"]["cases"] == trained["test"]["sampled"]["cases"]
    # The retrieval stage agrees with the in-memory TFRS evaluation of the MF towers.
    for k in (10, 50):
        name = f"top_{k}_categorical_accuracy"
        assert exported["retrieval"][name] == pytest.approx(
            trained["test"]["retrieval"][name], abs=1e-6
        )


MALFORMED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    users = json.loads(sys.argv[2])
    sig = model.signatures
    cases = {
        "recommend_scalar": lambda: sig["recommend"](user_id=tf.constant(users[0])),
        "recommend_matrix": lambda: sig["recommend"](user_id=tf.constant([users[:2]])),
        "retrieve_scalar": lambda: sig["retrieve"](user_id=tf.constant(users[0])),
        "score_scalar": lambda: sig["serving_default"](
            user_id=tf.constant(users[0]), item_id=tf.constant(["x"])),
        "score_lengths": lambda: sig["serving_default"](
            user_id=tf.constant(users[:2]), item_id=tf.constant(["x"])),
        "recommend_too_many": lambda: sig["recommend"](user_id=tf.constant(users[:1] * 1025)),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = "ok"
        except tf.errors.InvalidArgumentError as e:
            out[name] = "InvalidArgumentError: " + e.message[:3000]
    # A seeded fuzz of shapes, sizes and bytes (non-UTF-8 included).
    rng = np.random.default_rng(0)
    fuzz = {"ok": 0, "InvalidArgumentError": 0}
    for _ in range(60):
        rank = int(rng.integers(0, 4))
        shape = [int(rng.integers(0, 4)) for _ in range(rank)]
        def ids():
            pool = users[:3] + ["", "\\u00e9", "no-such"]
            flat = [pool[int(rng.integers(len(pool)))].encode() if rng.random() < 0.8
                    else bytes(rng.integers(0, 256, 3).tolist()) for _ in range(int(np.prod(shape)))]
            return tf.constant(np.array(flat, dtype=object).reshape(shape), tf.string)
        name = ["recommend", "retrieve", "serving_default"][int(rng.integers(3))]
        args = {"user_id": ids()}
        if name == "serving_default":
            args["item_id"] = ids()
        try:
            sig[name](**args)
            fuzz["ok"] += 1
        except tf.errors.InvalidArgumentError:
            fuzz["InvalidArgumentError"] += 1
    out["fuzz"] = fuzz
    out["alive"] = sig["recommend"](user_id=tf.constant(users[:2]))["item_ids"].shape.as_list()
    print(json.dumps(out))
    """
)


def test_malformed_requests_are_errors_of_their_own_never_an_abort(trained, tmp_path):
    users = [str(t) for t in trained["data"].user_vocab.tokens[:3]]
    out = _in_clean_process(MALFORMED, trained["path"], users, tmp_path)
    for name in (
        "recommend_scalar",
        "recommend_matrix",
        "retrieve_scalar",
        "score_scalar",
        "score_lengths",
        "recommend_too_many",
    ):
        assert out[name].startswith("InvalidArgumentError"), (name, out[name])
    assert "rank-1" in out["recommend_scalar"] and "same length" in out["score_lengths"]
    assert "at most 1024" in out["recommend_too_many"]
    # Every fuzzed call answered or raised for itself; the process still serves.
    assert sum(out["fuzz"].values()) == 60 and out["fuzz"]["InvalidArgumentError"] > 0
    assert out["alive"] == [2, K]


def _tiny_module(logit_scale=1.0, *, seen=(), top_k=3, items=5, candidates=5):
    scorer = models.build_model(
        config_lib.ModelConfig(model="gmf", mf_dim=1),
        num_users=1,
        num_items=items,
        behaviors=schema.BehaviorSchema("buy", ()),
    )
    # Item i scores logit_scale * (items - i): item 0 first.
    scorer.start_from_factors(
        np.ones((1, 1), np.float32),
        logit_scale * (items - np.arange(items, dtype=np.float32))[:, None],
    )
    return serving.ServingModule(
        scorer,
        user_tokens=np.array(["u"]),
        item_tokens=np.array([f"i{k}" for k in range(items)]),
        behaviors=("buy",),
        popularity=np.ones(items),
        seen_row_splits=np.array([0, len(seen)]),
        seen_items=np.array(seen, np.int32),
        top_k=top_k,
        retrieval_candidates=candidates,
    )


def test_scores_rank_as_the_logits_even_where_the_sigmoid_saturates():
    module = _tiny_module(logit_scale=20.0)  # logits 100, 80, ..., 20
    out = module.score(tf.constant(["u"] * 5), tf.constant([f"i{k}" for k in range(5)]))
    assert out["score"].numpy().tolist() == [100.0, 80.0, 60.0, 40.0, 20.0]
    # float32 sigmoid: every one of these is exactly 1.0 -- never rank by it.
    assert set(out["probability"].numpy().tolist()) == {1.0}
    rec = module.recommend(tf.constant(["u"]))
    assert [i.decode() for i in rec["item_ids"].numpy()[0]] == ["i0", "i1", "i2"]
    assert rec["scores"].numpy()[0].tolist() == [100.0, 80.0, 60.0]


def test_exclude_seen_with_too_few_candidates_returns_the_sentinel():
    module = _tiny_module(seen=(0, 1, 3), top_k=3)
    rec = module.recommend(tf.constant(["u"]))
    ids = [i.decode() for i in rec["item_ids"].numpy()[0]]
    scores = rec["scores"].numpy()[0]
    # Unseen: items 2 and 4; the third slot is empty, never a purchased item.
    assert ids == ["i2", "i4", serving.EMPTY_ITEM_ID]
    assert np.isfinite(scores[:2]).all() and scores[2] == -np.inf


def test_a_history_longer_than_the_candidates_never_pushes_wanted_items_out():
    # The user bought the 12 items the MF stage scores highest, more than its
    # 4 candidates and the top 3: the purchases are masked before retrieval,
    # so the next 3 unbought items come back.
    module = _tiny_module(seen=tuple(range(12)), top_k=3, items=20, candidates=4)
    rec = module.recommend(tf.constant(["u"]))
    assert [i.decode() for i in rec["item_ids"].numpy()[0]] == ["i12", "i13", "i14"]
    # The retrieval stage alone excludes nothing (it is the MF ranking as served).
    ret = module.retrieve(tf.constant(["u"]))
    assert [i.decode() for i in ret["item_ids"].numpy()[0]] == ["i0", "i1", "i2", "i3"]


def test_signature_top_k_queries_keep_user_indices_above_2_to_the_24_exact():
    from mmrec_tf.export import evaluation

    users = np.array([2**24 + 1, 2**31 + 3, 5])
    queries = evaluation.query_tensor(users)
    assert queries.shape == (3, 1)
    np.testing.assert_array_equal(queries.numpy()[:, 0], users)
    # The layer maps a query back to its user's raw id by that index.
    calls = []

    def retrieve(user_id):
        calls.append(user_id.numpy())
        return {"scores": tf.zeros([1, 2]), "item_ids": tf.constant([["b", "a"]])}

    layer = evaluation.SignatureTopK(
        retrieve, user_tokens=np.array(["u0", "u1", "u2"]), item_tokens=np.array(["a", "b"]), k=2
    )
    _, ids = layer(evaluation.query_tensor(np.array([2])))
    assert calls[0].tolist() == [b"u2"] and ids.numpy().tolist() == [[1, 0]]


def test_vocabularies_are_assets_and_no_table_is_a_graph_constant(trained):
    from tensorflow.core.protobuf import saved_model_pb2

    split, path = trained["split"], trained["path"]
    data = trained["data"]
    for name, vocab in (("users", data.user_vocab), ("items", data.item_vocab)):
        lines = open(os.path.join(path, "assets", f"{name}.txt")).read().splitlines()
        assert lines == [str(t) for t in vocab.tokens]
    model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    graph = model.meta_graphs[0].graph_def
    nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
    sizes = [
        int(np.prod([d.size for d in n.attr["value"].tensor.tensor_shape.dim]))
        for n in nodes
        if n.op == "Const"
    ]
    # Every per-user or per-item table is a variable or an asset, never a constant.
    assert max(sizes) < min(split.num_items, split.num_users)


def test_a_vocabulary_table_never_takes_over_an_earlier_modules_table(tmp_path):
    # A file table's resource is shared by a name made of what its
    # initializer was given; were that an Asset object, its address, which a
    # freed Asset gives back, and with it the earlier table and vocabulary.
    # Tables built and dropped in turn each look up their own ids.
    import gc

    wrong = []
    for k in range(60):
        folder = tmp_path / str(k)
        folder.mkdir()
        path = serving._vocabulary_file([f"u{k}_{j}" for j in range(4)], str(folder), "users")
        table = serving._lookup_table(path)
        got = table.lookup(tf.constant([f"u{k}_2", "unknown"])).numpy().tolist()
        if got != [2, -1]:
            wrong.append((k, got))
        del table
        gc.collect()
    assert not wrong


def _ops_reading(graph, handle) -> set:
    """Types of the ops that take `handle` (a captured variable) in `graph` and
    in the functions those ops call (followed through their arguments)."""
    found = set()

    def walk(g, targets):
        for op in g.get_operations():
            reads = [k for k, x in enumerate(op.inputs) if id(x) in targets]
            if not reads:
                continue
            found.add(op.type)
            # A call's or loop's inputs are its function's arguments in order;
            # a conditional's first input is the condition.
            shift = 1 if op.type in ("If", "StatelessIf") else 0
            for attr in ("f", "body", "cond", "then_branch", "else_branch"):
                try:
                    inner = g._get_function(op.get_attr(attr).name)
                except (ValueError, AttributeError):
                    continue
                if inner is not None and hasattr(inner, "graph"):
                    args = inner.graph.inputs
                    walk(inner.graph, {id(args[k - shift]) for k in reads if k >= shift})

    walk(graph, {id(inner) for outer, inner in graph.captures if outer is handle})
    return found


def test_no_signature_gathers_from_the_index_variable(trained):
    # The retrieval index is the MF item table itself. A gather on that
    # variable (ResourceGather) turns it copy-on-read, after which every
    # dense read, the index's matmul in `recommend`, copies the whole table.
    module = trained["module"]
    assert module.item_vectors is trained["ranker"].scorer.mf.item_embedding.embeddings
    for name, fn in module.signatures().items():
        ops = _ops_reading(fn.graph, module.item_vectors.handle)
        assert ops, f"{name} never reads the index?"
        assert "ResourceGather" not in ops, f"{name} gathers from the index variable: {ops}"
