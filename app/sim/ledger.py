"""Ground truth of the simulator: exactly what it sent, to whom, and what it broke on purpose.

Tests reconcile the pipeline's outputs against these numbers, so a count here moves only when the
bytes of a frame have been handed to the kernel (a frame whose send failed is not "sent").
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SessionLedger:
    session: int
    app_key_id: str
    opened_wall: float
    closed_wall: float | None = None
    close_reason: str = ""
    frames_sent: int = 0
    records_sent: int = 0
    records_by_symbol: Counter[str] = field(default_factory=Counter)
    bad_frames: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    pings_sent: int = 0
    pongs_received: int = 0
    client_port: int = 0  # the client's TCP port: the bridge logs what it received per local port

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "app_key_id": self.app_key_id,
            "opened_wall": self.opened_wall,
            "closed_wall": self.closed_wall,
            "close_reason": self.close_reason,
            "frames_sent": self.frames_sent,
            "records_sent": self.records_sent,
            "records_by_symbol": dict(self.records_by_symbol),
            "bad_frames": dict(self.bad_frames),
            "replies": dict(self.replies),
            "pings_sent": self.pings_sent,
            "pongs_received": self.pongs_received,
            "client_port": self.client_port,
        }


@dataclass
class Ledger:
    sessions: list[SessionLedger] = field(default_factory=list)
    # Trades of a symbol an app key had registered when its session ended, made before it registered
    # the symbol again: the only trades a client may legitimately miss.
    missed_while_unregistered: dict[str, Counter[str]] = field(default_factory=dict)
    refused_sessions: Counter[str] = field(default_factory=Counter)
    withheld_by_stall: Counter[str] = field(default_factory=Counter)  # trades the stall fault kept back
    drops: int = 0
    records_by_minute: Counter[int] = field(default_factory=Counter)  # records sent per event-time minute (UTC us)
    subscribes: list[tuple[float, str, str]] = field(default_factory=list)  # (wall time, app key id, symbol) accepted
    # (simulated instant, wall time): when deliveries first reached each new simulated second
    delivered_at: list[tuple[int, float]] = field(default_factory=list)
    trades_generated: int = 0
    sim_time_us: int = 0
    delivered_until_us: int = 0  # every trade before this simulated instant has been handed to its sessions

    def open_session(self, session: int, app_key_id: str, wall: float) -> SessionLedger:
        entry = SessionLedger(session=session, app_key_id=app_key_id, opened_wall=wall)
        self.sessions.append(entry)
        return entry

    def delivered(self, until_us: int, wall: float) -> None:
        self.delivered_until_us = until_us
        if not self.delivered_at or until_us // 1_000_000 > self.delivered_at[-1][0] // 1_000_000:
            self.delivered_at.append((until_us, wall))

    def wall_of(self, sim_us: int) -> float | None:
        """The wall time at which every trade before ``sim_us`` had been handed to its sessions."""
        i = bisect.bisect_left(self.delivered_at, (sim_us, 0.0))
        return self.delivered_at[i][1] if i < len(self.delivered_at) else None

    def busiest_hour(self) -> tuple[int, int]:
        """The 60 consecutive event-time minutes with the most records sent: (their first minute, records)."""
        best = (0, 0)
        for start in sorted(self.records_by_minute):
            n = sum(self.records_by_minute.get(start + i * 60_000_000, 0) for i in range(60))
            if n > best[1]:
                best = (start, n)
        return best

    def totals(self) -> dict[str, Any]:
        by_symbol: Counter[str] = Counter()
        bad: Counter[str] = Counter()
        replies: Counter[str] = Counter()
        for s in self.sessions:
            by_symbol.update(s.records_by_symbol)
            bad.update(s.bad_frames)
            replies.update(s.replies)
        missed: Counter[str] = Counter()
        for counts in self.missed_while_unregistered.values():
            missed.update(counts)
        return {
            "frames_sent": sum(s.frames_sent for s in self.sessions),
            "records_sent": sum(s.records_sent for s in self.sessions),
            "records_by_symbol": dict(by_symbol),
            "bad_frames": dict(bad),
            "bad_frames_total": sum(bad.values()),
            "replies": dict(replies),
            "missed_while_unregistered": sum(missed.values()),
            "drops": self.drops,
            "refused_sessions": dict(self.refused_sessions),
            "withheld_by_stall": sum(self.withheld_by_stall.values()),
            "trades_generated": self.trades_generated,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "sim_time_us": self.sim_time_us,
            "totals": self.totals(),
            "sessions": [s.to_json() for s in self.sessions],
            "missed_while_unregistered": {k: dict(v) for k, v in self.missed_while_unregistered.items()},
        }
