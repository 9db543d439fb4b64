"""``observer audit``: where every trade of a business date went, stage by stage, and what is unaccounted for.

The counts come from the stores themselves, read after the fact:

- the bridge's own counts for the date (``observer.counts``: frames received, records parsed, dead
  letters by reason), summed over its runs;
- Kafka: the records of each output topic whose natural key falls on the date (read by time window, since
  every record carries its event time as its timestamp), distinct by natural key, and the bridge's dead
  letters in ``kis.dlq`` for the sessions that delivered the date's trades;
- JSONL: the committed lines of the date's files under the data root, and their distinct keys;
- PostgreSQL: the date's rows of each table.

A record the sink dead-lettered (``kis.dlq``, stage sink, its source offset among the date's records) is
accounted for, not missing. The receive-to-persist ratio is trades in both stores over trades the bridge
parsed (the seed system's incident was this ratio at 0.2 %, with no error anywhere).
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from app.config import Settings
from app.kafka_read import new_reader, read_ranges, time_window
from app.krx import KST
from app.records import CodecError, default_codec
from app.sink.archive import COMMIT_FILE
from app.sink.render import KINDS, InvalidRecord, Kind, render
from app.slots.check import SlotCheck, check_decisions
from app.slots.policy import SlotPolicy

MARGIN_MS = 3_600_000  # records stamped up to an hour outside the date are read and filtered by their own date

# The JSONL files of a date, per kind (see app.sink.lines), as glob patterns relative to the data root.
JSONL_FILES = {
    "ticks": "observer/scalp/{d}_*.jsonl",
    "snapshots": "observer/swing/{d}.jsonl",
    "surges": "observer/surges/{d}.jsonl",
    "decisions": "observer/slots/{d}.jsonl",
    "overflow": "system/overflow_{d}.jsonl",
}


def _no_slot(app_key_id: str, symbol: str, time_us: int) -> tuple[int | None, str | None]:
    return None, None


@dataclass
class KindCounts:
    """One kind of record (ticks, surges, ...) on one date, in each store."""

    kafka_records: int = 0
    kafka_distinct: int = 0
    expected_lines: int = 0  # distinct records that have a JSONL line (decisions: assignments only)
    sink_dead_letters: Counter[str] = field(default_factory=Counter)
    jsonl_lines: int = 0
    jsonl_distinct: int = 0
    pg_rows: int = 0
    detail: Counter[str] = field(default_factory=Counter)  # e.g. decisions by action

    @property
    def expected_rows(self) -> int:
        return self.kafka_distinct - sum(self.sink_dead_letters.values())


@dataclass
class BridgeCounts:
    runs: int = 0
    unfinished_runs: int = 0  # runs whose last record is not final (killed): their counts may be short
    frames_received: int = 0
    records_parsed: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    unreadable_records: int = 0  # records of observer.counts no schema reads


@dataclass
class DayAudit:
    date: dt.date
    bridge: BridgeCounts = field(default_factory=BridgeCounts)
    bridge_dlq_in_kafka: Counter[str] = field(default_factory=Counter)
    kinds: dict[str, KindCounts] = field(default_factory=dict)
    undecodable_in_kafka: int = 0  # records in the window that cannot be read or written (no date to place them)
    unreadable_dead_lettered: int = 0  # of those, the ones the sink dead-lettered
    unreadable_dlq: int = 0  # records of kis.dlq no schema reads
    slots: SlotCheck = field(default_factory=SlotCheck)  # the day's decisions replayed against the slot policy

    @property
    def ticks(self) -> KindCounts:
        return self.kinds["ticks"]

    @property
    def persisted(self) -> int:
        """Trades in both stores."""
        return min(self.ticks.jsonl_distinct, self.ticks.pg_rows)

    @property
    def ratio(self) -> float | None:
        """Receive-to-persist: trades in both stores over trades received (parsed by the bridge)."""
        received = self.bridge.records_parsed or self.ticks.kafka_distinct
        return None if received == 0 else self.persisted / received

    def problems(self) -> list[str]:
        """Everything unaccounted for, one sentence each; empty when every record is where it should be."""
        out: list[str] = []
        b, t = self.bridge, self.ticks
        if b.records_parsed > t.kafka_distinct:
            out.append(
                f"{b.records_parsed - t.kafka_distinct} trades the bridge parsed are not in Kafka "
                "(still in a bridge journal, or lost)"
            )
        for reason, n in sorted(b.dead_letters.items()):
            if self.bridge_dlq_in_kafka[reason] < n:
                out.append(f"{n - self.bridge_dlq_in_kafka[reason]} bridge dead letters ({reason}) are not in kis.dlq")
        for name, k in self.kinds.items():
            expected_lines = k.expected_lines - sum(k.sink_dead_letters.values())
            if k.jsonl_lines != k.jsonl_distinct:
                out.append(f"{name}: {k.jsonl_lines - k.jsonl_distinct} duplicate JSONL lines")
            if k.jsonl_distinct != expected_lines:
                out.append(f"{name}: {k.jsonl_distinct} distinct JSONL lines, {expected_lines} expected from Kafka")
            if k.pg_rows != k.expected_rows:
                out.append(f"{name}: {k.pg_rows} PostgreSQL rows, {k.expected_rows} expected from Kafka")
        out += [f"slot policy violated: {v}" for v in self.slots.violations]
        return out

    def notes(self) -> list[str]:
        """Facts worth knowing that are not losses."""
        out: list[str] = []
        b, t = self.bridge, self.ticks
        if b.unfinished_runs:
            out.append(
                f"{b.unfinished_runs} bridge run(s) ended without final counts (killed?): their counts may be short"
            )
        if t.kafka_distinct > b.records_parsed:
            out.append(
                f"{t.kafka_distinct - b.records_parsed} trades in Kafka that no bridge count covers "
                "(republished, or counted by a killed run)"
            )
        for n, where in ((b.unreadable_records, "observer.counts"), (self.unreadable_dlq, "kis.dlq")):
            if n:
                out.append(f"{n} records of {where} cannot be read: the counts above may be short")
        if t.kafka_records > t.kafka_distinct:
            out.append(f"{t.kafka_records - t.kafka_distinct} trades are in Kafka twice (the stores hold them once)")
        if self.undecodable_in_kafka:
            out.append(
                f"{self.undecodable_in_kafka} records around the date cannot be read or written "
                f"({self.unreadable_dead_lettered} of them dead-lettered by the sink)"
            )
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat(),
            "bridge": {
                "runs": self.bridge.runs,
                "unfinished_runs": self.bridge.unfinished_runs,
                "frames_received": self.bridge.frames_received,
                "records_parsed": self.bridge.records_parsed,
                "dead_letters": dict(self.bridge.dead_letters),
                "dead_letters_in_kafka": dict(self.bridge_dlq_in_kafka),
            },
            "kinds": {
                name: {
                    "kafka_records": k.kafka_records,
                    "kafka_distinct": k.kafka_distinct,
                    "sink_dead_letters": dict(k.sink_dead_letters),
                    "jsonl_lines": k.jsonl_lines,
                    "jsonl_distinct": k.jsonl_distinct,
                    "expected_lines": k.expected_lines,
                    "pg_rows": k.pg_rows,
                    **({"detail": dict(k.detail)} if k.detail else {}),
                }
                for name, k in self.kinds.items()
            },
            "undecodable_in_kafka": self.undecodable_in_kafka,
            "unreadable_dead_lettered": self.unreadable_dead_lettered,
            "persisted": self.persisted,
            "ratio": self.ratio,
            "slots": self.slots.to_json(),
            "problems": self.problems(),
            "notes": self.notes(),
        }

    def table(self) -> list[str]:
        b = self.bridge
        dlq = ", ".join(f"{r} {n}" for r, n in sorted(b.dead_letters.items())) or "none"
        lines = [
            f"audit of {self.date.isoformat()}",
            f"  bridge      {b.frames_received:>10,} frames received, {b.records_parsed:,} trade records parsed "
            f"({b.runs} run(s)); dead-lettered: {dlq}",
            f"  {'':<11} {'Kafka':>10} {'distinct':>10} {'sink DLQ':>9} {'JSONL':>10} {'PostgreSQL':>11}",
        ]
        for name, k in self.kinds.items():
            lines.append(
                f"  {name:<11} {k.kafka_records:>10,} {k.kafka_distinct:>10,} {sum(k.sink_dead_letters.values()):>9,} "
                f"{k.jsonl_lines:>10,} {k.pg_rows:>11,}"
            )
        ratio = self.ratio
        lines.append(
            "  receive-to-persist: "
            + (
                "n/a (no trades)"
                if ratio is None
                else f"{ratio:.4%} ({self.persisted:,} of {b.records_parsed or self.ticks.kafka_distinct:,})"
            )
        )
        sc = self.slots
        held = ", ".join(f"{k} {n}" for k, n in sorted(sc.max_held.items())) or "none"
        dwell = (
            "no evictions"
            if sc.shortest_dwell_us is None
            else f"shortest eviction dwell {sc.shortest_dwell_us / 1e6:.0f} s"
        )
        lines.append(
            f"  slot policy: {sc.decisions:,} decisions, most held at once {held}, {dwell}, "
            f"{len(sc.violations)} violation(s)"
        )
        lines += [f"  note: {n}" for n in self.notes()]
        problems = self.problems()
        lines += [f"  UNACCOUNTED: {p}" for p in problems] or ["  every record accounted for"]
        return lines


def _window_ms(date: dt.date) -> tuple[int, int]:
    start = dt.datetime.combine(date, dt.time(0), KST)
    return int(start.timestamp() * 1000) - MARGIN_MS, int((start + dt.timedelta(days=1)).timestamp() * 1000) + MARGIN_MS


async def _bridge_counts(settings: Settings, reader: Any, day: str) -> BridgeCounts:
    codec = default_codec()
    unreadable = 0
    latest: dict[bytes, dict[str, Any]] = {}
    topic = settings.topic("observer.counts")
    async for rec in read_ranges(reader, topic, await time_window(reader, topic, None, None)):
        if rec.key is None:
            continue
        try:
            latest[rec.key] = codec.decode(rec.value)[1]
        except CodecError:
            unreadable += 1  # reported: a count the audit cannot read may hide a day's frames
    out = BridgeCounts(unreadable_records=unreadable)
    for value in latest.values():
        if value["stage"] != "bridge" or value["business_date"] != day:
            continue
        out.runs += 1
        out.unfinished_runs += 0 if value["final"] else 1
        counts = value["counts"]
        out.frames_received += counts.get("frames_received", 0)
        out.records_parsed += counts.get("records_parsed", 0)
        for name, n in counts.items():
            if name.startswith("dead_letters."):
                out.dead_letters[name.removeprefix("dead_letters.")] += n
    return out


def committed_lines(root: Path, pattern: str) -> list[tuple[str, list[bytes]]]:
    """Per file matching ``pattern`` (relative to ``root``, sorted), its committed lines: bytes past the
    length in the sink's commit record are not committed, and without a commit record (a copied archive)
    a last line without its newline is not either."""
    lengths: dict[str, int] = {}
    commit = root / COMMIT_FILE
    if commit.is_file():
        lengths = orjson.loads(commit.read_bytes()).get("lengths", {})
    out: list[tuple[str, list[bytes]]] = []
    for path in sorted(root.glob(pattern)):
        rel = str(path.relative_to(root))
        data = path.read_bytes()
        committed = lengths.get(rel, data.rfind(b"\n") + 1)
        out.append((rel, [line for line in data[:committed].split(b"\n") if line]))
    return out


def _committed_lines(root: Path, pattern: str) -> list[bytes]:
    return [line for _, lines in committed_lines(root, pattern) for line in lines]


def _distinct_lines(name: str, lines: list[bytes]) -> int:
    if name != "ticks":
        return len(set(lines))
    keys = set()
    for line in lines:
        doc = orjson.loads(line)
        keys.add((doc["symbol"], doc["accumulated_volume"]))
    return len(keys)


async def _pg_rows(settings: Settings, date: dt.date) -> dict[str, int]:
    out: dict[str, int] = {}
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, connect_timeout=10) as conn:
        for kind in KINDS.values():
            query = sql.SQL("SELECT count(*) FROM {}.{} WHERE business_date = %s").format(
                sql.Identifier(settings.pg_schema), sql.Identifier(kind.table)
            )
            try:
                row = await (await conn.execute(query, (date,))).fetchone()
            except psycopg.errors.UndefinedTable:
                await conn.rollback()
                row = (0,)  # a schema the sink never wrote to
            out[kind.name] = int(row[0]) if row else 0
    return out


async def collect_day(
    settings: Settings, date: dt.date, progress: Callable[[str, int], None] | None = None
) -> DayAudit:
    """Read every store for ``date`` and count (see the module docstring)."""
    day = f"{date:%Y%m%d}"
    audit = DayAudit(date)
    codec = default_codec()
    start_ms, end_ms = _window_ms(date)
    reader = new_reader(settings.bootstrap_servers)
    await reader.start()
    try:
        audit.bridge = await _bridge_counts(settings, reader, day)
        offsets_of_day: dict[tuple[str, int, int], str] = {}  # (topic, partition, offset) -> kind name
        decisions: list[dict[str, Any]] = []
        sessions: set[str] = set()
        unreadable: set[tuple[str, int, int]] = set()
        for kind in KINDS.values():
            counts = audit.kinds[kind.name] = KindCounts()
            topic = settings.topic(kind.topic)
            keys: set[tuple[Any, ...]] = set()
            with_line: set[tuple[Any, ...]] = set()
            ranges = await time_window(reader, topic, start_ms, end_ms)

            def step(n: int, name: str = kind.name) -> None:
                if progress is not None:
                    progress(name, n)

            async for rec in read_ranges(reader, topic, ranges, step):
                try:
                    record_name, value = codec.decode(rec.value)
                    if record_name != kind.record:
                        raise InvalidRecord(f"a {record_name} record")
                    rendered = render(kind, value, _no_slot)
                except (CodecError, InvalidRecord):
                    audit.undecodable_in_kafka += 1  # no date to place it by: counted, and looked for in the DLQ
                    unreadable.add((topic, rec.partition, rec.offset))
                    continue
                if rendered.key[0][:8] != day:
                    continue
                offsets_of_day[(topic, rec.partition, rec.offset)] = kind.name
                counts.kafka_records += 1
                keys.add(rendered.key)
                if rendered.file is not None:
                    with_line.add(rendered.key)
                _tally(kind, value, counts, sessions)
                if kind.name == "decisions":
                    decisions.append(value)
            counts.kafka_distinct = len(keys)
            counts.expected_lines = len(with_line)
        dlq = settings.topic("kis.dlq")
        async for rec in read_ranges(reader, dlq, await time_window(reader, dlq, None, None)):
            try:
                value = codec.decode(rec.value)[1]
            except CodecError:
                audit.unreadable_dlq += 1
                continue
            if value["stage"] == "bridge" and value["session_id"] in sessions:
                audit.bridge_dlq_in_kafka[value["reason"]] += 1
            elif value["stage"] == "sink" and value["source_topic"] is not None:
                source = (value["source_topic"], value["source_partition"], value["source_offset"])
                found = offsets_of_day.get(source)
                if found is not None:
                    audit.kinds[found].sink_dead_letters[value["reason"]] += 1
                elif source in unreadable:
                    audit.unreadable_dead_lettered += 1
    finally:
        await reader.stop()
    audit.slots = check_decisions(decisions, settings.slot_capacity, SlotPolicy().min_dwell_us)
    for name, pattern in JSONL_FILES.items():
        lines = _committed_lines(settings.data_root, pattern.format(d=day))
        audit.kinds[name].jsonl_lines = len(lines)
        audit.kinds[name].jsonl_distinct = _distinct_lines(name, lines)
    for name, n in (await _pg_rows(settings, date)).items():
        audit.kinds[name].pg_rows = n
    return audit


def _tally(kind: Kind, value: dict[str, Any], counts: KindCounts, sessions: set[str]) -> None:
    if kind.name == "ticks":
        sessions.add(value["session_id"])
    elif kind.name == "decisions":
        counts.detail[value["action"]] += 1
    elif kind.name == "overflow":
        counts.detail[value["reason"].split(":")[0]] += 1
