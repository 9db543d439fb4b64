"""Replay throughput: ``observer replay`` of a full simulated trading day beside a bare aiokafka consumer
reading the same range, in one run.

    python bench/bench_replay.py [--ticks 300000] [--symbols 41] [--workers 2]

Needs the local broker and PostgreSQL (started here if they are not running); traffic stays on 127.0.0.1.

A fresh topic prefix's ``kis.ticks.raw`` is filled with the trades of a simulated KRX session (the latest
regular one, 09:00-15:30 KST, so the broker's retention keeps them) in the ``--symbols`` most traded
symbols (41: one app key's WebSocket slots), thinned evenly to ``--ticks`` trades over the whole day.
Then, each timed:

- bare: an aiokafka consumer without a group reads that day's range (offsets for times, then every record
  to the end of the range, values not decoded): the floor of any replay, Kafka and the client alone;
- replay: ``observer replay --date D`` as users run it: the copy of the window into the replay's topics,
  the worker processes (fresh app id, scanner off), the sink of its outputs, the wait until all is
  committed, and the comparison; wall time from the command's start to its summary.

Target: the replay under 60 s for ~300,000 ticks on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psycopg
from psycopg import sql

from app.config import Settings, load_settings
from app.kafka_read import new_reader, read_ranges, time_window
from app.krx import KST, latest_session, today_kst
from app.records import default_codec
from app.sim.market import Market
from app.topics import apply_topics, delete_topics
from bench import report  # rows for make bench (bench/run_all.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_worker import fill, kafka_tick  # the same ticks and producer fill as the worker bench

TARGET_S = 60.0


def session_ticks(day: dt.date, n: int, symbols: int) -> list[tuple[bytes, bytes, int]]:
    """(key, Avro RawTick, timestamp ms) of a whole session's trades in the ``symbols`` most traded symbols,
    every k-th kept so that about ``n`` remain (cumulative volumes stay true: a kept trade says what it said)."""
    market = Market(seed=1, business_date=day)
    wanted = {s.code for s in sorted(market.symbols, key=lambda s: -s.base_rate_per_min)[:symbols]}
    t = int(dt.datetime.combine(day, dt.time(9, 0), KST).timestamp()) * 1_000_000
    close = int(dt.datetime.combine(day, dt.time(15, 30), KST).timestamp()) * 1_000_000
    market.start_at(t)
    trades = []
    while t < close:
        t += 60_000_000
        trades.extend(trade for trade in market.advance_to(min(t, close)) if trade.symbol in wanted)
    step = max(1, len(trades) // n)
    codec = default_codec()
    return [kafka_tick(trade, seq, codec) for seq, trade in enumerate(trades[::step], start=1)]


async def bare_read(settings: Settings, day: dt.date) -> tuple[int, float]:
    start = time.monotonic()
    reader = new_reader(settings.bootstrap_servers)
    await reader.start()
    n = 0
    try:
        start_ms = int(dt.datetime.combine(day, dt.time(0), KST).timestamp() * 1000)
        ranges = await time_window(reader, settings.topic("kis.ticks.raw"), start_ms, start_ms + 86_400_000)
        async for _ in read_ranges(reader, settings.topic("kis.ticks.raw"), ranges):
            n += 1
    finally:
        await reader.stop()
    return n, time.monotonic() - start


def replay(settings: Settings, day: dt.date, name: str, workers: int, root: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "OBSERVER_TOPIC_PREFIX": settings.topic_prefix,
        "OBSERVER_REPLAY_ROOT": str(root),
    }
    args = ["replay", "--date", day.isoformat(), "--into", name, "--workers", str(workers), "--json"]
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, check=False, timeout=1800
    )
    wall = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"observer replay failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary: dict[str, Any] = orjson.loads(done.stdout)
    summary["command_wall_s"] = wall
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ticks", type=int, default=300_000, help="ticks of the day (default 300000)")
    parser.add_argument("--symbols", type=int, default=41, help="symbols trading (default 41: one app key's slots)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the replay (default 2)")
    args = parser.parse_args()

    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres

    base = load_settings()
    print(LocalKafka(base).start(), flush=True)
    print(LocalPostgres(base).start(), flush=True)
    day = latest_session(today_kst() - dt.timedelta(days=1), regular=True)
    settings = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:8]}."})
    root = Path(tempfile.mkdtemp(prefix="observer-bench-replay-"))
    name = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(apply_topics(settings))
        t0 = time.monotonic()
        records = session_ticks(day, args.ticks, args.symbols)
        print(f"generated {len(records):,} RawTicks of {day} 09:00-15:30 KST in {time.monotonic() - t0:.1f} s")
        print(f"filled {settings.topic('kis.ticks.raw')} in {asyncio.run(fill(settings, records)):.1f} s", flush=True)
        n_bare, bare_s = asyncio.run(bare_read(settings, day))
        print(f"  bare consumer: {n_bare:,} records in {bare_s:.2f} s", flush=True)
        result = replay(settings, day, name, args.workers, root)
        print(
            f"  replay: {result['ticks']:,} ticks in {result['command_wall_s']:.1f} s {result['stages_s']}", flush=True
        )
    finally:
        asyncio.run(delete_topics(settings))
        with psycopg.connect(base.postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        shutil.rmtree(root, ignore_errors=True)

    wall = result["command_wall_s"]
    print()
    print(f"machine: {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores")
    print(f"{'':24s} {'ticks':>9s} {'wall s':>8s} {'ticks/s':>10s}")
    print(f"{'bare aiokafka consumer':24s} {n_bare:>9,} {bare_s:>8.1f} {n_bare / bare_s:>10,.0f}")
    print(f"{'observer replay':24s} {result['ticks']:>9,} {wall:>8.1f} {result['ticks'] / wall:>10,.0f}")
    print(f"replay against the bare read: {bare_s / wall:.3f} of its rate ({wall / bare_s:.0f}x the time)")
    print(
        f"replay stages: {', '.join(f'{k} {v:.1f} s' for k, v in result['stages_s'].items())}; "
        f"{result['outputs']['observer.surges']['replay']:,} surges, "
        f"{result['outputs']['slot.decisions']['replay']:,} slot decisions"
    )
    print(f"target: under {TARGET_S:.0f} s: {'met' if wall < TARGET_S else 'NOT met'}")
    ticks_s = result["ticks"] / wall
    report.row(
        "replay",
        f"observer replay, {result['ticks']:,} ticks",
        ticks_s,
        "ticks/s",
        "bare aiokafka consumer",
        n_bare / bare_s,
    )
    report.row("replay", "replay wall time", wall, "s", "aim", TARGET_S, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
