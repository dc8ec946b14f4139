"""The multi-feedback model, its comparison models, and the ranking trainer.

`Scorer` (built by `build_model`) is the Keras functional *scorer* that owns
its parts from `layers.py`: inputs `user`, `item` (indices) and `gate` (the
per-behavior mask, used only by the backward pass), outputs `logit`, `score`
and, with `gating="gradient_aux"`, `branch_logits`. `Ranker` wraps a scorer with the
paper's pairwise training (or a pointwise log loss).

Models (`ModelConfig.model`):
  mmf: MF part + one M-MLP branch per behavior + fusion + head (the paper).
  ncf: NeuMF: MF part + the target branch alone (no supportive branches).
  gmf: the MF part alone.
  mlp: the target MLP branch alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import layers
from mmrec_tf import losses
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

BEHAVIOR_BIAS = "behavior_bias"
# Added to the logits of masked candidates (as TFRS's accidental-hit removal).
_MIN_LOGIT = float(np.finfo(np.float32).min) / 100.0

_PARTS = {
    "mmf": (True, "all"),
    "ncf": (True, "target"),
    "gmf": (True, "none"),
    "mlp": (False, "target"),
}


def build_model(
    config: config_lib.ModelConfig,
    *,
    num_users: int,
    num_items: int,
    behaviors: schema.BehaviorSchema,
) -> Scorer:
    """The scorer for `config.model` (see `Scorer`)."""
    return Scorer(config, num_users=num_users, num_items=num_items, behaviors=behaviors)


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class Scorer(tf_keras.Model):
    """The multi-feedback scorer: a functional graph that owns its parts.

    Inputs `user`, `item` (indices) and `gate` (the per-behavior mask, used
    only by the backward pass); outputs `logit`, `score` and, with
    `gating="gradient_aux"`, `branch_logits`. Its parts are attributes:
    `mf` (or None), `towers` in branch order (`branch_names` names them),
    `fusion` (or None), `head`, `behavior_bias` (or None). Its config is the
    ModelConfig and the table sizes, so `from_config(get_config())` rebuilds
    the same parts, tables shared as `shared_embeddings` declares.

    Args:
      config: the model configuration (a ModelConfig or its dict).
      num_users: rows of the user tables.
      num_items: rows of the item tables.
      behaviors: the behavior schema (or its dict); branch t serves
        `behaviors.behaviors[t]`.

    Raises:
      ValueError: for an unknown model name.
    """

    def __init__(self, config, *, num_users: int, num_items: int, behaviors, **kwargs):
        if isinstance(config, dict):
            config = config_lib.ModelConfig(**config)
        if isinstance(behaviors, dict):
            behaviors = schema.BehaviorSchema(
                target=behaviors["target"], supportive=tuple(behaviors["supportive"])
            )
        if config.model not in _PARTS:
            raise ValueError(f"model={config.model!r} is unknown: use one of {sorted(_PARTS)}.")
        use_mf, branch_set = _PARTS[config.model]
        names = {"all": behaviors.behaviors, "target": behaviors.behaviors[:1], "none": ()}[
            branch_set
        ]
        inputs = {
            name: tf_keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name=name)
            for name, spec in schema.model_input_spec(behaviors.num_behaviors).items()
        }
        user, item, gate = inputs[schema.USER], inputs[schema.ITEM], inputs[schema.GATE]
        common = dict(
            num_users=num_users,
            num_items=num_items,
            init_stddev=config.init_stddev,
            l2=config.l2,
            history_length=config.history_length,
        )

        parts, mf, fusion, bias_layer, branch_scores = [], None, None, None, None
        if use_mf:
            mf = layers.MatrixFactorization(
                embedding_dim=config.mf_dim, name="mf", exclude_self=True, **common
            )
            parts.append(mf((user, item)))
        branch_outputs, towers = [], []
        for t, name in enumerate(names):
            tower = layers.FeedbackTower(
                embedding_dim=config.mlp_dim,
                num_layers=config.mlp_layers,
                name=f"tower_{name}",
                exclude_self=t == 0,
                **common,
            )
            if config.shared_embeddings and t > 0:
                # One pair of tables for every branch: the first tower's.
                tower.user_embedding = towers[0].user_embedding
                tower.item_embedding = towers[0].item_embedding
            towers.append(tower)
            x = tower((user, item))
            if t > 0 and config.gating != "none":
                x = layers.GradientGate(name=f"gate_{name}")((x, gate[:, t]))
            branch_outputs.append(x)
        if len(branch_outputs) > 1:
            fusion = layers.Fusion(
                config.fusion_dim or config.mlp_dim, init_stddev=config.init_stddev, name="fusion"
            )
            parts.append(fusion(branch_outputs))
        elif branch_outputs:
            parts.append(branch_outputs[0])
        # The head and the losses stay in float32 under a mixed-precision policy.
        head = layers.ScoreHead(init_stddev=config.init_stddev, name="head", dtype="float32")
        logit = head(parts)
        if config.behavior_features:
            require_supportive(behaviors)
            bias_layer = layers.BehaviorBias(name=BEHAVIOR_BIAS, dtype="float32")
            logit = tf_keras.layers.Add(name="logit", dtype="float32")(
                [logit, bias_layer(gate[:, 1:])]
            )
        outputs = {
            schema.LOGIT: logit,
            schema.SCORE: tf_keras.layers.Activation("sigmoid", name="score", dtype="float32")(
                logit
            ),
        }
        if config.gating == "gradient_aux" and len(branch_outputs) > 1:
            branch_scores = layers.BranchScores(
                len(branch_outputs) - 1,
                init_stddev=config.init_stddev,
                name="branch_scores",
                dtype="float32",
            )
            outputs[schema.BRANCH_LOGITS] = branch_scores(branch_outputs[1:])
        kwargs.setdefault("name", config.model)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.model_config = config
        self.num_users, self.num_items = num_users, num_items
        self.behaviors = behaviors
        self.branch_names = tuple(names)
        self.mf = mf
        self.towers = towers
        self.fusion = fusion
        self.head = head
        self.behavior_bias = bias_layer
        self.branch_scores = branch_scores

    def get_config(self):
        return {
            "config": dataclasses.asdict(self.model_config),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "behaviors": {
                "target": self.behaviors.target,
                "supportive": list(self.behaviors.supportive),
            },
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def require_supportive(behaviors: schema.BehaviorSchema) -> None:
    """Behavior features need supportive behaviors to look up."""
    if behaviors.num_behaviors < 2:
        raise ValueError(
            "behavior_features needs supportive behaviors: the data has only "
            f"{behaviors.target!r}; drop --behavior_features or keep a supportive behavior."
        )


def set_histories(scorer: Scorer, histories: dict, *, target: str) -> None:
    """Assigns each part its training history (see `pipelines.histories`).

    Args:
      scorer: a model from `build_model` with `history_length > 0`.
      histories: behavior name -> [num_users, history_length] item indices
        (-1 pads).
      target: the target behavior, whose history the MF part takes.
    """
    if scorer.mf is not None and scorer.mf.history_length:
        scorer.mf.set_history(histories[target])
    for name, tower in zip(scorer.branch_names, scorer.towers):
        if tower.history_length:
            tower.set_history(histories[name])


def parts(scorer: Scorer):
    """(MF layer or None, towers in branch order, fusion or None, head) of a scorer."""
    return scorer.mf, list(scorer.towers), scorer.fusion, scorer.head


def behavior_bias(scorer: Scorer):
    """The scorer's `BehaviorBias` layer, or None without behavior features."""
    return scorer.behavior_bias


