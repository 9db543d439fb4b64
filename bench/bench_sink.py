"""Sink throughput beside a bare COPY of the same rows into the same server, in one run.

    python bench/bench_sink.py [--ticks 200000] [--batch 5000] [--e2e 60000]

Needs the local stack (started here if it is not running); traffic stays on 127.0.0.1. The ticks are a
simulated KRX morning in the 82 most traded symbols (what two app keys' slots carry), as Avro RawTicks.

Measured, each over the same ticks in batches of ``--batch``, each into a fresh schema:

- bare COPY: the rows, already built, binary-copied into an unpartitioned table without keys (the floor);
- sink Postgres: the same rows through ``PgStore.write``: COPY into the staging table, insert-on-conflict
  into the day partition, offsets in the same transaction;
- sink JSONL: the scalp lines, already rendered, through ``JsonlArchive.write`` (append, fsync, commit record);
- sink writer: ``SinkWriter.write_batch`` on the Avro records: decode, render, both stores (what a batch
  costs the sink once Faust has handed it over);
- end to end: ``observer sink`` as users run it over ``--e2e`` ticks pre-filled in Kafka, from its first
  row to its last (Faust's consumer included). 0 skips it.

Aims: sink rows/s >= 100,000 and >= 0.5 of bare COPY; JSONL lines/s >= 100,000.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import sql

from app.config import Settings, load_settings
from app.records import default_codec
from app.sink import lines as jsonl
from app.sink.archive import JsonlArchive
from app.sink.postgres import TABLE_COLUMNS, PgStore, migrate, tick_row
from app.sink.render import KINDS
from app.sink.writer import InputRecord, PgConnection, SinkMetrics, SinkWriter
from app.topics import apply_topics, delete_topics, load_topics
from bench import report  # rows for make bench (bench/run_all.py)
from bench.bench_worker import fill, morning_ticks

AIM_ROWS, AIM_RATIO, AIM_LINES = 100_000, 0.5, 100_000
TOPIC = "kis.ticks.raw"
TICK_COLUMNS = [name for name, _ in TABLE_COLUMNS["ticks"]]
TICK_TYPES = [kind for _, kind in TABLE_COLUMNS["ticks"]]


def batches(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def fresh_schema(conn: psycopg.AsyncConnection[Any]) -> str:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    await migrate(conn, schema)
    return schema


async def bare_copy(conn: psycopg.AsyncConnection[Any], schema: str, rows: list[tuple[Any, ...]], size: int) -> float:
    table = sql.Identifier(schema, "bare")
    await conn.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(table, sql.Identifier(schema, "ticks"))
    )
    columns = sql.SQL(", ").join(map(sql.Identifier, TICK_COLUMNS))
    start = time.perf_counter()
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(table, columns)
    for chunk in batches(rows, size):
        async with conn.transaction(), conn.cursor().copy(copy_in) as copy:
            copy.set_types(TICK_TYPES)
            for row in chunk:
                await copy.write_row(row)
    return time.perf_counter() - start


async def sink_postgres(
    conn: psycopg.AsyncConnection[Any], schema: str, rows: list[tuple[Any, ...]], size: int
) -> float:
    store = PgStore(conn, schema, "bench")
    start = time.perf_counter()
    offset = 0
    for chunk in batches(rows, size):
        offset += len(chunk)
        await store.write({"ticks": chunk}, {(TOPIC, 0): offset})
    return time.perf_counter() - start


def sink_jsonl(root: Path, ticks: list[dict[str, Any]], size: int) -> float:
    archive = JsonlArchive(root)
    archive.open()
    rendered = [(jsonl.scalp_path(t), jsonl.scalp_line(t, None, None)) for t in ticks]
    start = time.perf_counter()
    offset = 0
    for chunk in batches(rendered, size):
        files: dict[str, list[bytes]] = {}
        for path, line in chunk:
            files.setdefault(path, []).append(line)
        offset += len(chunk)
        archive.write(files, {(TOPIC, 0): offset})
    return time.perf_counter() - start


async def sink_writer(settings: Settings, schema: str, root: Path, values: list[bytes], size: int) -> float:
    from prometheus_client import CollectorRegistry

    async def no_dead_letters(rec: InputRecord, reason: str, detail: str) -> None:
        raise AssertionError(f"{reason}: {detail}")

    archive = JsonlArchive(root)
    archive.open()
    pg = PgConnection(settings.postgres_dsn, schema, "bench-writer")
    writer = SinkWriter(
        archive, pg, default_codec(), SinkMetrics(CollectorRegistry()), no_dead_letters, lambda *_: (None, None)
    )
    kind = KINDS[TOPIC]
    records = [InputRecord(kind, TOPIC, 0, i, v) for i, v in enumerate(values)]
    await pg.ready()
    start = time.perf_counter()
    for chunk in batches(records, size):
        await writer.write_batch(chunk)
    elapsed = time.perf_counter() - start
    await pg.close()
    return elapsed


def end_to_end(settings: Settings, records: list[tuple[bytes, bytes, int]], home: Path) -> float:
    """Seconds from the sink's first row to its last, over ``records`` pre-filled in a fresh topic prefix."""
    run = settings.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:6]}."})
    asyncio.run(apply_topics(run, load_topics()))
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(fill(run, records))
        env = {
            **os.environ,
            "OBSERVER_HOME": str(home),
            "OBSERVER_TOPIC_PREFIX": run.topic_prefix,
            "OBSERVER_PG_SCHEMA": schema,
            "OBSERVER_DATA_ROOT": str(home / "data"),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "sink", "--web-port", str(free_port())],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            first = last = None
            seen = 0
            deadline = time.monotonic() + 600
            with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
                while seen < len(records) and time.monotonic() < deadline:
                    try:
                        row = conn.execute(
                            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "ticks"))
                        ).fetchone()
                    except psycopg.errors.UndefinedTable:
                        row = (0,)
                    n = int(row[0]) if row else 0
                    if n and first is None:
                        first = (time.monotonic(), n)
                    if n != seen:
                        last, seen = time.monotonic(), n
                    time.sleep(0.05)
            if first is None or last is None or seen < len(records):
                raise RuntimeError(f"the sink wrote {seen} of {len(records)} rows in 600 s")
            return (last - first[0]) / max(1, seen - first[1]) * len(records)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    finally:
        asyncio.run(delete_topics(run))
        with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(
    settings: Settings, ticks: list[dict[str, Any]], values: list[bytes], size: int, tmp: Path
) -> dict[str, float]:
    rows = [tick_row(t) for t in ticks]
    out: dict[str, float] = {}
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        schemas = []
        try:
            for name, run in (("bare COPY", bare_copy), ("sink Postgres", sink_postgres)):
                schema = await fresh_schema(conn)
                schemas.append(schema)
                out[name] = await run(conn, schema, rows, size)
            out["sink JSONL"] = await asyncio.to_thread(sink_jsonl, tmp / "jsonl", ticks, size)
            schema = await fresh_schema(conn)
            schemas.append(schema)
            out["sink writer (both stores)"] = await sink_writer(settings, schema, tmp / "writer", values, size)
        finally:
            for schema in schemas:
                await conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--e2e", type=int, default=60_000, help="ticks for the end-to-end run (0: skip)")
    args = parser.parse_args()
    settings = load_settings()
    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres

    print(LocalKafka(settings).start(), flush=True)
    print(LocalPostgres(settings).start(), flush=True)
    print(
        f"python {platform.python_version()}, {os.cpu_count()} cores; {args.ticks:,} ticks in batches of {args.batch:,}"
    )
    records = morning_ticks(max(args.ticks, args.e2e), 82)
    codec = default_codec()
    values = [value for _, value, _ in records[: args.ticks]]
    ticks = [codec.decode(v)[1] for v in values]
    tmp = Path(tempfile.mkdtemp(prefix="bench-sink-"))
    try:
        seconds = asyncio.run(measure(settings, ticks, values, args.batch, tmp))
        if args.e2e:
            seconds["observer sink, end to end"] = end_to_end(settings, records[: args.e2e], tmp / "e2e")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    bare = args.ticks / seconds["bare COPY"]
    print(f"{'':28} {'per second':>12} {'vs bare COPY':>13}")
    for name, elapsed in seconds.items():
        n = args.e2e if "end to end" in name else args.ticks
        rate = n / elapsed
        unit = "lines" if "JSONL" in name else "rows"
        print(f"{name:28} {rate:>12,.0f} {rate / bare:>12.2f}x  {unit}")
        if name != "bare COPY":
            report.row("sink", name, rate, f"{unit}/s", "bare COPY", bare)
    pg_rate = args.ticks / seconds["sink Postgres"]
    lines_rate = args.ticks / seconds["sink JSONL"]
    print(
        f"aims: sink Postgres {pg_rate:,.0f} rows/s (aim {AIM_ROWS:,}) at {pg_rate / bare:.2f} of bare COPY "
        f"(aim {AIM_RATIO}); JSONL {lines_rate:,.0f} lines/s (aim {AIM_LINES:,})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
