"""tf.data pipelines: readers, schema, vocabularies, splits, samplers, synthetic data."""
