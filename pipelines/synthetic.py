"""A synthetic multi-behavior log in the Taobao UserBehavior layout.

The log has a latent preference structure a model can learn: items belong to
categories and have a popularity rank inside their category; each user
prefers a few categories. Each (user, item) pair the user meets is viewed
(`pv`, one or more records), and carted, favorited and bought with
probabilities that grow with the user's affinity for the item. A purchase is
far more likely after a cart, so supportive behaviors carry signal about the
target. Users are generated and written in chunks, so a log of any size (up
to the full Taobao size of about 1M users, 4M items and 100M records) streams
to disk without being held in memory.
"""

from __future__ import annotations

import dataclasses
import gzip
import os

import numpy as np
import pandas as pd

from mmrec_tf import config as config_lib

# Taobao UserBehavior covers 2017-11-25 .. 2017-12-03 (China time).
_T0 = 1511539200
_T1 = 1512316799
_RECORDS_PER_PAIR = 2.9  # pv 1 + Poisson(1.5), plus cart/fav/buy


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size and seed of a synthetic log.

    Attributes:
      num_users: users.
      num_items: items.
      records_per_user: mean records per user.
      seed: the generator's seed; the same spec writes the same bytes.
      favorite_categories: categories each user prefers.
      chunk_users: users generated and written per chunk.
    """

    # The defaults are DataConfig's synthetic_* fields (one definition each).
    num_users: int = config_lib.DataConfig.synthetic_users
    num_items: int = config_lib.DataConfig.synthetic_items
    records_per_user: float = config_lib.DataConfig.synthetic_records_per_user
    seed: int = 0
    favorite_categories: int = 3
    chunk_users: int = 50000

    def __post_init__(self):
        if self.num_users < 2 or self.num_items < 10 or self.records_per_user < 4:
            raise ValueError(
                f"SyntheticSpec {self} is too small: need num_users >= 2, "
                "num_items >= 10 and records_per_user >= 4."
            )


class _Catalog:
    """Items grouped by category, ranked by popularity inside each."""

    def __init__(self, spec: SyntheticSpec, rng: np.random.Generator):
        self.num_categories = max(4, spec.num_items // 150)
        category = rng.integers(0, self.num_categories, spec.num_items)
        order = np.argsort(category, kind="stable")
        self.items_by_category = order  # item indices, grouped by category
        counts = np.bincount(category, minlength=self.num_categories)
        self.start = np.r_[0, np.cumsum(counts)[:-1]]
        self.count = counts
        self.category = category
        popularity = 1.0 / np.arange(1, self.num_categories + 1) ** 0.7
        popularity[counts == 0] = 0
        self.category_p = popularity / popularity.sum()
        # Raw ids look like the real log's: large, sparse integers.
        self.item_ids = rng.choice(spec.num_items * 4, spec.num_items, replace=False) + 1
        self.category_ids = (
            rng.choice(self.num_categories * 20, self.num_categories, replace=False) + 1
        )


def _chunk_records(
    spec: SyntheticSpec,
    catalog: _Catalog,
    first_user: int,
    num_users: int,
    rng: np.random.Generator,
):
    """Records of users first_user .. first_user + num_users - 1, sorted by user and time."""
    k = spec.favorite_categories
    favorites = rng.choice(catalog.num_categories, size=(num_users, k), p=catalog.category_p)
    weights = rng.dirichlet(np.ones(k), size=num_users)
    weights /= weights.max(axis=1, keepdims=True)
    pairs_per_user = 1 + rng.poisson(
        max(spec.records_per_user / _RECORDS_PER_PAIR - 1, 0.5), num_users
    )
    user = np.repeat(np.arange(num_users), pairs_per_user)
    n = len(user)
    slot = rng.integers(0, k, n)
    explore = rng.random(n) < 0.1
    category = np.where(
        explore, rng.choice(catalog.num_categories, n, p=catalog.category_p), favorites[user, slot]
    )
    affinity = np.where(explore, 0.1, weights[user, slot])
    size = catalog.count[category]
    rank = np.minimum((size * rng.random(n) ** 2.5).astype(np.int64), size - 1)
    item = catalog.items_by_category[catalog.start[category] + rank]
    quality = 1.0 - rank / np.maximum(size, 1)
    score = affinity * (0.3 + 0.7 * quality)
    carted = rng.random(n) < 0.05 + 0.35 * score
    faved = rng.random(n) < 0.02 + 0.15 * score
    bought = rng.random(n) < np.where(carted, 0.15 + 0.6 * score, 0.01 + 0.08 * score)
    views = 1 + rng.poisson(1.5, n)
    start = rng.integers(_T0, _T1 - 7200, n)

    behaviors = np.array(["pv", "cart", "fav", "buy"])
    pair_index = np.concatenate(
        [
            np.repeat(np.arange(n), views),
            np.flatnonzero(carted),
            np.flatnonzero(faved),
            np.flatnonzero(bought),
        ]
    )
    kind = np.concatenate(
        [
            np.zeros(views.sum(), np.int8),
            np.full(carted.sum(), 1, np.int8),
            np.full(faved.sum(), 2, np.int8),
            np.full(bought.sum(), 3, np.int8),
        ]
    )
    offset = np.where(
        kind == 0,
        rng.integers(0, 1800, len(kind)),
        np.where(kind == 3, 5400, 1800 + 1800 * (kind == 2)),
    )
    stamp = start[pair_index] + offset
    users = user[pair_index]
    order = np.lexsort((stamp, users))
    return (
        first_user + users[order] + 1,
        catalog.item_ids[item[pair_index][order]],
        catalog.category_ids[catalog.category[item[pair_index][order]]],
        behaviors[kind[order]],
        stamp[order],
    )


def write_userbehavior(path: str, spec: SyntheticSpec) -> dict:
    """Writes the synthetic log as UserBehavior CSV (gzip if `path` ends in .gz).

    Args:
      path: the output file; its folder is created.
      spec: size and seed.

    Returns:
      Counts: records, users, items, categories, records by behavior.
    """
    rng = np.random.default_rng(spec.seed)
    catalog = _Catalog(spec, rng)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    opener = gzip.open if path.endswith(".gz") else open
    counts = {"pv": 0, "cart": 0, "fav": 0, "buy": 0}
    records = 0
    tmp = path + ".tmp"
    with opener(tmp, "wt", encoding="ascii", newline="\n") as out:
        for first in range(0, spec.num_users, spec.chunk_users):
            size = min(spec.chunk_users, spec.num_users - first)
            users, items, cats, behaviors, stamps = _chunk_records(spec, catalog, first, size, rng)
            frame = pd.DataFrame(
                {
                    "user": users,
                    "item": items,
                    "category": cats,
                    "behavior": behaviors,
                    "timestamp": stamps,
                }
            )
            out.write(frame.to_csv(header=False, index=False, lineterminator="\n"))
            names, freq = np.unique(behaviors, return_counts=True)
            for name, f in zip(names, freq):
                counts[str(name)] += int(f)
            records += len(users)
    os.replace(tmp, path)
    return {
        "records": records,
        "users": spec.num_users,
        "items": spec.num_items,
        "categories": catalog.num_categories,
        "by_behavior": counts,
    }


def main(argv=None) -> None:
    """Writes a synthetic log to try the own-data path on (see README.md).

        python -m mmrec_tf.pipelines.synthetic --out=logs/events.csv

    The file is the UserBehavior layout (user, item, category, behavior,
    timestamp; no header); an existing file is never overwritten.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="the file to write (.gz compresses)")
    parser.add_argument("--users", type=int, default=SyntheticSpec.num_users)
    parser.add_argument("--items", type=int, default=SyntheticSpec.num_items)
    parser.add_argument("--records_per_user", type=float, default=SyntheticSpec.records_per_user)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if os.path.exists(args.out):
        parser.error(
            f"{args.out} exists: remove it, or pass another --out (nothing is overwritten)"
        )
    stats = write_userbehavior(
        args.out,
        SyntheticSpec(
            num_users=args.users,
            num_items=args.items,
            records_per_user=args.records_per_user,
            seed=args.seed,
        ),
    )
    print(f"wrote {args.out}: {stats}")


if __name__ == "__main__":
    main()
