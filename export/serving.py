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

Every input must be a rank-1 string tensor, `user_id` and `item_id` of equal
length, at most `max_request_users` users for `recommend` / `retrieve` and
`max_request_pairs` pairs for `serving_default` (memory grows with the
batch); anything else is an InvalidArgument error of that request alone, never
an abort of the process. When `exclude_seen` leaves fewer than K candidates,
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

from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import splits as splits_lib
from mmrec_tf.pipelines import training_index

UNKNOWN_LOGIT = -30.0
# The item id of `recommend`'s empty slots (fewer candidates than K).
EMPTY_ITEM_ID = ""
MAX_REQUEST_USERS = config_lib.ExportConfig.max_request_users
MAX_REQUEST_PAIRS = config_lib.ExportConfig.max_request_pairs

# Signature inputs of unknown rank: the rank is checked when the request runs,
# so a scalar or a matrix is an InvalidArgument error, not a kernel's abort.
_IDS = tf.TensorSpec(None, tf.string, name=schema.USER_ID)
_ITEM_IDS = tf.TensorSpec(None, tf.string, name=schema.ITEM_ID)


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


def _vocabulary_asset(tokens: np.ndarray, folder: str, name: str) -> tf.saved_model.Asset:
    """The tokens written one per line (line number = index) as a SavedModel asset."""
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
    return tf.saved_model.Asset(path)


def _lookup_table(asset: tf.saved_model.Asset) -> tf.lookup.StaticHashTable:
    """Raw id -> index (-1 when unknown), read from a vocabulary asset."""
    initializer = tf.lookup.TextFileInitializer(
        asset,
        key_dtype=tf.string,
        key_index=tf.lookup.TextFileIndex.WHOLE_LINE,
        value_dtype=tf.int64,
        value_index=tf.lookup.TextFileIndex.LINE_NUMBER,
    )
    return tf.lookup.StaticHashTable(initializer, -1)


def _table(values, dtype, name: str) -> tf.Variable:
    """A fixed table of the export, saved as a variable (not a graph constant)."""
    return tf.Variable(np.asarray(values), dtype=dtype, trainable=False, name=name)


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
    ):
        super().__init__()
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
        self.user_vocabulary = _vocabulary_asset(user_tokens, folder, "users")
        self.item_vocabulary = _vocabulary_asset(item_tokens, folder, "items")
        self.user_table = _lookup_table(self.user_vocabulary)
        self.item_table = _lookup_table(self.item_vocabulary)
        self.item_ids = _table([str(t) for t in item_tokens], tf.string, "item_ids")
        share = np.asarray(popularity, np.float64) / (float(np.max(popularity, initial=0)) + 1.0)
        self.popularity = _table(share, tf.float32, "popularity")
        order = np.argsort(-share, kind="stable")[:retrieval_candidates]
        self.popular_items = _table(order, tf.int32, "popular_items")
        self.seen_row_splits = _table(seen_row_splits, tf.int64, "seen_row_splits")
        self.seen_items = _table(seen_items, tf.int32, "seen_items")

    def _users(self, user_id: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.user_table.lookup(user_id), tf.int32)

    def _popular(self, batch: tf.Tensor, k: int):
        items = tf.tile(self.popular_items[None, :k], [batch, 1])
        return items, tf.gather(self.popularity, items)

    def _rows(self, values: tf.Variable, row_splits: tf.Variable, users: tf.Tensor):
        """(row in the batch, item) of each listed item of the known users, flat."""
        lists = tf.RaggedTensor.from_row_splits(values, row_splits)
        lists = tf.ragged.boolean_mask(tf.gather(lists, tf.maximum(users, 0)), users >= 0)
        return tf.cast(lists.value_rowids(), tf.int32), lists.flat_values

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
    """The training split's `popularity`, `seen_row_splits` and `seen_items`
    (each user's target items), as `CatalogModule` takes them."""
    popularity = np.bincount(
        split.train_items[split.train_branches == 0], minlength=split.num_items
    )
    keys = splits_lib.train_target_keys(split)
    return {
        "popularity": popularity,
        "seen_row_splits": training_index.row_offsets(keys, split.num_users, split.num_items),
        "seen_items": (keys % split.num_items).astype(np.int32),
    }


