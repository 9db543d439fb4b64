"""The Faust app (``observer worker``): the surge agent now; the slot manager and web views join it.

Built by a factory rather than at import time, because topic names and the app id depend on the
configuration (tests give every run its own prefix). Inputs are read as raw bytes and decoded here, so a
record that cannot be decoded goes to ``kis.dlq`` with its topic, partition and offset instead of being
skipped by Faust's deserializer; outputs and table changelogs use the registered Avro codecs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import CollectorRegistry, Counter, generate_latest

from app.config import Settings
from app.records import CodecError, default_codec
from app.surge.rule import Observation, SurgeRule, SymbolWindows, observe
from app.worker.codecs import codec_name, register_avro_codecs

log = logging.getLogger(__name__)


@dataclass
class WorkerMetrics:
    registry: CollectorRegistry

    def __post_init__(self) -> None:
        r = self.registry
        self.ticks_in = Counter("observer_worker_ticks_in", "Ticks the surge agent took in", registry=r)
        self.late_ticks = Counter(
            "observer_worker_late_ticks", "Ticks older than the retained windows (not counted)", registry=r
        )
        self.surges_out = Counter("observer_worker_surges", "Surge events published", ["source"], registry=r)
        self.dead_letters = Counter(
            "observer_worker_dead_letters", "Records sent to the dead-letter topic", ["reason"], registry=r
        )


def create_app(settings: Settings) -> faust.App:
    register_avro_codecs()
    app_id = f"{settings.topic_prefix}{settings.worker_app_id}"
    datadir = settings.home / "worker" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",  # state lives in changelog topics and is rebuilt from them at start
        datadir=str(datadir),
        topic_partitions=12,
        topic_replication_factor=1,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        # A killed worker's partitions move after this long (Faust's default is a minute).
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        web_host=settings.worker_web_host,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_host,
        web_transport="tcp://",
    )
    metrics = WorkerMetrics(CollectorRegistry())
    codec = default_codec()
    rule = SurgeRule(
        multiplier=settings.surge_multiplier,
        min_volume=settings.surge_min_volume,
        lookback_minutes=settings.surge_lookback_minutes,
        retain_minutes=settings.surge_lookback_minutes + 2,
    )

    ticks_topic = app.topic(
        settings.topic("kis.ticks.raw"), key_serializer="raw", value_serializer="raw", internal=False
    )
    surges_topic = app.topic(
        settings.topic("observer.surges"), key_serializer="raw", value_serializer=codec_name("SurgeEvent")
    )
    dlq_topic = app.topic(settings.topic("kis.dlq"), key_serializer="raw", value_serializer=codec_name("DeadLetter"))
    # Keys are symbols, values SurgeWindows records, both as bytes: Faust tables pick their changelog
    # serializer from the types, and bytes means "raw", so the changelog holds our Avro as written.
    windows = app.Table("surge-windows", partitions=12, key_type=bytes, value_type=bytes)

    async def dead_letter(event: Any, reason: str, detail: str) -> None:
        metrics.dead_letters.labels(reason).inc()
        msg = event.message
        log.warning("dead-lettered %s[%s]@%s: %s: %s", msg.topic, msg.partition, msg.offset, reason, detail[:200])
        await dlq_topic.send(
            key=b"worker",
            value={
                "stage": "surge_agent",
                "reason": reason,
                "detail": detail,
                "payload": msg.value or b"",
                "received_at_us": time.time_ns() // 1000,
                "source_topic": msg.topic,
                "source_partition": msg.partition,
                "source_offset": msg.offset,
                "session_id": None,
                "frame_seq": None,
            },
        )

    @app.agent(ticks_topic)
    async def surge_agent(stream: Any) -> None:
        async for event in stream.events():
            metrics.ticks_in.inc()
            try:
                name, tick = codec.decode(event.value)
            except CodecError as exc:
                await dead_letter(event, "undecodable", str(exc))
                continue
            if name != "RawTick":
                await dead_letter(event, "wrong_record", f"a {name} record on the ticks topic")
                continue
            symbol: str = tick["symbol"]
            key = symbol.encode()
            obs = Observation(
                symbol,
                tick["business_date"],
                tick["event_time_us"],
                tick["cumulative_volume"],
                tick["trade_volume"],
                "ticks",
            )
            stored = windows.get(key)
            state = SymbolWindows.from_record(codec.decode(stored)[1]) if stored is not None else None
            state, surge, late = observe(state, obs, rule)
            if late:
                metrics.late_ticks.inc()
                continue
            windows[key] = codec.encode("SurgeWindows", state.to_record())
            if surge is not None:
                metrics.surges_out.labels(surge.source).inc()
                await surges_topic.send(key=key, value=surge.to_record())

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain; version=0.0.4")

    app.observer_metrics = metrics  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings) -> None:
    """Run the Faust worker in the foreground until SIGTERM/SIGINT."""
    from faust.worker import Worker

    app = create_app(settings)
    worker = Worker(app, loglevel="INFO", redirect_stdouts=False)
    worker.execute_from_commandline()
