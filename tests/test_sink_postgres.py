"""The sink's PostgreSQL side on the real server: migrations, day partitions, COPY + on-conflict, offsets."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
from typing import Any

import psycopg
import pytest
from procs import OBSERVER, free_port
from psycopg import sql

from app.config import Settings
from app.sink.postgres import TickStore, migrate, migrations, partition_name, tick_row

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
            store = TickStore(conn, pg_schema, "sink")
            rows = [tick_row(tick("005930", "20260126", c)) for c in (10, 20, 30)]
            rows.append(tick_row(tick("000660", "20260127", 5)))
            assert await store.write(rows, {(TOPIC, 0): 3, (TOPIC, 4): 1}) == 4
            assert await store.write(rows, {(TOPIC, 0): 2}) == 0, "a redelivered batch adds no row"
            assert await store.next_offsets() == {(TOPIC, 0): 3, (TOPIC, 4): 1}
            fresh = TickStore(conn, pg_schema, "sink")  # a restarted sink finds the partitions there
            assert await fresh.write([tick_row(tick("005930", "20260126", 40))], {(TOPIC, 0): 4}) == 1
            cur = await conn.execute(
                sql.SQL("SELECT tableoid::regclass::text, count(*) FROM {}.ticks GROUP BY 1 ORDER BY 1").format(
                    sql.Identifier(pg_schema)
                )
            )
            by_partition = dict(await cur.fetchall())
        assert by_partition == {
            f"{pg_schema}.{partition_name(dt.date(2026, 1, 26))}": 4,
            f"{pg_schema}.{partition_name(dt.date(2026, 1, 27))}": 1,
        }

    asyncio.run(scenario())


def test_a_failed_batch_leaves_neither_rows_nor_offsets_and_can_be_retried(stack: Settings, pg_schema: str) -> None:
    async def scenario() -> None:
        async with await connect(stack) as conn:
            await migrate(conn, pg_schema)
            store = TickStore(conn, pg_schema, "sink")
            row = tick_row(tick("005930", "20260128", 10))
            bad = (row[0], None, *row[2:])  # a NULL symbol violates NOT NULL, after the good row was copied
            good = tick_row(tick("000660", "20260128", 7))
            with pytest.raises(psycopg.errors.NotNullViolation):
                await store.write([good, bad], {(TOPIC, 1): 2})
            assert await store.next_offsets() == {}
            assert await store.write([good], {(TOPIC, 1): 2}) == 1, "the day's partition is made again"

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
