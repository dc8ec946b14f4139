"""tf.data pipelines: readers, schema, vocabularies, splits, the training index, negatives, evaluation candidates, synthetic data."""
