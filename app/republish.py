"""``observer republish``: an archived day's JSONL back into Kafka, for a day older than the topics' retention.

The sink's archive keeps a trade per scalp line and a snapshot per swing line: enough for the Faust logic
(symbol, business date, event time, cumulative and trade volume) and for the sink to write the very same
lines again, but not the KIS record as sent (the 46 raw fields, the session and frame): a republished
RawTick says so (``tr_id`` H0STCNT0, ``app_key_id`` ``republish``, ``session_id`` ``republish:<file>``,
``frame_seq`` the line number, no raw ``fields``, ``change_sign`` empty).

The day goes to topics of its own, ``republish-YYYYMMDD.`` by default, created with unlimited retention:
the live topics would delete records stamped older than their retention at their next check. Replay then
reads them like any day: ``OBSERVER_TOPIC_PREFIX=republish-20250102. observer replay --date 2025-01-02
--event-time`` (the archive has no merge log to follow).

Idempotent: the natural keys already in the target topics (a trade: business date, symbol, cumulative
volume; a snapshot: symbol, source, time) are read first and not sent again, so a second run, or a run
after an interrupted one, adds only what is missing. Lines the sink had not committed (past the lengths
in ``.sink-commit.json``) are not part of the archive. A line that cannot be read back into a record goes
to the target's ``kis.dlq`` with its file and line number, and is counted and reported.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from app.audit import JSONL_FILES, committed_lines
from app.config import Settings
from app.kafka_read import new_reader, read_ranges, time_window
from app.kis.ticks import RawTick
from app.records import CodecError, dead_letter_record, default_codec
from app.topics import apply_topics, load_topics

log = logging.getLogger(__name__)

KIND_TOPICS = {"ticks": "kis.ticks.raw", "snapshots": "kis.snapshots"}
US = 1_000_000


class ArchiveLineError(ValueError):
    """A JSONL line that is not a trade or snapshot of the day (the message says which field)."""


@dataclass
class KindResult:
    lines: int = 0  # committed lines in the archive
    sent: int = 0  # records published now
    already: int = 0  # lines whose record the target topic held already
    bad: int = 0  # lines dead-lettered
    unreadable_in_target: int = 0  # records already in the target topic that are not this kind's records


@dataclass
class RepublishResult:
    day: dt.date
    prefix: str
    kinds: dict[str, KindResult] = field(default_factory=dict)
    bad_lines: list[str] = field(default_factory=list)  # "file:line: reason", the first ones
    wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.day.isoformat(),
            "topic_prefix": self.prefix,
            "kinds": {k: dataclasses.asdict(v) for k, v in self.kinds.items()},
            "bad_lines": self.bad_lines,
            "wall_s": round(self.wall_s, 1),
        }


def _time_us(value: Any, what: str) -> int:
    if not isinstance(value, str):
        raise ArchiveLineError(f"{what} is not a timestamp string")
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ArchiveLineError(f"{what} {value[:40]!r} is not ISO 8601") from None
    if stamp.tzinfo is None:
        raise ArchiveLineError(f"{what} {value[:40]!r} has no UTC offset")
    return int(stamp.timestamp()) * US + stamp.microsecond


def _json_object(line: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ArchiveLineError(f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise ArchiveLineError("not a JSON object")
    return doc


def _field(doc: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = doc.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ArchiveLineError(f"{name} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def tick_of_line(line: bytes, day: dt.date, source: str, line_no: int) -> RawTick:
    """The RawTick a scalp line was written from, as far as the line tells (see the module docstring)."""
    doc = _json_object(line)
    event_us = _time_us(doc.get("timestamp"), "timestamp")
    local = dt.datetime.fromtimestamp(event_us / US, dt.timezone(dt.timedelta(hours=9)))
    if local.date() != day:
        raise ArchiveLineError(f"timestamp {doc.get('timestamp')} is not on {day}")
    side = doc.get("side")
    if side not in ("buy", "sell", "unknown"):
        raise ArchiveLineError(f"side {side!r} is not buy, sell or unknown")
    return {
        "tr_id": "H0STCNT0",
        "symbol": _field(doc, "symbol", str),
        "business_date": f"{day:%Y%m%d}",
        "trade_time": f"{local:%H%M%S}",
        "event_time_us": event_us,
        "price": _field(doc, "price", int),
        "trade_volume": _field(doc, "volume", int),
        "cumulative_volume": _field(doc, "accumulated_volume", int),
        "change_sign": "",
        "change_rate": float(_field(doc, "change_rate", (int, float))),
        "best_ask": _field(doc, "best_ask", int),
        "best_bid": _field(doc, "best_bid", int),
        "side": side,
        "received_at_us": _time_us(doc.get("received_at"), "received_at"),
        "app_key_id": "republish",
        "session_id": f"republish:{source}",
        "frame_seq": line_no,
        "record_index": 0,
        "record_count": 1,
        "fields": [],
    }


def snapshot_of_line(line: bytes, day: dt.date) -> dict[str, Any]:
    """The Snapshot a swing line was written from (its REST reply fields are not in the archive)."""
    doc = _json_object(line)
    rank = doc.get("rank")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool)):
        raise ArchiveLineError("rank is not an integer or null")
    return {
        "symbol": _field(doc, "symbol", str),
        "business_date": f"{day:%Y%m%d}",
        "snapshot_time_us": _time_us(doc.get("timestamp"), "timestamp"),
        "source": _field(doc, "source", str),
        "price": _field(doc, "price", int),
        "cumulative_volume": _field(doc, "accumulated_volume", int),
        "change_rate": float(_field(doc, "change_rate", (int, float))),
        "rank": rank,
        "raw": {},
    }


def natural_key(kind: str, record: dict[str, Any]) -> tuple[Any, ...]:
    if kind == "ticks":
        return (record["business_date"], record["symbol"], record["cumulative_volume"])
    return (record["symbol"], record["source"], record["snapshot_time_us"])


def archive_lines(root: Path, kind: str, day: dt.date) -> Iterator[tuple[str, int, bytes]]:
    """(file relative to root, line number from 1, line) of the committed lines of the day's files."""
    pattern = JSONL_FILES[kind].format(d=f"{day:%Y%m%d}")
    for rel, lines in committed_lines(root, pattern):
        for n, line in enumerate(lines, start=1):
            yield rel, n, line


