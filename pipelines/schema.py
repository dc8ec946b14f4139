"""Names and specs shared by the training pipelines, the model and serving.

Feature names live here once, so the readers, the model's inputs and the
serving signatures cannot drift apart.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

# Model inputs (indices after vocabulary lookup).
USER = "user"
ITEM = "item"
GATE = "gate"
# [batch, num_signals] graph signals of a pair; [B, C, num_signals] on a grid.
SIGNALS = "signals"

# Training example fields produced by the negatives sampler.
POS_ITEM = "pos_item"
POS_GATE = "pos_gate"
POS_WEIGHT = "pos_weight"
NEG_ITEM = "neg_item"
NEG_GATE = "neg_gate"
# 1 / the user's positives in the epoch (weighs the whole-data term).
# The softmax loss's per-batch candidate set (see negatives.SharedNegatives).
CANDIDATES = "candidates"
CANDIDATE_LOG_Q = "candidate_log_q"
CANDIDATE_BITS = "candidate_bits"

# Model outputs.
LOGIT = "logit"
SCORE = "score"
PROBABILITY = "probability"
BRANCH_LOGITS = "branch_logits"

# The SavedModel's signature names (serving, warm-up and export evaluation).
SERVING_DEFAULT = "serving_default"
RECOMMEND = "recommend"
RETRIEVE = "retrieve"
SIGNATURES = (SERVING_DEFAULT, RECOMMEND, RETRIEVE)
# Recommendations from a request's own events (exports that propagate over
# the behavior graphs: `--model=cascade`).
RECOMMEND_FROM_HISTORY = "recommend_from_history"

# Raw string ids at the serving boundary.
USER_ID = "user_id"
ITEM_ID = "item_id"
# A request's events: item, behavior, and the row of `user_id` each belongs to.
HISTORY_ITEM_ID = "history_item_id"
HISTORY_BEHAVIOR = "history_behavior"
HISTORY_ROW = "history_row"

# Split codes of interaction records.
SPLIT_NONE = -1
SPLIT_TRAIN = 0
SPLIT_VALID = 1
SPLIT_TEST = 2
SPLIT_NAMES = {
    "train": SPLIT_TRAIN,
    "valid": SPLIT_VALID,
    "validation": SPLIT_VALID,
    "test": SPLIT_TEST,
}

# Behavior names of the Taobao UserBehavior log.
USERBEHAVIOR_BEHAVIORS = ("pv", "buy", "cart", "fav")


@dataclasses.dataclass(frozen=True)
class BehaviorSchema:
    """The target behavior and the supportive ones, in branch order.

    Branch 0 is always the target; branch t >= 1 is `supportive[t - 1]`. A
    gate mask has one entry per branch.
    """

    target: str
    supportive: tuple[str, ...]

    @property
    def behaviors(self) -> tuple[str, ...]:
        return (self.target,) + tuple(self.supportive)

    @property
    def num_behaviors(self) -> int:
        return 1 + len(self.supportive)

    def index(self, name: str) -> int:
        return self.behaviors.index(name)


def model_input_spec(num_behaviors: int, num_signals: int = 0) -> dict[str, tf.TensorSpec]:
    """The scoring model's inputs: user and item indices, the gate mask, and
    with `num_signals` the pairs' graph signals."""
    spec = {
        USER: tf.TensorSpec([None], tf.int32, name=USER),
        ITEM: tf.TensorSpec([None], tf.int32, name=ITEM),
        GATE: tf.TensorSpec([None, num_behaviors], tf.float32, name=GATE),
    }
    if num_signals:
        spec[SIGNALS] = tf.TensorSpec([None, num_signals], tf.float32, name=SIGNALS)
    return spec


def signal_names(behaviors: tuple[str, ...]) -> tuple[str, ...]:
    """The graph signals' names in column order (`pipelines.graph_signals`):
    `touched_<b>` per supportive behavior, `reach_<b>` per behavior, then
    `cross_<b>` per supportive behavior."""
    return (
        tuple(f"touched_{b}" for b in behaviors[1:])
        + tuple(f"reach_{b}" for b in behaviors)
        + tuple(f"cross_{b}" for b in behaviors[1:])
    )
