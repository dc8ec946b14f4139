"""The exported CascadingRank: the evaluated scores, and recommendations from a request's events."""

import json
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mmrec_tf.baselines import cascade
from mmrec_tf.export import cascade as cascade_export
from mmrec_tf.export import exporter
from mmrec_tf.pipelines import schema
from tests.export import test_export
from tests.pipelines import test_samplers

K = 5
C = 12


def _communities(seed=0):
    """Users 0-19 touch items 0-19, users 20-39 items 20-39: views, carts and buys."""
    rng = np.random.default_rng(seed)
    users, items, branches = [], [], []
    for u in range(40):
        base = 0 if u < 20 else 20
        touched = base + rng.choice(20, 8, replace=False)
        for k, i in enumerate(touched):
            for b, (lo, hi) in enumerate(((0, 2), (1, 4), (0, 8))):  # buy, cart, view
                if lo <= k < hi:
                    users.append(u), items.append(int(i)), branches.append(b)
    return test_samplers.training_split(
        users,
        items,
        branches,
        num_users=40,
        num_items=40,
        behaviors=schema.BehaviorSchema("buy", ("cart", "view")),
    )


USERS = np.array([f"u{k}" for k in range(40)])
ITEMS = np.array([f"i{k}" for k in range(40)])


@pytest.fixture(scope="module")
def fitted():
    split = _communities()
    scorer = cascade.CascadeScorer(
        split, cascade.CascadeConfig(alpha=0.3, beta=0.5, tolerance=1e-8)
    )
    module = cascade_export.from_training(
        scorer,
        split,
        user_tokens=USERS,
        item_tokens=ITEMS,
        top_k=K,
        retrieval_candidates=C,
        exclude_seen=True,
    )
    return {"split": split, "scorer": scorer, "module": module}


def _history(module, user_ids, events):
    """recommend_from_history for rows `user_ids`, events as (row, item id, behavior)."""
    rows = [r for r, _, _ in events]
    return module.recommend_from_history(
        **{
            schema.USER_ID: tf.constant(user_ids),
            schema.HISTORY_ITEM_ID: tf.constant([i for _, i, _ in events], tf.string),
            schema.HISTORY_BEHAVIOR: tf.constant([b for _, _, b in events], tf.string),
            schema.HISTORY_ROW: tf.constant(rows, tf.int32),
        }
    )


def test_the_export_scores_and_ranks_as_the_evaluated_scorer(fitted):
    split, scorer, module = fitted["split"], fitted["scorer"], fitted["module"]
    grid = scorer.grid(np.arange(40), np.arange(40))
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 40, 50), rng.integers(0, 40, 50)
    out = module.score(tf.constant(USERS[users]), tf.constant(ITEMS[items]))
    np.testing.assert_allclose(out[schema.SCORE].numpy(), grid[users, items], atol=1e-5)
    # recommend: the top K with the training buys masked before the top-k.
    rec = module.recommend(tf.constant(USERS))
    masked = grid.copy()
    buys = split.train_branches == 0
    masked[split.train_users[buys], split.train_items[buys]] = -np.inf
    want = np.sort(masked, axis=1)[:, ::-1][:, :K]
    np.testing.assert_allclose(rec["scores"].numpy(), want, atol=1e-5)
    for row, ids in zip(masked, rec["item_ids"].numpy()):
        picked = [int(i.decode()[1:]) for i in ids]
        assert np.all(row[picked] > -np.inf)
    ret = module.retrieve(tf.constant(USERS[:3]))
    np.testing.assert_allclose(
        ret["scores"].numpy(), np.sort(grid[:3], axis=1)[:, ::-1][:, :C], atol=1e-5
    )


# Carts of three items of the second community (items 20-39).
THREE_CARTS = [(0, "i21", "cart"), (0, "i24", "cart"), (0, "i27", "cart")]


def assert_known_users_without_events_get_recommend(module, atol):
    """`recommend_from_history` with no events is `recommend` (any exported model)."""
    rec = module.recommend(tf.constant(["u3", "u25"]))
    hist = _history(module, ["u3", "u25"], [])
    np.testing.assert_allclose(hist["scores"].numpy(), rec["scores"].numpy(), atol=atol)
    assert hist["item_ids"].numpy().tolist() == rec["item_ids"].numpy().tolist()


def new_user_with_three_carts(module):
    """(the item indices, the outputs) for a new user with THREE_CARTS; checked
    not to be the popularity list an unknown user without events gets."""
    out = _history(module, ["someone-new"], THREE_CARTS)
    picked = [int(i.decode()[1:]) for i in out["item_ids"].numpy()[0]]
    popular = module.recommend(tf.constant(["someone-new"]))["item_ids"].numpy()[0]
    assert picked != [int(i.decode()[1:]) for i in popular]
    assert out["unknown_events"].numpy().tolist() == [0]
    return picked, out


def assert_one_more_event_changes_the_ranking(module):
    """One more event moves a new user's ranking, and a known user's."""
    before = _history(module, [""], THREE_CARTS)
    after = _history(module, [""], THREE_CARTS + [(0, "i3", "view")])
    assert not np.allclose(before["scores"].numpy(), after["scores"].numpy())
    # A known user's events are merged with the user's training history.
    known = module.recommend(tf.constant(["u5"]))
    merged = _history(module, ["u5"], [(0, "i30", "cart")])
    assert not np.allclose(known["scores"].numpy(), merged["scores"].numpy())


def test_a_known_user_without_events_gets_its_recommend(fitted):
    assert_known_users_without_events_get_recommend(fitted["module"], atol=1e-6)


