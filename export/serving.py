"""The serving module: raw string ids in, scores and recommendations out.

A `ServingModule` holds the trained scorer, the vocabularies, a TFRS
brute-force index over the MF item factors, the users' training purchases
and the item popularity, so TensorFlow Serving runs it without this package.
The vocabularies are SavedModel assets (text files read by a
`TextFileInitializer`) and every other table is a variable: nothing large is
a constant of the graph, so `saved_model.pb` stays small and a catalog of
millions of items stays clear of protobuf's 2 GB limit.

Signatures (each a `tf.function` over named `TensorSpec`s):

- `serving_default(user_id [B] string, item_id [B] string)`
  -> `score` [B] (the ranking score: the logit), `logit` [B] (the same),
  `probability` [B] (its sigmoid; float32 saturates at 1.0 above logit ~17,
  so rank by `score`, never by `probability`).
- `recommend(user_id [B] string)` -> `item_ids` [B, K] string, `scores` [B, K]
  (logits):
  the MF retrieval stage takes the top `retrieval_candidates` items, the full
  model re-ranks them, the top K are returned. With `exclude_seen` the
  user's training purchases are masked in the retrieval scores before its
  top-k (a scatter of -inf into the [B, items] scores), so however many
  items a user bought, the C candidates are C items they did not. A model
  with behavior features also re-ranks every item the user touched through
  supportive feedback in training (not bought, with `exclude_seen`; the
  pairs and their behaviors are variables of the SavedModel), and scores
  every pair with its behavior flags.
- `retrieve(user_id [B] string)` -> `item_ids` [B, C] string, `scores` [B, C]:
  the retrieval stage alone (MF scores).
- `recommend_from_history(user_id [B], history_item_id [N], history_behavior
  [N], history_row [N])` -> `item_ids`, `scores` as `recommend`, and
  `unknown_events` [B] (each row's events on items the catalog lacks): the
  top K for users described by events, event n (an item and a behavior
  name) belonging to row `history_row[n]`. A row with events gets an MF
  factor solved from them as the ALS solves a user (a known user's training
  pairs and the events together; an unknown or empty user id: the events
  alone), so the retrieval stage is personal; a new user's branches take
  each branch's mean user. The events join the user's behaviors (behavior
  features) and graph histories (graph signals); bought events are excluded
  like training purchases. A known user without events gets `recommend`.

A scorer with graph signals gets them per request (`export.signals`): a
known user's are exactly the evaluation's. Its candidates are the MF stage's
top C, the top C items its behavior graphs reach from the user's histories,
and the user's touched items, re-ranked together; a request's memory is a
few [users + items] float blocks per row (a `serving_default` request's
rows are its distinct users), so its row limits are capped.

Every input must be a rank-1 string tensor, `user_id` and `item_id` of equal
length, at most `max_request_users` users for `recommend` / `retrieve` and
`max_request_pairs` pairs for `serving_default` (memory grows with the
batch; with graph signals or the cascade blend also at most
`max_request_users` distinct users); anything else is an InvalidArgument
error of that request alone, never an abort of the process. When `exclude_seen` leaves fewer than K candidates,
`recommend` fills the remaining slots with the sentinel item id "" and score
-inf, never with a purchased item.

Unknown ids are not errors:

- an unknown item scores `logit = UNKNOWN_LOGIT` (score about 1e-13), so it
  sorts last;
- an unknown user with a known item scores the item's popularity share
  `p = count / (max count + 1)` (logit = log(p / (1 - p)));
- `recommend` and `retrieve` for an unknown user return the K (or C) most
  popular items, scored by that popularity share.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras

from mmrec_tf import blend
from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf.export import signals as signals_lib
from mmrec_tf.pipelines import graph_signals
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits as splits_lib
from mmrec_tf.pipelines import training_index

UNKNOWN_LOGIT = -30.0
# The item id of `recommend`'s empty slots (fewer candidates than K).
EMPTY_ITEM_ID = ""
MAX_REQUEST_USERS = config_lib.ExportConfig.max_request_users
MAX_REQUEST_PAIRS = config_lib.ExportConfig.max_request_pairs
MAX_HISTORY_EVENTS = 10000
# The dense blocks one request may take, in bytes: modules whose requests
# build per-row blocks over the catalog cap their row limits by it.
REQUEST_BUDGET_BYTES = 1 << 28
# Behaviors per (row, item) key: a bitmask of int32 holds fewer than 32.
_BRANCHES = 32
# A new user's MF fold-in (alpha, l2, supportive_weight): the ALS defaults.
FOLD_IN = (
    config_lib.ModelConfig.als_alpha,
    config_lib.ModelConfig.als_l2,
    config_lib.ModelConfig.als_supportive_weight,
)

# Signature inputs of unknown rank: the rank is checked when the request runs,
# so a scalar or a matrix is an InvalidArgument error, not a kernel's abort.
_IDS = tf.TensorSpec(None, tf.string, name=schema.USER_ID)
_ITEM_IDS = tf.TensorSpec(None, tf.string, name=schema.ITEM_ID)
HISTORY_SPEC = (
    tf.TensorSpec(None, tf.string, name=schema.USER_ID),
    tf.TensorSpec(None, tf.string, name=schema.HISTORY_ITEM_ID),
    tf.TensorSpec(None, tf.string, name=schema.HISTORY_BEHAVIOR),
    tf.TensorSpec(None, tf.int32, name=schema.HISTORY_ROW),
)


def _vector(ids: tf.Tensor, name: str, limit: int) -> tf.Tensor:
    """`ids` as a [batch] vector once its rank and size are checked at run time."""
    checks = [
        tf.debugging.assert_rank(ids, 1, message=f"{name} must be a rank-1 string tensor [batch]"),
        tf.debugging.assert_less_equal(
            tf.size(ids),
            limit,
            message=f"{name}: at most {limit} per request; split the batch",
        ),
    ]
    with tf.control_dependencies(checks):
        return tf.reshape(ids, [-1])


def _vocabulary_file(tokens: np.ndarray, folder: str, name: str) -> str:
    """The tokens written one per line (line number = index); returns the file's path."""
    path = os.path.join(folder, f"{name}.txt")
    with open(path, "w", encoding="utf-8") as f:
        for token in tokens:
            token = str(token)
            if not token or "\n" in token or "\r" in token:
                raise ValueError(
                    f"{name} id {token!r} cannot be a vocabulary line: ids must be non-empty "
                    "and hold no line break."
                )
            f.write(token + "\n")
    return path


