"""Encoded interactions: indices, branch codes and the behavior schema."""

from __future__ import annotations

import dataclasses

import numpy as np

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import schema
from mmrec_tf.pipelines import vocabularies


@dataclasses.dataclass
class Interactions:
    """Interaction records with contiguous ids.

    Attributes:
      users: [n] int32 user indices.
      items: [n] int32 item indices.
      branches: [n] int8 branch of each record (0 = target, t = supportive t).
      timestamps: [n] int64 Unix seconds, -1 where missing.
      splits: [n] int8 split codes (schema.SPLIT_*).
      behaviors: the behavior schema (branch order).
      user_vocab: raw user ids by index.
      item_vocab: raw item ids by index.
      report: what the reader read and skipped.
    """

    users: np.ndarray
    items: np.ndarray
    branches: np.ndarray
    timestamps: np.ndarray
    splits: np.ndarray
    behaviors: schema.BehaviorSchema
    user_vocab: vocabularies.Vocabulary
    item_vocab: vocabularies.Vocabulary
    report: readers.DataReport

    @property
    def num_users(self) -> int:
        return self.user_vocab.size

    @property
    def num_items(self) -> int:
        return self.item_vocab.size


def resolve_behaviors(config: config_lib.DataConfig, found: list[str]) -> schema.BehaviorSchema:
    """The target and supportive behaviors: as configured, or every other one found.

    Raises:
      readers.DataError: if a configured supportive behavior never occurs.
    """
    if config.supportive_behaviors:
        missing = [b for b in config.supportive_behaviors if b not in found]
        if missing:
            raise readers.DataError(
                f"{config.data_path}: supportive behaviors {missing} never occur; the behaviors "
                f"found are {sorted(found)}. Fix --supportive_behaviors."
            )
        return schema.BehaviorSchema(config.target_behavior, tuple(config.supportive_behaviors))
    others = sorted(
        b for b in found if b != config.target_behavior and b not in config.ignore_behaviors
    )
    return schema.BehaviorSchema(config.target_behavior, tuple(others))


def encode(raw: readers.RawLog, config: config_lib.DataConfig) -> Interactions:
    """Maps raw ids to indices and behavior names to branches."""
    behaviors = resolve_behaviors(config, raw.behavior_names)
    code_to_branch = np.array(
        [behaviors.index(n) if n in behaviors.behaviors else -1 for n in raw.behavior_names],
        np.int8,
    )
    branches = code_to_branch[raw.behaviors]
    if (branches < 0).any():
        # Only reachable when a behavior is neither used nor ignored; the
        # reader's closed schema rejects those records first.
        unused = sorted({raw.behavior_names[c] for c in np.unique(raw.behaviors[branches < 0])})
        raise readers.DataError(
            f"{config.data_path}: behaviors {unused} are neither target nor "
            "supportive: add them to --supportive_behaviors or "
            "--ignore_behaviors."
        )
    user_vocab, users = vocabularies.build(raw.users)
    item_vocab, items = vocabularies.build(raw.items)
    return Interactions(
        users,
        items,
        branches,
        raw.timestamps,
        raw.splits,
        behaviors,
        user_vocab,
        item_vocab,
        raw.report,
    )
