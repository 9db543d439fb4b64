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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

from app.audit import DayAudit, collect_day
from app.config import Settings
from app.krx import KST, latest_session, today_kst
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
from app.sim.server import KisSimulator, SimConfig
from app.sim.ws import WsFaults
from app.sink.render import KINDS
from app.stack.kafka import LocalKafka
from app.stack.postgres import LocalPostgres
from app.topics import apply_topics, delete_topics

WORKER_INPUTS = ("kis.ticks.raw", "kis.snapshots", "kis.subscriptions")  # what the worker reads from outside

SCHEMA_PREFIX = "demo_"


@dataclass
class LiveDay:
    """What a run's hooks may act on while the simulated day runs."""

    sim: KisSimulator
    procs: Processes
    settings: Settings
    ports: dict[str, int]
    kafka: LocalKafka
    pg: LocalPostgres
    echo: Callable[[str], None]


class DayHooks:
    """What a run adds to the demo's day: the soak's schedule of faults and its measurements. The demo's own
    hooks do nothing. ``every`` is called about five times a wall second while the market runs; it must not
    block (a long fault runs as a task of its own)."""

    def sim_config(self, config: SimConfig) -> SimConfig:
        return config

    def process_env(self) -> dict[str, str]:
        return {}

    async def every(self, day: LiveDay) -> None:
        return None

    async def market_closed(self, day: LiveDay) -> None:
        """The market's last trade is delivered; the bridge is still running."""

    async def drained(self, day: LiveDay) -> None:
        """Both stores hold everything; the worker and sink are still running."""


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
    name: str = "demo"  # the run's topic prefix "<name>-<stamp>.", schema "<name>_<stamp>"


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
    simulated_until_us: int = 0  # the simulated instant the morning's deliveries reached
    stages_s: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        assert self.audit is not None
        a = self.audit
        t, dec, ovf = a.ticks, a.kinds["decisions"], a.kinds["overflow"]
        dlq = sum(a.bridge.dead_letters.values()) + sum(sum(k.sink_dead_letters.values()) for k in a.kinds.values())
        return {
            "date": self.day.isoformat(),
            "simulated_until": dt.datetime.fromtimestamp(self.simulated_until_us / 1e6, KST).strftime("%H:%M:%S")
            if self.simulated_until_us
            else None,
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


def _previous_runs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


async def remove_run(settings: Settings, run_dir: Path, name: str = "demo") -> None:
    """A previous run's topics, schema and files."""
    stamp = run_dir.name
    await delete_topics(settings.model_copy(update={"topic_prefix": f"{name}-{stamp}."}))
    async with await psycopg.AsyncConnection.connect(
        settings.postgres_dsn, autocommit=True, connect_timeout=10
    ) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(f"{name}_{stamp}")))
    shutil.rmtree(run_dir, ignore_errors=True)


async def _progress_line(sim: KisSimulator, ports: dict[str, int], started: float) -> str:
    totals = sim.ledger.totals()
    # Scraped in threads: the simulator shares this event loop and must not wait on them.
    bridge, sink, worker = await asyncio.gather(
        *(asyncio.to_thread(scrape, ports[name]) for name in ("bridge", "sink", "worker"))
    )
    parsed = metric_sum(bridge, "observer_bridge_records_parsed_total")
    return (
        f"  {time.monotonic() - started:5.0f} s  sim {sim.clock.now_kst():%H:%M:%S} KST: "
        f"KIS sent {totals['records_sent']:,} records; bridge parsed {parsed:,.0f}; "
        f"sink rows {metric_sum(sink, 'observer_sink_rows_total'):,.0f}; "
        f"slots held {metric_sum(worker, 'observer_worker_slots_used'):.0f}, "
        f"surges {metric_sum(worker, 'observer_worker_surges_total'):,.0f}"
    )


def run_root(base: Settings, name: str) -> Path:
    return base.demo_root if name == "demo" else base.demo_root.with_name(name)


