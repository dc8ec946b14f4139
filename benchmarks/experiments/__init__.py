"""The experiment lab: the paper's tables, figure and ablations as named suites.

    python -m benchmarks.experiments --suite=table4 --dataset=taobao_cml \\
        --data_dir=../shared/data --seeds=3

A suite is a list of arms (a method or a setting, as overrides of the
dataset's flagfile) run for several seeds. Each run is `python -m
mmrec_tf.main` in its own process and folder under `--runs_dir`; a run whose
results.json exists is not run again, so an interrupted suite resumes where it
stopped. Arms with a tuning grid (table4) first run every grid point with
seed 0 and pick, on the validation cases only, the best point for each
protocol (validation sampled HR@10 for the sampled table, validation full
HR@10 for the full-ranking one); the other seeds then run the chosen points.
Every method gets a grid of the same size. Test metrics are reported as the
mean over seeds with the standard error across seeds and the cases per run,
in `<out_dir>/<dataset>/<suite>.md` and `.json`, with PNG plots when
matplotlib is installed (the `bench` extra).

Modules: `suites` (the arms of each suite and the published figures),
`running` (one run per process, keyed by its resolved config; suites with
tuning grids and seeds), `reporting` (tables and plots);
`matched_validation`, a research variant of the validation carve, runs on its
own (`python -m benchmarks.experiments.matched_validation`). Run it from the
repository root. The library never imports this package.
"""

from __future__ import annotations

from .reporting import NO_PLOT
from .reporting import format_metric
from .reporting import pyplot
from .reporting import write_report
from .running import CONFIGS
from .running import MissingRun
from .running import Runner
from .running import config_key
from .running import flag_args
from .running import run_suite
from .running import select_arms
from .running import slug
from .running import summarize
from .suites import _PAPER_MMF
from .suites import ALS_BAR
from .suites import BEHAVIORS
from .suites import PAPER
from .suites import PUBLISHED
from .suites import SUITES
from .suites import Arm

__all__ = [
    "ALS_BAR",
    "Arm",
    "BEHAVIORS",
    "CONFIGS",
    "MissingRun",
    "NO_PLOT",
    "PAPER",
    "PUBLISHED",
    "Runner",
    "SUITES",
    "_PAPER_MMF",
    "config_key",
    "flag_args",
    "format_metric",
    "pyplot",
    "run_suite",
    "select_arms",
    "slug",
    "summarize",
    "write_report",
]
