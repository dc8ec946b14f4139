"""Test set-up: Keras 2, two logical CPU devices, and shared fixtures."""

import os
import tempfile

import pytest
import tensorflow as tf

import mmrec_tf  # noqa: F401  (selects Keras 2 before TensorFlow loads)

# The ALS cache (`MMREC_CACHE_DIR`) of every test, subprocesses
# included, in a folder of this session, never the user's ~/.cache.
os.environ["MMREC_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmrec_test_cache_")

# Two logical CPUs so MirroredStrategy can be tested without a GPU. This must
# run before TensorFlow initializes its devices.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

# TensorFlow's Python warnings (e.g. about checkpoints deleted half-restored by
# the damaged-checkpoint tests) would print after pytest's summary.
tf.get_logger().setLevel("ERROR")

SHARED_DATA = os.environ.get(
    "MMREC_DATA_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
)


@pytest.fixture
def shared_data():
    """The real datasets' folder; tests that need it skip when it is missing."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set MMREC_DATA_DIR)")
    return SHARED_DATA
