"""Command line: train, evaluate, export.

    python -m mmrec_tf.main --flagfile=mmrec_tf/configs/quickstart.flags

The flags are generated from the config dataclasses (`mmrec_tf.cli`); the
run itself is the library call `mmrec_tf.run.run(config)`.

A mistake in the command, the data or a run's files (an error this project
raises, naming the file, field or flag and the fix) prints as one line and
exits with status 2; `--show_traceback` prints its traceback too. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging

from mmrec_tf import cli

# Where the project's own code lives: an error raised there is a message to
# the user; one raised in a library underneath is a bug.
_OWN = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), name) + os.sep
    for name in ("mmrec_tf", "pipelines", "export")
)
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RuntimeError)


def user_error(error: BaseException) -> bool:
    """Whether `error` is a message for the user: one of ours, raised by our code."""
    if not isinstance(error, _USER_ERRORS):
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and os.path.realpath(frames[-1].filename).startswith(_OWN)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    try:
        config = cli.config_from_flags(flags.FLAGS)
        # A cluster strategy connects before anything lists devices.
        cli.start_tensorflow(
            list_devices=config.train.distribution_strategy
            not in ("multi_worker", "parameter_server")
        )
        from mmrec_tf import run as run_lib

        run_lib.run(config, name=flags.FLAGS.dataset_name)
    except Exception as error:
        if not user_error(error) or flags.FLAGS.show_traceback:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def entry_point():
    cli.define_flags(flags.FLAGS)
    flags.DEFINE_bool(
        "show_traceback", False, "Print the traceback of an error in the command or the data too."
    )
    app.run(main)


if __name__ == "__main__":
    sys.exit(entry_point())
