"""Which slot a symbol held at a moment of event time, from the slot decisions, for the scalp lines.

A trade's line names the slot its symbol held and why (``slot_id``, ``trigger_type``): the last decision
for the trade's app key and symbol decided at or before the trade's event time, if it was an assignment.
The bridge subscribes a symbol only after reading its assignment from ``slot.decisions``, so every decision
a trade can depend on is in that topic before the trade is in ``kis.ticks.raw``: reading the decisions up
to their end before a batch of trades (:meth:`DecisionReader.catch_up`) makes the join a function of the
data, the same live and in a replay.
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.records import CodecError, RecordCodec

log = logging.getLogger(__name__)


class SlotHistory:
    def __init__(self) -> None:
        self._times: dict[tuple[str, str], list[int]] = {}
        self._entries: dict[tuple[str, str], list[tuple[int | None, str | None]]] = {}
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, decision: dict[str, Any]) -> None:
        """Take one decision (a decision repeated by a restarted worker, same id, counts once)."""
        if decision["decision_id"] in self._seen:
            return
        self._seen.add(decision["decision_id"])
        key = (decision["app_key_id"], decision["symbol"])
        times = self._times.setdefault(key, [])
        entries = self._entries.setdefault(key, [])
        held = (decision["slot_id"], decision["trigger_type"]) if decision["action"] == "assign" else (None, None)
        at = bisect.bisect_right(times, decision["decided_at_us"])  # equal times keep the log's order
        times.insert(at, decision["decided_at_us"])
        entries.insert(at, held)

    def slot_at(self, app_key_id: str, symbol: str, time_us: int) -> tuple[int | None, str | None]:
        times = self._times.get((app_key_id, symbol))
        if not times:
            return None, None
        at = bisect.bisect_right(times, time_us)
        return (None, None) if at == 0 else self._entries[(app_key_id, symbol)][at - 1]


class DecisionReader:
    """Reads ``slot.decisions`` from its beginning (no consumer group) into a :class:`SlotHistory`; its
    second client answers the sink's end-offset questions (lag and catch-up)."""

    def __init__(self, bootstrap_servers: str, topic: str, codec: RecordCodec) -> None:
        self.topic = topic
        self.codec = codec
        self.history = SlotHistory()
        self.undecodable = 0  # the sink agent dead-letters them when it reads them as its own input
        self.bootstrap_servers = bootstrap_servers
        self._consumer: AIOKafkaConsumer | None = None  # made in start(): aiokafka wants a running loop
        # End offsets are asked on a client of their own. The reading consumer always has a fetch waiting
        # at the broker (up to fetch_max_wait_ms, 500 ms, when there is nothing new), and a broker answers
        # one connection's requests in order: asked there, each batch's catch_up waited ~360 ms behind it.
        self._offsets: AIOKafkaConsumer | None = None
        self._tp = TopicPartition(topic, 0)

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("DecisionReader.start() was not called")
        return self._consumer

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        self._offsets = AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, enable_auto_commit=False)
        await self.consumer.start()
        await self._offsets.start()
        self.consumer.assign([self._tp])
        await self.consumer.seek_to_beginning(self._tp)

    async def stop(self) -> None:
        await self.consumer.stop()
        if self._offsets is not None:
            await self._offsets.stop()

    @property
    def offsets(self) -> AIOKafkaConsumer:
        if self._offsets is None:
            raise RuntimeError("DecisionReader.start() was not called")
        return self._offsets

    async def catch_up(self) -> None:
        """Read every decision written before this call."""
        end = (await self.offsets.end_offsets([self._tp]))[self._tp]
        while await self.consumer.position(self._tp) < end:
            batch = await self.consumer.getmany(self._tp, timeout_ms=1000)
            for message in batch.get(self._tp, []):
                try:
                    name, value = self.codec.decode(message.value or b"")
                except CodecError as exc:
                    self.undecodable += 1
                    log.warning("slot history: undecodable decision at offset %d: %s", message.offset, exc)
                    continue
                if name == "SlotDecision":
                    self.history.add(value)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self.offsets.end_offsets(partitions))