def _lookup_table(path: str) -> tf.lookup.StaticHashTable:
    """Raw id -> index (-1 when unknown), read from a vocabulary file (saved as an asset).

    The initializer gets the path itself, not an Asset object: a file table's
    resource is shared by a name made of what the initializer was given, and
    an Asset object's name is its address. Once an earlier module's Asset was
    freed, a new one could take its address, and with it the earlier table,
    still holding the earlier vocabulary. A path is unique to its module's
    folder. (An anonymous table would not do: TensorFlow Serving and other
    TF1-style loaders do not initialize it.)
    """
    initializer = tf.lookup.TextFileInitializer(
        path,
        key_dtype=tf.string,
        key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
        value_dtype=tf.int64,
        value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
    )
    return tf.lookup.StaticHashTable(initializer, -1)


def _table(values, dtype, name: str) -> tf.Variable:
    """A fixed table of the export, saved as a variable (not a graph constant)."""
    return tf.Variable(np.asarray(values), dtype=dtype, trainable=False, name=name)


def listed(values: tf.Variable, row_splits: tf.Variable, users: tf.Tensor):
    """(row in the batch, item) of each listed item of the known users, flat."""
    rows, positions = signals_lib.listed_positions(row_splits, users)
    return rows, tf.gather(values, positions)


