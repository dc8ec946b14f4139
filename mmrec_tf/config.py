"""Typed, frozen experiment configuration.

Every library function takes one of these dataclasses; `cli.py` generates
one flag per field, with the field's entry below as its help. Each `__post_init__` validates its fields and names the field,
the value received and the valid range.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from typing import ClassVar

DATA_FORMATS = ("userbehavior", "tsv", "csv", "synthetic")
BAD_RECORD_POLICIES = ("error", "skip")
MODELS = ("mmf", "ncf", "gmf", "mlp", "als", "popular", "cascade")
GATINGS = ("gradient", "gradient_aux", "none")
BEHAVIOR_INITS = ("zero", "touched_first")
VALIDATION_PROTOCOLS = ("sampled", "full", "discovery")
LOSSES = ("bpr", "logloss", "softmax")
MF_INITS = ("random", "als", "als_fixed")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "parameter_server")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODES = ("train", "evaluate", "train_and_evaluate", "export", "evaluate_export")

# The choices of each enumerated field, by field name (its flag is an enum).
CHOICES = {
    "data_format": DATA_FORMATS,
    "on_bad_record": BAD_RECORD_POLICIES,
    "model": MODELS,
    "gating": GATINGS,
    "behavior_init": BEHAVIOR_INITS,
    "mf_init": MF_INITS,
    "loss": LOSSES,
    "early_stopping_protocol": VALIDATION_PROTOCOLS,
    "distribution_strategy": STRATEGIES,
    "mixed_precision": PRECISIONS,
    "mode": MODES,
}


# Fields retired from the configuration, by "section.field", with the value
# every run they allowed still has: a run recorded before their retirement
# with this value resumes, evaluates and exports as before (run_record), and
# the lab keys it as before (benchmarks/README.md lists why each went).
RETIRED = {
    # Constants of the library since (the protocol's, or no result depends
    # on them: benchmarks/README.md); their values here key the lab's runs.
    "model.branch_loss_weight": 0.1,
    # The ALS cache folder is the environment's (MMREC_CACHE_DIR).
    "model.als_cache_dir": "auto",
    "eval.batch_size": 65536,
    "eval.full_ranking": True,
    "eval.ks": (10, 20, 50),
    "eval.retrieval_ks": (10, 50, 100),
    "eval.sampled_negatives": 99,
    "eval.seed": 1234,
    "export.max_request_pairs": 65536,
    "export.max_request_users": 1024,
    "export.version": 0,
    "train.behavior_weights": (),
    "train.jit_compile": False,
    "train.steps_per_execution": 1,
    "model.als_holdout": 0,
    "model.als_solver": "implicit",
    "model.behavior_fit": "joint",
    "model.fusion_dim": 0,
    "train.hard_negatives": 0,
    "train.negative_distribution": "uniform",
    "train.negative_exponent": 0.75,
    "train.optimizer": "lazy_adam",
    "train.row_negatives": 0,
    "train.supportive_rows": "positives",
    "train.whole_data_weight": 0.0,
    "data.validation": True,
    "export.exclude_seen": True,
    "model.init_stddev": 0.01,
    "model.als_iterations": 15,
}

# Fields moved to another section, by old "section.field": a recorded run's
# old field held the new field's value (one flag set both).
MOVED = {"data.seed": "train.seed"}


def _check(condition: bool, field: str, value: Any, valid: str) -> None:
    if not condition:
        raise ValueError(f"{field}={value!r} is invalid: expected {valid}.")


def _check_choices(config) -> None:
    """Every enumerated field of `config` (a key of CHOICES) holds one of its choices."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        # ExperimentConfig.model is the ModelConfig, not a model name.
        if field.name in CHOICES and not dataclasses.is_dataclass(value):
            _check(value in CHOICES[field.name], field.name, value, f"one of {CHOICES[field.name]}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the interaction log is and how to read and split it.

    The split always carves one validation case per test user from the
    training data (`validation`, a class attribute: the protocol's); the
    run's seed (`TrainConfig.seed`) draws them.

    Attributes:
      data_path: a file, a glob of shards (plain or .gz), or "" for the
        built-in synthetic log.
      data_format: `userbehavior` (Taobao UserBehavior CSV, no header),
        `tsv` (the `user item behavior timestamp split` layout with a
        header), `csv` (any delimited file through `columns`), or
        `synthetic`.
      columns: for `csv`, a mapping of the fields `user`, `item`,
        `behavior`, and optionally `timestamp` and `split` to column names
        (when `has_header`) or 0-based column positions.
      delimiter: field separator for `csv` (`\\t` or `tab` for a tab).
      has_header: whether `csv` files start with a header line.
      target_behavior: the behavior to recommend (the paper's purchase).
      supportive_behaviors: supportive behaviors in branch order; empty
        means every other behavior found in the data, in sorted order.
      ignore_behaviors: behaviors whose records are excluded on purpose
        (counted in the data report), e.g. `pv` to train without views.
      on_bad_record: `error` stops at the first bad record, naming file and
        line; `skip` skips and counts bad records in the data report.
      synthetic_users: users in the synthetic log.
      synthetic_items: items in the synthetic log.
      synthetic_records_per_user: mean records per synthetic user.
    """

    validation: ClassVar[bool] = True

    data_path: str = ""
    data_format: str = "synthetic"
    columns: tuple[tuple[str, str], ...] = ()
    delimiter: str = ","
    has_header: bool = True
    target_behavior: str = "buy"
    supportive_behaviors: tuple[str, ...] = ()
    ignore_behaviors: tuple[str, ...] = ()
    on_bad_record: str = "error"
    synthetic_users: int = 2000
    synthetic_items: int = 3000
    synthetic_records_per_user: float = 40.0

    def __post_init__(self):
        _check_choices(self)
        _check(
            bool(self.target_behavior),
            "target_behavior",
            self.target_behavior,
            "a non-empty behavior name such as 'buy'",
        )
        _check(
            self.target_behavior not in self.supportive_behaviors,
            "supportive_behaviors",
            self.supportive_behaviors,
            f"behaviors other than the target {self.target_behavior!r}",
        )
        _check(
            not set(self.ignore_behaviors)
            & (set(self.supportive_behaviors) | {self.target_behavior}),
            "ignore_behaviors",
            self.ignore_behaviors,
            "behaviors not used as target or supportive",
        )
        _check(
            len(set(self.supportive_behaviors)) == len(self.supportive_behaviors),
            "supportive_behaviors",
            self.supportive_behaviors,
            "no repeated behavior",
        )
        if self.data_format == "synthetic":
            _check(
                not self.data_path,
                "data_path",
                self.data_path,
                "empty with data_format='synthetic' (the built-in log is generated); pass "
                "--data_format=tsv, csv or userbehavior to read the file",
            )
            _check(self.synthetic_users >= 2, "synthetic_users", self.synthetic_users, ">= 2")
            _check(self.synthetic_items >= 10, "synthetic_items", self.synthetic_items, ">= 10")
            _check(
                self.synthetic_records_per_user >= 4,
                "synthetic_records_per_user",
                self.synthetic_records_per_user,
                ">= 4",
            )
        elif not self.data_path:
            raise ValueError(
                f"data_path is empty but data_format={self.data_format!r} reads files: "
                "pass --data_path=FILE_OR_GLOB, or --data_format=synthetic."
            )
        if self.data_format == "csv":
            names = dict(self.columns)
            missing = {"user", "item", "behavior"} - set(names)
            _check(
                not missing,
                "columns",
                self.columns,
                f"a mapping that names the fields {sorted(missing)} (e.g. user=uid,item=iid,"
                "behavior=action)",
            )
            unknown = set(names) - {"user", "item", "behavior", "timestamp", "split"}
            _check(
                not unknown,
                "columns",
                self.columns,
                "only the fields user, item, behavior, timestamp, split",
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model's architecture.

    Every weight starts from N(0, `init_stddev`), 0.01, the paper's
    initializer (a class attribute).

    Attributes:
      model: `mmf` (the multi-feedback model), `ncf` (NeuMF on the target
        behavior only), `gmf` (MF part only; with the BPR loss on the target
        behavior, BPR-MF), `mlp` (target MLP only) or `als` (weighted ALS,
        `mmrec_tf.baselines.als`: WMF on the target behavior, or the multi-behavior
        confidence matrix with `als_supportive_weight` > 0) or `popular`
        (training buy counts, `mmrec_tf.baselines.popularity`) or `cascade`
        (CascadingRank, `mmrec_tf.baselines.cascade`: scores propagated over
        each behavior's user-item graph in turn, nothing trained). With
        `behavior_features` als and popular rank the user's supportive items
        first (`popularity.TouchedFirst`).
      mf_dim: size of the MF user and item factors.
      mlp_dim: size of each branch's user and item embeddings.
      mlp_layers: ReLU layers per branch; layer k of L has
        `mlp_dim * 2**(L-1-k)` units (a tower, as in NCF).
      gating: `gradient` (supportive branch t learns only from examples
        with feedback t), `gradient_aux` (also an auxiliary score head per
        supportive branch: with `bpr`/`logloss` it predicts the target on
        the gated examples; with `softmax` it learns to rank the branch's own
        behavior over the candidates, and the fusion carries that to the
        target; each weighs `tasks.BRANCH_LOSS_WEIGHT`), `none` (ablation).
      l2: L2 penalty on the embeddings a batch looks up.
      history_length: when > 0, each part's user vector adds the mean
        embedding of up to this many of the user's training items of its
        behavior (the MF part: the target's); 0 is the paper's model.
      shared_embeddings: every feedback branch looks up one shared pair of
        user and item embedding tables (an ablation of the paper's
        per-feedback towers; each branch keeps its own MLP layers).
      behavior_features: the score adds a learned weight for each supportive
        behavior the user had with the item in the training data (a cart or
        view before the buy): `logit += sum_s w_s * [user had behavior s with
        item]`. Evaluation and serving look these up in the training data.
      graph_signals: each branch takes its behavior's graph signals of the
        pair beside the ids (`pipelines.graph_signals`: how often the user
        had the behavior with the item, and how strongly the item is reached
        from the user's other items through that behavior's graph); a model
        with one branch takes every behavior's. Needs `loss=softmax`.
      behavior_init: where the offsets w start: `zero`, or, with `mf_init`
        als or als_fixed, `touched_first` (each offset at twice the bound of
        the ALS scores: the start is the "ALS, touched items first"
        ranking).
      als_alpha: ALS confidence slope, c = 1 + alpha * r (factors: `mf_dim`).
      als_l2: ALS ridge penalty.
      als_supportive_weight: what each supportive behavior adds to r (0: WMF).
      mf_init: where the neural models' MF part starts: `random`; `als`
        (the multi-behavior ALS fitted with the `als_*` fields and `mf_dim`
        factors, the head's MF weights at 1 and its other weights at 0, so
        the first logit is the ALS score and the branches learn what it
        misses; the starting weights are validated as epoch 0 and kept if
        no epoch beats them); or `als_fixed` (the same start with the MF
        tables held at the ALS factors: the branches, fusion and head learn
        a residual over the ALS).
      cascade_alpha: CascadingRank's pull toward the query (the user and
        the user's items of the stage's behavior).
      cascade_beta: CascadingRank's pull toward the previous stage's scores;
        `cascade_alpha + cascade_beta` in (0, 1].
      cascade_blend: a trained model ranks by its logit plus w times the
        log of CascadingRank's score (`cascade_alpha`, `cascade_beta`) on
        the training graph, w chosen on validation after training from
        `blend.WEIGHTS` and kept only when it beats w = 0 as an epoch must
        beat the kept one (`early_stopping_margin`); evaluation and export
        rank by the blend (`mmrec_tf/blend.py`).
    """

    init_stddev: ClassVar[float] = 0.01
    # ALS sweeps: every shipped recipe fits 15 (a constant since).
    als_iterations: ClassVar[int] = 15

    model: str = "mmf"
    mf_dim: int = 8
    mlp_dim: int = 8
    mlp_layers: int = 2
    gating: str = "gradient"
    l2: float = 0.0
    history_length: int = 0
    shared_embeddings: bool = False
    behavior_features: bool = False
    graph_signals: bool = False
    behavior_init: str = "zero"
    als_alpha: float = 10.0
    als_l2: float = 0.1
    als_supportive_weight: float = 0.0
    mf_init: str = "random"
    cascade_alpha: float = 0.7
    cascade_beta: float = 0.2
    cascade_blend: bool = False

    def __post_init__(self):
        _check_choices(self)
        _check(0 <= self.cascade_alpha <= 1, "cascade_alpha", self.cascade_alpha, "in [0, 1]")
        _check(0 <= self.cascade_beta <= 1, "cascade_beta", self.cascade_beta, "in [0, 1]")
        _check(
            0 < self.cascade_alpha + self.cascade_beta <= 1,
            "cascade_beta",
            self.cascade_beta,
            f"in (0, {1 - self.cascade_alpha:g}]: cascade_alpha + cascade_beta in (0, 1] "
            "(at 0 the propagation never converges)",
        )
        _check(
            self.model != "cascade" or not self.behavior_features,
            "behavior_features",
            self.behavior_features,
            "false with --model=cascade (its graphs already hold each pair's behaviors)",
        )
        _check(0 <= self.history_length <= 1000, "history_length", self.history_length, "0 to 1000")
        _check(
            self.behavior_init != "touched_first"
            or (self.behavior_features and self.mf_init != "random"),
            "behavior_init",
            self.behavior_init,
            "zero, unless --behavior_features and --mf_init=als or als_fixed "
            "(the touched-first offsets are set from the ALS scores' bound)",
        )
        _check(
            self.mf_init == "random"
            or (self.model in ("mmf", "ncf", "gmf") and not self.history_length),
            "mf_init",
            self.mf_init,
            "random unless the model has an MF part without user histories (the ALS user "
            "factor is the whole user vector): --model=mmf|ncf|gmf with --history_length=0",
        )
        _check(
            not self.graph_signals or (self.model in ("mmf", "ncf", "mlp") and self.mlp_layers),
            "graph_signals",
            self.graph_signals,
            "false unless the model has branches with layers (--model=mmf|ncf|mlp, "
            "--mlp_layers >= 1): the branches take the signals",
        )
        _check(
            not self.cascade_blend or self.model not in ("als", "popular", "cascade"),
            "cascade_blend",
            self.cascade_blend,
            "false with a fitted baseline (--model=als|popular|cascade): the blend's weight is "
            "chosen after a trained model's epochs",
        )
        _check(self.mf_dim >= 1, "mf_dim", self.mf_dim, ">= 1")
        _check(self.mlp_dim >= 1, "mlp_dim", self.mlp_dim, ">= 1")
        _check(0 <= self.mlp_layers <= 8, "mlp_layers", self.mlp_layers, "0 to 8")
        _check(self.l2 >= 0, "l2", self.l2, ">= 0")
        _check(self.als_alpha >= 0, "als_alpha", self.als_alpha, ">= 0")
        _check(self.als_l2 >= 0, "als_l2", self.als_l2, ">= 0")
        _check(
            self.als_supportive_weight >= 0,
            "als_supportive_weight",
            self.als_supportive_weight,
            ">= 0",
        )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How the model is trained.

    Attributes:
      epochs: maximum training epochs.
      batch_size: global batch size (positives per step).
      learning_rate: Adam learning rate (the paper uses 0.001).
      loss: `bpr` (pairwise, the paper's), `logloss` (pointwise), or
        `softmax`: each positive against a candidate set shared by the batch
        (the batch's positives plus `shared_negatives` sampled items), every
        candidate's logit corrected by its log sampling probability, the
        row's own positive item elsewhere in the set (accidental hits) and
        the user's other training positives masked out; the whole scorer
        scores the [batch, batch + shared_negatives] grid.
      num_negatives: negatives per positive (the paper's ng-x; `bpr` and
        `logloss`).
      shared_negatives: with `softmax`, items drawn once per batch as
        negatives for every row.
      temperature: with `softmax`, logits are divided by it.
      supportive_negative_ratio: fraction of negatives drawn from items the
        user touched only through supportive feedback (1.0 is the paper's
        sampler); the rest are uniform over items the user never touched.
      supportive_positive_weight: when > 0, pairs the user touched only
        through supportive feedback are also positives, with this loss
        weight (an extension beyond the paper, which uses 0).
      early_stopping_patience: epochs without a better validation HR@10
        before training stops; 0 disables early stopping.
      early_stopping_margin: how much better an epoch must validate to
        replace the kept weights (and reset the patience), in standard errors
        of the per-case difference between the two epochs' hits on the same
        validation cases (a paired test); 0 keeps any gain. With a validated
        start (an ALS warm start) a margin keeps the start unless an epoch
        beats it beyond the noise of the validation sample.
      early_stopping_protocol: the protocol of that validation HR@10, which
        also picks the kept epoch: `sampled` (1 + 99, cheap), `full` (whole
        catalog, the `EvalConfig.valid_full_ranking_cases` sample) or
        `discovery` (whole catalog without the user's touched items).
      steps_per_epoch: cap on steps per epoch; 0 means one pass over the
        training positives.
      distribution_strategy: `default`, `one_device`, `mirrored`,
        `multi_worker` (every worker a full replica), or `parameter_server`
        (the embedding tables sharded over the `ps` tasks of TF_CONFIG, the
        steps scheduled on its workers by the chief: `mmrec_tf.cluster`).
      seed: the run's seed: the split's validation cases (and the synthetic
        log), initialisation, shuffling and negative sampling (`--seed`).
      mixed_precision: `float32`, or a Keras mixed policy for GPUs
        (`mixed_float16`, with loss scaling) or TPUs/recent CPUs
        (`mixed_bfloat16`); the head and the losses stay in float32.
      verbose: Keras progress output (0 silent, 1 progress bar, 2 a line
        per epoch).
    """

    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 0.001
    loss: str = "bpr"
    num_negatives: int = 3
    shared_negatives: int = 1024
    temperature: float = 1.0
    supportive_negative_ratio: float = 1.0
    supportive_positive_weight: float = 0.0
    early_stopping_patience: int = 3
    early_stopping_margin: float = 0.0
    early_stopping_protocol: str = "sampled"
    steps_per_epoch: int = 0
    distribution_strategy: str = "default"
    seed: int = 0
    mixed_precision: str = "float32"
    verbose: int = 2

    def __post_init__(self):
        _check_choices(self)
        _check(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(self.num_negatives >= 1, "num_negatives", self.num_negatives, ">= 1")
        _check(self.shared_negatives >= 0, "shared_negatives", self.shared_negatives, ">= 0")
        _check(self.temperature > 0, "temperature", self.temperature, "> 0")
        _check(
            0.0 <= self.supportive_negative_ratio <= 1.0,
            "supportive_negative_ratio",
            self.supportive_negative_ratio,
            "a fraction in [0, 1]",
        )
        _check(
            0.0 <= self.supportive_positive_weight <= 1.0,
            "supportive_positive_weight",
            self.supportive_positive_weight,
            "a weight in [0, 1]",
        )
        _check(
            self.early_stopping_patience >= 0,
            "early_stopping_patience",
            self.early_stopping_patience,
            ">= 0",
        )
        _check(
            self.early_stopping_margin >= 0,
            "early_stopping_margin",
            self.early_stopping_margin,
            ">= 0 (standard errors of the paired difference)",
        )
        _check(self.steps_per_epoch >= 0, "steps_per_epoch", self.steps_per_epoch, ">= 0")
        _check(self.verbose in (0, 1, 2), "verbose", self.verbose, "0, 1 or 2")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How accuracy is measured (see PROTOCOL: sampled and full ranking).

    The protocol's constants are class attributes, not options: 99 sampled
    negatives per case, seeded by `seed` (1234; validation 1235), HR and
    NDCG at `ks` under full ranking and discovery, the TFRS retrieval metric
    at `retrieval_ks`, `batch_size` pairs per scoring call, and full ranking
    always on.

    Attributes:
      full_ranking_cases: rank at most this many test cases against the
        whole catalog, a fixed seeded sample of them (0: every case). For
        catalogs where scoring every user x item grid is the run's largest
        cost; the results record how many cases were ranked.
      valid_full_ranking_cases: the same limit for the validation cases
        (early stopping on full ranking or discovery ranks them every epoch).
    """

    sampled_negatives: ClassVar[int] = 99
    ks: ClassVar[tuple[int, ...]] = (10, 20, 50)
    retrieval_ks: ClassVar[tuple[int, ...]] = (10, 50, 100)
    batch_size: ClassVar[int] = 65536
    full_ranking: ClassVar[bool] = True
    seed: ClassVar[int] = 1234

    full_ranking_cases: int = 0
    valid_full_ranking_cases: int = 0

    def __post_init__(self):
        _check_choices(self)
        _check(
            self.full_ranking_cases >= 0,
            "full_ranking_cases",
            self.full_ranking_cases,
            ">= 0 (0 ranks every case)",
        )
        _check(
            self.valid_full_ranking_cases >= 0,
            "valid_full_ranking_cases",
            self.valid_full_ranking_cases,
            ">= 0 (0 ranks every case)",
        )


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """How the trained model is exported for TensorFlow Serving.

    Attributes:
      export_dir: the folder TensorFlow Serving watches; versions are written
        to `<export_dir>/<version>/`. Empty: no export after training.
      top_k: K, the items `recommend` returns per user.
      retrieval_candidates: C, the items the MF retrieval stage passes to
        the full model for re-ranking.

    `recommend` leaves each user's training purchases out (`exclude_seen`,
    a class attribute, as the full-ranking protocol does). Each export is
    the next version; a request may hold at most
    `max_request_users` users (`recommend`, `retrieve`,
    `recommend_from_history`: memory grows with it, about 0.25 MB per user
    at 500 candidates) and `max_request_pairs` pairs (`serving_default`); a
    larger request is an InvalidArgument error of its own.
    """

    max_request_users: ClassVar[int] = 1024
    max_request_pairs: ClassVar[int] = 65536
    exclude_seen: ClassVar[bool] = True

    export_dir: str = ""
    top_k: int = 10
    retrieval_candidates: int = 500

    def __post_init__(self):
        _check_choices(self)
        _check(self.top_k >= 1, "top_k", self.top_k, ">= 1")
        _check(
            self.retrieval_candidates >= self.top_k,
            "retrieval_candidates",
            self.retrieval_candidates,
            f">= top_k ({self.top_k})",
        )


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """One run: data, model, training and evaluation.

    Attributes:
      data: the DataConfig.
      model: the ModelConfig.
      train: the TrainConfig.
      eval: the EvalConfig.
      export: the ExportConfig.
      model_dir: where checkpoints, logs, the vocabularies, the resolved
        config and results.json are written.
      mode: `train`, `evaluate`, `train_and_evaluate`, `export` (the
        trained run's SavedModel) or `evaluate_export` (the exported
        SavedModel's signatures, scored like the model).
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    model_dir: str = ""
    mode: str = "train_and_evaluate"

    def __post_init__(self):
        _check_choices(self)
        _check(
            not self.model.graph_signals or self.train.loss == "softmax",
            "model.graph_signals",
            self.model.graph_signals,
            "false unless --loss=softmax (the softmax batches carry their grid's signals)",
        )
        _check(
            self.mode not in ("export", "evaluate_export") or bool(self.export.export_dir),
            "export.export_dir",
            self.export.export_dir,
            f"a folder (--export_dir) for --mode={self.mode}",
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
