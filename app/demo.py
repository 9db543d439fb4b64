"""``observer demo``: the whole system on the simulator, a KRX morning in about a minute, then its audit.

It starts what is not running (the local Kafka and PostgreSQL), the simulator (in this process, so its
ledger of what KIS sent is at hand), and ``observer bridge``, ``observer worker`` and ``observer sink`` as
the processes users run, with their logs under the run's directory. The simulated morning runs at
``speed`` times real time; at its end the bridge is stopped (it publishes its final counts), the worker
and sink are left to drain (everything in Kafka in both stores, nothing new for a few seconds), then
stopped, and ``observer audit`` counts the day. Everything it started is stopped again.

Each run is isolated: its own topic prefix, PostgreSQL schema and data root (``demo-<stamp>``), so a
second demo on the same simulated day does not meet the first one's offsets or slot state. The latest
run is kept for a look afterwards (``observer audit``/``replay`` with the printed settings); older runs
are removed when a new one starts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from app.audit import DayAudit, collect_day
from app.config import Settings
from app.kafka_read import new_reader, time_window
from app.krx import KST, latest_session, today_kst
from app.sim.server import KisSimulator, SimConfig
from app.sim.ws import WsFaults
from app.sink.archive import COMMIT_FILE
from app.sink.render import KINDS
from app.topics import apply_topics, delete_topics

SCHEMA_PREFIX = "demo_"


class DemoError(RuntimeError):
    """The demo could not run to its summary; the message says which part failed and where its log is."""


@dataclass(frozen=True)
class DemoOptions:
    speed: float = 180.0
    start: dt.time = dt.time(8, 55)  # before the open: the bootstrap (a minute before 09:00) comes first
    until: dt.time = dt.time(12, 0)
    seed: int = 1
    random_surges: int = 24
    malformed_rate: float = 0.002  # some bad frames, so the dead-letter path shows in the summary
    keep_stack: bool = False
    drain_timeout_s: float = 180.0


@dataclass
class DemoRun:
    stamp: str
    day: dt.date
    settings: Settings  # the run's: prefix, schema, data root, ports
    home: Path
    status_url: str
    speed: float
    sim_totals: dict[str, Any] = field(default_factory=dict)
    audit: DayAudit | None = None
    wall_s: float = 0.0
    stages_s: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        assert self.audit is not None
        a = self.audit
        t, dec, ovf = a.ticks, a.kinds["decisions"], a.kinds["overflow"]
        dlq = sum(a.bridge.dead_letters.values()) + sum(sum(k.sink_dead_letters.values()) for k in a.kinds.values())
        return {
            "date": self.day.isoformat(),
            "wall_s": round(self.wall_s, 1),
            "speed": self.speed,
            "kis_records_sent": self.sim_totals.get("records_sent"),
            "frames_received": a.bridge.frames_received,
            "records_parsed": a.bridge.records_parsed,
            "ticks_in_kafka": t.kafka_distinct,
            "jsonl_lines": t.jsonl_distinct,
            "postgres_rows": t.pg_rows,
            "dead_letters": dlq,
            "dead_letters_by_reason": dict(a.bridge.dead_letters),
            "surges": a.kinds["surges"].kafka_distinct,
            "slot_changes": dec.kafka_distinct,
            "slot_assigns": dec.detail.get("assign", 0),
            "slot_releases": dec.detail.get("release", 0),
            "overflow": ovf.kafka_distinct,
            "receive_to_persist": a.ratio,
            "unaccounted": a.problems(),
            "status_page": self.status_url,
            "topic_prefix": self.settings.topic_prefix,
            "pg_schema": self.settings.pg_schema,
            "data_root": str(self.settings.data_root),
            "stages_s": {k: round(v, 1) for k, v in self.stages_s.items()},
        }


def free_port(preferred: int | None = None) -> int:
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free port on 127.0.0.1")


def _scrape(port: int) -> dict[str, float]:
    """A process's Prometheus metrics as ``name{labels}`` -> value (empty if it does not answer yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _healthy(port: int) -> bool:
    """The worker's /api/health says ok: its partitions are assigned (so its scanner and agents run)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # connection refused, or HTTP 503 while starting
        return False


def _metric_sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


class Processes:
    """The observer processes of a run: started with their own logs, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # a Ctrl-C of the demo reaches the demo, which stops them in order
        )

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise DemoError(
                    f"observer {name} exited with status {proc.returncode}; its log is {self.logs / name}.log:\n  "
                    + "\n  ".join(tail)
                )

    def stop(self, name: str, timeout_s: float = 60.0) -> int | None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


