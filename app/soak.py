"""``observer soak``: a whole KRX session under the faults of production, then the proof that nothing was lost.

It is the demo's day (``app.demo``: the stack, the simulator in this process, ``observer bridge``, ``worker``
and ``sink`` as separate processes, the drain, ``observer audit``), run from before the open to after the
closing auction, with:

- a realistic trade rate, then a peak one (every symbol's rate x ``peak_factor`` from ``peak_from``), at
  least three times the seed system's busiest hour (50,287 lines);
- malformed, wrong-field-count and unknown-TR frames all day;
- faults on a schedule of simulated times (:data:`FAULT_KINDS`), one at a time, each logged with its wall
  duration: WebSocket drops, ``kill -9`` of the worker and the sink (restarted at once, as a supervisor
  would), the broker and PostgreSQL restarted, a registration KIS keeps for itself so that the bridge's
  next subscription is KIS's 42nd, and a burst of surges in more symbols than the slot pool holds.

At the end it checks what the audit reads from the stores (every trade KIS sent in Kafka, JSONL and
PostgreSQL once, dead letters with reasons, the slot policy kept), memory (peak RSS per process, the
processes together against the seed system's 512 MB container) and reports latency percentiles: frame
receipt to Kafka ack (the bridge's histogram), tick to JSONL and to PostgreSQL (the sink's), surge to
subscribe (a surge's crossing trade delivered by KIS to the bridge's subscribe message arriving at KIS,
both on this machine's clock). Exit status 1 if any check fails.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from app.config import Settings
from app.demo import DayHooks, DemoOptions, DemoRun, LiveDay, look_again, run_demo
from app.kafka_read import new_reader, read_ranges, time_window
from app.krx import KST
from app.records import default_codec
from app.runs import scrape
from app.sim.market import BOOTSTRAP_CODES, Market, RatePeriod, SurgeSpec
from app.sim.server import SimConfig
from app.sim.ws import WsFaults
from app.stack.common import rss_bytes

SEED_BUSIEST_HOUR = 50_287  # lines of the seed system's busiest hour (its own report)
SEED_MEMORY_LIMIT_MB = 512  # the seed system's container limit
RAMP_STEPS = 4
QUIET_AFTER_FAULT_S = 30.0  # wall seconds after a fault's start that its effects are allowed to last

FAULT_KINDS = {
    "ws_drop": "KIS cuts every WebSocket session",
    "kill_worker": "kill -9 of observer worker, restarted at once",
    "kill_sink": "kill -9 of observer sink, restarted at once",
    "restart_kafka": "the broker stopped and started again",
    "restart_postgres": "PostgreSQL stopped and started again",
    "leak_registration": "KIS keeps a registration of its own: the bridge's next subscription is the 42nd",
    "surge_burst": "surges start at once in more symbols than the slot pool holds",
}


@dataclass(frozen=True)
class Fault:
    at: dt.time  # simulated KST
    kind: str


def _t(text: str) -> dt.time:
    return dt.time.fromisoformat(text)


FULL_DAY_FAULTS = tuple(
    Fault(_t(at), kind)
    for at, kind in (
        ("09:20", "ws_drop"),
        ("09:50", "kill_sink"),
        ("10:20", "restart_kafka"),
        ("10:50", "kill_worker"),
        ("11:20", "restart_postgres"),
        ("12:35", "leak_registration"),
        ("12:40", "surge_burst"),
        ("13:05", "ws_drop"),
        ("13:55", "kill_worker"),
        ("14:15", "restart_kafka"),
        ("14:35", "kill_sink"),
        ("14:55", "restart_postgres"),
        ("15:10", "ws_drop"),
    )
)

# The test suite's soak: the same faults over a morning, the peak in its second hour.
SHORT_FAULTS = tuple(
    Fault(_t(at), kind)
    for at, kind in (
        ("09:12", "ws_drop"),
        ("09:24", "kill_sink"),
        ("09:36", "restart_kafka"),
        ("09:52", "kill_worker"),
        ("10:04", "restart_postgres"),
        ("10:14", "leak_registration"),
        ("10:16", "surge_burst"),
        ("10:30", "ws_drop"),
        ("10:40", "kill_worker"),
    )
)


@dataclass(frozen=True)
class SoakOptions:
    speed: float = 39.0  # 09:00-15:30 in 10 minutes
    start: dt.time = dt.time(8, 55)
    until: dt.time = dt.time(15, 31)  # after the 15:30 closing print
    seed: int = 7
    random_surges: int = 40
    malformed_rate: float = 0.002
    wrong_field_count_rate: float = 0.0005
    unknown_tr_rate: float = 0.0005
    peak_from: dt.time = dt.time(13, 30)
    peak_until: dt.time = dt.time(15, 20)
    peak_factor: float = 3.5
    peak_ramp_minutes: float = 20.0
    burst_symbols: int = 60  # more than the pool of 41
    burst_minutes: float = 6.0
    burst_factor: float = 15.0
    faults: tuple[Fault, ...] = FULL_DAY_FAULTS
    min_peak_hour: int = 3 * SEED_BUSIEST_HOUR
    memory_limit_mb: float = SEED_MEMORY_LIMIT_MB
    keep_stack: bool = False

    def __post_init__(self) -> None:
        if not self.speed > 0:
            raise ValueError(f"speed must be above 0, not {self.speed}")
        if not self.peak_factor > 0 or self.peak_ramp_minutes < 0:
            raise ValueError("the peak factor must be above 0 and its ramp at least 0 minutes")
        if not self.start < self.peak_from <= self.peak_until <= self.until:
            raise ValueError("the day must run start < peak_from <= peak_until <= until")
        late = [f"{f.at:%H:%M} {f.kind}" for f in self.faults if not self.start <= f.at < self.until]
        if late:
            raise ValueError(f"faults outside {self.start:%H:%M}-{self.until:%H:%M}: {', '.join(late)}")

    @classmethod
    def short(cls) -> SoakOptions:
        """About four minutes: 09:00-10:50 at 40x, the peak ramping from 09:30, whole from 09:50 (the test
        suite runs this one)."""
        return cls(
            speed=40.0,
            until=dt.time(10, 50),
            peak_from=dt.time(9, 30),  # the ramp's 20 minutes, then a whole hour at the peak
            peak_until=dt.time(10, 50),
            peak_factor=4.0,
            random_surges=16,
            faults=SHORT_FAULTS,
        )

    def burst_at(self) -> dt.time | None:
        return next((f.at for f in self.faults if f.kind == "surge_burst"), None)


@dataclass
class Injected:
    kind: str
    sim_at: str  # HH:MM:SS KST when it started
    wall_s: float  # how long it took (a restart: stopped and serving again)
    detail: str
    started_wall: float = 0.0  # time.time() at its start


def quantiles(buckets: dict[float, float], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float | None]:
    """Percentiles of a Prometheus histogram (upper bound -> cumulative count), interpolated within a
    bucket as Prometheus's histogram_quantile does; the largest finite bound for ranks in the +Inf bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    out: dict[str, float | None] = {"count": total}
    for q in qs:
        name = f"p{q * 100:g}"
        if not total:
            out[name] = None
            continue
        rank = q * total
        lower, below = 0.0, 0.0
        for le in bounds:
            cum = buckets[le]
            if cum >= rank:
                if le == float("inf"):
                    out[name] = lower
                else:
                    out[name] = lower + (le - lower) * ((rank - below) / (cum - below) if cum > below else 1.0)
                break
            lower, below = le, cum
    return out