async def _keys_present(settings: Settings, kind: str, topic: str) -> tuple[set[tuple[Any, ...]], int]:
    """The natural keys the target topic holds, and how many of its records could not be read (not records
    this tool wrote, so not one of the archive's either; counted and reported, not guessed at)."""
    codec = default_codec()
    reader = new_reader(settings.bootstrap_servers)
    await reader.start()
    keys: set[tuple[Any, ...]] = set()
    unreadable = 0
    try:
        async for rec in read_ranges(reader, topic, await time_window(reader, topic, None, None)):
            try:
                keys.add(natural_key(kind, codec.decode(rec.value)[1]))
            except (CodecError, KeyError) as exc:
                unreadable += 1
                log.warning(
                    "republish: %s[%s]@%s in the target is not a %s record: %s",
                    topic,
                    rec.partition,
                    rec.offset,
                    kind,
                    exc,
                )
    finally:
        await reader.stop()
    return keys, unreadable


async def republish(
    settings: Settings,
    root: Path,
    day: dt.date,
    prefix: str,
    progress: Callable[[str, int], None] | None = None,
) -> RepublishResult:
    """Publish the day's archived ticks and snapshots under ``prefix`` (see the module docstring)."""
    started = time.monotonic()
    if not (root / "observer").is_dir():
        raise FileNotFoundError(f"{root} is not a sink data root (no observer/ directory)")
    target = settings.model_copy(update={"topic_prefix": prefix})
    specs = {name: dataclasses.replace(spec, retention_ms=-1) for name, spec in load_topics().items()}
    await apply_topics(target, specs)
    codec = default_codec()
    result = RepublishResult(day, prefix)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    try:
        for kind, logical in KIND_TOPICS.items():
            topic = target.topic(logical)
            present, unreadable = await _keys_present(target, kind, topic)
            counts = result.kinds[kind] = KindResult(unreadable_in_target=unreadable)
            sent: list[asyncio.Future[Any]] = []
            # Each symbol's records in the order of their cumulative volume, which is the order KIS sent them.
            records: list[tuple[int, int, bytes, bytes]] = []
            for rel, n, line in archive_lines(root, kind, day):
                counts.lines += 1
                try:
                    record = tick_of_line(line, day, rel, n) if kind == "ticks" else snapshot_of_line(line, day)
                    value = codec.encode("RawTick" if kind == "ticks" else "Snapshot", record)
                except (ArchiveLineError, CodecError) as exc:
                    counts.bad += 1
                    if len(result.bad_lines) < 20:
                        result.bad_lines.append(f"{rel}:{n}: {exc}")
                    dead = dead_letter_record(
                        "republish", "bad_archive_line", f"{rel}:{n}: {exc}", line, time.time_ns() // 1000
                    )
                    sent.append(
                        await producer.send(target.topic("kis.dlq"), codec.encode("DeadLetter", dead), b"republish")
                    )
                    continue
                key = natural_key(kind, record)
                if key in present:
                    counts.already += 1
                    continue
                present.add(key)
                time_us = record["event_time_us"] if kind == "ticks" else record["snapshot_time_us"]
                records.append((time_us, record["cumulative_volume"], record["symbol"].encode(), value))
            records.sort(key=lambda r: (r[0], r[1]))
            for i, (time_us, _, key_bytes, value) in enumerate(records, start=1):
                sent.append(await producer.send(topic, value, key=key_bytes, timestamp_ms=time_us // 1000))
                if progress is not None and i % 10_000 == 0:
                    progress(kind, 10_000)
            await asyncio.gather(*sent)
            counts.sent = len(records)
    finally:
        await producer.stop()
    result.wall_s = time.monotonic() - started
    return result
