"""The multi-feedback scorer and its comparison models.

`Scorer` (built by `build_model`) is the Keras functional *scorer* that owns
its parts from `layers.py`: inputs `user`, `item` (indices) and `gate` (the
per-behavior mask, used only by the backward pass), outputs `logit`,
`probability` (its sigmoid) and, with `gating="gradient_aux"`, `branch_logits`. Grid scoring, the
factorized MF part, the whole-data term and the retrieval towers read its
parts. `ranking.Ranker` trains it.

Models (`ModelConfig.model`):
  mmf: MF part + one M-MLP branch per behavior + fusion + head (the paper).
  ncf: NeuMF: MF part + the target branch alone (no supportive branches).
  gmf: the MF part alone.
  mlp: the target MLP branch alone.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib
from mmrec_tf import layers
from mmrec_tf.pipelines import schema

BEHAVIOR_BIAS = "behavior_bias"
# Rows of fitted factors assigned to an MF table at a time (`start_from_factors`).
FACTOR_ROWS = 1 << 18

_PARTS = {
    "mmf": (True, "all"),
    "ncf": (True, "target"),
    "gmf": (True, "none"),
    "mlp": (False, "target"),
}


def build_model(
    config: config_lib.ModelConfig,
    *,
    num_users: int,
    num_items: int,
    behaviors: schema.BehaviorSchema,
) -> Scorer:
    """The scorer for `config.model` (see `Scorer`)."""
    return Scorer(config, num_users=num_users, num_items=num_items, behaviors=behaviors)


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class Scorer(tf_keras.Model):
    """The multi-feedback scorer: a functional graph that owns its parts.

    Inputs `user`, `item` (indices) and `gate` (the per-behavior mask, used
    only by the backward pass); outputs `logit`, `probability` (its
    sigmoid) and, with
    `gating="gradient_aux"`, `branch_logits`. Its parts are attributes:
    `mf` (or None), `towers` in branch order (`branch_names` names them),
    `fusion` (or None), `head`, `behavior_bias` (or None). Its config is the
    ModelConfig and the table sizes, so `from_config(get_config())` rebuilds
    the same parts, tables shared as `shared_embeddings` declares.

    Args:
      config: the model configuration (a ModelConfig or its dict).
      num_users: rows of the user tables.
      num_items: rows of the item tables.
      behaviors: the behavior schema (or its dict); branch t serves
        `behaviors.behaviors[t]`.

    Raises:
      ValueError: for an unknown model name.
    """

    def __init__(self, config, *, num_users: int, num_items: int, behaviors, **kwargs):
        if isinstance(config, dict):
            config = config_lib.ModelConfig(**config)
        if isinstance(behaviors, dict):
            behaviors = schema.BehaviorSchema(
                target=behaviors["target"], supportive=tuple(behaviors["supportive"])
            )
        if config.model not in _PARTS:
            raise ValueError(f"model={config.model!r} is unknown: use one of {sorted(_PARTS)}.")
        use_mf, branch_set = _PARTS[config.model]
        names = {"all": behaviors.behaviors, "target": behaviors.behaviors[:1], "none": ()}[
            branch_set
        ]
        signal_names = schema.signal_names(behaviors.behaviors) if config.graph_signals else ()
        inputs = {
            name: tf_keras.Input(shape=spec.shape[1:], dtype=spec.dtype, name=name)
            for name, spec in schema.model_input_spec(
                behaviors.num_behaviors, len(signal_names)
            ).items()
        }
        user, item, gate = inputs[schema.USER], inputs[schema.ITEM], inputs[schema.GATE]
        signals = inputs.get(schema.SIGNALS)
        common = dict(
            num_users=num_users,
            num_items=num_items,
            init_stddev=config.init_stddev,
            l2=config.l2,
            history_length=config.history_length,
        )

        parts, mf, fusion, bias_layer, branch_scores = [], None, None, None, None
        if use_mf:
            mf = layers.MatrixFactorization(
                embedding_dim=config.mf_dim,
                name="mf",
                exclude_self=True,
                # The ALS factors replace the tables (`start_from_factors`).
                overwritten=config.mf_init != "random",
                **common,
            )
            parts.append(mf((user, item)))
        branch_outputs, towers = [], []
        for t, name in enumerate(names):
            tower = layers.FeedbackTower(
                embedding_dim=config.mlp_dim,
                num_layers=config.mlp_layers,
                name=f"tower_{name}",
                exclude_self=t == 0,
                signal_columns=_signal_columns(signal_names, name, alone=len(names) == 1),
                **common,
            )
            if config.shared_embeddings and t > 0:
                # One pair of tables for every branch: the first tower's.
                tower.user_embedding = towers[0].user_embedding
                tower.item_embedding = towers[0].item_embedding
            towers.append(tower)
            x = tower((user, item, signals) if tower.signal_columns else (user, item))
            if t > 0 and config.gating != "none":
                x = layers.GradientGate(name=f"gate_{name}")((x, gate[:, t]))
            branch_outputs.append(x)
        if len(branch_outputs) > 1:
            fusion = layers.Fusion(config.mlp_dim, init_stddev=config.init_stddev, name="fusion")
            parts.append(fusion(branch_outputs))
        elif branch_outputs:
            parts.append(branch_outputs[0])
        # The head and the losses stay in float32 under a mixed-precision policy.
        head = layers.ScoreHead(init_stddev=config.init_stddev, name="head", dtype="float32")
        logit = head(parts)
        if config.behavior_features:
            require_supportive(behaviors)
            bias_layer = layers.BehaviorBias(name=BEHAVIOR_BIAS, dtype="float32")
            logit = tf_keras.layers.Add(name="logit", dtype="float32")(
                [logit, bias_layer(gate[:, 1:])]
            )
        outputs = {
            schema.LOGIT: logit,
            # `score` means the logit everywhere (serving's `score` too); the
            # sigmoid is the probability, never a ranking score.
            schema.PROBABILITY: tf_keras.layers.Activation(
                "sigmoid", name="probability", dtype="float32"
            )(logit),
        }
        if config.gating == "gradient_aux" and len(branch_outputs) > 1:
            branch_scores = layers.BranchScores(
                len(branch_outputs) - 1,
                init_stddev=config.init_stddev,
                name="branch_scores",
                dtype="float32",
            )
            outputs[schema.BRANCH_LOGITS] = branch_scores(branch_outputs[1:])
        kwargs.setdefault("name", config.model)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.model_config = config
        self.num_users, self.num_items = num_users, num_items
        self.behaviors = behaviors
        self.branch_names = tuple(names)
        self.mf = mf
        self.towers = towers
        self.fusion = fusion
        self.head = head
        self.behavior_bias = bias_layer
        self.branch_scores = branch_scores

    def get_config(self):
        return {
            "config": dataclasses.asdict(self.model_config),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "behaviors": {
                "target": self.behaviors.target,
                "supportive": list(self.behaviors.supportive),
            },
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)

    def score_grid(
        self, users, items, gates=None, *, signals=None, training=False, return_branches=False
    ):
        """[U, I] logits of every (user, item) pair (see `score_grid`)."""
        return score_grid(
            self,
            users,
            items,
            gates,
            signals=signals,
            training=training,
            return_branches=return_branches,
        )

    @property
    def num_signals(self) -> int:
        """Width of the graph-signal input (0: the scorer takes none)."""
        spec = self.input.get(schema.SIGNALS) if isinstance(self.input, dict) else None
        return 0 if spec is None else int(spec.shape[-1])

    def factorized_grid(self, users, items):
        """[U, I] MF part of the logits (see `factorized_grid`)."""
        return factorized_grid(self, users, items)

    def retrieval_towers(self):
        """(query, candidate) towers of the factorized MF part (see `retrieval_towers`)."""
        return retrieval_towers(self)

    def set_histories(self, histories: dict) -> None:
        """Assigns each part its training history (see `set_histories`)."""
        set_histories(self, histories, target=self.behaviors.target)

    # Warm starts: how a run sets this scorer's weights before training.

    def start_from_factors(
        self, user_factors: np.ndarray, item_factors: np.ndarray, *, trainable: bool = True
    ) -> None:
        """Starts the MF part at fitted factors, so the first logit is their dot product.

        The MF tables take the factors; the head's MF weights start at 1, its
        other weights and its bias at 0, so the branches start as a zero
        residual (plus the behavior offsets, when there are any) and training
        can only move away from the factors' ranking where the loss says so.

        Args:
          user_factors: [num_users, mf_dim] (e.g. the multi-behavior ALS's).
          item_factors: [num_items, mf_dim].
          trainable: False holds the MF tables at the factors (a residual
            model: only the branches, fusion, head and offsets learn).

        Raises:
          ValueError: without an MF part, with user histories (the factor is
            then not the whole user vector), or for factors of another shape.
        """
        mf = self.mf
        if mf is None or mf.history_length:
            raise ValueError(
                "starting from fitted factors needs an MF part without user histories (the "
                "factor is the whole user vector): use --model=mmf|ncf|gmf with "
                "--history_length=0."
            )
        want = [(self.num_users, mf.embedding_dim), (self.num_items, mf.embedding_dim)]
        got = [tuple(np.shape(user_factors)), tuple(np.shape(item_factors))]
        if got != want:
            raise ValueError(
                f"factors of shapes {got} cannot start an MF part of shapes {want}: fit them "
                "with --mf_dim factors on this run's data."
            )
        for table, factors in (
            (mf.user_embedding.embeddings, user_factors),
            (mf.item_embedding.embeddings, item_factors),
        ):
            if not hasattr(table[:0], "assign"):
                # A variable sharded over parameter servers reads a slice as a
                # tensor: the whole table at once.
                table.assign(np.asarray(factors, np.float32))
                continue
            # In row blocks: one whole-table assign holds a second copy of the table.
            for start in range(0, len(factors), FACTOR_ROWS):
                block = np.asarray(factors[start : start + FACTOR_ROWS], np.float32)
                table[start : start + len(block)].assign(block)
        kernel = np.zeros(self.head.dense.kernel.shape, np.float32)
        kernel[: mf.embedding_dim] = 1.0
        self.head.dense.kernel.assign(kernel)
        self.head.dense.bias.assign(np.zeros(self.head.dense.bias.shape, np.float32))
        mf.user_embedding.trainable = trainable
        mf.item_embedding.trainable = trainable

    def touched_first_offset(self) -> float:
        """An offset that puts any touched item above any untouched one.

        Twice the bound of the MF part's scores (the largest user norm times
        the largest item norm), plus 1: with every supportive offset at it, a
        scorer started from factors ranks "touched items first", the factors'
        order within each group.
        """
        users = self.mf.user_embedding.embeddings.numpy()
        items = self.mf.item_embedding.embeddings.numpy()
        bound = float(np.linalg.norm(users, axis=1).max() * np.linalg.norm(items, axis=1).max())
        return 2.0 * bound + 1.0

    def set_behavior_offsets(self, offsets) -> None:
        """Sets the behavior offsets, one per supportive behavior in branch order.

        Raises:
          ValueError: for a scorer without behavior features, or a count
            other than its supportive behaviors'.
        """
        if self.behavior_bias is None:
            raise ValueError(
                "this scorer has no behavior offsets: build it with --behavior_features."
            )
        offsets = np.asarray(offsets, np.float32).reshape(-1)
        if offsets.shape != tuple(self.behavior_bias.kernel.shape):
            raise ValueError(
                f"{offsets.size} offsets for {self.behavior_bias.kernel.shape[0]} supportive "
                f"behaviors {self.behaviors.supportive}."
            )
        self.behavior_bias.kernel.assign(offsets)

    def behavior_offsets(self) -> dict | None:
        """{supportive behavior: its offset in logits}, or None without behavior features."""
        if self.behavior_bias is None:
            return None
        values = self.behavior_bias.kernel.numpy()
        return {b: float(w) for b, w in zip(self.behaviors.supportive, values)}


def _signal_columns(names: tuple[str, ...], behavior: str, *, alone: bool) -> tuple[int, ...]:
    """The signal columns a branch takes: its behavior's, or every one when
    it is the model's only branch (one branch fed all signals)."""
    if alone:
        return tuple(range(len(names)))
    return tuple(k for k, n in enumerate(names) if n.split("_", 1)[1] == behavior)


