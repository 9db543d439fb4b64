"""Did a day's slot decisions keep the slot policy? Pure: replays the published decisions, no I/O.

The decisions of an app key are one ordered stream (``slot.decisions`` is keyed by app key), so holding
can be rebuilt exactly: an assign takes a free slot, a release frees the slot its symbol held. A violation
is any of: a slot outside the pool (more than ``capacity`` held), a slot assigned while held, a symbol in
two slots, a release of a slot the symbol does not hold, or a holder evicted before its minimum dwell
(the only early releases allowed are KIS refusing the subscription and the session's close).

Records seen twice (a worker killed before its commit publishes them again) carry the same decision id
and count once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.krx import KST
from app.slots.policy import ASSIGN, RELEASE

EARLY_RELEASE_TRIGGERS = frozenset({"refusal", "session_close"})


@dataclass
class SlotCheck:
    decisions: int = 0
    max_held: dict[str, int] = field(default_factory=dict)  # per app key, the most slots held at once
    shortest_dwell_us: int | None = None  # the shortest hold ended by an eviction (not a refusal or close)
    violations: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        dwell = self.shortest_dwell_us
        return {
            "decisions": self.decisions,
            "max_held": self.max_held,
            "shortest_eviction_dwell_s": None if dwell is None else dwell / 1e6,
            "violations": self.violations,
        }


def _at(us: int) -> str:
    return dt.datetime.fromtimestamp(us / 1e6, KST).strftime("%H:%M:%S")


def check_decisions(
    decisions: Iterable[Mapping[str, Any]], capacity: int = 41, min_dwell_us: int = 120_000_000
) -> SlotCheck:
    """``decisions`` in their topic's order (SlotDecision records as dicts)."""
    out = SlotCheck()
    seen: set[str] = set()
    held: dict[str, dict[int, tuple[str, int]]] = {}  # app key -> slot -> (symbol, since)
    for d in decisions:
        if d["decision_id"] in seen:
            continue
        seen.add(d["decision_id"])
        out.decisions += 1
        key, slot, symbol, at = d["app_key_id"], d["slot_id"], d["symbol"], d["decided_at_us"]
        pool = held.setdefault(key, {})
        where = f"{key} slot {slot} at {_at(at)} KST"
        if d["action"] == ASSIGN:
            if not 0 <= slot < capacity:
                out.violations.append(f"{where}: {symbol} assigned outside the pool of {capacity}")
            if slot in pool:
                out.violations.append(f"{where}: {symbol} assigned while {pool[slot][0]} holds it")
            if any(s == symbol for s, _ in pool.values()):
                out.violations.append(f"{where}: {symbol} assigned a second slot")
            pool[slot] = (symbol, at)
            out.max_held[key] = max(out.max_held.get(key, 0), len(pool))
        elif d["action"] == RELEASE:
            holder = pool.get(slot)
            if holder is None or holder[0] != symbol:
                out.violations.append(f"{where}: {symbol} released but the slot holds {holder and holder[0]}")
                continue
            dwell = at - holder[1]
            if d["trigger_type"] not in EARLY_RELEASE_TRIGGERS:
                if dwell < min_dwell_us:
                    out.violations.append(
                        f"{where}: {symbol} evicted after {dwell / 1e6:.0f} s, "
                        f"under the {min_dwell_us / 1e6:.0f} s dwell"
                    )
                if out.shortest_dwell_us is None or dwell < out.shortest_dwell_us:
                    out.shortest_dwell_us = dwell
            del pool[slot]
        else:
            out.violations.append(f"{where}: unknown action {d['action']!r}")
    return out
