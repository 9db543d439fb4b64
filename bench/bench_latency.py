"""End-to-end latency: a KIS trade received by the bridge to its row readable in PostgreSQL and its line
readable in the hourly JSONL file, beside a bare pipeline doing the same work, in one run.

    python bench/bench_latency.py [--rate 1000] [--seconds 20] [--poll-ms 10]

Needs the local stack (started here if it is not running); traffic stays on 127.0.0.1.

- observer: a KIS simulator in its own process (bench_bridge's, its market before the open, so only the
  bench's trades flow) sends ``--rate`` trades per second of 41 subscribed symbols for ``--seconds``;
  ``observer bridge`` and ``observer sink`` run as users run them. Latency of a trade: from the bridge's
  receipt of its frame (the tick's ``received_at``) to the moment this process first reads its row in
  PostgreSQL, or its line in the JSONL file.
- bare: the same ticks (read back from the bridge's topic), sent at the same rate by a bare aiokafka
  producer with the publisher's settings, each stamped with its send time; a bare consumer in its own
  process decodes them, renders the same rows and lines, COPYs each fetched batch into a plain table and
  appends it to one file with an fsync. Latency: from the send to the same reads. It is the floor of Kafka,
  PostgreSQL and a file at this rate, without Faust, deduplication, offsets kept in the stores or retries.

Both are read the same way: this process polls every ``--poll-ms`` for rows past the last one it saw
(a TID range scan: the sink is the table's only writer and never deletes) and for bytes past the end of
each file it read, so the resolution is the poll interval plus a query. Aim: p99 to both stores under 1 s
at 1,000 trades/s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psycopg
from psycopg import sql

from app.config import Settings, load_settings
from app.records import default_codec
from app.runs import Processes, metric_sum, scrape
from app.sim.market import Market
from app.sim.server import SimConfig
from app.sink import lines as jsonl
from app.sink.postgres import TABLE_COLUMNS, migrate, tick_row
from app.topics import TopicSpec, apply_topics, delete_topics, load_topics
from bench import report  # rows for make bench (bench/run_all.py)
from bench.bench_bridge import DAY, SLOTS, SimProcess, assign, publisher_like_producer, read_back
from bench.bench_sink import free_port

AIM_P99_S = 1.0
TICK_COLUMNS = [name for name, _ in TABLE_COLUMNS["ticks"]]
TICK_TYPES = [kind for _, kind in TABLE_COLUMNS["ticks"]]
LOOKBACK_BLOCKS = 16
RESCAN_S = 2.0


# ---------------------------------------------------------------------------------------- watching


class StoreWatcher:
    """Polls a table and a folder of JSONL files from its own thread; keeps, per store, the seconds from
    each tick's ``received_at`` to the poll that first read it."""

    def __init__(self, dsn: str, table: sql.Composable, files: Path, pattern: str, poll_s: float) -> None:
        self.dsn, self.table, self.files, self.pattern, self.poll_s = dsn, table, files, pattern, poll_s
        self.latencies: dict[str, list[float]] = {"postgres": [], "jsonl": []}
        self._seen_tids: set[str] = set()
        self._high_block = 0
        self._last_rescan = time.monotonic()
        self.rescued = 0
        self._read_to: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-watcher", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise RuntimeError(f"the store watcher failed: {self.error!r}") from self.error

    def count_rows(self) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()
        return int(row[0]) if row else 0

    def seen(self, store: str) -> int:
        return len(self.latencies[store])

    def _run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self._stop.is_set():
                    self._poll_table(conn)
                    self._poll_files()
                    self._stop.wait(self.poll_s)
        except BaseException as exc:  # noqa: BLE001 - handed to the bench's thread by stop()
            self.error = exc

    def _poll_table(self, conn: psycopg.Connection[Any]) -> None:
        """Rows from ``LOOKBACK_BLOCKS`` before the highest block seen (a new transaction's rows may land in
        an earlier block's free space), and the whole table every ``RESCAN_S`` for any row that landed
        further back: those are counted in ``rescued`` (their latency is then too high, by up to RESCAN_S)."""
        rescan = time.monotonic() - self._last_rescan >= RESCAN_S
        low = "(0,0)" if rescan else f"({max(0, self._high_block - LOOKBACK_BLOCKS)},0)"
        query = sql.SQL("SELECT ctid::text, received_at FROM {} WHERE ctid >= %s::tid").format(self.table)
        try:
            rows = conn.execute(query, (low,)).fetchall()
        except psycopg.errors.UndefinedTable:  # the sink has not migrated its schema yet
            return
        now = time.time()
        if rescan:
            self._last_rescan = time.monotonic()
        for tid, received_at in rows:
            if tid in self._seen_tids:
                continue
            self._seen_tids.add(tid)
            self.latencies["postgres"].append(now - received_at.timestamp())
            block = int(tid[1:].split(",", 1)[0])
            if rescan and block < self._high_block - LOOKBACK_BLOCKS:
                self.rescued += 1
            self._high_block = max(self._high_block, block)

    def _poll_files(self) -> None:
        now = time.time()
        for path in sorted(self.files.glob(self.pattern)):
            start = self._read_to.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # whole lines only: the writer may be mid-line
            if not end:
                continue
            self._read_to[path] = start + end
            for line in chunk[:end].splitlines():
                received = dt.datetime.fromisoformat(orjson.loads(line)["received_at"])
                self.latencies["jsonl"].append(now - received.timestamp())


