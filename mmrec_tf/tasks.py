"""The training objectives, one task each, in the manner of TFRS's tasks.

A task owns its objective: given the scorer and a training batch (the
fields of `pipelines.datasets`), it scores the examples it needs and returns
their per-example losses and how often each row's positive outranks its
negatives. `ranking.Ranker` calls its task and adds the example weights and
the regularization; it never looks inside.

- `PairwiseTask`: the paper's objective. Each positive against its sampled
  negatives, with BPR (pairwise) or log loss (pointwise); with auxiliary
  branch heads (`gating="gradient_aux"`), each supportive branch's own log
  loss on the target label, masked to the instances with its behavior.
- `SoftmaxTask`: each positive against the batch's shared candidate set
  (`negatives.SharedNegatives`): logQ correction, TFRS's accidental-hit
  removal, the user's other training positives masked; with auxiliary heads,
  each supportive branch ranks its own behavior's items over the candidates.

    task = tasks.build_task(config.train, config.model, behaviors)
    per_example, correct, penalty = task(scorer, batch, training=True)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from mmrec_tf import config as config_lib
from mmrec_tf import losses
from mmrec_tf import models
from mmrec_tf.pipelines import schema

# Added to the logits of masked candidates (as TFRS's accidental-hit removal).
MIN_LOGIT = float(np.finfo(np.float32).min) / 100.0


def _positive_has(gates: tf.Tensor, labels: tf.Tensor, behavior: int) -> tf.Tensor:
    """[batch] 1.0 where row b's positive pair (its labelled column) has
    `behavior`, else 0.0; gates [batch, candidates, T], labels one-hot
    [batch, candidates]."""
    return tf.reduce_sum(gates[..., behavior] * labels, axis=1)


class PairwiseTask:
    """Each positive against its own sampled negatives.

    Args:
      loss: `bpr` (pairwise) or `logloss` (pointwise).
      branch_loss_weight: weight of the supportive branches' masked losses
        (0: none; needs a scorer with auxiliary branch heads).

    Example:
      task = PairwiseTask("bpr")
      per_example, correct, penalty = task(scorer, batch, training=True)
    """

    def __init__(self, loss: str = "bpr", branch_loss_weight: float = 0.0):
        if loss not in ("bpr", "logloss"):
            raise ValueError(f"loss={loss!r} is not pairwise: use bpr or logloss.")
        self.loss = loss
        self.branch_loss_weight = branch_loss_weight
        self._rank_loss = losses.bpr if loss == "bpr" else losses.log_loss

    def __call__(self, scorer, batch: dict, *, training: bool):
        """([batch] losses, [batch] share of negatives ranked below the
        positive, the scorer's own regularization: None, Keras adds it)."""
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
        outputs = scorer(
            {schema.USER: users, schema.ITEM: items, schema.GATE: gates}, training=training
        )
        logits = outputs[schema.LOGIT]
        pos_logits = logits[:batch_size]
        neg_logits = tf.reshape(logits[batch_size:], [batch_size, num_neg])
        per_example = self._rank_loss(pos_logits, neg_logits)
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
        return per_example, correct, None

    def check(self, scorer) -> None:
        """Any scorer trains on pairs."""
        del scorer

    def get_config(self) -> dict:
        return {"loss": self.loss, "branch_loss_weight": self.branch_loss_weight}


class SoftmaxTask:
    """Each positive against the batch's shared candidates: a sampled softmax over the catalog.

    Args:
      temperature: the logits are divided by it.
      positive_bits: bitmask of the behaviors whose pairs are training
        positives: such a pair of the row's user is never its negative.
      branch_loss_weight: weight of the supportive branches' own softmax
        losses (0: none; needs a scorer with auxiliary branch heads).

    Example:
      task = SoftmaxTask(temperature=0.1)
      per_example, correct, penalty = task(scorer, batch, training=True)
    """

    def __init__(
        self, temperature: float = 1.0, positive_bits: int = 1, branch_loss_weight: float = 0.0
    ):
        self.temperature = temperature
        self.positive_bits = positive_bits
        self.branch_loss_weight = branch_loss_weight
        # float32 whatever the global policy: the loss is computed in float32.
        self._remove_hits = tfrs.layers.loss.RemoveAccidentalHits(dtype="float32")

    def check(self, scorer) -> None:
        """Raises ValueError for a scorer this objective cannot train."""
        if any(p.history_length for p in [scorer.mf, *scorer.towers] if p is not None):
            raise ValueError(
                "loss='softmax' does not take user histories yet (the grid would keep "
                "each positive in its own user's history mean): set --history_length=0."
            )

    def __call__(self, scorer, batch: dict, *, training: bool):
        """([batch] losses, [batch] share of valid candidates ranked below the
        positive, the grid's L2 penalty, which stands in for the scorer's
        per-call penalties)."""
        users = batch[schema.USER]
        candidates = batch[schema.CANDIDATES]
        bits = batch[schema.CANDIDATE_BITS]
        gates = models.unpack_bits(bits, batch[schema.POS_GATE].shape[-1])
        signals = batch.get(schema.SIGNALS)  # [batch, candidates, S] with graph signals
        branches = None
        if self.branch_loss_weight:
            logits, branches = models.score_grid(
                scorer,
                users,
                candidates,
                gates,
                signals=signals,
                training=training,
                return_branches=True,
            )
        else:
            logits = models.score_grid(
                scorer, users, candidates, gates, signals=signals, training=training
            )
        labels = tf.one_hot(tf.range(tf.shape(users)[0]), tf.shape(candidates)[0], dtype=tf.float32)
        # The user's other training positives are not negatives of this row.
        own = tf.cast(tf.bitwise.bitwise_and(bits, self.positive_bits) != 0, tf.float32)
        mask = own * (1.0 - labels)
        log_q = batch[schema.CANDIDATE_LOG_Q][None, :]
        x = tf.cast(logits, tf.float32) / self.temperature - log_q
        x = self._remove_hits(labels, x, candidates) + mask * MIN_LOGIT
        per_example = tf.nn.softmax_cross_entropy_with_logits(labels, x)
        if branches is not None and len(branches) > 1:
            per_example += self.branch_loss_weight * self._branch_losses(
                scorer, branches, gates, labels, log_q, candidates
            )
        positive = tf.reduce_sum(x * labels, axis=1, keepdims=True)
        valid = tf.cast(x > MIN_LOGIT / 2, tf.float32) * (1.0 - labels)
        correct = tf.reduce_sum(tf.cast(positive > x, tf.float32) * valid, axis=1) / tf.maximum(
            tf.reduce_sum(valid, axis=1), 1.0
        )
        return per_example, correct, models.grid_l2(scorer, users, candidates)

    def _branch_losses(self, scorer, branches, gates, labels, log_q, candidates):
        """[batch] the supportive branches' own softmax losses, summed.

        Supportive branch t's auxiliary head scores the grid; each row whose
        positive pair has behavior t is a positive of that softmax (the
        other rows' losses are masked), and the user's other pairs with
        behavior t are not its negatives. So each branch learns to rank its
        own behavior's items over the catalog, and the fusion layer carries
        what it learned over to the target.
        """
        scores = tf.cast(scorer.branch_scores(branches[1:]), tf.float32)  # [B, C, S]
        total = 0.0
        for s in range(len(branches) - 1):
            has = gates[..., s + 1]
            rows = _positive_has(gates, labels, s + 1)
            x = scores[..., s] / self.temperature - log_q
            x = self._remove_hits(labels, x, candidates) + has * (1.0 - labels) * MIN_LOGIT
            total += rows * tf.nn.softmax_cross_entropy_with_logits(labels, x)
        return total

    def get_config(self) -> dict:
        return {
            "temperature": self.temperature,
            "positive_bits": self.positive_bits,
            "branch_loss_weight": self.branch_loss_weight,
        }


TASKS = {"pairwise": PairwiseTask, "softmax": SoftmaxTask}


def serialize(task) -> dict:
    """{"class_name": the task's name in TASKS, "config": its get_config()}."""
    name = next(n for n, cls in TASKS.items() if type(task) is cls)
    return {"class_name": name, "config": task.get_config()}


def deserialize(config: dict):
    """The task `serialize` described."""
    return TASKS[config["class_name"]](**config["config"])


# The weight of each supportive branch's own masked loss under
# `--gating=gradient_aux` (the paper's gated per-branch loss).
BRANCH_LOSS_WEIGHT = 0.1


def build_task(
    train: config_lib.TrainConfig,
    model: config_lib.ModelConfig,
    behaviors: schema.BehaviorSchema,
) -> PairwiseTask | SoftmaxTask:
    """The task of `train.loss`, with the branch losses `model.gating` asks for."""
    weight = BRANCH_LOSS_WEIGHT if model.gating == "gradient_aux" else 0.0
    if train.loss == "softmax":
        return SoftmaxTask(
            temperature=train.temperature,
            positive_bits=positive_bits(train, behaviors),
            branch_loss_weight=weight,
        )
    return PairwiseTask(train.loss, branch_loss_weight=weight)


def positive_bits(config: config_lib.TrainConfig, behaviors: schema.BehaviorSchema) -> int:
    """Bitmask of the behaviors whose pairs are training positives.

    A pair with any of them is a positive of some row, so the softmax loss
    never takes it as a negative of its user.
    """
    if config.supportive_positive_weight > 0:
        return (1 << behaviors.num_behaviors) - 1
    return 1
