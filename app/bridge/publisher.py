"""Getting every record into Kafka: direct while the broker acknowledges, spilled to disk while it does not.

Two modes, one event loop, so a mode switch never races a submit:

- DIRECT: records go to an idempotent ``acks=all`` producer in order. aiokafka retries a failed request
  itself, deduplicated by the broker through the producer id and sequence numbers.
- SPILL: entered when the oldest unacknowledged record is older than ``stall_s``, when the producer
  cannot take a record, or when a send fails for good. New records are appended to the bounded on-disk
  journal; records the producer already holds stay with it until acked or failed (failed ones are
  journaled, never dropped). Once nothing is in flight, the journal is published oldest first, and
  each batch is committed only after every record of it was acked. When it is empty: DIRECT again.

A full journal pauses ingest (``wait_capacity``) with a loud log line and a metric rather than
dropping anything. ``submit`` never blocks, so the WebSocket reader keeps answering PINGPONG.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiokafka.partitioner import DefaultPartitioner

from app.bridge.journal import Journal, JournalFull, JournalRecord
from app.bridge.metrics import BridgeMetrics

log = logging.getLogger(__name__)


class Mode(StrEnum):
    DIRECT = "direct"
    SPILL = "spill"


@dataclass(frozen=True)
class PublisherConfig:
    bootstrap_servers: str
    stall_s: float = 3.0  # an unacked record this old means the broker is not keeping up: spill
    max_in_flight: int = 50_000  # records the producer may hold unacked
    linger_ms: int = 1  # batches are built before they reach the producer; lingering only adds latency
    max_batch_bytes: int = 512 * 1024
    request_timeout_ms: int = 30_000
    drain_batch: int = 2_000
    spill_flush_s: float = 0.01  # journal appends are batched this long (the same exposure as the queue)
    retry_backoff_s: tuple[float, float] = (0.2, 5.0)


class Publisher:
    def __init__(self, config: PublisherConfig, journal: Journal, metrics: BridgeMetrics) -> None:
        self.config = config
        self.journal = journal
        self.metrics = metrics
        metrics.journal_capacity.set(journal.max_bytes)
        self.mode = Mode.SPILL if len(journal) else Mode.DIRECT  # leftovers of a previous run go first
        self._producer: Any = None
        self._queue: deque[JournalRecord] = deque()
        self._spill_buffer: list[JournalRecord] = []
        self._handing: list[JournalRecord] = []  # the chunk being handed to the producer right now
        # Batches the producer holds, by id (insertion = send order): their records and when they went.
        self._in_flight: dict[int, list[JournalRecord]] = {}
        self._in_flight_records = 0
        self._sent_at: dict[int, float] = {}
        self._next_id = 0
        self._partitions: dict[str, list[int]] = {}  # topic -> partition ids, refreshed per hand-over
        self._partition_of: dict[tuple[str, int, bytes | None], int] = {}  # (topic, partition count, key) -> partition
        self._head_acked: set[int] = set()  # journal records (index from the head) acked but not yet committed
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._capacity = asyncio.Event()
        self._capacity.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.published_total = 0
        self.on_acked: Callable[[JournalRecord], None] | None = None  # e.g. a benchmark's latency probe
        self.submitted_total = 0
        self.journaled_total = 0
        self.errors_total = 0
        self._update_journal_gauges()

    # ----------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if not await self._ensure_producer():
            self._enter_spill("broker unreachable at start")
        self._tasks = [
            asyncio.create_task(self._pump(), name="publisher-pump"),
            asyncio.create_task(self._drain_loop(), name="publisher-drain"),
        ]

    async def _ensure_producer(self) -> bool:
        if self._producer is not None:
            return True
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            linger_ms=self.config.linger_ms,
            max_batch_size=self.config.max_batch_bytes,
            request_timeout_ms=self.config.request_timeout_ms,
            max_request_size=4 * 2**20,
        )
        try:
            await producer.start()
        except Exception as exc:  # noqa: BLE001 - any start failure means "no broker yet"; we retry
            self.metrics.publish_errors.labels("producer_start").inc()
            log.warning("kafka producer cannot start (%s: %s); records go to the journal", type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                await producer.stop()
            return False
        self._producer = producer
        return True

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Publish what can be published within the timeout; whatever is left stays in the journal."""
        self._closing = True
        if not await self.flush(timeout_s):
            log.warning(
                "publisher stop: not everything acked within %.0f s (%d queued, %d in flight, %d being handed "
                "over, %d in the journal); the rest is kept in the journal",
                timeout_s,
                len(self._queue) + len(self._spill_buffer),
                self._in_flight_records,
                len(self._handing),
                len(self.journal),
            )
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Anything not acked by now is kept on disk for the next start.
        # A chunk cancelled in the middle of its hand-over may be partly in the producer: kept all the same
        # (a duplicate in Kafka is absorbed downstream by the natural keys; a loss would not be).
        leftovers = (
            [r for batch in self._in_flight.values() for r in batch]
            + self._handing
            + list(self._queue)
            + self._spill_buffer
        )
        self._handing = []
        self._in_flight.clear()
        self._in_flight_records = 0
        self._queue.clear()
        self._spill_buffer = []
        if leftovers:
            # Past the journal's bound if need be: at exit, memory is the only other place they are.
            over = self.journal.pending_bytes >= self.journal.max_bytes
            self.journal.append(leftovers, over_limit=True)
            self.journaled_total += len(leftovers)
            self.metrics.journaled.inc(len(leftovers))
            log.log(
                logging.ERROR if over else logging.INFO,
                "%d unacknowledged records kept in the journal for the next start%s",
                len(leftovers),
                " (past its size limit)" if over else "",
            )
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
        self.journal.sync()
        self._update_journal_gauges()

    # ------------------------------------------------------------------------------------- submit

    def submit(self, records: Sequence[JournalRecord]) -> None:
        """Take records for publishing. Never blocks; callers honour ``wait_capacity`` between frames."""
        self.submitted_total += len(records)
        self._idle.clear()
        if self.mode is Mode.DIRECT:
            self._queue.extend(records)
        else:
            self._spill_buffer.extend(records)
        self._wake.set()

    async def wait_capacity(self) -> None:
        """Pause the caller while the journal is full (nothing is dropped; the loss, if any, is upstream)."""
        await self._capacity.wait()

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every submitted record is acked (the journal included); False if the timeout came first.

        The deadline is checked here rather than by cancelling from outside: on Python 3.11 a cancellation
        that lands as the inner wait times out can be swallowed, and the flush would never end.
        """
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._is_idle():
                return True
            left = 0.5 if end is None else min(0.5, end - time.monotonic())
            if left <= 0:
                return False
            self._idle.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), left)

    def _is_idle(self) -> bool:
        return not (self._queue or self._spill_buffer or self._handing or self._in_flight or len(self.journal))

    @property
    def in_flight(self) -> int:
        return self._in_flight_records

    # -------------------------------------------------------------------------------------- direct

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.mode is Mode.DIRECT:
                await self._send_queue()
            if self._spill_buffer:
                self._flush_spill_buffer()
            if self._is_idle():
                self._idle.set()

    async def _send_queue(self) -> None:
        while self._queue and self.mode is Mode.DIRECT:
            if self._stalled():
                self._enter_spill("broker not acknowledging")
                return
            chunk = [self._queue.popleft() for _ in range(min(len(self._queue), self.config.drain_batch))]
            self._handing = chunk  # neither queued nor in flight while the producer takes it
            handed, error = await self._hand_over(chunk)
            for indices, future in handed:
                self._track([chunk[i] for i in indices], future)
            self._handing = []
            if error is not None:
                sent = {i for indices, _ in handed for i in indices}
                # What the producer did not take goes back in front, in order, and on to the journal.
                self._queue.extendleft(reversed([r for i, r in enumerate(chunk) if i not in sent]))
                self._count_error(error, "send")
                self._enter_spill("send failed")
                return
            if self._in_flight_records >= self.config.max_in_flight:
                await self._wait_in_flight_below(self.config.max_in_flight // 2)

    async def _hand_over(
        self, records: Sequence[JournalRecord]
    ) -> tuple[list[tuple[list[int], asyncio.Future[Any]]], BaseException | None]:
        """Give ``records`` to the producer as one batch per partition (more when one fills), in order.

        Partitions are chosen as aiokafka's default partitioner would (murmur2 of the key), so a symbol's
        records land where any Kafka client would put them. Whole batches skip aiokafka's per-record
        ``send`` path, which is most of a bare producer's cost. Returns the batches handed over (indices
        into ``records``, ack future) and the error that stopped the hand-over, if one did.
        """
        producer = self._producer
        handed: list[tuple[list[int], asyncio.Future[Any]]] = []
        open_batches: dict[tuple[str, int], tuple[Any, list[int]]] = {}

        async def send(topic: str, partition: int, batch: Any, indices: list[int]) -> None:
            future = await asyncio.wait_for(
                producer.send_batch(batch, topic, partition=partition), timeout=self.config.stall_s
            )
            handed.append((indices, future))

        try:
            for i, r in enumerate(records):
                tp = (r.topic, await self._partition(r.topic, r.key))
                entry = open_batches.get(tp)
                if entry is None:
                    entry = open_batches[tp] = (producer.create_batch(), [])
                if entry[0].append(key=r.key, value=r.value, timestamp=r.timestamp_ms) is None:
                    del open_batches[tp]
                    await send(*tp, *entry)
                    entry = open_batches[tp] = (producer.create_batch(), [])
                    if entry[0].append(key=r.key, value=r.value, timestamp=r.timestamp_ms) is None:
                        raise ValueError(f"a {r.topic} record of {len(r.value)} bytes does not fit in a batch")
                entry[1].append(i)
            while open_batches:
                tp, entry = open_batches.popitem()
                await send(*tp, *entry)
        except Exception as exc:  # noqa: BLE001 - the caller keeps what was not handed over
            return handed, exc
        return handed, None

    async def _partition(self, topic: str, key: bytes | None) -> int:
        partitions = self._partitions.get(topic)
        if partitions is None:
            partitions = self._partitions[topic] = sorted(await self._producer.partitions_for(topic))
        cache_key = (topic, len(partitions), key)
        partition = self._partition_of.get(cache_key)
        if partition is None:
            partition = self._partition_of[cache_key] = DefaultPartitioner()(key, partitions, partitions)
        return partition

    def _track(self, records: list[JournalRecord], future: asyncio.Future[Any]) -> None:
        ident = self._next_id
        self._next_id += 1
        self._in_flight[ident] = records
        self._in_flight_records += len(records)
        self._sent_at[ident] = time.monotonic()
        self.metrics.in_flight.set(self._in_flight_records)
        future.add_done_callback(lambda f: self._on_done(ident, f))

    def _on_done(self, ident: int, future: asyncio.Future[Any]) -> None:
        records = self._in_flight.pop(ident, None)
        self._sent_at.pop(ident, None)
        if records is None:  # already moved to the journal by stop()
            return
        self._in_flight_records -= len(records)
        self.metrics.in_flight.set(self._in_flight_records)
        exc = None if future.cancelled() else future.exception()
        if future.cancelled() or exc is not None:
            kind = "cancelled" if future.cancelled() else type(exc).__name__
            self.errors_total += 1
            self.metrics.publish_errors.labels(kind).inc()
            log.warning(
                "a batch of %d %s records was not acknowledged (%s); it is kept in the journal",
                len(records),
                records[0].topic,
                kind,
            )
            self._enter_spill("send failed")  # the queue moves to the front of the spill buffer...
            self._spill_buffer[:0] = records  # ...behind these, which are older than anything queued
        else:
            self._acked(records)
        if not self._in_flight:
            self._wake.set()

    def _count_error(self, error: BaseException, what: str) -> None:
        self.errors_total += 1
        self.metrics.publish_errors.labels(type(error).__name__).inc()
        log.warning("kafka %s failed (%s: %s); the records are kept", what, type(error).__name__, error)

    def _acked(self, records: Sequence[JournalRecord]) -> None:
        """Count records the broker acknowledged (one topic per batch, so one counter step)."""
        if not records:
            return
        self.published_total += len(records)
        self.metrics.published.labels(records[0].topic).inc(len(records))
        now = time.time()
        observe = self.metrics.ack_latency.observe
        for record in records:
            observe(max(0.0, now - record.received_at_us / 1e6))
        if self.on_acked is not None:
            for record in records:
                self.on_acked(record)

    def _stalled(self) -> bool:
        if not self._sent_at:
            return False
        oldest = next(iter(self._sent_at.values()))
        return time.monotonic() - oldest > self.config.stall_s

    async def _wait_in_flight_below(self, limit: int) -> None:
        while self._in_flight_records > limit and not self._stalled():
            await asyncio.sleep(0.001)

    # --------------------------------------------------------------------------------------- spill

    def _enter_spill(self, why: str) -> None:
        if self.mode is Mode.SPILL:
            return
        log.error("kafka publishing degraded (%s): records go to the local journal until the broker is back", why)
        self.mode = Mode.SPILL
        # Queue order is kept: what was not handed to the producer goes to the journal first.
        self._spill_buffer[:0] = list(self._queue)
        self._queue.clear()
        self._wake.set()

    def _flush_spill_buffer(self) -> None:
        if not self._spill_buffer:
            return
        batch, self._spill_buffer = self._spill_buffer, []
        self._journal_append(batch)

    def _journal_append(self, batch: list[JournalRecord]) -> None:
        """Journal as much of ``batch`` as fits, in order; the rest waits in front of the spill buffer."""
        try:
            self.journal.append(batch)
            fitted = len(batch)
        except JournalFull as exc:
            fitted = 0
            for record in batch:  # the records that still fit go in; order is kept
                try:
                    self.journal.append([record])
                except JournalFull:
                    break
                fitted += 1
            self._spill_buffer[:0] = batch[fitted:]
            if self._capacity.is_set():  # once per episode: the log stays readable
                self._capacity.clear()
                self.metrics.journal_full.inc()
                log.error(
                    "JOURNAL FULL: ingest paused until the broker takes records again; nothing dropped, "
                    "%d records waiting in memory: %s",
                    len(batch) - fitted,
                    exc,
                )
        if fitted:
            self.journaled_total += fitted
            self.metrics.journaled.inc(fitted)
            self._update_journal_gauges()

    def _update_journal_gauges(self) -> None:
        self.metrics.journal_records.set(self.journal.pending_records)
        self.metrics.journal_bytes.set(self.journal.pending_bytes)

    async def _drain_loop(self) -> None:
        low, high = self.config.retry_backoff_s
        backoff = low
        while True:
            if self.mode is Mode.DIRECT:
                await asyncio.sleep(self.config.spill_flush_s)
                continue
            self._flush_spill_buffer()
            if self._in_flight:  # what the producer holds is older than the journal: let it finish first
                await asyncio.sleep(self.config.spill_flush_s)
                continue
            if not await self._ensure_producer():
                await asyncio.sleep(backoff)
                backoff = min(high, backoff * 2)
                continue
            records, position = self.journal.peek(self.config.drain_batch)
            if not records:
                log.warning("journal drained: publishing directly again")
                self.mode = Mode.DIRECT
                # Whatever did not fit even an empty journal is next in line, before anything newer.
                self._queue.extendleft(reversed(self._spill_buffer))
                self._spill_buffer = []
                self._capacity.set()
                self._wake.set()
                continue
            if await self._publish_batch(records):
                self.journal.commit(position)
                self._update_journal_gauges()
                self._capacity.set()
                backoff = low
            else:
                await asyncio.sleep(backoff)
                backoff = min(high, backoff * 2)

    async def _publish_batch(self, records: list[JournalRecord]) -> bool:
        """Publish the journal's oldest records; True once every one of them is acked.

        ``_head_acked`` remembers which of them (by index from the journal head) the broker already took,
        so a retry after a partial failure sends only the rest: a fresh producer after a failure has a new
        producer id, and the broker could not tell a resent record from a new one.
        """
        todo = [i for i in range(len(records)) if i not in self._head_acked]
        handed, error = await self._hand_over([records[i] for i in todo])
        results = await asyncio.gather(*(future for _, future in handed), return_exceptions=True)
        failures: list[BaseException] = [error] if error is not None else []
        for (indices, _), result in zip(handed, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(result)
                continue
            self._head_acked.update(todo[i] for i in indices)
            self._acked([records[todo[i]] for i in indices])
        if failures:
            self.errors_total += len(failures)
            for failure in failures:
                self.metrics.publish_errors.labels(type(failure).__name__).inc()
            log.warning(
                "journal batch of %d: %d acked, %d not (%s: %s); retrying those",
                len(records),
                len(self._head_acked),
                len(records) - len(self._head_acked),
                type(failures[0]).__name__,
                failures[0],
            )
            await self._reset_producer()
            return False
        self._head_acked.clear()
        return True

    async def _reset_producer(self) -> None:
        """After a failed batch the producer's sequence state is suspect: start a fresh one."""
        producer, self._producer = self._producer, None
        self._partitions.clear()  # and the partition counts are read again
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()
