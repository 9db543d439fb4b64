"""``observer analytics minute-bars``: a downstream consumer group of its own, one-minute OHLCV bars per symbol
from ``kis.ticks.raw`` into PostgreSQL. The example to copy when adding an analytics consumer.

A plain aiokafka consumer in group ``observer-analytics-minute-bars`` (``--group``), not Faust: what a user
of the topics would write. Exactly once into PostgreSQL, however often it is stopped, killed or its Kafka
offsets reset:

- each batch's bar changes and the next offset of every partition it read are written in one transaction
  (table ``analytics_offsets``); after a restart or a rebalance the consumer seeks to those offsets, so
  PostgreSQL, not Kafka, says what is done. The group's Kafka offsets are committed after the transaction,
  only so that Kafka's own tools show the group's lag;
- a trade the bridge published twice (its at-least-once retry) is recognised by its cumulative volume:
  per symbol and day KIS's cumulative volume grows with every trade, so a trade at or below the highest
  one already in the bars is not added again.

A bar is (business date, symbol, KST minute): open and close are the prices of the trades with the lowest
and highest cumulative volume in the minute, high and low the extremes, volume the sum of trade volumes,
trades their count. A record that is not a RawTick goes to ``kis.dlq`` (stage ``analytics``) with its
source offset, and is counted.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from psycopg import sql

from app.config import Settings
from app.records import CodecError, dead_letter_record, default_codec

log = logging.getLogger(__name__)

MINUTE_US = 60_000_000

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS {schema}.minute_bars (
    business_date date        NOT NULL,
    symbol        text        NOT NULL,
    minute        timestamptz NOT NULL,
    open          bigint      NOT NULL,
    high          bigint      NOT NULL,
    low           bigint      NOT NULL,
    close         bigint      NOT NULL,
    volume        bigint      NOT NULL,
    trades        integer     NOT NULL,
    first_cumulative bigint   NOT NULL,
    last_cumulative  bigint   NOT NULL,
    PRIMARY KEY (business_date, symbol, minute)
);
CREATE TABLE IF NOT EXISTS {schema}.analytics_offsets (
    consumer        text    NOT NULL,
    topic           text    NOT NULL,
    kafka_partition integer NOT NULL,
    next_offset     bigint  NOT NULL,
    PRIMARY KEY (consumer, topic, kafka_partition)
);
"""

# Merges a batch's partial bar into the stored one: exactly once is the offsets' job, so adding is safe.
UPSERT_SQL = """
INSERT INTO {schema}.minute_bars AS b VALUES (%s, %s, to_timestamp(%s / 1e6), %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (business_date, symbol, minute) DO UPDATE SET
    open = CASE WHEN EXCLUDED.first_cumulative < b.first_cumulative THEN EXCLUDED.open ELSE b.open END,
    close = CASE WHEN EXCLUDED.last_cumulative > b.last_cumulative THEN EXCLUDED.close ELSE b.close END,
    high = greatest(b.high, EXCLUDED.high),
    low = least(b.low, EXCLUDED.low),
    volume = b.volume + EXCLUDED.volume,
    trades = b.trades + EXCLUDED.trades,
    first_cumulative = least(b.first_cumulative, EXCLUDED.first_cumulative),
    last_cumulative = greatest(b.last_cumulative, EXCLUDED.last_cumulative)
"""


@dataclass
class Bar:
    open: int
    high: int
    low: int
    close: int
    volume: int
    trades: int
    first_cumulative: int
    last_cumulative: int

    def add(self, price: int, volume: int, cumulative: int) -> None:
        if cumulative < self.first_cumulative:
            self.open, self.first_cumulative = price, cumulative
        if cumulative > self.last_cumulative:
            self.close, self.last_cumulative = price, cumulative
        self.high, self.low = max(self.high, price), min(self.low, price)
        self.volume += volume
        self.trades += 1


@dataclass
class Counts:
    records_in: int = 0
    ticks_added: int = 0
    duplicates: int = 0
    dead_letters: int = 0


