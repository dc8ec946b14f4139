"""Command line: train, evaluate, export.

    python -m mmrec_tf.main --flagfile=mmrec_tf/configs/quickstart.flags

The flags are generated from the config dataclasses (`mmrec_tf.cli`); the
run itself is the library call `mmrec_tf.run.run(config)`.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from mmrec_tf import cli


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    config = cli.config_from_flags(flags.FLAGS)
    cli.start_tensorflow(list_devices=config.train.distribution_strategy != "multi_worker")
    from mmrec_tf import run as run_lib

    run_lib.run(config, name=flags.FLAGS.dataset_name)


def entry_point():
    cli.define_flags(flags.FLAGS)
    app.run(main)


if __name__ == "__main__":
    sys.exit(entry_point())
