"""``observer sink`` as a process against the real broker, PostgreSQL and file system: every record in
JSONL and Postgres once, through kill -9, a database outage and a full disk."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from procs import OBSERVER, RECENT_OPEN, free_port
from psycopg import sql
from test_codec import EXAMPLES

from app.config import Settings
from app.records import default_codec
from app.stack.postgres import LocalPostgres
from app.topics import apply_topics, load_topics

DAY = RECENT_OPEN.strftime("%Y%m%d")
T0 = int(RECENT_OPEN.timestamp()) * 1_000_000  # 09:00 KST of a recent trading day
SYMBOLS = ("005930", "000660", "035720")


def make_ticks(n: int, start: int = 0, step_us: int = 15_000_000) -> list[dict[str, Any]]:
    """``n`` trades over SYMBOLS from 09:00 on, ``step_us`` apart (15 s: 300 trades span two hourly files),
    cumulative volume growing per symbol; ``start`` continues an earlier call."""
    out = []
    for i in range(start, start + n):
        symbol = SYMBOLS[i % len(SYMBOLS)]
        tick = dict(EXAMPLES["RawTick"])
        tick.update(
            symbol=symbol,
            business_date=DAY,
            event_time_us=T0 + i * step_us,
            received_at_us=T0 + i * step_us + 150_000,
            trade_volume=10,
            cumulative_volume=10 * (i // len(SYMBOLS) + 1),
            app_key_id="main",
            frame_seq=i,
        )
        out.append(tick)
    return out


async def produce(settings: Settings, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    """(key, value) pairs to a topic, stamped now (an old trade day would fall to retention)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for key, value in items:
            await producer.send(settings.topic(topic), value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


def produce_ticks(settings: Settings, ticks: list[dict[str, Any]]) -> None:
    codec = default_codec()
    asyncio.run(produce(settings, "kis.ticks.raw", [(t["symbol"].encode(), codec.encode("RawTick", t)) for t in ticks]))


class SinkProcess:
    def __init__(self, settings: Settings, schema: str, data_root: Path, home: Path, env: dict[str, str] | None = None):
        self.port = free_port()
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "OBSERVER_HOME": str(home),
            "OBSERVER_TOPIC_PREFIX": settings.topic_prefix,
            "OBSERVER_KAFKA_PORT": str(settings.kafka_port),
            "OBSERVER_PG_PORT": str(settings.pg_port),
            "OBSERVER_PG_SCHEMA": schema,
            "OBSERVER_SINK_RETRY_MAX_S": "2",
            **(env or {}),
        }
        self.data_root = data_root
        self.home = home
        self.runs = 0
        self.start()

    def start(self) -> None:
        self.runs += 1
        self.log = open(self.home / f"sink-{self.runs}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*OBSERVER, "sink", "--web-port", str(self.port), "--data-root", str(self.data_root)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by its full name with labels; {} while the web server is not up."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.log.close()

    def output(self) -> str:
        return "".join((self.home / f"sink-{i}.log").read_text() for i in range(1, self.runs + 1))


def wait_for(what: str, check: Callable[[], Any], deadline_s: float = 90, sink: SinkProcess | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` and the last value at the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        if sink is not None and sink.proc.poll() is not None:
            raise AssertionError(
                f"sink exited {sink.proc.returncode} while waiting for {what}:\n{sink.output()[-3000:]}"
            )
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"{what}: not after {deadline_s} s (last: {last})")


def scalp_lines(data_root: Path) -> list[dict[str, Any]]:
    return [
        orjson.loads(line)
        for path in sorted((data_root / "observer" / "scalp").glob("*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def pg_count(settings: Settings, schema: str, table: str) -> int:
    try:
        with psycopg.connect(settings.postgres_dsn, autocommit=True, connect_timeout=3) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
            ).fetchone()
    except psycopg.Error:  # not migrated yet, or the server is away
        return -1
    return int(row[0]) if row else 0


async def read_topic(settings: Settings, topic: str, idle_s: float = 2.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        settings.topic(topic), bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[bytes] = []
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_s * 1000))
            if not batch:
                return found
            found.extend(m.value or b"" for msgs in batch.values() for m in msgs)
    finally:
        await consumer.stop()


@pytest.fixture
def topics(isolated: Settings) -> Settings:
    asyncio.run(apply_topics(isolated, load_topics()))
    return isolated


@pytest.fixture
def sink_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    return home


def assert_once_each(settings: Settings, schema: str, data_root: Path, ticks: list[dict[str, Any]]) -> None:
    lines = scalp_lines(data_root)
    keys = [(line["symbol"], line["accumulated_volume"]) for line in lines]
    assert len(keys) == len(set(keys)), "a trade has two lines"
    assert sorted(keys) == sorted((t["symbol"], t["cumulative_volume"]) for t in ticks)
    assert pg_count(settings, schema, "ticks") == len(ticks)  # the primary key is the natural key


# ------------------------------------------------------------------------------------------ every kind


def test_every_kind_of_record_reaches_jsonl_and_postgres_once(
    topics: Settings, pg_schema: str, sink_home: Path
) -> None:
    """Ticks (one in Kafka twice), a slot assignment the ticks join, a snapshot twice, a surge, an overflow
    record, and two records that can never be written, which go to the DLQ with their reasons."""
    settings, codec = topics, default_codec()
    ticks = make_ticks(300)
    assign_at = ticks[150]["event_time_us"]
    decision = dict(EXAMPLES["SlotDecision"]) | {
        "app_key_id": "main",
        "symbol": "005930",
        "slot_id": 7,
        "action": "assign",
        "trigger_type": "surge",
        "decided_at_us": assign_at,
        "detected_at_us": assign_at - 1_000_000,
    }
    release_at = ticks[240]["event_time_us"]
    release = decision | {
        "decision_id": decision["decision_id"] + "-r",
        "action": "release",
        "decided_at_us": release_at,
    }
    snapshot = dict(EXAMPLES["Snapshot"]) | {"business_date": DAY, "snapshot_time_us": T0 + 5_000_000}
    surge = dict(EXAMPLES["SurgeEvent"]) | {"business_date": DAY, "window_start_us": T0, "event_time_us": T0 + 1}
    overflow = dict(EXAMPLES["OverflowEvent"]) | {"decided_at_us": T0 + 7, "detected_at_us": T0 + 3}
    bad_date = ticks[0] | {"business_date": "2026", "cumulative_volume": 1}
    asyncio.run(produce(settings, "slot.decisions", [(b"main", codec.encode("SlotDecision", decision))]))
    asyncio.run(
        produce(
            settings,
            "kis.ticks.raw",
            [(t["symbol"].encode(), codec.encode("RawTick", t)) for t in ticks]
            + [
                (b"005930", codec.encode("RawTick", ticks[3])),
                (b"x", b"\x00not avro"),
                (b"005930", codec.encode("RawTick", bad_date)),
            ],
        )
    )
    asyncio.run(produce(settings, "kis.snapshots", [(b"s", codec.encode("Snapshot", snapshot))] * 2))
    asyncio.run(produce(settings, "observer.surges", [(b"s", codec.encode("SurgeEvent", surge))]))
    asyncio.run(produce(settings, "slot.overflow", [(b"s", codec.encode("OverflowEvent", overflow))]))
    asyncio.run(produce(settings, "slot.decisions", [(b"main", codec.encode("SlotDecision", release))]))
    data_root = sink_home / "data"
    sink = SinkProcess(settings, pg_schema, data_root, sink_home)
    try:
        wait_for("all ticks in Postgres", lambda: pg_count(settings, pg_schema, "ticks") == len(ticks), sink=sink)
        wait_for("the release in Postgres", lambda: pg_count(settings, pg_schema, "slot_decisions") == 2, sink=sink)
        wait_for(
            "no lag", lambda: sink.metrics().get('observer_sink_lag_records{topic="kis.ticks.raw"}') == 0, sink=sink
        )
        metrics = wait_for(
            "the DLQ count",
            lambda: (m := sink.metrics()).get('observer_sink_dead_letters_total{reason="invalid"}') and m,
        )
    finally:
        assert sink.stop() == 0, sink.output()[-3000:]
    assert_once_each(settings, pg_schema, data_root, ticks)
    lines = scalp_lines(data_root)

    def held(line: dict[str, Any]) -> bool:
        at = int(dt.datetime.fromisoformat(line["timestamp"]).timestamp() * 1_000_000)
        return line["symbol"] == "005930" and assign_at <= at < release_at

    assert [(line["slot_id"], line["trigger_type"]) for line in lines] == [
        (7, "surge") if held(line) else (None, None) for line in lines
    ], "the slot its symbol held at the trade's time"
    assert sum(map(held, lines)) == 30
    assert len({p.name for p in (data_root / "observer" / "scalp").iterdir()}) == 2, "09 and 10 KST hourly files"
    for family, table in (("swing", "snapshots"), ("surges", "surges"), ("slots", "slot_decisions")):
        assert len((data_root / "observer" / family / f"{DAY}.jsonl").read_bytes().splitlines()) == 1, family
        assert pg_count(settings, pg_schema, table) == (2 if table == "slot_decisions" else 1)
    overflow_files = list((data_root / "system").glob("overflow_*.jsonl"))
    assert [len(p.read_bytes().splitlines()) for p in overflow_files] == [1]
    assert pg_count(settings, pg_schema, "slot_overflow") == 1
    assert metrics['observer_sink_lines_total{kind="ticks"}'] == len(ticks)
    assert metrics['observer_sink_rows_total{table="ticks"}'] == len(ticks)
    assert metrics['observer_sink_duplicates_total{kind="ticks",store="jsonl"}'] == 1
    assert metrics['observer_sink_duplicates_total{kind="ticks",store="postgres"}'] == 1
    assert metrics['observer_sink_dead_letters_total{reason="undecodable"}'] == 1
    assert metrics['observer_sink_dead_letters_total{reason="invalid"}'] == 1
    newest = max((data_root / "observer" / "scalp").iterdir())
    shown = {k: v for k, v in metrics.items() if k.startswith("observer_sink_file_bytes") and "/scalp/" in k}
    assert shown == {f'observer_sink_file_bytes{{file="observer/scalp/{newest.name}"}}': newest.stat().st_size}
    dead = [default_codec().decode(v)[1] for v in asyncio.run(read_topic(settings, "kis.dlq"))]
    assert sorted((d["stage"], d["reason"], d["source_topic"]) for d in dead) == [
        ("sink", "invalid", settings.topic("kis.ticks.raw")),
        ("sink", "undecodable", settings.topic("kis.ticks.raw")),
    ]
    assert "business_date='2026'" in next(d["detail"] for d in dead if d["reason"] == "invalid")


# ------------------------------------------------------------------------------------------ kill -9


def test_kill_9_five_times_loses_and_duplicates_nothing(topics: Settings, pg_schema: str, sink_home: Path) -> None:
    """Ticks keep arriving while the sink is killed with SIGKILL five times, each at a random moment after
    it has written something since its start; in the end JSONL lines == rows == ticks in Kafka, each once."""
    settings = topics
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    chunks = [make_ticks(1500, start=i * 1500, step_us=1_000_000) for i in range(8)]
    ticks = [t for chunk in chunks for t in chunk]
    producer = threading.Thread(target=lambda: [produce_ticks(settings, c) for c in chunks])
    data_root = sink_home / "data"
    sink = SinkProcess(settings, pg_schema, data_root, sink_home, {"OBSERVER_SINK_BATCH_MAX": "300"})
    producer.start()
    try:
        for kill in range(5):
            before = max(pg_count(settings, pg_schema, "ticks"), 0)
            wait_for(
                f"progress before kill {kill + 1} (seed {seed})",
                lambda before=before: pg_count(settings, pg_schema, "ticks") > before,  # type: ignore[misc]
                sink=sink,
            )
            time.sleep(rng.uniform(0, 1.0))  # the random moment of the kill, not a synchronisation
            assert sink.stop(signal.SIGKILL) == -signal.SIGKILL
            sink.start()
        producer.join(timeout=120)
        assert not producer.is_alive()
        wait_for(
            f"every tick in Postgres and JSONL (seed {seed})",
            lambda: pg_count(settings, pg_schema, "ticks") == len(ticks) and len(scalp_lines(data_root)) == len(ticks),
            deadline_s=120,
            sink=sink,
        )
    finally:
        code = sink.stop()
    assert code == 0, sink.output()[-3000:]
    assert_once_each(settings, pg_schema, data_root, ticks)
    in_kafka = asyncio.run(read_topic(settings, "kis.ticks.raw"))
    assert len(in_kafka) == len(ticks)
    print(f"seed {seed}; recovery cut bytes {sink.output().count('recovery cut')} times")


# ------------------------------------------------------------------------------------------ faults


def metric(sink: SinkProcess, name: str) -> float:
    return sink.metrics().get(name, 0.0)


@pytest.fixture
def private_postgres(stack: Settings) -> Iterator[tuple[Settings, LocalPostgres]]:
    """A PostgreSQL server of this test's own (the test stops it), under the stack's home."""
    settings = stack.model_copy(update={"home": stack.home / f"pg-{uuid.uuid4().hex[:8]}", "pg_port": free_port()})
    server = LocalPostgres(settings)
    server.start()
    yield settings, server
    server.stop()
    shutil.rmtree(settings.home, ignore_errors=True)


def test_postgres_down_for_60_s_pauses_the_sink_and_it_catches_up(
    topics: Settings, private_postgres: tuple[Settings, LocalPostgres], sink_home: Path
) -> None:
    pg_settings, server = private_postgres
    settings = topics.model_copy(update={"pg_port": pg_settings.pg_port})
    first, second = make_ticks(2000), make_ticks(2000, start=2000)
    data_root = sink_home / "data"
    produce_ticks(settings, first)
    sink = SinkProcess(settings, "observer", data_root, sink_home)
    try:
        wait_for(
            "the first ticks in Postgres", lambda: pg_count(settings, "observer", "ticks") == len(first), sink=sink
        )
        server.stop()
        stopped = time.monotonic()
        produce_ticks(settings, second)
        wait_for(
            "the sink to notice",
            lambda: (
                metric(sink, 'observer_sink_paused{store="postgres"}') == 1
                and metric(sink, 'observer_sink_write_errors_total{error="OperationalError",store="postgres"}') > 0
            ),
            sink=sink,
        )
        assert len(scalp_lines(data_root)) < len(first) + len(second), "nothing moves on while Postgres is away"
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped)))  # the outage lasts 60 s: the scenario itself
        assert sink.proc.poll() is None
        server.start()
        wait_for(
            "every tick in both stores",
            lambda: (
                pg_count(settings, "observer", "ticks") == len(first) + len(second)
                and len(scalp_lines(data_root)) == len(first) + len(second)
            ),
            sink=sink,
        )
        wait_for("the pause to end", lambda: metric(sink, 'observer_sink_paused{store="postgres"}') == 0, sink=sink)
    finally:
        code = sink.stop()
    assert code == 0, sink.output()[-3000:]
    assert_once_each(settings, "observer", data_root, first + second)
    assert "postgres write failed (OperationalError" in sink.output()


def test_a_full_disk_pauses_the_sink_and_all_data_follows_once_space_returns(
    topics: Settings, pg_schema: str, sink_home: Path
) -> None:
    settings = topics
    disk = sink_home / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        ticks = make_ticks(3000)  # about 1 MB of scalp lines
        produce_ticks(settings, ticks)
        # Batches of 500 (about 165 KiB of lines): the first fits, a later one does not.
        sink = SinkProcess(settings, pg_schema, disk / "data", sink_home, {"OBSERVER_SINK_BATCH_MAX": "500"})
        try:
            wait_for(
                "ENOSPC",
                lambda: (
                    metric(sink, 'observer_sink_write_errors_total{error="ENOSPC",store="jsonl"}') > 0
                    and metric(sink, 'observer_sink_paused{store="jsonl"}') == 1
                ),
                sink=sink,
            )
            written = scalp_lines(disk / "data")  # every line whole: a failed append was cut back
            assert 0 < len(written) < len(ticks)
            subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
            wait_for(
                "every tick in both stores",
                lambda: (
                    pg_count(settings, pg_schema, "ticks") == len(ticks)
                    and len(scalp_lines(disk / "data")) == len(ticks)
                ),
                sink=sink,
            )
            wait_for("the pause to end", lambda: metric(sink, 'observer_sink_paused{store="jsonl"}') == 0, sink=sink)
        finally:
            code = sink.stop()
        assert code == 0, sink.output()[-3000:]
        assert_once_each(settings, pg_schema, disk / "data", ticks)
        assert "jsonl write failed (ENOSPC" in sink.output()
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_store_behind_the_group_offsets_is_filled_from_kafka(
    topics: Settings, pg_schema: str, sink_home: Path
) -> None:
    """The database comes back empty (restored from an old backup) while the consumer group has committed
    everything: the sink reads what Postgres is missing straight from Kafka; JSONL gets nothing twice."""
    settings = topics
    first, second = make_ticks(300), make_ticks(300, start=300)
    data_root = sink_home / "data"
    produce_ticks(settings, first)
    sink = SinkProcess(settings, pg_schema, data_root, sink_home)
    try:
        wait_for("the first ticks", lambda: pg_count(settings, pg_schema, "ticks") == len(first), sink=sink)
    finally:
        assert sink.stop() == 0
    with psycopg.connect(settings.postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(pg_schema)))
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
    produce_ticks(settings, second)
    sink.start()
    try:
        wait_for(
            "every tick in both stores",
            lambda: (
                pg_count(settings, pg_schema, "ticks") == len(first) + len(second)
                and len(scalp_lines(data_root)) == len(first) + len(second)
            ),
            sink=sink,
        )
        gap = wait_for("the gap count", lambda: metric(sink, "observer_sink_gap_records_total"), sink=sink)
    finally:
        assert sink.stop() == 0
    assert gap == len(first)
    assert_once_each(settings, pg_schema, data_root, first + second)
