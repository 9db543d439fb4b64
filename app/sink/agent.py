"""The sink's Faust app (``observer sink``): one agent writing every input record to JSONL and PostgreSQL.

Inputs are read as raw bytes, a batch at a time, and handed to :class:`app.sink.writer.SinkWriter`; Faust
acks a batch only after the writer returns, that is after both stores committed it, so the group's offsets
never pass unwritten data. The stores' own offsets are the truth all the same (see ``writer``). One sink
process per data root: the archive's commit record has one writer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
from aiokafka import TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from app.config import ConfigError, Settings
from app.kafka_read import PartitionRange, new_reader, read_ranges
from app.observability import with_process_metrics
from app.records import dead_letter_record, default_codec
from app.sink.archive import JsonlArchive
from app.sink.render import KINDS
from app.sink.slot_history import DecisionReader
from app.sink.writer import InputRecord, PgConnection, SinkMetrics, SinkWriter
from app.worker.codecs import codec_name
from app.worker.transport import new_observer_app

log = logging.getLogger(__name__)


async def read_range(
    bootstrap_servers: str, topic: str, partition: int, start: int, end: int
) -> list[tuple[int, bytes]]:
    """Records ``start <= offset < end`` of one partition (fewer if retention removed some), read without a group."""
    reader = new_reader(bootstrap_servers)
    await reader.start()
    try:
        wanted = [PartitionRange(partition, start, end)]
        return [(r.offset, r.value) async for r in read_ranges(reader, topic, wanted)]
    finally:
        await reader.stop()


def sink_inputs(settings: Settings) -> list[str]:
    """The logical topics this sink writes (``OBSERVER_SINK_TOPICS``, or every kind)."""
    unknown = sorted(set(settings.sink_topics) - set(KINDS))
    if unknown:
        raise ConfigError(
            f"OBSERVER_SINK_TOPICS: {', '.join(unknown)} not a sink input; choose from {', '.join(KINDS)}"
        )
    return list(settings.sink_topics or KINDS)


def create_sink_app(settings: Settings) -> faust.App:
    app = new_observer_app(
        settings,
        "sink",
        settings.sink_app_id,
        settings.sink_web_host,
        settings.sink_web_port,
        stream_buffer_maxsize=max(4096, 2 * settings.sink_batch_max),
    )
    codec = default_codec()
    metrics = SinkMetrics(CollectorRegistry())
    archive = JsonlArchive(settings.data_root)
    recovery = archive.open()  # an archive it cannot trust stops the start, with the file and the reason
    for rel, cut in recovery.truncated.items():
        log.warning("sink: recovery cut %d uncommitted bytes from %s", cut, rel)
    kinds = {settings.topic(logical): KINDS[logical] for logical in sink_inputs(settings)}
    inputs = app.topic(*kinds, key_serializer="raw", value_serializer="raw")
    dlq_topic = app.topic(settings.topic("kis.dlq"), key_serializer="raw", value_serializer=codec_name("DeadLetter"))
    reader = DecisionReader(settings.bootstrap_servers, settings.topic("slot.decisions"), codec)
    pg = PgConnection(settings.postgres_dsn, settings.pg_schema, app.conf.id)
    started: list[bool] = []

    async def start_reader() -> None:
        if not started:
            await reader.start()
            started.append(True)

    async def before_ticks() -> None:
        await start_reader()
        await reader.catch_up()

    async def dead_letter(rec: InputRecord, reason: str, detail: str) -> None:
        value = dead_letter_record(
            "sink", reason, detail, rec.value, time.time_ns() // 1000, source=(rec.topic, rec.partition, rec.offset)
        )
        delivered = await dlq_topic.send(key=b"sink", value=value)
        await delivered  # in Kafka before the stores' offsets pass the record

    async def read_gap(topic: str, partition: int, start: int, end: int) -> list[tuple[int, bytes]]:
        return await read_range(settings.bootstrap_servers, topic, partition, start, end)

    writer = SinkWriter(
        archive,
        pg,
        codec,
        metrics,
        dead_letter,
        reader.history.slot_at,
        before_ticks=before_ticks,
        read_gap=read_gap,
        retry_max_s=settings.sink_retry_max_s,
    )

    @app.agent(inputs)
    async def sink_agent(stream: Any) -> None:
        async for batch in stream.take_events(settings.sink_batch_max, within=settings.sink_batch_wait_s):
            records = [
                InputRecord(
                    kinds[e.message.topic],
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.value or b"",
                )
                for e in batch
            ]
            await writer.write_batch(records)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def measure_lag() -> None:
        assigned = [TopicPartition(tp.topic, tp.partition) for tp in app.consumer.assignment() if tp.topic in kinds]
        if not assigned:
            return
        await start_reader()
        ends = await reader.end_offsets(assigned)
        lag: dict[str, int] = dict.fromkeys(kinds, 0)
        pg_offsets = pg.store.offsets if pg.store is not None else {}
        for tp, end in ends.items():
            done = min(archive.next_offset(tp.topic, tp.partition) or 0, pg_offsets.get((tp.topic, tp.partition), 0))
            lag[tp.topic] += max(0, end - done)
        for topic, n in lag.items():
            metrics.lag.labels(kinds[topic].topic).set(n)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(
            generate_latest(with_process_metrics(metrics.registry)), content_type="text/plain; version=0.0.4"
        )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close(app: Any, **kwargs: Any) -> None:
        if started:
            await reader.stop()
        await pg.close()

    app.observer_metrics = metrics  # type: ignore[attr-defined]
    return app


def run_sink(settings: Settings) -> None:
    """Run the sink in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = create_sink_app(settings)
    worker = Worker(app, loglevel="INFO", redirect_stdouts=False)
    worker.execute_from_commandline()
