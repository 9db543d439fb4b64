"""One batch of input records into the JSONL archive and PostgreSQL, or not at all.

The stores keep their own offsets (the archive's commit record, ``sink_offsets``), so the sink never
trusts the consumer group's: a record below a store's offset is skipped for that store, and a batch that
starts past a store's offset (the group's offsets ran ahead of the data, or a store was restored from a
backup) first has the gap read directly from Kafka. A batch returns only once both stores hold it; its
consumer offsets are committed after that.

Faults: a store that cannot be written (Postgres down, disk full) is retried with backoff, counted and
logged loudly, and nothing moves on meanwhile. A record that can never be written (undecodable, the wrong
record type, values no line or row can hold) goes to the dead-letter topic with its reason, and counts
as written.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.records import CodecError, RecordCodec
from app.sink.archive import JsonlArchive
from app.sink.postgres import PgStore, migrate
from app.sink.render import Dedupe, InvalidRecord, Kind, Rendered, SlotOf, render

log = logging.getLogger(__name__)

TopicPart = tuple[str, int]


@dataclass(frozen=True)
class InputRecord:
    kind: Kind
    topic: str  # physical topic name (offsets are kept by it)
    partition: int
    offset: int
    value: bytes


@dataclass
class SinkMetrics:
    registry: CollectorRegistry

    def __post_init__(self) -> None:
        r = self.registry
        self.records_in = Counter("observer_sink_records_in", "Records the sink took in", ["kind"], registry=r)
        self.redelivered = Counter(
            "observer_sink_redelivered", "Records skipped because both stores already held them", ["kind"], registry=r
        )
        self.gap_records = Counter(
            "observer_sink_gap_records", "Records read directly to fill a gap behind the group offsets", registry=r
        )
        self.lines = Counter("observer_sink_lines", "JSONL lines written", ["kind"], registry=r)
        self.rows = Counter("observer_sink_rows", "PostgreSQL rows inserted", ["table"], registry=r)
        self.duplicates = Counter(
            "observer_sink_duplicates", "Records whose natural key was already written", ["store", "kind"], registry=r
        )
        self.dead_letters = Counter("observer_sink_dead_letters", "Records sent to the DLQ", ["reason"], registry=r)
        self.write_errors = Counter(
            "observer_sink_write_errors", "Failed store writes (each is retried)", ["store", "error"], registry=r
        )
        self.paused = Gauge(
            "observer_sink_paused", "1 while a store is failing and being retried", ["store"], registry=r
        )
        self.batch_seconds = Histogram(
            "observer_sink_batch_seconds",
            "Time from a batch's arrival to both stores holding it",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.persist_latency = Histogram(
            "observer_sink_tick_persist_latency_seconds",
            "From the bridge receiving a tick's frame to a store committing the tick (wall clocks)",
            ["store"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=r,
        )
        self.lag = Gauge("observer_sink_lag_records", "Records in Kafka not yet in both stores", ["topic"], registry=r)
        self.file_bytes = Gauge("observer_sink_file_bytes", "Committed bytes of the newest file", ["file"], registry=r)


def error_kind(exc: BaseException) -> str:
    """A short, bounded label: the errno name for OS errors (ENOSPC), else the exception class."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, type(exc).__name__)
    return type(exc).__name__


