"""Read-only web views of the worker, on Faust's web server (bound to 127.0.0.1 unless configured).

JSON: ``/api/slots``, ``/api/surges``, ``/api/symbols/{symbol}/windows``, ``/api/counters``, ``/api/health``;
and ``/``, one HTML status page a person can read at a glance. Everything shown is this worker's own
state (with one worker, the whole app's); each JSON view says which worker answered.
"""

from __future__ import annotations

import datetime as dt
import html
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from app.krx import KST
from app.slots.manager import SlotManager


@dataclass
class WorkerState:
    """What the agents leave for the views (the agents own it; views only read)."""

    registry: CollectorRegistry
    recent_surges: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50))
    manager: Callable[[], SlotManager | None] = lambda: None
    windows: Callable[[str], dict[str, Any] | None] = lambda symbol: None
    last_input_monotonic: float | None = None
    started_monotonic: float = field(default_factory=time.monotonic)
    # agent name -> (monotonic time, reason) of its last crash; Faust restarts a crashed agent, so without
    # this a crash loop would look healthy.
    crashes: dict[str, tuple[float, str]] = field(default_factory=dict)


CRASH_UNHEALTHY_S = 60.0  # a crash this recent makes the worker report "failing"


def counters(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of the worker's registry by name and labels (``_created`` timestamps left out)."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def slots_view(manager: SlotManager | None) -> dict[str, Any]:
    if manager is None:
        return {"owner": False, "held": 0, "pools": {}, "clock_us": None}
    now = manager.clock_us
    pools: dict[str, list[dict[str, Any]]] = {}
    for key, pool in manager.book.slots.items():
        pools[key] = [
            {
                "slot_id": slot_id,
                "symbol": h.symbol,
                "since_us": h.since_us,
                "priority": round(h.priority, 4),
                "effective_priority": round(manager.book.effective_priority(h, now), 4),
                "decision_id": h.decision_id,
            }
            for slot_id, h in enumerate(pool)
            if h is not None
        ]
    return {
        "owner": True,
        "held": manager.book.held(),
        "capacity": manager.policy.capacity,
        "pools": pools,
        "clock_us": now,
    }


def health_view(state: WorkerState, assigned: int, rebalancing: bool) -> tuple[dict[str, Any], int]:
    idle = None if state.last_input_monotonic is None else time.monotonic() - state.last_input_monotonic
    now = time.monotonic()
    recent = {name: reason for name, (at, reason) in state.crashes.items() if now - at < CRASH_UNHEALTHY_S}
    if recent:
        status = "failing"
    elif rebalancing:
        status = "rebalancing"
    elif assigned == 0:
        status = "starting"
    else:
        status = "ok"
    doc = {
        "status": status,
        "assigned_partitions": assigned,
        "seconds_since_last_input": None if idle is None else round(idle, 3),
        "uptime_s": round(time.monotonic() - state.started_monotonic, 1),
        "crashed_agents": recent,
    }
    return doc, 200 if status == "ok" else 503


def _kst(us: int | None) -> str:
    if not us:
        return "-"
    return dt.datetime.fromtimestamp(us / 1e6, KST).strftime("%Y-%m-%d %H:%M:%S")


def status_page(state: WorkerState, health: dict[str, Any]) -> str:
    """The one HTML page: health, slots, recent surges, pipeline counters. No scripts, no external assets."""
    e = html.escape
    slots = slots_view(state.manager())
    c = counters(state.registry)
    rows = [
        f"<tr><td>{e(key)}</td><td>{h['slot_id']}</td><td class=sym>{e(h['symbol'])}</td>"
        f"<td>{_kst(h['since_us'])}</td><td>{h['effective_priority']:.2f}</td></tr>"
        for key, holders in slots["pools"].items()
        for h in holders
    ]
    surge_rows = [
        f"<tr><td class=sym>{e(s['symbol'])}</td><td>{_kst(s['event_time_us'])}</td><td>{s['surge_ratio']:.1f}x</td>"
        f"<td>{s['current_volume']:,}</td><td>{s['avg_volume_10m']:,.0f}</td><td>{e(s['source'])}</td></tr>"
        for s in reversed(state.recent_surges)
    ]
    counter_rows = [f"<tr><td>{e(k)}</td><td>{v:,.0f}</td></tr>" for k, v in sorted(c.items())]
    capacity = slots.get("capacity", 0) * max(1, len(slots["pools"]))
    ok = health["status"] == "ok"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>observer worker</title>
<style>
body{{font:14px system-ui,sans-serif;margin:1.5em;color:#222}} h1{{font-size:1.4em}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}} td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}
.ok{{color:#070}} .bad{{color:#b00}} .sym{{font-family:monospace}} .big{{font-size:1.3em;font-weight:bold}}
</style></head><body>
<h1>observer worker</h1>
<p id=health class="big {"ok" if ok else "bad"}">health: {e(health["status"])}</p>
<p id=ratio class=big>receive-to-persist: not measured by the worker (the sink reports it)</p>
<p id=clock>slot clock (event time): {_kst(slots["clock_us"])}</p>
<h2>Slots: <span id=held>{slots["held"]}</span> of {capacity} held</h2>
<table id=slots><tr><th>app key</th><th>slot</th><th>symbol</th><th>since (KST)</th><th>priority now</th></tr>
{"".join(rows) or "<tr><td colspan=5>no slot held</td></tr>"}</table>
<h2>Recent surges (<span id=surge-count>{len(state.recent_surges)}</span>)</h2>
<table id=surges><tr><th>symbol</th><th>time (KST)</th><th>ratio</th><th>minute volume</th><th>10-min avg</th>
<th>source</th></tr>
{"".join(surge_rows) or "<tr><td colspan=6>no surge yet</td></tr>"}</table>
<h2>Pipeline counters</h2>
<table id=counters><tr><th>metric</th><th>value</th></tr>{"".join(counter_rows)}</table>
</body></html>
"""
