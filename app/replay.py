"""``observer replay``: a past day's inputs through the Faust logic again, under fresh app ids, into outputs of
its own, then how they compare with what the live run produced for the same hours.

1. The window (a KST date, all of it or ``--from``/``--to``) of ``kis.ticks.raw`` and ``kis.snapshots`` is
   found by offsets-for-times and copied into topics of the replay's own prefix (``replay-<NAME>.``): same
   partition, key, value and timestamp, in offset order. The live topics are only read, without a group.
2. ``observer worker`` (its scanner off: the snapshots are the live day's) and ``observer sink`` (the
   worker's outputs only) run as processes on that prefix, so their app ids, consumer groups, changelogs
   and output topics are the replay's. The sink writes the PostgreSQL schema NAME and the JSONL root
   ``OBSERVER_REPLAY_ROOT/NAME/data``. The live apps' groups, tables and outputs are never touched.
3. It is done when the worker's group has committed every input, both stores hold every output and
   nothing new has come for a few seconds; then the processes are stopped.
4. The surges, slot decisions and overflow records are compared with the live ones of the window,
   partition by partition, byte for byte.

Surges are a function of the data alone (each symbol's tick windows and snapshot windows are fed by one
input partition each, in its order). Slot decisions depend on the order in which the slot manager merged
its inputs, which is event time except for inputs that are not data: when an input partition stopped
holding decisions back (it fell silent, or the worker had read it to its live edge) and when a KIS refusal
arrived (a replay has no KIS
session, so ``kis.subscriptions`` is not replayed). The live worker records every merge step in
``slot.merge-log``; the replay copies the window of it and its worker applies the same steps in the same
order (``OBSERVER_SLOT_FOLLOW_LOG``), so it makes the live decisions again, computed, not copied.

With ``--event-time`` the replay merges by event time instead: what to use when settings in the environment
change the logic (``OBSERVER_SURGE_MULTIPLIER=4 observer replay --event-time ...`` shows what a stricter
rule would have decided; the comparison then shows the difference).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaProducer
from psycopg import sql

from app.config import Settings
from app.kafka_read import PartitionRange, new_reader, read_ranges, time_window
from app.krx import KST
from app.records import default_codec
from app.runs import (
    Processes,
    RunError,
    committed_offsets,
    end_offsets,
    free_port,
    healthy,
    metric_sum,
    scrape,
    wait_drained,
    wait_for,
)
from app.sink.render import KINDS
from app.topics import apply_topics, delete_topics, load_topics
from app.worker.app import candidates_topic_name

INPUTS = ("kis.ticks.raw", "kis.snapshots")  # what is copied; the worker's other input stays empty
MERGE_LOG = "slot.merge-log"
FOLLOWED = "slot.merge-log.live"  # the replay's copy of the live run's merge log, which its worker follows
OUTPUTS = ("observer.surges", "slot.decisions", "slot.overflow")  # what is compared and persisted
MARKER = "replay.json"
RESERVED_SCHEMAS = {"public", "information_schema"}


class ReplayError(RunError):
    """The replay could not run (a bad name, a missing topic, a process that failed)."""


@dataclass(frozen=True)
class ReplayOptions:
    day: dt.date
    name: str
    start: dt.time | None = None  # KST; None: the start of the day
    end: dt.time | None = None  # KST, exclusive; None: the end of the day
    timeout_s: float = 600.0
    follow_live: bool = True  # apply the live merge log's order (same decisions) rather than merge anew
    workers: int = 2  # worker processes in the replay's group (the input partitions are shared out)

    def window_ms(self) -> tuple[int, int]:
        start = dt.datetime.combine(self.day, self.start or dt.time(0), KST)
        end = (
            dt.datetime.combine(self.day, self.end, KST)
            if self.end is not None
            else dt.datetime.combine(self.day + dt.timedelta(days=1), dt.time(0), KST)
        )
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)

    @property
    def whole_day(self) -> bool:
        return self.start is None and self.end is None


@dataclass
class Comparison:
    """One output kind, live (the window of the live topic) against the replay's."""

    live: int = 0
    replay: int = 0
    first_difference: str | None = None

    @property
    def identical(self) -> bool:
        return self.first_difference is None


