"""Result rows of a benchmark for ``bench/run_all.py`` (``make bench``): each measured value beside the
baseline it is measured against in the same run.

A bench calls :func:`row` for each result; when ``BENCH_RESULTS`` names a file (run_all sets it), the row
is appended to it as one JSON line. Run alone, a bench only prints its own table.
"""

from __future__ import annotations

import os

import orjson


def row(
    bench: str,
    measure: str,
    value: float,
    unit: str,
    baseline: str,
    baseline_value: float | None,
    higher_is_better: bool = True,
) -> None:
    path = os.environ.get("BENCH_RESULTS")
    if not path:
        return
    ratio = None if not baseline_value else value / baseline_value
    doc = {
        "bench": bench,
        "measure": measure,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "higher_is_better": higher_is_better,
    }
    with open(path, "ab") as out:
        out.write(orjson.dumps(doc) + b"\n")