def require_supportive(behaviors: schema.BehaviorSchema) -> None:
    """Behavior features need supportive behaviors to look up."""
    if behaviors.num_behaviors < 2:
        raise ValueError(
            "behavior_features needs supportive behaviors: the data has only "
            f"{behaviors.target!r}; drop --behavior_features or keep a supportive behavior."
        )


def set_histories(scorer: Scorer, histories: dict, *, target: str) -> None:
    """Assigns each part its training history (see `pipelines.histories`).

    Args:
      scorer: a model from `build_model` with `history_length > 0`.
      histories: behavior name -> [num_users, history_length] item indices
        (-1 pads).
      target: the target behavior, whose history the MF part takes.
    """
    if scorer.mf is not None and scorer.mf.history_length:
        scorer.mf.set_history(histories[target])
    for name, tower in zip(scorer.branch_names, scorer.towers):
        if tower.history_length:
            tower.set_history(histories[name])


def score_grid(
    scorer: Scorer,
    users: tf.Tensor,
    items: tf.Tensor,
    gates: tf.Tensor | None = None,
    *,
    signals: tf.Tensor | None = None,
    training: bool = False,
    return_branches: bool = False,
):
    """Logits of every (user, item) pair of two lists, as the scorer computes them.

    Per-user and per-item work (embeddings, history means, the halves of
    each branch's first layer) is done once, not once per pair, so a full
    catalog is scored for many users at a time (see `FeedbackTower.grid`).

    Args:
      scorer: a model from `build_model`.
      users: [U] user indices.
      items: [I] item indices.
      gates: [U, I, num_behaviors] training gate masks of the pairs; needed
        by a scorer with behavior features, and in training by the gradient
        gates of the supportive branches.
      signals: [U, I, num_signals] the pairs' graph signals; needed by a
        scorer built with `graph_signals`.
      training: apply the supportive branches' gradient gates (a branch
        learns only from the pairs that have its behavior), as the pairwise
        scorer does in training.
      return_branches: also return the branches' [U, I, d] outputs (before
        their gates), in branch order.

    Returns:
      [U, I] logits. With user histories, a pair whose item is in the user's
      target history keeps it in the history mean (pairwise scoring leaves
      it out); full ranking never ranks those items.
    """
    logits, raw = score_rows(
        scorer,
        user_parts(scorer, users),
        items[None, :],
        gates,
        signals=signals,
        training=training,
        return_branches=True,
    )
    return (logits, raw) if return_branches else logits


