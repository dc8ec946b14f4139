"""`python -m benchmarks.experiments --suite=... --dataset=...` (from the repository root)."""

from __future__ import annotations

from absl import app
from absl import flags

from . import reporting
from . import running
from . import suites


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    fv = flags.FLAGS
    runner = running.Runner(
        dataset=fv.dataset,
        data_dir=fv.data_dir,
        runs_dir=fv.runs_dir,
        extra_flags=fv.extra_flags,
        report_only=fv.report_only,
    )
    command = (
        f"python -m benchmarks.experiments --suite={','.join(fv.suite)} --dataset={fv.dataset} "
        f"--seeds={fv.seeds}" + ("" if fv.tune else " --notune")
    )
    command += "".join(f" --extra_flags={x}" for x in fv.extra_flags)
    for suite in fv.suite:
        if suite not in suites.SUITES:
            raise app.UsageError(
                f"--suite={suite} is unknown: use some of {sorted(suites.SUITES)}."
            )

    def write(report):
        if fv.arms:
            # A subset would overwrite the whole suite's report: leave that to
            # --report_only once every process has finished.
            return
        print("wrote " + ", ".join(reporting.write_report(report, fv.out_dir, command)))

    for suite in fv.suite:
        try:
            report = running.run_suite(
                suite, runner, seeds=fv.seeds, tune=fv.tune, on_arm=write, only=fv.arms
            )
        except ValueError as e:
            raise app.UsageError(str(e)) from e
        write(report)  # once more: an incomplete suite says where it stopped
    if fv.arms:
        print("ran the selected arms; write the reports with --report_only")


def define_runner_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """The flags of `python -m benchmarks.experiments` (the experiment runner)."""
    f = {"flag_values": fv}
    flags.DEFINE_list(
        "suite",
        ["table4"],
        "Suites to run: table4, table2, table3, figure3, ablations (smoke: the runner's own test).",
        **f,
    )
    flags.DEFINE_string("dataset", "taobao_cml", "A flagfile name under mmrec_tf/configs.", **f)
    flags.DEFINE_string(
        "data_dir", "../shared/data", "Folder holding <dataset>/interactions.tsv.gz.", **f
    )
    flags.DEFINE_string("runs_dir", "runs/experiments", "Where each run's folder goes.", **f)
    flags.DEFINE_string("out_dir", "benchmarks/results", "Where <dataset>/<suite>.md goes.", **f)
    flags.DEFINE_integer("seeds", 3, "Seeds per reported setting.", **f)
    flags.DEFINE_boolean("tune", True, "Tune grids on validation (else take the first point).", **f)
    flags.DEFINE_boolean(
        "report_only", False, "Write the reports of finished arms; run nothing.", **f
    )
    flags.DEFINE_multi_string(
        "extra_flags", [], "A flag added to every run, e.g. --extra_flags=--epochs=5.", **f
    )
    flags.DEFINE_multi_string(
        "arms",
        [],
        "Run only the arms whose label contains this (repeatable, case-insensitive), "
        "e.g. --arms=BPR --arms=NCF: two processes can split a suite; reports are then "
        "written by a later --report_only.",
        **f,
    )


def run():
    define_runner_flags(flags.FLAGS)
    app.run(main)


if __name__ == "__main__":
    run()
