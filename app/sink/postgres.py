"""PostgreSQL side of the sink: versioned migrations, day partitions on demand, COPY then insert-on-conflict.

Every write is one transaction: the day partitions it needs, the rows (COPY into a staging table, then
``INSERT ... ON CONFLICT DO NOTHING`` into the partitioned table) and the next Kafka offset of every input
partition in the batch (``sink_offsets``). So the offsets in the database always match its rows, and a
batch delivered again (a crash before the consumer group committed) inserts nothing twice.

All objects live in one schema (``OBSERVER_PG_SCHEMA``; a replay writes to a schema of its own).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x0B5E5EE1  # advisory lock id: one migrator at a time

TICK_COLUMNS = (
    "business_date",
    "symbol",
    "cumulative_volume",
    "trade_time",
    "event_time",
    "price",
    "trade_volume",
    "change_sign",
    "change_rate",
    "best_ask",
    "best_bid",
    "side",
    "received_at",
    "app_key_id",
    "session_id",
    "frame_seq",
    "record_index",
    "fields",
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The SQL files of ``app/sink/migrations``, ``NNNN_name.sql``, in version order."""
    found = []
    for entry in resources.files("app.sink").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            number, _, rest = entry.name.partition("_")
            found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must run 1..n without gaps, found {versions}")
    return found


async def migrate(conn: psycopg.AsyncConnection[Any], schema: str) -> list[Migration]:
    """Apply the migrations not yet applied in ``schema`` (created if missing); returns those applied now."""
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        done = {row[0] for row in await cur.fetchall()}
        for m in migrations():
            if m.version in done:
                continue
            await conn.execute(m.sql.encode())
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
            applied_now.append(m)
    return applied_now


def partition_name(day: dt.date) -> str:
    return f"ticks_{day:%Y%m%d}"


def tick_row(tick: Mapping[str, Any]) -> tuple[Any, ...]:
    """A RawTick record as a ``ticks`` row (columns in TICK_COLUMNS order)."""
    return (
        dt.datetime.strptime(tick["business_date"], "%Y%m%d").date(),
        tick["symbol"],
        tick["cumulative_volume"],
        tick["trade_time"],
        dt.datetime.fromtimestamp(tick["event_time_us"] / 1_000_000, dt.UTC),
        tick["price"],
        tick["trade_volume"],
        tick["change_sign"],
        tick["change_rate"],
        tick["best_ask"],
        tick["best_bid"],
        tick["side"],
        dt.datetime.fromtimestamp(tick["received_at_us"] / 1_000_000, dt.UTC),
        tick["app_key_id"],
        tick["session_id"],
        tick["frame_seq"],
        tick["record_index"],
        list(tick["fields"]),
    )


class TickStore:
    """Writes batches of ticks with their offsets; one per sink process (``consumer`` names it)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str, consumer: str) -> None:
        self.conn, self.schema, self.consumer = conn, schema, consumer
        self._partitions: set[dt.date] = set()

    async def next_offsets(self) -> dict[tuple[str, int], int]:
        cur = await self.conn.execute(
            sql.SQL("SELECT topic, kafka_partition, next_offset FROM {}.sink_offsets WHERE consumer = %s").format(
                sql.Identifier(self.schema)
            ),
            (self.consumer,),
        )
        return {(topic, partition): nxt for topic, partition, nxt in await cur.fetchall()}

    async def write(self, rows: Sequence[tuple[Any, ...]], offsets: Mapping[tuple[str, int], int]) -> int:
        """Insert ``rows`` (``tick_row``s) and record ``offsets`` in one transaction; returns rows inserted
        (fewer than given when some were already there)."""
        schema = sql.Identifier(self.schema)
        new_days = {row[0] for row in rows} - self._partitions
        async with self.conn.transaction():
            await self._create_partitions(new_days)
            await self.conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS ticks_staging (LIKE {}.ticks INCLUDING DEFAULTS)"
                    " ON COMMIT DELETE ROWS"
                ).format(schema)
            )
            columns = sql.SQL(", ").join(map(sql.Identifier, TICK_COLUMNS))
            async with self.conn.cursor().copy(sql.SQL("COPY ticks_staging ({}) FROM STDIN").format(columns)) as copy:
                for row in rows:
                    await copy.write_row(row)
            cur = await self.conn.execute(
                sql.SQL("INSERT INTO {}.ticks ({}) SELECT {} FROM ticks_staging ON CONFLICT DO NOTHING").format(
                    schema, columns, columns
                )
            )
            inserted = cur.rowcount
            await self._save_offsets(offsets)
        self._partitions |= new_days  # only once committed: a rolled-back CREATE must be made again
        return inserted

    async def _create_partitions(self, days: Iterable[dt.date]) -> None:
        for day in sorted(days):
            await self.conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} PARTITION OF {}.ticks FOR VALUES IN ({})").format(
                    sql.Identifier(self.schema),
                    sql.Identifier(partition_name(day)),
                    sql.Identifier(self.schema),
                    sql.Literal(day),
                )
            )

    async def _save_offsets(self, offsets: Mapping[tuple[str, int], int]) -> None:
        if not offsets:
            return
        async with self.conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(
                    "INSERT INTO {}.sink_offsets (consumer, topic, kafka_partition, next_offset)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT (consumer, topic, kafka_partition)"
                    " DO UPDATE SET next_offset = GREATEST(sink_offsets.next_offset, EXCLUDED.next_offset)"
                ).format(sql.Identifier(self.schema)),
                [(self.consumer, topic, partition, nxt) for (topic, partition), nxt in offsets.items()],
            )