class CatalogModule(tf.Module):
    """What every export shares: vocabularies, item ids, fallbacks, purchases, limits.

    The vocabularies are assets, every table a variable. `ServingModule` (a
    trained scorer) and `export.cascade.CascadeModule` (CascadingRank) build
    on it, so both check requests, look ids up and fall back to popularity
    the same way.

    Args:
      user_tokens: [num_users] raw user ids by index.
      item_tokens: [num_items] raw item ids by index.
      popularity: [num_items] training target counts.
      seen_row_splits: [num_users + 1] row splits of `seen_items`.
      seen_items: the users' training target items, user by user.
      top_k: K of `recommend`.
      retrieval_candidates: C of `retrieve`.
      exclude_seen: leave the user's training purchases out of `recommend`.
      max_request_users: most users per `recommend` / `retrieve` request.
      max_request_pairs: most pairs per `serving_default` request.
      behaviors: behavior names by branch (the target first), the names
        `recommend_from_history` events take.
      max_history_events: most events per `recommend_from_history` request.
      request_row_bytes: the dense memory one request row (a user) takes (0:
        none to speak of); the user limit is then capped so that a request's
        blocks fit REQUEST_BUDGET_BYTES.

    Raises:
      ValueError: if K exceeds C or the catalog, or C exceeds the catalog.
    """

    def __init__(
        self,
        *,
        user_tokens: np.ndarray,
        item_tokens: np.ndarray,
        popularity: np.ndarray,
        seen_row_splits: np.ndarray,
        seen_items: np.ndarray,
        top_k: int,
        retrieval_candidates: int,
        exclude_seen: bool,
        max_request_users: int,
        max_request_pairs: int,
        behaviors: tuple[str, ...],
        max_history_events: int = MAX_HISTORY_EVENTS,
        request_row_bytes: int = 0,
    ):
        super().__init__()
        if request_row_bytes:
            rows = max(1, REQUEST_BUDGET_BYTES // request_row_bytes)
            max_request_users = min(max_request_users, rows)
        num_items = len(item_tokens)
        if not 1 <= top_k <= retrieval_candidates <= num_items:
            raise ValueError(
                f"export_top_k={top_k} and retrieval_candidates={retrieval_candidates} must "
                f"satisfy 1 <= K <= C <= {num_items} (the catalog)."
            )
        self.num_users, self.num_items = len(user_tokens), num_items
        self.top_k = top_k
        self.retrieval_candidates = retrieval_candidates
        self.exclude_seen = exclude_seen
        self.max_request_users = max_request_users
        self.max_request_pairs = max_request_pairs
        # The vocabulary files live until the module is saved (then as assets).
        self._vocabulary_folder = tempfile.TemporaryDirectory(prefix="mmrec_vocab_")
        folder = self._vocabulary_folder.name
        # The tables' initializers keep the files as the SavedModel's assets.
        self.user_table = _lookup_table(_vocabulary_file(user_tokens, folder, "users"))
        self.item_table = _lookup_table(_vocabulary_file(item_tokens, folder, "items"))
        self.item_ids = _table([str(t) for t in item_tokens], tf.string, "item_ids")
        share = np.asarray(popularity, np.float64) / (float(np.max(popularity, initial=0)) + 1.0)
        self.popularity = _table(share, tf.float32, "popularity")
        order = np.argsort(-share, kind="stable")[:retrieval_candidates]
        self.popular_items = _table(order, tf.int32, "popular_items")
        self.seen_row_splits = _table(seen_row_splits, tf.int64, "seen_row_splits")
        self.seen_items = _table(seen_items, tf.int32, "seen_items")
        self.behavior_names = tuple(behaviors)
        self.max_history_events = max_history_events
        self.behavior_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(behaviors)), tf.range(len(behaviors), dtype=tf.int64)
            ),
            -1,
        )

    def _events(self, user_id, history_item_id, history_behavior, history_row):
        """A `recommend_from_history` request, checked: (users [B], (rows, items,
        branches) of its events on known items, [B] count of events on unknown items)."""
        user_id = _vector(user_id, schema.USER_ID, self.max_request_users)
        limit = self.max_history_events
        item_id = _vector(history_item_id, schema.HISTORY_ITEM_ID, limit)
        behavior = _vector(history_behavior, schema.HISTORY_BEHAVIOR, limit)
        event_rows = tf.reshape(history_row, [-1])
        batch = tf.shape(user_id)[0]
        branches = self.behavior_table.lookup(behavior)
        checks = [
            tf.debugging.assert_rank(history_row, 1, message=f"{schema.HISTORY_ROW} must be [N]"),
            tf.debugging.assert_equal(
                tf.size(item_id),
                tf.size(behavior),
                message=f"{schema.HISTORY_ITEM_ID} and {schema.HISTORY_BEHAVIOR} must have "
                "the same length (one event each)",
            ),
            tf.debugging.assert_equal(
                tf.size(item_id),
                tf.size(event_rows),
                message=f"{schema.HISTORY_ROW} must give one row per event",
            ),
            tf.debugging.assert_non_negative(
                event_rows, message=f"{schema.HISTORY_ROW} must index {schema.USER_ID} (>= 0)"
            ),
            tf.debugging.assert_less(
                event_rows,
                tf.maximum(batch, 1),
                message=f"{schema.HISTORY_ROW} must index {schema.USER_ID} (< its length)",
            ),
            tf.debugging.assert_non_negative(
                branches,
                message=f"{schema.HISTORY_BEHAVIOR} must be one of {self.behavior_names}",
            ),
        ]
        with tf.control_dependencies(checks):
            # Nothing below runs on a request that failed a check.
            users = self._users(user_id)
            items = tf.cast(self.item_table.lookup(item_id), tf.int32)
            branches = tf.identity(branches)
            event_rows = tf.identity(event_rows)
        found = items >= 0
        unknown = tf.math.unsorted_segment_sum(tf.cast(~found, tf.int32), event_rows, batch)
        events = (
            tf.boolean_mask(event_rows, found),
            tf.boolean_mask(items, found),
            tf.cast(tf.boolean_mask(branches, found), tf.int32),
        )
        return users, events, unknown

    def _users(self, user_id: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.user_table.lookup(user_id), tf.int32)

    def _popular(self, batch: tf.Tensor, k: int):
        items = tf.tile(self.popular_items[None, :k], [batch, 1])
        return items, tf.gather(self.popularity, items)

    def _rows(self, values: tf.Variable, row_splits: tf.Variable, users: tf.Tensor):
        return listed(values, row_splits, users)

    def _pairs(self, user_id: tf.Tensor, item_id: tf.Tensor):
        """A `serving_default` request's (users, items) indices (-1: unknown), checked."""
        user_id = _vector(user_id, schema.USER_ID, self.max_request_pairs)
        item_id = _vector(item_id, schema.ITEM_ID, self.max_request_pairs)
        same = tf.debugging.assert_equal(
            tf.size(user_id),
            tf.size(item_id),
            message="user_id and item_id must have the same length (one pair each)",
        )
        with tf.control_dependencies([same]):
            users = self._users(user_id)
        return users, tf.cast(self.item_table.lookup(item_id), tf.int32)

    def _pair_outputs(self, logits: tf.Tensor, users: tf.Tensor, items: tf.Tensor) -> dict:
        """`serving_default`'s outputs: an unknown user's pair scores the item's
        popularity share (as a logit), an unknown item UNKNOWN_LOGIT."""
        share = tf.gather(self.popularity, tf.maximum(items, 0))
        share = tf.clip_by_value(share, 1e-6, 1 - 1e-6)
        fallback = tf.math.log(share) - tf.math.log1p(-share)
        logits = tf.where(users >= 0, logits, fallback)
        logits = tf.where(items >= 0, logits, UNKNOWN_LOGIT)
        return {schema.SCORE: logits, schema.LOGIT: logits, schema.PROBABILITY: tf.sigmoid(logits)}


def catalog_tables(split: splits_lib.Split) -> dict:
    """The training split's `popularity`, `seen_row_splits`, `seen_items`
    (each user's target items) and `behaviors`, as `CatalogModule` takes them."""
    popularity = np.bincount(
        split.train_items[split.train_branches == 0], minlength=split.num_items
    )
    keys = splits_lib.train_target_keys(split)
    return {
        "popularity": popularity,
        "seen_row_splits": training_index.row_offsets(keys, split.num_users, split.num_items),
        "seen_items": (keys % split.num_items).astype(np.int32),
        "behaviors": split.behaviors.behaviors,
    }