def test_a_new_user_with_three_carts_gets_items_near_them(fitted):
    picked, out = new_user_with_three_carts(fitted["module"])
    # The ranking stays in the carts' community.
    assert len(picked) == K and all(20 <= i < 40 for i in picked)
    assert np.all(out["scores"].numpy() > 0)


def test_one_more_event_changes_the_ranking(fitted):
    assert_one_more_event_changes_the_ranking(fitted["module"])


def test_bought_events_are_excluded_and_unknown_items_counted(fitted):
    module = fitted["module"]
    first = _history(module, ["new"], [(0, "i21", "cart"), (0, "i24", "cart")])
    top = first["item_ids"].numpy()[0][0].decode()
    out = _history(
        module, ["new"], [(0, "i21", "cart"), (0, "i24", "cart"), (0, top, "buy"), (0, "x", "view")]
    )
    assert top not in [i.decode() for i in out["item_ids"].numpy()[0]]
    assert out["unknown_events"].numpy().tolist() == [1]


@pytest.mark.parametrize(
    "user_ids, items, behaviors, rows, message",
    [
        (["u1"], ["i1"], ["like"], [0], "history_behavior must be one of"),
        (["u1"], ["i1"], ["cart"], [1], "history_row must index user_id"),
        (["u1"], ["i1"], ["cart"], [-1], "history_row must index user_id"),
        (["u1"], ["i1", "i2"], ["cart"], [0], "the same length"),
        (["u1"], ["i1"], ["cart"], [0, 0], "one row per event"),
    ],
)
def test_a_bad_history_request_is_an_error_of_its_own(
    fitted, user_ids, items, behaviors, rows, message
):
    module = fitted["module"]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        module.recommend_from_history(
            **{
                schema.USER_ID: tf.constant(user_ids),
                schema.HISTORY_ITEM_ID: tf.constant(items),
                schema.HISTORY_BEHAVIOR: tf.constant(behaviors),
                schema.HISTORY_ROW: tf.constant(rows, tf.int32),
            }
        )
    # The module serves the next request.
    assert module.recommend(tf.constant(["u1"]))["item_ids"].shape == (1, K)


CLEAN_PROCESS = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    path, args = sys.argv[1], json.loads(sys.argv[2])
    loaded = tf.saved_model.load(path)
    out = {"signatures": sorted(loaded.signatures)}
    hist = loaded.signatures["recommend_from_history"](
        user_id=tf.constant(args["users"]),
        history_item_id=tf.constant(args["items"]),
        history_behavior=tf.constant(args["behaviors"]),
        history_row=tf.constant(args["rows"], tf.int32),
    )
    out["hist_items"] = [[i.decode() for i in r] for r in hist["item_ids"].numpy()]
    out["hist_scores"] = hist["scores"].numpy().tolist()
    rec = loaded.signatures["recommend"](user_id=tf.constant(args["users"]))
    out["rec_scores"] = rec["scores"].numpy().tolist()
    out["project_imported"] = any(m.startswith("mmrec_tf") for m in sys.modules)
    print(json.dumps(out))
    """
)


def test_the_saved_model_serves_histories_in_a_clean_process(fitted, tmp_path):
    module = fitted["module"]
    path = exporter.export(
        module, str(tmp_path / "serving"), warmup_user_ids=["u1"], warmup_item_ids=["i1"]
    )
    args = {
        "users": ["u2", "nobody"],
        "items": ["i22", "i23", "i5"],
        "behaviors": ["cart", "view", "cart"],
        "rows": [1, 1, 0],
    }
    out = test_export._in_clean_process(CLEAN_PROCESS, path, args, tmp_path)
    assert not out["project_imported"]
    assert out["signatures"] == [
        "recommend",
        "recommend_from_history",
        "retrieve",
        "serving_default",
    ]
    events = list(zip(args["rows"], args["items"], args["behaviors"]))
    want = _history(module, args["users"], events)
    np.testing.assert_allclose(out["hist_scores"], want["scores"].numpy(), atol=1e-6)
    assert out["hist_items"] == [[i.decode() for i in r] for r in want["item_ids"].numpy()]
    assert json.dumps(out["rec_scores"])


def test_main_fits_evaluates_and_exports_the_cascade(tmp_path):
    from mmrec_tf import cli
    from mmrec_tf import run as run_lib
    from tests.mmrec_tf.test_main import QUICKSTART
    from tests.mmrec_tf.test_main import _flags

    common = [
        f"--flagfile={QUICKSTART}",
        f"--model_dir={tmp_path}",
        "--synthetic_users=300",
        "--synthetic_items=400",
        "--model=cascade",
        "--cascade_alpha=0.5",
        "--cascade_beta=0.4",
        f"--export_dir={tmp_path / 'serving'}",
        "--retrieval_candidates=50",
    ]
    trained = run_lib.run(cli.config_from_flags(_flags(common)))
    assert trained["train"]["cascade"]["alpha"] == 0.5
    assert trained["train"]["cascade"]["order"][-1] == "buy"
    assert "checkpoints" not in os.listdir(tmp_path)  # nothing was trained
    full = trained["test"]["full"]
    # recommend is the full ranking's top K: the same hits as the evaluation.
    in_memory = trained["test"]["two_stage_in_memory"]["recommend"]
    assert in_memory["HR@10"] == pytest.approx(full["HR@10"], abs=1e-9)
    exported = run_lib.run(cli.config_from_flags(_flags(common + ["--mode=evaluate_export"])))
    assert exported["test"]["recommend"] == pytest.approx(in_memory, abs=1e-6)
    loaded = tf.saved_model.load(trained["export"]["path"])
    assert schema.RECOMMEND_FROM_HISTORY in loaded.signatures