async def wait_until(condition: Any, deadline_s: float, what: str, check: Any = None) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        if check is not None:
            check()
        if time.monotonic() > end:
            raise RuntimeError(f"timed out after {deadline_s:.0f} s waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------ the bare sink


async def bare_sink(bootstrap: str, topic: str, dsn: str, table: str, file: str) -> None:
    """The bare consumer process: every fetched batch COPYed into ``table`` and appended to ``file`` (fsync),
    offsets committed after both; prints READY once assigned, stops on SIGTERM."""
    from aiokafka import AIOKafkaConsumer

    codec = default_codec()
    schema, name = table.split(".")
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, name), sql.SQL(", ").join(map(sql.Identifier, TICK_COLUMNS))
    )
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await consumer.start()
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
            print("READY", flush=True)
            with open(file, "ab") as out:
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=100, max_records=5000)
                    records = [r for rs in batch.values() for r in rs]
                    if not records:
                        continue
                    rows, lines = [], []
                    for r in records:
                        tick = codec.decode(r.value)[1]
                        tick["received_at_us"] = r.timestamp * 1000  # the bare producer's send time
                        rows.append(tick_row(tick))
                        lines.append(jsonl.scalp_line(tick, None, None))  # ends with its newline
                    out.write(b"".join(lines))
                    out.flush()
                    os.fsync(out.fileno())
                    async with conn.transaction(), conn.cursor().copy(copy_in) as copy:
                        copy.set_types(TICK_TYPES)
                        for row in rows:
                            await copy.write_row(row)
                    await consumer.commit()
    finally:
        await consumer.stop()