def behavior_lift(index) -> np.ndarray:
    """[S] log-odds of a buy given each supportive behavior over given none.

    Over the training data (`pipelines.training_index.TrainingIndex`): for behavior
    s, logit(P(buy | the user had s with the item)) - logit(P(buy | the user
    had no supportive behavior with it)), the second over every other cell of
    the user x item matrix; add-one smoothed.
    """
    bought = (index.bits & 1).astype(bool)
    supportive = index.bits >> 1
    lifts = []
    cells = float(index.num_users) * index.num_items
    touched = supportive != 0
    p0 = (bought[~touched].sum() + 1.0) / (cells - touched.sum() + 2.0)
    for s in range(index.num_behaviors - 1):
        has = (supportive >> s) & 1 == 1
        p1 = (bought[has].sum() + 1.0) / (has.sum() + 2.0)
        lifts.append(np.log(p1 / (1 - p1)) - np.log(p0 / (1 - p0)))
    return np.asarray(lifts, np.float32)


def score_grid(
    scorer: Scorer,
    users: tf.Tensor,
    items: tf.Tensor,
    gates: tf.Tensor | None = None,
    *,
    training: bool = False,
    return_branches: bool = False,
):
    """Logits of every (user, item) pair of two lists, as the scorer computes them.

    Per-user and per-item work (embeddings, history means, the halves of
    each branch's first layer) is done once, not once per pair, so a full
    catalog is scored for many users at a time (see `FeedbackTower.grid`).

    Args:
      scorer: a model from `build_model`.
      users: [U] user indices.
      items: [I] item indices.
      gates: [U, I, num_behaviors] training gate masks of the pairs; needed
        by a scorer with behavior features, and in training by the gradient
        gates of the supportive branches.
      training: apply the supportive branches' gradient gates (a branch
        learns only from the pairs that have its behavior), as the pairwise
        scorer does in training.
      return_branches: also return the branches' [U, I, d] outputs (before
        their gates), in branch order.

    Returns:
      [U, I] logits. With user histories, a pair whose item is in the user's
      target history keeps it in the history mean (pairwise scoring leaves
      it out); full ranking never ranks those items.
    """
    mf, towers, fusion, head = parts(scorer)
    # The head is linear: its MF rows make the MF part a [U, d] x [d, I]
    # matrix product (no [U, I, d] tensor); the rest goes through its other rows.
    kernel = tf.cast(head.dense.kernel[:, 0], tf.float32)
    logits = tf.cast(head.dense.bias[0], tf.float32)
    rows = 0
    if mf is not None:
        logits += tf.cast(factorized_grid(scorer, users, items), tf.float32)
        rows = mf.embedding_dim
    branches = [tower.grid(users, items) for tower in towers]
    raw = list(branches)
    gated = training and scorer_gating(scorer)
    if gated:
        if gates is None:
            raise ValueError("training on a grid needs the pairs' gates for the gradient gates.")
        branches = [branches[0]] + [
            layers.gate_gradient(x, gates[..., t]) for t, x in enumerate(branches) if t > 0
        ]
    rest = fusion(branches) if fusion is not None else (branches[0] if branches else None)
    if rest is not None:
        logits += tf.tensordot(tf.cast(rest, tf.float32), kernel[rows:], axes=1)
    if mf is None and rest is None:
        raise ValueError(f"model {scorer.name!r} has neither an MF part nor a branch.")
    bias = behavior_bias(scorer)
    if bias is not None:
        if gates is None:
            raise ValueError("this scorer has behavior features: pass the pairs' gates.")
        logits += bias(gates[..., 1:])
    return (logits, raw) if return_branches else logits