class ServingModule(CatalogModule):
    """The exported model: scorer, vocabularies, retrieval index, fallbacks."""

    def __init__(
        self,
        scorer: tf_keras.Model,
        *,
        user_tokens: np.ndarray,
        item_tokens: np.ndarray,
        num_behaviors: int,
        popularity: np.ndarray,
        seen_row_splits: np.ndarray,
        seen_items: np.ndarray,
        top_k: int = 10,
        retrieval_candidates: int = 500,
        exclude_seen: bool = True,
        pair_keys: np.ndarray | None = None,
        pair_bits: np.ndarray | None = None,
        max_request_users: int = MAX_REQUEST_USERS,
        max_request_pairs: int = MAX_REQUEST_PAIRS,
    ):
        """Builds the module.

        Args:
          scorer: a trained model from `models.build_model` with an MF part.
          user_tokens: [num_users] raw user ids by index.
          item_tokens: [num_items] raw item ids by index.
          num_behaviors: the gate width of the scorer's input.
          popularity: [num_items] training target counts.
          seen_row_splits: [num_users + 1] row splits of `seen_items`.
          seen_items: the users' training target items, user by user.
          top_k: K of `recommend`.
          retrieval_candidates: C, the candidates the retrieval stage passes on.
          exclude_seen: leave the user's training purchases out of `recommend`.
          pair_keys: sorted `user * num_items + item` keys of the training
            pairs (`TrainingIndex.keys`); needed by a scorer with behavior
            features.
          pair_bits: the behavior bitmask of each pair (`TrainingIndex.bits`).
          max_request_users: most users per `recommend` / `retrieve` request.
          max_request_pairs: most pairs per `serving_default` request.

        Raises:
          ValueError: if K exceeds C or the catalog, or C exceeds the catalog,
            or the scorer has behavior features and no pairs are given.
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
        )
        num_items = self.num_items
        self.scorer = scorer
        self.num_behaviors = num_behaviors
        self.query_tower, candidate_tower = models.retrieval_towers(scorer)
        # The retrieval index: every item's candidate vector (a brute-force
        # index, as TFRS's BruteForce keeps it), scored by one matmul.
        self.item_vectors = _table(
            candidate_tower(tf.range(num_items, dtype=tf.int32)).numpy(), tf.float32, "index"
        )
        self.behavior_features = scorer.behavior_bias is not None
        if self.behavior_features:
            if pair_keys is None or pair_bits is None:
                raise ValueError(
                    "the scorer has behavior features: pass the training pairs "
                    "(pair_keys, pair_bits) whose behaviors it scores."
                )
            self.pair_keys = _table(pair_keys, tf.int64, "pair_keys")
            self.pair_bits = _table(pair_bits.astype(np.int32), tf.int32, "pair_bits")
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

    def _gates(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """[n, num_behaviors] behavior flags of the training pairs (ones without features)."""
        if not self.behavior_features:
            return tf.ones([tf.shape(users)[0], self.num_behaviors])
        query = tf.cast(users, tf.int64) * self.num_items + tf.cast(items, tf.int64)
        last = tf.shape(self.pair_keys, out_type=tf.int64)[0] - 1
        position = tf.searchsorted(self.pair_keys, query)
        position = tf.minimum(tf.cast(position, tf.int64), tf.maximum(last, 0))
        found = tf.gather(self.pair_keys, position) == query
        bits = tf.where(found, tf.gather(self.pair_bits, position), 0)
        return models.unpack_bits(bits, self.num_behaviors)

    def _touched(self, users: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
        """[B, C + T] the candidates, then each user's supportive items (-1 pads).

        The MF stage never returns a touched item (its scores are masked), so
        the two lists do not overlap; T is the request's longest list.
        """
        touched = tf.RaggedTensor.from_row_splits(self.touched_items, self.touched_row_splits)
        extra = tf.gather(touched, tf.maximum(users, 0)).to_tensor(default_value=-1)
        extra = tf.where(users[:, None] >= 0, extra, -1)
        return tf.concat([candidates, extra], axis=1)

    def _logits(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        gate = self._gates(users, items)
        return self.scorer(
            {schema.USER: users, schema.ITEM: items, schema.GATE: gate}, training=False
        )[schema.LOGIT]

    @tf.function(input_signature=[_IDS, _ITEM_IDS])
    def score(self, user_id, item_id):
        users, items = self._pairs(user_id, item_id)
        logits = self._logits(tf.maximum(users, 0), tf.maximum(items, 0))
        return self._pair_outputs(logits, users, items)

    def _retrieve(self, users: tf.Tensor, masked=()):
        """The top C items by MF score, the (row, item) lists in `masked` left out.

        Args:
          users: [B] user indices (-1: unknown, who get the popular items).
          masked: (values, row_splits) per-user item lists never retrieved
            (a scatter of -inf into the [B, items] scores before the top-k).
        """
        known = users >= 0
        scores = tf.matmul(
            self.query_tower(tf.maximum(users, 0)), self.item_vectors, transpose_b=True
        )
        for values, row_splits in masked:
            rows, items = self._rows(values, row_splits, users)
            scores = tf.tensor_scatter_nd_update(
                scores, tf.stack([rows, items], axis=1), tf.fill(tf.shape(rows), float("-inf"))
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
        known = users >= 0
        masked = []
        if self.exclude_seen:
            masked.append((self.seen_items, self.seen_row_splits))
        if self.behavior_features:
            masked.append((self.touched_items, self.touched_row_splits))
        candidates, mf_scores = self._retrieve(users, masked)
        # A masked item fills a slot only when the catalog has too few others.
        candidates = tf.where(mf_scores > float("-inf"), candidates, -1)
        if self.behavior_features:
            candidates = self._touched(users, candidates)
        batch = tf.shape(users)[0]
        width = tf.shape(candidates)[1]
        flat_users = tf.repeat(tf.maximum(users, 0), width)
        flat_items = tf.maximum(tf.reshape(candidates, [-1]), 0)
        logits = tf.reshape(self._logits(flat_users, flat_items), [batch, width])
        logits = tf.where(candidates >= 0, logits, float("-inf"))
        candidates = tf.maximum(candidates, 0)
        top_logits, position = tf.math.top_k(logits, k=self.top_k)
        items = tf.gather(candidates, position, batch_dims=1)
        popular, popular_scores = self._popular(batch, self.top_k)
        items = tf.where(known[:, None], items, popular)
        scores = tf.where(known[:, None], top_logits, popular_scores)
        # Slots left without a candidate (all excluded or padding) get the
        # sentinel, never an excluded item.
        empty = scores == float("-inf")
        ids = tf.where(empty, EMPTY_ITEM_ID, tf.gather(self.item_ids, items))
        return {"item_ids": ids, "scores": scores}

    def signatures(self) -> dict:
        """The SavedModel signatures by name."""
        return {
            schema.SERVING_DEFAULT: self.score.get_concrete_function(),
            schema.RECOMMEND: self.recommend.get_concrete_function(),
            schema.RETRIEVE: self.retrieve.get_concrete_function(),
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
    max_request_users: int = MAX_REQUEST_USERS,
    max_request_pairs: int = MAX_REQUEST_PAIRS,
) -> ServingModule:
    """A ServingModule whose fallbacks and seen-items table come from the training split.

    Args:
      scorer: the trained scorer.
      split: the Split it was trained on.
      user_tokens: raw user ids by index.
      item_tokens: raw item ids by index.
      top_k: K of `recommend`.
      retrieval_candidates: C of the retrieval stage.
      exclude_seen: leave training purchases out of `recommend`.
      max_request_users: most users per `recommend` / `retrieve` request.
      max_request_pairs: most pairs per `serving_default` request.
    """
    pairs = {}
    if scorer.behavior_bias is not None:
        index = training_index.TrainingIndex.from_split(split)
        pairs = {"pair_keys": index.keys, "pair_bits": index.bits}
    return ServingModule(
        scorer,
        user_tokens=user_tokens,
        item_tokens=item_tokens,
        num_behaviors=split.behaviors.num_behaviors,
        **catalog_tables(split),
        top_k=top_k,
        retrieval_candidates=min(retrieval_candidates, split.num_items),
        exclude_seen=exclude_seen,
        max_request_users=max_request_users,
        max_request_pairs=max_request_pairs,
        **pairs,
    )
