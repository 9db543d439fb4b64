"""A Faust transport that never skips the unread head of an input partition.

When a restarted worker has changelogs to recover, faust-streaming (0.15.3) starts its fetcher during the
recovery, while the input partitions are still paused at Faust's level: records fetched for them then are
dropped, and aiokafka's position has moved past them. After recovery Faust seeks every partition back to
its *committed* offset, which repairs that, except for a partition with no committed offset yet (a worker
killed before its first commit): it stays past the dropped records and they are never processed. Seen in
2 of 4 CI runs of the kill -9 test. Here such a partition goes back to the start of the log (our
``auto_offset_reset`` is earliest), so the worst case is reprocessing, which the surge windows (cumulative
volume) and the slot manager absorb.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

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
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return InputSafeConsumerThread(self, loop=self.loop, beacon=self.beacon)


class InputSafeTransport(faust_aiokafka.Transport):
    Consumer = InputSafeConsumer


class ObserverApp(faust.App):
    """faust.App on :class:`InputSafeTransport` (Faust picks transports by URL; we pick ours by class)."""

    def _new_transport(self) -> Any:
        return InputSafeTransport(self.conf.broker_consumer, self)
