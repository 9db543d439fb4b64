"""What this app key should be subscribed to, read back from ``slot.decisions`` (never from memory).

The follower reads the decisions topic from its beginning on every start (no consumer group, no
offsets to lose), applies each decision for this app key in order, and then follows new ones. A
symbol is assigned while its last decision is ``assign``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from app.records import CodecError, RecordCodec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Assignment:
    symbol: str
    slot_id: int
    decision_id: str


class AssignmentFollower:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        app_key_id: str,
        codec: RecordCodec,
        on_undecodable: Callable[[], None] = lambda: None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self._on_undecodable = on_undecodable  # a metric: an undecodable decision must not go unnoticed
        self.topic = topic
        self.app_key_id = app_key_id
        self.codec = codec
        self.assigned: dict[str, Assignment] = {}
        self.changed = asyncio.Event()
        self.ready = asyncio.Event()  # set once the topic was read up to its end at start
        self.decisions_read = 0
        self.undecodable = 0

    def apply(self, decision: dict[str, object], state: dict[str, Assignment] | None = None) -> None:
        """Apply one decision to ``state`` (default: the live assignment, then signal ``changed``)."""
        if decision.get("app_key_id") != self.app_key_id:
            return
        target = self.assigned if state is None else state
        symbol = str(decision["symbol"])
        if decision.get("action") == "assign":
            target[symbol] = Assignment(
                symbol,
                int(decision["slot_id"]),  # type: ignore[call-overload]
                str(decision["decision_id"]),
            )
        elif decision.get("action") == "release":
            target.pop(symbol, None)
        if state is None:
            self.changed.set()

    def _caught_up(self, state: dict[str, Assignment]) -> None:
        # Swap in the rebuilt state at once: a partial re-read must never look like releases.
        self.assigned = state
        self.ready.set()
        self.changed.set()

    async def run(self) -> None:
        """Follow the topic until cancelled; reconnects are aiokafka's business, retried with backoff."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        backoff = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap_servers,
                enable_auto_commit=False,
                group_id=None,
                auto_offset_reset="earliest",
            )
            try:
                await consumer.start()
                tp = TopicPartition(self.topic, 0)
                consumer.assign([tp])
                await consumer.seek_to_beginning(tp)
                end = (await consumer.end_offsets([tp]))[tp]
                rebuilding: dict[str, Assignment] | None = {}
                if end == 0:
                    self._caught_up({})
                    rebuilding = None
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    for record in batch.get(tp, []):
                        self.decisions_read += 1
                        try:
                            name, value = self.codec.decode(record.value)
                        except CodecError as exc:
                            self.undecodable += 1
                            self._on_undecodable()
                            log.error(
                                "slot.decisions offset %d undecodable, skipped for this app key: %s", record.offset, exc
                            )
                            name = ""
                        if name == "SlotDecision":
                            self.apply(value, rebuilding)
                        if rebuilding is not None and record.offset + 1 >= end:
                            self._caught_up(rebuilding)
                            rebuilding = None
                    backoff = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - broker trouble: keep the last state, retry
                log.warning(
                    "reading %s failed (%s: %s); retrying in %.1f s", self.topic, type(exc).__name__, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(30.0, backoff * 2)
            finally:
                await consumer.stop()