def histogram(metrics: dict[str, float], name: str, **labels: str) -> dict[float, float]:
    """The cumulative buckets of one series of histogram ``name`` in a scrape (see ``app.runs.scrape``)."""
    out: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for key, value in metrics.items():
        if not key.startswith(prefix):
            continue
        found = dict(pair.split("=", 1) for pair in key[len(prefix) : -1].split(","))
        if all(found.get(k) == v for k, v in labels.items()):
            le = float(found["le"])
            out[le] = out.get(le, 0.0) + value
    return out


def _add(into: dict[float, float], more: dict[float, float]) -> None:
    for le, n in more.items():
        into[le] = into.get(le, 0.0) + n


@dataclass
class SoakHooks(DayHooks):
    options: SoakOptions
    day: dt.date
    burst: list[SurgeSpec] = field(default_factory=list)
    live: LiveDay | None = None
    injected: list[Injected] = field(default_factory=list)
    pending: list[Fault] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    rss_max: dict[str, int] = field(default_factory=dict)  # per role, sampled
    hwm_max: dict[str, int] = field(default_factory=dict)  # per role, the kernel's VmHWM over incarnations
    together_max: dict[str, int] = field(default_factory=lambda: {"realistic": 0, "peak": 0})
    sampled_at: float = 0.0
    histograms: dict[str, dict[float, float]] = field(default_factory=dict)
    ends: dict[str, Any] = field(default_factory=dict)
    surge_latency: dict[str, Any] | None = None  # read from Kafka once drained, while the stack still runs

    def __post_init__(self) -> None:
        self.pending = sorted(self.options.faults, key=lambda f: f.at)
        for f in self.pending:
            if f.kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault {f.kind!r}; choose from {', '.join(FAULT_KINDS)}")
        at = self.options.burst_at()
        if at is not None:
            self.burst = burst_surges(self.options, self.day, at)

    # ---------------------------------------------------------------------------- the day's set-up

    def sim_config(self, config: SimConfig) -> SimConfig:
        o = self.options
        return replace(
            config,
            surges=tuple(config.surges) + tuple(self.burst),
            rate_periods=peak_periods(o, self.day),
            ws_faults=WsFaults(
                malformed_rate=o.malformed_rate,
                wrong_field_count_rate=o.wrong_field_count_rate,
                unknown_tr_rate=o.unknown_tr_rate,
                seed=o.seed,
            ),
        )

    def process_env(self) -> dict[str, str]:
        # The burst's symbols are watched, so their surges are seen before any holds a slot.
        if not self.burst:
            return {}
        return {"OBSERVER_SCANNER_WATCHLIST": orjson.dumps([s.symbol for s in self.burst]).decode()}

    # ---------------------------------------------------------------------------- while it runs

    async def every(self, day: LiveDay) -> None:
        self.live = day
        if self.task is not None and self.task.done():
            self.task.result()  # a fault that failed fails the soak, with its own error
            self.task = None
        now = day.sim.clock.now_kst()
        if time.monotonic() - self.sampled_at >= 1.0:
            self.sampled_at = time.monotonic()
            self._sample_memory(
                # Memory a process took at the peak stays with it: everything from the peak on is "peak".
                day,
                "peak" if now.time() >= self.options.peak_from else "realistic",
            )
        if self.task is None and self.pending and now.time() >= self.pending[0].at:
            fault = self.pending.pop(0)
            self.task = asyncio.create_task(self._inject(day, fault, now), name=f"soak-{fault.kind}")

    def _sample_memory(self, day: LiveDay, phase: str) -> None:
        together = 0
        for role, pid in day.procs.pids().items():
            rss = rss_bytes(pid) or 0
            together += rss
            self.rss_max[role] = max(self.rss_max.get(role, 0), rss)
        self.together_max[phase] = max(self.together_max[phase], together)

    def _retire(self, day: LiveDay, role: str) -> None:
        """A process about to end: its kernel peak RSS is kept (``_keep_histograms`` keeps its latencies)."""
        pid = day.procs.pids().get(role)
        if pid is not None:
            self.hwm_max[role] = max(self.hwm_max.get(role, 0), rss_bytes(pid, "VmHWM") or 0)

    async def _keep_histograms(self, day: LiveDay, role: str) -> None:
        metrics = await asyncio.to_thread(scrape, day.ports[role])
        if role == "bridge":
            _add(self.histograms.setdefault("ack", {}), histogram(metrics, "observer_bridge_ack_latency_seconds"))
        elif role == "sink":
            for store in ("jsonl", "postgres"):
                _add(
                    self.histograms.setdefault(store, {}),
                    histogram(metrics, "observer_sink_tick_persist_latency_seconds", store=store),
                )

    async def _inject(self, day: LiveDay, fault: Fault, now: dt.datetime) -> None:
        started, started_wall = time.monotonic(), time.time()
        detail = ""
        if fault.kind == "ws_drop":
            detail = f"{await day.sim.ws.drop_all()} session(s) cut"
        elif fault.kind in ("kill_worker", "kill_sink"):
            role = fault.kind.removeprefix("kill_")
            await self._keep_histograms(day, role)
            self._retire(day, role)
            # No await between the kill and the start: the run's liveness check must not see it gone.
            pid = day.procs.kill(role)
            day.procs.start(role, [role])
            detail = f"pid {pid} killed, {day.procs.pids()[role]} started"
        elif fault.kind == "restart_kafka":
            await asyncio.to_thread(day.kafka.stop)
            detail = (await asyncio.to_thread(day.kafka.start)).strip()
        elif fault.kind == "restart_postgres":
            await asyncio.to_thread(day.pg.stop)
            detail = (await asyncio.to_thread(day.pg.start)).strip()
        elif fault.kind == "leak_registration":
            detail = f"{day.sim.ws.leak_registration()} session(s) hold a registration the bridge did not make"
        elif fault.kind == "surge_burst":
            detail = (
                f"{len(self.burst)} symbols surge {self.options.burst_factor:g}x for {self.options.burst_minutes:g} min"
            )
        done = Injected(fault.kind, f"{now:%H:%M:%S}", round(time.monotonic() - started, 1), detail, started_wall)
        self.injected.append(done)
        day.echo(f"  fault at {done.sim_at} KST: {FAULT_KINDS[fault.kind]} ({detail}; {done.wall_s:.1f} s)")

    async def _finish_fault(self) -> None:
        if self.task is not None:
            await self.task
            self.task = None

    async def market_closed(self, day: LiveDay) -> None:
        await self._finish_fault()
        self.ends["faults_not_reached"] = [f"{f.at:%H:%M} {f.kind}" for f in self.pending]
        await self._keep_histograms(day, "bridge")
        self._retire(day, "bridge")
        ledger = day.sim.ledger
        self.ends["busiest_hour"] = ledger.busiest_hour()
        self.ends["records_sent"] = ledger.totals()["records_sent"]
        self.ends["replies"] = ledger.totals()["replies"]
        self.ends["missed_while_unregistered"] = ledger.totals()["missed_while_unregistered"]
        self.ends["subscribes"] = list(ledger.subscribes)
        self.ends["wall_of"] = ledger.wall_of

    async def drained(self, day: LiveDay) -> None:
        for role in ("worker", "sink"):
            self._retire(day, role)
        await self._keep_histograms(day, "sink")
        self.ends["in_flight"] = in_flight_at_cuts(
            [s.to_json() for s in day.sim.ledger.sessions], (day.procs.logs / "bridge.log").read_text(errors="replace")
        )
        # Now: a soak that started the stack itself stops it when the demo returns.
        self.surge_latency = await surge_to_subscribe(day.settings, self.day, self)


