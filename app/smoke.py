"""A smoke check of the running stack that leaves nothing behind.

Kafka: one Avro RawTick through a throw-away topic (never the live ``kis.ticks.raw``), produced with
``acks=all`` and idempotence, read back and compared. PostgreSQL: one row through a temporary table.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from app.config import Settings
from app.records import default_codec
from app.stack.common import StackError

SAMPLE_FRAME_RECORD = (
    "005930^112616^62700^2^400^0.64^62700.41^62700^63000^62300^62700^62600^125^9694968^607878273600^25807^15918^"
    "-9889^93.01^4614191^4291558^1^0.45^63.03^090013^3^0^090646^5^-300^100741^2^400^20230324^20^N^71292^244009^"
    "2795345^2044512^0.16^5367918^180.61^0^^62700"
)


def sample_tick() -> dict[str, Any]:
    """A RawTick built from a real KIS record (2023-03-24 11:26:16 KST, Samsung Electronics)."""
    fields = SAMPLE_FRAME_RECORD.split("^")
    return {
        "tr_id": "H0STCNT0",
        "symbol": fields[0],
        "business_date": fields[33],
        "trade_time": fields[1],
        "event_time_us": 1_679_624_776_000_000,
        "price": 62700,
        "trade_volume": 125,
        "cumulative_volume": 9_694_968,
        "change_sign": "2",
        "change_rate": 0.64,
        "best_ask": 62700,
        "best_bid": 62600,
        "side": "buy",
        "received_at_us": int(time.time() * 1e6),
        "app_key_id": "smoke",
        "session_id": "smoke",
        "frame_seq": 1,
        "record_index": 0,
        "record_count": 1,
        "fields": fields,
    }


async def run_smoke(settings: Settings) -> list[str]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    codec = default_codec()
    out: list[str] = []
    topic = f"_observer.smoke.{uuid.uuid4().hex[:8]}"
    tick = sample_tick()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
        started = time.monotonic()
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            meta = await producer.send_and_wait(
                topic,
                codec.encode("RawTick", tick),
                key=tick["symbol"].encode(),
                timestamp_ms=tick["event_time_us"] // 1000,
            )
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=settings.bootstrap_servers, auto_offset_reset="earliest", enable_auto_commit=False
        )
        await consumer.start()
        try:
            batch = await consumer.getmany(timeout_ms=10_000)
        finally:
            await consumer.stop()
        records = [r for rs in batch.values() for r in rs]
        if len(records) != 1:
            raise StackError(f"smoke: produced 1 record to {topic}, read back {len(records)}")
        name, value = codec.decode(records[0].value)
        if name != "RawTick" or value != tick or records[0].timestamp != meta.timestamp:
            raise StackError("smoke: the record read back differs from the one produced")
        out.append(
            f"kafka ok: 1 RawTick ({len(records[0].value)} bytes Avro) produced and read back "
            f"in {(time.monotonic() - started) * 1000:.0f} ms via {settings.bootstrap_servers}"
        )
    finally:
        await admin.delete_topics([topic])
        await admin.close()

    import psycopg

    started = time.monotonic()
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, connect_timeout=10) as conn:
        await conn.execute("CREATE TEMP TABLE smoke_tick (symbol text, cumulative_volume bigint, price bigint)")
        await conn.execute(
            "INSERT INTO smoke_tick VALUES (%s, %s, %s)", (tick["symbol"], tick["cumulative_volume"], tick["price"])
        )
        cur = await conn.execute("SELECT symbol, cumulative_volume, price FROM smoke_tick")
        row = await cur.fetchone()
    if row != (tick["symbol"], tick["cumulative_volume"], tick["price"]):
        raise StackError(f"smoke: PostgreSQL returned {row!r}")
    out.append(f"postgres ok: 1 row written and read back in {(time.monotonic() - started) * 1000:.0f} ms")
    return out
