"""What the sink makes of one input record: its JSONL line and file, its Postgres row and table, and its
natural key. Pure.

Every input topic has a :class:`Kind`. A record renders the same way every time it is delivered (its
values only, never the sink's clock), so a redelivered or replayed record gives the same bytes and row.

Natural keys are ``(group, order, ident)``: within a group (a symbol's day of trades, say) records arrive
in ``order``, and a record whose order is below the highest one written, or equal to it with an ident
already written, is the same record again. This is what Postgres's primary keys say too, so JSONL and
Postgres agree on what a duplicate is:

- a trade: ``(day, symbol)`` by cumulative volume (KIS's accumulated volume grows with every trade);
- a snapshot: ``(day, symbol, source)`` by snapshot time;
- a surge: ``(day, symbol, source)`` by window start (one surge per window);
- a decision: ``(day, app key)`` by decision time, ident the decision id;
- an overflow record: ``(day)`` by decision time, ident symbol, trigger and detection time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.krx import KST
from app.sink import lines
from app.sink import postgres as pg

SlotOf = Callable[[str, str, int], tuple[int | None, str | None]]  # (app key, symbol, time) -> slot, trigger
NaturalKey = tuple[str, int, str]

MIN_TIME_US = 946_684_800_000_000  # 2000-01-01: anything earlier is a broken clock or field
MAX_TIME_US = 4_102_444_800_000_000  # 2100-01-01


class InvalidRecord(ValueError):
    """A record that decodes but can never be written (the DLQ gets it, with this message)."""


def _kst_date(time_us: int) -> str:
    return f"{dt.datetime.fromtimestamp(time_us // 1_000_000, KST):%Y%m%d}"


@dataclass(frozen=True)
class Kind:
    name: str  # metric label and JSONL family
    topic: str  # logical topic (topics/topics.toml)
    record: str  # Avro record name expected on the topic
    table: str
    times: tuple[str, ...]  # fields holding microsecond times, checked for range
    row: Callable[[dict[str, Any]], tuple[Any, ...]]
    key: Callable[[dict[str, Any]], NaturalKey]
    line: Callable[[dict[str, Any], SlotOf], tuple[str, bytes] | None]


def _scalp(tick: dict[str, Any], slot_of: SlotOf) -> tuple[str, bytes]:
    slot_id, trigger = slot_of(tick["app_key_id"], tick["symbol"], tick["event_time_us"])
    return lines.scalp_path(tick), lines.scalp_line(tick, slot_id, trigger)


def _slot(decision: dict[str, Any], slot_of: SlotOf) -> tuple[str, bytes] | None:
    if decision["action"] != "assign":  # the seed's slot log has assignments only; Postgres has both
        return None
    return lines.slot_path(decision), lines.slot_line(decision)


KINDS: dict[str, Kind] = {
    k.topic: k
    for k in (
        Kind(
            "ticks",
            "kis.ticks.raw",
            "RawTick",
            "ticks",
            ("event_time_us", "received_at_us"),
            pg.tick_row,
            lambda r: (f"{r['business_date']}|t|{r['symbol']}", r["cumulative_volume"], ""),
            _scalp,
        ),
        Kind(
            "snapshots",
            "kis.snapshots",
            "Snapshot",
            "snapshots",
            ("snapshot_time_us",),
            pg.snapshot_row,
            lambda r: (f"{r['business_date']}|s|{r['symbol']}|{r['source']}", r["snapshot_time_us"], ""),
            lambda r, _: (lines.swing_path(r), lines.swing_line(r)),
        ),
        Kind(
            "surges",
            "observer.surges",
            "SurgeEvent",
            "surges",
            ("window_start_us", "event_time_us"),
            pg.surge_row,
            lambda r: (f"{r['business_date']}|u|{r['symbol']}|{r['source']}", r["window_start_us"], ""),
            lambda r, _: (lines.surge_path(r), lines.surge_line(r)),
        ),
        Kind(
            "decisions",
            "slot.decisions",
            "SlotDecision",
            "slot_decisions",
            ("decided_at_us", "detected_at_us"),
            pg.decision_row,
            lambda r: (f"{_kst_date(r['decided_at_us'])}|d|{r['app_key_id']}", r["decided_at_us"], r["decision_id"]),
            _slot,
        ),
        Kind(
            "overflow",
            "slot.overflow",
            "OverflowEvent",
            "slot_overflow",
            ("decided_at_us", "detected_at_us"),
            pg.overflow_row,
            lambda r: (
                f"{_kst_date(r['decided_at_us'])}|o",
                r["decided_at_us"],
                f"{r['symbol']}|{r['trigger_type']}|{r['detected_at_us']}",
            ),
            lambda r, _: (lines.overflow_path(r), lines.overflow_line(r)),
        ),
    )
}


@dataclass(frozen=True)
class Rendered:
    key: NaturalKey
    file: tuple[str, bytes] | None  # (relative path, line), None when the kind has no line for it
    row: tuple[Any, ...]
    received_at_us: int | None = None  # a tick's bridge receipt time, for the persist latency


def render(kind: Kind, record: dict[str, Any], slot_of: SlotOf) -> Rendered:
    """The record's key, line and row; :class:`InvalidRecord` if it can never be written."""
    for field in kind.times:
        if not MIN_TIME_US <= record[field] < MAX_TIME_US:
            raise InvalidRecord(f"{field}={record[field]} is outside 2000..2100")
    date = record.get("business_date")
    if date is not None and not (len(date) == 8 and date.isdigit()):
        raise InvalidRecord(f"business_date={date!r} is not YYYYMMDD")
    symbol = record["symbol"]
    if not symbol or "/" in symbol or len(symbol) > 12:
        raise InvalidRecord(f"symbol={symbol!r} cannot name a row or a line")
    try:
        return Rendered(kind.key(record), kind.line(record, slot_of), kind.row(record), record.get("received_at_us"))
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        raise InvalidRecord(f"{type(exc).__name__}: {exc}") from exc


class Dedupe:
    """The natural-key marks of what was written: per group, ``[highest order, [idents at it]]``.

    Groups start with their day (``YYYYMMDD|``); :meth:`marks` keeps the days within ``keep_days`` of the
    newest, so the marks stay a few thousand entries however long the sink runs.
    """

    def __init__(self, marks: dict[str, list[Any]], keep_days: int = 3) -> None:
        self._marks = {group: [mark[0], list(mark[1])] for group, mark in marks.items()}
        self.keep_days = keep_days

    def admit(self, key: NaturalKey) -> bool:
        """True (and remembered) for a record not written before; False for the same record again."""
        group, order, ident = key
        mark = self._marks.get(group)
        if mark is None or order > mark[0]:
            self._marks[group] = [order, [ident]]
            return True
        if order < mark[0] or ident in mark[1]:
            return False
        mark[1].append(ident)
        return True

    def marks(self) -> dict[str, list[Any]]:
        if not self._marks:
            return {}
        newest = max(group[:8] for group in self._marks)
        cutoff = dt.datetime.strptime(newest, "%Y%m%d").date() - dt.timedelta(days=self.keep_days)
        keep = f"{cutoff:%Y%m%d}"
        return {group: mark for group, mark in self._marks.items() if group[:8] >= keep}
