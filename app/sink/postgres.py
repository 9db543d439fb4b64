"""PostgreSQL side of the sink: versioned migrations, day partitions on demand, COPY then insert-on-conflict.

Every write is one transaction: the day partitions it needs, the rows and the next Kafka offset of every
input partition in the batch (``sink_offsets``). Rows are COPYed straight into the partitioned table under
a savepoint; a batch holding a key that is already there goes back to the savepoint and takes the slow
road, COPY into a staging table, then ``INSERT ... ON CONFLICT DO NOTHING``. So the offsets in the
database always match its rows, and a batch delivered again inserts nothing twice.

All objects live in one schema (``OBSERVER_PG_SCHEMA``; a replay writes to a schema of its own).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from app.krx import KST

log = logging.getLogger(__name__)

MIGRATION_LOCK = 0x0B5E5EE1  # advisory lock id: one migrator at a time


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


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_{day:%Y%m%d}"


def _utc(time_us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(time_us / 1_000_000, dt.UTC)


@functools.lru_cache(maxsize=64)
def _day(yyyymmdd: str) -> dt.date:
    return dt.datetime.strptime(yyyymmdd, "%Y%m%d").date()  # slow; a batch has one or two distinct days


def _kst_day(time_us: int) -> dt.date:
    return dt.datetime.fromtimestamp(time_us // 1_000_000, KST).date()


def tick_row(tick: Mapping[str, Any]) -> tuple[Any, ...]:
    """A RawTick record as a ``ticks`` row (columns in TABLE_COLUMNS["ticks"] order)."""
    return (
        _day(tick["business_date"]),
        tick["symbol"],
        tick["cumulative_volume"],
        tick["trade_time"],
        _utc(tick["event_time_us"]),
        tick["price"],
        tick["trade_volume"],
        tick["change_sign"],
        tick["change_rate"],
        tick["best_ask"],
        tick["best_bid"],
        tick["side"],
        _utc(tick["received_at_us"]),
        tick["app_key_id"],
        tick["session_id"],
        tick["frame_seq"],
        tick["record_index"],
        "^".join(tick["fields"]),  # as KIS sent them (migration 3)
    )


def snapshot_row(snapshot: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        _day(snapshot["business_date"]),
        snapshot["symbol"],
        snapshot["source"],
        _utc(snapshot["snapshot_time_us"]),
        snapshot["price"],
        snapshot["cumulative_volume"],
        snapshot["change_rate"],
        snapshot["rank"],
        Jsonb(snapshot["raw"]),
    )


def surge_row(surge: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        _day(surge["business_date"]),
        surge["symbol"],
        surge["source"],
        _utc(surge["window_start_us"]),
        _utc(surge["event_time_us"]),
        surge["current_volume"],
        surge["avg_volume_10m"],
        surge["surge_ratio"],
        surge["priority_score"],
    )


def decision_row(decision: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        _kst_day(decision["decided_at_us"]),
        decision["decision_id"],
        decision["app_key_id"],
        decision["slot_id"],
        decision["symbol"],
        decision["action"],
        decision["trigger_type"],
        decision["priority_score"],
        _utc(decision["decided_at_us"]),
        _utc(decision["detected_at_us"]),
        decision["current_volume"],
        decision["avg_volume_10m"],
        decision["surge_ratio"],
        decision["replaced_symbol"],
        decision["reason"],
    )


def overflow_row(overflow: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        _kst_day(overflow["decided_at_us"]),
        _utc(overflow["decided_at_us"]),
        overflow["symbol"],
        overflow["trigger_type"],
        _utc(overflow["detected_at_us"]),
        overflow["app_key_id"],
        overflow["priority_score"],
        overflow["reason"],
        overflow["current_volume"],
        overflow["avg_volume_10m"],
        overflow["surge_ratio"],
    )


def _columns(spec: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, kind.replace("_", " ")) for name, kind in (item.split(":") for item in spec.split()))


# (column, type) of every table, in the order of its row function; the types drive binary COPY.
TABLE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "ticks": _columns(
        "business_date:date symbol:text cumulative_volume:int8 trade_time:text event_time:timestamptz price:int8"
        " trade_volume:int8 change_sign:text change_rate:float8 best_ask:int8 best_bid:int8 side:text"
        " received_at:timestamptz app_key_id:text session_id:text frame_seq:int8 record_index:int4 fields:text"
    ),
    "snapshots": _columns(
        "business_date:date symbol:text source:text snapshot_time:timestamptz price:int8 cumulative_volume:int8"
        " change_rate:float8 rank:int4 raw:jsonb"
    ),
    "surges": _columns(
        "business_date:date symbol:text source:text window_start:timestamptz event_time:timestamptz"
        " current_volume:int8 avg_volume_10m:float8 surge_ratio:float8 priority_score:float8"
    ),
    "slot_decisions": _columns(
        "business_date:date decision_id:text app_key_id:text slot_id:int4 symbol:text action:text"
        " trigger_type:text priority_score:float8 decided_at:timestamptz detected_at:timestamptz"
        " current_volume:int8 avg_volume_10m:float8 surge_ratio:float8 replaced_symbol:text reason:text"
    ),
    "slot_overflow": _columns(
        "business_date:date decided_at:timestamptz symbol:text trigger_type:text detected_at:timestamptz"
        " app_key_id:text priority_score:float8 reason:text current_volume:int8 avg_volume_10m:float8"
        " surge_ratio:float8"
    ),
}


class PgStore:
    """Writes batches of rows (table -> rows, the business date first in every row) with their offsets, in
    one transaction; one per sink process (``consumer`` names it in ``sink_offsets``)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], schema: str, consumer: str) -> None:
        self.conn, self.schema, self.consumer = conn, schema, consumer
        self._partitions: set[tuple[str, dt.date]] = set()
        self.offsets: dict[tuple[str, int], int] = {}  # as committed; load_offsets() reads them

    async def load_offsets(self) -> dict[tuple[str, int], int]:
        cur = await self.conn.execute(
            sql.SQL("SELECT topic, kafka_partition, next_offset FROM {}.sink_offsets WHERE consumer = %s").format(
                sql.Identifier(self.schema)
            ),
            (self.consumer,),
        )
        self.offsets = {(topic, partition): nxt for topic, partition, nxt in await cur.fetchall()}
        return dict(self.offsets)

    def is_written(self, topic: str, partition: int, offset: int) -> bool:
        return offset < self.offsets.get((topic, partition), 0)

    async def write(
        self, rows: Mapping[str, Sequence[tuple[Any, ...]]], offsets: Mapping[tuple[str, int], int]
    ) -> dict[str, int]:
        """Insert ``rows`` and record ``offsets`` ((topic, partition) -> next offset) in one transaction;
        returns the rows inserted per table (fewer than given when some keys were already there)."""
        schema = sql.Identifier(self.schema)
        new = {(table, row[0]) for table, table_rows in rows.items() for row in table_rows} - self._partitions
        inserted: dict[str, int] = {}
        async with self.conn.transaction():
            for table, day in sorted(new):
                await self.conn.execute(
                    sql.SQL("CREATE TABLE IF NOT EXISTS {}.{} PARTITION OF {}.{} FOR VALUES IN ({})").format(
                        schema,
                        sql.Identifier(partition_name(table, day)),
                        schema,
                        sql.Identifier(table),
                        sql.Literal(day),
                    )
                )
            for table, table_rows in rows.items():
                if table_rows:
                    inserted[table] = await self._insert(table, table_rows)
            await self._save_offsets(offsets)
        self._partitions |= new  # only once committed: a rolled-back CREATE must be made again
        for key, nxt in offsets.items():
            self.offsets[key] = max(self.offsets.get(key, 0), nxt)
        return inserted

    async def _insert(self, table: str, rows: Sequence[tuple[Any, ...]]) -> int:
        """COPY straight into the table under a savepoint (a batch seldom holds a key already there); on a
        duplicate key, back to the savepoint and COPY into a staging table, then insert-on-conflict."""
        schema = sql.Identifier(self.schema)
        try:
            async with self.conn.transaction():
                await self._copy(sql.SQL("{}.{}").format(schema, sql.Identifier(table)), table, rows)
            return len(rows)
        except psycopg.errors.UniqueViolation:
            log.info("sink: a batch of %d %s rows holds keys already written; inserting the new ones", len(rows), table)
        staging = sql.Identifier(f"{table}_staging")
        await self.conn.execute(
            sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}.{} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS").format(
                staging, schema, sql.Identifier(table)
            )
        )
        await self._copy(staging, table, rows)
        columns = sql.SQL(", ").join(sql.Identifier(name) for name, _ in TABLE_COLUMNS[table])
        cur = await self.conn.execute(
            sql.SQL("INSERT INTO {}.{} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                schema, sql.Identifier(table), columns, columns, staging
            )
        )
        return cur.rowcount

    async def _copy(self, target: sql.Composable, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
        spec = TABLE_COLUMNS[table]
        columns = sql.SQL(", ").join(sql.Identifier(name) for name, _ in spec)
        copy_in = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(target, columns)
        async with self.conn.cursor().copy(copy_in) as copy:
            copy.set_types([kind for _, kind in spec])  # binary COPY: about 3x the rows/s of text
            for row in rows:
                await copy.write_row(row)

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
