"""The sink's PostgreSQL side on the real server: migrations, day partitions, COPY + on-conflict, offsets."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest
from procs import OBSERVER, free_port
from prometheus_client import CollectorRegistry
from psycopg import sql
from test_codec import EXAMPLES

from app.config import Settings
from app.records import default_codec
from app.sink.archive import JsonlArchive
from app.sink.postgres import (
    PgStore,
    decision_row,
    migrate,
    migrations,
    overflow_row,
    partition_name,
    snapshot_row,
    surge_row,
    tick_row,
)
from app.sink.render import KINDS
from app.sink.writer import InputRecord, PgConnection, SinkMetrics, SinkWriter

TOPIC = "kis.ticks.raw"


def tick(symbol: str, day: str, cumulative: int, volume: int = 10) -> dict[str, Any]:
    when = int(dt.datetime.strptime(day + " 10:00", "%Y%m%d %H:%M").replace(tzinfo=dt.UTC).timestamp()) * 10**6
    return {
        "symbol": symbol,
        "business_date": day,
        "trade_time": "190000",
        "event_time_us": when,
        "price": 53000,
        "trade_volume": volume,
        "cumulative_volume": cumulative,
        "change_sign": "2",
        "change_rate": 0.5,
        "best_ask": 53100,
        "best_bid": 53000,
        "side": "1",
        "received_at_us": when + 1234,
        "app_key_id": "main",
        "session_id": "s1",
        "frame_seq": 1,
        "record_index": 0,
        "fields": ["a", "b"],
    }


async def connect(settings: Settings) -> psycopg.AsyncConnection[Any]:
    return await psycopg.AsyncConnection.connect(settings.postgres_dsn, autocommit=True)


def test_migrations_are_numbered_without_gaps_and_apply_once(stack: Settings, pg_schema: str) -> None:
    async def scenario() -> None:
        async with await connect(stack) as conn:
            first = await migrate(conn, pg_schema)
            again = await migrate(conn, pg_schema)
            cur = await conn.execute(
                sql.SQL("SELECT version, name FROM {}.schema_migrations ORDER BY version").format(
                    sql.Identifier(pg_schema)
                )
            )
            recorded = await cur.fetchall()
        assert [m.version for m in first] == [m.version for m in migrations()] and again == []
        assert recorded == [(m.version, m.name) for m in migrations()]

    asyncio.run(scenario())


def test_a_batch_written_twice_is_stored_once_with_its_offsets(stack: Settings, pg_schema: str) -> None:
    """Two trading days in one batch: both partitions are made; the same batch again inserts nothing and the
    offsets only move forward."""

    async def scenario() -> None:
        async with await connect(stack) as conn:
            await migrate(conn, pg_schema)
            store = PgStore(conn, pg_schema, "sink")
            rows = [tick_row(tick("005930", "20260126", c)) for c in (10, 20, 30)]
            rows.append(tick_row(tick("000660", "20260127", 5)))
            assert await store.write({"ticks": rows}, {(TOPIC, 0): 3, (TOPIC, 4): 1}) == {"ticks": 4}
            assert await store.write({"ticks": rows}, {(TOPIC, 0): 2}) == {"ticks": 0}, "redelivered: no row"
            assert store.is_written(TOPIC, 0, 2) and not store.is_written(TOPIC, 0, 3)
            fresh = PgStore(conn, pg_schema, "sink")  # a restarted sink finds the partitions and offsets there
            assert await fresh.load_offsets() == {(TOPIC, 0): 3, (TOPIC, 4): 1}
            assert await fresh.write({"ticks": [tick_row(tick("005930", "20260126", 40))]}, {(TOPIC, 0): 4}) == {
                "ticks": 1
            }
            cur = await conn.execute(
                sql.SQL("SELECT tableoid::regclass::text, count(*) FROM {}.ticks GROUP BY 1 ORDER BY 1").format(
                    sql.Identifier(pg_schema)
                )
            )
            by_partition = dict(await cur.fetchall())
        assert by_partition == {
            f"{pg_schema}.{partition_name('ticks', dt.date(2026, 1, 26))}": 4,
            f"{pg_schema}.{partition_name('ticks', dt.date(2026, 1, 27))}": 1,
        }

    asyncio.run(scenario())


def test_a_failed_batch_leaves_neither_rows_nor_offsets_and_can_be_retried(stack: Settings, pg_schema: str) -> None:
    async def scenario() -> None:
        async with await connect(stack) as conn:
            await migrate(conn, pg_schema)
            store = PgStore(conn, pg_schema, "sink")
            row = tick_row(tick("005930", "20260128", 10))
            bad = (row[0], None, *row[2:])  # a NULL symbol violates NOT NULL, after the good row was copied
            good = tick_row(tick("000660", "20260128", 7))
            with pytest.raises(psycopg.errors.NotNullViolation):
                await store.write({"ticks": [good, bad]}, {(TOPIC, 1): 2})
            assert await store.load_offsets() == {} and not store.is_written(TOPIC, 1, 0)
            assert await store.write({"ticks": [good]}, {(TOPIC, 1): 2}) == {"ticks": 1}, "partition made again"

    asyncio.run(scenario())


def test_every_record_kind_has_its_table_and_its_natural_key(stack: Settings, pg_schema: str) -> None:
    """Snapshots, surges, decisions and overflow land in their day partitions; the same records again add
    nothing; a decision's day is its KST day (23:30 UTC is the next day in Seoul)."""
    late_utc = int(dt.datetime(2026, 1, 26, 23, 30, tzinfo=dt.UTC).timestamp()) * 10**6
    snapshot = {
        "symbol": "005930",
        "business_date": "20260127",
        "snapshot_time_us": late_utc,
        "source": "volume_rank:0",
        "price": 53000,
        "cumulative_volume": 1000,
        "change_rate": 1.5,
        "rank": 3,
        "raw": {"stck_prpr": "53000", "acml_vol": "1000"},
    }
    surge = {
        "symbol": "005930",
        "business_date": "20260127",
        "window_start_us": late_utc - 60 * 10**6,
        "event_time_us": late_utc,
        "current_volume": 90_000,
        "avg_volume_10m": 3000.0,
        "surge_ratio": 30.0,
        "priority_score": 30.0,
        "source": "ticks",
    }
    decision = {
        "decision_id": "main-1-abc",
        "app_key_id": "main",
        "slot_id": 7,
        "symbol": "005930",
        "action": "assign",
        "trigger_type": "surge",
        "priority_score": 30.0,
        "decided_at_us": late_utc,
        "detected_at_us": late_utc - 1,
        "current_volume": 90_000,
        "avg_volume_10m": 3000.0,
        "surge_ratio": 30.0,
        "replaced_symbol": None,
        "reason": "free slot",
    }
    overflow = {k: decision[k] for k in ("symbol", "app_key_id", "trigger_type", "priority_score")} | {
        "detected_at_us": late_utc - 1,
        "decided_at_us": late_utc,
        "reason": "no_slot",
        "current_volume": 1,
        "avg_volume_10m": 1.0,
        "surge_ratio": 1.0,
    }
    rows = {
        "snapshots": [snapshot_row(snapshot)],
        "surges": [surge_row(surge)],
        "slot_decisions": [decision_row(decision)],
        "slot_overflow": [overflow_row(overflow)],
    }

    async def scenario() -> None:
        async with await connect(stack) as conn:
            await migrate(conn, pg_schema)
            store = PgStore(conn, pg_schema, "sink")
            assert await store.write(rows, {}) == dict.fromkeys(rows, 1)
            assert await store.write(rows, {}) == dict.fromkeys(rows, 0)
            found = {}
            for table in rows:
                cur = await conn.execute(
                    sql.SQL("SELECT tableoid::regclass::text FROM {}.{}").format(
                        sql.Identifier(pg_schema), sql.Identifier(table)
                    )
                )
                found[table] = [r[0] for r in await cur.fetchall()]
            cur = await conn.execute(
                sql.SQL("SELECT raw->>'acml_vol' FROM {}.snapshots").format(sql.Identifier(pg_schema))
            )
            assert await cur.fetchall() == [("1000",)]
        assert found == {t: [f"{pg_schema}.{partition_name(t, dt.date(2026, 1, 27))}"] for t in rows}

    asyncio.run(scenario())


