"""Experiment: a multi-behavior EASE, the closed-form item-to-item model, as a baseline.

    python -m benchmarks.experiments.ease --datasets=beibei_ehcf,jd_vcgae,tmall_mbcgcn \\
        --data_dir=../shared/data --seeds=0,1,2

Every row of accuracy.md that beats our model learns little or nothing
(CascadingRank, popular items with the touched ones first, the ALS with the
touched ones first). EASE (Steck, "Embarrassingly Shallow Autoencoders for
Sparse Data", WWW 2019) is the strongest such model the literature names for
full ranking: one item-to-item weight matrix, fitted in closed form. Written
here from the paper's formula, with the project's multi-behavior input:

- X: users x items, each (user, item) pair weighted as the ALS weights it
  (`als.confidence_matrix`: a training buy 1, each supportive behavior w);
- B = argmin ||X - X B||^2 + lambda ||B||^2 with diag(B) = 0, which is
  P = (X^T X + lambda I)^-1 and B = I - P diag(1 / diag P);
- a user's scores: X_u B. The zero diagonal keeps an item's own record from
  scoring it; the touched-first row puts the touched items first, as the ALS
  row does.

Lambda and w are chosen on the first seed's validation cases (full ranking
HR@10 on the same seeded 5,000 cases as every run), as the ALS studies tune
on one seed; each row (EASE, and EASE with the touched items first) takes
its own best of the 27 points (the ALS studies ran 17 to 26 trials). Every
seed then reads the chosen settings' test figures once under the three
protocols. It changes nothing in the library: if EASE is a row to beat, or a
start or blend better than the ALS, the library gets it as a model.
Writes benchmarks/results/ease.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from scipy import sparse
from scipy.linalg import lapack

import mmrec_tf  # noqa: F401  (Keras 2 before TensorFlow)
from benchmarks.experiments import blend_margin
from benchmarks.experiments import matched_validation
from benchmarks.experiments import reporting
from benchmarks.experiments import running
from mmrec_tf import blend
from mmrec_tf import evaluate
from mmrec_tf import run as run_lib
from mmrec_tf.baselines import als
from mmrec_tf.baselines import cascade
from mmrec_tf.baselines import popularity
from mmrec_tf.pipelines import interactions
from mmrec_tf.pipelines import readers
from mmrec_tf.pipelines import splits
from mmrec_tf.pipelines import training_index

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
OUT = os.path.join(ROOT, "benchmarks", "results")

L2_GRID = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0)
SUPPORTIVE_GRID = (0.0, 0.3, 1.0)
# scipy's LAPACK indexes with 32-bit integers; the Cholesky of a 31,024-item
# Gram matrix (3.6 GiB) crashed it, so larger matrices are refused.
LAPACK_BYTES = 2**31
# The blend's weights of the rank term besides 0 (a rank's log spans about
# 9 on these catalogs, so smaller ones than the CascadingRank blend's).
BLEND_WEIGHTS = (0.05, 0.1, 0.25, 0.5, 1.0)
# accuracy.md's rows that the EASE rows are set beside.
COMPARED = (
    "ours: the shipped flagfile (<dataset>_mmf.flags)",
    "ALS multi-behavior (tuned)",
    "ALS multi-behavior, touched items first",
    "popular, touched items first",
    "CascadingRank (tuned)",
)


def input_matrix(split: splits.Split, supportive_weight: float) -> sparse.csr_matrix:
    """[users, items] training pairs, a buy 1 and each supportive behavior w."""
    users, items, r = als.confidence_matrix(split, supportive_weight)
    shape = (split.num_users, split.num_items)
    return sparse.csr_matrix((r.astype(np.float32), (users, items)), shape=shape)


def fit(x: sparse.csr_matrix, l2: float, block: int = 2048) -> np.ndarray:
    """[items, items] EASE weights B (float32, zero diagonal).

    One items x items buffer holds the Gram matrix, its inverse and B in
    turn, and B is copied once into C order at the end.
    """
    n = x.shape[1]
    if n * n * 4 > LAPACK_BYTES:
        raise ValueError(
            f"{n} items: the {n * n * 4 / 2**30:.1f} GiB items x items matrix is past what "
            "scipy's LAPACK factors here (at 31,024 items its Cholesky crashed the process, "
            "and numpy's LU inverse ran out of 24 GiB); this experiment runs catalogs of up "
            "to 23,000 items."
        )
    gram = (x.T @ x).astype(np.float32).toarray(order="F")
    gram[np.diag_indices_from(gram)] += l2
    # Cholesky inverse: the Gram matrix plus lambda I is positive definite;
    # in Fortran order, LAPACK works in place.
    factor, info = lapack.spotrf(gram, lower=1, overwrite_a=1)
    if info:
        raise np.linalg.LinAlgError(f"Cholesky failed ({info}) at lambda {l2}")
    p, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info:
        raise np.linalg.LinAlgError(f"inverse failed ({info}) at lambda {l2}")
    # The lower triangle holds the inverse: mirror it, a block of rows at a time.
    for start in range(0, n, block):
        stop = min(start + block, n)
        p[start:stop, stop:] = p[stop:, start:stop].T
        square = p[start:stop, start:stop]
        square[...] = np.tril(square) + np.tril(square, -1).T
    diagonal = np.diag(p).copy()
    p /= -diagonal[None, :]
    p[np.diag_indices_from(p)] = 0.0
    # In C order: a sparse matrix times a Fortran-order one copies it each time.
    return np.ascontiguousarray(p)


class EaseScorer:
    """X_u B, with the interface of `evaluate.Scorer` (pairs and grids).

    `columns`: the catalog items B covers (`active_items`), every other item
    scored below all of them; None: the whole catalog.
    """

    chunk = 1024

    def __init__(self, x: sparse.csr_matrix, b: np.ndarray, columns: np.ndarray | None = None):
        self.num_items = x.shape[1]
        self.columns = columns
        self.x = x if columns is None else x[:, columns].tocsr()
        self.b = b
        # |X_u B_j| <= ||X_u||_1 max|B|: every score lies in (-bound, bound).
        row_l1 = np.asarray(abs(self.x).sum(axis=1)).ravel()
        self.bound = float(row_l1.max(initial=0.0) * np.abs(b).max() + 1.0)

    def _rows(self, users: np.ndarray) -> np.ndarray:
        rows = np.asarray(self.x[users] @ self.b, dtype=np.float32)
        if self.columns is None:
            return rows
        out = np.full((len(users), self.num_items), -0.999 * self.bound, np.float32)
        out[:, self.columns] = rows
        return out

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self._rows(users)[:, items]

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return cascade.pair_scores(self._rows, users, items, self.chunk)


def active_items(x: sparse.csr_matrix, limit: int) -> np.ndarray | None:
    """The `limit` items with the most training pairs (sorted ids), or None
    when the catalog has no more than `limit` (EASE papers keep the active
    items the same way when the catalog is too large to invert)."""
    if not limit or x.shape[1] <= limit:
        return None
    pairs = np.diff(x.tocsc().indptr)
    return np.sort(np.argsort(-pairs, kind="stable")[:limit])


def rank_term(score: EaseScorer, index: training_index.TrainingIndex | None = None):
    """The blend's term at weight 1: -log(1 + the item's rank in the user's EASE row).

    A rank, not the score, so the weights mean the same on every log: like
    the CascadingRank blend's log-score, a log-probability under a Zipf law.
    With `index`, only the items the user did not touch are ranked (from 1)
    and every touched item gets rank 0: the term reorders the untouched
    items and leaves the touched ones where the model put them.
    """

    def term(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        rows = score._rows(users)
        touched = None
        if index is not None:
            touched = index.gate_grid(users, np.arange(rows.shape[1])).any(axis=-1)
            rows = np.where(touched, np.inf, rows)
        order = np.argsort(-rows, axis=1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(rows.shape[1])[None, :], axis=1)
        if touched is not None:
            ranks = np.where(touched, 0, ranks - touched.sum(axis=1, keepdims=True) + 1)
        return -np.log1p(ranks[:, items]).astype(np.float32)

    return term


class Added:
    """`base` + weight * term, with the interface of `evaluate.Scorer`."""

    pairs_from_grid = True  # a pair costs its user's whole EASE row
    chunk = 1024

    def __init__(self, base, term, weight: float, num_items: int):
        self.base, self.term, self.weight = base, term, float(weight)
        self.catalog = np.arange(num_items)

    def grid(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.base.grid(users, items) + self.weight * self.term(users, items)

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return cascade.pair_scores(lambda u: self.grid(u, self.catalog), users, items, self.chunk)


def arms(score: EaseScorer, index: training_index.TrainingIndex) -> dict:
    return {"EASE": score, "EASE, touched items first": popularity.TouchedFirst(score, index)}


def run_seed(
    dataset: str,
    data_dir: str,
    seed: int,
    chosen: dict | None = None,
    *,
    l2_grid=L2_GRID,
    supportive_grid=SUPPORTIVE_GRID,
    carve: str = "protocol",
    max_items: int = 0,
) -> dict:
    """The grid on the seed's validation (or each arm's `chosen` (w, lambda)),
    then each arm's best setting on test."""
    config = running.dataset_config(dataset, data_dir, f"{dataset}_mmf.flags", seed)
    data = interactions.encode(readers.read_interactions(config.data), config.data)
    # The validation carve: the protocol's, or one of matched_validation's.
    split = matched_validation.CARVES[carve](data, validation=True, seed=seed)
    index = training_index.TrainingIndex.from_split(split)
    valid = evaluate.EvalCases.build(split, "valid", config.eval, touched_keys=index.keys)
    test = evaluate.EvalCases.build(split, "test", config.eval, touched_keys=index.keys)
    limit = config.eval.valid_full_ranking_cases
    grid = []
    best = {}  # arm -> (validation point, scorer)
    for w in supportive_grid:
        x = input_matrix(split, w)
        columns = active_items(x, max_items)
        for l2 in l2_grid:
            wanted = [a for a, setting in (chosen or {}).items() if setting == (w, l2)]
            if chosen is not None and not wanted:
                continue
            started = time.perf_counter()
            score = EaseScorer(x, fit(x if columns is None else x[:, columns], l2), columns)
            point = {
                "supportive_weight": w,
                "l2": l2,
                "fit_seconds": round(time.perf_counter() - started, 1),
            }
            # Each arm's own choice: the touched items first rank another way.
            for arm, scorer in arms(score, index).items():
                if chosen is not None and arm not in wanted:
                    continue
                point[arm] = evaluate.evaluate(
                    scorer, valid, config=config.eval, protocols=("full",), case_limit=limit
                )["full"]["HR@10"]
                if arm not in best or point[arm] > best[arm][0][arm]:
                    best[arm] = (point, scorer)
            grid.append(point)
            print(dataset, seed, point, flush=True)
    rows = {}
    for arm, (point, scorer) in best.items():
        got = evaluate.evaluate(scorer, test, config=config.eval)
        rows[arm] = {
            "valid_HR@10": point[arm],
            "chosen": {k: point[k] for k in ("supportive_weight", "l2")},
            **{
                protocol: {k: got[protocol][k] for k in ("HR@10", "HR@10_se", "NDCG@10", "cases")}
                for protocol in ("full", "discovery", "sampled")
            },
        }
        print(dataset, seed, arm, rows[arm], flush=True)
    return {"seed": seed, "grid": grid, "arms": rows}


