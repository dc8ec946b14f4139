"""Fitted baselines: the multi-behavior weighted ALS, item popularity and CascadingRank.

Every baseline is a *fitted scorer* with one protocol, the one the evaluator
and the exporter read (`evaluate.evaluate`, `export.fitted.as_scorer`):

- `scorer(users, items)` -> [n] scores of the pairs;
- `scorer.grid(users, items)` -> [len(users), len(items)] scores;
- `scorer.bound`: every score lies in (-bound, bound).

`als.FactorScorer` (`--model=als`), `popularity.PopularityScorer`
(`--model=popular`) and `cascade.CascadeScorer` (`--model=cascade`) are
fitted by `fit`; `popularity.TouchedFirst` wraps
either to rank the user's touched items first (`--behavior_features`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Protocol

import numpy as np

from mmrec_tf import config as config_lib
from mmrec_tf.baselines import als
from mmrec_tf.baselines import cascade
from mmrec_tf.baselines import popularity
from mmrec_tf.pipelines import splits as splits_lib
from mmrec_tf.pipelines import training_index


class FittedScorer(Protocol):
    """What every fitted baseline provides."""

    bound: float

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray: ...


def als_config(model: config_lib.ModelConfig, seed: int) -> als.ALSConfig:
    """The ALS settings of a model config (`--als_*`, `mf_dim` factors)."""
    return als.ALSConfig(
        factors=model.mf_dim,
        l2=model.als_l2,
        alpha=model.als_alpha,
        supportive_weight=model.als_supportive_weight,
        iterations=model.als_iterations,
        seed=seed,
    )


# The environment variable of the cache root; "off" keeps no cache.
CACHE_VARIABLE = "MMREC_CACHE_DIR"


def cache_folder() -> str:
    """The ALS cache folder: $MMREC_CACHE_DIR/als, else ~/.cache/mmrec_tf/als
    ("" when MMREC_CACHE_DIR is `off`: every fit runs)."""
    root = os.environ.get(CACHE_VARIABLE)
    if root == "off":
        return ""
    root = root or os.path.join(os.path.expanduser("~"), ".cache", "mmrec_tf")
    return os.path.join(root, "als")


def fit_factors(
    split: splits_lib.Split, settings: als.ALSConfig, *, cache_dir: str = "", verbose: bool = False
) -> tuple[np.ndarray, np.ndarray, float, str]:
    """ALS factors of `split`, from `cache_dir` when the same fit is there.

    The cache key is a hash of the training pairs (users, items, behaviors)
    and every ALS setting, seed included: a hit returns exactly what the fit
    would (the fit is deterministic for a seed). A damaged cache file is an
    error that names it (delete it to fit again).

    Returns:
      (user factors, item factors, seconds spent fitting or reading, the
       cache file read or written, or "" without a cache).
    """
    if not cache_dir:
        x, y, seconds = als.fit(split, settings, verbose=verbose)
        return x, y, seconds, ""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True).encode())
    for array in (split.train_users, split.train_items, split.train_branches):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(f"{split.num_users},{split.num_items}".encode())
    path = os.path.join(cache_dir, f"als_{digest.hexdigest()[:16]}.npz")
    started = time.perf_counter()
    if os.path.exists(path):
        try:
            with np.load(path) as cached:
                x, y = cached["user_factors"], cached["item_factors"]
        except Exception as error:  # a truncated or foreign file: any reader error
            raise ValueError(
                f"the ALS cache file {path} is damaged ({type(error).__name__}: {error}); "
                "delete it to fit the ALS again, or set MMREC_CACHE_DIR=off to fit without "
                "the cache."
            ) from error
        if x.shape != (split.num_users, settings.factors) or y.shape != (
            split.num_items,
            settings.factors,
        ):
            raise ValueError(
                f"the ALS cache file {path} holds factors of shapes {x.shape} and {y.shape}, "
                f"not ({split.num_users}, {settings.factors}) and ({split.num_items}, "
                f"{settings.factors}): delete it to fit the ALS again."
            )
        return x, y, time.perf_counter() - started, path
    x, y, seconds = als.fit(split, settings, verbose=verbose)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, user_factors=x, item_factors=y)
    os.replace(tmp, path)
    return x, y, seconds, path


def fit(
    config: config_lib.ExperimentConfig, split: splits_lib.Split
) -> tuple[FittedScorer, dict, float]:
    """Fits the baseline `config.model.model` names (`als`, `popular` or `cascade`).

    Returns:
      (the fitted scorer, wrapped in `TouchedFirst` with behavior features;
       what was fitted, for results.json; seconds spent fitting).
    """
    m = config.model
    index = None
    if m.model == "popular" or m.behavior_features:
        index = training_index.TrainingIndex.from_split(split)
    if m.model == "popular":
        started = time.perf_counter()
        score = popularity.PopularityScorer(index)
        seconds = time.perf_counter() - started
        record = {"popular": {"behavior_features": m.behavior_features}}
    elif m.model == "als":
        settings = als_config(m, config.train.seed)
        user_factors, item_factors, seconds, cached = fit_factors(
            split, settings, cache_dir=cache_folder(), verbose=config.train.verbose > 0
        )
        score = als.FactorScorer(user_factors, item_factors)
        record = {
            "als": dataclasses.asdict(settings),
            "behavior_features": m.behavior_features,
            "als_cache": cached,
        }
    elif m.model == "cascade":
        started = time.perf_counter()
        settings = cascade.CascadeConfig(alpha=m.cascade_alpha, beta=m.cascade_beta)
        score = cascade.CascadeScorer(split, settings)
        seconds = time.perf_counter() - started
        record = {
            "cascade": {
                **dataclasses.asdict(settings),
                "order": [split.behaviors.behaviors[b] for b in score.order],
            },
            "behavior_features": m.behavior_features,
        }
    else:
        raise ValueError(
            f"model={m.model!r} is not a fitted baseline: use als, popular or cascade."
        )
    if m.behavior_features:
        score = popularity.TouchedFirst(score, index)
    return score, record, seconds
