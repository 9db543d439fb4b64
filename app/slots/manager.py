"""The slot manager's logic: merged inputs, the KRX session clock, and the slot book. Pure; the Faust agent
feeds it and publishes what it returns.

Time is the merged event time only. Session transitions happen at fixed times of each KRX trading day
(bootstrap ``bootstrap_lead_us`` before 09:00 KST so the opening trade is captured, release of every
slot at 15:30 KST), stamped with those times, and processed in order with the inputs, so a replay
makes them exactly as live did. On a day the XKRX calendar says is not a session, nothing is decided.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.krx import CLOSE, CONTINUOUS_OPEN, KST, is_trading_day
from app.slots.merge import EventTimeMerger, Pending
from app.slots.policy import Candidate, Holder, Outcome, SlotBook, SlotPolicy

US = 1_000_000


@dataclass(frozen=True)
class Refusal:
    app_key_id: str
    symbol: str
    outcome: str
    msg_cd: str


Item = Candidate | Refusal | None  # None: a progress marker carried as an item (not used by sources)


def _kst_instant_us(day: dt.date, at: dt.time) -> int:
    return int(dt.datetime.combine(day, at, tzinfo=KST).timestamp()) * US


@dataclass
class SlotManager:
    policy: SlotPolicy
    sources: frozenset[str]
    trading_day: Callable[[dt.date], bool] = is_trading_day
    bootstrap_lead_us: int = 60 * US
    book: SlotBook = field(init=False)
    merger: EventTimeMerger = field(init=False)
    clock_us: int = -1  # the merged time processed so far
    ignored_outside_session: int = 0
    # "topic:partition" -> offset of the last input applied: the state is written after the inputs it
    # reflects but before their offsets are committed, so after a crash some inputs come again.
    applied_offsets: dict[str, int] = field(default_factory=dict)
    # "source|symbol" -> epoch minute of its last surge candidate from that source: the surge agent's
    # outputs are at-least-once (a crash between commits repeats them), and a symbol's windows of one
    # input surge at most once a minute.
    offered_minutes: dict[str, int] = field(default_factory=dict)

    _ready: list[Outcome] = field(init=False, default_factory=list)  # refusals' outcomes for the next step
    # Every step applied since the caller last took them (SlotMergeStep records), for ``slot.merge-log``.
    merge_log: list[dict[str, Any]] = field(init=False, default_factory=list)
    # Following another run's merge log (a replay): its steps, and the candidates waiting for theirs.
    _steps: deque[dict[str, Any]] = field(init=False, default_factory=deque)
    _arrived: dict[tuple[str, str, int], Candidate] = field(init=False, default_factory=dict)
    _followed: set[tuple[Any, ...]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.book = SlotBook(self.policy)
        self.merger = EventTimeMerger(self.sources)

    # --------------------------------------------------------------------------------------- inputs

    def first_delivery(self, topic: str, partition: int, offset: int) -> bool:
        """Record that the input at this offset is being applied; False if it already was (a re-delivery)."""
        tp = f"{topic}:{partition}"
        if offset <= self.applied_offsets.get(tp, -1):
            return False
        self.applied_offsets[tp] = offset
        return True

    def first_offer(self, source: str, symbol: str, event_time_us: int) -> bool:
        """Record a surge candidate of ``symbol`` from ``source`` at this time; False if that source offered
        the symbol in this minute already. Per source, so that which one counts never depends on how a
        consumer interleaved the sources."""
        key = f"{source}|{symbol}"
        minute = event_time_us // (60 * US)
        if minute <= self.offered_minutes.get(key, -1):
            return False
        self.offered_minutes[key] = minute
        return True

    def add(self, source: str, event_time_us: int, item: Candidate | Refusal) -> None:
        self.merger.add(source, event_time_us, item)

    def advance(self, source: str, event_time_us: int) -> None:
        self.merger.advance(source, event_time_us)

    def refuse_now(self, refusal: Refusal) -> None:
        """KIS refused a subscription we decided: free the slot at the merged time reached so far.

        KIS replies are stamped by the bridge's clock, not the market's, so they cannot take part in the
        event-time merge: a wall clock ahead of a simulated or replayed market would carry the watermark
        past every pending input at once. A refusal answers a decision already made, so it is applied at
        the manager's current time; its outcomes come with the next :meth:`step`.
        """
        if self.clock_us >= 0:
            r = refusal
            self._ready.extend(self.book.refused(r.app_key_id, r.symbol, r.outcome, r.msg_cd, self.clock_us))
            self.merge_log.append(_step("refusal", self.clock_us, refusal=r))

    def step(self, idle: Iterable[str] = ()) -> list[Outcome]:
        """Decide on everything the watermark releases, with the session transitions in between."""
        out: list[Outcome] = self._ready
        self._ready = []
        for pending in self.merger.release(idle):
            out.extend(self._run_clock_until(pending.time_us, inclusive=True))
            out.extend(self._apply(pending.item, pending.time_us))
            if isinstance(pending.item, Refusal):
                self.merge_log.append(_step("refusal", pending.time_us, refusal=pending.item))
            elif isinstance(pending.item, Candidate):
                self.merge_log.append(_step("candidate", pending.time_us, pending.source, pending.item))
        mark = self.merger.released_until_us
        if mark > 0:
            before = self.clock_us
            moved = self._run_clock_until(mark, inclusive=False)
            # Recorded when it matters to a follower: a session opened or closed, the clock started, or it
            # crossed a date (transitions are looked for on the dates the clock leaves and reaches).
            if moved or before < 0 or _kst_date(before) != _kst_date(self.clock_us):
                self.merge_log.append(_step("clock", mark))
            out.extend(moved)
        return out

    # ----------------------------------------------------------------------------- following a log

    def arrive(self, source: str, candidate: Candidate) -> None:
        """A candidate, kept until the followed log applies it (following mode: no event-time merge)."""
        self._arrived.setdefault((source, candidate.symbol, candidate.detected_at_us), candidate)

    def follow(self, step: dict[str, Any]) -> None:
        """The next step of the merge log being followed (a SlotMergeStep record)."""
        self._steps.append(step)

    def step_following(self) -> list[Outcome]:
        """Apply the followed steps, in their order and at their times, as far as their candidates have
        arrived. Steps repeated in the log (the logging worker restarted) are applied once."""
        out: list[Outcome] = []
        while self._steps:
            s = self._steps[0]
            t = int(s["time_us"])
            if s["kind"] == "candidate":
                key = (s["source"], s["symbol"], int(s["detected_at_us"]))
                if key not in self._followed:
                    candidate = self._arrived.pop(key, None)
                    if candidate is None:
                        break  # its surge has not been computed yet
                    self._followed.add(key)
                    out.extend(self._run_clock_until(t, inclusive=True))
                    out.extend(self._apply(candidate, t))
                    self.merge_log.append(_step("candidate", t, s["source"], candidate))
            elif s["kind"] == "refusal":
                refusal = Refusal(s["app_key_id"], s["symbol"], s["outcome"], s["msg_cd"])
                seen = ("refusal", t, refusal)
                if seen not in self._followed:
                    self._followed.add(seen)
                    out.extend(
                        self.book.refused(refusal.app_key_id, refusal.symbol, refusal.outcome, refusal.msg_cd, t)
                    )
                    self.merge_log.append(_step("refusal", t, refusal=refusal))
            elif s["kind"] == "clock" and (self.clock_us < 0 or t - 1 > self.clock_us):
                out.extend(self._run_clock_until(t, inclusive=False))
                self.merge_log.append(_step("clock", t))
            self._steps.popleft()
        return out

    @property
    def waiting(self) -> int:
        """Following: the steps not applied yet (their candidates have not arrived)."""
        return len(self._steps)

    # ------------------------------------------------------------------------------------- internals

    def in_session(self, t_us: int) -> bool:
        local = dt.datetime.fromtimestamp(t_us / US, tz=KST)
        if not self.trading_day(local.date()):
            return False
        opens = _kst_instant_us(local.date(), CONTINUOUS_OPEN) - self.bootstrap_lead_us
        return opens <= t_us < _kst_instant_us(local.date(), CLOSE)

    def _transitions(self, after_us: int, until_us: int, inclusive: bool) -> list[tuple[int, str]]:
        """Session open/close instants in (after, until] (or until exclusive), on trading days only."""
        if until_us <= after_us:
            return []
        first = dt.datetime.fromtimestamp(max(after_us, 0) / US, tz=KST).date()
        last = dt.datetime.fromtimestamp(until_us / US, tz=KST).date()
        out: list[tuple[int, str]] = []
        # Only the day the clock leaves and the day it reaches: sessions wholly inside a gap in the input
        # (the worker was off, or a replay jumps days) were observed by no one, so nothing is decided for them.
        for day in sorted({first, last}):
            if self.trading_day(day):
                for t, kind in (
                    (_kst_instant_us(day, CONTINUOUS_OPEN) - self.bootstrap_lead_us, "open"),
                    (_kst_instant_us(day, CLOSE), "close"),
                ):
                    if after_us < t and (t <= until_us if inclusive else t < until_us):
                        out.append((t, kind))
        return out

    def _run_clock_until(self, until_us: int, inclusive: bool) -> list[Outcome]:
        out: list[Outcome] = []
        if self.clock_us < 0:  # the first input: start the clock just before it, no transitions replayed
            self.clock_us = until_us - 1
            if self.in_session(until_us) and self.book.held() == 0:
                out.extend(self.book.open_session(until_us))
            return out
        for t, kind in self._transitions(self.clock_us, until_us, inclusive):
            out.extend(self.book.open_session(t) if kind == "open" else self.book.close_session(t))
            self.clock_us = t
        if until_us > self.clock_us:
            self.clock_us = until_us if inclusive else until_us - 1
        return out

    def _apply(self, item: Item, t_us: int) -> list[Outcome]:
        if isinstance(item, Refusal):
            return self.book.refused(item.app_key_id, item.symbol, item.outcome, item.msg_cd, t_us)
        if isinstance(item, Candidate):
            if not self.in_session(t_us):
                self.ignored_outside_session += 1
                return []
            return self.book.offer(item, t_us)
        return []


def _kst_date(t_us: int) -> dt.date | None:
    return dt.datetime.fromtimestamp(t_us / US, tz=KST).date() if t_us >= 0 else None


def _step(
    kind: str, time_us: int, source: str = "", candidate: Candidate | None = None, refusal: Refusal | None = None
) -> dict[str, Any]:
    """A SlotMergeStep record."""
    return {
        "kind": kind,
        "time_us": time_us,
        "source": source,
        "symbol": candidate.symbol if candidate else refusal.symbol if refusal else "",
        "detected_at_us": candidate.detected_at_us if candidate else 0,
        "app_key_id": refusal.app_key_id if refusal else "",
        "outcome": refusal.outcome if refusal else "",
        "msg_cd": refusal.msg_cd if refusal else "",
    }


# ------------------------------------------------------------------------------------- persistence


def state_to_record(manager: SlotManager) -> dict[str, Any]:
    """The manager's whole state as a SlotManagerState record (the slot-manager table's value)."""
    pending = []
    for p in manager.merger.pending:
        item = p.item
        base = {"time_us": p.time_us, "source": p.source, "seq": p.seq}
        if isinstance(item, Refusal):
            pending.append(
                base
                | {
                    "kind": "refusal",
                    "symbol": item.symbol,
                    "app_key_id": item.app_key_id,
                    "outcome": item.outcome,
                    "msg_cd": item.msg_cd,
                    "priority": 0.0,
                    "trigger_type": "",
                    "detected_at_us": 0,
                    "current_volume": 0,
                    "avg_volume_10m": 0.0,
                    "surge_ratio": 0.0,
                }
            )
        else:
            assert isinstance(item, Candidate)
            pending.append(
                base
                | {
                    "kind": "candidate",
                    "symbol": item.symbol,
                    "app_key_id": "",
                    "outcome": "",
                    "msg_cd": "",
                    "priority": item.priority,
                    "trigger_type": item.trigger_type,
                    "detected_at_us": item.detected_at_us,
                    "current_volume": item.current_volume,
                    "avg_volume_10m": item.avg_volume_10m,
                    "surge_ratio": item.surge_ratio,
                }
            )
    holders = [
        {
            "app_key_id": key,
            "slot_id": slot_id,
            "symbol": h.symbol,
            "since_us": h.since_us,
            "priority": h.priority,
            "scored_at_us": h.scored_at_us,
            "decision_id": h.decision_id,
        }
        for key, pool in manager.book.slots.items()
        for slot_id, h in enumerate(pool)
        if h is not None
    ]
    return {
        "clock_us": manager.clock_us,
        "released_until_us": manager.merger.released_until_us,
        "ignored_outside_session": manager.ignored_outside_session,
        "progress": dict(manager.merger.progress),
        "seqs": dict(manager.merger.seqs),
        "pending": sorted(pending, key=lambda r: (r["time_us"], r["source"], r["seq"])),
        "holders": holders,
        "applied_offsets": dict(manager.applied_offsets),
        "offered_minutes": dict(manager.offered_minutes),
    }


def restore_state(manager: SlotManager, record: dict[str, Any]) -> None:
    """Load a SlotManagerState record into a fresh manager (same policy and sources)."""
    manager.clock_us = int(record["clock_us"])
    manager.ignored_outside_session = int(record["ignored_outside_session"])
    manager.applied_offsets = {str(k): int(v) for k, v in record.get("applied_offsets", {}).items()}
    manager.offered_minutes = {str(k): int(v) for k, v in record.get("offered_minutes", {}).items()}
    merger = manager.merger
    merger.released_until_us = int(record["released_until_us"])
    merger.progress = {str(k): int(v) for k, v in record["progress"].items() if k in merger.sources}
    merger.seqs = {str(k): int(v) for k, v in record["seqs"].items() if k in merger.sources}
    merger.pending = []
    for r in record["pending"]:
        item: Candidate | Refusal
        if r["kind"] == "refusal":
            item = Refusal(r["app_key_id"], r["symbol"], r["outcome"], r["msg_cd"])
        else:
            item = Candidate(
                r["symbol"],
                r["priority"],
                r["trigger_type"],
                r["detected_at_us"],
                r["current_volume"],
                r["avg_volume_10m"],
                r["surge_ratio"],
            )
        heapq.heappush(merger.pending, Pending(r["time_us"], r["source"], r["seq"], item))
    for h in record["holders"]:
        pool = manager.book.slots.get(h["app_key_id"])
        if pool is not None and h["slot_id"] < len(pool):
            pool[h["slot_id"]] = Holder(h["symbol"], h["since_us"], h["priority"], h["scored_at_us"], h["decision_id"])