@dataclass
class ReplayRun:
    options: ReplayOptions
    settings: Settings  # the replay's: prefix, schema, data root
    copied: dict[str, int] = field(default_factory=dict)  # logical input topic -> records copied
    followed_steps: int | None = None  # live merge steps the replay followed (None: merged by event time)
    live_refusals: int = 0
    compared: dict[str, Comparison] = field(default_factory=dict)
    pg_rows: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return all(c.identical for c in self.compared.values())

    def summary(self) -> dict[str, Any]:
        o = self.options
        return {
            "date": o.day.isoformat(),
            "from": o.start.isoformat("minutes") if o.start else None,
            "to": o.end.isoformat("minutes") if o.end else None,
            "into": o.name,
            "ticks": self.copied.get("kis.ticks.raw", 0),
            "snapshots": self.copied.get("kis.snapshots", 0),
            "wall_s": round(self.wall_s, 1),
            "ticks_per_s": round(self.copied.get("kis.ticks.raw", 0) / self.wall_s) if self.wall_s else None,
            "stages_s": {k: round(v, 1) for k, v in self.stages_s.items()},
            "outputs": {
                kind: {
                    "live": c.live,
                    "replay": c.replay,
                    "identical": c.identical,
                    "first_difference": c.first_difference,
                }
                for kind, c in self.compared.items()
            },
            "identical": self.identical,
            "followed_live_merge_steps": self.followed_steps,
            "live_refusals": self.live_refusals,
            "topic_prefix": self.settings.topic_prefix,
            "pg_schema": self.settings.pg_schema,
            "pg_rows": self.pg_rows,
            "data_root": str(self.settings.data_root),
        }


def replay_settings(base: Settings, name: str) -> Settings:
    home = base.replay_root / name
    return base.model_copy(
        update={
            "home": home,
            "topic_prefix": f"{base.topic_prefix}replay-{name}.",
            "output_prefix": None,
            "pg_schema": name,
            "data_root": home / "data",
            "scanner_interval_s": 0.0,
            "sink_topics": OUTPUTS,
        }
    )


def check_name(base: Settings, name: str) -> None:
    """A replay writes and, when run again, drops the schema NAME: never one that is not a replay's."""
    problem = None
    if name in (base.pg_schema, Settings.model_fields["pg_schema"].default):
        problem = "is the live schema (OBSERVER_PG_SCHEMA, or the default one)"
    elif name in RESERVED_SCHEMAS or name.startswith("pg_") or name.startswith("demo_"):
        problem = "is reserved (public, information_schema, pg_*, demo_*)"
    elif not name or len(name) > 63 or not (name[0].isalpha() or name[0] == "_"):
        problem = "must start with a letter or _ and have at most 63 characters"
    elif any(not (c.isdigit() or c == "_" or "a" <= c <= "z") for c in name):
        problem = "may hold only a-z, 0-9 and _ (it names a PostgreSQL schema)"
    if problem:
        raise ReplayError(f"--into {name!r} {problem}")


async def _schema_exists(settings: Settings, name: str) -> bool:
    async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, connect_timeout=10) as conn:
        row = await (await conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name,))).fetchone()
    return row is not None


async def clear_previous(base: Settings, name: str, echo: Callable[[str], None]) -> None:
    """Remove an earlier replay of the same name (its topics, schema and files), and nothing else."""
    target = replay_settings(base, name)
    marker = target.home / MARKER
    if await _schema_exists(base, name) and not marker.is_file():
        raise ReplayError(
            f"PostgreSQL schema {name!r} exists and is not a replay's (no {marker}); choose another --into"
        )
    if marker.is_file():
        echo(f"replacing the earlier replay {name!r} (topics {target.topic_prefix}*, schema {name}, {target.home})")
    await delete_topics(target)
    async with await psycopg.AsyncConnection.connect(base.postgres_dsn, autocommit=True, connect_timeout=10) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    shutil.rmtree(target.home, ignore_errors=True)