BRIDGE_SESSION_LINE = re.compile(
    r"KIS session (?P<id>\w+) closed: (?P<frames>\d+) frames, (?P<records>\d+) trade records received "
    r"on local port (?P<port>\d+)"
)


def in_flight_at_cuts(sessions: list[dict[str, Any]], bridge_log: str) -> dict[str, Any]:
    """Per connection (the client's port), the trade records KIS sent against those the bridge received.

    A WebSocket cut resets the TCP connection, and what was still in the kernel's buffers (sent by KIS, not
    yet read by the bridge) is gone: the bridge never received it, so no stage of the observer can account
    for it, and real KIS does not send it again. The soak measures it exactly, session by session, so that
    "KIS sent = Kafka" holds with it and nothing else: on a connection that was not cut, any difference is a
    problem."""
    received: dict[int, int] = {}
    for m in BRIDGE_SESSION_LINE.finditer(bridge_log):
        port = int(m["port"])
        received[port] = received.get(port, 0) + int(m["records"])
    sent: dict[int, int] = {}
    cut: set[int] = set()
    for s in sessions:
        sent[s["client_port"]] = sent.get(s["client_port"], 0) + s["records_sent"]
        if s["close_reason"] == "fault_drop":
            cut.add(s["client_port"])
    lost, problems = 0, []
    for port, n in sorted(sent.items()):
        if port not in received:
            if n:
                problems.append(f"the bridge logged no count for its session on port {port} ({n:,} records sent)")
            continue
        gap = n - received[port]
        if gap < 0 or (gap and port not in cut):
            problems.append(f"port {port}: KIS sent {n:,} trade records, the bridge received {received[port]:,}")
        elif gap:
            lost += gap
    return {"lost_at_cuts": lost, "sessions_cut": len(cut), "sessions": len(sent), "problems": problems}


