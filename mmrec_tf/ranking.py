"""The trainer: a scorer wrapped with its training losses.

`Ranker` trains a `models.Scorer` on (user, positive, negatives) examples
with the paper's pairwise loss (or a pointwise log loss), or on each batch's
shared candidate set with the whole-catalog softmax (`loss="softmax"`: TFRS's
accidental-hit removal, logQ correction, the user's own positives masked),
optionally with the whole-data term and per-behavior branch losses.
`build_ranker` builds both from a config.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import losses
from mmrec_tf import models
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import training_index

# Added to the logits of masked candidates (as TFRS's accidental-hit removal).
_MIN_LOGIT = float(np.finfo(np.float32).min) / 100.0


def _positive_has(gates: tf.Tensor, labels: tf.Tensor, behavior: int) -> tf.Tensor:
    """[batch] 1.0 where row b's positive pair (its labelled column) has
    `behavior`, else 0.0; gates [batch, candidates, T], labels one-hot
    [batch, candidates]."""
    return tf.reduce_sum(gates[..., behavior] * labels, axis=1)


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class Ranker(tf_keras.Model):
    """Trains a scorer on (user, positive, negatives) examples.

    Each batch holds the training fields of `pipelines.datasets`. The positive and its
    negatives are scored in one call; the loss is BPR (pairwise) or log
    loss (pointwise), plus, with auxiliary branch heads, the gated branch
    losses weighted by `branch_loss_weight`. Losses are averaged over the
    global batch, so mirrored replicas add up to the right gradient.
    """

    def __init__(
        self,
        scorer: tf_keras.Model,
        *,
        loss: str = "bpr",
        branch_loss_weight: float = 0.0,
        temperature: float = 1.0,
        whole_data_weight: float = 0.0,
        positive_bits: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if loss not in config_lib.LOSSES:
            raise ValueError(f"loss={loss!r} is unknown: use one of {config_lib.LOSSES}.")
        if loss == "softmax":
            mf, towers, _, _ = models.parts(scorer)
            if any(p.history_length for p in [mf, *towers] if p is not None):
                raise ValueError(
                    "loss='softmax' does not take user histories yet (the grid would keep "
                    "each positive in its own user's history mean): set --history_length=0."
                )
        if whole_data_weight:
            models.whole_data_term(scorer, tf.zeros([0], tf.int32))  # raises without an MF part
        self.scorer = scorer
        self.loss_name = loss
        self.temperature = temperature
        self.whole_data_weight = whole_data_weight
        self.positive_bits = positive_bits
        self.branch_loss_weight = branch_loss_weight
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
        gates = models.unpack_bits(bits, batch[schema.POS_GATE].shape[-1])
        branches = None
        if self.branch_loss_weight:
            logits, branches = models.score_grid(
                self.scorer, users, candidates, gates, training=training, return_branches=True
            )
        else:
            logits = models.score_grid(self.scorer, users, candidates, gates, training=training)
        labels = tf.one_hot(tf.range(batch_size), tf.shape(candidates)[0], dtype=tf.float32)
        # The user's other training positives are not negatives of this row.
        own = tf.cast(tf.bitwise.bitwise_and(bits, self.positive_bits) != 0, tf.float32)
        mask = own * (1.0 - labels)
        log_q = batch[schema.CANDIDATE_LOG_Q][None, :]
        remove_hits = tfrs.layers.loss.RemoveAccidentalHits()

        x = tf.cast(logits, tf.float32) / self.temperature - log_q
        x = remove_hits(labels, x, candidates) + mask * _MIN_LOGIT
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels, x)
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
            rows = _positive_has(gates, labels, s + 1)
            x = scores[..., s] / self.temperature - log_q
            x = remove_hits(labels, x, candidates) + has * (1.0 - labels) * _MIN_LOGIT
            total += rows * tf.nn.softmax_cross_entropy_with_logits(labels, x)
        return total

    def _compute_losses(self, batch, training):
        if self.loss_name == "softmax":
            per_example, correct = self._softmax_losses(batch, training)
            # The grid's own L2 stands in for the scorer's per-call penalties.
            loss, per_example = self._total(batch, per_example, scorer_losses=False)
            penalty = models.grid_l2(self.scorer, batch[schema.USER], batch[schema.CANDIDATES])
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
            term = models.whole_data_term(self.scorer, batch[schema.USER])
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
            "temperature": self.temperature,
            "whole_data_weight": self.whole_data_weight,
            "positive_bits": self.positive_bits,
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
    scorer = models.build_model(
        config.model, num_users=num_users, num_items=num_items, behaviors=behaviors
    )
    weight = config.model.branch_loss_weight if config.model.gating == "gradient_aux" else 0.0
    return Ranker(
        scorer,
        loss=config.train.loss,
        branch_loss_weight=weight,
        temperature=config.train.temperature,
        whole_data_weight=config.train.whole_data_weight,
        positive_bits=positive_bits(config.train, behaviors),
        name="ranker",
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