async def _end_offsets(settings: Settings) -> dict[tuple[str, int], int]:
    reader = new_reader(settings.bootstrap_servers)
    await reader.start()
    try:
        ends: dict[tuple[str, int], int] = {}
        for logical in KINDS:
            topic = settings.topic(logical)
            for r in await time_window(reader, topic, None, None):
                ends[(topic, r.partition)] = r.end
        return ends
    finally:
        await reader.stop()


async def _sink_offsets(
    settings: Settings, app_id: str
) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], int]]:
    """The next offset each store of the sink will write, per input partition: (PostgreSQL, JSONL)."""
    pg: dict[tuple[str, int], int] = {}
    try:
        async with await psycopg.AsyncConnection.connect(settings.postgres_dsn, connect_timeout=5) as conn:
            query = sql.SQL("SELECT topic, kafka_partition, next_offset FROM {}.sink_offsets WHERE consumer = %s")
            rows = await (await conn.execute(query.format(sql.Identifier(settings.pg_schema)), (app_id,))).fetchall()
            pg = {(t, p): n for t, p, n in rows}
    except psycopg.errors.UndefinedTable:
        pass  # the sink has not made its tables yet: nothing written
    jsonl: dict[tuple[str, int], int] = {}
    commit = settings.data_root / COMMIT_FILE
    if commit.is_file():
        for key, n in orjson.loads(commit.read_bytes()).get("offsets", {}).items():
            topic, _, partition = key.rpartition(":")
            jsonl[(topic, int(partition))] = n
    return pg, jsonl


async def wait_drained(
    settings: Settings, procs: Processes, deadline_s: float, quiet_s: float, echo: Callable[[str], None]
) -> None:
    """Until both stores hold everything in the sink's input topics and nothing new came for ``quiet_s``."""
    app_id = f"{settings.topic_prefix}{settings.sink_app_id}"
    end = time.monotonic() + deadline_s
    last_ends: dict[tuple[str, int], int] = {}
    quiet_since = time.monotonic()
    shown = 0.0
    while True:
        procs.check()
        ends = await _end_offsets(settings)
        pg, jsonl = await _sink_offsets(settings, app_id)
        behind = sum(max(0, n - min(pg.get(tp, 0), jsonl.get(tp, 0))) for tp, n in ends.items())
        if ends != last_ends:
            last_ends, quiet_since = ends, time.monotonic()
        if behind == 0 and time.monotonic() - quiet_since >= quiet_s:
            return
        if time.monotonic() > end:
            raise DemoError(f"the sink did not catch up within {deadline_s:.0f} s ({behind} records behind)")
        if time.monotonic() - shown > 5:
            shown = time.monotonic()
            echo(f"  draining: {behind:,} records not yet in both stores")
        await asyncio.sleep(0.5)


def _previous_runs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


async def remove_run(settings: Settings, run_dir: Path) -> None:
    """A previous demo run's topics, schema and files."""
    stamp = run_dir.name
    await delete_topics(settings.model_copy(update={"topic_prefix": f"demo-{stamp}."}))
    async with await psycopg.AsyncConnection.connect(
        settings.postgres_dsn, autocommit=True, connect_timeout=10
    ) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"{SCHEMA_PREFIX}{stamp}"))
        )
    shutil.rmtree(run_dir, ignore_errors=True)


async def _progress_line(sim: KisSimulator, ports: dict[str, int], started: float) -> str:
    totals = sim.ledger.totals()
    # Scraped in threads: the simulator shares this event loop and must not wait on them.
    bridge, sink, worker = await asyncio.gather(
        *(asyncio.to_thread(_scrape, ports[name]) for name in ("bridge", "sink", "worker"))
    )
    parsed = _metric_sum(bridge, "observer_bridge_records_parsed_total")
    return (
        f"  {time.monotonic() - started:5.0f} s  sim {sim.clock.now_kst():%H:%M:%S} KST: "
        f"KIS sent {totals['records_sent']:,} records; bridge parsed {parsed:,.0f}; "
        f"sink rows {_metric_sum(sink, 'observer_sink_rows_total'):,.0f}; "
        f"slots held {_metric_sum(worker, 'observer_worker_slots_used'):.0f}, "
        f"surges {_metric_sum(worker, 'observer_worker_surges_total'):,.0f}"
    )