def peak_periods(options: SoakOptions, day: dt.date) -> tuple[RatePeriod, ...]:
    """The peak as rate periods: a ramp of ``RAMP_STEPS`` equal ratios over ``peak_ramp_minutes``, then
    ``peak_factor`` until ``peak_until``. Each step is well under the surge rule's 3x, so the ramp itself
    does not make every symbol surge at once (the burst does that, on purpose)."""
    begin = dt.datetime.combine(day, options.peak_from)
    total = (dt.datetime.combine(day, options.peak_until) - begin).total_seconds() / 60
    ramp = min(options.peak_ramp_minutes, total)
    step = ramp / RAMP_STEPS
    out = [
        RatePeriod(
            (begin + dt.timedelta(minutes=i * step)).time(), step, options.peak_factor ** ((i + 1) / (RAMP_STEPS + 1))
        )
        for i in range(RAMP_STEPS)
    ]
    if total > ramp:
        out.append(RatePeriod((begin + dt.timedelta(minutes=ramp)).time(), total - ramp, options.peak_factor))
    return tuple(out)


def burst_surges(options: SoakOptions, day: dt.date, at: dt.time) -> list[SurgeSpec]:
    """``burst_symbols`` symbols of the seeded market (not the bootstrap ones), all surging from ``at``."""
    codes = [c for c in Market(options.seed, day).by_code if c not in BOOTSTRAP_CODES]
    picks = np.random.default_rng([options.seed, 42]).choice(len(codes), options.burst_symbols, replace=False)
    return [SurgeSpec(codes[i], at, options.burst_minutes, options.burst_factor) for i in sorted(picks.tolist())]