async def copy_window(
    base: Settings, target: Settings, options: ReplayOptions, progress: Callable[..., None], follow: bool
) -> dict[str, int]:
    """The window of each input topic into the replay's topic of the same name, partition for partition,
    and the live merge log's into the replay's FOLLOWED topic when it follows the live run."""
    start_ms, end_ms = options.window_ms()
    reader = new_reader(base.bootstrap_servers)
    producer = AIOKafkaProducer(
        bootstrap_servers=base.bootstrap_servers, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await reader.start()
    await producer.start()
    copied: dict[str, int] = {}
    # The small topics first: the worker, already reading, then has them before most of the ticks.
    pairs = [(MERGE_LOG, base.output_topic(MERGE_LOG), target.topic(FOLLOWED))] if follow else []
    pairs += [(logical, base.topic(logical), target.topic(logical)) for logical in reversed(INPUTS)]
    try:
        for logical, source, dest in pairs:
            try:
                ranges = await time_window(reader, source, start_ms, end_ms)
            except LookupError as exc:
                if logical == MERGE_LOG:  # a live run from before merge logs: nothing to follow
                    copied[logical] = 0
                    continue
                raise ReplayError(str(exc)) from None
            total = sum(r.size for r in ranges)
            step = functools.partial(progress, logical, total=total)
            copied[logical] = await _copy(reader, producer, source, dest, ranges, step)
    finally:
        await producer.stop()
        await reader.stop()
    return copied


async def _copy(
    reader: Any,
    producer: AIOKafkaProducer,
    source: str,
    dest: str,
    ranges: list[PartitionRange],
    progress: Callable[[int], None],
) -> int:
    batches: dict[int, Any] = {}
    sent: list[asyncio.Future[Any]] = []
    n = 0

    async def ship(partition: int) -> None:
        sent.append(await producer.send_batch(batches.pop(partition), dest, partition=partition))

    async for rec in read_ranges(reader, source, ranges):
        batch = batches.get(rec.partition)
        if batch is None:
            batch = batches[rec.partition] = producer.create_batch()
        if batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp_ms) is None:
            await ship(rec.partition)
            batch = batches[rec.partition] = producer.create_batch()
            if batch.append(key=rec.key, value=rec.value, timestamp=rec.timestamp_ms) is None:
                raise ReplayError(f"{source}[{rec.partition}]@{rec.offset}: a record larger than a producer batch")
        n += 1
        if n % 10_000 == 0:
            progress(n)
    for partition in list(batches):
        await ship(partition)
    await asyncio.gather(*sent)  # every copy acked (acks=all) before the worker starts
    progress(n)
    return n


async def _read_by_partition(
    base: Settings, topic: str, start_ms: int | None, end_ms: int | None
) -> dict[int, list[tuple[bytes, bytes]]]:
    reader = new_reader(base.bootstrap_servers)
    await reader.start()
    try:
        out: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        ranges = await time_window(reader, topic, start_ms, end_ms)
        async for rec in read_ranges(reader, topic, ranges):
            out[rec.partition].append((rec.key or b"", rec.value))
        return out
    finally:
        await reader.stop()


async def compare_outputs(base: Settings, target: Settings, options: ReplayOptions) -> dict[str, Comparison]:
    codec = default_codec()
    start_ms, end_ms = options.window_ms()
    result: dict[str, Comparison] = {}
    for logical in OUTPUTS:
        live = await _read_by_partition(base, base.output_topic(logical), start_ms, end_ms)
        replay = await _read_by_partition(base, target.topic(logical), None, None)
        c = result[logical] = Comparison(sum(map(len, live.values())), sum(map(len, replay.values())))
        for partition in sorted(set(live) | set(replay)):
            a, b = live.get(partition, []), replay.get(partition, [])
            if logical == "observer.surges":
                # A partition carries the surges of its symbols' tick and snapshot windows: each kind's in
                # its input's order, the two interleaved as the worker happened to read them.
                a, b = sorted(a), sorted(b)
            for i in range(max(len(a), len(b))):
                if i < len(a) and i < len(b) and a[i] == b[i]:
                    continue
                shown = [codec.decode(x[i][1])[1] if i < len(x) else "nothing" for x in (a, b)]
                c.first_difference = f"partition {partition} record {i}: live {shown[0]}, replay {shown[1]}"
                break
            if c.first_difference:
                break
    return result


async def _live_refusals(base: Settings, options: ReplayOptions) -> int:
    from app.worker.app import refusal_of

    codec = default_codec()
    start_ms, end_ms = options.window_ms()
    reader = new_reader(base.bootstrap_servers)
    await reader.start()
    n = 0
    try:
        topic = base.topic("kis.subscriptions")
        try:
            ranges = await time_window(reader, topic, start_ms, end_ms)
        except LookupError:
            return 0
        async for rec in read_ranges(reader, topic, ranges):
            name, value = codec.decode(rec.value)
            if name == "SubscriptionEvent" and refusal_of(value) is not None:
                n += 1
    finally:
        await reader.stop()
    return n


async def _pg_rows(target: Settings) -> dict[str, int]:
    out: dict[str, int] = {}
    async with await psycopg.AsyncConnection.connect(target.postgres_dsn, connect_timeout=10) as conn:
        for logical in OUTPUTS:
            table = KINDS[logical].table
            query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(target.pg_schema), sql.Identifier(table)
            )
            row = await (await conn.execute(query)).fetchone()
            out[table] = int(row[0]) if row else 0
    return out


