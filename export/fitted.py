"""Fitted baselines (ALS, popularity, touched items first) as Keras scorers for export.

A weighted ALS scores a pair by the dot product of its factors, which is what
the GMF scorer computes with a head of ones and no bias; popularity is a
one-factor GMF whose user factors are 1 and item factors the buy shares; and
"touched items first" is the behavior-feature offset of `--behavior_features`
set to the step `popularity.TouchedFirst` adds per supportive behavior. So the
baselines export through the same `serving.from_training` as the neural
models, with the same signatures, and score exactly as they were evaluated.
"""

from __future__ import annotations

import numpy as np
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import models
from mmrec_tf.baselines import als
from mmrec_tf.baselines import popularity
from mmrec_tf.pipelines import schema


def as_scorer(
    scorer,
    *,
    num_users: int,
    num_items: int,
    behaviors: schema.BehaviorSchema,
) -> tf_keras.Model:
    """The Keras GMF scorer that computes the fitted `scorer`'s scores.

    Args:
      scorer: an `als.FactorScorer`, a `popularity.PopularityScorer`, or a
        `popularity.TouchedFirst` around either.
      num_users: users of the vocabulary.
      num_items: items of the vocabulary.
      behaviors: the behavior schema (the offsets need its supportive ones).

    Returns:
      A scorer from `models.build_model` (model `gmf`) whose logits equal the
      fitted scores.

    Raises:
      TypeError: for a scorer of another kind.
    """
    step = None
    if isinstance(scorer, popularity.TouchedFirst):
        step, scorer = scorer.step, scorer.base
    if isinstance(scorer, als.FactorScorer):
        users, items = scorer.user_factors, scorer.item_factors
    elif isinstance(scorer, popularity.PopularityScorer):
        users = np.ones((num_users, 1), np.float32)
        items = scorer.share[:, None].astype(np.float32)
    else:
        raise TypeError(f"cannot export a {type(scorer).__name__}: use ALS or popularity.")
    dim = users.shape[1]
    model = models.build_model(
        config_lib.ModelConfig(model="gmf", mf_dim=dim, behavior_features=step is not None),
        num_users=num_users,
        num_items=num_items,
        behaviors=behaviors,
    )
    model.start_from_factors(users, items)
    if step is not None:
        model.set_behavior_offsets(np.full(behaviors.num_behaviors - 1, step, np.float32))
    return model
