"""The training tasks: each owns its loss; the Ranker only weighs and sums."""

import numpy as np
import pytest
import tensorflow as tf

from mmrec_tf import config as config_lib
from mmrec_tf import ranking
from mmrec_tf import tasks
from mmrec_tf.pipelines import schema
from tests.mmrec_tf import test_models


def test_the_pairwise_task_is_bpr_over_the_scorers_logits():
    scorer = test_models._scorer()
    batch = test_models._batch(1.0)
    per_example, correct, penalty = tasks.PairwiseTask("bpr")(scorer, batch, training=False)
    users = np.repeat(batch[schema.USER].numpy(), 3)
    items = np.concatenate(
        [batch[schema.POS_ITEM].numpy()[:, None], batch[schema.NEG_ITEM].numpy()], axis=1
    ).reshape(-1)
    logits = scorer(
        {schema.USER: users, schema.ITEM: items, schema.GATE: tf.ones([len(users), 3])}
    )[schema.LOGIT].numpy()
    logits = logits.reshape(4, 3)
    # BPR: mean over the negatives of softplus(negative - positive).
    want = np.log1p(np.exp(logits[:, 1:] - logits[:, :1])).mean(axis=1)
    np.testing.assert_allclose(per_example.numpy(), want, rtol=1e-5)
    np.testing.assert_allclose(correct.numpy(), (logits[:, 1:] < logits[:, :1]).mean(axis=1))
    assert penalty is None  # the scorer's own regularization losses apply


@pytest.mark.parametrize(
    "task",
    [
        tasks.PairwiseTask("logloss", branch_loss_weight=0.5),
        tasks.SoftmaxTask(temperature=0.2, positive_bits=3, branch_loss_weight=0.1),
    ],
)
def test_a_ranker_round_trips_its_task_through_its_config(task):
    ranker = ranking.Ranker(test_models._scorer(), task=task)
    clone = ranking.Ranker.from_config(ranker.get_config())
    assert type(clone.task) is type(task)
    assert clone.task.get_config() == task.get_config()


def test_the_config_picks_the_task_and_its_branch_losses():
    behaviors = test_models.BEHAVIORS
    softmax = tasks.build_task(
        config_lib.TrainConfig(loss="softmax", temperature=0.3, supportive_positive_weight=0.5),
        config_lib.ModelConfig(gating="gradient_aux"),
        behaviors,
    )
    assert isinstance(softmax, tasks.SoftmaxTask)
    # Supportive-only pairs are positives: no pair of the user is a negative.
    assert softmax.get_config() == {
        "temperature": 0.3,
        "positive_bits": 0b111,
        "branch_loss_weight": tasks.BRANCH_LOSS_WEIGHT,
    }
    pairwise = tasks.build_task(
        config_lib.TrainConfig(loss="logloss"), config_lib.ModelConfig(), behaviors
    )
    assert pairwise.get_config() == {"loss": "logloss", "branch_loss_weight": 0.0}
    with pytest.raises(ValueError, match="not pairwise"):
        tasks.PairwiseTask("softmax")


def test_the_softmax_task_refuses_user_histories():
    with pytest.raises(ValueError, match="history_length=0"):
        ranking.Ranker(test_models._scorer(history_length=2), task=tasks.SoftmaxTask())