async def run_demo(base: Settings, options: DemoOptions, echo: Callable[[str], None]) -> DemoRun:
    from app.stack.kafka import LocalKafka
    from app.stack.postgres import LocalPostgres

    started = time.monotonic()
    stages: dict[str, float] = {}
    kafka, pg = LocalKafka(base), LocalPostgres(base)
    started_services: list[LocalKafka | LocalPostgres] = []
    for service in (kafka, pg):
        if service.pid() is None:
            started_services.append(service)
        echo(await asyncio.to_thread(service.start))  # the stack's helpers run event loops of their own
    stages["stack"] = time.monotonic() - started
    # Data older than the topics' retention is deleted by the broker and data stamped in the future is
    # refused: the simulated day is the latest regular session before today.
    day = latest_session(today_kst() - dt.timedelta(days=1), regular=True)
    stamp = dt.datetime.now(KST).strftime("%Y%m%d%H%M%S")
    home = base.demo_root / stamp
    for old in _previous_runs(base.demo_root):
        echo(f"removing the previous demo run {old.name} (topics, schema, files)")
        await remove_run(base, old)
    (home / "logs").mkdir(parents=True)
    ports = {
        "rest": free_port(),
        "ws": free_port(),
        "worker": free_port(base.worker_web_port),
        "sink": free_port(base.sink_web_port),
        "bridge": free_port(base.bridge_metrics_port),
    }
    settings = base.model_copy(
        update={
            "topic_prefix": f"demo-{stamp}.",
            "pg_schema": f"{SCHEMA_PREFIX}{stamp}",
            "data_root": home / "data",
            "kis_rest_url": f"http://127.0.0.1:{ports['rest']}",
            "kis_ws_url": f"ws://127.0.0.1:{ports['ws']}",
            "worker_web_port": ports["worker"],
            "sink_web_port": ports["sink"],
            "bridge_metrics_port": ports["bridge"],
        }
    )
    run = DemoRun(stamp, day, settings, home, f"http://127.0.0.1:{ports['worker']}/", options.speed)
    t0 = time.monotonic()
    await apply_topics(settings)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("OBSERVER_KIS_")
    }  # the demo's KIS is the simulator, never a configured real one
    env |= {
        "PYTHONUNBUFFERED": "1",
        "OBSERVER_HOME": str(home),
        "OBSERVER_TOPIC_PREFIX": settings.topic_prefix,
        "OBSERVER_PG_SCHEMA": settings.pg_schema,
        "OBSERVER_DATA_ROOT": str(settings.data_root),
        "OBSERVER_KIS_REST_URL": settings.kis_rest_url,
        "OBSERVER_KIS_WS_URL": settings.kis_ws_url,
        "OBSERVER_WORKER_WEB_PORT": str(ports["worker"]),
        "OBSERVER_SINK_WEB_PORT": str(ports["sink"]),
        "OBSERVER_BRIDGE_METRICS_PORT": str(ports["bridge"]),
        "OBSERVER_SCANNER_INTERVAL_S": "1",
        # The stack's own settings come from the parent (a user's OBSERVER_KAFKA_PORT, say) and stay.
        "OBSERVER_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "OBSERVER_PG_DSN": settings.postgres_dsn,
    }
    procs = Processes(env, home / "logs")
    start_at = dt.datetime.combine(day, options.start, KST)
    until_us = int(dt.datetime.combine(day, options.until, KST).timestamp() * 1_000_000)
    sim = KisSimulator(
        SimConfig(
            seed=options.seed,
            start=start_at,
            speed=options.speed,
            random_surges=options.random_surges,
            rest_port=ports["rest"],
            ws_port=ports["ws"],
            ws_faults=WsFaults(malformed_rate=options.malformed_rate, seed=options.seed),
        )
    )
    sim_stopped = False
    # KIS is up (its clock held at the start) before the worker, whose scanner would otherwise spend its
    # first polls on retries while the simulated morning runs on without it.
    sim.clock.pause()
    await sim.start()
    try:
        procs.start("worker", ["worker"])
        procs.start("sink", ["sink"])
        # The worker must be serving before the morning starts: the bootstrap at the open comes from it.
        await _wait_for(lambda: _healthy(ports["worker"]), 120, "healthy worker (partitions assigned)", procs)
        await _wait_for(lambda: bool(_scrape(ports["sink"])), 120, "the sink's web server", procs)
        procs.start("bridge", ["bridge"])
        await _wait_for(lambda: bool(_scrape(ports["bridge"])), 60, "the bridge's metrics", procs)
        stages["processes"] = time.monotonic() - t0
        sim.clock.resume()
        echo(
            f"simulated KRX morning of {day} ({options.start:%H:%M}-{options.until:%H:%M} KST) at {options.speed:g}x; "
            f"status page {run.status_url}; logs in {home / 'logs'}"
        )
        t1 = time.monotonic()
        shown = 0.0
        while sim.clock.now_us() < until_us:
            procs.check()
            sim.check_driver()
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                echo(await _progress_line(sim, ports, started))
            await asyncio.sleep(0.2)
        stages["morning"] = time.monotonic() - t1
        t2 = time.monotonic()
        echo("morning over: stopping the bridge (it publishes its final counts), then draining the worker and sink")
        status = procs.stop("bridge")
        if status != 0:
            raise DemoError(f"observer bridge stopped with status {status}; see {home / 'logs' / 'bridge.log'}")
        run.sim_totals = sim.ledger.totals()
        sim_stopped = True
        await sim.stop()
        await wait_drained(settings, procs, options.drain_timeout_s, quiet_s=4.0, echo=echo)
        stages["drain"] = time.monotonic() - t2
    finally:
        procs.stop_all()
        if not sim_stopped:
            await sim.stop()
    t3 = time.monotonic()
    run.audit = await collect_day(settings, day)
    stages["audit"] = time.monotonic() - t3
    if started_services and not options.keep_stack:
        for service in reversed(started_services):
            echo(await asyncio.to_thread(service.stop))
    run.wall_s = time.monotonic() - started
    run.stages_s = stages
    return run