class ServingModule(CatalogModule):
    """The exported model: scorer, vocabularies, retrieval index, fallbacks, graphs."""

    def __init__(
        self,
        scorer: tf_keras.Model,
        *,
        user_tokens: np.ndarray,
        item_tokens: np.ndarray,
        behaviors: tuple[str, ...],
        popularity: np.ndarray,
        seen_row_splits: np.ndarray,
        seen_items: np.ndarray,
        top_k: int = 10,
        retrieval_candidates: int = 500,
        exclude_seen: bool = True,
        pair_keys: np.ndarray | None = None,
        pair_bits: np.ndarray | None = None,
        signals: signals_lib.SignalTables | None = None,
        fold_in: tuple[float, float, float] = FOLD_IN,
        cascade=None,
        cascade_weight: float = 0.0,
        max_request_users: int = MAX_REQUEST_USERS,
        max_request_pairs: int = MAX_REQUEST_PAIRS,
        max_history_events: int = MAX_HISTORY_EVENTS,
    ):
        """Builds the module.

        Args:
          scorer: a trained model from `models.build_model` with an MF part.
          user_tokens: [num_users] raw user ids by index.
          item_tokens: [num_items] raw item ids by index.
          behaviors: behavior names by branch (the target first).
          popularity: [num_items] training target counts.
          seen_row_splits: [num_users + 1] row splits of `seen_items`.
          seen_items: the users' training target items, user by user.
          top_k: K of `recommend`.
          retrieval_candidates: C, the candidates the retrieval stage passes on.
          exclude_seen: leave the user's purchases out of `recommend`.
          pair_keys: sorted `user * num_items + item` keys of the training
            pairs (`TrainingIndex.keys`): their behaviors, and a known user's
            MF refit with a request's events; needed by a scorer with
            behavior features or graph signals.
          pair_bits: the behavior bitmask of each pair (`TrainingIndex.bits`).
          signals: the training graphs (`signals.SignalTables`); needed by a
            scorer built with graph signals.
          fold_in: (alpha, l2, supportive_weight) of a new user's MF factor
            (`_fold_in`): the ALS settings the MF part started from.
          cascade: with `cascade_weight`, CascadingRank's propagation
            (`export.cascade.Propagation`) of a `--cascade_blend` run: each
            row's cascade scores add `cascade_weight * blend.log_scores` to
            the logits and their top C join the candidates.
          cascade_weight: the blend's weight chosen on validation (0: none).
          max_request_users: most users per `recommend` / `retrieve` request,
            and distinct users per `serving_default` request with graph
            signals or the blend (capped so a request's graph blocks fit
            REQUEST_BUDGET_BYTES).
          max_request_pairs: most pairs per `serving_default` request.
          max_history_events: most events per `recommend_from_history` request.

        Raises:
          ValueError: if K exceeds C or the catalog, or C exceeds the catalog,
            or the scorer has behavior features or graph signals and the
            pairs or graphs it needs are missing.
        """
        super().__init__(
            user_tokens=user_tokens,
            item_tokens=item_tokens,
            popularity=popularity,
            seen_row_splits=seen_row_splits,
            seen_items=seen_items,
            top_k=top_k,
            retrieval_candidates=retrieval_candidates,
            exclude_seen=exclude_seen,
            max_request_users=max_request_users,
            max_request_pairs=max_request_pairs,
            behaviors=behaviors,
            max_history_events=max_history_events,
            request_row_bytes=(signals.bytes_per_row if signals is not None else 0)
            + (cascade.row_bytes(len(user_tokens), len(item_tokens)) if cascade_weight else 0),
        )
        num_items = self.num_items
        self.scorer = scorer
        self.num_behaviors = len(behaviors)
        self.query_tower, candidate_tower = models.retrieval_towers(scorer)
        # The retrieval index: every item's candidate vector (a brute-force
        # index, as TFRS's BruteForce keeps it), scored by one matmul. The
        # candidate tower is the MF item table itself, so the index is that
        # variable, not a second copy (3.7M items x 192 factors: 2.6 GiB).
        item_table = scorer.mf.item_embedding.embeddings
        if isinstance(item_table, tf.Variable):
            self.item_vectors = item_table
            # Every lookup of the table reads it densely, so the variable never
            # turns copy-on-read (layers.`_EmbeddingPair.item_vector`).
            for part in [scorer.mf, *scorer.towers]:
                if part is not None and part.item_embedding.embeddings is item_table:
                    part.dense_item_reads = True
        else:  # sharded over parameter servers: one table for the matmul
            self.item_vectors = _table(
                candidate_tower(tf.range(num_items, dtype=tf.int32)).numpy(), tf.float32, "index"
            )
        self.behavior_features = scorer.behavior_bias is not None
        if scorer.num_signals and signals is None:
            raise ValueError(
                "the scorer takes graph signals: pass signals=SignalTables of its training graphs."
            )
        self.signals = signals if scorer.num_signals else None
        self.cascade = cascade if cascade_weight else None
        self.cascade_weight = float(cascade_weight)
        # Items the user touched through supportive feedback are re-ranked
        # beside the retrieved ones where the scorer reads behaviors.
        self.rerank_touched = self.behavior_features or self.signals is not None
        if pair_keys is None or pair_bits is None:
            if self.rerank_touched:
                raise ValueError(
                    "the scorer has behavior features or graph signals: pass the training "
                    "pairs (pair_keys, pair_bits) whose behaviors it reads."
                )
            # No training pairs: a known user's events are then refitted alone.
            pair_keys, pair_bits = np.zeros(0, np.int64), np.zeros(0, np.int32)
        self.pair_keys = _table(pair_keys, tf.int64, "pair_keys")
        self.pair_bits = _table(pair_bits.astype(np.int32), tf.int32, "pair_bits")
        self.pair_row_splits = _table(
            training_index.row_offsets(pair_keys, self.num_users, num_items),
            tf.int64,
            "pair_splits",
        )
        if self.rerank_touched:
            # Each user's items with supportive feedback: extra candidates
            # (not those bought, when purchases are left out).
            touched = (pair_bits >> 1) != 0
            if exclude_seen:
                touched &= (pair_bits & 1) == 0
            supportive = pair_keys[touched]
            self.touched_row_splits = _table(
                training_index.row_offsets(supportive, self.num_users, num_items),
                tf.int64,
                "touched_splits",
            )
            self.touched_items = _table(supportive % num_items, tf.int32, "touched_items")
        # A new user's MF factor: the ALS solve of their events against the
        # item factors, (Y^T Y + l2 I + sum_h (c_h - 1) y_h y_h^T) p = sum_h c_h y_h.
        # The MF part's logit is <p_u, w * q_i> (w: the head's MF weights),
        # so the solve is against the items' w * q_i.
        # The items' rows are the index's, scaled per column by w at request
        # time; the Gram matrix is summed over row blocks, so no scaled copy
        # of the table (in float64: 5.2 GiB at 3.7M x 192) is ever made.
        mf_dim = scorer.mf.embedding_dim
        head_weights = scorer.head.dense.kernel.numpy()[:mf_dim, 0].astype(np.float64)
        self.fold_in_scale = _table(head_weights.astype(np.float32), tf.float32, "fold_in_scale")
        alpha, l2, weight = (float(x) for x in fold_in)
        self.fold_in_alpha, self.fold_in_weight = alpha, weight if weight > 0 else 1.0
        gram = l2 * np.eye(mf_dim)
        for start in range(0, num_items, models.FACTOR_ROWS):
            block = self.item_vectors[start : start + models.FACTOR_ROWS].numpy()
            block = block.astype(np.float64) * head_weights
            gram += block.T @ block
        self.fold_in_gram = _table(gram.astype(np.float32), tf.float32, "fold_in_gram")
        # A new user's branch vectors: each branch's mean user.
        self.mean_users = [
            _table(tower.user_embedding.embeddings.numpy().mean(axis=0), tf.float32, f"mean_{t}")
            for t, tower in enumerate(scorer.towers)
        ]

    # -- behaviors and vectors of the request rows ---------------------------

    def _gates(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """[n, num_behaviors] behavior flags of the training pairs (ones without features)."""
        if not self.behavior_features:
            return tf.ones([tf.shape(users)[0], self.num_behaviors])
        return models.unpack_bits(self._bits(users, items), self.num_behaviors)

    def _bits(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """[n] behavior bitmasks of the training pairs (0 where none or unknown)."""
        query = tf.cast(users, tf.int64) * self.num_items + tf.cast(items, tf.int64)
        last = tf.shape(self.pair_keys, out_type=tf.int64)[0] - 1
        position = tf.searchsorted(self.pair_keys, query)
        position = tf.minimum(tf.cast(position, tf.int64), tf.maximum(last, 0))
        found = (tf.gather(self.pair_keys, position) == query) & (users >= 0)
        return tf.where(found, tf.gather(self.pair_bits, position), 0)

    def _row_gates(self, users, candidates, events) -> tf.Tensor:
        """[B, W, num_behaviors] flags of each row's candidates: training and request events."""
        shape = tf.shape(candidates)
        if not self.behavior_features:
            return tf.ones(tf.concat([shape, [self.num_behaviors]], axis=0))
        rows = tf.broadcast_to(tf.range(shape[0])[:, None], shape)
        flat_users = tf.reshape(tf.gather(users, rows), [-1])
        bits = self._bits(flat_users, tf.reshape(tf.maximum(candidates, 0), [-1]))
        event_rows, event_items, event_branches = events
        keys = self._branch_keys(event_rows, event_items, event_branches)
        pair, index = tf.unique(keys // _BRANCHES)
        event_bits = tf.math.unsorted_segment_sum(
            tf.bitwise.left_shift(1, tf.cast(keys % _BRANCHES, tf.int32)), index, tf.size(pair)
        )
        order = tf.argsort(pair)
        _, extra = signals_lib.lookup(
            tf.gather(pair, order),
            tf.gather(event_bits, order),
            tf.reshape(self._keys(rows, tf.maximum(candidates, 0)), [-1]),
        )
        bits = tf.bitwise.bitwise_or(bits, extra)
        return tf.reshape(
            models.unpack_bits(bits, self.num_behaviors),
            tf.concat([shape, [self.num_behaviors]], axis=0),
        )

    def _keys(self, rows: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        return tf.cast(rows, tf.int64) * self.num_items + tf.cast(items, tf.int64)

    def _branch_keys(self, rows, items, branches) -> tf.Tensor:
        """Distinct (row, item, behavior) triples as pair key * _BRANCHES + behavior."""
        keys = self._keys(rows, items) * _BRANCHES + tf.cast(branches, tf.int64)
        return tf.unique(keys)[0]

    def _fold_in(self, batch: tf.Tensor, events) -> tf.Tensor:
        """[B, mf_dim] each row's MF factor solved from its events alone.

        A purchase counts r = 1, each distinct supportive behavior of the item
        the ALS's supportive weight (1 where that weight is 0: a model whose
        factors never saw supportive events still takes a new user's views as
        preference), with confidence c = 1 + alpha * r, as the ALS fits users.
        """
        event_rows, event_items, event_branches = events
        keys = self._branch_keys(event_rows, event_items, event_branches)
        weight = tf.where(keys % _BRANCHES == 0, 1.0, self.fold_in_weight)
        pair, index = tf.unique(keys // _BRANCHES)
        r = tf.math.unsorted_segment_sum(weight, index, tf.size(pair))
        c = 1.0 + self.fold_in_alpha * r
        rows = tf.cast(pair // self.num_items, tf.int32)
        # From a dense read: a gather on the variable would make it copy-on-read.
        y = tf.gather(
            tf.convert_to_tensor(self.item_vectors), tf.cast(pair % self.num_items, tf.int32)
        )
        y = y * self.fold_in_scale
        outer = (c - 1.0)[:, None, None] * y[:, :, None] * y[:, None, :]
        lhs = self.fold_in_gram[None] + tf.math.unsorted_segment_sum(outer, rows, batch)
        rhs = tf.math.unsorted_segment_sum(c[:, None] * y, rows, batch)
        return tf.linalg.solve(lhs, rhs[..., None])[..., 0]

    def _training_events(self, users):
        """The known users' training pairs as events: (rows, items, branches), one per behavior."""
        lists = tf.RaggedTensor.from_row_splits(
            tf.range(tf.size(self.pair_keys)), self.pair_row_splits
        )
        lists = tf.ragged.boolean_mask(tf.gather(lists, tf.maximum(users, 0)), users >= 0)
        rows = tf.cast(lists.value_rowids(), tf.int32)
        position = lists.flat_values
        items = tf.cast(tf.gather(self.pair_keys, position) % self.num_items, tf.int32)
        bits = tf.gather(self.pair_bits, position)
        out = ([], [], [])
        for branch in range(self.num_behaviors):
            mine = tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits, branch), 1) > 0
            out[0].append(tf.boolean_mask(rows, mine))
            out[1].append(tf.boolean_mask(items, mine))
            out[2].append(tf.fill(tf.shape(out[0][-1]), branch))
        return tuple(tf.concat(parts, axis=0) for parts in out)

    def _parts(self, users: tf.Tensor, events) -> list[tf.Tensor]:
        """The rows' user vectors per part.

        A known user without events keeps the trained vectors. A row with
        events gets an MF factor solved from them (`_fold_in`); for a known
        user, from the training pairs and the events together. A new user's
        branches take each branch's mean user.
        """
        known = users >= 0
        own = models.user_parts(self.scorer, tf.maximum(users, 0))
        batch = tf.shape(users)[0]
        has_events = tf.math.unsorted_segment_sum(tf.ones_like(events[0]), events[0], batch) > 0
        merged = [tf.concat([a, b], axis=0) for a, b in zip(self._training_events(users), events)]
        # Only the rows with events are solved: the others keep their vectors.
        solved = tf.gather(has_events, merged[0])
        merged = [tf.boolean_mask(part, solved) for part in merged]
        refit = tf.cast(self._fold_in(batch, merged), own[0].dtype)
        mf = tf.where(has_events[:, None], refit, own[0])
        new = [
            tf.broadcast_to(tf.cast(m, own[0].dtype)[None], [batch, m.shape[0]])
            for m in self.mean_users
        ]
        branches = [tf.where(known[:, None], a, b) for a, b in zip(own[1:], new)]
        return [mf] + branches

    # -- the two stages ------------------------------------------------------

    def _excluded_and_touched(self, users, events):
        """Sorted keys (row * items + item) never recommended (purchases, with
        `exclude_seen`) and re-ranked beside the retrieved (supportive items)."""
        event_rows, event_items, event_branches = events
        bought = event_branches == 0
        excluded = tf.zeros([0], tf.int64)
        if self.exclude_seen:
            rows, items = self._rows(self.seen_items, self.seen_row_splits, users)
            excluded = tf.concat(
                [
                    self._keys(rows, items),
                    self._keys(
                        tf.boolean_mask(event_rows, bought), tf.boolean_mask(event_items, bought)
                    ),
                ],
                axis=0,
            )
            excluded = tf.sort(tf.unique(excluded)[0])
        touched = tf.zeros([0], tf.int64)
        if self.rerank_touched:
            rows, items = self._rows(self.touched_items, self.touched_row_splits, users)
            touched = tf.concat(
                [
                    self._keys(rows, items),
                    self._keys(
                        tf.boolean_mask(event_rows, ~bought), tf.boolean_mask(event_items, ~bought)
                    ),
                ],
                axis=0,
            )
            touched = tf.unique(touched)[0]
            touched = tf.sort(tf.boolean_mask(touched, ~signals_lib.found(excluded, touched)))
        return excluded, touched

    def _masked_top(self, scores: tf.Tensor, keys: tf.Tensor, k: int) -> tf.Tensor:
        """[B, k] the top items of `scores` [B, items] with `keys` masked (-1 where none is left)."""
        positions = tf.stack(
            [tf.cast(keys // self.num_items, tf.int32), tf.cast(keys % self.num_items, tf.int32)],
            axis=1,
        )
        scores = tf.tensor_scatter_nd_update(
            scores, positions, tf.fill(tf.shape(keys), float("-inf"))
        )
        top, items = tf.math.top_k(scores, k=k)
        return tf.where(top > float("-inf"), items, -1)

    def _cascade_scores(self, users, events):
        """[B, items] the blend's term, w * log(num_items * c + FLOOR), or None without it."""
        if self.cascade is None:
            return None
        scores = self.cascade.scores(users, *events)
        floor = blend.FLOOR
        return self.cascade_weight * tf.math.log(self.num_items * tf.maximum(scores, 0.0) + floor)

    def _candidates(self, users, parts, events, blended=None, whole=None):
        """[B, W] each row's candidates: the MF stage's top C, with graph
        signals the top C of the rows' summed reach and cross reach, with a
        cascade blend the top C by cascade score (`blended`), and the
        touched items; no item twice in a row."""
        batch = tf.shape(users)[0]
        excluded, touched = self._excluded_and_touched(users, events)
        query = parts[0] * tf.cast(
            self.scorer.head.dense.kernel[: parts[0].shape[-1], 0], parts[0].dtype
        )
        scores = tf.matmul(tf.cast(query, tf.float32), self.item_vectors, transpose_b=True)
        masked = tf.concat([excluded, touched], axis=0)
        lists = [self._masked_top(scores, masked, self.retrieval_candidates)]
        if self.signals is not None:
            if whole is None:
                whole = self.signals.whole(users, *events)
            reach = tf.add_n(whole["reach"] + whole["cross"])
            retrieved = lists[0]
            rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(retrieved))
            more = tf.boolean_mask(
                self._keys(rows, retrieved), tf.reshape(retrieved >= 0, tf.shape(rows))
            )
            # Only items the graph reaches: a zero reach is no neighbour.
            reach = tf.where(reach > 0, reach, float("-inf"))
            lists.append(
                self._masked_top(
                    reach, tf.concat([masked, more], axis=0), self.retrieval_candidates
                )
            )
        if blended is not None:
            listed = tf.concat(lists, axis=1)
            rows = tf.broadcast_to(tf.range(batch)[:, None], tf.shape(listed))
            more = tf.boolean_mask(
                self._keys(rows, listed), tf.reshape(listed >= 0, tf.shape(rows))
            )
            lists.append(
                self._masked_top(
                    blended, tf.concat([masked, more], axis=0), self.retrieval_candidates
                )
            )
        lists.append(
            tf.RaggedTensor.from_value_rowids(
                tf.cast(touched % self.num_items, tf.int32),
                tf.cast(touched // self.num_items, tf.int64),
                nrows=tf.cast(batch, tf.int64),
            ).to_tensor(default_value=-1)
        )
        return tf.concat(lists, axis=1)

    def candidate_items(self, users: tf.Tensor) -> tf.Tensor:
        """[B, W] the candidates `recommend` re-ranks for known users (indices, -1 padding).

        Columns: the MF stage's top C, then (with graph signals) the graph's
        top C, then the touched items; for measuring the set's recall
        (benchmarks/candidate_recall.py). Not a signature.
        """
        users = tf.convert_to_tensor(users, tf.int32)
        events = self._no_events()
        return self._candidates(
            users,
            models.user_parts(self.scorer, users),
            events,
            self._cascade_scores(users, events),
        )

    def _rank(self, users, parts, candidates, events, blended=None, whole=None) -> tf.Tensor:
        """[B, W] logits of each row's candidates (-inf where a candidate is -1), plus
        the blend's term `blended` [B, items] when given; the candidates' graph
        signals read from `whole` (`SignalTables.whole`) when given."""
        signals = None
        if self.signals is not None:
            signals = self.signals.grid(users, candidates, *events, whole=whole)
        logits = models.score_rows(
            self.scorer,
            parts,
            tf.maximum(candidates, 0),
            self._row_gates(users, candidates, events),
            signals=signals,
        )
        if blended is not None:
            logits += tf.gather(blended, tf.maximum(candidates, 0), batch_dims=1)
        return tf.where(candidates >= 0, logits, float("-inf"))

    def _recommend(self, users, events, personal, *, with_events: bool = True) -> dict:
        # Without events (`recommend`) every row keeps the trained vectors;
        # an unknown user's row gets the popular items.
        if with_events:
            parts = self._parts(users, events)
        else:
            parts = models.user_parts(self.scorer, tf.maximum(users, 0))
        blended = self._cascade_scores(users, events)
        # The graphs are walked once per request: the catalog's reach finds
        # candidates, and the candidates' signals are read from it.
        whole = self.signals.whole(users, *events) if self.signals is not None else None
        candidates = self._candidates(users, parts, events, blended, whole)
        logits = self._rank(users, parts, candidates, events, blended, whole)
        k = tf.minimum(self.top_k, tf.shape(candidates)[1])
        top_logits, position = tf.math.top_k(logits, k=k)
        items = tf.maximum(tf.gather(candidates, position, batch_dims=1), 0)
        batch = tf.shape(users)[0]
        popular, popular_scores = self._popular(batch, self.top_k)
        items = tf.where(personal[:, None], items, popular)
        scores = tf.where(personal[:, None], top_logits, popular_scores)
        # Slots left without a candidate (all excluded or padding) get the
        # sentinel, never an excluded item.
        empty = scores == float("-inf")
        ids = tf.where(empty, EMPTY_ITEM_ID, tf.gather(self.item_ids, items))
        return {"item_ids": ids, "scores": scores}

    def _no_events(self):
        return (tf.zeros([0], tf.int32),) * 3

    # -- the signatures ------------------------------------------------------

    def _logits(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        if self.cascade is not None or self.signals is not None:
            # One row (one cascade, one set of graph products) per distinct
            # user of the pairs: a request's memory grows with its users.
            distinct, row = tf.unique(users)
            fits = tf.debugging.assert_less_equal(
                tf.size(distinct),
                self.max_request_users,
                message=f"{schema.USER_ID}: at most {self.max_request_users} distinct users "
                "per request with graph signals; split the batch",
            )
            with tf.control_dependencies([fits]):
                distinct = tf.identity(distinct)
            events = self._no_events()
            blended = self._cascade_scores(distinct, events)
            parts = models.user_parts(self.scorer, distinct)
            # Each distinct user's items as one row of candidates.
            order = tf.argsort(row, stable=True)
            candidates = tf.RaggedTensor.from_value_rowids(
                tf.gather(items, order),
                tf.cast(tf.gather(row, order), tf.int64),
                nrows=tf.cast(tf.size(distinct), tf.int64),
            )
            logits = self._rank(
                distinct, parts, candidates.to_tensor(default_value=-1), events, blended
            )
            flat = tf.RaggedTensor.from_tensor(logits, lengths=candidates.row_lengths()).values
            return tf.scatter_nd(order[:, None], flat, tf.shape(items))
        gate = self._gates(users, items)
        return self.scorer(
            {schema.USER: users, schema.ITEM: items, schema.GATE: gate}, training=False
        )[schema.LOGIT]

    @tf.function(input_signature=[_IDS, _ITEM_IDS])
    def score(self, user_id, item_id):
        users, items = self._pairs(user_id, item_id)
        logits = self._logits(tf.maximum(users, 0), tf.maximum(items, 0))
        return self._pair_outputs(logits, users, items)

    def _retrieve(self, users: tf.Tensor):
        """The top C items by MF score; unknown users get the popular items."""
        known = users >= 0
        scores = tf.matmul(
            self.query_tower(tf.maximum(users, 0)), self.item_vectors, transpose_b=True
        )
        mf_scores, candidates = tf.math.top_k(scores, k=self.retrieval_candidates)
        popular, popular_scores = self._popular(tf.shape(users)[0], self.retrieval_candidates)
        candidates = tf.where(known[:, None], candidates, popular)
        mf_scores = tf.where(known[:, None], mf_scores, popular_scores)
        return candidates, mf_scores

    @tf.function(input_signature=[_IDS])
    def retrieve(self, user_id):
        user_id = _vector(user_id, schema.USER_ID, self.max_request_users)
        candidates, scores = self._retrieve(self._users(user_id))
        return {"item_ids": tf.gather(self.item_ids, candidates), "scores": scores}

    @tf.function(input_signature=[_IDS])
    def recommend(self, user_id):
        user_id = _vector(user_id, schema.USER_ID, self.max_request_users)
        users = self._users(user_id)
        return self._recommend(users, self._no_events(), users >= 0, with_events=False)

    @tf.function(input_signature=list(HISTORY_SPEC))
    def recommend_from_history(self, user_id, history_item_id, history_behavior, history_row):
        users, events, unknown = self._events(
            user_id, history_item_id, history_behavior, history_row
        )
        batch = tf.shape(users)[0]
        has_events = tf.math.unsorted_segment_sum(tf.ones_like(events[0]), events[0], batch) > 0
        result = self._recommend(users, events, (users >= 0) | has_events)
        return {**result, "unknown_events": unknown}

    def signatures(self) -> dict:
        """The SavedModel signatures by name."""
        return {
            schema.SERVING_DEFAULT: self.score.get_concrete_function(),
            schema.RECOMMEND: self.recommend.get_concrete_function(),
            schema.RETRIEVE: self.retrieve.get_concrete_function(),
            schema.RECOMMEND_FROM_HISTORY: self.recommend_from_history.get_concrete_function(),
        }


def from_training(
    scorer: tf_keras.Model,
    split: splits_lib.Split,
    *,
    user_tokens: np.ndarray,
    item_tokens: np.ndarray,
    top_k: int,
    retrieval_candidates: int,
    exclude_seen: bool,
    signals=None,
    fold_in: tuple[float, float, float] = FOLD_IN,
    cascade=None,
    cascade_weight: float = 0.0,
    max_request_users: int = MAX_REQUEST_USERS,
    max_request_pairs: int = MAX_REQUEST_PAIRS,
) -> ServingModule:
    """A ServingModule whose fallbacks, purchases and graphs come from the training split.

    Args:
      scorer: the trained scorer.
      split: the Split it was trained on.
      user_tokens: raw user ids by index.
      item_tokens: raw item ids by index.
      top_k: K of `recommend`.
      retrieval_candidates: C of the retrieval stage.
      exclude_seen: leave training purchases out of `recommend`.
      signals: the run's `graph_signals.GraphSignals` (built here when the
        scorer takes signals and none is given).
      fold_in: (alpha, l2, supportive_weight) of a new user's MF factor.
      cascade: a `--cascade_blend` run's `export.cascade.Propagation`.
      cascade_weight: the blend's weight (0: no blend).
      max_request_users: most users per `recommend` / `retrieve` request.
      max_request_pairs: most pairs per `serving_default` request.
    """
    index = training_index.TrainingIndex.from_split(split)
    extra = {"pair_keys": index.keys, "pair_bits": index.bits}
    if scorer.num_signals:
        if signals is None:
            signals = graph_signals.GraphSignals(split)
        extra["signals"] = signals_lib.SignalTables(signals)
    return ServingModule(
        scorer,
        user_tokens=user_tokens,
        item_tokens=item_tokens,
        **catalog_tables(split),
        top_k=top_k,
        retrieval_candidates=min(retrieval_candidates, split.num_items),
        exclude_seen=exclude_seen,
        fold_in=fold_in,
        cascade=cascade,
        cascade_weight=cascade_weight,
        max_request_users=max_request_users,
        max_request_pairs=max_request_pairs,
        **extra,
    )