async def surge_to_subscribe(settings: Settings, day: dt.date, hooks: SoakHooks) -> dict[str, Any]:
    """Per assignment of a surging symbol: from KIS delivering the trades up to the surge's crossing
    observation to the bridge's subscribe of the symbol arriving at KIS (wall seconds)."""
    codec = default_codec()
    reader = new_reader(settings.bootstrap_servers)
    await reader.start()
    decisions: list[dict[str, Any]] = []
    assigned: list[dict[str, Any]] = []
    moved: set[tuple[str, str, int]] = set()  # releases: an assign at the same instant only moves the symbol
    try:
        topic = settings.topic("slot.decisions")
        async for rec in read_ranges(reader, topic, await time_window(reader, topic, None, None)):
            value = codec.decode(rec.value)[1]
            if value["action"] == "release":
                moved.add((value["app_key_id"], value["symbol"], value["decided_at_us"]))
            if value["action"] == "assign":
                assigned.append(value)
                if value["trigger_type"] in ("surge", "snapshot_surge"):
                    decisions.append(value)
    finally:
        await reader.stop()
    wall_of: Callable[[int], float | None] = hooks.ends["wall_of"]
    subscribes: list[tuple[float, str, str]] = hooks.ends["subscribes"]
    assigns: dict[tuple[str, str], list[int]] = {}  # (app key, symbol) -> every assignment's time, event time
    for value in assigned:
        assigns.setdefault((value["app_key_id"], value["symbol"]), []).append(value["decided_at_us"])
    seen: set[str] = set()
    latencies: list[float] = []
    quiet: list[float] = []  # the assignments whose surge came more than QUIET_AFTER_FAULT_S after any fault
    samples: list[tuple[str, float]] = []  # (detected at, KST; seconds), for a look at where time went
    unmatched = slot_moves = 0
    for d in decisions:
        if d["decision_id"] in seen:
            continue
        seen.add(d["decision_id"])
        if (d["app_key_id"], d["symbol"], d["decided_at_us"]) in moved:
            slot_moves += 1  # released and assigned again in one step: the bridge keeps its subscription
            continue
        # Trades carry whole seconds and KIS sends a second's trades once it has passed.
        origin = wall_of(d["detected_at_us"] // 1_000_000 * 1_000_000 + 1_000_000)
        # This assignment's subscription comes before the symbol's next assignment could be decided (KIS
        # must have delivered the trades up to its time first); none there: KIS refused it.
        later = [t for t in assigns.get((d["app_key_id"], d["symbol"]), []) if t > d["decided_at_us"]]
        until = wall_of(min(later)) if later else None
        sub = next(
            (
                w
                for w, key, sym in subscribes
                if sym == d["symbol"]
                and key == d["app_key_id"]
                and origin
                and w >= origin
                and (until is None or w <= until)
            ),
            None,
        )
        if origin is None or sub is None:
            unmatched += 1  # refused by KIS, or released before the bridge got to it
            continue
        latencies.append(sub - origin)
        if not any(f.started_wall <= origin <= f.started_wall + QUIET_AFTER_FAULT_S for f in hooks.injected):
            quiet.append(sub - origin)
        at = dt.datetime.fromtimestamp(d["detected_at_us"] / 1e6, KST).strftime("%H:%M:%S")
        samples.append((at, round(sub - origin, 3)))
    out: dict[str, Any] = {
        "assignments": len(seen) - slot_moves,
        "slot_moves": slot_moves,
        "unmatched": unmatched,
        "samples": samples,
    }
    out |= _percentiles(latencies)
    out["away_from_faults"] = {"assignments": len(quiet)} | _percentiles(quiet)
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.array(values)
    return {f"p{q:g}": float(np.percentile(arr, q)) for q in (50, 90, 99)} | {"max": float(arr.max())}


@dataclass
class SoakResult:
    run: DemoRun
    options: SoakOptions
    injected: list[Injected]
    memory: dict[str, Any]
    latency: dict[str, Any]
    ends: dict[str, Any]

    def failures(self) -> list[str]:
        out: list[str] = []
        audit = self.run.audit
        assert audit is not None
        out += [f"audit: {p}" for p in audit.problems()]
        flight = self.ends["in_flight"]
        out += [f"KIS to bridge: {p}" for p in flight["problems"]]
        sent, in_kafka = self.ends["records_sent"] - flight["lost_at_cuts"], audit.ticks.kafka_distinct
        if in_kafka != sent:
            out.append(
                f"KIS sent {sent:,} trade records the bridge received (after {flight['lost_at_cuts']:,} lost in "
                f"flight at WebSocket cuts), {in_kafka:,} distinct ticks are in Kafka"
            )
        if audit.ratio != 1.0:
            out.append(f"receive-to-persist is {audit.ratio}, not 100 %")
        if self.ends["faults_not_reached"]:
            out.append(f"faults never injected: {', '.join(self.ends['faults_not_reached'])}")
        kinds = {f.kind for f in self.options.faults}
        if "leak_registration" in kinds and not self.ends["replies"].get("OPSP0008"):
            out.append("no MAX SUBSCRIBE OVER: the 42nd subscription never happened")
        if "leak_registration" in kinds and not audit.kinds["overflow"].detail.get("refused_by_kis"):
            out.append("KIS refused a subscription but no overflow record says so")
        if "surge_burst" in kinds and not audit.kinds["overflow"].kafka_distinct:
            out.append("the surge burst overflowed nothing: it never exceeded the slot pool")
        n = self.ends["busiest_hour"][1]
        if n < self.options.min_peak_hour:
            out.append(f"the busiest hour had {n:,} trades, under the {self.options.min_peak_hour:,} asked for")
        limit = self.options.memory_limit_mb * 2**20
        if self.memory["together_max"]["realistic"] > limit:
            out.append(
                f"the observer's processes together reached {self.memory['together_max']['realistic'] / 2**20:.0f} MB "
                f"at the realistic rate, over {self.options.memory_limit_mb:g} MB"
            )
        return out

    def summary(self) -> dict[str, Any]:
        audit = self.run.audit
        assert audit is not None
        start, n = self.ends["busiest_hour"]
        return {
            "demo": self.run.summary(),
            "kis_records_sent": self.ends["records_sent"],
            "lost_in_flight_at_cuts": self.ends["in_flight"]["lost_at_cuts"],
            "kis_records_received": self.ends["records_sent"] - self.ends["in_flight"]["lost_at_cuts"],
            "busiest_hour": {
                "from": dt.datetime.fromtimestamp(start / 1e6, KST).strftime("%H:%M") if start else None,
                "trades": n,
                "vs_seed_busiest": n / SEED_BUSIEST_HOUR,
            },
            "kis_replies": self.ends["replies"],
            "faults": [vars(f) for f in self.injected],
            "slot_policy": audit.slots.to_json(),
            "memory": self.memory,
            "latency_s": self.latency,
            "failures": self.failures(),
        }


async def run_soak(base: Settings, options: SoakOptions, echo: Callable[[str], None]) -> SoakResult:
    from app.krx import latest_session, today_kst

    day = latest_session(today_kst() - dt.timedelta(days=1), regular=True)  # as the demo picks it
    hooks = SoakHooks(options, day)
    echo(
        f"soak: {options.start:%H:%M}-{options.until:%H:%M} KST at {options.speed:g}x, peak x{options.peak_factor:g} "
        f"{options.peak_from:%H:%M}-{options.peak_until:%H:%M}, {len(options.faults)} faults"
    )
    demo = DemoOptions(
        speed=options.speed,
        start=options.start,
        until=options.until,
        seed=options.seed,
        random_surges=options.random_surges,
        malformed_rate=options.malformed_rate,
        keep_stack=options.keep_stack,
        drain_timeout_s=600.0,
        name="soak",
    )
    run = await run_demo(base, demo, echo, hooks)
    if run.day != day:
        raise RuntimeError(f"the soak planned {day} but the demo ran {run.day}")
    if hooks.surge_latency is None:
        raise RuntimeError("the demo returned without draining: the soak measured no surge latency")
    mb = 2**20
    memory = {
        "peak_rss_mb": {
            role: round(max(hooks.rss_max.get(role, 0), hooks.hwm_max.get(role, 0)) / mb, 1)
            for role in ("bridge", "worker", "sink")
        },
        "together_max": hooks.together_max,
        "together_max_mb": {k: round(v / mb, 1) for k, v in hooks.together_max.items()},
        "limit_mb": options.memory_limit_mb,
    }
    latency = {
        "frame_to_kafka_ack": quantiles(hooks.histograms.get("ack", {})),
        "tick_to_jsonl": quantiles(hooks.histograms.get("jsonl", {})),
        "tick_to_postgres": quantiles(hooks.histograms.get("postgres", {})),
        "surge_to_subscribe": hooks.surge_latency,
    }
    return SoakResult(run, options, hooks.injected, memory, latency, hooks.ends)


def _seconds(v: float | None) -> str:
    return "n/a (no evictions)" if v is None else f"{v:.0f} s"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:,.0f} ms" if v < 10 else f"{v:,.1f} s"


