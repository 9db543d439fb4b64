"""The slot manager's logic: merged inputs, the KRX session clock, and the slot book. Pure; the Faust agent
feeds it and publishes what it returns.

Time is the merged event time only. Session transitions happen at fixed times of each KRX trading day
(bootstrap ``bootstrap_lead_us`` before 09:00 KST so the opening trade is captured, release of every
slot at 15:30 KST), stamped with those times, and processed in order with the inputs, so a replay
makes them exactly as live did. On a day the XKRX calendar says is not a session, nothing is decided.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import heapq
from collections import Counter, deque
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

    # The offset in ``slot.merge-log`` of the last step this state reflects (-1: none, -2: unknown). The worker
    # publishes each step before the state that reflects it, so a restarted manager finds the steps its
    # previous run made after its stored state, and applies them again (see :meth:`recover`).
    merge_log_offset: int = -1

    _ready: list[Outcome] = field(init=False, default_factory=list)  # refusals' outcomes for the next step
    # Recovering: the (offset, step) records of the merge log still to apply again, the refusals that came
    # while they were applied (applied after them), and the refusals those steps applied before their own
    # input came again (that input is then not applied twice).
    _recovery: deque[tuple[int, dict[str, Any]]] = field(init=False, default_factory=deque)
    held_refusals: list[Refusal] = field(init=False, default_factory=list)
    refusals_ahead: Counter[Refusal] = field(init=False, default_factory=Counter)
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
        if self._recovery:
            self.held_refusals.append(refusal)
            return
        if self.refusals_ahead[refusal] > 0:  # applied already, from the merge log of the run before a crash
            self.refusals_ahead[refusal] -= 1
            return
        if self.clock_us >= 0:
            r = refusal
            self._ready.extend(self.book.refused(r.app_key_id, r.symbol, r.outcome, r.msg_cd, self.clock_us))
            self.merge_log.append(_step("refusal", self.clock_us, refusal=r))

    def step(self, idle: Iterable[str] = ()) -> list[Outcome]:
        """Decide on everything the watermark releases, with the session transitions in between. While
        recovering, apply the recovered steps instead, as far as their inputs have come again."""
        out: list[Outcome] = []
        if self._recovery:
            out.extend(self._apply_recovered())
            if self._recovery:
                return out
        elif self.held_refusals:  # stored while recovering, and no step was left to apply
            self._end_recovery()
        out.extend(self._ready)
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

    # ------------------------------------------------------------------------- recovering a crash

    def recover(self, steps: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """The merge-log steps (offset, SlotMergeStep record) published after this state by the run before.

        That run decided them, and its decisions are in Kafka; deciding again from the re-delivered inputs
        could decide otherwise (idleness and refusals are wall-clock inputs), and two histories of the same
        slots would be in the log. So :meth:`step` applies these steps, in their order and at their times,
        each once its input has come again (all of them were in Kafka before their step was), and only then
        goes back to the event-time merge. The outcomes are those already published, with the same ids."""
        self._recovery.extend((o, s) for o, s in steps if o > self.merge_log_offset)

    @property
    def recovering(self) -> int:
        """Recovered steps not applied yet."""
        return len(self._recovery)

    def abandon_recovery(self) -> int:
        """Stop waiting for the recovered steps' inputs and decide from the merge (an input that never came
        again: the operator is told); returns how many steps were left."""
        left = len(self._recovery)
        self._recovery.clear()
        self._end_recovery()
        return left

    def _apply_recovered(self) -> list[Outcome]:
        out: list[Outcome] = []
        merger = self.merger
        while self._recovery:
            offset, s = self._recovery[0]
            t = int(s["time_us"])
            if s["kind"] == "candidate":
                entry = self._take_pending(s["source"], s["symbol"], int(s["detected_at_us"]))
                if entry is None:
                    break  # its input has not come again yet
                out.extend(self._run_clock_until(t, inclusive=True))
                out.extend(self._apply(entry.item, t))
                merger.released_until_us = max(merger.released_until_us, t + 1)  # it was released below the mark
            elif s["kind"] == "refusal":
                refusal = Refusal(s["app_key_id"], s["symbol"], s["outcome"], s["msg_cd"])
                out.extend(self.book.refused(refusal.app_key_id, refusal.symbol, refusal.outcome, refusal.msg_cd, t))
                self.refusals_ahead[refusal] += 1
            elif s["kind"] == "clock":
                if self.clock_us < 0 or t - 1 > self.clock_us:
                    out.extend(self._run_clock_until(t, inclusive=False))
                merger.released_until_us = max(merger.released_until_us, t)
            self.merge_log_offset = offset
            self._recovery.popleft()
        if not self._recovery:
            self._end_recovery()
        return out

    def _take_pending(self, source: str, symbol: str, detected_at_us: int) -> Pending | None:
        """Remove and return the pending candidate of this source, symbol and detection time."""
        pending = self.merger.pending
        for i, p in enumerate(pending):
            c = p.item
            if (
                p.source == source
                and isinstance(c, Candidate)
                and (c.symbol, c.detected_at_us) == (symbol, detected_at_us)
            ):
                pending[i] = pending[-1]
                pending.pop()
                heapq.heapify(pending)
                return p
        return None

    def _end_recovery(self) -> None:
        # Inputs that came while recovering were merged at the times they had then; the recovered steps may
        # have released past those, and nothing is released below what was (as the merger does on add).
        merger = self.merger
        floor = merger.released_until_us
        if any(p.time_us < floor for p in merger.pending):
            merger.pending = [
                p if p.time_us >= floor else dataclasses.replace(p, time_us=floor) for p in merger.pending
            ]
            heapq.heapify(merger.pending)
        held, self.held_refusals = self.held_refusals, []
        for refusal in held:
            self.refuse_now(refusal)

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
        "merge_log_offset": manager.merge_log_offset,
        "held_refusals": [_refusal_record(r) for r in manager.held_refusals],
        "refusals_ahead": [_refusal_record(r) for r, n in manager.refusals_ahead.items() for _ in range(n)],
    }


def _refusal_record(r: Refusal) -> dict[str, str]:
    return {"app_key_id": r.app_key_id, "symbol": r.symbol, "outcome": r.outcome, "msg_cd": r.msg_cd}


def _refusal_of(r: dict[str, Any]) -> Refusal:
    return Refusal(r["app_key_id"], r["symbol"], r["outcome"], r["msg_cd"])


def restore_state(manager: SlotManager, record: dict[str, Any]) -> None:
    """Load a SlotManagerState record into a fresh manager (same policy and sources)."""
    manager.clock_us = int(record["clock_us"])
    manager.ignored_outside_session = int(record["ignored_outside_session"])
    manager.applied_offsets = {str(k): int(v) for k, v in record.get("applied_offsets", {}).items()}
    manager.offered_minutes = {str(k): int(v) for k, v in record.get("offered_minutes", {}).items()}
    manager.merge_log_offset = int(record.get("merge_log_offset", -2))
    manager.held_refusals = [_refusal_of(r) for r in record.get("held_refusals", [])]
    manager.refusals_ahead = Counter(_refusal_of(r) for r in record.get("refusals_ahead", []))
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
