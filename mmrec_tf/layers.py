"""The model's parts: feedback towers, the MF part, the gradient gate, fusion and head.

Every layer is Keras-serializable (`get_config` / `from_config`).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras


def _normal(stddev: float, seed: int | None):
    return tf_keras.initializers.RandomNormal(mean=0.0, stddev=stddev, seed=seed)


class _Overwritten(tf_keras.initializers.Initializer):
    """Zeros for a table that fitted factors overwrite (`--mf_init=als|als_fixed`).

    A random table of N entries held about three times its size in memory
    (the draw's temporaries stay with the process), which fitted factors then
    replace. This one allocates zeros, and first draws what the normal
    initializer would from the global seed's stream (one op seed, whatever
    the shape), so every weight built after it starts where it did.
    """

    def __init__(self, normal: tf_keras.initializers.Initializer):
        self.normal = normal

    def __call__(self, shape, dtype=None, **kwargs):
        self.normal([1, 1], dtype=dtype, **kwargs)
        return tf.zeros(shape, dtype)


def tower_units(embedding_dim: int, num_layers: int) -> list[int]:
    """Units of a branch's ReLU layers: a tower halving down to `embedding_dim`.

    For embedding_dim 4 and 3 layers: [16, 8, 4] (the input is 2 * 4 = 8).
    """
    return [embedding_dim * 2 ** (num_layers - 1 - k) for k in range(num_layers)]


def dense_planes(layer: tf_keras.layers.Dense, x: tf.Tensor) -> tf.Tensor:
    """A Dense layer on unit-major planes: [in, U, I] to [out, U, I]."""
    shape = tf.shape(x)
    # The variables in the planes' dtype (a mixed-precision policy's compute dtype).
    kernel, bias = tf.cast(layer.kernel, x.dtype), tf.cast(layer.bias, x.dtype)
    flat = tf.matmul(kernel, tf.reshape(x, [shape[0], -1]), transpose_a=True)
    flat = layer.activation(flat + bias[:, None])
    return tf.reshape(flat, tf.concat([[layer.units], shape[1:]], 0))


class _EmbeddingPair(tf_keras.layers.Layer):
    """User and item embedding tables, an optional user history, optional L2.

    With `history_length > 0` the user's vector is their embedding plus the
    mean embedding of up to `history_length` items from their training
    history (SVD++/FISM style; the history table is a non-trainable weight,
    so it is saved with the checkpoints and exported with the model). With
    `exclude_self`, the scored item is left out of that mean, so a model
    cannot learn to recognise an item in its own purchase history.

    The L2 penalty is on the rows a batch looks up, not on the whole tables,
    so a step touches only those rows (a table-wide regularizer would make
    every update dense).
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int,
        *,
        init_stddev: float = 0.01,
        l2: float = 0.0,
        seed: int | None = None,
        history_length: int = 0,
        exclude_self: bool = False,
        overwritten: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_users = num_users
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.init_stddev = init_stddev
        self.l2 = l2
        self.seed = seed
        self.history_length = history_length
        self.exclude_self = exclude_self
        user_init = _normal(init_stddev, seed)
        item_init = _normal(init_stddev, None if seed is None else seed + 1)
        if overwritten:
            user_init, item_init = _Overwritten(user_init), _Overwritten(item_init)
        self.user_embedding = tf_keras.layers.Embedding(
            num_users, embedding_dim, embeddings_initializer=user_init, name="user_embedding"
        )
        self.item_embedding = tf_keras.layers.Embedding(
            num_items, embedding_dim, embeddings_initializer=item_init, name="item_embedding"
        )
        # Set by the serving module whose retrieval index is this item table
        # (see `item_vector`); training gathers from the variable.
        self.dense_item_reads = False

    def build(self, input_shape):
        if self.history_length:
            # -1 pads a history shorter than history_length.
            self.history = self.add_weight(
                name="history",
                shape=(self.num_users, self.history_length),
                dtype=tf.int32,
                initializer=tf_keras.initializers.Constant(-1),
                trainable=False,
            )
        super().build(input_shape)

    def set_history(self, history) -> None:
        """Assigns [num_users, history_length] item indices, -1 for padding."""
        if not self.built:
            self.build(None)
        self.history.assign(tf.convert_to_tensor(history, tf.int32))

    def user_vector(self, user: tf.Tensor, item: tf.Tensor | None = None) -> tf.Tensor:
        """[batch_size, embedding_dim] user vectors (with the history mean, if any).

        Args:
          user: [batch_size] user indices.
          item: [batch_size] items scored against each user; with
            `exclude_self`, each is left out of its user's history mean.
        """
        u = self.user_embedding(user)
        if not self.history_length:
            return u
        history = tf.gather(self.history, user)
        valid = history >= 0
        if self.exclude_self and item is not None:
            valid &= history != tf.cast(item, history.dtype)[:, None]
        weights = tf.cast(valid, u.dtype)[..., None]
        pooled = tf.reduce_sum(self.item_vector(tf.maximum(history, 0)) * weights, axis=1)
        return u + pooled / tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)

    def item_vector(self, item: tf.Tensor) -> tf.Tensor:
        """The item table's rows at `item` (indices of any shape).

        With `dense_item_reads`, gathered from a dense read of the table. A
        gather on the variable itself switches TensorFlow's variable to
        copy-on-read, after which every dense read of it copies the whole
        table: a served index that is this table (one matmul per request)
        would copy it per request (10M x 4 floats: 23 ms of 89 per
        `recommend`). Training keeps the variable's gather, whose gradient
        updates only the rows looked up.
        """
        if self.dense_item_reads and self.item_embedding.built:
            return tf.gather(tf.convert_to_tensor(self.item_embedding.embeddings), item)
        return self.item_embedding(item)

    def lookup(self, user: tf.Tensor, item: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        u = self.user_vector(user, item)
        i = self.item_vector(item)
        if self.l2:
            self.add_loss(
                self.l2
                * (tf.reduce_sum(tf.square(u)) + tf.reduce_sum(tf.square(i)))
                / tf.cast(tf.maximum(tf.shape(u)[0], 1), u.dtype)
            )
        return u, i

    def get_config(self):
        config = super().get_config()
        config.update(
            num_users=self.num_users,
            num_items=self.num_items,
            embedding_dim=self.embedding_dim,
            init_stddev=self.init_stddev,
            l2=self.l2,
            seed=self.seed,
            history_length=self.history_length,
            exclude_self=self.exclude_self,
        )
        return config


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class MatrixFactorization(_EmbeddingPair):
    """The MF part: element-wise product of user and item factors.

    Call args:
      inputs: (user [batch_size] int32, item [batch_size] int32).

    Returns:
      [batch_size, embedding_dim] products p_u * q_i.
    """

    def call(self, inputs):
        user, item = inputs
        u, i = self.lookup(user, item)
        return u * i

    def grid(self, users: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
        """[U, I, embedding_dim] products for every (user, item) pair of two lists."""
        return self.user_vector(users)[:, None, :] * self.item_vector(items)[None, :, :]


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class FeedbackTower(_EmbeddingPair):
    """One behavior's M-MLP branch: its own user and item embeddings and a ReLU tower.

    With `signal_columns`, the branch also takes those columns of the pair's
    graph signals (`pipelines.graph_signals`) beside the ids: its first layer
    reads [u; i; s].

    Call args:
      inputs: (user [batch_size] int32, item [batch_size] int32), and with
        signal columns the pairs' signals [batch_size, num_signals] third.

    Returns:
      [batch_size, output_dim]: the last ReLU layer, or the concatenated
      embeddings when `num_layers` is 0.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        embedding_dim: int,
        *,
        num_layers: int = 2,
        signal_columns: tuple[int, ...] = (),
        **kwargs,
    ):
        super().__init__(num_users, num_items, embedding_dim, **kwargs)
        if signal_columns and not num_layers:
            raise ValueError("a branch takes graph signals through its layers: mlp_layers >= 1.")
        self.signal_columns = tuple(int(c) for c in signal_columns)
        self.num_layers = num_layers
        self.dense_layers = [
            tf_keras.layers.Dense(
                units,
                activation="relu",
                kernel_initializer=_normal(self.init_stddev, None),
                name=f"relu_{k}",
            )
            for k, units in enumerate(tower_units(embedding_dim, num_layers))
        ]

    @property
    def output_dim(self) -> int:
        return self.embedding_dim if self.num_layers else 2 * self.embedding_dim

    def call(self, inputs):
        user, item = inputs[0], inputs[1]
        u, i = self.lookup(user, item)
        parts = [u, i]
        if self.signal_columns:
            parts.append(tf.cast(tf.gather(inputs[2], self.signal_columns, axis=-1), u.dtype))
        x = tf.concat(parts, axis=-1)
        for layer in self.dense_layers:
            x = layer(x)
        return x

    def grid(self, users: tf.Tensor, items: tf.Tensor, signals: tf.Tensor | None = None):
        """The branch for every (user, item) pair of two lists, without repeating work.

        The first layer is linear in [u; i; s], so W [u; i; s] + b =
        (W_u u + b) + W_i i + W_s s: the user half is computed once per user,
        the item half once per item, the signals' part per pair, and only
        their sum goes through the ReLU per pair.

        Args:
          users: [U] user indices.
          items: [I] item indices.
          signals: [U, I, num_signals] the pairs' graph signals (a branch
            with signal columns needs them).

        Returns:
          [U, I, output_dim], equal to calling the layer on every pair.
        """
        return self.rows(self.user_vector(users), items[None, :], signals)

    def rows(self, u: tf.Tensor, items: tf.Tensor, signals: tf.Tensor | None = None):
        """The branch for each row's user vector against that row's items.

        Args:
          u: [U, embedding_dim] user vectors (`user_vector`, or a new user's).
          items: [U, I] item indices per row, or [1, I] shared by every row.
          signals: [U, I, num_signals] the pairs' graph signals.

        Returns:
          [U, I, output_dim]; `grid` is the shared-items case.
        """
        return tf.transpose(self.planes(u, items, signals), [1, 2, 0])

    def planes(self, u: tf.Tensor, items: tf.Tensor, signals: tf.Tensor | None = None):
        """`rows` unit by unit: [output_dim, U, I], each unit's [U, I] plane contiguous.

        The grid's work is per pair and per unit: in this layout the first
        layer's sum is a [U, 1] column plus a [1, I] row per unit, and each
        later layer one [out, in] x [in, U * I] product, with no
        [U, I, units] tensor broadcast along its middle axis (about twice
        as fast on CPU, forward and backward: benchmarks/README.md).
        """
        i = self.item_vector(items)
        if not self.dense_layers:
            shape = [self.embedding_dim, tf.shape(u)[0], tf.shape(i)[1]]
            return tf.concat(
                [
                    tf.broadcast_to(tf.transpose(u)[:, :, None], shape),
                    tf.broadcast_to(tf.transpose(i, [2, 0, 1]), shape),
                ],
                axis=0,
            )
        first = self.dense_layers[0]
        d = self.embedding_dim
        # The variables in the vectors' dtype (a mixed-precision policy's compute dtype).
        kernel, bias = tf.cast(first.kernel, u.dtype), tf.cast(first.bias, u.dtype)
        user_half = tf.matmul(kernel[:d], u, transpose_a=True, transpose_b=True)
        user_half += bias[:, None]  # [units, U]
        item_half = tf.tensordot(kernel[d : 2 * d], i, axes=[[0], [2]])  # [units, U|1, I]
        x = user_half[:, :, None] + item_half
        if self.signal_columns:
            if signals is None:
                raise ValueError(f"branch {self.name!r} takes graph signals: pass the grid's.")
            s = tf.cast(tf.gather(signals, self.signal_columns, axis=-1), x.dtype)
            x += tf.tensordot(kernel[2 * d :], s, axes=[[0], [2]])
        x = tf.nn.relu(x)
        for layer in self.dense_layers[1:]:
            x = dense_planes(layer, x)
        return x

    def get_config(self):
        config = super().get_config()
        config.update(num_layers=self.num_layers, signal_columns=list(self.signal_columns))
        return config


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class GradientGate(tf_keras.layers.Layer):
    """Identity forward; scales the gradient of each example by its gate.

    A supportive branch passed through this gate learns only from the
    examples whose gate is 1: the backward pass multiplies its gradient by
    the mask, the forward pass is unchanged, so serving needs no mask.

    Call args:
      inputs: (x [batch_size, d], mask [batch_size] in {0, 1}).

    Returns:
      x, with d(output)/dx = mask.
    """

    def call(self, inputs):
        return gate_gradient(*inputs)


def gate_gradient(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Identity forward; the gradient of each x[..., :] scaled by mask[...].

    Args:
      x: [..., d] values (a batch of pairs, or a [users, items] grid of them).
      mask: [...] 0/1 gates of the pairs.
    """
    mask = tf.cast(mask, x.dtype)[..., None]
    return tf.stop_gradient(x) + mask * (x - tf.stop_gradient(x))


@tf.custom_gradient
def _masked_gradient(x: tf.Tensor, mask: tf.Tensor):
    def grad(dy):
        return dy * mask, None

    return tf.identity(x), grad


def gate_planes(x: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """`gate_gradient` for unit-major planes: x [units, U, I], mask [U, I].

    One multiply in the backward pass and none in the forward one.
    """
    return _masked_gradient(x, tf.cast(mask, x.dtype)[None])


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class Fusion(tf_keras.layers.Layer):
    """The fusion layer: a fully connected ReLU layer over the concatenated branches.

    Call args:
      inputs: a list of [batch_size, d_t] branch outputs.

    Returns:
      [batch_size, units].
    """

    def __init__(self, units: int, *, init_stddev: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.init_stddev = init_stddev
        self.dense = tf_keras.layers.Dense(
            units, activation="relu", kernel_initializer=_normal(init_stddev, None), name="dense"
        )

    def call(self, inputs):
        return self.dense(tf.concat(list(inputs), axis=-1))

    def planes(self, planes: list[tf.Tensor]) -> tf.Tensor:
        """The layer on unit-major branch planes ([d_t, U, I] each): [units, U, I]."""
        return dense_planes(self.dense, tf.concat(list(planes), axis=0))

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, init_stddev=self.init_stddev)
        return config


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class ScoreHead(tf_keras.layers.Layer):
    """The head: one fully connected layer over [MF output, M-MLP output] to a logit.

    The sigmoid of the logit is the score. The kernel's first `mf_dim` rows
    weight the MF part, which keeps the MF contribution factorized:
    `sum_k w_k p_uk q_ik = <p_u * w, q_i>` (the retrieval towers use this).

    Call args:
      inputs: a list of [batch_size, d] parts (MF first when present).

    Returns:
      [batch_size] logits.
    """

    def __init__(self, *, init_stddev: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.init_stddev = init_stddev
        # Sublayers do not inherit the parent's dtype policy: pass it on, so a
        # float32 head stays float32 under a mixed-precision policy.
        self.dense = tf_keras.layers.Dense(
            1, kernel_initializer=_normal(init_stddev, None), name="dense", dtype=self.dtype_policy
        )

    def call(self, inputs):
        x = tf.concat(list(inputs), axis=-1) if len(inputs) > 1 else inputs[0]
        return tf.squeeze(self.dense(x), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(init_stddev=self.init_stddev)
        return config


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class BehaviorBias(tf_keras.layers.Layer):
    """A learned logit offset per supportive behavior the user had with the item.

    Call args:
      flags: [..., S] 0/1 float flags of the S supportive behaviors of each
        (user, item) pair in the training data (the gate's columns 1..S).

    Returns:
      [...] the logit offsets `flags @ w` (w starts at 0).
    """

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(int(input_shape[-1]),), initializer="zeros", trainable=True
        )
        super().build(input_shape)

    def call(self, flags):
        return tf.tensordot(tf.cast(flags, self.kernel.dtype), self.kernel, axes=1)


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class BranchScores(tf_keras.layers.Layer):
    """Auxiliary score heads, one linear unit per supportive branch.

    Call args:
      inputs: a list of S [batch_size, d_t] supportive branch outputs.

    Returns:
      [batch_size, S] logits.
    """

    def __init__(self, num_branches: int, *, init_stddev: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        self.num_branches = num_branches
        self.init_stddev = init_stddev
        self.heads = [
            tf_keras.layers.Dense(
                1,
                kernel_initializer=_normal(init_stddev, None),
                name=f"head_{t}",
                dtype=self.dtype_policy,
            )
            for t in range(num_branches)
        ]

    def call(self, inputs):
        return tf.concat([head(x) for head, x in zip(self.heads, inputs)], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(num_branches=self.num_branches, init_stddev=self.init_stddev)
        return config