def soak_table(result: SoakResult) -> list[str]:
    s = result.summary()
    d = s["demo"]
    lat = s["latency_s"]

    def pct(name: str) -> str:
        q = lat[name]
        return f"p50 {_ms(q.get('p50'))}, p90 {_ms(q.get('p90'))}, p99 {_ms(q.get('p99'))}"

    sts = lat["surge_to_subscribe"]
    quiet = sts["away_from_faults"]
    mem = s["memory"]
    policy = s["slot_policy"]
    together = mem["together_max_mb"]
    rows = [
        ("simulated day", f"{d['date']}, trades delivered until {d['simulated_until']} KST"),
        ("KIS sent", f"{s['kis_records_sent']:,} trade records"),
        (
            "lost in flight at cuts",
            f"{s['lost_in_flight_at_cuts']:,} (sent, still in TCP buffers when a WebSocket cut reset the connection)",
        ),
        (
            "busiest hour",
            f"{s['busiest_hour']['trades']:,} trades from {s['busiest_hour']['from']} "
            f"({s['busiest_hour']['vs_seed_busiest']:.2f}x the seed's 50,287)",
        ),
        ("frames received", f"{d['frames_received']:,}"),
        ("ticks in Kafka", f"{d['ticks_in_kafka']:,}"),
        ("JSONL lines", f"{d['jsonl_lines']:,}"),
        ("Postgres rows", f"{d['postgres_rows']:,}"),
        (
            "dead letters",
            f"{d['dead_letters']:,} ({', '.join(f'{k} {v}' for k, v in sorted(d['dead_letters_by_reason'].items()))})",
        ),
        ("receive-to-persist", "n/a" if d["receive_to_persist"] is None else f"{d['receive_to_persist']:.4%}"),
        ("surges", f"{d['surges']:,}"),
        (
            "slot changes",
            f"{d['slot_changes']:,}; overflow {d['overflow']:,}; KIS refusals {s['kis_replies'].get('OPSP0008', 0)}",
        ),
        (
            "slot policy",
            f"most held {', '.join(f'{k} {v}' for k, v in policy['max_held'].items())}; shortest eviction "
            f"dwell {_seconds(policy['shortest_eviction_dwell_s'])}; {len(policy['violations'])} violations",
        ),
        ("faults injected", f"{len(s['faults'])}: " + ", ".join(f"{f['sim_at'][:5]} {f['kind']}" for f in s["faults"])),
        ("peak RSS", ", ".join(f"{k} {v:.0f} MB" for k, v in mem["peak_rss_mb"].items())),
        (
            "processes together",
            f"{together['realistic']:.0f} MB at the realistic rate, {together['peak']:.0f} MB "
            f"at the peak (limit {mem['limit_mb']:g} MB)",
        ),
        ("frame -> Kafka ack", pct("frame_to_kafka_ack")),
        ("tick -> JSONL", pct("tick_to_jsonl")),
        ("tick -> Postgres", pct("tick_to_postgres")),
        (
            "surge -> subscribe",
            f"p50 {_ms(sts.get('p50'))}, p90 {_ms(sts.get('p90'))}, p99 {_ms(sts.get('p99'))} "
            f"({sts['assignments'] - sts['unmatched']} of {sts['assignments']} assignments)",
        ),
        (
            "  away from faults",
            f"p50 {_ms(quiet.get('p50'))}, p90 {_ms(quiet.get('p90'))}, p99 {_ms(quiet.get('p99'))} "
            f"({quiet['assignments']} surges over {QUIET_AFTER_FAULT_S:.0f} s after any fault's start)",
        ),
        ("wall time", f"{d['wall_s']:.0f} s (" + ", ".join(f"{k} {v:.0f} s" for k, v in d["stages_s"].items()) + ")"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "soak summary", *(f"  {k:<{width}}  {v}" for k, v in rows), ""]
    lines += [f"  fault {f['sim_at']} {f['kind']}: {f['detail']} ({f['wall_s']} s)" for f in s["faults"]]
    failures = s["failures"]
    lines += ["", *look_again(d, "soak")]
    lines += ["", "FAILED:" if failures else "passed: every check held", *(f"  {f}" for f in failures)]
    return lines