async def run_demo(
    base: Settings, options: DemoOptions, echo: Callable[[str], None], hooks: DayHooks | None = None
) -> DemoRun:
    hooks = hooks or DayHooks()
    name = options.name
    root = run_root(base, name)
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
    home = root / stamp
    for old in _previous_runs(root):
        echo(f"removing the previous {name} run {old.name} (topics, schema, files)")
        await remove_run(base, old, name)
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
            "topic_prefix": f"{name}-{stamp}.",
            "pg_schema": f"{name}_{stamp}",
            "data_root": home / "data",
            "kis_rest_url": f"http://127.0.0.1:{ports['rest']}",
            "kis_ws_url": f"ws://127.0.0.1:{ports['ws']}",
            "worker_web_port": ports["worker"],
            "sink_web_port": ports["sink"],
            "bridge_metrics_port": ports["bridge"],
        }
    )
    run = DemoRun(stamp, day, settings, home, f"http://127.0.0.1:{ports['worker']}/", options.speed)
    write_scrape_targets(root / SCRAPE_TARGETS_FILE, ports)
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
    } | hooks.process_env()
    procs = Processes(env, home / "logs")
    start_at = dt.datetime.combine(day, options.start, KST)
    until_us = int(dt.datetime.combine(day, options.until, KST).timestamp() * 1_000_000)
    sim = KisSimulator(
        hooks.sim_config(
            SimConfig(
                seed=options.seed,
                start=start_at,
                speed=options.speed,
                random_surges=options.random_surges,
                rest_port=ports["rest"],
                ws_port=ports["ws"],
                ws_faults=WsFaults(malformed_rate=options.malformed_rate, seed=options.seed),
                trade_until_us=until_us,
            )
        )
    )
    live = LiveDay(sim, procs, settings, ports, kafka, pg, echo)
    sim_stopped = False
    # KIS is up (its clock held at the start) before the worker, whose scanner would otherwise spend its
    # first polls on retries while the simulated morning runs on without it.
    sim.clock.pause()
    await sim.start()
    try:
        procs.start("worker", ["worker"])
        procs.start("sink", ["sink"])
        # The worker must be serving before the morning starts: the bootstrap at the open comes from it.
        await wait_for(lambda: healthy(ports["worker"]), 120, "healthy worker (partitions assigned)", procs)
        await wait_for(lambda: bool(scrape(ports["sink"])), 120, "the sink's web server", procs)
        procs.start("bridge", ["bridge"])
        await wait_for(lambda: bool(scrape(ports["bridge"])), 60, "the bridge's metrics", procs)
        stages["processes"] = time.monotonic() - t0
        sim.clock.resume()
        echo(
            f"simulated KRX morning of {day} ({options.start:%H:%M}-{options.until:%H:%M} KST) at {options.speed:g}x; "
            f"status page {run.status_url}; logs in {home / 'logs'}"
        )
        t1 = time.monotonic()
        shown = 0.0
        while sim.clock.now_us() < until_us:
            await hooks.every(live)
            procs.check()
            sim.check_driver()
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                echo(await _progress_line(sim, ports, started))
            await asyncio.sleep(0.2)
        # The clock may be ahead of what the simulator has delivered (a slow machine, a busy bridge): the
        # market stops at the morning's end (trade_until_us), and the deliveries catch up to it.
        run.simulated_until_us = until_us
        while sim.ledger.delivered_until_us < until_us:
            await hooks.every(live)
            procs.check()
            sim.check_driver()
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                behind = dt.datetime.fromtimestamp(sim.ledger.delivered_until_us / 1e6, KST)
                echo(f"the simulator is behind its clock: trades delivered up to {behind:%H:%M:%S} KST")
            await asyncio.sleep(0.2)
        stages["morning"] = time.monotonic() - t1
        await hooks.market_closed(live)
        t2 = time.monotonic()
        echo("morning over: stopping the bridge (it publishes its final counts), then draining the worker and sink")
        status = procs.stop("bridge")
        if status != 0:
            raise RunError(f"observer bridge stopped with status {status}; see {home / 'logs' / 'bridge.log'}")
        run.sim_totals = sim.ledger.totals()
        sim_stopped = True
        await sim.stop()
        sink_inputs = [settings.topic(logical) for logical in KINDS]
        worker_inputs = [settings.topic(logical) for logical in WORKER_INPUTS]
        worker_group = settings.topic_prefix + settings.worker_app_id

        async def worker_behind() -> int:
            # Surges are rare: a worker still working off a backlog (after a kill -9, say) can publish none
            # for longer than the quiet period, and publish more once the sink has been stopped.
            ends = await end_offsets(settings, worker_inputs)
            committed = await committed_offsets(settings, worker_group)
            return sum(max(0, end - committed.get(tp, 0)) for tp, end in ends.items())

        await wait_drained(
            settings, sink_inputs, procs, options.drain_timeout_s, quiet_s=4.0, echo=echo, also_behind=worker_behind
        )
        await hooks.drained(live)
        crashes = metric_sum(scrape(ports["worker"]), "observer_worker_agent_crashes_total")
        if crashes:
            raise RunError(f"the worker's agents crashed {crashes:.0f} times; see {home / 'logs' / 'worker.log'}")
        # The worker stops before the sink, which then writes whatever the worker published on its way out.
        procs.stop("worker")
        await wait_drained(settings, sink_inputs, procs, options.drain_timeout_s, quiet_s=1.0, echo=echo)
        stages["drain"] = time.monotonic() - t2
        if not run.sim_totals.get("records_sent"):
            raise RunError("the simulator sent no trades: the bridge subscribed nothing (no slot decisions?)")
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


SCRAPE_TARGETS_FILE = "prometheus-targets.json"


def write_scrape_targets(path: Path, ports: dict[str, int]) -> None:
    """Prometheus file_sd targets of this run's processes (jobs as in monitoring/prometheus/prometheus.yml), so
    a Prometheus pointed at ``OBSERVER_DEMO_ROOT/prometheus-targets.json`` scrapes whichever ports it got."""
    groups = [
        {"targets": [f"127.0.0.1:{ports[role]}"], "labels": {"job": f"observer-{role}"}}
        for role in ("bridge", "worker", "sink")
    ]
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(groups))
    tmp.replace(path)  # Prometheus watches the file: it must never see half of it


def summary_table(run: DemoRun) -> list[str]:
    s = run.summary()
    ratio = s["receive_to_persist"]
    by_reason = ", ".join(f"{k} {v}" for k, v in sorted(s["dead_letters_by_reason"].items())) or "none"
    rows = [
        ("simulated day", f"{s['date']}, trades delivered until {s['simulated_until']} KST"),
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
    return lines + look_again(s, "demo")


def look_again(s: dict[str, Any], name: str) -> list[str]:
    """How to audit a kept run again (``s``: its ``DemoRun.summary()``)."""
    return [
        f"look again (the run is kept until the next {name}; `observer stack up` first if the stack is down):",
        f"  OBSERVER_TOPIC_PREFIX={s['topic_prefix']} OBSERVER_PG_SCHEMA={s['pg_schema']} "
        f"OBSERVER_DATA_ROOT={s['data_root']} observer audit --date {s['date']}",
    ]