async def bare_paced_send(
    settings: Settings, topic: str, values: list[tuple[bytes | None, bytes | None]], rate: int
) -> None:
    """``values`` at ``rate`` per second, 10 ms at a time, each stamped with the time it is sent."""
    producer = publisher_like_producer(settings)
    await producer.start()
    try:
        per_step = max(1, rate // 100)
        started = time.monotonic()
        futures = []
        for k, i in enumerate(range(0, len(values), per_step)):
            for key, value in values[i : i + per_step]:
                futures.append(await producer.send(topic, value, key=key, timestamp_ms=time.time_ns() // 1_000_000))
            delay = started + (k + 1) * per_step / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing the sender, as the simulator paces KIS
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# ------------------------------------------------------------------------------------------ the runs


async def observer_run(
    base: Settings, sim: SimProcess, args: argparse.Namespace, home: Path
) -> tuple[int, StoreWatcher]:
    """Simulator -> ``observer bridge`` -> Kafka -> ``observer sink``, watched. Returns (trades sent, watcher)."""
    ports = {"bridge": free_port(), "sink": free_port()}
    settings = base.model_copy(
        update={"data_root": home / "data", "kis_rest_url": sim.rest_url, "kis_ws_url": sim.ws_url}
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_KIS_")} | {
        "PYTHONUNBUFFERED": "1",
        "OBSERVER_HOME": str(home),
        "OBSERVER_TOPIC_PREFIX": settings.topic_prefix,
        "OBSERVER_PG_SCHEMA": settings.pg_schema,
        "OBSERVER_DATA_ROOT": str(settings.data_root),
        "OBSERVER_KIS_REST_URL": sim.rest_url,
        "OBSERVER_KIS_WS_URL": sim.ws_url,
        "OBSERVER_SINK_WEB_PORT": str(ports["sink"]),
        "OBSERVER_BRIDGE_METRICS_PORT": str(ports["bridge"]),
        "OBSERVER_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "OBSERVER_PG_DSN": settings.postgres_dsn,
    }
    (home / "logs").mkdir(parents=True, exist_ok=True)
    procs = Processes(env, home / "logs")
    watcher = StoreWatcher(
        settings.postgres_dsn,
        sql.Identifier(settings.pg_schema, "ticks"),
        settings.data_root,
        "**/scalp/*.jsonl",
        args.poll_ms / 1000,
    )
    try:
        procs.start("sink", ["sink"])
        await wait_until(lambda: bool(scrape(ports["sink"])), 120, "the sink's web server", procs.check)
        procs.start("bridge", ["bridge"])
        subscribed = "observer_bridge_subscribed_symbols"
        await wait_until(
            lambda: metric_sum(scrape(ports["bridge"]), subscribed) >= SLOTS, 60, f"{SLOTS} subscriptions", procs.check
        )
        watcher.start()
        print(f"observer: {args.rate:,} trades/s for {args.seconds:.0f} s", flush=True)
        sent, _ = await sim.command(f"PACED {args.rate} {args.seconds}")
        await wait_until(
            lambda: watcher.seen("postgres") >= sent and watcher.seen("jsonl") >= sent,
            120,
            lambda: (
                f"{sent:,} rows and lines (read {watcher.seen('postgres'):,} rows of {watcher.count_rows():,}, "
                f"{watcher.seen('jsonl'):,} lines; logs in {home / 'logs'})"
            ),
            procs.check,
        )
        sink = scrape(ports["sink"])
        batches = sink.get("observer_sink_batch_seconds_count", 0.0)
        if batches:
            took = sink["observer_sink_batch_seconds_sum"] / batches
            print(f"  the sink wrote {batches:.0f} batches of {sent / batches:.0f} ticks, {took * 1000:.0f} ms each")
    finally:
        watcher.stop()
        procs.stop_all()
    return sent, watcher


async def bare_run(
    settings: Settings, values: list[tuple[bytes | None, bytes | None]], args: argparse.Namespace, home: Path
) -> StoreWatcher:
    topic = settings.topic("bare.latency.kis.ticks.raw")
    spec = load_topics()["kis.ticks.raw"]
    name = "bare.latency.kis.ticks.raw"
    await apply_topics(settings, {name: TopicSpec(**{**spec.__dict__, "name": name})})
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(
                sql.Identifier(settings.pg_schema, "bare"), sql.Identifier(settings.pg_schema, "ticks")
            )
        )
    files = home / "bare"
    files.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--bare-sink",
            settings.bootstrap_servers,
            topic,
            settings.postgres_dsn,
            f"{settings.pg_schema}.bare",
            str(files / "ticks.jsonl"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    watcher = StoreWatcher(
        settings.postgres_dsn, sql.Identifier(settings.pg_schema, "bare"), files, "*.jsonl", args.poll_ms / 1000
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if line.strip() != "READY":
            raise RuntimeError(f"the bare sink said {line!r}, expected READY")
        watcher.start()
        print(f"bare: {args.rate:,} records/s, {len(values):,} records", flush=True)
        await bare_paced_send(settings, topic, values, args.rate)

        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"the bare sink exited with status {proc.returncode}")

        n = len(values)
        await wait_until(
            lambda: watcher.seen("postgres") >= n and watcher.seen("jsonl") >= n, 120, f"{n:,} bare rows", alive
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        watcher.stop()
    return watcher


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100)
    return {"p50": cuts[49], "p90": cuts[89], "p99": cuts[98], "max": max(values)}


async def bench(args: argparse.Namespace) -> int:
    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres

    base = load_settings()
    print(await asyncio.to_thread(LocalKafka(base).start), flush=True)
    print(await asyncio.to_thread(LocalPostgres(base).start), flush=True)
    tag = uuid.uuid4().hex[:8]
    home = Path(tempfile.mkdtemp(prefix="observer-bench-latency-"))
    settings = base.model_copy(update={"topic_prefix": f"bench{tag}.", "pg_schema": f"bench_{tag}", "home": home})
    await apply_topics(settings, load_topics())
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
        await migrate(conn, settings.pg_schema)  # the sink would; the bare table is made like its ticks
    sim = SimProcess()
    try:
        await assign(settings, [s.code for s in Market(seed=SimConfig().seed, business_date=DAY).symbols[:SLOTS]])
        sent, observed = await observer_run(settings, sim, args, home)
        back = await read_back(settings, settings.topic("kis.ticks.raw"), sent)
        if len(back) != sent:
            raise RuntimeError(f"read back {len(back):,} of the {sent:,} ticks the bridge published")
        bare = await bare_run(settings, [(key, value) for key, value, _ in back], args, home)
    finally:
        sim.close()
        await delete_topics(settings)
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(settings.pg_schema)))
    shutil.rmtree(home, ignore_errors=True)  # kept if the bench failed: its processes' logs are there

    print()
    print(f"machine: {platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores")
    print(f"{sent:,} trades at {args.rate:,}/s; polled every {args.poll_ms:g} ms")
    if observed.rescued or bare.rescued:
        print(
            f"rows found only by a full rescan (latency too high by up to {RESCAN_S:g} s): "
            f"observer {observed.rescued}, bare {bare.rescued}"
        )
    print(f"{'':44} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
    met = True
    for store, label in (("postgres", "PostgreSQL row"), ("jsonl", "JSONL line")):
        ours, floor = percentiles(observed.latencies[store]), percentiles(bare.latencies[store])
        for who, q in ((f"observer: frame -> {label}", ours), (f"bare: send -> {label}", floor)):
            print(f"{who:44} " + " ".join(f"{q[k] * 1000:>6.0f} ms" for k in ("p50", "p90", "p99", "max")))
        for k in ("p50", "p99"):
            report.row(
                "latency",
                f"frame -> {label} {k} at {args.rate}/s",
                ours[k] * 1000,
                "ms",
                f"bare pipeline, {k}",
                floor[k] * 1000,
                False,
            )
        met = met and ours["p99"] < AIM_P99_S
    print(f"aim: p99 to both stores under {AIM_P99_S:g} s: {'met' if met else 'NOT met'}")
    return 0 if met else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=1_000, help="trades/s (default 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long trades flow (default 20)")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="how often the stores are read (default 10)")
    parser.add_argument(
        "--bare-sink", nargs=5, metavar=("BOOTSTRAP", "TOPIC", "DSN", "TABLE", "FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.bare_sink:
        asyncio.run(bare_sink(*args.bare_sink))
        return 0
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
