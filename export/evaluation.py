"""Evaluates an exported SavedModel alone, through its serving signatures.

No Keras model is rebuilt: the SavedModel is loaded with
`tf.saved_model.load` and called with raw string ids, as TensorFlow Serving
would call it.

- Retrieval stage: `tfrs.metrics.FactorizedTopK` top-K accuracy over the whole
  catalog, fed by the `retrieve` signature (id-based: is the held-out item
  among the top K retrieved?).
- Two-stage `recommend`: HR@K and NDCG@K of the held-out item's position in
  the returned list (full-ranking protocol: training purchases are left out
  when the export excludes seen items), for K up to the export's top K.
- Discovery through `recommend` (with `touched_keys`): the cases whose item
  the user touched in training are dropped, and the touched items are taken
  out of each returned list before the held-out item's position is read.
  Where touched items filled some of the K slots the list holds fewer than K
  untouched items, so this is a lower bound on the discovery protocol's HR@K
  (the result says for how many cases that happened).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from mmrec_tf import evaluate
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index


class SignatureTopK(tfrs.layers.factorized_top_k.TopK):
    """A TFRS top-K layer backed by an exported `retrieve` signature.

    Queries are user indices (`query_tensor`: [batch, 1] int64, the shape
    TFRS metrics pass around, exact for any catalog); the layer maps them to raw ids, calls the signature and
    maps the returned raw item ids back to indices.
    """

    def __init__(self, retrieve, *, user_tokens: np.ndarray, item_tokens: np.ndarray, k: int):
        super().__init__(k=k)
        self._retrieve = retrieve
        self._user_ids = tf.constant([str(t) for t in user_tokens])
        self._item_index = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([str(t) for t in item_tokens]),
                tf.range(len(item_tokens), dtype=tf.int32),
            ),
            -1,
        )

    def index(self, candidates, identifiers=None):
        raise NotImplementedError("the exported index is fixed; it cannot be re-indexed")

    def index_from_dataset(self, candidates):
        raise NotImplementedError("the exported index is fixed; it cannot be re-indexed")

    def is_exact(self) -> bool:
        return True

    def call(self, queries, k=None):
        k = k or self._k
        users = tf.gather(self._user_ids, tf.cast(queries[:, 0], tf.int64))
        out = self._retrieve(**{schema.USER_ID: users})
        return out["scores"][:, :k], self._item_index.lookup(out["item_ids"][:, :k])


def query_tensor(users: np.ndarray) -> tf.Tensor:
    """User indices as the [batch, 1] int64 queries of `SignatureTopK` (floats
    would round indices above 2**24)."""
    return tf.constant(np.asarray(users, np.int64)[:, None])


def evaluate_signatures(
    signatures,
    *,
    users: np.ndarray,
    items: np.ndarray,
    user_tokens: np.ndarray,
    item_tokens: np.ndarray,
    retrieval_ks=(10, 50, 100),
    batch_size: int = 1024,
    touched_keys: np.ndarray | None = None,
) -> dict:
    """Retrieval and two-stage metrics through the `retrieve` and `recommend` signatures.

    Args:
      signatures: name -> callable taking `user_id=` (a loaded SavedModel's
        `.signatures`, or the in-memory module's functions).
      users: [cases] user indices of the held-out cases.
      items: [cases] held-out item indices.
      user_tokens: raw user ids by index (the training vocabulary).
      item_tokens: raw item ids by index.
      retrieval_ks: cut-offs of the retrieval metric (capped at the
        export's number of retrieval candidates).
      batch_size: users per signature call.
      touched_keys: sorted `user * num_items + item` keys of every training
        pair (any behavior); when given, "recommend_discovery" is reported.

    Returns:
      {"retrieval": {"top_K_categorical_accuracy": ...}, "recommend":
       {"HR@K", "NDCG@K", ..., "cases"}, "top_k", "retrieval_candidates"}.
    """
    retrieve = signatures[schema.RETRIEVE]
    recommend = signatures[schema.RECOMMEND]
    probe = retrieve(**{schema.USER_ID: tf.constant([str(user_tokens[0])])})
    candidates = int(probe["item_ids"].shape[1])
    top_k = int(
        recommend(**{schema.USER_ID: tf.constant([str(user_tokens[0])])})["item_ids"].shape[1]
    )
    ks = tuple(k for k in retrieval_ks if k <= candidates)
    metric = tfrs.metrics.FactorizedTopK(
        candidates=SignatureTopK(
            retrieve, user_tokens=user_tokens, item_tokens=item_tokens, k=max(ks)
        ),
        ks=ks,
    )
    token_to_index = {str(t): k for k, t in enumerate(item_tokens)}
    ranks = np.full(len(users), top_k, np.int64)  # top_k means "not returned"
    found = np.full(len(users), top_k, np.int64)
    crowded = np.zeros(len(users), bool)
    num_items = len(item_tokens)

    def touched(user, indices):
        keys = np.int64(user) * num_items + np.asarray(indices, np.int64)
        return training_index.contains(touched_keys, keys)

    for start in range(0, len(users), batch_size):
        u = users[start : start + batch_size]
        i = items[start : start + batch_size]
        queries = query_tensor(u)
        metric.update_state(
            queries, tf.zeros_like(queries), true_candidate_ids=tf.constant(i.astype(np.int32))
        )
        returned = recommend(**{schema.USER_ID: tf.constant([str(t) for t in user_tokens[u]])})
        for row, (ids, held_out) in enumerate(zip(returned["item_ids"].numpy(), i)):
            indices = [token_to_index.get(t.decode(), -1) for t in ids]
            positions = [p for p, t in enumerate(indices) if t == held_out]
            if positions:
                ranks[start + row] = positions[0]
            if touched_keys is not None:
                valid = np.asarray([t >= 0 for t in indices])
                flags = np.zeros(len(indices), bool)
                flags[valid] = touched(u[row], np.asarray(indices)[valid])
                crowded[start + row] = bool(flags.any())
                kept = [t for t, f in zip(indices, flags) if not f]
                if held_out in kept:
                    found[start + row] = kept.index(held_out)
    result = {
        "retrieval": {
            f"top_{k}_categorical_accuracy": float(v) for k, v in zip(ks, metric.result())
        },
        "recommend": evaluate.metrics_from_ranks(
            ranks, ks=tuple(k for k in (1, 5, 10, 20, 50) if k <= top_k)
        ),
        "top_k": top_k,
        "retrieval_candidates": candidates,
    }
    result["retrieval"]["cases"] = int(len(users))
    if touched_keys is not None:
        keys = users.astype(np.int64) * num_items + items.astype(np.int64)
        fresh = ~training_index.contains(touched_keys, keys)
        discovery = evaluate.metrics_from_ranks(
            found[fresh], ks=tuple(k for k in (1, 5, 10, 20, 50) if k <= top_k)
        )
        discovery["protocol"] = (
            "discovery through recommend: cases whose item the user touched dropped, touched "
            "items taken out of the returned list (a lower bound where they filled slots)"
        )
        discovery["cases_with_touched_items_returned"] = int(crowded[fresh].sum())
        result["recommend_discovery"] = discovery
    return result
