"""The trainer: a scorer wrapped with its training task.

`Ranker` trains a `models.Scorer` with a task from `tasks` (the paper's
pairwise objective, or the whole-catalog softmax over each batch's shared
candidates): the task scores the batch and gives the per-example losses;
the Ranker weighs them, adds the regularization and steps the optimizer.
`build_ranker` builds both from a config.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf import tasks
from mmrec_tf.pipelines import schema


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class Ranker(tf_keras.Model):
    """Trains a scorer with a task.

    Each batch holds the training fields of `pipelines.datasets`. Losses are
    averaged over the global batch, so mirrored replicas add up to the right
    gradient.

    Args:
      scorer: the model from `models.build_model`.
      task: a `tasks.PairwiseTask` or `tasks.SoftmaxTask` (default: BPR).

    Raises:
      ValueError: for a task that cannot train this scorer.
    """

    def __init__(self, scorer: tf_keras.Model, *, task=None, **kwargs):
        super().__init__(**kwargs)
        task = task if task is not None else tasks.PairwiseTask("bpr")
        task.check(scorer)
        self.scorer = scorer
        self.task = task
        self.loss_tracker = tf_keras.metrics.Mean(name="loss")
        self.pair_accuracy = tf_keras.metrics.Mean(name="pair_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.pair_accuracy]

    def call(self, inputs, training=False):
        return self.scorer(inputs, training=training)

    def _compute_losses(self, batch, training):
        """(loss, [batch] weighted per-example losses, [batch] pair accuracy)."""
        per_example, correct, penalty = self.task(self.scorer, batch, training=training)
        if schema.POS_WEIGHT in batch:
            per_example *= batch[schema.POS_WEIGHT]
        loss = tf.nn.compute_average_loss(per_example)
        if penalty is not None:
            loss += tf.nn.scale_regularization_loss(penalty)
        elif self.scorer.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(self.scorer.losses))
        return loss, per_example, correct

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
            "task": tasks.serialize(self.task),
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        scorer = tf_keras.layers.deserialize(config.pop("scorer"), custom_objects=custom_objects)
        return cls(scorer, task=tasks.deserialize(config.pop("task")), **config)


def build_ranker(
    config: config_lib.ExperimentConfig,
    *,
    num_users: int,
    num_items: int,
    behaviors: schema.BehaviorSchema,
) -> Ranker:
    """The scorer for `config.model` wrapped in a Ranker with the task of `config.train.loss`."""
    scorer = models.build_model(
        config.model, num_users=num_users, num_items=num_items, behaviors=behaviors
    )
    task = tasks.build_task(config.train, config.model, behaviors)
    return Ranker(scorer, task=task, name="ranker")