class PgConnection:
    """The sink's one connection, made (and the migrations applied) on first use and again after a failure."""

    def __init__(self, dsn: str, schema: str, consumer: str) -> None:
        self.dsn, self.schema, self.consumer = dsn, schema, consumer
        self.conn: psycopg.AsyncConnection[Any] | None = None
        self.store: PgStore | None = None

    async def ready(self) -> PgStore:
        if self.conn is None or self.conn.closed or self.conn.broken:
            conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True, connect_timeout=5)
            await migrate(conn, self.schema)
            store = PgStore(conn, self.schema, self.consumer)
            await store.load_offsets()
            if self.store is not None:  # a reconnect: partitions made by the old connection are still there
                store._partitions = self.store._partitions
            self.conn, self.store = conn, store
        assert self.store is not None
        return self.store

    async def write(
        self, rows: Mapping[str, Sequence[tuple[Any, ...]]], offsets: Mapping[TopicPart, int]
    ) -> dict[str, int]:
        """``PgStore.write`` on a ready connection; a failed connection is dropped so the next call makes a new
        one. A refusal of the data itself (DataError, IntegrityError) leaves the connection as it is."""
        store = await self.ready()
        try:
            return await store.write(rows, offsets)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError):
            raise
        except psycopg.Error:
            await self.reset()
            raise

    async def reset(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.close()
            except psycopg.Error as exc:  # the connection is being replaced anyway
                log.info("sink: closing a failed PostgreSQL connection: %s", exc)
        self.conn = None

    async def close(self) -> None:
        await self.reset()


RETRYABLE = (OSError, psycopg.OperationalError, psycopg.InterfaceError)
DeadLetter = Callable[[InputRecord, str, str], Awaitable[None]]
GapReader = Callable[[str, int, int, int], Awaitable[list[tuple[int, bytes]]]]


class SinkWriter:
    def __init__(
        self,
        archive: JsonlArchive,
        pg: PgConnection,
        codec: RecordCodec,
        metrics: SinkMetrics,
        dead_letter: DeadLetter,
        slot_of: SlotOf,
        before_ticks: Callable[[], Awaitable[None]] | None = None,
        read_gap: GapReader | None = None,
        retry_max_s: float = 30.0,
    ) -> None:
        self.archive, self.pg, self.codec, self.metrics = archive, pg, codec, metrics
        self.dead_letter = dead_letter
        self.slot_of = slot_of
        self.before_ticks = before_ticks
        self.read_gap = read_gap
        self.retry_max_s = retry_max_s
        self._newest_file: dict[str, str] = {}  # family of files -> the newest one shown in file_bytes

    # ------------------------------------------------------------------------------------------ a batch

    async def write_batch(self, records: Sequence[InputRecord]) -> None:
        started = time.monotonic()
        store = await self._until_ok("postgres", self.pg.ready)
        records = await self._with_gaps(records, store)
        jsonl_todo: list[tuple[InputRecord, Rendered]] = []
        pg_todo: list[tuple[InputRecord, Rendered]] = []
        offsets: dict[TopicPart, int] = {}
        if self.before_ticks is not None and any(r.kind.name == "ticks" for r in records):
            await self._until_ok("kafka", self.before_ticks)
        taken: dict[str, int] = {}
        redelivered: dict[str, int] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            offsets[tp] = max(offsets.get(tp, 0), rec.offset + 1)
            taken[rec.kind.name] = taken.get(rec.kind.name, 0) + 1
            in_jsonl = self.archive.is_written(rec.topic, rec.partition, rec.offset)
            in_pg = store.is_written(rec.topic, rec.partition, rec.offset)
            if in_jsonl and in_pg:
                redelivered[rec.kind.name] = redelivered.get(rec.kind.name, 0) + 1
                continue
            rendered = await self._render(rec)
            if rendered is None:
                continue
            if not in_jsonl:
                jsonl_todo.append((rec, rendered))
            if not in_pg:
                pg_todo.append((rec, rendered))
        for kind, n in taken.items():
            self.metrics.records_in.labels(kind).inc(n)
        for kind, n in redelivered.items():
            self.metrics.redelivered.labels(kind).inc(n)
        await asyncio.gather(self._write_jsonl(jsonl_todo, offsets), self._write_pg(pg_todo, offsets))
        self.metrics.batch_seconds.observe(time.monotonic() - started)

    async def _render(self, rec: InputRecord) -> Rendered | None:
        try:
            name, value = self.codec.decode(rec.value)
        except CodecError as exc:
            await self._dead_letter(rec, "undecodable", str(exc))
            return None
        if name != rec.kind.record:
            await self._dead_letter(rec, "wrong_record", f"a {name} record on {rec.topic}")
            return None
        try:
            return render(rec.kind, value, self.slot_of)
        except InvalidRecord as exc:
            await self._dead_letter(rec, "invalid", str(exc))
            return None

    async def _dead_letter(self, rec: InputRecord, reason: str, detail: str) -> None:
        self.metrics.dead_letters.labels(reason).inc()
        log.warning("sink: dead-lettered %s[%d]@%d: %s: %s", rec.topic, rec.partition, rec.offset, reason, detail[:200])
        await self.dead_letter(rec, reason, detail)

    # ------------------------------------------------------------------------------------------ gaps

    async def _with_gaps(self, records: Sequence[InputRecord], store: PgStore) -> list[InputRecord]:
        """``records`` preceded by any records between the stores' offsets and the batch's first offsets."""
        if self.read_gap is None:
            return list(records)
        first: dict[TopicPart, InputRecord] = {}
        for rec in records:
            tp = (rec.topic, rec.partition)
            if tp not in first or rec.offset < first[tp].offset:
                first[tp] = rec
        filled: list[InputRecord] = []
        for (topic, partition), rec in sorted(first.items()):
            stored = [self.archive.next_offset(topic, partition), store.offsets.get((topic, partition))]
            expected = min(0 if o is None else o for o in stored)
            if expected >= rec.offset:
                continue
            found = await self._until_ok(
                "kafka", functools.partial(self.read_gap, topic, partition, expected, rec.offset)
            )
            if found and found[0][0] > expected > 0:
                log.error(
                    "sink: %s[%d] offsets %d..%d left Kafka (retention) before they were written",
                    topic,
                    partition,
                    expected,
                    found[0][0] - 1,
                )
            if found:
                log.warning("sink: %s[%d] read %d records the group had passed", topic, partition, len(found))
            filled.extend(InputRecord(rec.kind, topic, partition, offset, value) for offset, value in found)
        self.metrics.gap_records.inc(len(filled))
        return filled + list(records)

    # ------------------------------------------------------------------------------------------ stores

    async def _write_jsonl(self, todo: list[tuple[InputRecord, Rendered]], offsets: dict[TopicPart, int]) -> None:
        dedupe = Dedupe(self.archive.marks)
        files: dict[str, list[bytes]] = {}
        counts: dict[str, int] = {}
        duplicates: dict[str, int] = {}
        for rec, rendered in todo:
            if not dedupe.admit(rendered.key):
                duplicates[rec.kind.name] = duplicates.get(rec.kind.name, 0) + 1
                continue
            if rendered.file is not None:
                path, line = rendered.file
                files.setdefault(path, []).append(line)
                counts[rec.kind.name] = counts.get(rec.kind.name, 0) + 1
        if not files and all(self.archive.next_offset(t, p) == n for (t, p), n in offsets.items()):
            return
        for kind, n in duplicates.items():
            self.metrics.duplicates.labels("jsonl", kind).inc(n)
        marks = dedupe.marks()
        await self._until_ok("jsonl", lambda: asyncio.to_thread(self.archive.write, files, offsets, marks))
        for kind, n in counts.items():
            self.metrics.lines.labels(kind).inc(n)
        self._observe_persisted("jsonl", todo)
        for path in files:
            self._show_file_bytes(path)

    def _show_file_bytes(self, path: str) -> None:
        """One series per family of files (the newest file's), so the label set stays bounded."""
        family = re.sub(r"\d{8}(_\d{2})?\.jsonl$", "", path)
        previous = self._newest_file.get(family)
        if previous is not None and previous != path:
            self.metrics.file_bytes.remove(previous)
        self._newest_file[family] = path
        self.metrics.file_bytes.labels(path).set(self.archive.lengths[path])

    async def _write_pg(self, todo: list[tuple[InputRecord, Rendered]], offsets: dict[TopicPart, int]) -> None:
        rows: dict[str, list[tuple[Any, ...]]] = {}
        for rec, rendered in todo:
            rows.setdefault(rec.kind.table, []).append(rendered.row)
        given = {table: len(table_rows) for table, table_rows in rows.items()}
        try:
            inserted = await self._until_ok("postgres", functools.partial(self.pg.write, rows, offsets))
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
            log.error("sink: PostgreSQL refused a batch (%s); writing its rows one by one to find the bad ones", exc)
            inserted = await self._write_pg_one_by_one(todo, offsets)
        for table, n in inserted.items():
            self.metrics.rows.labels(table).inc(n)
            self.metrics.duplicates.labels("postgres", table).inc(given.get(table, 0) - n)
        self._observe_persisted("postgres", todo)

    def _observe_persisted(self, store: str, todo: list[tuple[InputRecord, Rendered]]) -> None:
        now_us = time.time_ns() // 1000
        observe = self.metrics.persist_latency.labels(store).observe
        for _, rendered in todo:
            if rendered.received_at_us is not None:
                observe((now_us - rendered.received_at_us) / 1e6)

    async def _write_pg_one_by_one(
        self, todo: list[tuple[InputRecord, Rendered]], offsets: dict[TopicPart, int]
    ) -> dict[str, int]:
        inserted: dict[str, int] = {}
        for rec, rendered in todo:
            try:
                one = functools.partial(self.pg.write, {rec.kind.table: [rendered.row]}, {})
                done = await self._until_ok("postgres", one)
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as exc:
                await self._dead_letter(rec, "rejected_by_postgres", f"{type(exc).__name__}: {exc}")
                continue
            for table, n in done.items():
                inserted[table] = inserted.get(table, 0) + n
        await self._until_ok("postgres", functools.partial(self.pg.write, {}, offsets))
        return inserted

    async def _until_ok(self, store: str, attempt: Callable[[], Awaitable[Any]]) -> Any:
        """``attempt()`` until it succeeds; a retryable failure is counted, logged and retried with backoff."""
        delay = 0.1
        failures = 0
        while True:
            try:
                value = await attempt()
            except RETRYABLE as exc:
                failures += 1
                kind = error_kind(exc)
                self.metrics.write_errors.labels(store, kind).inc()
                self.metrics.paused.labels(store).set(1)
                log.error(
                    "sink: %s write failed (%s: %s); retry %d in %.1f s, holding the batch (nothing is skipped)",
                    store,
                    kind,
                    str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "",
                    failures,
                    delay,
                )
                await asyncio.sleep(delay)  # backoff between attempts, not a synchronisation
                delay = min(delay * 2, self.retry_max_s)
                continue
            if failures:
                log.warning("sink: %s is writable again after %d failed attempts", store, failures)
                self.metrics.paused.labels(store).set(0)
            return value