def scorer_gating(scorer: Scorer) -> bool:
    """Whether the scorer's supportive branches pass through gradient gates."""
    return any(isinstance(layer, layers.GradientGate) for layer in scorer.layers)


def grid_l2(scorer: Scorer, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """The L2 penalty of a grid's rows: each part's `l2` times the squared user
    and item vectors looked up, over the number of users (as the pairwise
    call's penalty is over its batch)."""
    mf, towers, _, _ = parts(scorer)
    total = tf.constant(0.0)
    for part in [mf, *towers]:
        if part is None or not part.l2:
            continue
        squares = tf.reduce_sum(tf.square(part.user_vector(users))) + tf.reduce_sum(
            tf.square(part.item_embedding(items))
        )
        total += part.l2 * tf.cast(squares, tf.float32)
    return total / tf.cast(tf.maximum(tf.shape(users)[0], 1), tf.float32)


def _query_vectors(mf, head, users: tf.Tensor) -> tf.Tensor:
    """[batch, mf_dim] p_u * w: the user's MF factors weighted by the head's MF rows."""
    return mf.user_vector(users) * tf.cast(
        head.dense.kernel[: mf.embedding_dim, 0], mf.compute_dtype
    )


def factorized_grid(scorer: Scorer, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """[U, I] the MF part of the logit, <p_u * w, q_i>, for every pair (the retrieval stage)."""
    mf, _, _, head = parts(scorer)
    v = _query_vectors(mf, head, users)
    return tf.matmul(v, mf.item_embedding(items), transpose_b=True)


def whole_data_term(scorer: Scorer, users: tf.Tensor) -> tf.Tensor:
    """[batch] sum over every catalog item of the squared MF part of the logit.

    The MF part of user u's logit for item i is <p_u * w, q_i> (w: the head's
    MF weights), so sum_i <p_u * w, q_i>^2 = v_u^T (Q^T Q) v_u with
    v_u = p_u * w: O(d^2) per user after the [d, d] Gramian of the item table,
    O(num_items d^2), instead of a score per item.

    Args:
      scorer: a model from `build_model` with an MF part.
      users: [batch] user indices.

    Raises:
      ValueError: for a scorer without an MF part.
    """
    mf, _, _, head = parts(scorer)
    if mf is None:
        raise ValueError(
            f"whole_data_weight needs an MF part, and model {scorer.name!r} has none: "
            "use mmf, ncf or gmf, or set --whole_data_weight=0."
        )
    v = _query_vectors(mf, head, users)
    table = mf.item_embedding.embeddings
    gram = tf.matmul(table, table, transpose_a=True)
    return tf.reduce_sum(tf.matmul(v, gram) * v, axis=-1)


def retrieval_towers(scorer: Scorer) -> tuple[tf_keras.Model, tf_keras.Model]:
    """Query and candidate towers of the factorized MF part of the score.

    The head weights the MF output by w (its first mf_dim kernel rows), so
    the MF contribution to the logit is <p_u * w, q_i>: the query tower maps
    a user to p_u * w, the candidate tower an item to q_i.

    Args:
      scorer: a model from `build_model` with an MF part.

    Returns:
      (query model: user [batch] -> [batch, mf_dim],
       candidate model: item [batch] -> [batch, mf_dim]).

    Raises:
      ValueError: if the scorer has no MF part (`model="mlp"`).
    """
    mf, head = scorer.mf, scorer.head
    if mf is None:
        raise ValueError(f"model {scorer.name!r} has no MF part to factorize for retrieval.")
    user = tf_keras.Input(shape=(), dtype=tf.int32, name=schema.USER)
    item = tf_keras.Input(shape=(), dtype=tf.int32, name=schema.ITEM)
    weights = head.dense.kernel[: mf.embedding_dim, 0]
    query = tf_keras.Model(user, mf.user_vector(user) * weights, name="query_tower")
    candidate = tf_keras.Model(item, mf.item_embedding(item), name="candidate_tower")
    return query, candidate


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class Ranker(tf_keras.Model):
    """Trains a scorer on (user, positive, negatives) examples.

    Each batch holds the training fields of `pipelines.datasets`. The positive and its
    negatives are scored in one call; the loss is BPR (pairwise) or log
    loss (pointwise), plus, with auxiliary branch heads, the gated branch
    losses weighted by `branch_loss_weight`. Losses are averaged over the
    global batch, so mirrored replicas add up to the right gradient.

    With behavior features and `behavior_fit="apart"` the ranking loss is
    taken twice: on the scorer's logit without the behavior offsets (which
    trains everything else exactly as without features) and on the full
    logit with that part held fixed (which trains only the offsets).
    """

    def __init__(
        self,
        scorer: tf_keras.Model,
        *,
        loss: str = "bpr",
        branch_loss_weight: float = 0.0,
        behavior_fit: str = "joint",
        temperature: float = 1.0,
        whole_data_weight: float = 0.0,
        positive_bits: int = 1,
        hard_negatives: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss not in config_lib.LOSSES:
            raise ValueError(f"loss={loss!r} is unknown: use one of {config_lib.LOSSES}.")
        if behavior_fit not in config_lib.BEHAVIOR_FITS:
            raise ValueError(
                f"behavior_fit={behavior_fit!r} is unknown: use one of {config_lib.BEHAVIOR_FITS}."
            )
        if behavior_fit == "apart" and behavior_bias(scorer) is None:
            raise ValueError(
                "behavior_fit='apart' needs a scorer with behavior features (--behavior_features)."
            )
        if loss == "softmax":
            mf, towers, _, _ = parts(scorer)
            if any(p.history_length for p in [mf, *towers] if p is not None):
                raise ValueError(
                    "loss='softmax' does not take user histories yet (the grid would keep "
                    "each positive in its own user's history mean): set --history_length=0."
                )
            if branch_loss_weight and hard_negatives:
                raise ValueError(
                    "the softmax loss's per-behavior branch losses (--gating=gradient_aux) score "
                    "the whole grid: use --hard_negatives=0."
                )
        if whole_data_weight:
            whole_data_term(scorer, tf.zeros([0], tf.int32))  # raises without an MF part
        if hard_negatives and (loss != "softmax" or parts(scorer)[0] is None):
            raise ValueError(
                f"hard_negatives={hard_negatives} needs loss='softmax' and a model with an MF "
                "part (mmf, ncf, gmf): the MF grid picks them."
            )
        self.hard_negatives = hard_negatives
        self.scorer = scorer
        self.loss_name = loss
        self.temperature = temperature
        self.whole_data_weight = whole_data_weight
        self.positive_bits = positive_bits
        self.branch_loss_weight = branch_loss_weight
        self.behavior_fit = behavior_fit
        self.loss_tracker = tf_keras.metrics.Mean(name="loss")
        self.pair_accuracy = tf_keras.metrics.Mean(name="pair_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.pair_accuracy]

    def call(self, inputs, training=False):
        return self.scorer(inputs, training=training)

    def _softmax_losses(self, batch, training):
        """Each row's positive against the batch's shared candidates (`SharedNegatives`)."""
        users = batch[schema.USER]
        candidates = batch[schema.CANDIDATES]
        bits = batch[schema.CANDIDATE_BITS]
        batch_size = tf.shape(users)[0]
        gates = unpack_bits(bits, batch[schema.POS_GATE].shape[-1])
        branches = None
        if self.hard_negatives:
            logits = factorized_grid(self.scorer, users, candidates)
        elif self.branch_loss_weight:
            logits, branches = score_grid(
                self.scorer, users, candidates, gates, training=training, return_branches=True
            )
        else:
            logits = score_grid(self.scorer, users, candidates, gates, training=training)
        labels = tf.one_hot(tf.range(batch_size), tf.shape(candidates)[0], dtype=tf.float32)
        # The user's other training positives are not negatives of this row.
        own = tf.cast(tf.bitwise.bitwise_and(bits, self.positive_bits) != 0, tf.float32)
        mask = own * (1.0 - labels)
        log_q = batch[schema.CANDIDATE_LOG_Q][None, :]
        remove_hits = tfrs.layers.loss.RemoveAccidentalHits()

        def loss_of(grid):
            x = tf.cast(grid, tf.float32) / self.temperature - log_q
            x = remove_hits(labels, x, candidates) + mask * _MIN_LOGIT
            return tf.nn.softmax_cross_entropy_with_logits(labels, x), x

        if self.hard_negatives:
            # Two stages, as `recommend` serves: the softmax over the whole set
            # trains the factorized part; the full scorer learns to re-rank the
            # positive against the K candidates that part scores highest.
            per_example, x = loss_of(logits)
            per_example += self._hard_loss(users, candidates, bits, gates, x, labels, training)
        elif self.behavior_fit == "apart":
            offsets = behavior_bias(self.scorer)(gates[..., 1:])
            rest = logits - offsets
            per_example, x = loss_of(rest)
            per_example += loss_of(tf.stop_gradient(rest) + offsets)[0]
        else:
            per_example, x = loss_of(logits)
        if branches is not None and len(branches) > 1:
            per_example += self.branch_loss_weight * self._behavior_losses(
                branches, gates, labels, log_q, candidates, remove_hits
            )
        positive = tf.reduce_sum(x * labels, axis=1, keepdims=True)
        valid = tf.cast(x > _MIN_LOGIT / 2, tf.float32) * (1.0 - labels)
        correct = tf.reduce_sum(tf.cast(positive > x, tf.float32) * valid, axis=1) / tf.maximum(
            tf.reduce_sum(valid, axis=1), 1.0
        )
        return per_example, correct

    def _behavior_losses(self, branches, gates, labels, log_q, candidates, remove_hits):
        """[batch] the supportive branches' own softmax losses, summed.

        Supportive branch t's auxiliary head scores the grid; each row whose
        positive pair has behavior t is a positive of that softmax (the
        other rows' losses are masked), and the user's other pairs with
        behavior t are not its negatives. So each branch learns to rank its
        own behavior's items over the catalog, and the fusion layer carries
        what it learned over to the target (EHCF's transfer, through the
        paper's branches). Ungated: the rows are the pairs with its feedback.
        """
        heads = self.scorer.branch_scores
        scores = tf.cast(heads(branches[1:]), tf.float32)  # [batch, candidates, S]
        total = 0.0
        for s in range(len(branches) - 1):
            has = gates[..., s + 1]
            rows = tf.reduce_sum(has * labels, axis=1)  # the row's positive has it
            x = scores[..., s] / self.temperature - log_q
            x = remove_hits(labels, x, candidates) + has * (1.0 - labels) * _MIN_LOGIT
            total += rows * tf.nn.softmax_cross_entropy_with_logits(labels, x)
        return total

    def _hard_loss(self, users, candidates, bits, gates, x, labels, training):
        """[batch] softmax of the full logit over the positive, K hard and K random candidates.

        Hard: the K columns of highest corrected factorized logit among the
        row's valid negatives (TFRS `HardNegativeMining` picks them the same
        way). Random: the first K shared negatives (i.i.d. draws), so the full
        scorer also learns to keep arbitrary catalog items low, which full
        ranking asks of it. Masked columns stay masked.
        """
        batch_size = tf.shape(users)[0]
        k = tf.minimum(self.hard_negatives + 1, tf.shape(candidates)[0])
        _, columns = tf.math.top_k(tf.stop_gradient(x) + labels * -_MIN_LOGIT, k=k)
        shared = tf.range(batch_size, tf.minimum(batch_size + self.hard_negatives, tf.shape(x)[1]))
        columns = tf.concat(
            [columns, tf.broadcast_to(shared[None, :], [batch_size, tf.size(shared)])], axis=1
        )
        picked = tf.gather(candidates, columns)  # [batch, k], the positive first
        masked = tf.cast(tf.gather(x, columns, batch_dims=1) <= _MIN_LOGIT / 2, tf.float32)
        pair_gates = tf.gather(gates, columns, batch_dims=1)
        width = tf.shape(picked)[1]
        outputs = self.scorer(
            {
                schema.USER: tf.reshape(tf.repeat(users[:, None], width, axis=1), [-1]),
                schema.ITEM: tf.reshape(picked, [-1]),
                schema.GATE: tf.reshape(pair_gates, [-1, pair_gates.shape[-1]]),
            },
            training=training,
        )
        full = tf.reshape(tf.cast(outputs[schema.LOGIT], tf.float32), tf.shape(picked))
        full = full / self.temperature + masked * _MIN_LOGIT
        hard_labels = tf.one_hot(tf.zeros_like(users), width, dtype=tf.float32)
        return tf.nn.softmax_cross_entropy_with_logits(hard_labels, full)

    def _compute_losses(self, batch, training):
        if self.loss_name == "softmax":
            per_example, correct = self._softmax_losses(batch, training)
            # The grid's own L2 stands in for the scorer's per-call penalties.
            loss, per_example = self._total(batch, per_example, scorer_losses=False)
            penalty = grid_l2(self.scorer, batch[schema.USER], batch[schema.CANDIDATES])
            return loss + tf.nn.scale_regularization_loss(penalty), per_example, correct
        user = batch[schema.USER]
        neg = batch[schema.NEG_ITEM]
        batch_size = tf.shape(user)[0]
        num_neg = tf.shape(neg)[1]
        num_behaviors = tf.shape(batch[schema.POS_GATE])[-1]
        users = tf.concat([user, tf.reshape(tf.repeat(user[:, None], num_neg, axis=1), [-1])], 0)
        items = tf.concat([batch[schema.POS_ITEM], tf.reshape(neg, [-1])], 0)
        gates = tf.concat(
            [batch[schema.POS_GATE], tf.reshape(batch[schema.NEG_GATE], [-1, num_behaviors])], 0
        )
        outputs = self.scorer(
            {schema.USER: users, schema.ITEM: items, schema.GATE: gates}, training=training
        )
        logits = outputs[schema.LOGIT]
        rank_loss = losses.bpr if self.loss_name == "bpr" else losses.log_loss

        def split(x):
            return x[:batch_size], tf.reshape(x[batch_size:], [batch_size, num_neg])

        pos_logits, neg_logits = split(logits)
        if self.behavior_fit == "apart":
            offsets = behavior_bias(self.scorer)(gates[:, 1:])
            rest = logits - offsets
            per_example = rank_loss(*split(rest)) + rank_loss(
                *split(tf.stop_gradient(rest) + offsets)
            )
        else:
            per_example = rank_loss(pos_logits, neg_logits)
        if schema.BRANCH_LOGITS in outputs and self.branch_loss_weight:
            branch = outputs[schema.BRANCH_LOGITS]
            # [batch, 1 + num_neg, S]: the positive first, then its negatives.
            branch = tf.concat(
                [
                    branch[:batch_size, None],
                    tf.reshape(branch[batch_size:], [batch_size, num_neg, -1]),
                ],
                1,
            )
            branch_gates = tf.concat(
                [batch[schema.POS_GATE][:, None, 1:], batch[schema.NEG_GATE][:, :, 1:]], 1
            )
            labels = tf.concat([tf.ones([batch_size, 1]), tf.zeros([batch_size, num_neg])], 1)
            per_example += self.branch_loss_weight * losses.masked_branch_loss(
                branch, labels, branch_gates
            )
        correct = tf.reduce_mean(tf.cast(pos_logits[:, None] > neg_logits, tf.float32), axis=-1)
        return self._total(batch, per_example) + (correct,)

    def _total(self, batch, per_example, scorer_losses=True):
        """(loss, per-example losses): weights, the whole-data term, regularization."""
        if schema.POS_WEIGHT in batch:
            per_example *= batch[schema.POS_WEIGHT]
        if self.whole_data_weight:
            share = batch.get(schema.USER_SHARE)
            term = whole_data_term(self.scorer, batch[schema.USER])
            per_example += self.whole_data_weight * (term if share is None else term * share)
        loss = tf.nn.compute_average_loss(per_example)
        if scorer_losses and self.scorer.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.scorer.losses))
        return loss, per_example

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            loss, per_example, correct = self._compute_losses(batch, training=True)
        # minimize() also scales the loss when a mixed_float16 policy has made
        # Keras wrap the optimizer in a LossScaleOptimizer.
        self.optimizer.minimize(loss, self.scorer.trainable_variables, tape=tape)
        self.loss_tracker.update_state(per_example)
        self.pair_accuracy.update_state(correct)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, batch):
        _, per_example, correct = self._compute_losses(batch, training=False)
        self.loss_tracker.update_state(per_example)
        self.pair_accuracy.update_state(correct)
        return {m.name: m.result() for m in self.metrics}

    def get_config(self):
        return {
            "scorer": tf_keras.utils.serialize_keras_object(self.scorer),
            "loss": self.loss_name,
            "branch_loss_weight": self.branch_loss_weight,
            "behavior_fit": self.behavior_fit,
            "temperature": self.temperature,
            "whole_data_weight": self.whole_data_weight,
            "positive_bits": self.positive_bits,
            "hard_negatives": self.hard_negatives,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        scorer = tf_keras.layers.deserialize(config.pop("scorer"), custom_objects=custom_objects)
        return cls(scorer, **config)


def build_ranker(
    config: config_lib.ExperimentConfig,
    *,
    num_users: int,
    num_items: int,
    behaviors: schema.BehaviorSchema,
) -> Ranker:
    """The scorer for `config.model` wrapped in a Ranker for `config.train.loss`."""
    scorer = build_model(
        config.model, num_users=num_users, num_items=num_items, behaviors=behaviors
    )
    weight = config.model.branch_loss_weight if config.model.gating == "gradient_aux" else 0.0
    return Ranker(
        scorer,
        loss=config.train.loss,
        branch_loss_weight=weight,
        behavior_fit=config.model.behavior_fit,
        temperature=config.train.temperature,
        whole_data_weight=config.train.whole_data_weight,
        positive_bits=positive_bits(config.train, behaviors),
        hard_negatives=config.train.hard_negatives,
        name="ranker",
    )


def unpack_bits(bits: tf.Tensor, num_behaviors: int) -> tf.Tensor:
    """[..., num_behaviors] float32 0/1 flags of int32 behavior bitmasks (bit t: branch t)."""
    shifts = tf.range(num_behaviors, dtype=bits.dtype)
    return tf.cast(
        tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits[..., None], shifts), 1), tf.float32
    )


def positive_bits(config: config_lib.TrainConfig, behaviors: schema.BehaviorSchema) -> int:
    """Bitmask of the behaviors whose pairs are training positives.

    A pair with any of them is a positive of some row, so the softmax loss
    never takes it as a negative of its user.

    Raises:
      ValueError: for a behavior weight naming a behavior the data lacks.
    """
    weights = training_index.behavior_weight_vector(behaviors.behaviors, config.behavior_weights)
    if weights is not None:
        return sum(1 << t for t, w in enumerate(weights) if w > 0)
    if config.supportive_positive_weight > 0:
        return (1 << behaviors.num_behaviors) - 1
    return 1
