"""Adam with lazy (row-sparse) updates of embedding tables.

Keras Adam decays the first and second moments of a whole embedding table on
every step, even when the gradient touches a few rows (its sparse branch
calls `m.assign_add(-m * (1 - beta_1))` on the full table). On a catalog of
hundreds of thousands of items that makes each step cost the table's size.
`LazyAdam` updates the moments and the weights of the touched rows only, as
TensorFlow Addons' LazyAdam did; dense gradients follow Keras Adam exactly.
We subclass the Keras 2 optimizer rather than take TensorFlow Addons (no
longer maintained, no build for current TensorFlow) or pair two optimizers in
TFRS's CompositeOptimizer (it would leave the embedding rows with a different
update rule from the paper's Adam).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras

from mmrec_tf import config as config_lib


@tf_keras.utils.register_keras_serializable(package="mmrec_tf")
class LazyAdam(tf_keras.optimizers.Adam):
    """Adam whose sparse (IndexedSlices) updates touch only the gradient's rows."""

    def update_step(self, gradient, variable):
        if not isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        dtype = variable.dtype
        lr = tf.cast(self.learning_rate, dtype)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        alpha = lr * tf.sqrt(1 - tf.pow(beta_2, step)) / (1 - tf.pow(beta_1, step))
        key = self._var_key(variable)
        m = self._momentums[self._index_dict[key]]
        v = self._velocities[self._index_dict[key]]
        # Rows repeated in the batch are summed first, as a dense gradient would be.
        rows, position = tf.unique(gradient.indices)
        values = tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])
        m_rows = beta_1 * tf.gather(m, rows) + (1 - beta_1) * values
        v_rows = beta_2 * tf.gather(v, rows) + (1 - beta_2) * tf.square(values)
        m.scatter_update(tf.IndexedSlices(m_rows, rows))
        v.scatter_update(tf.IndexedSlices(v_rows, rows))
        # Gather-subtract-assign: the same arithmetic as `scatter_sub`, whose
        # CPU kernel measured several times slower than a gather plus an
        # assigning scatter (benchmarks/results/profile_training.md).
        step_rows = alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon)
        variable.scatter_update(tf.IndexedSlices(tf.gather(variable, rows) - step_rows, rows))


def build_optimizer(config: config_lib.TrainConfig) -> tf_keras.optimizers.Optimizer:
    """LazyAdam at `config.learning_rate` (sparse embedding rows; plain Keras
    Adam updates every row of a table each step)."""
    return LazyAdam(learning_rate=config.learning_rate)