def user_parts(scorer: Scorer, users: tf.Tensor) -> list[tf.Tensor]:
    """[U, d] user vectors of each part: the MF part's first (if any), then each branch's."""
    parts = [scorer.mf] if scorer.mf is not None else []
    return [part.user_vector(users) for part in parts + list(scorer.towers)]


def score_rows(
    scorer: Scorer,
    parts: list[tf.Tensor],
    items: tf.Tensor,
    gates: tf.Tensor | None = None,
    *,
    signals: tf.Tensor | None = None,
    training: bool = False,
    return_branches: bool = False,
):
    """Logits of each row's user against that row's items, from the users' vectors.

    `score_grid` is the case of real users and one item list; serving calls
    it with per-row candidates and with a new user's vectors (an MF factor
    folded in from events, the branches' mean user).

    Args:
      scorer: a model from `build_model`.
      parts: the rows' user vectors per part (`user_parts`).
      items: [U, I] item indices per row, or [1, I] shared by every row.
      gates: [U, I, num_behaviors] behavior flags of the pairs (see `score_grid`).
      signals: [U, I, num_signals] the pairs' graph signals.
      training: apply the supportive branches' gradient gates.
      return_branches: also return the branches' [U, I, d] outputs.

    Returns:
      [U, I] logits (and the branches' outputs).
    """
    mf, towers, fusion, head = scorer.mf, scorer.towers, scorer.fusion, scorer.head
    # The head is linear: its MF rows make the MF part a [U, d] x [d, I]
    # product (no [U, I, d] tensor); the rest goes through its other rows.
    kernel = tf.cast(head.dense.kernel[:, 0], tf.float32)
    logits = tf.cast(head.dense.bias[0], tf.float32)
    rows = 0
    if mf is not None:
        v = parts[0] * tf.cast(kernel[: mf.embedding_dim], parts[0].dtype)
        q = mf.item_vector(items)
        if items.shape[0] == 1:
            mf_logits = tf.matmul(v, q[0], transpose_b=True)
        else:
            mf_logits = tf.einsum("ud,uid->ui", v, q)
        logits += tf.cast(mf_logits, tf.float32)
        rows = mf.embedding_dim
        parts = parts[1:]
    # The branches, fusion and head unit by unit ([units, U, I], see
    # `FeedbackTower.planes`).
    planes = [tower.planes(u, items, signals) for tower, u in zip(towers, parts)]
    raw = [tf.transpose(p, [1, 2, 0]) for p in planes] if return_branches else None
    if training and scorer_gating(scorer):
        if gates is None:
            raise ValueError("training on a grid needs the pairs' gates for the gradient gates.")
        planes = [planes[0]] + [
            layers.gate_planes(x, gates[..., t]) for t, x in enumerate(planes) if t > 0
        ]
    rest = fusion.planes(planes) if fusion is not None else (planes[0] if planes else None)
    if rest is not None:
        logits += tf.tensordot(kernel[rows:], tf.cast(rest, tf.float32), axes=1)
    if mf is None and rest is None:
        raise ValueError(f"model {scorer.name!r} has neither an MF part nor a branch.")
    bias = scorer.behavior_bias
    if bias is not None:
        if gates is None:
            raise ValueError("this scorer has behavior features: pass the pairs' gates.")
        logits += bias(gates[..., 1:])
    return (logits, raw) if return_branches else logits