class ProgressBar:
    """One line on stderr: redrawn in place on a terminal, a new line every few seconds otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.shown = 0.0

    def __call__(self, what: str, done: int, total: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.shown < (0.25 if self.tty else 5.0):
            return
        self.shown = now
        share = done / total if total else 1.0
        bar = "#" * int(share * 30)
        line = f"  [{bar:<30}] {share:6.1%} {what}: {done:,} of {total:,}"
        sys.stderr.write(f"\r{line}\x1b[K" if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\n")


async def _live_log_steps(base: Settings, options: ReplayOptions) -> int:
    """Merge steps the live run left for the window (0 if it has no merge log)."""
    start_ms, end_ms = options.window_ms()
    reader = new_reader(base.bootstrap_servers)
    await reader.start()
    try:
        return sum(r.size for r in await time_window(reader, base.output_topic(MERGE_LOG), start_ms, end_ms))
    except LookupError:
        return 0
    finally:
        await reader.stop()


async def run_replay(base: Settings, options: ReplayOptions, echo: Callable[[str], None]) -> ReplayRun:
    started = time.monotonic()
    check_name(base, options.name)
    await clear_previous(base, options.name, echo)
    target = replay_settings(base, options.name)
    run = ReplayRun(options, target)
    (target.home / "logs").mkdir(parents=True)
    (target.home / MARKER).write_bytes(
        orjson.dumps({"date": options.day.isoformat(), "source_prefix": base.topic_prefix, "created": time.time()})
    )
    # The replay's inputs keep their records until the replay is removed, whatever the day's age.
    specs = {name: dataclasses.replace(spec, retention_ms=-1) for name, spec in load_topics().items()}
    specs[FOLLOWED] = dataclasses.replace(specs[MERGE_LOG], name=FOLLOWED)
    await apply_topics(target, specs)
    follow = options.follow_live and await _live_log_steps(base, options) > 0
    if options.follow_live and not follow:
        echo("the live run left no merge log for this window: merging by event time instead")
    run.live_refusals = await _live_refusals(base, options)

    workers = [f"worker{i + 1}" for i in range(options.workers)]
    ports = {name: free_port() for name in [*workers, "sink"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_KIS_") and k != "OBSERVER_OUTPUT_PREFIX"}
    env |= {
        "PYTHONUNBUFFERED": "1",
        "OBSERVER_HOME": str(target.home),
        "OBSERVER_TOPIC_PREFIX": target.topic_prefix,
        "OBSERVER_PG_SCHEMA": target.pg_schema,
        "OBSERVER_DATA_ROOT": str(target.data_root),
        "OBSERVER_SINK_WEB_PORT": str(ports["sink"]),
        "OBSERVER_SCANNER_INTERVAL_S": "0",
        "OBSERVER_SINK_TOPICS": orjson.dumps(list(OUTPUTS)).decode(),
        "OBSERVER_KAFKA_BOOTSTRAP": target.bootstrap_servers,
        "OBSERVER_PG_DSN": target.postgres_dsn,
    }
    env.pop("OBSERVER_SLOT_FOLLOW_LOG", None)
    if follow:
        env["OBSERVER_SLOT_FOLLOW_LOG"] = target.topic(FOLLOWED)
    else:
        # The copy is still being written while the worker reads: the end of a partition is not the live edge.
        env["OBSERVER_SLOT_RELEASE_AT_LOG_END"] = "false"
    procs = Processes(env, target.home / "logs")
    worker_group = target.topic_prefix + target.worker_app_id
    worker_inputs = [target.topic(t) for t in (*INPUTS, "kis.subscriptions")] + [candidates_topic_name(target)]
    if follow:
        worker_inputs.append(target.topic(FOLLOWED))
    bar = ProgressBar()
    ticks_total = 0

    candidates = candidates_topic_name(target)
    candidates_mark: dict[tuple[str, int], int] = {}

    async def worker_behind() -> int:
        """Input records the worker's group has not committed. Its internal candidates topic never stops
        growing (the slot manager's clock ticks go there every half second), so it counts up to its end
        as of the moment every other input was committed: the candidates of all the inputs lie below."""
        ends = await end_offsets(target, worker_inputs)
        committed = await committed_offsets(target, worker_group)
        scraped = await asyncio.gather(*(asyncio.to_thread(scrape, ports[name]) for name in workers))
        taken = sum(metric_sum(m, "observer_worker_ticks_in_total") for m in scraped)
        bar("ticks through the worker", int(taken), ticks_total, force=False)
        inputs = sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items() if tp[0] != candidates)
        if inputs:
            candidates_mark.clear()
            return inputs + sum(max(0, e - committed.get(tp, 0)) for tp, e in ends.items() if tp[0] == candidates)
        if not candidates_mark:
            candidates_mark.update({tp: end for tp, end in ends.items() if tp[0] == candidates})
        return sum(max(0, end - committed.get(tp, 0)) for tp, end in candidates_mark.items())

    t0 = time.monotonic()
    try:
        # The group settles before any record arrives. A CI replay never drained after the second worker
        # joined while the first was already processing, and that worker's Faust started its fetcher before
        # seeking its new partitions to their committed offsets; an idle group has nothing to lose there.
        for name in workers:
            procs.start(name, ["worker"], {"OBSERVER_WORKER_WEB_PORT": str(ports[name])})
        procs.start("sink", ["sink"])
        for name in workers:
            await wait_for(functools.partial(healthy, ports[name]), 120, f"healthy {name} (partitions assigned)", procs)
        await wait_for(lambda: bool(scrape(ports["sink"])), 120, "the sink's web server", procs)
        run.stages_s["start"] = time.monotonic() - t0
        echo(f"copying the window of {options.day} into {target.topic_prefix}*")
        run.copied = await copy_window(
            base, target, options, lambda what, n, total: bar(f"copied {what}", n, total), follow
        )
        bar.close()
        run.stages_s["copy"] = time.monotonic() - t0
        run.followed_steps = run.copied.get(MERGE_LOG) if follow else None
        ticks_total = run.copied.get("kis.ticks.raw", 0)
        # Merging by event time, decisions held back for an input partition that went quiet come out once it
        # counts as idle; following the live log, nothing waits for the wall clock.
        quiet_s = 3.0 if follow else target.slot_idle_s + 4.0
        outputs = [target.topic(t) for t in OUTPUTS]
        await wait_drained(target, outputs, procs, options.timeout_s, quiet_s, lambda _line: None, worker_behind)
        bar("ticks through the worker", ticks_total, ticks_total, force=True)
        bar.close()
    finally:
        procs.stop_all()
    run.stages_s["process"] = time.monotonic() - t0
    t2 = time.monotonic()
    run.compared = await compare_outputs(base, target, options)
    run.pg_rows = await _pg_rows(target)
    run.stages_s["compare"] = time.monotonic() - t2
    run.wall_s = time.monotonic() - started
    return run


def _wall(wall_s: float, stages: dict[str, float]) -> str:
    return (
        f"{wall_s:.0f} s; from the processes' launch: processes ready by {stages.get('start', 0):.0f} s, window "
        f"copied by {stages.get('copy', 0):.0f} s, everything written by {stages.get('process', 0):.0f} s; "
        f"comparison {stages.get('compare', 0):.0f} s"
    )


def summary_table(run: ReplayRun) -> list[str]:
    s = run.summary()
    window = f"{s['from'] or '00:00'}-{s['to'] or '24:00'} KST"
    rows = [
        ("replayed", f"{s['date']} {window} into {s['into']!r}"),
        ("inputs copied", f"{s['ticks']:,} ticks, {s['snapshots']:,} snapshots"),
        ("wall time", _wall(s["wall_s"], s["stages_s"])),
    ]
    for kind, o in s["outputs"].items():
        verdict = "identical" if o["identical"] else f"DIFFERENT: {o['first_difference']}"
        rows.append((kind, f"live {o['live']:,}, replay {o['replay']:,}: {verdict}"))
    rows.append(
        ("PostgreSQL rows", ", ".join(f"{t} {n:,}" for t, n in s["pg_rows"].items()) + f" in schema {s['pg_schema']}")
    )
    rows.append(("JSONL root", s["data_root"]))
    width = max(len(k) for k, _ in rows)
    lines = ["", "replay summary", *(f"  {k:<{width}}  {v}" for k, v in rows)]
    if s["followed_live_merge_steps"] is not None:
        lines.append(
            f"  merge order: the live run's ({s['followed_live_merge_steps']:,} steps of slot.merge-log: where idle "
            "partitions and KIS refusals put things)"
        )
    else:
        lines.append("  merge order: event time (the live run's idleness and refusals not applied)")
    if s["live_refusals"] and s["followed_live_merge_steps"] is None:
        lines.append(
            f"  note: KIS refused {s['live_refusals']} live subscriptions in the window; a replay has no KIS, "
            "so decisions after the first refusal may differ"
        )
    if s["from"] or s["to"]:
        lines.append("  note: a partial day starts with empty windows and no slots, so it may differ from live")
    return lines