def test_observer_db_migrate_reports_what_it_applied_and_a_down_server_clearly(stack: Settings, pg_schema: str) -> None:
    env = {**os.environ, "OBSERVER_PG_SCHEMA": pg_schema, "OBSERVER_PG_PORT": str(stack.pg_port)}
    first = subprocess.run([*OBSERVER, "db", "migrate"], capture_output=True, text=True, env=env, timeout=60)
    again = subprocess.run([*OBSERVER, "db", "migrate"], capture_output=True, text=True, env=env, timeout=60)
    latest = migrations()[-1]
    assert first.returncode == 0 and f"schema {pg_schema}: {latest.version} migration(s) applied" in first.stdout
    assert again.returncode == 0 and f"schema {pg_schema}: 0 migration(s) applied" in again.stdout
    down = subprocess.run(
        [*OBSERVER, "db", "migrate"],
        capture_output=True,
        text=True,
        env={**env, "OBSERVER_PG_PORT": str(free_port())},
        timeout=60,
    )
    assert down.returncode == 1 and "is not reachable" in down.stderr and "Traceback" not in down.stderr


def test_a_row_postgres_refuses_is_dead_lettered_and_the_rest_of_its_batch_written(
    stack: Settings, pg_schema: str, tmp_path: Path
) -> None:
    """A NUL character passes rendering but not jsonb: the batch is written row by row, that snapshot goes
    to the DLQ with PostgreSQL's reason, the others are stored, and the batch's offsets are committed."""
    codec = default_codec()
    good = dict(EXAMPLES["Snapshot"])
    bad = good | {"symbol": "000660", "raw": {"name": "a\x00b"}}
    kind = KINDS["kis.snapshots"]
    records = [InputRecord(kind, "snaps", 0, i, codec.encode("Snapshot", s)) for i, s in enumerate((good, bad))]
    dead: list[tuple[int, str, str]] = []

    async def dead_letter(rec: InputRecord, reason: str, detail: str) -> None:
        dead.append((rec.offset, reason, detail))

    async def scenario() -> None:
        archive = JsonlArchive(tmp_path / "data")
        archive.open()
        pg = PgConnection(stack.postgres_dsn, pg_schema, "sink")
        writer = SinkWriter(archive, pg, codec, SinkMetrics(CollectorRegistry()), dead_letter, lambda *_: (None, None))
        await writer.write_batch(records)
        fresh = PgConnection(stack.postgres_dsn, pg_schema, "sink")
        store = await fresh.ready()
        cur = await store.conn.execute(sql.SQL("SELECT symbol FROM {}.snapshots").format(sql.Identifier(pg_schema)))
        assert await cur.fetchall() == [(good["symbol"],)]
        assert store.offsets == {("snaps", 0): 2}
        await fresh.close()
        await pg.close()

    asyncio.run(scenario())
    assert [(offset, reason) for offset, reason, _ in dead] == [(1, "rejected_by_postgres")]
    assert "UntranslatableCharacter" in dead[0][2]
