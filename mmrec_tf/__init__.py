"""mmrec_tf: multi-feedback top-N recommendation in TensorFlow.

Importing the package selects Keras 2 (`tf_keras`), which TensorFlow
Recommenders needs. The variable must be set before TensorFlow is imported;
if TensorFlow was imported first and `tf.keras` is Keras 3, the import fails
with an error that names the fix.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def _check_keras_version() -> None:
    """Raises ImportError if TensorFlow was loaded with Keras 3."""
    import sys

    if "tensorflow" not in sys.modules:
        return
    import tensorflow as tf

    keras_module = getattr(tf.keras, "__name__", "")
    if not keras_module.startswith("tf_keras"):
        raise ImportError(
            f"mmrec_tf needs Keras 2 (tf_keras), but tf.keras is {keras_module!r}. "
            "Set TF_USE_LEGACY_KERAS=1 before TensorFlow is imported "
            "(or import mmrec_tf before tensorflow), and install tf-keras."
        )


_check_keras_version()
