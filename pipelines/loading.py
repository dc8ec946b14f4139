"""From a DataConfig to encoded interactions and their split."""

from __future__ import annotations

import dataclasses
import os

from mmrec_tf import config as config_lib
from mmrec_tf.pipelines import interactions
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import splits
from mmrec_tf.pipelines import synthetic


def synthetic_path(config: config_lib.DataConfig, work_dir: str, seed: int) -> str:
    """Where the synthetic log of `config` is written (one file per size and seed)."""
    name = (
        f"userbehavior_u{config.synthetic_users}_i{config.synthetic_items}"
        f"_r{config.synthetic_records_per_user:g}_s{seed}.csv"
    )
    return os.path.join(work_dir, "synthetic", name)


def resolve(config: config_lib.DataConfig, work_dir: str, seed: int) -> config_lib.DataConfig:
    """For synthetic data, writes the log of `seed` (once) and points the config at it."""
    if config.data_format != "synthetic":
        return config
    path = synthetic_path(config, work_dir, seed)
    if not os.path.exists(path):
        synthetic.write_userbehavior(
            path,
            synthetic.SyntheticSpec(
                num_users=config.synthetic_users,
                num_items=config.synthetic_items,
                records_per_user=config.synthetic_records_per_user,
                seed=seed,
            ),
        )
    return dataclasses.replace(config, data_path=path, data_format="userbehavior")


def load(
    config: config_lib.DataConfig, *, work_dir: str, seed: int = 0
) -> tuple[interactions.Interactions, splits.Split]:
    """Reads, encodes and splits the interaction log of `config`.

    Args:
      config: the data configuration.
      work_dir: where a synthetic log is written.
      seed: the run's seed (`TrainConfig.seed`): the synthetic log's and the
        validation cases'.

    Returns:
      The encoded interactions and their split.
    """
    config = resolve(config, work_dir, seed)
    raw = readers.read_interactions(config)
    data = interactions.encode(raw, config)
    return data, splits.make_split(data, validation=config.validation, seed=seed)