async def _wait_for(check: Callable[[], bool], deadline_s: float, what: str, procs: Processes) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        procs.check()
        if time.monotonic() > end:
            raise DemoError(f"no {what} within {deadline_s:.0f} s")
        await asyncio.sleep(0.25)


def summary_table(run: DemoRun) -> list[str]:
    s = run.summary()
    ratio = s["receive_to_persist"]
    by_reason = ", ".join(f"{k} {v}" for k, v in sorted(s["dead_letters_by_reason"].items())) or "none"
    rows = [
        ("simulated day", s["date"]),
        ("KIS (simulator) sent", f"{s['kis_records_sent']:,} trade records"),
        ("frames received", f"{s['frames_received']:,}"),
        ("ticks parsed", f"{s['records_parsed']:,}"),
        ("ticks published", f"{s['ticks_in_kafka']:,} in kis.ticks.raw"),
        ("JSONL lines", f"{s['jsonl_lines']:,}"),
        ("Postgres rows", f"{s['postgres_rows']:,}"),
        ("dead letters", f"{s['dead_letters']:,} ({by_reason})"),
        ("surges", f"{s['surges']:,}"),
        ("slot changes", f"{s['slot_changes']:,} ({s['slot_assigns']} assign, {s['slot_releases']} release)"),
        ("overflow", f"{s['overflow']:,}"),
        ("receive-to-persist", "n/a" if ratio is None else f"{ratio:.2%}"),
        ("unaccounted", "; ".join(s["unaccounted"]) or "nothing"),
        ("wall time", f"{s['wall_s']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in s["stages_s"].items()) + ")"),
        ("status page", f"{s['status_page']} (served while the worker runs)"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "demo summary", *(f"  {k:<{width}}  {v}" for k, v in rows), ""]
    lines += [
        "look again (the run is kept until the next demo; `observer stack up` first if the stack is down):",
        f"  OBSERVER_TOPIC_PREFIX={s['topic_prefix']} OBSERVER_PG_SCHEMA={s['pg_schema']} "
        f"OBSERVER_DATA_ROOT={s['data_root']} observer audit --date {s['date']}",
    ]
    return lines