class MinuteBars:
    def __init__(self, settings: Settings, group: str) -> None:
        self.settings = settings
        self.group = group
        self.topic = settings.topic("kis.ticks.raw")
        self.schema = sql.Identifier(settings.pg_schema)
        self.codec = default_codec()
        self.counts = Counts()
        self.highest: dict[tuple[str, str], int] = {}  # (business date, symbol) -> highest cumulative volume in bars
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def open(self) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(self.settings.postgres_dsn, connect_timeout=10)
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(self.schema))
        await conn.execute(sql.SQL(SCHEMA_SQL).format(schema=self.schema))
        rows = await (
            await conn.execute(
                sql.SQL(
                    "SELECT business_date::text, symbol, max(last_cumulative) FROM {}.minute_bars GROUP BY 1, 2"
                ).format(self.schema)
            )
        ).fetchall()
        self.highest = {(d.replace("-", ""), s): n for d, s, n in rows}
        await conn.commit()
        self.conn = conn
        return conn

    async def stored_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        assert self.conn is not None
        query = sql.SQL(
            "SELECT kafka_partition, next_offset FROM {}.analytics_offsets WHERE consumer = %s AND topic = %s"
        ).format(self.schema)
        rows = await (await self.conn.execute(query, (self.group, self.topic))).fetchall()
        await self.conn.commit()
        wanted = {tp.partition for tp in partitions}
        return {TopicPartition(self.topic, p): n for p, n in rows if p in wanted}

    def fold(self, batch: dict[TopicPartition, list[Any]]) -> tuple[dict[tuple[str, str, int], Bar], list[Any]]:
        """The batch's partial bars, and the records to dead-letter."""
        bars: dict[tuple[str, str, int], Bar] = {}
        bad: list[Any] = []
        for messages in batch.values():
            for m in messages:
                self.counts.records_in += 1
                try:
                    name, tick = self.codec.decode(m.value or b"")
                except CodecError as exc:
                    bad.append((m, str(exc)))
                    continue
                if name != "RawTick":
                    bad.append((m, f"a {name} record on {m.topic}"))
                    continue
                day, symbol, cumulative = tick["business_date"], tick["symbol"], tick["cumulative_volume"]
                if cumulative <= self.highest.get((day, symbol), -1):
                    self.counts.duplicates += 1
                    continue
                self.highest[(day, symbol)] = cumulative
                minute = tick["event_time_us"] // MINUTE_US * MINUTE_US
                price, volume = tick["price"], tick["trade_volume"]
                bar = bars.get((day, symbol, minute))
                if bar is None:
                    bars[(day, symbol, minute)] = Bar(price, price, price, price, volume, 1, cumulative, cumulative)
                else:
                    bar.add(price, volume, cumulative)
                self.counts.ticks_added += 1
        return bars, bad

    async def store(self, bars: dict[tuple[str, str, int], Bar], next_offsets: dict[TopicPartition, int]) -> None:
        """The bars and the offsets they reach, in one transaction."""
        assert self.conn is not None
        async with self.conn.cursor() as cur:
            await cur.executemany(
                sql.SQL(UPSERT_SQL).format(schema=self.schema),
                [_row(day, symbol, minute, bar) for (day, symbol, minute), bar in bars.items()],
            )
            await cur.executemany(
                sql.SQL(
                    "INSERT INTO {}.analytics_offsets VALUES (%s, %s, %s, %s) ON CONFLICT (consumer, topic, "
                    "kafka_partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"
                ).format(self.schema),
                [(self.group, tp.topic, tp.partition, n) for tp, n in next_offsets.items()],
            )
        await self.conn.commit()


def _row(day: str, symbol: str, minute_us: int, b: Bar) -> tuple[Any, ...]:
    date = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    return (
        date,
        symbol,
        minute_us,
        b.open,
        b.high,
        b.low,
        b.close,
        b.volume,
        b.trades,
        b.first_cumulative,
        b.last_cumulative,
    )


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, bars: MinuteBars, consumer: AIOKafkaConsumer) -> None:
        self.bars, self.consumer = bars, consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        return None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        stored = await self.bars.stored_offsets(list(assigned))
        for tp, offset in stored.items():
            self.consumer.seek(tp, offset)  # PostgreSQL says what is done, whatever Kafka's offsets say
        if stored:
            await self.consumer.commit(stored)  # and Kafka's tools say so too (their lag is the true one)


async def run_minute_bars(settings: Settings, group: str, echo: Any = print) -> Counts:
    """Consume until SIGTERM or SIGINT; progress every 10 s."""
    bars = MinuteBars(settings, group)
    conn = await bars.open()
    group_id = f"{settings.topic_prefix}{group}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 2**20,
    )
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    consumer.subscribe([bars.topic], listener=_SeekToStored(bars, consumer))
    await consumer.start()
    await producer.start()
    shown = time.monotonic()
    echo(f"minute bars: group {group_id}, {bars.topic} -> {settings.pg_schema}.minute_bars")
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            if batch:
                found, bad = bars.fold(batch)
                for m, reason in bad:
                    bars.counts.dead_letters += 1
                    log.warning("analytics: dead-lettered %s[%s]@%s: %s", m.topic, m.partition, m.offset, reason)
                    record = dead_letter_record(
                        "analytics",
                        "undecodable",
                        reason,
                        m.value or b"",
                        time.time_ns() // 1000,
                        source=(m.topic, m.partition, m.offset),
                    )
                    await (
                        await producer.send(
                            settings.topic("kis.dlq"), bars.codec.encode("DeadLetter", record), b"analytics"
                        )
                    )
                ends = {tp: messages[-1].offset + 1 for tp, messages in batch.items() if messages}
                await bars.store(found, ends)
                await consumer.commit(ends)  # for Kafka's tools; PostgreSQL holds the offsets that count
            if time.monotonic() - shown >= 10:
                shown = time.monotonic()
                c = bars.counts
                echo(
                    f"  {c.records_in:,} records, {c.ticks_added:,} ticks in bars, {c.duplicates:,} repeated, "
                    f"{c.dead_letters:,} dead-lettered"
                )
    finally:
        await consumer.stop()
        await producer.stop()
        await conn.close()
    return bars.counts
