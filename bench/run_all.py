"""``make bench``: every benchmark of the project in turn, then one table of what each measured beside the
baseline it measured in the same run.

    python bench/run_all.py [--only parser,bridge,...] [--log DIR]

Each bench runs as its own process (as it runs alone, with its defaults), its output in ``DIR/<name>.log``
and its last lines echoed; it appends its result rows (``bench/report.py``) to a file this runner reads.
Needs the local stack (the benches start it if it is not running); traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
BENCHES = {
    "parser": ["bench_parser.py"],
    "bridge": ["bench_bridge.py"],
    "worker": ["bench_worker.py"],
    "sink": ["bench_sink.py"],
    "latency": ["bench_latency.py"],
    "surge_latency": ["bench_surge_latency.py"],
    "replay": ["bench_replay.py"],
}


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("s", "ms"):
        return f"{value:,.2f} {unit}"
    return f"{value:,.0f} {unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument("--log", type=Path, default=None, help="where each bench's output goes (a temp dir)")
    args = parser.parse_args()
    chosen = [b for b in args.only.split(",") if b] or list(BENCHES)
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown bench {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    logs = args.log or Path(tempfile.mkdtemp(prefix="observer-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    results = logs / "results.jsonl"
    results.unlink(missing_ok=True)
    failed: list[str] = []  # exited non-zero: a crash if it left no result rows, else a target it missed
    started = time.monotonic()
    for name in chosen:
        t0 = time.monotonic()
        print(f"== {name} (log {logs / (name + '.log')})", flush=True)
        with open(logs / f"{name}.log", "wb") as log:
            done = subprocess.run(
                [sys.executable, str(HERE / BENCHES[name][0]), *BENCHES[name][1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "BENCH_RESULTS": str(results)},
                check=False,
            )
        tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-4:]
        for line in tail:
            print(f"   {line}")
        print(f"   {time.monotonic() - t0:.0f} s, exit {done.returncode}", flush=True)
        if done.returncode != 0:
            failed.append(name)
    rows = [orjson.loads(line) for line in results.read_bytes().splitlines()] if results.exists() else []
    crashed = [name for name in failed if not any(r["bench"].replace(" ", "_") == name for r in rows)]
    missed = [name for name in failed if name not in crashed]
    print()
    machine = f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores"
    print(f"benchmarks: {machine}; {time.monotonic() - started:.0f} s in all")
    header = f"{'bench':<14} {'measured':<42} {'value':>18}   {'baseline (same run)':<34} {'value':>18} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(
            f"{r['bench']:<14} {r['measure']:<42} {_fmt(r['value'], r['unit']):>18}   {r['baseline']:<34} "
            f"{_fmt(r['baseline_value'], r['unit']):>18} {ratio:>7}"
        )
    print("ratio: value / baseline (for times, lower is better)")
    if missed:
        print(f"missed their own targets (exit 1, results above): {', '.join(missed)}; see their logs")
    if crashed:
        print(f"FAILED without results: {', '.join(crashed)}; see their logs")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
