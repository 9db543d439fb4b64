"""A Faust transport that never skips the unread head of an input partition, and table writes whose
changelog records go out once per offset commit instead of once per write.

When a restarted worker has changelogs to recover, faust-streaming (0.15.3) starts its fetcher during the
recovery, while the input partitions are still paused at Faust's level: records fetched for them then are
dropped, and aiokafka's position has moved past them. After recovery Faust seeks every partition back to
its *committed* offset, which repairs that, except for a partition with no committed offset yet (a worker
killed before its first commit): it stays past the dropped records and they are never processed. Seen in
2 of 4 CI runs of the kill -9 test. Here such a partition goes back to the start of the log (our
``auto_offset_reset`` is earliest), so the worst case is reprocessing, which the surge windows (cumulative
volume) and the slot manager absorb.

Faust sends a changelog record for every table write, which for the surge windows is one per tick per
symbol: most of the worker's producer traffic. :class:`DeferredChangelog` keeps the latest value of each
written key and sends it just before the next commit, from :meth:`InputSafeConsumer.force_commit`; the
commit then flushes the producer before it commits offsets, as Faust does for its own writes. So the
changelog never lags the committed offsets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from app import kafka_backoff
from app.config import Settings
from app.worker.codecs import register_avro_codecs

log = logging.getLogger(__name__)


class InputSafeConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_or_beginning)  # type: ignore[no-any-return]

    async def _seek_to_committed_or_beginning(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed: dict[TopicPartition, int | None] = await consumer.seek_to_committed()
        changelogs = self.app.tables.changelog_topics
        uncommitted = sorted(tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs)
        if uncommitted:
            log.info("%d input partitions have no committed offset: reading them from the start", len(uncommitted))
            await consumer.seek_to_beginning(*uncommitted)
        return committed  # type: ignore[return-value]


class InputSafeConsumer(faust_aiokafka.Consumer):
    async def force_commit(self, topics: Any = None, start_new_transaction: bool = True) -> bool:
        # The hooks are synchronous on purpose: nothing else runs between their writes and Faust's choice
        # of the offsets to commit, so every acked event's effect is in the changelog those offsets follow.
        for hook in getattr(self.app, "before_commit", ()):
            hook()
        return await super().force_commit(topics, start_new_transaction=start_new_transaction)  # type: ignore[no-any-return]

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return InputSafeConsumerThread(self, loop=self.loop, beacon=self.beacon)


class InputSafeTransport(faust_aiokafka.Transport):
    Consumer = InputSafeConsumer


class ObserverApp(faust.App):
    """faust.App on :class:`InputSafeTransport` (Faust picks transports by URL; we pick ours by class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_commit: list[Callable[[], None]] = []  # run at every offset commit, before the offsets

    def _new_transport(self) -> Any:
        return InputSafeTransport(self.conf.broker_consumer, self)


def new_observer_app(
    settings: Settings, role: str, app_name: str, web_host: str, web_port: int, **options: Any
) -> ObserverApp:
    """The Faust app of a role ("worker", "sink"): the id is the topic prefix plus ``app_name``; Avro codecs
    registered; in-memory stores rebuilt from changelogs; every send acknowledged by all replicas; a killed
    process's partitions move after 10 s (Faust's default is a minute)."""
    register_avro_codecs()
    kafka_backoff.install()
    app_id = f"{settings.topic_prefix}{app_name}"
    datadir = settings.home / role / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    return ObserverApp(
        app_id,
        broker=f"kafka://{settings.bootstrap_servers}",
        store="memory://",  # state lives in changelog topics and is rebuilt from them at start
        datadir=str(datadir),
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=10.0,
        broker_heartbeat_interval=3.0,
        web_host=web_host,
        web_port=web_port,
        web_bind=web_host,
        web_transport="tcp://",
        **options,
    )


class DeferredChangelog:
    """Writes to a table of bytes whose changelog records are sent at the next offset commit.

    The table's local data is updated at once (reads see it); the changelog gets the key's latest value
    only, in the partition the caller names (the key's own partition: in a batch of several partitions'
    events, Faust's "current event" is not the one the key came from).
    """

    def __init__(self, app: ObserverApp, table: Any) -> None:
        self.table = table
        self.dirty: dict[bytes, tuple[bytes, int]] = {}
        app.before_commit.append(self.flush)

    def set(self, key: bytes, value: bytes, partition: int) -> None:
        self.table.data[key] = value
        self.dirty[key] = (value, partition)

    def flush(self) -> None:
        for key, (value, partition) in self.dirty.items():
            self.table.send_changelog(partition, key, value)
        self.dirty.clear()