def scorer_gating(scorer: Scorer) -> bool:
    """Whether the scorer's supportive branches pass through gradient gates."""
    return any(isinstance(layer, layers.GradientGate) for layer in scorer.layers)


def grid_l2(scorer: Scorer, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """The L2 penalty of a grid's rows: each part's `l2` times the squared user
    and item vectors looked up, over the number of users (as the pairwise
    call's penalty is over its batch)."""
    total = tf.constant(0.0)
    for part in [scorer.mf, *scorer.towers]:
        if part is None or not part.l2:
            continue
        squares = tf.reduce_sum(tf.square(part.user_vector(users))) + tf.reduce_sum(
            tf.square(part.item_vector(items))
        )
        total += part.l2 * tf.cast(squares, tf.float32)
    return total / tf.cast(tf.maximum(tf.shape(users)[0], 1), tf.float32)


def _query_vectors(mf, head, users: tf.Tensor) -> tf.Tensor:
    """[batch, mf_dim] p_u * w: the user's MF factors weighted by the head's MF rows."""
    return mf.user_vector(users) * tf.cast(
        head.dense.kernel[: mf.embedding_dim, 0], mf.compute_dtype
    )


def factorized_grid(scorer: Scorer, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """[U, I] the MF part of the logit, <p_u * w, q_i>, for every pair (the retrieval stage)."""
    mf = scorer.mf
    v = _query_vectors(mf, scorer.head, users)
    return tf.matmul(v, mf.item_vector(items), transpose_b=True)


def retrieval_towers(scorer: Scorer) -> tuple[tf_keras.Model, tf_keras.Model]:
    """Query and candidate towers of the factorized MF part of the score.

    The head weights the MF output by w (its first mf_dim kernel rows), so
    the MF contribution to the logit is <p_u * w, q_i>: the query tower maps
    a user to p_u * w, the candidate tower an item to q_i.

    Args:
      scorer: a model from `build_model` with an MF part.

    Returns:
      (query model: user [batch] -> [batch, mf_dim],
       candidate model: item [batch] -> [batch, mf_dim]).

    Raises:
      ValueError: if the scorer has no MF part (`model="mlp"`).
    """
    mf, head = scorer.mf, scorer.head
    if mf is None:
        raise ValueError(f"model {scorer.name!r} has no MF part to factorize for retrieval.")
    user = tf_keras.Input(shape=(), dtype=tf.int32, name=schema.USER)
    item = tf_keras.Input(shape=(), dtype=tf.int32, name=schema.ITEM)
    weights = head.dense.kernel[: mf.embedding_dim, 0]
    query = tf_keras.Model(user, mf.user_vector(user) * weights, name="query_tower")
    candidate = tf_keras.Model(item, mf.item_embedding(item), name="candidate_tower")
    return query, candidate


def unpack_bits(bits: tf.Tensor, num_behaviors: int) -> tf.Tensor:
    """[..., num_behaviors] float32 0/1 flags of int32 behavior bitmasks (bit t: branch t)."""
    shifts = tf.range(num_behaviors, dtype=bits.dtype)
    return tf.cast(
        tf.bitwise.bitwise_and(tf.bitwise.right_shift(bits[..., None], shifts), 1), tf.float32
    )