def summary(runs: list[dict]) -> dict:
    """Per arm: {protocol: mean over seeds and standard error across seeds
    (`running.summarize`)}, and the mean validation HR@10."""
    out = {}
    for arm in runs[0]["arms"]:
        rows = [{"seed": r["seed"], "test": r["arms"][arm]} for r in runs]
        out[arm] = {p: running.summarize(rows, p) for p in ("full", "discovery", "sampled")}
        out[arm]["valid_HR@10"] = float(np.mean([r["arms"][arm]["valid_HR@10"] for r in runs]))
    return out


def metric_cells(row: dict) -> str:
    """full HR@10 | full NDCG@10 | discovery HR@10 | sampled HR@10, each ± its SE."""
    return " | ".join(
        reporting.format_metric(row[p], m)
        for p, m in (
            ("full", "HR@10"),
            ("full", "NDCG@10"),
            ("discovery", "HR@10"),
            ("sampled", "HR@10"),
        )
    )


def report(results: dict, commands: dict) -> str:
    with open(os.path.join(OUT, "accuracy.json")) as f:
        accuracy = json.load(f)["datasets"]
    lines = [
        "# A multi-behavior EASE beside accuracy.md's rows",
        "",
        "EASE (closed form, benchmarks/experiments/ease.py) on the ALS's input "
        "(a buy 1, each supportive behavior w), lambda and w chosen on the first seed's "
        "full-ranking validation HR@10 over the grid below the table (each row its own "
        "choice). Test HR@10 (NDCG@10 for full), mean over seeds ± the standard error "
        "across seeds; the other rows are accuracy.md's (the same splits, seeds and cases).",
        "",
        "| dataset | row | full HR@10 | full NDCG@10 | discovery HR@10 | sampled HR@10 "
        "| validation: full HR@10 | chosen (w, lambda) per seed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dataset, runs in results.items():
        for arm, row in summary(runs).items():
            chosen = "; ".join(
                f"{r['arms'][arm]['chosen']['supportive_weight']}, "
                f"{r['arms'][arm]['chosen']['l2']:g}"
                for r in runs
            )
            lines.append(
                f"| {dataset} | {arm} | {metric_cells(row)} | {row['valid_HR@10']:.4f} | {chosen} |"
            )
        for other in accuracy.get(dataset, []):
            if other["arm"] in COMPARED:
                lines.append(
                    f"| {dataset} | {other['arm']} (accuracy.md) | {metric_cells(other)} "
                    f"| {other['valid_full_HR@10']:.4f} | |"
                )
    lines += ["", "Grids (the first seed's validation) and commands:", ""]
    for dataset, runs in results.items():
        points = runs[0]["grid"]
        ws = sorted({p["supportive_weight"] for p in points})
        l2s = sorted({p["l2"] for p in points})
        lines.append(
            f"- {dataset}: {len(points)} points, w in {ws}, lambda in {l2s}; "
            f"`{commands.get(dataset, '')}`"
        )
    return "\n".join(lines) + "\n"


def blend_run(model_dir: str, data_path: str, settings: dict, untouched: bool = False) -> dict:
    """A trained run (`<dataset>_mmf.flags`) blended with EASE's rank term.

    The run is scored as it ships (its CascadingRank blend at its kept
    weight). On its validation cases (the same seeded sample and protocol
    its epochs and blend were chosen on), each EASE setting of `settings`
    ({row: (w, lambda)}, the rows' choices in ease.json) is tried at every
    weight of `BLEND_WEIGHTS`; the setting whose best weight validates
    highest is taken, and its weight is kept by `blend.keep` (more than the
    run's `early_stopping_margin` standard errors above the run alone).
    Test figures of the kept blend are read once; the run's own test figures
    are its results.json's. `untouched`: the term ranks only the items the
    user did not touch (`rank_term`).
    """
    config, split, index, score, cascade_ranker = blend_margin.trained(model_dir, data_path)
    base = score
    cascade_weight = 0.0
    if config.model.cascade_blend:
        cascade_weight = blend.load(model_dir)["weight"]
        base = blend.Blended(score, cascade_ranker, cascade_weight)
    valid = evaluate.EvalCases.build(split, "valid", config.eval, touched_keys=index.keys)
    ranked = evaluate.full_ranking_subset(
        len(valid.users), config.eval.valid_full_ranking_cases, config.eval.seed
    )
    protocol = config.train.early_stopping_protocol
    tried = {}
    for w, l2 in sorted(set(settings.values())):
        x = input_matrix(split, w)
        term = rank_term(EaseScorer(x, fit(x, l2)), index if untouched else None)
        hits = blend.weight_hits(base, term, valid, protocol, ranked, BLEND_WEIGHTS)
        tried[(w, l2)] = (hits, term)
        print(model_dir, (w, l2), {k: round(float(v.mean()), 4) for k, v in hits.items()})
    setting = max(tried, key=lambda k: max(tried[k][0][v].mean() for v in BLEND_WEIGHTS))
    hits, term = tried[setting]
    kept, gain, se = blend.keep(hits, config.train.early_stopping_margin)
    final = Added(base, term, kept, split.num_items) if kept else base
    got = evaluate.evaluate(
        final, evaluate.EvalCases.build(split, "test", config.eval), config=config.eval
    )
    with open(os.path.join(model_dir, "results.json")) as f:
        alone = json.load(f)["test"]
    return {
        "dataset": run_lib.dataset_name(config),
        "seed": config.train.seed,
        "cascade_weight": cascade_weight,
        "term": "untouched items ranked" if untouched else "every item ranked",
        "setting": {"supportive_weight": setting[0], "l2": setting[1]},
        "valid_HR@10": {
            f"{k[0]:g}, {k[1]:g}": {str(v): round(float(h.mean()), 4) for v, h in t[0].items()}
            for k, t in tried.items()
        },
        "valid_cases": len(hits[0.0]),
        "kept_weight": kept,
        "gain": round(gain, 4),
        "gain_se": round(se, 4),
        "test": {
            p: {
                "run": {k: alone[p][k] for k in ("HR@10", "HR@10_se")},
                "blend": {k: got[p][k] for k in ("HR@10", "HR@10_se")},
            }
            for p in ("full", "discovery", "sampled")
        },
    }


def blend_report(rows: list[dict], command: str) -> str:
    lines = [
        "# The shipped runs blended with EASE",
        "",
        f"Command: `{command}`",
        "",
        "Each trained run of `<dataset>_mmf.flags` (as it ships, its CascadingRank blend "
        "included) plus w x -log(1 + the item's rank in the user's EASE row); the EASE "
        "setting and w chosen on the run's validation cases, w kept only above the run "
        "alone by more than 2 standard errors of the paired difference (`blend.keep`, the "
        "rule of the CascadingRank blend). Test HR@10 ± the standard error over cases. "
        f"The term's ranks: {rows[0]['term'] if rows else ''}.",
        "",
        "| dataset | seed | EASE setting (w, lambda) | validation HR@10 by weight | kept "
        "| full: run | full: blend | discovery: run | discovery: blend | sampled: run "
        "| sampled: blend |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        key = f"{r['setting']['supportive_weight']:g}, {r['setting']['l2']:g}"
        cells = []
        for p in ("full", "discovery", "sampled"):
            for who in ("run", "blend"):
                t = r["test"][p][who]
                cells.append(f"{t['HR@10']:.4f} ± {t['HR@10_se']:.4f}")
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {key} | {r['valid_HR@10'][key]} "
            f"| {r['kept_weight']:g} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="beibei_ehcf,jd_vcgae,tmall_mbcgcn")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--l2_grid", default=",".join(f"{v:g}" for v in L2_GRID))
    parser.add_argument("--supportive_grid", default=",".join(f"{v:g}" for v in SUPPORTIVE_GRID))
    parser.add_argument("--out", default=os.path.join(OUT, "ease"))
    parser.add_argument(
        "--max_items",
        type=int,
        default=0,
        help="fit EASE on this many of the most active items (0: all); the others rank last",
    )
    parser.add_argument(
        "--carve",
        default="protocol",
        choices=("protocol", "matched", "matched_order"),
        help="the validation carve (matched_validation.py's); the test cases are the data's",
    )
    parser.add_argument(
        "--blend_runs",
        default="",
        help="comma-separated trained runs of <dataset>_mmf.flags: blend each with EASE at "
        "the settings the --out JSON chose for its dataset, instead of the grid",
    )
    parser.add_argument(
        "--untouched_term",
        action="store_true",
        help="with --blend_runs: the EASE term ranks only the items the user did not touch",
    )
    args = parser.parse_args(argv)
    if args.blend_runs:
        with open(args.out + ".json") as f:
            chosen = json.load(f)["datasets"]
        rows = []
        for model_dir in args.blend_runs.split(","):
            dataset = run_lib.dataset_name(blend_margin.read_config(model_dir))
            settings = {
                arm: (row["chosen"]["supportive_weight"], row["chosen"]["l2"])
                for arm, row in chosen[dataset][0]["arms"].items()
            }
            data_path = os.path.join(args.data_dir, dataset, "interactions.tsv.gz")
            rows.append(blend_run(model_dir, data_path, settings, args.untouched_term))
            print(rows[-1], flush=True)
        command = (
            "python -m benchmarks.experiments.ease --data_dir=../shared/data "
            "--blend_runs=<trained runs of <dataset>_mmf.flags>"
            + (" --untouched_term" if args.untouched_term else "")
        )
        suffix = "_blend_untouched" if args.untouched_term else "_blend"
        with open(args.out + suffix + ".json", "w") as f:
            json.dump({"command": command, "runs": rows}, f, indent=1)
        with open(args.out + suffix + ".md", "w") as f:
            f.write(blend_report(rows, command))
        print("wrote", args.out + suffix + ".md", flush=True)
        return
    seeds = [int(s) for s in args.seeds.split(",")]
    grids = {
        "l2_grid": _floats(args.l2_grid),
        "supportive_grid": _floats(args.supportive_grid),
        "carve": args.carve,
        "max_items": args.max_items,
    }
    # Datasets run before (their own commands) stay; a dataset run again is replaced.
    results, commands = {}, {}
    if os.path.exists(args.out + ".json"):
        with open(args.out + ".json") as f:
            earlier = json.load(f)
        results = earlier["datasets"]
        commands = earlier.get("commands") or dict.fromkeys(results, earlier.get("command", ""))
    for name in args.datasets.split(","):
        dataset = name if args.carve == "protocol" else f"{name} ({args.carve} carve)"
        if dataset in results:
            print(f"{dataset}: its earlier results are replaced", flush=True)
        # The grid on the first seed's validation, as the ALS studies tune on
        # one seed; the other seeds run each arm's choice.
        first = run_seed(name, args.data_dir, seeds[0], **grids)
        chosen = {
            arm: (row["chosen"]["supportive_weight"], row["chosen"]["l2"])
            for arm, row in first["arms"].items()
        }
        results[dataset] = [first] + [
            run_seed(name, args.data_dir, seed, chosen, **grids) for seed in seeds[1:]
        ]
        commands[dataset] = (
            f"python -m benchmarks.experiments.ease --datasets={name} "
            f"--data_dir=../shared/data --seeds={args.seeds}"
            + (f" --carve={args.carve}" if args.carve != "protocol" else "")
            + (f" --max_items={args.max_items}" if args.max_items else "")
            + (f" --l2_grid={args.l2_grid}" if grids["l2_grid"] != L2_GRID else "")
            + (
                f" --supportive_grid={args.supportive_grid}"
                if grids["supportive_grid"] != SUPPORTIVE_GRID
                else ""
            )
        )
        with open(args.out + ".json", "w") as f:
            json.dump({"commands": commands, "datasets": results}, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(report(results, commands))
        print("wrote", args.out + ".md", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
