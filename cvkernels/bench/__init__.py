"""Benchmark harness behind ``python -m cvkernels bench`` (DESIGN.md section 6).

    from cvkernels.bench import main, run
    main(["batch_norm", "--quick", "--out", "/tmp/res"])   # the CLI
    run(families=["batch_norm"], quick=True)               # the same from Python

Suites live in cvkernels/bench/<family>.py and are registered in ``harness.SUITES``.
"""
from .harness import (CSV_COLUMNS, MODES, SUITES, Case, Failure, Report, Result, collect_cases,
                      list_cases, main, measure_peaks, plot_family, read_csv, run, run_cases,
                      summarize, time_fn, write_csv)

__all__ = [
    "CSV_COLUMNS", "MODES", "SUITES", "Case", "Failure", "Report", "Result", "collect_cases",
    "list_cases", "main", "measure_peaks", "plot_family", "read_csv", "run", "run_cases",
    "summarize", "time_fn", "write_csv",
]
